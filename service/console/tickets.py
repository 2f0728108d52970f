"""The admin's ticket pages: the list and its filters, a new ticket, one ticket with
its actions (edit, release, assign, delete) and its history."""

from __future__ import annotations

from typing import Any

from flask import Response, flash, render_template, request, url_for

from .. import errors
from ..domain import events, moves, queues, workload
from ..domain import tickets as ticket_domain
from ..domain.users import usernames
from ..extensions import db
from ..models import STATUSES
from ..schemas import TicketAssignSchema, TicketCreateSchema, TicketQuerySchema
from ..state import ticket_queue
from . import bp, live, requires, see_other, ticket_label, visitor
from .forms import Failure, Form, attempt, integer, load

PAGE = 50
FILTERS = ("status", "queue", "priority", "agent_id")


def _agents() -> list[workload.Workload]:
    """Active agents, to name holders and to pick one to assign to."""
    agents, _ = workload.list_workload(db.session, ticket_queue(), limit=500)
    return agents


@bp.get("/admin/tickets/", endpoint="tickets")
@requires("admin")
def ticket_list() -> tuple[str, int]:
    typed = {k: request.args.get(k, "").strip() for k in (*FILTERS, "cursor")}
    wanted = {k: v for k, v in typed.items() if v}
    problem = None
    try:
        query = attempt(lambda: load(TicketQuerySchema(), {**wanted, "limit": PAGE}))
    except Failure as failed:
        problem, query = failed, {"limit": PAGE}
    items, next_cursor = attempt(lambda: ticket_domain.list_tickets(db.session, **query))
    agents = attempt(_agents)
    names = usernames(db.session, {t.agent_id for t in items if t.agent_id is not None})
    first_args: dict[str, Any] = {k: v for k, v in wanted.items() if k != "cursor"}
    next_args: dict[str, Any] = {**first_args, "cursor": next_cursor}
    return render_template(
        "console/tickets.html",
        tickets=items,
        names=names,
        filters=typed,
        filter_form=Form.failed(typed, problem) if problem else Form(typed),
        statuses=STATUSES,
        queue_names=attempt(lambda: queues.queue_names(db.session)),
        agent_options=[(a.id, a.username) for a in agents],
        next_url=url_for("console.tickets", **next_args) if next_cursor else None,
        first_url=url_for("console.tickets", **first_args) if wanted.get("cursor") else None,
        **live(None),
    ), (problem.status if problem else 200)


def _ticket_fields() -> dict[str, Any]:
    return {
        "title": request.form.get("title", ""),
        "description": request.form.get("description", ""),
        "queue": request.form.get("queue", ""),
        "priority": request.form.get("priority", ""),
    }


def _new_page(form: Form, status: int = 200) -> tuple[str, int]:
    return render_template(
        "console/ticket_new.html",
        form=form,
        queue_names=attempt(lambda: queues.queue_names(db.session)),
        **live(None),
    ), status


@bp.get("/admin/tickets/new")
@requires("admin")
def new_ticket() -> tuple[str, int]:
    queue = request.args.get("queue", "general")
    return _new_page(Form({"queue": queue, "priority": "normal"}))


@bp.post("/admin/tickets/new")
@requires("admin")
def create_ticket() -> Response | tuple[str, int]:
    typed = _ticket_fields()
    actor = visitor().user.id

    def create() -> Any:
        body = load(TicketCreateSchema(), typed)
        return ticket_domain.create_ticket(
            db.session,
            ticket_queue(),
            actor_id=actor,
            title=body["title"],
            description=body["description"],
            queue_name=body["queue"],
            priority=body["priority"],
        )

    try:
        ticket = attempt(create)
    except Failure as problem:
        return _new_page(Form.failed(typed, problem), problem.status)
    flash(f"Ticket {ticket_label(ticket)} created in “{ticket.queue}”.", "done")
    return see_other(url_for("console.ticket_page", ticket_id=ticket.id))


def _ticket_page(
    ticket_id: int,
    *,
    edit: Form | None = None,
    assign: Form | None = None,
    status: int = 200,
) -> tuple[str, int]:
    history = attempt(lambda: events.history(db.session, ticket_id))
    try:
        ticket = attempt(lambda: ticket_domain.get_ticket(db.session, ticket_id))
    except Failure:
        if not history:
            raise
        ticket = None  # deleted: its history stays
    from ..models import PRIORITIES

    if edit is None and ticket is not None:
        edit = Form(
            {
                "title": ticket.title,
                "description": ticket.description,
                "queue": ticket.queue,
                "priority": PRIORITIES[ticket.priority],
            }
        )
    people = {i for e in history for i in (e.actor_id, e.agent_id) if i is not None}
    if ticket is not None and ticket.agent_id is not None:
        people.add(ticket.agent_id)
    return render_template(
        "console/ticket.html",
        ticket_id=ticket_id,
        ticket=ticket,
        history=history,
        names=usernames(db.session, people),
        edit=edit or Form(),
        assign=assign or Form(),
        agents=attempt(_agents),
        queue_names=attempt(lambda: queues.queue_names(db.session)),
        **live(None),
    ), status


