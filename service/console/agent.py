"""The agent's page: the tickets it holds, getting more, selling, its status."""

from __future__ import annotations

from flask import Response, current_app, flash, g, render_template, request, url_for

from ..domain import assignment, presence
from ..extensions import db
from ..models import PRESENCE
from ..schemas import StatusChangeSchema
from ..state import ticket_queue
from . import AGENT_STREAM, bp, live, requires, see_other, ticket_label, visitor
from .forms import READABLE, Failure, attempt, load

STATUS_WORDS = {
    "online": "You are online: you get new tickets.",
    "away": "You are away: you keep your tickets and get no new ones.",
    "offline": "You are offline: you keep your tickets and get no new ones.",
}


def _page(status: int = 200) -> tuple[str, int]:
    claims = visitor().claims
    holding = attempt(lambda: assignment.holding(db.session, claims))
    state, since = presence.get_status(db.session, claims)
    return render_template(
        "console/agent.html",
        holding=holding,
        status=state,
        since=since,
        statuses=PRESENCE,
        status_words=STATUS_WORDS,
        **live(AGENT_STREAM),
    ), status


@bp.get("/agent/")
@requires("agent")
def agent_home() -> tuple[str, int]:
    return _page()


def _back() -> Response:
    return see_other(url_for("console.agent_home"))


@bp.post("/agent/assign")
@requires("agent")
def agent_assign() -> Response:
    """The API's fetch: top up to capacity if online; say what changed."""
    claims = visitor().claims
    try:
        before = {t.id for t in attempt(lambda: assignment.holding(db.session, claims)).tickets}
        if g.get("redis_unavailable"):
            raise Failure(503, "redis_unavailable", READABLE["redis_unavailable"])
        result = attempt(
            lambda: assignment.assign(
                db.session,
                ticket_queue(),
                claims,
                lease_seconds=current_app.config["RESERVATION_LEASE_SECONDS"],
            )
        )
    except Failure as problem:
        flash(f"No tickets were fetched. {problem.message}", "problem")
        return _back()
    new = [t for t in result.tickets if t.id not in before]
    held = len(result.tickets)
    if new:
        names = ", ".join(ticket_label(t) for t in new)
        flash(f"You got {len(new)} new ticket{'s' if len(new) > 1 else ''}: {names}.", "done")
    elif result.status != "online":
        flash(f"No new tickets: you are {result.status}. Set yourself online first.", "done")
    elif not result.queues:
        flash("No new tickets: you are in no queue. Ask an admin to add you to one.", "done")
    elif held >= result.capacity:
        flash(f"No new tickets: you already hold your {result.capacity}.", "done")
    else:
        flash("No new tickets: none is waiting in your queues just now.", "done")
    return _back()


@bp.post("/agent/sell/<int:ticket_id>")
@requires("agent")
def agent_sell(ticket_id: int) -> Response:
    claims = visitor().claims
    try:
        sold = attempt(lambda: assignment.sell(db.session, ticket_queue(), claims, ticket_id))
    except Failure as problem:
        if problem.code == "not_found":
            flash(
                f"You no longer hold ticket #{ticket_id}: an admin may have released or"
                " deleted it.",
                "problem",
            )
        else:
            flash(f"Ticket #{ticket_id} was not sold. {problem.message}", "problem")
        return _back()
    flash(f"Sold {ticket_label(sold)}.", "done")
    return _back()


@bp.post("/agent/status")
@requires("agent")
def agent_status() -> Response:
    claims = visitor().claims

    def change() -> str:
        body = load(StatusChangeSchema(), {"status": request.form.get("status")})
        state, _ = presence.set_status(db.session, claims, body["status"])
        return state

    try:
        state = attempt(change)
    except Failure as problem:
        flash(f"Your status did not change. {problem.message}", "problem")
        return _back()
    flash(STATUS_WORDS[state], "done")
    return _back()
