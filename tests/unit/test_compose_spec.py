"""docker-compose.yml loads with the reference Compose parser.

The other compose tests read the file with PyYAML; this one runs it through
compose-go (the library `docker compose` is built on), via the small Go program in
deploy/compose/check/ that deploy/bootstrap.sh builds: the Compose schema,
interpolation (every `${NAME:?...}` must be set), and the consistency checks
`docker compose config` runs (every depends_on target, every volume declared). The
attacks show the parser is really consulted: each broken copy must be refused, and
the error must name the problem.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from careledger.config import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
CHECK_DIR = PROJECT_ROOT / "deploy" / "compose" / "check"
BINARY = CHECK_DIR / "bin" / "composecheck"
TIMEOUT = 60  # seconds; a load takes well under one
# What compose-spec accepts for depends_on.<service>.condition.
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# ${NAME:?message} / ${NAME?message}: required, no default (not $${...}, an escaped $).
_REQUIRED = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
REQUIRED_VARS = sorted(set(_REQUIRED.findall(COMPOSE.read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def binary() -> Path:
    rebuild = "run deploy/bootstrap.sh (it builds it with Go)"
    if not BINARY.is_file():
        pytest.fail(f"{BINARY.relative_to(PROJECT_ROOT)} is missing: {rebuild}")
    built = BINARY.stat().st_mtime
    for source in ("main.go", "go.mod", "go.sum"):
        if (CHECK_DIR / source).stat().st_mtime > built:
            pytest.fail(f"{BINARY.relative_to(PROJECT_ROOT)} is older than {source}: {rebuild}")
    return BINARY


@pytest.fixture(scope="module")
def secrets_env() -> dict[str, str]:
    """A random value for every required variable (and no other environment)."""
    return {name: secrets.token_hex(16) for name in REQUIRED_VARS}


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def run_check(binary: Path, path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def load_ok(binary: Path, path: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_check(binary, path, env)
    assert result.returncode == 0, f"compose refused {path.name}: {result.stderr.strip()}"
    project = json.loads(result.stdout)
    assert isinstance(project, dict)
    return project


def refused(binary: Path, path: Path, env: dict[str, str]) -> str:
    """The one-line error of a load that must fail."""
    result = run_check(binary, path, env)
    assert result.returncode == 1, f"compose accepted a broken file: {result.stdout[:200]}"
    message = result.stderr.strip()
    assert message and "\n" not in message, f"not one error line: {result.stderr!r}"
    return message


def write_copy(doc: dict[str, Any], tmp_path: Path) -> Path:
    """A (possibly mutated) copy of the compose file, beside nothing else."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def service_with(doc: dict[str, Any], key: str) -> str:
    """The first service that has `key` (a depends_on mapping, a volumes list)."""
    for name, service in doc["services"].items():
        if isinstance(service.get(key), dict | list) and service[key]:
            return str(name)
    raise AssertionError(f"no service in docker-compose.yml has {key}")


@pytest.fixture(scope="module")
def project(binary: Path, secrets_env: dict[str, str]) -> dict[str, Any]:
    return load_ok(binary, COMPOSE, secrets_env)


# --- the real file ---------------------------------------------------------------


def test_required_variables_found() -> None:
    # Guards the regex: the passwords without a default are among what it finds.
    for name in (
        "CARELEDGER_CLICKHOUSE_PASSWORD",
        "CARELEDGER_CLICKHOUSE_READER_PASSWORD",
        "CARELEDGER_CLICKHOUSE_INTERSERVER_PASSWORD",
        "CARELEDGER_REPLICA_CLICKHOUSE_PASSWORD",
    ):
        assert name in REQUIRED_VARS


def test_loads_with_same_services(project: dict[str, Any], source: dict[str, Any]) -> None:
    assert set(project["services"]) == set(source["services"])


