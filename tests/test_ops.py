"""Operability: request logs, metrics, the readiness deadline, the login limit across
processes, and refusing to start without a signing key."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import METRICS_AUTH, PASSWORD, Factory, fresh_app, service_env
from flask import Flask
from flask.testing import FlaskClient
from helpers import assert_error
from live import ROOT, free_port, live_server, stop, wait_for

from service import create_app
from service.config import ConfigError, load_config
from service.logging import REQUEST_ID_HEADER, configure_logging
from service.models import GENERAL
from service.state import ticket_queue


# -- logs ---------------------------------------------------------------------
class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def request_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [line for line in lines if line["logger"] == "service.request"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def json_log() -> Iterator[Captured]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging(env={"LOG_FORMAT": "auto"}, stream=stream)  # not a terminal: JSON
    yield Captured(stream)
    for handler in [h for h in root.handlers if h.get_name() == "service"]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_each_request_is_one_json_line_with_id_user_route_status_and_duration(
    client: FlaskClient, factory: Factory, json_log: Captured
) -> None:
    agent = factory.user("alice")
    response = client.get("/api/agent/tickets/", headers=factory.headers(agent))
    missing = client.get("/api/admin/tickets/999/", headers=factory.headers(agent))

    first, second = json_log.request_lines()
    assert first["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"])
    assert first["user_id"] == agent.id
    assert first["route"] == "/api/agent/tickets/"
    assert (first["method"], first["status"]) == ("GET", 200)
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    # The route is the URL rule, so every ticket id lands on one route.
    assert second["route"] == "/api/admin/tickets/<ticket_id>/"
    assert second["path"] == "/api/admin/tickets/999/"
    assert second["status"] == missing.status_code == 403
    assert second["request_id"] != first["request_id"]


def test_anonymous_and_unknown_routes_are_logged_too(
    client: FlaskClient, json_log: Captured
) -> None:
    client.get("/no/such/path")
    (line,) = json_log.request_lines()
    assert line["user_id"] is None
    assert line["route"] == "<unmatched>"
    assert line["status"] == 404


def test_a_sane_incoming_request_id_is_kept_and_an_odd_one_replaced(
    client: FlaskClient, json_log: Captured
) -> None:
    kept = client.get("/healthz", headers={REQUEST_ID_HEADER: "lb-7f3a.42:x_y"})
    assert kept.headers[REQUEST_ID_HEADER] == "lb-7f3a.42:x_y"
    for odd in ("has space", "x" * 129, "tab\there", "<script>"):
        replaced = client.get("/healthz", headers={REQUEST_ID_HEADER: odd})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers[REQUEST_ID_HEADER])
    ids = [line["request_id"] for line in json_log.request_lines()]
    assert ids[0] == "lb-7f3a.42:x_y" and len(set(ids)) == 5


def test_errors_carry_the_request_id_and_log_lines_inside_a_request_too(
    client: FlaskClient, factory: Factory, json_log: Captured
) -> None:
    response = client.post("/api/auth/token/", json={"username": "nobody", "password": "x"})
    assert response.status_code == 401
    assert response.headers[REQUEST_ID_HEADER]
    logging.getLogger("service.test").warning("outside any request")
    lines = [json.loads(line) for line in json_log.stream.getvalue().splitlines()]
    assert lines[-1]["message"] == "outside any request"
    assert "request_id" not in lines[-1]


def test_plain_text_on_a_terminal() -> None:
    root = logging.getLogger()
    level = root.level
    stream = _Terminal()
    try:
        configure_logging(env={}, stream=stream)
        logging.getLogger("service.test").info("hello %s", "there", extra={"user_id": "7"})
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "service"]:
            root.removeHandler(handler)
        root.setLevel(level)
    line = stream.getvalue().strip()
    assert line.endswith("INFO    service.test: hello there user_id=7")
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        configure_logging(env={"LOG_FORMAT": "xml"}, stream=stream)


# -- metrics ------------------------------------------------------------------
def scrape(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of the sample called ``name`` whose labels include ``labels`` (0 if none)."""
    for key, value in samples.items():
        if key.split("{", 1)[0] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return 0.0


