"""Hold open connections against a server: event streams and waiting fetches.

    python -m scripts.bench.connections URL TOKENS --streams N --waits N [--wait 30]

One asyncio process: each of the first ``--streams`` agents of TOKENS (lines
"<agent id> <token>") keeps an event stream open (GET /api/agent/events/,
reconnecting if it ends); each of the first ``--waits`` keeps a fetch waiting
(GET /api/agent/tickets/assign/?wait=, sent again on the same connection as
soon as it is answered). Idle, it costs next to no CPU, so it can sit beside
the server and wrk on the same cores. Every second it writes its counts to
``--status`` (JSON); on SIGTERM or SIGINT it closes everything, writes them a
last time and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

STREAM = "/api/agent/events/"
ASSIGN = "/api/agent/tickets/assign/"


@dataclass
class Counts:
    streams_open: int = 0
    streams_opened: int = 0
    stream_bytes: int = 0
    waits_in_flight: int = 0
    waits_sent: int = 0
    waits_answered: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # status -> count
    errors: int = 0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["refused"] = dict(self.refused)
        return out


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _request(host: str, path: str, token: str, accept: str = "application/json") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: {accept}\r\n\r\n"
    ).encode()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
        return
    while True:  # chunked
        size = int((await reader.readline()).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def hold_stream(host: str, port: int, token: str, counts: Counts) -> None:
    while True:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_request(host, STREAM, token, "text/event-stream"))
            status, headers = await _head(reader)
            if status != 200:
                counts.refused[str(status)] += 1
                await _body(reader, headers)
                await asyncio.sleep(5)
                continue
            counts.streams_open += 1
            counts.streams_opened += 1
            try:
                while data := await reader.read(65536):
                    counts.stream_bytes += len(data)
            finally:
                counts.streams_open -= 1
        except (OSError, ValueError, asyncio.IncompleteReadError):
            counts.errors += 1
            await asyncio.sleep(1)
        finally:
            if writer is not None:
                writer.close()


async def hold_wait(host: str, port: int, token: str, wait: int, counts: Counts) -> None:
    path = f"{ASSIGN}?wait={wait}"
    while True:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            while True:  # one keep-alive connection, a wait after another
                writer.write(_request(host, path, token))
                counts.waits_sent += 1
                counts.waits_in_flight += 1
                try:
                    status, headers = await _head(reader)
                    await _body(reader, headers)
                finally:
                    counts.waits_in_flight -= 1
                counts.waits_answered += 1
                if status != 200:
                    counts.refused[str(status)] += 1
                    await asyncio.sleep(5)
                if headers.get("connection", "").lower() == "close":
                    break
        except (OSError, ValueError, asyncio.IncompleteReadError):
            counts.errors += 1
            await asyncio.sleep(1)
        finally:
            if writer is not None:
                writer.close()


async def main_async(args: argparse.Namespace) -> Counts:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tokens = [line.split()[1] for line in args.tokens.read_text().splitlines() if line.strip()]
    counts = Counts()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    # Opened in batches, as a crowd of clients would arrive, not all in one
    # instant (the listen backlog is finite).
    for n in range(max(args.streams, args.waits)):
        if n < args.streams:
            tasks.append(asyncio.create_task(hold_stream(host, port, tokens[n], counts)))
        if n < args.waits:
            tasks.append(asyncio.create_task(hold_wait(host, port, tokens[n], args.wait, counts)))
        if n % 100 == 99:
            await asyncio.sleep(0.05)

    async def report() -> None:
        while True:
            if args.status:
                args.status.write_text(json.dumps({"at": time.time(), **counts.as_dict()}))
            await asyncio.sleep(1)

    tasks.append(asyncio.create_task(report()))
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if args.status:
        args.status.write_text(json.dumps({"at": time.time(), **counts.as_dict()}))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.connections")
    p.add_argument("url")
    p.add_argument("tokens", type=Path, help='file of lines "<agent id> <token>"')
    p.add_argument("--streams", type=int, default=0, help="event streams to hold open")
    p.add_argument("--waits", type=int, default=0, help="fetches to keep waiting")
    p.add_argument("--wait", type=int, default=30, help="seconds each fetch waits (?wait=)")
    p.add_argument("--status", type=Path, help="JSON file rewritten every second")
    args = p.parse_args(argv)
    counts = asyncio.run(main_async(args))
    print(json.dumps(counts.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