def test_passwords_interpolated(
    project: dict[str, Any], source: dict[str, Any], secrets_env: dict[str, str]
) -> None:
    services = project["services"]
    writer = secrets_env["CARELEDGER_CLICKHOUSE_PASSWORD"]
    reader = secrets_env["CARELEDGER_CLICKHOUSE_READER_PASSWORD"]
    replica = secrets_env["CARELEDGER_REPLICA_CLICKHOUSE_PASSWORD"]
    interserver = secrets_env["CARELEDGER_CLICKHOUSE_INTERSERVER_PASSWORD"]
    for server in ("clickhouse-1", "clickhouse-2"):
        assert services[server]["environment"]["CLICKHOUSE_WRITER_PASSWORD"] == writer
        assert services[server]["environment"]["CLICKHOUSE_READER_PASSWORD"] == reader
        assert services[server]["environment"]["CLICKHOUSE_INTERSERVER_PASSWORD"] == interserver
    assert services["replica-clickhouse"]["environment"]["CLICKHOUSE_REPLICA_PASSWORD"] == replica
    assert services["replica"]["environment"]["CARELEDGER_REPLICA_CLICKHOUSE_PASSWORD"] == replica
    apps = [name for name, svc in source["services"].items() if "build" in svc]
    assert apps, "no careledger app service (one with build:) in docker-compose.yml"
    for name in apps:
        env = services[name]["environment"]
        assert env["CARELEDGER_CLICKHOUSE_READER_PASSWORD"] == reader, name
        assert env["CARELEDGER_CLICKHOUSE_PASSWORD"] == writer, name


def test_depends_on_conditions(project: dict[str, Any]) -> None:
    services = project["services"]
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            assert dep["condition"] in CONDITIONS, f"{name} -> {target}: {dep['condition']}"
            if dep["condition"] == "service_healthy":
                # `docker compose up` refuses to wait for health that is never reported
                assert services[target].get("healthcheck", {}).get("test"), f"{name} -> {target}"


# --- attacks: each broken copy must be refused by the parser ----------------------


def test_unchanged_copy_loads(
    binary: Path, source: dict[str, Any], secrets_env: dict[str, str], tmp_path: Path
) -> None:
    # The round trip the attacks use (PyYAML out, anchors expanded) keeps a valid file.
    project = load_ok(binary, write_copy(copy.deepcopy(source), tmp_path), secrets_env)
    assert set(project["services"]) == set(source["services"])


@pytest.mark.parametrize("name", REQUIRED_VARS)
def test_unset_required_variable(binary: Path, secrets_env: dict[str, str], name: str) -> None:
    env = {key: value for key, value in secrets_env.items() if key != name}
    message = refused(binary, COMPOSE, env)
    assert f"required variable {name} is missing a value" in message


def test_dependency_on_missing_service(
    binary: Path, source: dict[str, Any], secrets_env: dict[str, str], tmp_path: Path
) -> None:
    doc = copy.deepcopy(source)
    name = service_with(doc, "depends_on")
    doc["services"][name]["depends_on"]["no-such-service"] = {"condition": "service_started"}
    message = refused(binary, write_copy(doc, tmp_path), secrets_env)
    assert f'service "{name}" depends on undefined service "no-such-service"' in message


def test_undeclared_volume(
    binary: Path, source: dict[str, Any], secrets_env: dict[str, str], tmp_path: Path
) -> None:
    doc = copy.deepcopy(source)
    name = service_with(doc, "volumes")
    doc["services"][name]["volumes"].append("undeclared-volume:/mnt/undeclared")
    assert "undeclared-volume" not in doc.get("volumes", {})
    message = refused(binary, write_copy(doc, tmp_path), secrets_env)
    assert f'service "{name}" refers to undefined volume undeclared-volume' in message


def test_invalid_depends_on_condition(
    binary: Path, source: dict[str, Any], secrets_env: dict[str, str], tmp_path: Path
) -> None:
    doc = copy.deepcopy(source)
    name = service_with(doc, "depends_on")
    target = next(iter(doc["services"][name]["depends_on"]))
    doc["services"][name]["depends_on"][target] = {"condition": "service_ready"}
    message = refused(binary, write_copy(doc, tmp_path), secrets_env)
    assert f"services.{name}.depends_on.{target}.condition" in message
    assert "must be one of" in message
