"""HTTP blueprints, one per resource. Views parse, call the domain, serialise."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import flask
import flask_smorest
import marshmallow as ma
import orjson
from flask import Flask
from webargs import core
from webargs.core import is_json
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.routing import BaseConverter

from ..extensions import rest_api
from ..logging import SANE_REQUEST_ID
from ..schemas import ErrorSchema
from .document import DocumentPlugin

SECURITY_SCHEME = "bearerAuth"
METRICS_SCHEME = "metricsToken"


class IdConverter(BaseConverter):
    """A path id, bounded by its column (tickets 64-bit, users 32-bit).

    Any run of digits matches, and an id out of range becomes 0, which no row
    has: the view answers 404 like for any other missing id. (werkzeug's own
    ``int(max=...)`` refuses the match instead, and then a PUT to a huge id is
    a 405, because the GET rule of the same path was matched first.)
    """

    regex = r"\d+"
    part_isolating = True

    def __init__(self, url_map: Any, max: int) -> None:  # noqa: A002 - werkzeug's argument name
        super().__init__(url_map)
        self.max = int(max)

    def to_python(self, value: str) -> int:
        number = int(value) if len(value) <= 20 else 0
        return number if 1 <= number <= self.max else 0

    def to_url(self, value: Any) -> str:
        return str(int(value))


def _id_parameter(converter: IdConverter) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": converter.max}


TICKET_ID = "<id(max=9223372036854775807):ticket_id>"
USER_ID = "<id(max=2147483647):user_id>"
# A queue's name in a path: one that is no queue name matches no route (a 404).
QUEUE_NAME = "<string(minlength=1, maxlength=40):queue_name>"

# What each error status that follows from how a view is declared means (the README,
# "Errors"); a view declares its own others (409, 429) with alt_response.
ERROR_DESCRIPTIONS = {
    400: "A malformed request: malformed JSON, a body that is not an object, a missing, "
    "wrong-typed or out-of-range field or query parameter (`fields` names each one), or "
    "HTTP the server cannot read (a bad header, a transfer coding other than chunked)",
    401: "No token, a bad signature, an expired or revoked token, or a deactivated account",
    403: "A valid token of the wrong role",
    404: "No such resource",
    413: "The body is over the configured limit",
    414: "The request line (the path and the query) is over the server's limit",
    415: "The body is not application/json",
    417: "An Expect header other than 100-continue",
    431: "A header, or the headers together, over the server's limit",
    500: "An unexpected error; it is logged with the request's id",
    503: "PostgreSQL or Redis is unreachable; nothing was changed, the client may retry",
}
# Any request can get these, whatever the operation: the HTTP server's refusals
# of a request it cannot read (service/serving.py), and an unexpected failure.
EVERY_OPERATION = {400, 414, 417, 431, 500}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before the next attempt",
        "schema": {"type": "integer", "minimum": 0},
    }
}

# Every response carries the request's id (service/logging.py).
REQUEST_ID = {
    "X-Request-ID": {
        "description": "The request's id, as logged; a sane incoming X-Request-ID is kept",
        "schema": {"type": "string", "pattern": f"^{SANE_REQUEST_ID.pattern}$"},
    }
}


def operation_ids(
    view: str, methods: list[str], given: str | Mapping[str, str] | None
) -> dict[str, str]:
    """Each method's operationId: the view function's name in camelCase
    (``create_user``: ``createUser``) unless ``given``. A view serving several
    methods needs one per method: derived ones end with the method's name.

    Generated clients name their functions after these ids, so they are short
    and stable; a view whose function name reads badly as one gives its own."""
    if isinstance(given, Mapping):
        if set(given) != set(methods):
            raise ValueError(f"{view}: give an operationId for each of {methods}")
        return {method.lower(): given[method] for method in methods}
    base = given or _camel_case(view)
    if len(methods) == 1:
        return {methods[0].lower(): base}
    if given is not None:
        raise ValueError(f"{view}: one operationId for {methods}; give one per method")
    return {method.lower(): base + method.capitalize() for method in methods}


def _camel_case(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the operation ``operation_id``; ``parameters`` maps its
    parameters to runtime expressions, e.g. ``ticket_id="$response.body#/id"``."""
    doc: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        doc["parameters"] = parameters
    return doc


