"""The admin's pages: the dashboard, queues, webhooks."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, flash, render_template, request, url_for

from ..domain import activity, queues, workload
from ..domain import webhooks as webhook_domain
from ..domain.events import EVENT_TYPES
from ..extensions import db
from ..models import GENERAL, PRESENCE
from ..schemas import (
    QueueCreateSchema,
    QueuePatchSchema,
    WebhookCreateSchema,
    WebhookDeliveryQuerySchema,
    WebhookPatchSchema,
    WorkloadQuerySchema,
)
from ..state import ticket_queue
from . import ADMIN_STREAM, bp, live, requires, see_other
from .chart import draw
from .forms import Failure, Form, attempt, load

# The workload table's columns a visitor may sort by, and how.
SORTS = {
    "username": lambda a: a.username.lower(),
    "status": lambda a: (PRESENCE.index(a.status), a.username.lower()),
    "held": lambda a: (a.held / a.capacity if a.capacity else 0, a.held),
    "sold": lambda a: a.sold,
    "last_seen": lambda a: a.last_seen_at.timestamp() if a.last_seen_at else 0.0,
}
# At most this many agents on the dashboard (the API's largest page).
AGENTS_SHOWN = 500
FEED_LENGTH = 20


def _workload_view() -> dict[str, Any]:
    """The agents' table as the query string asks: filtered by status, queue and
    name, sorted by a column."""
    wanted = {k: v for k, v in request.args.items() if k in ("status", "queue") and v}
    problem = None
    try:
        filters = attempt(lambda: load(WorkloadQuerySchema(), wanted))
    except Failure as failed:  # told on the page; the table unfiltered
        problem, filters = failed, {}
    agents, more = attempt(
        lambda: workload.list_workload(
            db.session,
            ticket_queue(),
            queue_name=filters.get("queue"),
            status=filters.get("status"),
            limit=AGENTS_SHOWN,
        )
    )
    name = request.args.get("name", "").strip()
    if name:
        agents = [a for a in agents if name.lower() in a.username.lower()]
    sort = request.args.get("sort", "username")
    if sort not in SORTS:
        sort = "username"
    descending = request.args.get("dir") == "desc"
    agents = sorted(agents, key=SORTS[sort], reverse=descending)
    return {
        "agents": agents,
        "more_agents": more is not None,
        "filters": {"status": filters.get("status", ""), "queue": filters.get("queue", "")},
        "name": name,
        "sort": sort,
        "descending": descending,
        "filter_problem": problem,
    }


def sort_link(column: str, sort: str, descending: bool) -> str:
    """The dashboard's URL sorted by ``column``: the other way round if it already is."""
    args: dict[str, Any] = {k: v for k, v in request.args.items() if k not in ("sort", "dir")}
    args["sort"] = column
    if column == sort and not descending:
        args["dir"] = "desc"
    return url_for("console.dashboard", **args)


@bp.get("/admin/")
@requires("admin")
def dashboard() -> str:
    queue_list = attempt(lambda: queues.list_queues(db.session))
    chart = draw(attempt(lambda: activity.per_minute(db.session)))
    feed = attempt(lambda: activity.recent_events(db.session, FEED_LENGTH))
    return render_template(
        "console/dashboard.html",
        queues=queue_list,
        chart=chart,
        feed=feed,
        sort_link=sort_link,
        statuses=PRESENCE,
        **_workload_view(),
        **live(ADMIN_STREAM),
    )


# -- queues -------------------------------------------------------------------------
def _queues_page(form: Form | None = None, status: int = 200) -> tuple[str, int]:
    return render_template(
        "console/queues.html",
        queues=attempt(lambda: queues.list_queues(db.session)),
        form=form or Form(),
        **live(None),
    ), status


@bp.get("/admin/queues/", endpoint="queues")
@requires("admin")
def queues_page() -> tuple[str, int]:
    return _queues_page()


