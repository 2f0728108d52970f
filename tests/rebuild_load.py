"""A client process for the live rebuild tests: ``python tests/rebuild_load.py <config.json>``.

The config names the server, an ``until`` time (unix seconds), the output file
and the agents (id and token). One thread per agent fetches, sells one or two
of what it holds, and repeats until ``until``; every answer is written to the
output file as JSON, for the test to check.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import requests

TIMEOUT = 30.0


def run_agent(url: str, agent: int, token: str, until: float, out: dict[str, Any]) -> None:
    rng = random.Random(agent)
    try:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            while time.time() < until:
                response = http.post(f"{url}/api/agent/tickets/assign/", timeout=TIMEOUT)
                if response.status_code != 200:
                    out["errors"].append(f"fetch {response.status_code}: {response.text}")
                    time.sleep(0.05)
                    continue
                body = response.json()
                tickets = body["tickets"]
                out["fetches"].append(
                    {
                        "agent": agent,
                        "capacity": body["capacity"],
                        "tickets": [[t["id"], t["agent_id"], t["status"]] for t in tickets],
                    }
                )
                ids = [t["id"] for t in tickets]
                for ticket in rng.sample(ids, min(len(ids), rng.randint(1, 2))):
                    sold = http.post(f"{url}/api/agent/tickets/sell/{ticket}/", timeout=TIMEOUT)
                    out["sales"].append([agent, ticket, sold.status_code])
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out["errors"].append(traceback.format_exc())


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    out: dict[str, Any] = {"fetches": [], "sales": [], "errors": []}
    threads = [
        threading.Thread(target=run_agent, args=(config["url"], agent, token, config["until"], out))
        for agent, token in config["agents"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(config["out"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
