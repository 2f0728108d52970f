"""A server-sent events client on a raw socket, read by a thread of its own.

Raw, so a test can drop the connection abruptly (as a network does) and see
exactly what the server sent: the status, the headers, each message and each
comment.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Message:
    id: int | None
    event: str | None
    data: str
    received: float  # time.monotonic() when it arrived


class EventStream:
    """``GET path`` with ``headers`` (and ``Last-Event-ID``), read until it ends."""

    def __init__(
        self,
        base_url: str,
        path: str,
        headers: dict[str, str],
        last_event_id: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sock.settimeout(None)
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode("latin-1")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.messages: queue.Queue[Message] = queue.Queue()
        self.comments = 0
        self.raw = b""
        self.ended = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            length = int(self.headers.get("content-length", "0"))
            self.body = self.file.read(length)
            self.file.close()
            self.ended.set()
            self.close()

    def _chunks(self):  # type: ignore[no-untyped-def]
        while True:
            size_line = self.file.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = self.file.read(size)
            self.file.read(2)
            yield data

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self._chunks():
                self.raw += chunk
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
        except (OSError, ValueError):
            pass
        finally:
            self.file.close()
            self.ended.set()

    def _parse(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            self.messages.put(
                Message(
                    int(fields["id"]) if "id" in fields else None,
                    fields.get("event"),
                    fields["data"],
                    time.monotonic(),
                )
            )

    def next(self, timeout: float = 5.0) -> Message:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None

    def drain(self, quiet: float = 0.3) -> list[Message]:
        """Every message until none has come for ``quiet`` seconds."""
        found = []
        while True:
            try:
                found.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return found

    def close(self) -> None:
        """Drop the connection, as a network does."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.ended.wait(timeout=5)  # the reader saw the end and closed its file

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