def test_metrics_count_requests_per_route_rule_and_status(
    client: FlaskClient, admin_headers: dict[str, str]
) -> None:
    route = "/api/admin/tickets/<ticket_id>/"
    before = scrape(client.get("/metrics", headers=METRICS_AUTH).text)
    for ticket_id in (11, 12, 13):
        assert (
            client.get(f"/api/admin/tickets/{ticket_id}/", headers=admin_headers).status_code == 404
        )
    response = client.get("/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = scrape(response.text)
    labels = {"route": route, "method": "GET", "status": "404"}
    counted = sample(after, "tq_http_requests_total", **labels)
    assert counted - sample(before, "tq_http_requests_total", **labels) == 3
    observed = sample(after, "tq_http_request_duration_seconds_count", **labels)
    assert observed - sample(before, "tq_http_request_duration_seconds_count", **labels) == 3
    assert sample(after, "tq_http_request_duration_seconds_bucket", le="+Inf", **labels) > 0
    assert not any("/api/admin/tickets/11/" in key for key in after)


def test_no_request_can_add_a_series(client: FlaskClient) -> None:
    """Invented methods and paths land in the bounded labels (OTHER, <unmatched>)."""
    for method in ("GET", "AAAAA"):
        client.open("/x", method=method)
        client.open("/api/admin/tickets/1/", method=method)
    before = client.get("/metrics", headers=METRICS_AUTH).text
    for i in range(300):
        client.open(f"/x/{i}", method=f"A{i:04d}")
        client.open(f"/api/admin/tickets/{i}/", method=f"B{i:04d}")
    after = client.get("/metrics", headers=METRICS_AUTH).text
    series = {line.split(" ")[0] for line in after.splitlines() if not line.startswith("#")}
    assert not [s for s in series if "A0" in s or "B0" in s]
    names = {line.split(" ")[0] for line in before.splitlines() if not line.startswith("#")}
    assert series == names  # the same series, only their values moved
    assert sample(scrape(after), "tq_http_requests_total", method="OTHER", status="405") >= 300


def test_metrics_are_for_operators_only(app: Flask, client: FlaskClient) -> None:
    assert_error(client.get("/metrics"), 401)
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong-token"}), 401)
    assert client.get("/metrics", headers=METRICS_AUTH).status_code == 200
    with fresh_app(METRICS_TOKEN="") as closed:
        assert_error(closed.test_client().get("/metrics", headers=METRICS_AUTH), 404)


def test_backlog_gauges_are_read_at_scrape_time(client: FlaskClient, factory: Factory) -> None:
    ids = factory.tickets(4)
    samples = scrape(client.get("/metrics", headers=METRICS_AUTH).text)
    assert sample(samples, "tq_queue_depth") == 4
    assert sample(samples, "tq_unassigned_tickets") == 4
    assert sample(samples, "tq_reserved") == 0
    assert sample(samples, "tq_queue_drift") == 0
    assert sample(samples, "tq_scrape_error", dependency="redis") == 0
    # A ticket PostgreSQL has and the Redis queue lost shows as drift.
    with factory.app.app_context():
        ticket_queue().client.zrem(ticket_queue().queue_key(GENERAL), ids[0])
    samples = scrape(client.get("/metrics", headers=METRICS_AUTH).text)
    assert sample(samples, "tq_queue_depth") == 3
    assert sample(samples, "tq_queue_drift") == 1


def test_assignments_and_sells_are_counted_once_committed(
    client: FlaskClient, factory: Factory
) -> None:
    agent = factory.user("alice", capacity=2)
    ids = factory.tickets(3)
    headers = factory.headers(agent)
    before = scrape(client.get("/metrics", headers=METRICS_AUTH).text)
    assert len(client.get("/api/agent/tickets/assign/", headers=headers).json["tickets"]) == 2
    client.get("/api/agent/tickets/assign/", headers=headers)  # full: assigns nothing
    assert client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers).status_code == 200
    assert client.post(f"/api/agent/tickets/sell/{ids[0]}/", headers=headers).status_code == 409
    after = scrape(client.get("/metrics", headers=METRICS_AUTH).text)
    assert sample(after, "tq_assignments_total") - sample(before, "tq_assignments_total") == 2
    assert sample(after, "tq_sells_total") - sample(before, "tq_sells_total") == 1


