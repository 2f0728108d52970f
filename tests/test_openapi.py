"""The OpenAPI document is complete and true, checked against a live server.

schemathesis reads /api/openapi.json from a gunicorn server on real PostgreSQL
and Redis, generates requests for every operation (valid and invalid ones),
sends them with the right role's token, and checks that no answer is a 5xx;
that every status code, content type, header and body is one the document
declares; that what the document calls invalid is refused, and what it calls
valid is accepted unless state refuses it. Then sequences of calls that follow
the document's links (a new ticket, then its page, change, history and
deletion; a fetch, then a sale) are checked the same way.

Bounded and derandomized for CI: a few examples per operation, the same on
every run. To search at scale, with new cases on every run:

    SCHEMATHESIS_RANDOM=1 SCHEMATHESIS_EXAMPLES=200 pytest tests/test_openapi.py

(``SCHEMATHESIS_EXAMPLES`` cases per operation, and as many linked sequences;
past a few hundred, raise pytest's per-test limit too, e.g. ``--timeout 1800``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from conftest import METRICS_TOKEN, Factory, fresh_app, reset_state, service_env
from hypothesis import HealthCheck, Phase, settings
from live import live_server
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import create_app
from service.auth import access_token, new_session, refresh_token
from service.extensions import db
from service.models import User

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
# Derandomized and bounded unless asked otherwise (see the module's docstring).
RANDOM = os.environ.get("SCHEMATHESIS_RANDOM") == "1"
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))


class Seeded:
    """The live server's URL, plus its seeded admin and agent and a way to mint their tokens."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app
        self.admin_id, self.agent_id = self.seed()

    def seed(self) -> tuple[int, int]:
        """An admin, an agent, the queue the document's examples name and five
        tickets in general; their ids."""
        factory = Factory(self.app)
        factory.queue("billing")
        admin = factory.user("admin", role="admin")
        agent = factory.user("agent", role="agent", capacity=3)
        factory.tickets(5)
        return admin.id, agent.id

    def reset(self) -> None:
        """Back to the seeded state (the ids are reset too)."""
        reset_state(self.app)
        self.admin_id, self.agent_id = self.seed()

    def token(self, user_id: int, role: str, refresh: bool = False) -> str:
        # A fresh token per request: a generated logout revokes only its own.
        make = refresh_token if refresh else access_token
        with self.app.app_context():
            # A generated PATCH may have changed the password: the current version.
            version = db.session.scalar(sa.select(User.token_version).where(User.id == user_id))
            db.session.rollback()
            return make(user_id, role, version or 0, new_session())

    def authorization(self, path: str) -> str:
        if path == "/metrics":
            return f"Bearer {METRICS_TOKEN}"
        if path.startswith("/api/agent/"):
            token = self.token(self.agent_id, "agent")
        elif path == "/api/auth/refresh/":
            token = self.token(self.admin_id, "admin", refresh=True)
        else:
            token = self.token(self.admin_id, "admin")
        return f"Bearer {token}"

    def restore_accounts(self) -> None:
        """Generated PATCHes may deactivate the seeded users; undo it so the next
        requests get past authentication instead of all ending in 401."""
        with self.app.app_context():
            db.session.execute(
                sa.update(User)
                .where(User.id.in_([self.admin_id, self.agent_id]))
                .values(is_active=True)
            )
            db.session.commit()

    def prepare(self, case: Any) -> None:
        """Ready the server and ``case`` for one generated request."""
        self.restore_accounts()
        if case.headers and "Authorization" in case.headers:
            # The case means to be authenticated: give it a real token of the
            # route's role. Cases generated without the header stay without it.
            case.headers["Authorization"] = self.authorization(case.operation.path)
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int) and not isinstance(wait, bool) and 1 < wait <= 30:
            # A valid wait, shortened: a fetch whose queue is empty waits that
            # long, and hundreds of cases would take minutes. Still valid, and
            # still a wait (tests/test_long_poll.py tests the waiting itself).
            case.query["wait"] = 1


