"""What the OpenAPI document says, read with no server.

test_openapi.py checks the document against a live server; these check its
shape, as a generated client and a reader get it: one short operationId per
operation, one enum component per concept, the server's rules on bodies and
parameters, examples that are valid and links that lead somewhere.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from conftest import service_env
from marshmallow import ValidationError

from service import create_app
from service.api import operation_ids
from service.domain.events import EVENT_TYPES
from service.models import EVENT_KINDS, PRESENCE, PRIORITIES, ROLES, STATUSES
from service.schemas import TITLE_PATTERN, TicketPatchSchema, UserPatchSchema

Operation = tuple[str, str, dict[str, Any]]

OPERATION_IDS = {
    ("POST", "/api/auth/token/"): "login",
    ("POST", "/api/auth/refresh/"): "refreshToken",
    ("POST", "/api/auth/logout/"): "logout",
    ("POST", "/api/admin/users/"): "createUser",
    ("GET", "/api/admin/users/"): "listUsers",
    ("GET", "/api/admin/users/{user_id}/"): "getUser",
    ("PATCH", "/api/admin/users/{user_id}/"): "updateUser",
    ("POST", "/api/admin/tickets/"): "createTicket",
    ("GET", "/api/admin/tickets/"): "listTickets",
    ("GET", "/api/admin/tickets/{ticket_id}/"): "getTicket",
    ("PUT", "/api/admin/tickets/{ticket_id}/"): "replaceTicket",
    ("PATCH", "/api/admin/tickets/{ticket_id}/"): "updateTicket",
    ("DELETE", "/api/admin/tickets/{ticket_id}/"): "deleteTicket",
    ("GET", "/api/admin/tickets/{ticket_id}/events/"): "listTicketEvents",
    ("POST", "/api/admin/tickets/{ticket_id}/release/"): "releaseTicket",
    ("POST", "/api/admin/tickets/{ticket_id}/assign/"): "assignTicket",
    ("GET", "/api/admin/queue/"): "getQueueStats",
    ("POST", "/api/admin/queues/"): "createQueue",
    ("GET", "/api/admin/queues/"): "listQueues",
    ("GET", "/api/admin/queues/{queue_name}/"): "getQueue",
    ("PATCH", "/api/admin/queues/{queue_name}/"): "updateQueue",
    ("DELETE", "/api/admin/queues/{queue_name}/"): "deleteQueue",
    ("GET", "/api/admin/agents/"): "listAgentWorkload",
    ("POST", "/api/admin/webhooks/"): "createWebhook",
    ("GET", "/api/admin/webhooks/"): "listWebhooks",
    ("GET", "/api/admin/webhooks/{webhook_id}/"): "getWebhook",
    ("PATCH", "/api/admin/webhooks/{webhook_id}/"): "updateWebhook",
    ("DELETE", "/api/admin/webhooks/{webhook_id}/"): "deleteWebhook",
    ("GET", "/api/admin/webhooks/{webhook_id}/deliveries/"): "listWebhookDeliveries",
    ("POST", "/api/agent/tickets/assign/"): "fetchTickets",
    ("GET", "/api/agent/tickets/assign/"): "fetchTicketsWithGet",
    ("GET", "/api/agent/tickets/"): "listHeldTickets",
    ("POST", "/api/agent/tickets/sell/{ticket_id}/"): "sellTicket",
    ("GET", "/api/agent/status/"): "getMyStatus",
    ("PUT", "/api/agent/status/"): "setMyStatus",
    ("GET", "/api/agent/events/"): "streamMyEvents",
    ("GET", "/api/admin/events/"): "streamEvents",
    ("GET", "/healthz"): "healthz",
    ("GET", "/readyz"): "readyz",
    ("GET", "/metrics"): "getMetrics",
}
ENUMS = {
    "Role": list(ROLES),
    "TicketStatus": list(STATUSES),
    "AgentStatus": list(PRESENCE),
    "Priority": list(PRIORITIES),
    "EventType": list(EVENT_TYPES),
    "DeliveryStatus": ["pending", "delivered", "failed"],
}
NUL_FREE = "^[^\\u0000]*$"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = create_app(env=service_env())
    served: dict[str, Any] = app.test_client().get("/api/openapi.json").json
    app.extensions["ticket_queue"].client.close()
    return served


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method.upper(), path, operation


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {operation["operationId"]: operation for _, _, operation in operations(document)}


def component(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].removeprefix("#/components/schemas/")
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def body_schema(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    body = by_id(document)[operation_id]["requestBody"]["content"]["application/json"]
    return component(document, body["schema"])


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the document, with a JSON pointer to it."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def json_schema(node: Any) -> Any:
    """OpenAPI 3.0's schema dialect as JSON Schema: ``nullable`` becomes a null type."""
    if isinstance(node, list):
        return [json_schema(value) for value in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        if "enum" in converted and None not in converted["enum"]:
            converted["enum"] = [*converted["enum"], None]
    return converted


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of ``schema``, whose references point into the document's components."""
    root = {"allOf": [json_schema(schema)], "components": json_schema(document["components"])}
    return jsonschema_rs.Draft4Validator(root)


# -- operationIds -----------------------------------------------------------
def test_every_operation_has_its_own_short_operation_id(document: dict[str, Any]) -> None:
    ids = {
        (method, path): operation.get("operationId")
        for method, path, operation in operations(document)
    }
    assert None not in ids.values(), [key for key, value in ids.items() if value is None]
    shared = [name for name, count in Counter(ids.values()).items() if count > 1]
    assert not shared, shared
    assert ids == OPERATION_IDS


def test_operation_ids_come_from_the_view_unless_given() -> None:
    assert operation_ids("create_user", ["POST"], None) == {"post": "createUser"}
    assert operation_ids("patch_user", ["PATCH"], "updateUser") == {"patch": "updateUser"}
    # One view on two methods: one id each, derived or given.
    assert operation_ids("assign", ["GET", "POST"], None) == {
        "get": "assignGet",
        "post": "assignPost",
    }
    given = {"POST": "fetchTickets", "GET": "fetchTicketsWithGet"}
    assert operation_ids("assign", ["GET", "POST"], given) == {
        "get": "fetchTicketsWithGet",
        "post": "fetchTickets",
    }
    with pytest.raises(ValueError):
        operation_ids("assign", ["GET", "POST"], "fetchTickets")
    with pytest.raises(ValueError):
        operation_ids("assign", ["GET", "POST"], {"POST": "fetchTickets"})


# -- one enum per concept ---------------------------------------------------
def test_each_fixed_set_is_one_enum_component(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, values in ENUMS.items():
        assert schemas[name]["type"] == "string"
        assert schemas[name]["enum"] == values
        assert schemas[name]["description"]
    kinds = schemas["TicketEventKind"]["enum"]
    assert set(EVENT_KINDS) <= set(kinds), "the log writes a kind the document does not list"
    assert "updated" in kinds
    assert len(kinds) == len(set(kinds))


def test_every_use_of_a_fixed_set_refers_to_its_component(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    enums = {*ENUMS, "TicketEventKind"}
    for where, node in walk(document):
        values = [value for value in node.get("enum", []) if value is not None]
        if not values or where in {f"#/components/schemas/{name}" for name in enums}:
            continue
        # Only a narrowed use of a set (a discriminator's value) lists values,
        # beside its reference to the set.
        (narrowed,) = node["allOf"]
        name = narrowed["$ref"].removeprefix("#/components/schemas/")
        assert name in enums, where
        assert set(values) <= set(schemas[name]["enum"]), where

    def ref(schema: str, field: str) -> str:
        return str(schemas[schema]["properties"][field]["$ref"])

    assert ref("User", "role") == "#/components/schemas/Role"
    assert ref("Ticket", "status") == "#/components/schemas/TicketStatus"
    assert ref("TicketEvent", "kind") == "#/components/schemas/TicketEventKind"
    (status,) = [p for p in by_id(document)["listTickets"]["parameters"] if p["name"] == "status"]
    assert status["schema"] == {"$ref": "#/components/schemas/TicketStatus"}


def test_query_parameters_offer_no_null(document: dict[str, Any]) -> None:
    """A query string cannot carry a null: a client must not be told to send one."""
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []):
            schema = parameter["schema"]
            where = (method, path, parameter["name"])
            assert not schema.get("nullable"), where
            assert schema.get("default", "none given") is not None, where


def test_every_component_is_used(document: dict[str, Any]) -> None:
    """No dead schema (flask-smorest's PaginationMetadata was one): each is
    reachable from an operation."""
    schemas = document["components"]["schemas"]
    reached: set[str] = set()
    pending = [document["paths"]]
    while pending:
        for _, node in walk(pending.pop()):
            target = node.get("$ref", "")
            name = target.removeprefix("#/components/schemas/")
            if target.startswith("#/components/schemas/") and name not in reached:
                reached.add(name)
                pending.append(schemas[name])
    assert reached == set(schemas)
    assert "PaginationMetadata" not in schemas
    assert "headers" not in document["components"]


# -- errors, servers --------------------------------------------------------
def test_every_operation_documents_what_any_request_can_get(document: dict[str, Any]) -> None:
    """The HTTP server's refusals (a malformed request, a request line or headers
    too large, an unknown expectation), 500, and 503 where PostgreSQL or Redis is
    needed: all in the error shape."""
    for method, path, operation in operations(document):
        responses = operation["responses"]
        for status in ("400", "414", "417", "431", "500"):
            error = responses[status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        # Only the probes and the metrics answer without PostgreSQL and Redis.
        needs_backends = operation["operationId"] not in {"healthz", "getMetrics"}
        assert ("503" in responses) == needs_backends, (method, path)


def test_the_server_is_wherever_the_document_is_served(document: dict[str, Any]) -> None:
    assert [server["url"] for server in document["servers"]] == ["/"]


# -- the server's rules -----------------------------------------------------
def test_patch_bodies_must_change_something(document: dict[str, Any]) -> None:
    for operation_id, schema in (
        ("updateUser", UserPatchSchema()),
        ("updateTicket", TicketPatchSchema()),
    ):
        assert body_schema(document, operation_id)["minProperties"] == 1
        with pytest.raises(ValidationError):
            schema.load({})


def test_a_new_user_is_an_agent_or_an_admin(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    union = body_schema(document, "createUser")
    agent = {"$ref": "#/components/schemas/AgentCreate"}
    admin = {"$ref": "#/components/schemas/AdminCreate"}
    assert union["oneOf"] == [agent, admin]
    assert union["discriminator"] == {
        "propertyName": "role",
        "mapping": {"agent": agent["$ref"], "admin": admin["$ref"]},
    }
    for name in ("AgentCreate", "AdminCreate"):
        assert schemas[name]["additionalProperties"] is False
        assert set(schemas[name]["required"]) == {"username", "password", "role"}
    check = validator(document, union)
    user = {"username": "alice", "password": "correct-horse"}
    assert check.is_valid({**user, "role": "agent"})
    assert check.is_valid({**user, "role": "agent", "capacity": 5})
    assert check.is_valid({**user, "role": "agent", "capacity": None})
    assert check.is_valid({**user, "role": "admin"})
    # The server reads a null capacity as none, for an admin too.
    assert check.is_valid({**user, "role": "admin", "capacity": None})
    assert not check.is_valid({**user, "role": "admin", "capacity": 5})
    assert not check.is_valid({**user, "role": "agent", "capacity": 0})
    assert not check.is_valid({**user, "role": "auditor"})
    assert not check.is_valid({**user, "role": "agent", "extra": 1})


def test_an_admins_capacity_is_said_to_depend_on_the_role(document: dict[str, Any]) -> None:
    description = by_id(document)["updateUser"]["description"]
    assert "400" in description and "admin" in description


def test_string_rules_are_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("AgentCreate", "AdminCreate"):
        username = schemas[name]["properties"]["username"]
        assert (username["minLength"], username["maxLength"]) == (3, 64)
        assert username["pattern"] == "^[A-Za-z0-9_.-]+$"
        assert schemas[name]["properties"]["password"]["pattern"] == NUL_FREE
    login = schemas["Login"]["properties"]
    assert login["username"]["pattern"] == login["password"]["pattern"] == NUL_FREE
    assert schemas["UserPatch"]["properties"]["password"]["pattern"] == NUL_FREE
    for name in ("TicketCreate", "TicketPatch"):
        title = schemas[name]["properties"]["title"]
        assert (title["minLength"], title["maxLength"], title["pattern"]) == (
            1,
            200,
            TITLE_PATTERN,
        )
        description = schemas[name]["properties"]["description"]
        assert (description["maxLength"], description["pattern"]) == (10_000, NUL_FREE)
    for operation_id in ("listUsers", "listTickets"):
        parameters = {p["name"]: p["schema"] for p in by_id(document)[operation_id]["parameters"]}
        assert parameters["cursor"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": 20,
            "pattern": "^[0-9]+$",
        }


@pytest.mark.parametrize(
    ("title", "valid"),
    [
        ("a", True),
        ("  Printer on fire  ", True),
        ("Ünïcödé ✓", True),
        ("", False),
        ("   ", False),
        ("\u200b\u200d\ufeff", False),
        ("a\x00b", False),
        ("a\nb", False),
        ("a\x85b", False),
    ],
)
def test_the_title_pattern_is_the_servers_rule(title: str, valid: bool) -> None:
    """The document's pattern accepts exactly the titles the server keeps."""
    assert (re.fullmatch(TITLE_PATTERN, title) is not None) == valid
    assert (not TicketPatchSchema().validate({"title": title})) == valid


# -- examples and links -----------------------------------------------------
def examples(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Each example in the document: where, the schema it illustrates, its value."""
    for _, _, operation in operations(document):
        media = [
            ("body", content)
            for content in operation.get("requestBody", {}).get("content", {}).values()
        ]
        media += [
            (status, content)
            for status, response in operation["responses"].items()
            for content in response.get("content", {}).values()
        ]
        for part, content in media:
            where = f"{operation['operationId']} {part}"
            if "example" in content:
                yield where, content["schema"], content["example"]
            for name, example in content.get("examples", {}).items():
                yield f"{where} {name}", content["schema"], example["value"]


def test_the_main_routes_have_valid_examples(document: dict[str, Any]) -> None:
    found = list(examples(document))
    for where, schema, value in found:
        errors = [error.message for error in validator(document, schema).iter_errors(value)]
        assert not errors, (where, errors)
    illustrated = {" ".join(where.split()[:2]) for where, _, _ in found}
    assert {
        "login body",
        "login 200",
        "createUser body",
        "createUser 201",
        "createTicket body",
        "createTicket 201",
        "fetchTickets 200",
        "sellTicket 200",
    } <= illustrated
    bodies = {where for where, _, _ in found if where.startswith("createUser body")}
    assert bodies == {"createUser body agent", "createUser body admin"}


def _pointer(value: Any, pointer: str) -> Any:
    for part in pointer.strip("/").split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def test_links_lead_to_operations_and_their_parameters(document: dict[str, Any]) -> None:
    by_operation = by_id(document)
    linked = set()
    for source, operation in by_operation.items():
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                target = by_operation[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", [])}
                path = next(p for p, item in document["paths"].items() if target in item.values())
                names |= set(re.findall(r"{(\w+)}", path))
                example = response["content"]["application/json"]["example"]
                for parameter, expression in link.get("parameters", {}).items():
                    assert parameter in names, (source, name, parameter)
                    # The expression finds a value in the answer's example.
                    pointer = expression.removeprefix("$response.body#")
                    assert pointer != expression, (source, name, expression)
                    assert _pointer(example, pointer) is not None, (source, name, expression)
                linked.add((source, link["operationId"]))
    assert {
        ("createTicket", "getTicket"),
        ("login", "refreshToken"),
        ("createUser", "getUser"),
        ("fetchTickets", "sellTicket"),
    } <= linked


def test_a_webhook_delivery_is_documented_as_a_callback(document: dict[str, Any]) -> None:
    """What a receiver gets: the event message as the body, and the signature's headers."""
    create = by_id(document)["createWebhook"]
    (delivery,) = create["callbacks"]["event"].values()
    post = delivery["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EventMessage"}
    message = document["components"]["schemas"]["EventMessage"]
    assert message["properties"]["type"]["allOf"] == [{"$ref": "#/components/schemas/EventType"}]
    assert message["properties"]["ticket"]["allOf"] == [{"$ref": "#/components/schemas/Ticket"}]
    assert message["properties"]["ticket"]["nullable"] is True
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert headers == {"X-TQ-Event", "X-TQ-Delivery", "X-TQ-Timestamp", "X-TQ-Signature"}

    # The secret is shown where it is set, never where a webhook is read.
    def answer(operation_id: str, status: str) -> dict[str, Any]:
        content = by_id(document)[operation_id]["responses"][status]["content"]
        return component(document, content["application/json"]["schema"])

    assert "secret" in answer("createWebhook", "201")["properties"]
    assert "secret" in answer("updateWebhook", "200")["properties"]
    assert "secret" not in answer("getWebhook", "200")["properties"]
    for operation_id in ("createWebhook", "updateWebhook"):
        assert "400" in by_id(document)[operation_id]["description"]