def test_metrics_are_summed_over_gunicorn_workers(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "histogram_999999.db").write_bytes(b"stale file of an earlier run")

    def healthz_total(url: str) -> float:
        text = requests.get(f"{url}/metrics", headers=METRICS_AUTH, timeout=5).text
        return sample(scrape(text), "tq_http_requests_total", route="/healthz", status="200")

    def served_by() -> set[str]:
        """Workers that answered a request: each writes its histogram file on the first."""
        return {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("histogram_*.db")}

    with live_server(service_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)), workers=2) as url:
        assert "999999" not in served_by(), "the earlier run's files were not wiped at start"
        start = healthz_total(url)
        sent = 0
        deadline = time.monotonic() + 20
        # Requests in parallel until both workers have answered some.
        with ThreadPoolExecutor(max_workers=6) as pool:
            while len(served_by()) < 2 and time.monotonic() < deadline:
                answers = list(
                    pool.map(lambda _: requests.get(f"{url}/healthz", timeout=5), range(30))
                )
                assert all(a.status_code == 200 for a in answers)
                sent += len(answers)
        assert len(served_by()) == 2
        totals = {healthz_total(url) - start for _ in range(6)}
    # Whichever worker answers a scrape reports every worker's requests.
    assert totals == {sent}


def test_recycled_workers_fork_from_the_loaded_app_and_serve(
    tmp_path: Path, factory: Factory
) -> None:
    """gunicorn preloads the app and forks each worker from it (the settings test
    checks preload_app); a worker recycled after max_requests is such a fork too.
    Fetches and sales keep working, in order, across several of them."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    agent = factory.user("alice")
    headers = factory.headers(agent)
    tickets = factory.tickets(20)
    env = service_env(
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        GUNICORN_MAX_REQUESTS="3",
        GUNICORN_MAX_REQUESTS_JITTER="0",
    )
    held: list[int] = []
    sold: list[int] = []

    def files(kind: str) -> set[str]:
        return {p.stem.split("_", 1)[1] for p in metrics_dir.glob(f"{kind}_*.db")}

    served_by: set[str] = set()
    requests_sent = 0
    with live_server(env, workers=1) as url:
        # A gevent worker told to recycle finishes the requests it has taken in the
        # meantime, so how many each serves varies: go on until three have served.
        deadline = time.monotonic() + 60
        while len(served_by) < 3 and time.monotonic() < deadline and len(sold) < 5:
            if held:
                sold.append(held.pop(0))
                reply = requests.post(f"{url}/api/agent/tickets/sell/{sold[-1]}/", headers=headers)
                assert reply.status_code == 200, reply.text
                requests_sent += 1
            reply = requests.get(f"{url}/api/agent/tickets/assign/", headers=headers, timeout=10)
            assert reply.status_code == 200, reply.text
            requests_sent += 1
            held = [t["id"] for t in reply.json()["tickets"]]
            # Each worker writes its own file on its first request.
            served_by |= files("histogram") - {"archive"}
            time.sleep(0.5)
        # Dead workers' counts were folded into one archive file: the directory holds
        # the master's (it made the unlabelled counters when it loaded the app), the
        # live worker's and the archive, however many workers have come and gone.
        wait_for(lambda: len(files("counter")) <= 3, "the dead workers' files to be folded")
        assert "archive" in files("counter") and len(files("histogram")) <= 2
        # ... and nothing they counted was lost.
        text = requests.get(f"{url}/metrics", headers=METRICS_AUTH, timeout=5).text
        agent_requests = sum(
            value
            for key, value in scrape(text).items()
            if key.startswith("tq_http_requests_total") and "/api/agent/" in key
        )
        assert agent_requests == requests_sent
    assert len(served_by) >= 2, served_by
    # Oldest first, one holder each: the sold ones, then the next 15 held.
    assert sold == tickets[: len(sold)]
    assert held == tickets[len(sold) : len(sold) + 15]


# -- readiness ----------------------------------------------------------------
@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A port that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        listener.close()


def test_readyz_answers_503_within_its_timeout_when_redis_hangs(
    _schema: None, silent_redis: str
) -> None:
    app = create_app(env=service_env(REDIS_URL=silent_redis, READINESS_TIMEOUT_SECONDS="0.3"))
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json == {"error": {"code": "not_ready", "message": "unavailable: redis"}}
    assert elapsed < 1.0
    with app.app_context():
        from service.extensions import db

        db.engine.dispose()


def test_readyz_is_200_when_both_answer(client: FlaskClient) -> None:
    assert client.get("/readyz").json == {"status": "ready"}


# -- login limit ----------------------------------------------------------------
def test_login_limit_is_configurable_and_shared_by_all_processes(factory: Factory) -> None:
    factory.user("alice")
    factory.user("bob")
    env = service_env(LOGIN_RATE_LIMIT="3 per minute")
    with live_server(env, workers=2) as url:
        attempts = []
        for _ in range(4):
            # A new connection each time, so the attempts spread over the workers.
            attempts.append(
                requests.post(
                    f"{url}/api/auth/token/",
                    json={"username": "alice", "password": "wrong-password"},
                    headers={"Connection": "close"},
                    timeout=5,
                )
            )
        other = requests.post(
            f"{url}/api/auth/token/", json={"username": "bob", "password": PASSWORD}, timeout=5
        )
    assert [r.status_code for r in attempts] == [401, 401, 401, 429]
    limited = attempts[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert other.status_code == 200


def test_a_malformed_login_limit_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LOGIN_RATE_LIMIT"):
        load_config(tmp_path, service_env(LOGIN_RATE_LIMIT="lots"))


def test_embedded_mode_counts_login_attempts_in_memory(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"LOGIN_RATE_LIMIT": "5/second"})
    assert config["RATELIMIT_STORAGE_URI"] == "memory://"
    cluster = load_config(
        tmp_path, service_env(REDIS_URL="redis://127.0.0.1:7000/0", REDIS_CLUSTER="true")
    )
    assert cluster["RATELIMIT_STORAGE_URI"] == "redis+cluster://127.0.0.1:7000"


# -- refusing to start without a signing key ------------------------------------
BAD_SECRETS = [
    ({"JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY is required"),
    ({"JWT_SECRET_KEY": "too-short"}, "JWT_SECRET_KEY must be at least 32 bytes"),
]


def _env_without_secret(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET_KEY"}
    env.update(service_env())
    env.update(extra)
    return env


@pytest.mark.parametrize(("extra", "message"), BAD_SECRETS)
def test_gunicorn_refuses_to_start_without_a_proper_secret(
    extra: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}", "wsgi:app"],
        cwd=ROOT,
        env=_env_without_secret(**extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"configuration error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Booting worker" not in result.stderr


@pytest.mark.parametrize(("extra", "message"), BAD_SECRETS)
def test_workers_refuse_to_start_without_a_proper_secret(
    extra: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers"],
        cwd=ROOT,
        env=_env_without_secret(LOG_FORMAT="text", **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_app_factory_names_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in service_env().items() if k != "JWT_SECRET_KEY"}
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app(env={**env, "INSTANCE_PATH": str(tmp_path)})


def test_reservations_the_reaper_returns_are_counted(app: Flask, factory: Factory) -> None:
    from service.domain.reaper import reap
    from service.extensions import db
    from service.metrics import RESERVATIONS_RETURNED

    agent = factory.user("alice")
    factory.tickets(2)
    with app.app_context():
        queue = ticket_queue()
        # A fetch that popped two ids and died before confirming them.
        assert len(queue.reserve(agent.id, 2, lease_seconds=1, known=[], queues=[GENERAL]).ids) == 2
        time.sleep(1.1)
        before = RESERVATIONS_RETURNED._value.get()
        assert len(reap(db.session, queue).returned) == 2
        assert RESERVATIONS_RETURNED._value.get() - before == 2


def test_workers_serve_their_metrics_when_asked(_schema: None) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers"],
        cwd=ROOT,
        env={**os.environ, **service_env(WORKER_METRICS_PORT=str(port), LOG_FORMAT="json")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert "tq_reservations_returned_total" in text
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            stop(proc, timeout=1)  # kills it only if it outlived the wait
    assert proc.returncode == 0, stderr


def test_workers_refuse_a_bad_metrics_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers"],
        cwd=ROOT,
        env={**os.environ, **service_env(WORKER_METRICS_PORT="ninety", LOG_FORMAT="text")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "WORKER_METRICS_PORT must be a port number" in result.stderr


# -- gunicorn.conf.py -------------------------------------------------------------
def gunicorn_settings(**env: str) -> dict[str, str]:
    """gunicorn's own reading of gunicorn.conf.py (``--print-config``) under ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "GUNICORN_"))}
    full.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config", "wsgi:app"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    settings = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            settings[name.strip()] = value.strip()
    return settings


