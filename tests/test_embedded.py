"""The embedded default (SQLite file, in-process Redis) and the configuration rules."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import JWT_SECRET, TEST_DATABASE_URL, TEST_REDIS_URL
from live import ROOT, gunicorn, live_server

from service import create_app
from service.config import ConfigError
from service.extensions import db

TIMEOUT = 10


def embedded_env(instance: Path) -> dict[str, str]:
    """No DATABASE_URL, REDIS_URL nor JWT_SECRET_KEY. They are set empty rather than
    removed, which the service reads as unset, so a .env file in the checkout cannot
    fill them in (load_dotenv never overrides a variable that exists)."""
    return {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "JWT_SECRET_KEY": "",
        "INSTANCE_PATH": str(instance),
    }


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def credentials(output: str) -> dict[str, tuple[str, str]]:
    """{role: (username, password)} from demo-users' output."""
    found = re.findall(r"demo (admin|agent): username '([^']+)' password '([^']+)'", output)
    return {role: (username, password) for role, username, password in found}


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def login(self, username: str, password: str) -> dict[str, str]:
        response = self.session.post(
            f"{self.url}/api/auth/token/",
            json={"username": username, "password": password},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def call(self, method: str, path: str, headers: dict[str, str], status: int = 200, **kw):
        response = self.session.request(
            method, f"{self.url}{path}", headers=headers, timeout=TIMEOUT, **kw
        )
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def fetch(self, headers: dict[str, str]) -> list[int]:
        return [t["id"] for t in self.call("GET", "/api/agent/tickets/assign/", headers)["tickets"]]


def test_embedded_mode_serves_the_whole_flow(tmp_path):
    env = embedded_env(tmp_path)
    upgrade = flask_cli(env, "db", "upgrade")
    assert (tmp_path / "tickets.db").is_file()
    # Only the server says it runs embedded (once), not every command before it.
    assert "embedded mode" not in upgrade.stdout + upgrade.stderr
    demo = credentials(flask_cli(env, "demo-users").stdout)
    assert set(demo) == {"admin", "agent"}
    # Running it again changes nothing and prints the same credentials.
    assert credentials(flask_cli(env, "demo-users").stdout) == demo
    secret = tmp_path / "jwt-secret"
    assert len(secret.read_bytes().strip()) >= 32
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    with live_server(env, workers=1) as url:
        api = Api(url)
        assert requests.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200
        admin = api.login(*demo["admin"])
        ids = [
            api.call("POST", "/api/admin/tickets/", admin, 201, json={"title": f"t{i}"})["id"]
            for i in range(20)
        ]
        agent = api.login(*demo["agent"])
        assert api.fetch(agent) == ids[:15]
        assert api.fetch(agent) == ids[:15]
        sold = api.call("POST", f"/api/agent/tickets/sell/{ids[2]}/", agent)
        assert (sold["status"], sold["id"]) == ("sold", ids[2])
        api.call("POST", f"/api/agent/tickets/sell/{ids[2]}/", agent, 409)
        assert api.fetch(agent) == ids[:2] + ids[3:16]
        stats = api.call("GET", "/api/admin/queue/", admin)
        # Reserved: the one ticket the last fetch confirmed, until the next one.
        assert stats == {"queued": 4, "unassigned": 4, "assigned": 15, "sold": 1, "reserved": 1}
        missing = api.call("GET", "/api/nothing/", admin, 404)
        assert missing["error"]["code"] == "not_found"
        api.call("GET", "/api/agent/tickets/", admin, 403)

    # The SQLite file and the signing key outlive the process; the in-process
    # Redis does not, and is rebuilt from the file at start.
    log_path = tmp_path / "restart.log"
    with gunicorn(env, workers=1, log_path=log_path, log_level="info") as server:
        url = server.url
        api = Api(url)
        assert api.call("GET", "/api/agent/tickets/", agent)["tickets"][0]["id"] == ids[0]
        assert api.call("GET", "/api/admin/queue/", admin)["queued"] == 4
        api.call("POST", f"/api/agent/tickets/sell/{ids[0]}/", agent)
        assert api.fetch(agent) == ids[1:2] + ids[3:17]
    # A normal restart says once where the data is and what it loaded, in words
    # that fit: nothing reads like a repair of something broken.
    log = log_path.read_text()
    assert log.count("embedded mode: the data is in") == 1, log
    assert log.count("rebuild: filled the empty Redis from PostgreSQL: 4 unassigned") == 1, log
    assert "corrected" not in log and "resynced" not in log and "Traceback" not in log


def test_embedded_ids_are_never_reused(tmp_path):
    """Delete the newest ticket and create another: the new one gets a new id, and the
    deleted one's history stays its own."""
    env = embedded_env(tmp_path)
    flask_cli(env, "db", "upgrade")
    demo = credentials(flask_cli(env, "demo-users").stdout)
    with live_server(env, workers=1) as url:
        api = Api(url)
        admin = api.login(*demo["admin"])
        ids = [
            api.call("POST", "/api/admin/tickets/", admin, 201, json={"title": f"t{i}"})["id"]
            for i in range(3)
        ]
        api.call("DELETE", f"/api/admin/tickets/{ids[-1]}/", admin, 204)
        new = api.call("POST", "/api/admin/tickets/", admin, 201, json={"title": "new"})["id"]
        assert new > ids[-1]
        history = api.call("GET", f"/api/admin/tickets/{ids[-1]}/events/", admin)["items"]
        assert [e["kind"] for e in history] == ["created", "deleted"]
        fresh = api.call("GET", f"/api/admin/tickets/{new}/events/", admin)["items"]
        assert [e["kind"] for e in fresh] == ["created"]


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "flask", "--app", "wsgi", "queue", "audit"],
        ["-m", "flask", "--app", "wsgi", "queue", "rebuild"],
        ["scripts/rebuild_queue.py"],
        ["scripts/rebuild_queue.py", "--check"],
        ["scripts/seed.py", "10"],
    ],
    ids=["queue audit", "queue rebuild", "rebuild script", "rebuild script --check", "seed"],
)
def test_embedded_mode_maintenance_commands_refuse_in_one_line(tmp_path, args):
    """Their Redis would be a throwaway copy, not the server's: they refuse, not
    report "no violations" about nothing."""
    env = embedded_env(tmp_path)
    flask_cli(env, "db", "upgrade")
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), lines
    assert "no violations" not in result.stdout and "fixed" not in result.stdout


