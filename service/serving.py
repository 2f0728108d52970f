"""How gunicorn serves the app: gevent workers whose own error pages are JSON too.

gevent, not sync workers: a sync worker serves one connection at a time, so
five clients that send a login's headers and then trickle its body hold all
five workers until the worker timeout, and ``/healthz`` stops answering. A
gevent worker serves each connection in a greenlet: a slow or idle client
costs a greenlet and a socket, and long-polls and event streams stay open the
same way. PostgreSQL (the driver's wait callback, service/database.py) and
Redis (gevent's sockets) wait cooperatively, since ``gunicorn.conf.py`` patches
the standard library before anything is imported.

Three things gunicorn does on its own are changed here:

* its error pages (a request line or headers too large, a malformed request)
  are HTML; the service answers every error as ``{"error": {...}}``;
* a transfer coding it does not implement is a 501, which tells a client the
  server failed; the request is the client's error, a 400 (below);
* a connection has no read deadline once its headers are in: a client that
  sends a body one byte a minute would hold its greenlet forever. Every
  socket operation on a client connection gets ``GUNICORN_CLIENT_TIMEOUT``
  seconds; a client silent for longer is cut off.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gunicorn import util
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.ggevent import GeventWorker

# Seconds a client may stay silent in the middle of a request (reading its
# body, or taking our answer) before its connection is closed.
CLIENT_TIMEOUT_ENV = "GUNICORN_CLIENT_TIMEOUT"
DEFAULT_CLIENT_TIMEOUT = 10.0

_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "not_implemented",
}


def json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, writing the service's JSON error shape."""
    code = _CODES.get(status_int, "internal_error" if status_int >= 500 else "bad_request")
    message = mesg if status_int < 500 and mesg else reason
    body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers write their error pages through util.write_error (looked up
# on the module at each call), so replacing it here changes every such page.
util.write_error = json_error


class Worker(GeventWorker):
    """gunicorn's gevent worker with a read deadline on every client socket, whose
    event streams and waiting fetches end as soon as it is told to stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raw = os.environ.get(CLIENT_TIMEOUT_ENV) or ""
        self.client_timeout = float(raw) if raw else DEFAULT_CLIENT_TIMEOUT

    # gunicorn stops a worker by setting ``alive`` to False (SIGTERM, a recycle
    # after max_requests, a lost master), then waits up to the graceful timeout
    # for its connections to finish. Streams never finish and a waiting fetch
    # may take 30 s: they are ended at once instead (service/live.py); a
    # stream's client resumes elsewhere with Last-Event-ID.
    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        self._alive = value
        if not value:
            import gevent

            from service.live import shutdown_all

            # Not in a signal handler's frame: in a greenlet of its own.
            gevent.spawn(shutdown_all)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # GeventWorker.handle makes the socket blocking with no timeout; this
        # keeps it blocking (for the greenlet) but bounded per operation.
        client.settimeout(self.client_timeout)
        super(GeventWorker, self).handle(listener, client, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # gunicorn answers a transfer coding it does not implement with a 501.
        # The service's 5xx say it failed and a retry may pass; no retry of
        # this request will. A 400, as RFC 9112 (6.3) requires anyway when the
        # last coding is not chunked (then the body has no length).
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding", req=req)
        super().handle_error(req, client, addr, exc)