def test_gunicorn_production_defaults() -> None:
    settings = gunicorn_settings(**service_env())
    assert int(settings["workers"]) == (os.cpu_count() or 1) + 1
    # gevent: a slow client, a long-poll or a stream holds a greenlet, not a worker.
    assert settings["worker_class"] == "service.serving.Worker"
    assert settings["worker_connections"] == "1000"
    assert settings["control_socket_disable"] == "True"
    # The app logs every request itself: no second line from gunicorn unless asked.
    assert settings["accesslog"] == "None"
    assert settings["preload_app"] == "True"  # workers fork from the loaded app
    assert (settings["timeout"], settings["graceful_timeout"]) == ("30", "20")
    assert int(settings["max_requests"]) > 0 and int(settings["max_requests_jitter"]) > 0
    assert settings["bind"] == "['0.0.0.0:8000']"
    assert settings["child_exit"] == "<child_exit()>"
    assert settings["on_starting"] == "<on_starting()>"


def test_gunicorn_settings_follow_the_environment() -> None:
    settings = gunicorn_settings(
        **service_env(
            WEB_CONCURRENCY="3",
            GUNICORN_WORKER_CONNECTIONS="4000",
            PORT="9001",
            GUNICORN_ACCESS_LOG="-",
            GUNICORN_MAX_REQUESTS="100",
        )
    )
    assert (settings["workers"], settings["worker_connections"]) == ("3", "4000")
    assert settings["bind"] == "['0.0.0.0:9001']"
    assert settings["accesslog"] == "-"
    assert settings["max_requests"] == "100"


