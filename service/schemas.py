"""Request and response schemas: they validate input and generate the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .models import EVENT_KINDS, PRESENCE, PRIORITIES, ROLES, STATUSES


class StrictInteger(fields.Integer):
    """An integer that refuses booleans and numeric strings: JSON has real numbers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


# The largest ids: tickets and events are 64-bit, users 32-bit. A bigger one in a
# path is a 404, in a query a 400; the document states both.
MAX_TICKET_ID = 2**63 - 1
MAX_USER_ID = 2**31 - 1


class Text(fields.String):
    """A string PostgreSQL can store: no NUL character, no lone surrogate (from a
    JSON escape like "\\ud800"). Either would otherwise fail deep in the driver.
    The document says so with a pattern."""

    default_error_messages = {
        "nul": "must not contain NUL characters",
        "unicode": "must be valid Unicode",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A field with a pattern of its own (which excludes NUL) keeps it.
        if not any(isinstance(v, validate.Regexp) for v in self.validators):
            self.metadata = {"pattern": "^[^\\u0000]*$", **self.metadata}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("nul")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("unicode") from None
        return text


class WholeMatch(validate.Regexp):
    """Regexp over the whole value: ``$`` alone also matches before a final newline."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class StrictBoolean(fields.Boolean):
    """Only JSON ``true`` and ``false``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def utc_iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC, also for naive values from SQLite (stored as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


class UtcDateTime(fields.DateTime):
    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return utc_iso(value)


# -- the document's shape ------------------------------------------------
# A schema's class may say more about its document than its fields do; the
# document's generator (service/api/document.py) reads these two attributes.
@dataclass(frozen=True)
class OneOf:
    """Document a schema as one of several shapes, told apart by one property.

    The schema itself stays the validator; the shapes only describe, for
    clients, a rule the server checks across fields (or in the domain)."""

    discriminator: str
    mapping: Mapping[str, type[Schema]]


class Documented(Schema):
    """A schema with JSON Schema keywords of its own in the document."""

    # Keywords added to the schema's document, e.g. ``minProperties``.
    document_keywords: ClassVar[Mapping[str, Any]] = {}
    # Documented as this union of shapes instead of its own fields.
    document_one_of: ClassVar[OneOf | None] = None


class Choice(fields.String):
    """A string from one of the API's fixed sets: a role, a ticket status, an event kind.

    Each set is a subclass, documented once as an enum component named after
    it that every use refers to, so a generated client has one enum type per
    set. The first paragraph of the subclass's docstring describes the component.
    ``only`` narrows a use to some of the set's values (documented as the
    component, restricted), e.g. the role that tells a union's shapes apart.
    """

    values: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, only: Sequence[str] | None = None, **kwargs: Any) -> None:
        self.only = tuple(only) if only is not None else None
        if self.only is not None and not set(self.only) <= set(self.values):
            raise ValueError(f"{type(self).__name__} has no {self.only}")
        super().__init__(validate=validate.OneOf(self.only or self.values), **kwargs)


class Role(Choice):
    """A user's role: admins manage users and tickets, agents are handed tickets."""

    values = ROLES


class TicketStatus(Choice):
    """Where a ticket is: waiting in the queue, held by an agent, or sold."""

    values = STATUSES


class TicketEventKind(Choice):
    """What happened to a ticket: created, updated (its title, description, queue or
    priority), assigned to an agent, sold, released back to its queue, or deleted."""

    values = EVENT_KINDS


class Priority(Choice):
    """A ticket's priority: an agent's free slot takes higher priority first, then older."""

    values = PRIORITIES

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        # Stored as its rank (0 urgent .. 3 low), shown by name.
        if isinstance(value, int):
            value = PRIORITIES[value]
        return super()._serialize(value, attr, obj, **kwargs)


class AgentStatus(Choice):
    """An agent's presence: only online agents are handed tickets."""

    values = PRESENCE


class EventType(Choice):
    """What happened to a ticket, as integrations name it (a webhook's X-TQ-Event and
    body type, its events filter): ticket.created, ticket.updated, ticket.assigned,
    ticket.sold, ticket.released, ticket.deleted."""

    values = tuple(f"ticket.{kind}" for kind in EVENT_KINDS)


class DeliveryStatus(Choice):
    """Where a webhook delivery is: pending (its next attempt is due at
    next_attempt_at), delivered (a 2xx answer), or failed (every attempt failed)."""

    values = ("pending", "delivered", "failed")


# A queue's name: lower-case letters, digits, '_' and '-', up to 40 characters.
QUEUE_NAME = [
    validate.Length(min=1, max=40),
    WholeMatch(
        r"^[a-z0-9][a-z0-9_-]{0,39}$",
        error="a-z, 0-9, '_' and '-', starting with a letter or digit, up to 40 characters",
    ),
]


def queue_name(**kwargs: Any) -> fields.String:
    return fields.String(validate=QUEUE_NAME, **kwargs)


# -- errors --------------------------------------------------------------
class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    # "fields" would shadow Schema.fields; data_key keeps the wire name.
    bad_fields = fields.Dict(keys=fields.String(), values=fields.String(), data_key="fields")


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


# -- auth ----------------------------------------------------------------
class LoginSchema(Schema):
    username = Text(required=True, validate=validate.Length(min=1, max=64))
    password = Text(required=True, validate=validate.Length(min=1, max=256))


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class AccessTokenSchema(Schema):
    access_token = fields.String(required=True)
    expires_in = fields.Integer(required=True)


# -- users ---------------------------------------------------------------
# A list, not validate.And: the document then shows the length and the pattern.
USERNAME = [
    validate.Length(min=3, max=64),
    WholeMatch(r"^[A-Za-z0-9_.-]+$", error="only letters, digits, '_', '.' and '-'"),
]
PASSWORD = validate.Length(min=8, max=256)
CAPACITY = validate.Range(min=1, max=1000)


def agent_capacity() -> StrictInteger:
    """An agent's capacity on creation: left out or null, the configured default."""
    return StrictInteger(validate=CAPACITY, load_default=None, allow_none=True)


class NewUserSchema(Schema):
    username = Text(required=True, validate=USERNAME)
    password = Text(required=True, validate=PASSWORD, load_only=True)


def agent_queues() -> fields.List:
    """An agent's queues: left out or null on creation, ``["general"]``."""
    return fields.List(
        queue_name(),
        validate=validate.Length(max=100),
        load_default=None,
        allow_none=True,
        metadata={"description": "The queues it takes work from (by name); default general"},
    )


class AgentCreateSchema(NewUserSchema, Documented):
    """A new agent, as documented (``UserCreateSchema`` validates)."""

    role = Role(required=True, only=["agent"])
    capacity = agent_capacity()
    queues = agent_queues()

    document_keywords = {
        "description": "A new agent. Without a capacity (or with null), it gets the "
        "configured default (TICKETS_PER_AGENT); without queues, general. It starts online."
    }


class AdminCreateSchema(NewUserSchema, Documented):
    """A new admin, as documented (``UserCreateSchema`` validates)."""

    role = Role(required=True, only=["admin"])
    capacity = StrictInteger(validate=validate.OneOf([None]), allow_none=True)
    queues = fields.List(queue_name(), validate=validate.OneOf([None]), allow_none=True)

    document_keywords = {
        "description": "A new admin. Admins have no capacity and no queues: leave them out "
        "(null means the same)."
    }


class UserCreateSchema(NewUserSchema, Documented):
    """Validates a new user; the domain refuses a capacity for an admin
    (``users.create_user``). The document shows the two shapes that rule leaves."""

    role = Role(required=True)
    capacity = agent_capacity()
    queues = agent_queues()

    document_one_of = OneOf("role", {"agent": AgentCreateSchema, "admin": AdminCreateSchema})


class PatchSchema(Documented):
    """A PATCH body must change something."""

    document_keywords = {"minProperties": 1}

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            names = ", ".join(self.fields)
            raise ValidationError(f"give at least one of: {names}", "_schema")


class UserPatchSchema(PatchSchema):
    password = Text(validate=PASSWORD, load_only=True)
    is_active = StrictBoolean()
    capacity = StrictInteger(validate=CAPACITY)
    queues = fields.List(
        queue_name(),
        validate=validate.Length(max=100),
        metadata={"description": "Agents only: the queues it takes work from, all of them"},
    )
    status = AgentStatus(metadata={"description": "Agents only: its presence"})


class UserSchema(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    role = Role(required=True)
    is_active = fields.Boolean(required=True)
    capacity = fields.Integer(required=True, allow_none=True)
    queues = fields.List(fields.String(), required=True, allow_none=True)
    status = AgentStatus(required=True, allow_none=True)
    created_at = UtcDateTime(required=True)


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


# StrictInteger refuses query strings ("5"), so query params use plain Integer.
# A left-out parameter has no default here (the domain's is None): a query
# string cannot carry a null, so the document must not offer one.
class UserQuerySchema(Schema):
    limit = fields.Integer(
        validate=validate.Range(min=1, max=500),
        load_default=50,
        metadata={"description": "Items per page"},
    )
    cursor = fields.String(
        validate=[validate.Length(min=1, max=20), WholeMatch(r"^[0-9]+$", error="not a cursor")],
        metadata={"description": "The `next_cursor` of the previous page"},
    )


# -- tickets -------------------------------------------------------------
# A title needs a visible character, and may contain no control character
# (C0, DEL, C1). What counts as invisible: whitespace and the format characters
# that render as nothing (zero-width spaces and joiners, bidi controls, the
# byte-order mark, variation selectors...). One pattern serves the check and
# the document, so a generated client sends only titles the server takes.
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f"
_INVISIBLE = (
    "\\s\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f"
    "\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u206f\\u3164\\ufe00-\\ufe0f"
    "\\ufeff\\uffa0\\ufff0-\\ufff8"
)
TITLE_PATTERN = f"^[^{_CONTROL}]*[^{_INVISIBLE}{_CONTROL}][^{_CONTROL}]*$"
DESCRIPTION = validate.Length(max=10_000)


class Title(Text):
    """A ticket's title: checked as sent (1 to 200 characters, a visible one among
    them, no control character), then stored without surrounding whitespace."""

    default_error_messages = {
        "blank": "must not be blank",
        "control": "must not contain control characters",
    }
    _control = re.compile(f"[{_CONTROL}]")
    _visible = re.compile(f"[^{_INVISIBLE}{_CONTROL}]")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            validate=validate.Length(min=1, max=200),
            metadata={"pattern": TITLE_PATTERN},
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self._control.search(text):
            raise self.make_error("control")
        if not self._visible.search(text):
            raise self.make_error("blank")
        return text

    def deserialize(self, *args: Any, **kwargs: Any) -> Any:
        # Validators (the length) run on the title as sent; what is stored is trimmed.
        value = super().deserialize(*args, **kwargs)
        return value.strip() if isinstance(value, str) else value


class TicketCreateSchema(Schema):
    """Create, or replace (PUT): a missing description is empty, a missing queue
    general, a missing priority normal."""

    title = Title(required=True)
    description = Text(validate=DESCRIPTION, load_default="")
    queue = queue_name(load_default="general", metadata={"description": "The queue it waits in"})
    priority = Priority(load_default="normal")


class TicketPatchSchema(PatchSchema):
    title = Title()
    description = Text(validate=DESCRIPTION)
    queue = queue_name(metadata={"description": "Move it to this queue"})
    priority = Priority()


class TicketQuerySchema(UserQuerySchema):
    status = TicketStatus(metadata={"description": "Only tickets in this state"})
    agent_id = fields.Integer(
        validate=validate.Range(min=1, max=MAX_USER_ID),
        metadata={"description": "Only tickets held or sold by this agent"},
    )
    queue = queue_name(metadata={"description": "Only tickets of this queue"})
    priority = Priority(metadata={"description": "Only tickets of this priority"})


class TicketAssignSchema(Schema):
    agent_id = StrictInteger(
        required=True,
        validate=validate.Range(min=1, max=MAX_USER_ID),
        metadata={"description": "The active agent to give the ticket to"},
    )


class TicketSchema(Schema):
    id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    queue = fields.String(required=True)
    priority = Priority(required=True)
    status = TicketStatus(required=True)
    agent_id = fields.Integer(required=True, allow_none=True)
    created_at = UtcDateTime(required=True)
    updated_at = UtcDateTime(required=True)
    assigned_at = UtcDateTime(required=True, allow_none=True)
    sold_at = UtcDateTime(required=True, allow_none=True)


class EventMessageSchema(Schema):
    """An event as a stream message's data and a webhook's body."""

    id = fields.Integer(required=True, metadata={"description": "The event id; only grows"})
    type = EventType(
        required=True,
        metadata={"description": "ticket.created, ticket.updated, ticket.assigned, ..."},
    )
    at = UtcDateTime(required=True)
    ticket = fields.Nested(
        TicketSchema,
        required=True,
        allow_none=True,
        metadata={"description": "The ticket as the change left it (for a deletion, before)"},
    )
    actor_id = fields.Integer(required=True, allow_none=True)
    agent_id = fields.Integer(required=True, allow_none=True)


class TicketPageSchema(Schema):
    items = fields.List(fields.Nested(TicketSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class HoldingSchema(Schema):
    tickets = fields.List(fields.Nested(TicketSchema), required=True)
    capacity = fields.Integer(required=True)


class TicketEventSchema(Schema):
    id = fields.Integer(required=True)
    ticket_id = fields.Integer(required=True)
    kind = TicketEventKind(required=True)
    actor_id = fields.Integer(required=True, allow_none=True)
    agent_id = fields.Integer(required=True, allow_none=True)
    at = UtcDateTime(required=True)


class TicketEventListSchema(Schema):
    items = fields.List(fields.Nested(TicketEventSchema), required=True)


class FetchQuerySchema(Schema):
    wait = fields.Integer(
        validate=validate.Range(min=0, max=30),
        metadata={
            "description": "Seconds to wait, when the agent is online with room and its queues"
            " are empty, for a ticket to arrive; answered as soon as one is assigned"
        },
    )


# -- routing -------------------------------------------------------------
class QueueCreateSchema(Schema):
    name = queue_name(required=True)
    description = Text(validate=validate.Length(max=500), load_default="")


class QueuePatchSchema(PatchSchema):
    description = Text(validate=validate.Length(max=500))


class QueueSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    created_at = UtcDateTime(required=True)
    unassigned = fields.Integer(required=True)
    assigned = fields.Integer(required=True)
    agents = fields.Integer(required=True)
    agents_online = fields.Integer(required=True)
    oldest_unassigned_at = UtcDateTime(required=True, allow_none=True)


class QueueListSchema(Schema):
    items = fields.List(fields.Nested(QueueSchema), required=True)


class WorkloadQuerySchema(UserQuerySchema):
    queue = queue_name(metadata={"description": "Only agents of this queue"})
    status = AgentStatus(metadata={"description": "Only agents with this presence"})


class WorkloadSchema(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    is_active = fields.Boolean(required=True)
    status = AgentStatus(required=True)
    status_since = UtcDateTime(required=True)
    queues = fields.List(fields.String(), required=True)
    capacity = fields.Integer(required=True)
    held = fields.Integer(required=True)
    sold = fields.Integer(required=True)
    last_seen_at = UtcDateTime(required=True, allow_none=True)


class WorkloadPageSchema(Schema):
    items = fields.List(fields.Nested(WorkloadSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class StatusChangeSchema(Schema):
    status = AgentStatus(required=True)


class PresenceSchema(Schema):
    status = AgentStatus(required=True)
    since = UtcDateTime(required=True)


class QueueStatsSchema(Schema):
    queued = fields.Integer(required=True)
    unassigned = fields.Integer(required=True)
    assigned = fields.Integer(required=True)
    sold = fields.Integer(required=True)
    reserved = fields.Integer(required=True)


# -- webhooks ------------------------------------------------------------
# The server checks more (service/outbound.py): an ASCII URL with no credentials
# or fragment whose host resolves to public addresses only.
WEBHOOK_URL = [
    validate.Length(min=1, max=2048),
    WholeMatch(r"^https?://[!-~]+$", error="an http:// or https:// URL, with no spaces"),
]
WEBHOOK_SECRET = validate.Length(min=16, max=256)


def webhook_url(**kwargs: Any) -> Text:
    return Text(
        validate=WEBHOOK_URL,
        metadata={
            "description": "Where events are POSTed: http or https; its host must resolve to"
            " public addresses only (loopback, private and link-local ones are refused)"
        },
        **kwargs,
    )


def webhook_events(**kwargs: Any) -> fields.List:
    return fields.List(
        EventType(),
        validate=validate.Length(min=1, max=100),
        metadata={"description": "The event types to send (each once; order does not matter)"},
        **kwargs,
    )


class WebhookCreateSchema(Schema):
    url = webhook_url(required=True)
    events = webhook_events(load_default=list(EventType.values))
    secret = Text(
        validate=WEBHOOK_SECRET,
        metadata={
            "description": "The key deliveries are signed with; left out, one is generated."
            " Shown in this answer only"
        },
    )
    active = StrictBoolean(
        load_default=True, metadata={"description": "Inactive webhooks are sent nothing"}
    )


class WebhookPatchSchema(PatchSchema):
    url = webhook_url()
    events = webhook_events()
    active = StrictBoolean(
        metadata={
            "description": "false pauses it: no new deliveries, pending ones wait; true resumes"
        }
    )
    secret = Text(
        validate=WEBHOOK_SECRET,
        metadata={"description": "A new signing key, shown in this answer only"},
    )
    regenerate_secret = StrictBoolean(
        metadata={"description": "true: generate a new signing key, shown in this answer only"}
    )


class WebhookSchema(Schema):
    id = fields.Integer(required=True)
    url = fields.String(required=True)
    events = fields.List(EventType(), required=True)
    active = fields.Boolean(required=True)
    created_at = UtcDateTime(required=True)
    updated_at = UtcDateTime(required=True)


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(
        metadata={
            "description": "The signing key: in the answer to the request that set it (a"
            " creation, or a PATCH with secret or regenerate_secret), never again"
        }
    )


class WebhookPageSchema(Schema):
    items = fields.List(fields.Nested(WebhookSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class WebhookQuerySchema(UserQuerySchema):
    pass


class WebhookDeliveryQuerySchema(UserQuerySchema):
    status = DeliveryStatus(metadata={"description": "Only deliveries in this state"})


class WebhookDeliverySchema(Schema):
    event_id = fields.Integer(required=True, metadata={"description": "The event (X-TQ-Delivery)"})
    type = EventType(required=True)
    attempts = fields.Integer(required=True, metadata={"description": "Attempts made so far"})
    status = DeliveryStatus(required=True)
    last_status_code = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The HTTP status of the last answer (null: no answer)"},
    )
    last_error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the last attempt did not deliver (null: it did)"},
    )
    next_attempt_at = UtcDateTime(
        required=True, allow_none=True, metadata={"description": "When pending: its next attempt"}
    )
    delivered_at = UtcDateTime(required=True, allow_none=True)


class WebhookDeliveryPageSchema(Schema):
    items = fields.List(fields.Nested(WebhookDeliverySchema), required=True)
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Newest event first: the cursor of the next, older page"},
    )


def ticket_json(ticket: Any) -> dict[str, Any]:
    """TicketSchema's output, built directly: the agent routes are the hot path and
    marshmallow's per-field machinery was a fifth of their CPU. The times stay
    datetimes; the app's JSON provider writes them as ISO 8601 in UTC. A test
    keeps the two documents equal."""
    return {
        "id": ticket.id,
        "title": ticket.title,
        "description": ticket.description,
        "queue": ticket.queue,
        "priority": PRIORITIES[ticket.priority],
        "status": ticket.status,
        "agent_id": ticket.agent_id,
        "created_at": ticket.created_at,
        "updated_at": ticket.updated_at,
        "assigned_at": ticket.assigned_at,
        "sold_at": ticket.sold_at,
    }


def holding_json(tickets: Any, capacity: int) -> dict[str, Any]:
    """HoldingSchema's output, built directly (see ``ticket_json``)."""
    return {"tickets": [ticket_json(t) for t in tickets], "capacity": capacity}
