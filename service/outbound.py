"""Requests the service makes to URLs an admin gave it (webhooks), and the guard on them.

An admin names a URL; the workers POST to it. Without a guard that is a way
to make the service reach what only it can reach (server-side request
forgery): its own loopback, the private network, a cloud's metadata address.
So a URL is only ever used if:

* it is ``http`` or ``https``, plain ASCII, with no credentials or fragment;
* its host (a name, or an IP literal) resolves, within a bounded time, to
  addresses that are all public: none loopback, private, link-local, shared,
  multicast, unspecified or reserved, IPv4 or IPv6, and none an IPv6 address
  carrying such an IPv4 one (IPv4-mapped, 6to4, Teredo);

unless ``WEBHOOK_ALLOW_PRIVATE`` is set (development, an internal receiver).
The check runs when the URL is saved and again at every request, and the
request connects to the very addresses that were checked, so a name that
resolves elsewhere later (DNS rebinding) gains nothing. Redirects are never
followed, and at most ``MAX_READ`` bytes of an answer are read.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SCHEMES = {"http": 80, "https": 443}
# How long saving a URL may wait for its host to resolve.
RESOLVE_TIMEOUT = 2.0
# Lookups in flight at once in this process: a resolver that hangs ties up at
# most this many threads, and a lookup that cannot start in time is refused.
MAX_LOOKUPS = 8
# The most of an answer's body that is read (for the error it explains).
MAX_READ = 1024
USER_AGENT = "tq-webhooks/1.0"

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_lookups = threading.BoundedSemaphore(MAX_LOOKUPS)


class Refused(Exception):
    """The URL may not be used; the message says why, for an admin to read."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the checked addresses) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    """How one request went: the HTTP status (None: no answer) and, unless it was a
    2xx, why it did not deliver."""

    status: int | None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


def parse(url: str) -> Target:
    """The URL's parts, before any resolution (``addresses`` is empty)."""
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise Refused("must be printable ASCII with no spaces (percent-encode the rest)")
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as exc:  # a bad port or IPv6 literal
        raise Refused(f"not a valid URL ({exc})") from None
    scheme = split.scheme.lower()
    if scheme not in SCHEMES:
        raise Refused("must be an http:// or https:// URL")
    if split.username is not None or split.password is not None:
        raise Refused("must not contain credentials; receivers check the signature instead")
    if split.fragment or url.endswith("#"):
        raise Refused("must not contain a fragment")
    host = (split.hostname or "").rstrip(".")
    if not host:
        raise Refused("must name a host")
    if not _is_ip(host) and not _is_hostname(host):
        raise Refused(f"{host!r} is not a valid host name")
    if port == 0:
        raise Refused("the port must be between 1 and 65535")
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return Target(scheme, host, port or SCHEMES[scheme], path, ())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def refusal(address: str) -> str | None:
    """Why an address may not be reached, as "a loopback address" (None: it is public)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refusal(str(ip.ipv4_mapped))  # in effect, the IPv4 address it maps
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and refusal(str(embedded)) is not None:
            return f"an IPv6 address carrying {embedded}"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            name = kind.replace("_", "-")
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name} address"
    if not ip.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int, timeout: float) -> tuple[str, ...]:
    """The addresses ``host`` resolves to, waiting at most ``timeout`` seconds."""
    if _is_ip(host):
        return (host,)
    deadline = time.monotonic() + timeout
    if not _lookups.acquire(timeout=timeout):
        raise Refused(f"could not resolve {host} in time (too many lookups in progress)")
    found: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            found["error"] = exc
        finally:
            done.set()
            _lookups.release()

    # A daemon thread: a resolver that hangs never holds up the process's exit.
    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        raise Refused(f"{host} did not resolve within {timeout:g}s")
    if "error" in found:
        raise Refused(f"cannot resolve {host}")
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in found["infos"]))
    if not addresses:
        raise Refused(f"cannot resolve {host}")
    return addresses


def check(url: str, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT) -> Target:
    """The URL, checked and resolved; raises ``Refused``. With ``allow_private`` any
    address will do, so the name is left to be resolved when a request is made."""
    target = parse(url)
    if allow_private:
        return target
    return _resolved(target, timeout, allow_private=False)


def _resolved(target: Target, timeout: float, *, allow_private: bool) -> Target:
    addresses = resolve(target.host, target.port, timeout)
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                if target.host == address:
                    raise Refused(f"{address} is {why}")
                raise Refused(f"{target.host} resolves to {address}, {why}")
    return Target(target.scheme, target.host, target.port, target.path, addresses)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> Answer:
    """POST ``body`` to ``url``: checked again (the name may resolve elsewhere by
    now), connected to the addresses just checked, answered within ``timeout``
    seconds in all (resolution included) or abandoned. Never raises for what the
    network or the receiver does: the answer says what happened."""
    deadline = time.monotonic() + timeout
    try:
        target = _resolved(parse(url), timeout, allow_private=allow_private)
    except Refused as exc:
        return Answer(None, f"refused: {exc}")
    try:
        sock = _connect(target, deadline)
    except TimeoutError:
        return Answer(None, f"no connection within {timeout:g}s")
    except ssl.SSLError as exc:
        return Answer(None, f"TLS failed: {exc.reason or exc}")
    except OSError as exc:
        return Answer(None, f"cannot connect: {exc.strerror or exc}")
    return _exchange(sock, target, body, headers, deadline, timeout)


def _connect(target: Target, deadline: float) -> socket.socket:
    last: OSError = TimeoutError()
    for address in target.addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            sock = socket.create_connection((address, target.port), timeout=left)
        except OSError as exc:
            last = exc
            continue
        if target.scheme == "https":
            try:
                return ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
            except BaseException:
                sock.close()
                raise
        return sock
    raise last


def _exchange(
    sock: socket.socket,
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    deadline: float,
    timeout: float,
) -> Answer:
    """Send the request on ``sock`` and read the status. A timer shuts the socket
    at the deadline, so a receiver that trickles its answer cannot hold it longer."""
    conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock  # the checked connection; http.client never connects itself
    left = max(deadline - time.monotonic(), 0.001)
    sock.settimeout(left)
    timer = threading.Timer(left, _shut, args=(sock,))
    timer.daemon = True
    timer.start()
    try:
        conn.putrequest("POST", target.path, skip_accept_encoding=True)
        for name, value in {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **headers,
            "Content-Length": str(len(body)),
            "Connection": "close",
        }.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        status = response.status
        if 200 <= status < 300:
            return Answer(status)  # delivered: the body, if any, is not waited for
        excerpt = _excerpt(response)
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            return Answer(None, f"no answer within {timeout:g}s")
        return Answer(None, f"the connection failed: {type(exc).__name__}: {exc}".rstrip(": "))
    finally:
        timer.cancel()
        conn.close()
    reason = f"answered {status}"
    if 300 <= status < 400:
        reason += " (redirects are not followed)"
    text = " ".join(excerpt.decode("utf-8", "replace").split())[:200]
    return Answer(status, f"{reason}: {text}" if text else reason)


def _excerpt(response: http.client.HTTPResponse) -> bytes:
    """The start of a refusal's body, to say why; what cannot be read by the deadline
    is left out."""
    try:
        return response.read(MAX_READ)
    except (OSError, http.client.HTTPException):
        return b""


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)