@bp.post("/admin/queues/")
@requires("admin")
def create_queue() -> Response | tuple[str, int]:
    typed = {
        "name": request.form.get("name", "").strip(),
        "description": request.form.get("description", ""),
    }

    def create() -> queues.QueueView:
        body = load(QueueCreateSchema(), typed)
        return queues.create_queue(db.session, name=body["name"], description=body["description"])

    try:
        created = attempt(create)
    except Failure as problem:
        return _queues_page(Form.failed(typed, problem), problem.status)
    flash(f"Queue “{created.name}” created.", "done")
    return see_other(url_for("console.queues"))


def _queue_page(name: str, form: Form | None = None, status: int = 200) -> tuple[str, int]:
    queue = attempt(lambda: queues.get_queue(db.session, name))
    form = form or Form({"description": queue.description})
    return render_template(
        "console/queue.html", queue=queue, form=form, general=GENERAL, **live(None)
    ), status


@bp.get("/admin/queues/<string(maxlength=40):name>/")
@requires("admin")
def queue_page(name: str) -> tuple[str, int]:
    return _queue_page(name)


@bp.post("/admin/queues/<string(maxlength=40):name>/")
@requires("admin")
def describe_queue(name: str) -> Response | tuple[str, int]:
    typed = {"description": request.form.get("description", "")}

    def change() -> queues.QueueView:
        body = load(QueuePatchSchema(), typed)
        return queues.update_queue(db.session, name, description=body["description"])

    try:
        attempt(change)
    except Failure as problem:
        if problem.status == 404:
            raise
        return _queue_page(name, Form.failed(typed, problem), problem.status)
    flash(f"The description of “{name}” is saved.", "done")
    return see_other(url_for("console.queue_page", name=name))


@bp.get("/admin/queues/<string(maxlength=40):name>/delete")
@requires("admin")
def confirm_delete_queue(name: str) -> str:
    queue = attempt(lambda: queues.get_queue(db.session, name))
    return render_template(
        "console/confirm.html",
        heading=f"Delete queue “{queue.name}”?",
        explanation="Only an empty queue can be deleted: no ticket waiting or held in it,"
        " no agent in it. Sold tickets keep its name.",
        action=url_for("console.delete_queue", name=name),
        button="Delete the queue",
        cancel=url_for("console.queue_page", name=name),
    )


@bp.post("/admin/queues/<string(maxlength=40):name>/delete")
@requires("admin")
def delete_queue(name: str) -> Response:
    try:
        attempt(lambda: queues.delete_queue(db.session, name))
    except Failure as problem:
        flash(f"Queue “{name}” was not deleted. {problem.message}", "problem")
        return see_other(url_for("console.queue_page", name=name))
    flash(f"Queue “{name}” deleted.", "done")
    return see_other(url_for("console.queues"))


# -- webhooks -------------------------------------------------------------------------
# The most webhooks listed, and deliveries shown per page (the API's default page).
WEBHOOKS_SHOWN = 500
DELIVERIES_SHOWN = 50


def _webhooks_page(
    form: Form | None = None, created: dict[str, Any] | None = None, status: int = 200
) -> tuple[str, int]:
    hooks, more = attempt(lambda: webhook_domain.list_webhooks(db.session, limit=WEBHOOKS_SHOWN))
    pending = attempt(lambda: webhook_domain.oldest_pending(db.session))
    return render_template(
        "console/webhooks.html",
        webhooks=hooks,
        more_webhooks=more is not None,
        pending=pending,
        created=created,
        event_choices=EVENT_TYPES,
        form=form or Form(),
        **live(None),
    ), status


@bp.get("/admin/webhooks/", endpoint="webhooks")
@requires("admin")
def webhooks_page() -> tuple[str, int]:
    return _webhooks_page()


def _allow_private() -> bool:
    return bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"])