def error_doc(status: int) -> dict[str, Any]:
    """An OpenAPI response object for an error ``status`` in the ``ErrorSchema`` shape."""
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": ErrorSchema}},
    }


def _computed_defaults(schema: ma.Schema) -> bool:
    return any(callable(field.load_default) for field in schema.fields.values())


class Parser(FlaskParser):
    """webargs, with the contract's statuses: 400 for bad input, 415 for a non-JSON body."""

    DEFAULT_VALIDATION_STATUS = 400

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._empty_queries: weakref.WeakKeyDictionary[ma.Schema, dict[str, Any] | None] = (
            weakref.WeakKeyDictionary()
        )

    def parse(
        self,
        argmap: Any,
        req: Any = None,
        *,
        location: str | None = None,
        validate: Any = None,
        **kwargs: Any,
    ) -> Any:
        """webargs' parse; a query schema's answer to an empty query string (an
        agent's every plain fetch) is worked out once: its defaults, fixed values
        (a schema with a computed default is parsed every time)."""
        if location == "query" and validate is None and isinstance(argmap, ma.Schema):
            request = req if req is not None else flask.request
            if not request.query_string:
                if argmap not in self._empty_queries:
                    self._empty_queries[argmap] = (
                        None
                        if _computed_defaults(argmap)
                        else super().parse(argmap, req, location=location, **kwargs)
                    )
                loaded = self._empty_queries[argmap]
                if loaded is not None:
                    return dict(loaded)
        return super().parse(argmap, req, location=location, validate=validate, **kwargs)

    def load_json(self, req: Any, schema: Any) -> Any:
        if not is_json(req.mimetype):
            abort(415, message="the body must be application/json")
        return super().load_json(req, schema)

    def _raw_load_json(self, req: Any) -> Any:
        """The body parsed by orjson: nesting too deep, a number too large for a
        double or invalid UTF-8 is a JSONDecodeError like any malformed body (400
        ``malformed_json``), where the standard parser raised RecursionError or
        ValueError (a 500)."""
        if not is_json_request(req):
            return core.missing
        body = req.get_data(cache=True)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if not body:
                return core.missing  # no body at all: the fields are missing
            # (webargs would take an error without a document for an empty body.)
            self._handle_invalid_json_error(exc, req)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, documenting every error an operation can answer with.

    The errors follow from how a view is declared, so the document cannot drift
    from the code: a JSON body can get 400, 413 and 415; query parameters 400; a
    path parameter 404; ``role_required`` adds the bearer scheme, 401 and (for
    one role) 403; every operation touches PostgreSQL or Redis, so 503; any can
    be refused by the HTTP server or fail unexpectedly (``EVERY_OPERATION``).
    Errors particular to a view (409, 429) are declared on it with
    ``alt_response``.

    Every operation gets an operationId (``operation_ids``), so every future
    view has one too.
    """

    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args: Any, uses_backends: bool = True, **kwargs: Any) -> None:
        """``uses_backends=False``: the views answer without PostgreSQL or Redis (no 503)."""
        super().__init__(*args, **kwargs)
        self.uses_backends = uses_backends
        self._prepare_doc_cbks.append(self._prepare_operation_id)
        self._prepare_doc_cbks.append(self._prepare_error_doc)

    def arguments(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        """flask-smorest's ``arguments``, with the schema made once, here: given a
        class, webargs would build a schema on every request (a deep copy of its
        fields), a tenth of an agent's fetch."""
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, *args, **kwargs)

    def route(
        self,
        rule: str,
        *,
        parameters: Any = None,
        tags: Any = None,
        operation_id: str | Mapping[str, str] | None = None,
        **options: Any,
    ) -> Any:
        """flask-smorest's ``route``; ``operation_id`` names the operation (a
        mapping of method to id when the view serves several), instead of
        the view's name in camelCase."""
        register = super().route(rule, parameters=parameters, tags=tags, **options)
        methods = [method.upper() for method in options.get("methods", ["GET"])]

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            # `_apidoc` is where flask-smorest's decorators leave what they
            # document; the views' own decorators have all run by now.
            apidoc = dict(getattr(func, "_apidoc", {}))
            apidoc["errors"] = {
                "auth": getattr(func, "auth_required", None),
                "path_params": "<" in rule,
            }
            apidoc["operation_ids"] = operation_ids(func.__name__, methods, operation_id)
            func._apidoc = apidoc  # type: ignore[attr-defined]
            return register(func)

        return decorator

    def links(self, status: int, **links: dict[str, Any]) -> Callable[..., Any]:
        """Document the operations an answer with ``status`` leads to (``link``)."""
        decorator: Callable[..., Any] = self.doc(responses={status: {"links": links}})
        return decorator

    @staticmethod
    def _prepare_operation_id(
        doc: dict[str, Any], doc_info: dict[str, Any], *, method: str, **_: Any
    ) -> dict[str, Any]:
        doc["operationId"] = doc_info["operation_ids"][method]
        return doc

    def _prepare_error_doc(self, doc: dict[str, Any], doc_info: dict[str, Any], **_: Any) -> Any:
        info = doc_info.get("errors") or {}
        statuses = EVERY_OPERATION | ({503} if self.uses_backends else set())
        # flask-smorest has turned the body argument into requestBody by now.
        if "requestBody" in doc:
            statuses |= {400, 413, 415}
        if any(p.get("in") == "query" for p in doc.get("parameters", []) if isinstance(p, dict)):
            statuses.add(400)
        if info.get("path_params"):
            statuses.add(404)
        auth = info.get("auth")
        if auth is not None:
            doc["security"] = [{SECURITY_SCHEME: []}]
            statuses.add(401)
            if auth["role"] != "any":
                statuses.add(403)
        responses = doc.setdefault("responses", {})
        for status in sorted(statuses):
            # A view's own alt_response (a dict) wins; flask-smorest's generic
            # references (strings) give way to the contract's wording.
            if not isinstance(responses.get(status, responses.get(str(status))), dict):
                responses.pop(str(status), None)
                responses[status] = error_doc(status)
        for response in responses.values():
            if isinstance(response, dict):
                response["headers"] = {**response.get("headers", {}), **REQUEST_ID}
        return doc