def test_only_one_of_database_and_redis_is_a_config_error():
    with pytest.raises(ConfigError, match="DATABASE_URL and REDIS_URL"):
        create_app(env={"DATABASE_URL": TEST_DATABASE_URL, "JWT_SECRET_KEY": JWT_SECRET})
    with pytest.raises(ConfigError, match="DATABASE_URL and REDIS_URL"):
        create_app(env={"REDIS_URL": TEST_REDIS_URL, "JWT_SECRET_KEY": JWT_SECRET})


@pytest.mark.parametrize(
    "secret",
    [None, "", "k" * 31, "é" * 15],  # "é" is two bytes: 30 bytes in 15 characters
    ids=["unset", "empty", "31-bytes", "30-bytes-unicode"],
)
def test_outside_embedded_mode_a_missing_or_short_secret_is_a_config_error(secret):
    env = {"DATABASE_URL": TEST_DATABASE_URL, "REDIS_URL": TEST_REDIS_URL}
    if secret is not None:
        env["JWT_SECRET_KEY"] = secret
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app(env=env)


@pytest.mark.parametrize("secret", ["k" * 32, "é" * 16], ids=["32-bytes", "32-bytes-unicode"])
def test_a_secret_of_32_bytes_is_enough(secret):
    app = create_app(
        env={
            "DATABASE_URL": TEST_DATABASE_URL,
            "REDIS_URL": TEST_REDIS_URL,
            "JWT_SECRET_KEY": secret,
        }
    )
    assert app.config["JWT_SECRET_KEY"] == secret
    assert app.config["EMBEDDED"] is False
    app.extensions["ticket_queue"].client.close()


def test_embedded_mode_keeps_its_signing_key(tmp_path):
    first = create_app(env={"INSTANCE_PATH": str(tmp_path)})
    second = create_app(env={"INSTANCE_PATH": str(tmp_path)})
    assert first.config["EMBEDDED"] is True
    assert first.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'tickets.db'}"
    assert len(first.config["JWT_SECRET_KEY"].encode()) >= 32
    assert second.config["JWT_SECRET_KEY"] == first.config["JWT_SECRET_KEY"]
    assert (tmp_path / "jwt-secret").read_text().strip() == first.config["JWT_SECRET_KEY"]
    for app in (first, second):
        with app.app_context():
            db.engine.dispose()