@bp.post("/admin/webhooks/")
@requires("admin")
def create_webhook() -> tuple[str, int]:
    typed: dict[str, Any] = {
        "url": request.form.get("url", "").strip(),
        "events": request.form.getlist("events"),
    }
    secret = request.form.get("secret", "")
    body = dict(typed)
    if secret:  # left empty, one is generated
        body["secret"] = secret

    def create() -> dict[str, Any]:
        loaded = load(WebhookCreateSchema(), body)
        return webhook_domain.create_webhook(db.session, **loaded, allow_private=_allow_private())

    try:
        created = attempt(create)
    except Failure as problem:  # the secret is not typed back into the page
        form = Form.failed(typed, problem)
        if "events" in form.errors and not typed["events"]:
            form.errors["events"] = "Choose at least one."
        return _webhooks_page(form, status=problem.status)
    # The secret is shown in this answer only: no redirect that would lose it.
    return _webhooks_page(created=created, status=201)


def _webhook_page(webhook_id: int) -> str:
    webhook = attempt(lambda: webhook_domain.get_webhook(db.session, webhook_id))
    before = request.args.get("before") or None
    try:
        query = attempt(
            lambda: load(WebhookDeliveryQuerySchema(), {"cursor": before} if before else {})
        )
    except Failure:  # a cursor that does not read: told, the latest shown
        flash("That page of deliveries does not exist; the latest are shown.", "problem")
        query, before = {}, None
    items, next_cursor = attempt(
        lambda: webhook_domain.list_deliveries(
            db.session, webhook_id, limit=DELIVERIES_SHOWN, cursor=query.get("cursor")
        )
    )
    return render_template(
        "console/webhook.html",
        webhook=webhook,
        deliveries=items,
        next_cursor=next_cursor,
        paged=before is not None,
        **live(None),
    )


@bp.get("/admin/webhooks/<int:webhook_id>/")
@requires("admin")
def webhook_page(webhook_id: int) -> str:
    return _webhook_page(webhook_id)


@bp.post("/admin/webhooks/<int:webhook_id>/active")
@requires("admin")
def set_webhook_active(webhook_id: int) -> Response:
    wanted = request.form.get("active", "")
    # The form's string as JSON would send it; anything else the schema refuses.
    active: Any = {"true": True, "false": False}.get(wanted, wanted)

    def change() -> dict[str, Any]:
        loaded = load(WebhookPatchSchema(), {"active": active})
        return webhook_domain.update_webhook(
            db.session, webhook_id, loaded, allow_private=_allow_private()
        )

    try:
        changed = attempt(change)
    except Failure as problem:
        if problem.status == 404:
            raise
        flash(f"The webhook was not changed. {problem.message}", "problem")
    else:
        flash(
            "Webhook resumed: events are sent to it again."
            if changed["active"]
            else "Webhook paused: nothing is sent to it until it is resumed.",
            "done",
        )
    if request.form.get("back") == "list":
        return see_other(url_for("console.webhooks"))
    return see_other(url_for("console.webhook_page", webhook_id=webhook_id))


@bp.get("/admin/webhooks/<int:webhook_id>/delete")
@requires("admin")
def confirm_delete_webhook(webhook_id: int) -> str:
    webhook = attempt(lambda: webhook_domain.get_webhook(db.session, webhook_id))
    return render_template(
        "console/confirm.html",
        heading=f"Delete the webhook to {webhook['url']}?",
        explanation="Nothing more is sent to it, and its deliveries are deleted with it:"
        " pending ones are never sent. To stop it for a while, pause it instead.",
        action=url_for("console.delete_webhook", webhook_id=webhook_id),
        button="Delete the webhook",
        cancel=url_for("console.webhook_page", webhook_id=webhook_id),
    )


@bp.post("/admin/webhooks/<int:webhook_id>/delete")
@requires("admin")
def delete_webhook(webhook_id: int) -> Response:
    try:
        attempt(lambda: webhook_domain.delete_webhook(db.session, webhook_id))
    except Failure as problem:
        if problem.status == 404:
            raise
        flash(f"The webhook was not deleted. {problem.message}", "problem")
        return see_other(url_for("console.webhook_page", webhook_id=webhook_id))
    flash("Webhook deleted.", "done")
    return see_other(url_for("console.webhooks"))