@pytest.fixture(scope="module")
def seeded(_schema: None) -> Iterator[Seeded]:
    with fresh_app() as app:
        # Generated logins come from one address: the login limits would turn
        # them into 429s long before the cases run out.
        lenient = {
            name: "100000 per minute"
            for name in ("LOGIN_RATE_LIMIT", "LOGIN_ADDRESS_RATE_LIMIT", "LOGIN_ACCOUNT_RATE_LIMIT")
        }
        with live_server(service_env(**lenient), workers=2) as url:
            yield Seeded(url, app)


def _document() -> dict[str, Any]:
    """The document the app serves, read at collection time to make one test per operation.

    The live server serves the same one (test_live_server_serves_this_document).
    """
    app = create_app(env=service_env())
    document: dict[str, Any] = app.test_client().get("/api/openapi.json").json
    app.extensions["ticket_queue"].client.close()
    return document


DOCUMENT = _document()
# An invalid request may also be too large, in its body (413), its request line
# (414) or its headers (431), or ask for what the server does not do (417).
NEGATIVE_REJECTED = ["400", "401", "403", "404", "405", "409", "413", "414", "415", "417"]
NEGATIVE_REJECTED += ["422", "429", "431"]

# A valid request can still be refused for what no schema can state: no or a
# wrong credential (401, 403), an id that names nothing (404), the state of
# what it names (409), its size once encoded (413), a rate limit (429). Each
# operation may answer with those of them it documents, or succeed.
REFUSED_BY_STATE = {"401", "403", "404", "409", "413", "429"}
# Operations whose description says a 400 depends on state too: a capacity
# for a user who turns out to be an admin, a queue that does not exist (yet),
# an agent_id that names no active agent, a webhook URL whose host does not
# resolve or resolves to a private address.
STATEFUL_400 = {
    "updateUser",
    "createUser",
    "createTicket",
    "replaceTicket",
    "updateTicket",
    "assignTicket",
    "createWebhook",
    "updateWebhook",
}


def _accepted_statuses(operation: dict[str, Any]) -> list[str]:
    documented = set(operation["responses"])
    accepted = {status for status in documented if status.startswith("2")}
    accepted |= documented & REFUSED_BY_STATE
    if operation["operationId"] in STATEFUL_400:
        accepted.add("400")
    return sorted(accepted)


def _per_operation(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "include-operation-id": operation["operationId"],
            "checks": {
                "positive_data_acceptance": {"expected-statuses": _accepted_statuses(operation)}
            },
        }
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    ]


# An event stream answers for as long as the client listens: a generated call
# would only end at its timeout. tests/test_streams.py tests them on a live
# server (and the document's shape is tested with the rest).
STREAMS = ["streamMyEvents", "streamEvents"]

schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    # Per operation: the examples, the coverage phase (every boundary and
    # missing or wrong-typed field the document implies), then fuzzed cases.
    # The linked sequences are a test of their own (test_linked_calls_...).
    config=SchemathesisConfig.from_dict(
        {
            "checks": {"negative_data_rejection": {"expected-statuses": NEGATIVE_REJECTED}},
            "operations": _per_operation(DOCUMENT),
        }
    ),
).exclude(operation_id=STREAMS)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # The same cases on every run: a change to the document or the service
    # changes them, a rerun does not (no flaky gate).
    derandomize=not RANDOM,
    suppress_health_check=list(HealthCheck),
)


def test_live_server_serves_this_document(seeded: Seeded) -> None:
    assert requests.get(f"{seeded.url}/api/openapi.json", timeout=5).json() == DOCUMENT


@schema.parametrize()
@SETTINGS
def test_every_operation_answers_as_documented(case: Any, seeded: Seeded) -> None:
    seeded.prepare(case)
    response = case.call(base_url=seeded.url, timeout=10)
    case.validate_response(response, checks=CHECKS)