def test_gunicorn_serves_embedded_mode_from_one_process() -> None:
    env = {k: v for k, v in service_env().items() if k not in ("DATABASE_URL", "REDIS_URL")}
    settings = gunicorn_settings(**env, DATABASE_URL="", REDIS_URL="", WEB_CONCURRENCY="5")
    assert (settings["workers"], settings["worker_class"]) == ("1", "service.serving.Worker")
    # Its Redis lives in the process: a recycled worker must not inherit a stale copy.
    assert settings["preload_app"] == "False"


# -- behind a load balancer ----------------------------------------------------------
def _attempts(app: Flask, username: str, addresses: list[str]) -> list[int]:
    client = app.test_client()
    return [
        client.post(
            "/api/auth/token/",
            json={"username": username, "password": "wrong-password"},
            headers={"X-Forwarded-For": address},
        ).status_code
        for address in addresses
    ]


def test_a_client_cannot_dodge_the_login_limit_with_x_forwarded_for(app: Flask) -> None:
    direct = create_app(env=service_env(LOGIN_RATE_LIMIT="2 per minute"))
    assert _attempts(direct, "alice", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == [401, 401, 429]


def test_behind_trusted_proxies_the_limit_and_logs_use_the_forwarded_address(
    app: Flask, json_log: Captured
) -> None:
    proxied = create_app(env=service_env(LOGIN_RATE_LIMIT="2 per minute", TRUSTED_PROXY_HOPS="1"))
    assert _attempts(proxied, "bob", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == [401, 401, 401]
    assert _attempts(proxied, "bob", ["10.0.0.1", "10.0.0.1"]) == [401, 429]
    clients = [line["client"] for line in json_log.request_lines()]
    assert clients == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.1"]


def test_the_flask_cli_logs_like_the_service(app: Flask) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "queue", "rebuild"],
        cwd=ROOT,
        env={**os.environ, **service_env(LOG_FORMAT="json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    (rebuilt,) = [line for line in lines if line["logger"] == "service.domain.rebuild"]
    assert rebuilt["level"] == "INFO"
    assert rebuilt["message"].startswith("rebuild: filled the empty Redis")