@bp.get("/admin/tickets/<int:ticket_id>/")
@requires("admin")
def ticket_page(ticket_id: int) -> tuple[str, int]:
    return _ticket_page(ticket_id)


@bp.post("/admin/tickets/<int:ticket_id>/")
@requires("admin")
def edit_ticket(ticket_id: int) -> Response | tuple[str, int]:
    """The API's PUT: title, description, queue and priority as the form has them."""
    typed = _ticket_fields()
    actor = visitor().user.id

    def change() -> Any:
        body = load(TicketCreateSchema(), typed)
        return ticket_domain.update_ticket(
            db.session, ticket_queue(), ticket_id, body, actor_id=actor
        )

    try:
        ticket = attempt(change)
    except Failure as problem:
        if problem.status == 404:
            raise
        return _ticket_page(ticket_id, edit=Form.failed(typed, problem), status=problem.status)
    flash(f"Ticket {ticket_label(ticket)} saved.", "done")
    return see_other(url_for("console.ticket_page", ticket_id=ticket_id))


@bp.post("/admin/tickets/<int:ticket_id>/release")
@requires("admin")
def release_ticket(ticket_id: int) -> Response:
    actor = visitor().user.id
    try:
        ticket = attempt(
            lambda: moves.release_ticket(db.session, ticket_queue(), ticket_id, actor_id=actor)
        )
    except Failure as problem:
        flash(f"Ticket #{ticket_id} was not released. {problem.message}", "problem")
    else:
        label = ticket_label(ticket)
        flash(f"Ticket {label} released: it waits in “{ticket.queue}” again.", "done")
    return see_other(url_for("console.ticket_page", ticket_id=ticket_id))


@bp.post("/admin/tickets/<int:ticket_id>/assign")
@requires("admin")
def assign_ticket(ticket_id: int) -> Response | tuple[str, int]:
    typed = {"agent_id": request.form.get("agent_id", "")}
    actor = visitor().user.id

    def give() -> Any:
        body = load(TicketAssignSchema(), {"agent_id": integer(typed["agent_id"])})
        return moves.assign_ticket(
            db.session, ticket_queue(), ticket_id, body["agent_id"], actor_id=actor
        )

    try:
        ticket = attempt(give)
    except Failure as problem:
        if problem.status == 404:
            raise
        return _ticket_page(ticket_id, assign=Form.failed(typed, problem), status=problem.status)
    holder = usernames(db.session, {ticket.agent_id}).get(
        ticket.agent_id, f"agent {ticket.agent_id}"
    )
    flash(f"Ticket {ticket_label(ticket)} assigned to {holder}.", "done")
    return see_other(url_for("console.ticket_page", ticket_id=ticket_id))


@bp.get("/admin/tickets/<int:ticket_id>/delete")
@requires("admin")
def confirm_delete_ticket(ticket_id: int) -> str:
    ticket = attempt(lambda: ticket_domain.get_ticket(db.session, ticket_id))
    return render_template(
        "console/confirm.html",
        heading=f"Delete ticket {ticket_label(ticket)}?",
        explanation="It is never handed out again, and frees its holder's slot."
        " Its history stays readable.",
        action=url_for("console.delete_ticket", ticket_id=ticket_id),
        button="Delete the ticket",
        cancel=url_for("console.ticket_page", ticket_id=ticket_id),
    )


@bp.post("/admin/tickets/<int:ticket_id>/delete")
@requires("admin")
def delete_ticket(ticket_id: int) -> Response:
    actor = visitor().user.id
    try:
        attempt(
            lambda: ticket_domain.delete_ticket(
                db.session, ticket_queue(), ticket_id, actor_id=actor
            )
        )
    except Failure as problem:
        if problem.status == 404:
            raise errors.NotFound(f"no ticket {ticket_id}") from None
        flash(f"Ticket #{ticket_id} was not deleted. {problem.message}", "problem")
        return see_other(url_for("console.ticket_page", ticket_id=ticket_id))
    flash(f"Ticket #{ticket_id} deleted.", "done")
    return see_other(url_for("console.tickets"))