def test_linked_calls_answer_as_documented(seeded: Seeded) -> None:
    """Sequences that follow the document's links, each call checked like one alone."""

    class LinkedCalls(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each sequence starts from the same state, so the same choices
            # lead to the same answers (Hypothesis replays choices, not answers).
            seeded.reset()

        def before_call(self, case: Any) -> None:
            seeded.prepare(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": seeded.url, "timeout": 10}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    LinkedCalls.run(settings=settings(SETTINGS, phases=[Phase.generate], stateful_step_count=10))


def test_document_and_docs_are_served_with_and_without_trailing_slash(seeded: Seeded) -> None:
    for path in ("/api/openapi.json", "/api/openapi.json/"):
        response = requests.get(seeded.url + path, timeout=5)
        assert response.status_code == 200
        assert response.json()["openapi"].startswith("3.")
    for path in ("/api/docs", "/api/docs/"):
        response = requests.get(seeded.url + path, timeout=5)
        assert response.status_code == 200
        assert "swagger-ui" in response.text


def test_document_declares_auth_errors_and_no_catch_all(seeded: Seeded) -> None:
    document = requests.get(seeded.url + "/api/openapi.json", timeout=5).json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["properties"]) == {"code", "message", "fields"}

    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    for (method, path), operation in operations.items():
        assert "default" not in operation["responses"], (method, path)
        protected = not path.startswith("/api/auth/token") and path.startswith("/api/")
        protected = protected or path == "/metrics"  # the operators' token
        assert ("security" in operation) == protected, (method, path)
        if protected:
            assert "401" in operation["responses"], (method, path)
        if "{" in path:
            assert "404" in operation["responses"], (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= set(operation["responses"]), (method, path)
        assert "500" in operation["responses"], (method, path)

    assert "403" in operations[("GET", "/api/admin/tickets/")]["responses"]
    assert "403" in operations[("POST", "/api/agent/tickets/sell/{ticket_id}/")]["responses"]
    assert "409" in operations[("POST", "/api/agent/tickets/sell/{ticket_id}/")]["responses"]
    assert "409" in operations[("POST", "/api/admin/users/")]["responses"]
    login = operations[("POST", "/api/auth/token/")]["responses"]
    assert "Retry-After" in login["429"]["headers"]
    assert "204" in operations[("DELETE", "/api/admin/tickets/{ticket_id}/")]["responses"]
    assert "204" in operations[("POST", "/api/auth/logout/")]["responses"]
    query = {p["name"] for p in operations[("GET", "/api/admin/tickets/")]["parameters"]}
    assert query == {"status", "agent_id", "queue", "priority", "limit", "cursor"}
    assert set(operations[("GET", "/readyz")]["responses"]) == {
        *{"200", "503"},  # the probe's own
        *{"400", "414", "417", "431", "500"},  # any request's
    }


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/admin/tickets/", '{"title": "a\\u0000b"}', "title"),
        ("/api/admin/tickets/", '{"title": "\\ud800"}', "body"),
        (
            "/api/admin/users/",
            '{"username": "abc\\n", "password": "p4ssw0rd!", "role": "agent"}',
            "username",
        ),
        ("/api/auth/token/", '{"username": "a\\u0000", "password": "x"}', "username"),
    ],
)
def test_strings_postgresql_cannot_store_are_refused(
    seeded: Seeded, path: str, body: str, field: str
) -> None:
    """A NUL or a name with a trailing newline is a 400 naming the field, a lone
    surrogate one naming the body (no JSON parser of ours reads it), not a 500 from
    the database driver nor a stored name that matches no rule."""
    response = requests.post(
        seeded.url + path,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": seeded.authorization(path),
        },
        timeout=5,
    )
    assert response.status_code == 400, response.text
    assert list(response.json()["error"]["fields"]) == [field]
