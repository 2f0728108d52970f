"""A client generated from the document is pleasant to use, and works.

openapi-python-client generates a client from the document the app serves
(offline, in a temporary directory). It must have one enum class per concept,
functions named after the operationIds and no model for what the API never
sends; then it talks to the app, through httpx's WSGI transport: an admin
creates an agent, an admin and a ticket, the agent fetches and sells it.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, Factory, service_env
from flask import Flask

from service import create_app

PACKAGE = "ticket_client"
ENUM_CLASS = re.compile(r"^class (\w+)\((?:str, )?(?:Str)?Enum\):", re.MULTILINE)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = create_app(env=service_env())
    served: dict[str, Any] = app.test_client().get("/api/openapi.json").json
    app.extensions["ticket_queue"].client.close()
    return served


@pytest.fixture(scope="module")
def generated(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated package's directory."""
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(document))
    # No formatting hook: the code is read and imported, never committed.
    config = root / "config.yaml"
    config.write_text("post_hooks: []\n")
    package = root / PACKAGE
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            f"--path={spec}",
            f"--output-path={package}",
            f"--config={config}",
            "--meta=none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Anything the generator could not express, it reports as a warning.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return package


@pytest.fixture(scope="module")
def client_package(generated: Path) -> Iterator[ModuleType]:
    sys.path.insert(0, str(generated.parent))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(generated.parent))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_one_enum_class_per_concept(generated: Path) -> None:
    enums = {
        name: path.name
        for path in (generated / "models").glob("*.py")
        for name in ENUM_CLASS.findall(path.read_text())
    }
    assert set(enums) == {
        "Role",
        "TicketStatus",
        "TicketEventKind",
        "Priority",
        "AgentStatus",
        "EventType",
        "DeliveryStatus",
    }, enums


def test_functions_are_named_after_the_operation_ids(
    generated: Path, document: dict[str, Any]
) -> None:
    ids = {
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    modules = {path.stem for path in (generated / "api").glob("*/*.py")} - {"__init__"}
    assert modules == {_snake_case(operation_id) for operation_id in ids}


def test_a_model_for_each_component_and_nothing_else(
    generated: Path, document: dict[str, Any]
) -> None:
    models = {path.stem for path in (generated / "models").glob("*.py")} - {"__init__"}
    # A union (a new user) is a choice of its shapes' models, not a model.
    components = {
        _snake_case(name)
        for name, schema in document["components"]["schemas"].items()
        if "oneOf" not in schema
    }
    # Only the error body's free-form `fields` map gets a model of its own.
    assert models == components | {"error_body_fields"}
    assert "pagination_metadata" not in models


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_the_generated_client_works(
    client_package: ModuleType, app: Flask, factory: Factory
) -> None:
    models = _module(client_package, "models")
    api = _module(client_package, "api")
    auth = _module(api, "auth")
    users = _module(api, "admin_users")
    admin_tickets = _module(api, "admin_tickets")
    agent_tickets = _module(api, "agent_tickets")
    wsgi = {"transport": httpx.WSGITransport(app=app)}
    base = "http://ticket-service"

    def login(username: str) -> Any:
        anonymous = client_package.Client(base_url=base, httpx_args=wsgi)
        body = models.Login(username=username, password=PASSWORD)
        tokens = _module(auth, "login").sync(client=anonymous, body=body)
        assert isinstance(tokens, models.Token), tokens
        return client_package.AuthenticatedClient(
            base_url=base, token=tokens.access_token, httpx_args=wsgi
        )

    factory.user("root", role="admin")
    admin = login("root")
    agent = _module(users, "create_user").sync(
        client=admin,
        body=models.AgentCreate(
            username="alice", password=PASSWORD, role=models.Role.AGENT, capacity=2
        ),
    )
    assert isinstance(agent, models.User) and agent.role is models.Role.AGENT
    assert agent.capacity == 2
    other = _module(users, "create_user").sync(
        client=admin,
        body=models.AdminCreate(username="carol", password=PASSWORD, role=models.Role.ADMIN),
    )
    assert isinstance(other, models.User) and other.role is models.Role.ADMIN
    assert other.capacity is None

    created = _module(admin_tickets, "create_ticket").sync(
        client=admin, body=models.TicketCreate(title="Printer on fire")
    )
    assert created.status is models.TicketStatus.UNASSIGNED

    fetched = _module(agent_tickets, "fetch_tickets").sync(client=login("alice"))
    assert [ticket.id for ticket in fetched.tickets] == [created.id]
    sold = _module(agent_tickets, "sell_ticket").sync(client=login("alice"), ticket_id=created.id)
    assert sold.status is models.TicketStatus.SOLD

    page = _module(admin_tickets, "list_tickets").sync(
        client=admin, status=models.TicketStatus.SOLD
    )
    assert [ticket.id for ticket in page.items] == [created.id]
    history = _module(admin_tickets, "list_ticket_events").sync(client=admin, ticket_id=created.id)
    kinds = [event.kind for event in history.items]
    assert kinds == [
        models.TicketEventKind.CREATED,
        models.TicketEventKind.ASSIGNED,
        models.TicketEventKind.SOLD,
    ]
