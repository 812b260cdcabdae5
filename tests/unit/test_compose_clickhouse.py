"""docker-compose.yml's ClickHouse logins and TLS (issue 12 point 3, ADR 0032), checked
by construction and attacked.

No Docker engine runs here, so the file is read with test_compose.py's parser and
helpers, and one checker returns what is wrong:

- every ClickHouse server skips the image's own user setup and mounts a users file
  with no ``default`` user, whose users are the ones the careledger services log in
  as, each password taken from a server variable that is the operator's required
  variable the services use; the reader is ``readonly``;
- every server mounts tls.xml: no plaintext port, TLS on the ports the services use
  (and publish on the host), a certificate and key from the clickhouse-tls volume,
  replicas checking each other against the CA; its healthcheck speaks HTTPS;
- every careledger service speaks TLS and trusts the CA from a read-only volume the
  ``certs`` service fills; ``certs`` names every host the services connect to, and the
  CA's key is on a volume only ``certs`` mounts.

The checker also runs on mutated copies (a server keeping its plaintext port, a
service not verifying TLS, the reader able to write, the default user left in, a host
missing from the certificate, the CA key shared) and must report each.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from careledger.config import PROJECT_ROOT
from careledger.credentials import clickhouse_login
from tests.unit.test_compose import (
    CLICKHOUSE_HTTP_PORT,
    CLICKHOUSE_NATIVE_PORT,
    COMPOSE,
    DEFAULTS,
    env_of,
    mounts,
    published,
    script_of,
    settings_of,
    shell_commands,
)

Compose = dict[str, Any]
CONFIG_D = PurePosixPath("/etc/clickhouse-server/config.d")
USERS_D = PurePosixPath("/etc/clickhouse-server/users.d")
_REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


@pytest.fixture()
def compose() -> Compose:
    data: Compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _servers(data: Compose) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in data["services"].items()
        if str(s.get("image", "")).startswith("clickhouse/clickhouse-server")
    }


def _apps(data: Compose) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in data["services"].items() if "build" in s}


def _xml(service: dict[str, Any], directory: PurePosixPath) -> list[ET.Element]:
    roots = []
    for src, target, _ro in mounts(service):
        if target.parent == directory and src.startswith(("./", "/")):
            roots.append(ET.parse(PROJECT_ROOT / src).getroot())  # PROJECT_ROOT / "/x" is /x
    return roots


def _required_var(value: Any) -> str | None:
    m = _REQUIRED.match(str(value or ""))
    return m.group(1) if m else None


def _volume_of(service: dict[str, Any], path: str) -> tuple[str, bool] | None:
    """(named volume, read-only) holding ``path`` in ``service``, if any."""
    for src, target, ro in mounts(service):
        if "/" not in src and PurePosixPath(path).is_relative_to(target):
            return src, ro
    return None


def _user_problems(data: Compose, name: str, svc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if str((svc.get("environment") or {}).get("CLICKHOUSE_SKIP_USER_SETUP")) != "1":
        problems.append(f"{name}: the image's own user setup is not skipped")
    users: dict[str, ET.Element] = {}
    removed: set[str] = set()
    for root in _xml(svc, USERS_D):
        for user in root.findall("users/*"):
            if "remove" in user.attrib:
                removed.add(user.tag)
            else:
                users[user.tag] = user
    if "default" not in removed or "default" in users:
        problems.append(f"{name}: the default user is not removed")
    raw_env = svc.get("environment") or {}
    # who logs in here, with which password variable (raw, before interpolation)
    wanted: dict[str, tuple[str | None, bool]] = {}
    for app_name, app in _apps(data).items():
        s = settings_of(app)
        raw = app.get("environment") or {}
        if s.replica_clickhouse_host == name:
            wanted[s.replica_clickhouse_user] = (
                _required_var(raw.get("CARELEDGER_REPLICA_CLICKHOUSE_PASSWORD")),
                False,
            )
        elif s.clickhouse_host == name or any(
            r.startswith(f"{name}:") for r in s.clickhouse_replicas
        ):
            wanted[s.clickhouse_user] = (
                _required_var(raw.get("CARELEDGER_CLICKHOUSE_PASSWORD")),
                False,
            )
            wanted[s.clickhouse_reader_user] = (
                _required_var(raw.get("CARELEDGER_CLICKHOUSE_READER_PASSWORD")),
                True,
            )
        del app_name
    for user, (variable, readonly) in wanted.items():
        element = users.get(user)
        if element is None:
            problems.append(f"{name}: no user {user}")
            continue
        if variable is None:
            problems.append(f"{name}: {user}'s password has a default or is not required")
        password = element.find("password")
        source = None if password is None else password.get("from_env")
        if source is None or _required_var(raw_env.get(source)) != variable:
            problems.append(f"{name}: {user}'s password is not the services' {variable}")
        if element.findtext("password_sha256_hex") or (password is not None and password.text):
            problems.append(f"{name}: {user} has a password written in the file")
        profile = element.findtext("profile", "")
        if readonly != (profile == "readonly"):
            problems.append(f"{name}: {user} has profile {profile!r}")
    for extra in set(users) - set(wanted):
        problems.append(f"{name}: user {extra} nobody logs in as")
    return problems


def _tls_problems(data: Compose, name: str, svc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    config: dict[str, ET.Element] = {}
    removed: set[str] = set()
    for root in _xml(svc, CONFIG_D):
        for child in root:
            (
                removed.add(child.tag)
                if "remove" in child.attrib
                else config.update({child.tag: child})
            )
    for plain in (
        "tcp_port",
        "http_port",
        "interserver_http_port",
        "mysql_port",
        "postgresql_port",
    ):
        if plain not in removed or plain in config:
            problems.append(f"{name}: plaintext {plain} not removed")
    ports = {k: int(config[k].text or 0) for k in ("tcp_port_secure", "https_port") if k in config}
    if ports != {"tcp_port_secure": CLICKHOUSE_NATIVE_PORT, "https_port": CLICKHOUSE_HTTP_PORT}:
        problems.append(f"{name}: TLS ports {ports}")
    if "interserver_https_port" not in config:
        problems.append(f"{name}: replicas fetch parts without TLS")
    ssl = config.get("openSSL")
    files = {
        "certificate": ssl.findtext("server/certificateFile") if ssl is not None else None,
        "key": ssl.findtext("server/privateKeyFile") if ssl is not None else None,
        "CA": ssl.findtext("client/caConfig") if ssl is not None else None,
    }
    for what, path in files.items():
        held = _volume_of(svc, path) if path else None
        if held is None or held != ("clickhouse-tls", True):
            problems.append(f"{name}: TLS {what} {path} not on the read-only clickhouse-tls volume")
    if ssl is None or ssl.findtext("client/verificationMode") != "strict":
        problems.append(f"{name}: replicas do not verify each other's certificates")
    test = " ".join(svc.get("healthcheck", {}).get("test", []))
    if f"https://localhost:{CLICKHOUSE_HTTP_PORT}/" not in test or "--ca-certificate" not in test:
        problems.append(f"{name}: healthcheck does not speak verified HTTPS")
    if (svc.get("depends_on") or {}).get("certs") != {
        "condition": "service_completed_successfully"
    }:
        problems.append(f"{name}: does not wait for its certificate")
    return problems


def _certs_hosts(data: Compose) -> set[str]:
    certs = data["services"].get("certs")
    if certs is None:
        return set()
    for argv in shell_commands(script_of(certs), env_of(certs)):
        if argv[:2] == ["careledger", "tls-certs"]:
            return set(argv[argv.index("--hosts") + 1].split(","))
    return set()


def compose_clickhouse_problems(data: Compose) -> list[str]:
    problems: list[str] = []
    for name, svc in _servers(data).items():
        problems += _user_problems(data, name, svc)
        problems += _tls_problems(data, name, svc)
    hosts = _certs_hosts(data)
    for name, app in _apps(data).items():
        s = settings_of(app)
        if not s.clickhouse_secure:
            problems.append(f"{name}: clickhouse_secure is off")
        ca = s.clickhouse_ca_file
        if ca is None or _volume_of(app, str(ca)) != ("tls-trust", name != "certs"):
            problems.append(f"{name}: the CA {ca} is not on the tls-trust volume (read-only)")
        for host in {s.clickhouse_host, s.replica_clickhouse_host} | {
            r.rpartition(":")[0] for r in s.clickhouse_replicas
        }:
            if host in _servers(data) and host not in hosts:
                problems.append(f"{name}: {host} is not named in the server certificate")
    if not {"localhost", "127.0.0.1"} <= hosts:
        problems.append("the certificate does not name localhost (healthchecks, host clients)")
    holders = [
        n for n, svc in data["services"].items() if _volume_of(svc, "/ca") == ("tls-ca", False)
    ]
    sharing = [
        n for n, svc in data["services"].items() if "tls-ca" in {src for src, _t, _r in mounts(svc)}
    ]
    if holders != ["certs"] or sharing != ["certs"]:
        problems.append(f"the CA's key is mounted by {sharing}")
    return problems


# --- the file as it is -----------------------------------------------------------


def test_compose_clickhouse_logins_and_tls_are_consistent(compose: Compose) -> None:
    assert compose_clickhouse_problems(compose) == []


def test_servers_publish_their_tls_ports_on_the_settings_ports(compose: Compose) -> None:
    ports = published(compose["services"]["clickhouse-1"])
    assert ports[CLICKHOUSE_NATIVE_PORT] == ("127.0.0.1", DEFAULTS.clickhouse_port)
    assert ports[CLICKHOUSE_HTTP_PORT] == ("127.0.0.1", DEFAULTS.clickhouse_http_port)
    for name, svc in compose["services"].items():
        if name.startswith(("clickhouse", "replica-clickhouse")):
            assert 9000 not in published(svc) and 8123 not in published(svc), name


def test_the_certs_command_parses_and_its_files_reach_the_servers(compose: Compose) -> None:
    certs = compose["services"]["certs"]
    commands = shell_commands(script_of(certs), env_of(certs))
    tls_certs = next(c for c in commands if c[:2] == ["careledger", "tls-certs"])
    directory, name = (
        tls_certs[tls_certs.index("--dir") + 1],
        tls_certs[tls_certs.index("--name") + 1],
    )
    copied = next(c for c in commands if c[0] == "cp" and c[-1] == "/clickhouse-tls/")
    assert {f"{directory}/{name}.pem", f"{directory}/{name}.key", f"{directory}/ca.pem"} == set(
        copied[1:-1]
    )
    # the key is made readable by the ClickHouse image's server user only
    assert ["chown", "101:101", f"/clickhouse-tls/{name}.key"] in commands
    assert ["chmod", "600", f"/clickhouse-tls/{name}.key"] in commands
    tls = ET.parse(PROJECT_ROOT / "deploy/compose/clickhouse/tls.xml").getroot()
    assert tls.findtext("openSSL/server/privateKeyFile") == f"/etc/clickhouse-server/tls/{name}.key"


def test_the_services_login_resolution_reads_the_compose_passwords(compose: Compose) -> None:
    verifier = settings_of(compose["services"]["verifier"])
    assert clickhouse_login(verifier, "reader").user == "careledger_reader"
    assert clickhouse_login(verifier, "writer").user == "careledger"
    assert clickhouse_login(verifier).ca_file == Path("/tls/ca.pem")


# --- attacks: each mutation must be reported -------------------------------------------


def _mutated(compose: Compose, change: Any) -> list[str]:
    data = copy.deepcopy(compose)
    change(data)
    return compose_clickhouse_problems(data)


def _volumes(data: Compose, service: str) -> list[str]:
    vols: list[str] = data["services"][service]["volumes"]
    return vols


def test_a_server_without_the_tls_file_is_caught(compose: Compose) -> None:
    def drop(data: Compose) -> None:
        vols = _volumes(data, "clickhouse-2")
        vols[:] = [v for v in vols if "tls.xml" not in v]

    assert any("clickhouse-2: plaintext tcp_port" in p for p in _mutated(compose, drop))


def test_a_service_not_speaking_tls_is_caught(compose: Compose) -> None:
    def plain(data: Compose) -> None:
        data["services"]["verifier"]["environment"]["CARELEDGER_CLICKHOUSE_SECURE"] = "false"

    assert "verifier: clickhouse_secure is off" in _mutated(compose, plain)


def test_a_service_without_the_ca_is_caught(compose: Compose) -> None:
    def no_ca(data: Compose) -> None:
        vols = _volumes(data, "processor")
        vols[:] = [v for v in vols if not v.startswith("tls-trust")]

    assert any(p.startswith("processor: the CA") for p in _mutated(compose, no_ca))


def test_a_reader_that_can_write_is_caught(compose: Compose, tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "deploy/compose/clickhouse/users.xml").read_text()
    loose = tmp_path / "users.xml"
    loose.write_text(text.replace("<profile>readonly</profile>", "<profile>default</profile>"))

    def swap(data: Compose) -> None:
        vols = _volumes(data, "clickhouse-1")
        vols[:] = [
            f"{loose}:/etc/clickhouse-server/users.d/careledger.xml:ro" if "users.xml" in v else v
            for v in vols
        ]

    found = _mutated(compose, swap)
    assert "clickhouse-1: careledger_reader has profile 'default'" in found


def test_the_default_user_left_in_is_caught(compose: Compose) -> None:
    def image_users(data: Compose) -> None:
        env = data["services"]["clickhouse-1"]["environment"]
        del env["CLICKHOUSE_SKIP_USER_SETUP"]
        vols = _volumes(data, "clickhouse-1")
        vols[:] = [v for v in vols if "users.d" not in v]

    found = _mutated(compose, image_users)
    assert "clickhouse-1: the default user is not removed" in found
    assert "clickhouse-1: no user careledger_reader" in found


def test_a_password_that_is_not_the_services_is_caught(compose: Compose) -> None:
    def other(data: Compose) -> None:
        env = data["services"]["clickhouse-2"]["environment"]
        env["CLICKHOUSE_READER_PASSWORD"] = "${CARELEDGER_CLICKHOUSE_PASSWORD:?set it}"

    assert any("careledger_reader's password" in p for p in _mutated(compose, other))


def test_a_host_missing_from_the_certificate_is_caught(compose: Compose) -> None:
    def narrow(data: Compose) -> None:
        certs = data["services"]["certs"]
        certs["command"] = [certs["command"][0].replace("clickhouse-2,", "")]

    assert any("clickhouse-2 is not named" in p for p in _mutated(compose, narrow))


def test_the_ca_key_on_a_shared_volume_is_caught(compose: Compose) -> None:
    def share(data: Compose) -> None:
        _volumes(data, "verifier").append("tls-ca:/ca:ro")

    assert any("the CA's key is mounted by" in p for p in _mutated(compose, share))
