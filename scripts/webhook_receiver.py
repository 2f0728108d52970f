#!/usr/bin/env python3
"""A sample webhook receiver (standard library only): checks each delivery, keeps each event once.

    python scripts/webhook_receiver.py --port 9000 --secret "$SECRET" [--log deliveries.jsonl]

A delivery is accepted (204) when its X-TQ-Timestamp is within --tolerance
seconds of now and its X-TQ-Signature is the HMAC-SHA256, keyed with the
webhook's secret, of "<timestamp>.<raw body>"; anything else is refused (401).
Deliveries come at least once, so an event id already seen (X-TQ-Delivery) is
answered 204 again and not processed twice: the ids seen are kept in memory,
and in the --log file if one is given, so they survive a restart.

For tests: --fail-rate answers that share of the deliveries 500 before looking
at them, --delay waits before answering.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance: float) -> bool:
    """Whether the signature is the secret's and the timestamp is recent."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return age <= tolerance and hmac.compare_digest(signature, "sha256=" + expected.hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the webhook's secret")
    parser.add_argument("--tolerance", type=float, default=300, help="seconds of clock skew")
    parser.add_argument("--log", type=Path, help="append each request here as a JSON line")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share answered 500")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()

    seen: set[int] = set()
    lock = threading.Lock()
    if args.log and args.log.exists():  # the events processed before a restart
        for line in args.log.read_text().splitlines():
            entry = json.loads(line)
            if entry["outcome"] == "accepted":
                seen.add(entry["id"])
    log = args.log.open("a", buffering=1) if args.log else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY))
            event_id = int(self.headers.get("X-TQ-Delivery") or 0)
            entry = {"id": event_id, "path": self.path, "at": time.time()}
            if random.random() < args.fail_rate:
                status, entry["outcome"] = 500, "failed"
            elif not verify(
                args.secret,
                self.headers.get("X-TQ-Timestamp", ""),
                body,
                self.headers.get("X-TQ-Signature", ""),
                args.tolerance,
            ):
                status, entry["outcome"] = 401, "refused"
            else:
                with lock:
                    duplicate = event_id in seen
                    seen.add(event_id)
                status, entry["outcome"] = 204, "duplicate" if duplicate else "accepted"
                if not duplicate:  # the place to act on the event, once
                    entry["type"] = json.loads(body)["type"]
            if log is not None:
                with lock:
                    log.write(json.dumps(entry) + "\n")
            time.sleep(args.delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *values: object) -> None:  # noqa: A002
            pass  # the --log file says what came

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
