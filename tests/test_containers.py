"""The Dockerfile and docker-compose.yml, checked by reading them (Docker does not run here).

They must name files and modules that exist, run as a non-root user, keep build
tools out of the final image, give every long-running service a health check,
and wire the services in the order the service needs: PostgreSQL and Redis
healthy, the migration finished, then the API and the workers.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from live import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


# -- the Dockerfile -----------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line runs off the end of the Dockerfile"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile():
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, args))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def test_multi_stage_on_a_slim_python_base() -> None:
    froms = [args for instruction, args in dockerfile() if instruction == "FROM"]
    assert len(froms) >= 2
    for base in froms:
        assert re.match(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.\d+-slim", base), base
    assert froms[0].endswith(" AS build")


def test_wheels_are_built_once_in_the_build_stage_with_a_cache() -> None:
    build = " ".join(args for _, args in stages()[0])
    assert "--mount=type=cache,target=/root/.cache/pip" in build
    assert "pip wheel --wheel-dir /wheels -r requirements.txt" in build


def test_the_final_image_installs_only_the_built_wheels_and_no_build_tools() -> None:
    runs = [args for instruction, args in final_stage() if instruction == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    assert "--no-index" in installs[0] and "--find-links=/wheels" in installs[0]
    assert "from=build" in installs[0]
    final = " ".join(args for _, args in final_stage())
    for tool in ("build-essential", "gcc", "libpq-dev", "apt-get install"):
        assert tool not in final, tool


def test_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in final_stage() if instruction == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1] not in {"root", "0", "0:0"}
    created = [args for instruction, args in final_stage() if "useradd" in args]
    assert created and created[0].rstrip().endswith(f" {users[-1]}")


def test_copies_only_paths_that_exist() -> None:
    for instruction, args in final_stage() + stages()[0]:
        if instruction != "COPY" or "--from" in args:
            continue
        *sources, _target = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_command_is_gunicorn_with_its_config_on_wsgi_app() -> None:
    cmd = [args for instruction, args in final_stage() if instruction == "CMD"]
    assert cmd == ['["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]']
    assert (ROOT / "gunicorn.conf.py").is_file()
    assert_wsgi_app_exists()


def test_healthcheck_probes_a_route_the_app_serves(app: Flask) -> None:
    checks = [args for instruction, args in final_stage() if instruction == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "--timeout=" in checks[0] and "--interval=" in checks[0]
    route = re.search(r"127\.0\.0\.1:%s(/\w+)", checks[0])
    assert route is not None
    assert route.group(1) in {rule.rule for rule in app.url_map.iter_rules()}
    exposed = [args for instruction, args in final_stage() if instruction == "EXPOSE"]
    assert exposed == ["8000"]
    env = " ".join(args for instruction, args in final_stage() if instruction == "ENV")
    assert "PORT=8000" in env


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "instance", "tests"} <= ignored


# -- docker-compose.yml -----------------------------------------------------------
def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def test_compose_has_the_services() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "api", "workers"}


def test_postgres_keeps_its_data_in_a_volume_and_has_a_healthcheck() -> None:
    postgres = SERVICES["postgres"]
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data"
    assert volume[0] in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "redis-cli" in SERVICES["redis"]["healthcheck"]["test"]


def test_migrate_is_a_one_shot_db_upgrade() -> None:
    assert command("migrate") == ["flask", "--app", "wsgi", "db", "upgrade"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["api", "workers"])
def test_long_running_services_wait_for_healthy_stores_and_the_migration(service: str) -> None:
    depends = SERVICES[service]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES[service]["restart"] == "unless-stopped"


def test_api_and_workers_commands_name_real_modules() -> None:
    assert command("api") == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert_wsgi_app_exists()
    assert command("workers") == ["python", "-m", "workers"]
    assert (ROOT / "workers" / "__init__.py").is_file()
    assert (ROOT / "workers" / "__main__.py").is_file()
    # The API keeps the image's health check; the workers serve no HTTP API.
    assert "healthcheck" not in SERVICES["api"]
    assert SERVICES["workers"]["healthcheck"] == {"disable": True}
    assert SERVICES["api"]["ports"] == ["${API_PORT:-8000}:8000"]


@pytest.mark.parametrize("service", ["migrate", "api", "workers"])
def test_app_services_get_the_required_environment(service: str) -> None:
    env = SERVICES[service]["environment"]
    assert {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY"} <= set(env)
    assert env["DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    # No default key: compose stops with a message when it is unset.
    assert env["JWT_SECRET_KEY"].startswith("${JWT_SECRET_KEY:?")


def test_every_variable_compose_sets_is_one_the_code_reads() -> None:
    read = variables_read_by_the_code()
    for service in ("migrate", "api", "workers"):
        for name in SERVICES[service]["environment"]:
            assert name in read, f"{service}: {name} is read by nothing"


def test_the_documented_first_admin_command_works_in_the_image_layout(tmp_path: Path) -> None:
    """`docker compose run --rm api flask --app wsgi users create admin --role admin`:
    the command exists, and `flask --app wsgi db upgrade` does too."""
    env = {
        **os.environ,
        "INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }
    for args in (["users", "create", "--help"], ["db", "upgrade", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    readme = (ROOT / "README.md").read_text()
    assert "docker compose run --rm api flask --app wsgi users create admin --role admin" in readme


# -- helpers ------------------------------------------------------------------------
def assert_wsgi_app_exists() -> None:
    tree = ast.parse((ROOT / "wsgi.py").read_text())
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert "app" in names


_READS = re.compile(
    r"""(?:environ\.get|env\.get|getenv|environ\[|\b(?:_\w+|read_\w+)\(env,|_env_int\()\s*\(?\s*"""
    r"""["']([A-Z][A-Z0-9_]+)["']"""
)
_NAMED = re.compile(r"""^\w+_ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", re.MULTILINE)


def variables_read_by_the_code() -> set[str]:
    """Every environment variable service/, workers/, scripts/ and gunicorn.conf.py read."""
    names: set[str] = set()
    paths = [ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]
    for folder in ("service", "workers", "scripts"):
        paths += sorted((ROOT / folder).rglob("*.py"))
    for path in paths:
        text = path.read_text()
        names |= set(_READS.findall(text)) | set(_NAMED.findall(text))
    return names


def test_the_readme_lists_every_variable_the_code_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", section, re.MULTILINE))
    read = variables_read_by_the_code()
    assert {"JWT_SECRET_KEY", "WEB_CONCURRENCY", "WORKER_METRICS_PORT"} <= read
    assert read - listed == set(), "missing from the README's Configuration table"
    assert listed - read == set(), "listed in the README but read by nothing"