def init_api(app: Flask) -> None:
    """Bind flask-smorest to the app, with the error shape and the bearer scheme."""
    rest_api.ERROR_SCHEMA = ErrorSchema
    # Every status an operation answers with is listed on it; no catch-all
    # "default" response that would make any status look documented.
    rest_api.DEFAULT_ERROR_RESPONSE_NAME = None
    app.url_map.converters["id"] = IdConverter
    rest_api.init_app(
        app,
        spec_kwargs={
            "marshmallow_plugin": DocumentPlugin(),
            # Relative: the document works wherever it is served (its own origin,
            # behind a proxy, Swagger UI's "Try it out").
            "servers": [{"url": "/", "description": "The origin serving this document"}],
        },
    )
    # flask-smorest documents its page-number pagination header for every API;
    # this one pages with cursors in the body, so the header's schema is dead.
    rest_api.spec.components.headers_lazy.pop("PAGINATION", None)
    rest_api.spec.components.schemas.pop("PaginationMetadata", None)
    rest_api.register_converter(IdConverter, _id_parameter)
    rest_api.spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from POST /api/auth/token/ (a refresh token "
            "for POST /api/auth/refresh/)",
        },
    )
    rest_api.spec.components.security_scheme(
        METRICS_SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "description": "The operators' METRICS_TOKEN, for Prometheus scrapes of /metrics",
        },
    )


def register_blueprints(app: Flask) -> None:
    from . import (
        admin_agents,
        admin_queues,
        admin_tickets,
        admin_users,
        admin_webhooks,
        agent_status,
        agent_tickets,
        auth,
        events,
        ops,
    )

    init_api(app)
    modules = (
        auth,
        admin_users,
        admin_tickets,
        admin_queues,
        admin_agents,
        admin_webhooks,
        agent_tickets,
        agent_status,
        events,
        ops,
    )
    for module in modules:
        rest_api.register_blueprint(module.blp)
