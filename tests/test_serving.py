"""How the service is served, seen from the network: gunicorn with gevent workers.

Slow or idle clients cannot starve anyone else; what gunicorn answers on its
own (a request line or headers too large, a malformed request) is JSON like
every other error; a chunked body over the limit is a 413.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import requests
from conftest import Factory, service_env
from live import Server, gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture
def server(app: object) -> Iterator[Server]:
    with gunicorn(service_env(GUNICORN_CLIENT_TIMEOUT="3"), workers=2) as server:
        yield server


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; (status, headers, body) of the answer."""
    data = b""
    with socket.create_connection(_address(server), timeout=5) as sock:
        # The server may answer and close before it has read everything (a request
        # line too long): what it sent before the reset is the answer.
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_fifty_slow_clients_do_not_starve_the_others(server: Server, factory: Factory) -> None:
    """Fifty connections send a login's headers and one byte of its body, and stop.
    With sync workers they held every worker; here /healthz and an agent's fetch
    still answer within a second each."""
    agent = factory.user("alice")
    factory.tickets(3)
    headers = factory.headers(agent)
    with ExitStack() as stack:
        for _ in range(50):
            sock = stack.enter_context(socket.create_connection(_address(server), timeout=10))
            sock.sendall(
                b"POST /api/auth/token/ HTTP/1.1\r\nHost: tq\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
        time.sleep(0.5)  # every slow client is connected and waiting
        for _ in range(3):
            started = time.monotonic()
            assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            fetch = requests.get(
                f"{server.url}/api/agent/tickets/assign/", headers=headers, timeout=5
            )
            assert fetch.status_code == 200
            assert len(fetch.json()["tickets"]) == 3
            assert time.monotonic() - started < 1.0


def test_a_client_silent_mid_body_is_cut_off(server: Server) -> None:
    """GUNICORN_CLIENT_TIMEOUT (3 s here) bounds how long a half-sent body holds a
    connection."""
    with socket.create_connection(_address(server), timeout=15) as sock:
        sock.sendall(
            b"POST /api/auth/token/ HTTP/1.1\r\nHost: tq\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        waited = time.monotonic() - started
    assert 2.5 < waited < 10, waited
    assert data.startswith(b"HTTP/1.1 4"), data[:100]


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: tq\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: tq\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, None),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: tq\r\nBad Header Name: x\r\n\r\n", 400, "bad_request"),
        # A body the server cannot read is the client's error, not a 501.
        (b"GET / HTTP/1.1\r\nHost: tq\r\nTransfer-Encoding: DD(\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: tq\r\nTransfer-Encoding: br, chunked\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: tq\r\nExpect: x\r\n\r\n", 417, "expectation_failed"),
    ],
    ids=[
        "long request line",
        "large header",
        "malformed request line",
        "bad header name",
        "unknown transfer coding",
        "unknown coding before chunked",
        "unknown expectation",
    ],
)
def test_gunicorns_own_errors_are_json(
    server: Server, request_bytes: bytes, status: int, code: str | None
) -> None:
    got, headers, body = _raw(server, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code is not None:
        assert error["code"] == code


def _chunked(body: bytes) -> bytes:
    request = (
        b"POST /api/auth/token/ HTTP/1.1\r\nHost: tq\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    for start in range(0, len(body), 8192):
        chunk = body[start : start + 8192]
        request += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    return request + b"0\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_413(server: Server) -> None:
    oversized = b'{"username": "' + b"a" * (65 * 1024) + b'", "password": "x"}'
    status, _, body = _raw(server, _chunked(oversized))
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    # A chunked body within the limit is read whole, as any other.
    status, _, body = _raw(server, _chunked(b'{"username": "nobody", "password": "x"}'))
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_credentials"
