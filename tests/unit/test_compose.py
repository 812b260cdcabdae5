"""docker-compose.yml and deploy/Dockerfile agree with the code.

No Docker engine runs where the tests run, so the compose topology is checked by
construction: every CARELEDGER_* variable is a Settings field and loads, the topics
kafka-init creates are the Settings topics, the addresses the apps use are the ones
Kafka and ClickHouse listen on inside the network, every command is a real
`careledger` subcommand (and parses, once its module exists), the verifier trusts
the key the processor signs with without ever seeing the private key, and the
image installs the project with the `careledger` entrypoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from careledger.config import ENV_PREFIX, PROJECT_ROOT, Settings, load_settings
from careledger.kafka.security import PRINCIPALS
from careledger.stack import default_topics, topic_config
from careledger.stack.kafka_deploy import password_variable
from commands import cli

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"

DEFAULTS = Settings()
# Ports the official clickhouse/clickhouse-server image listens on (its default
# config.xml; nothing in deploy/ overrides them).
CLICKHOUSE_NATIVE_PORT = 9440  # TLS (ADR 0032)
CLICKHOUSE_HTTP_PORT = 8443  # HTTPS
BROKERS = ("kafka-1", "kafka-2", "kafka-3")  # the Kafka cluster (ADR 0030)
MIN_ISR = "min.insync.replicas"
# Which subcommand each app service runs.
EXPECTED_COMMANDS = {
    "certs": "tls-certs",
    "kafka-config": "kafka-config",
    "kafka-init": "kafka-setup",
    "migrate": "migrate",
    "keygen": "keygen",
    "processor": "process",
    "verifier": "verify",
    "simulator": "simulate",
    "gateway": "gateway",
    "witness": "witness",
    "replica": "replica",
    "cosigner": "cosign",
    "auditor": "audit",
    "alert-forwarder": "alerts",
    "console": "console",
}
SHELL_OPERATORS = {";", "&&", "||", "|", "(", ")", "{", "}", "&"}
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "!"}


# --- helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


@pytest.fixture(scope="module")
def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    apps = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(apps) == set(EXPECTED_COMMANDS), "app services changed: update EXPECTED_COMMANDS"
    return apps


_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def compose_interpolate(value: Any) -> str:
    """Compose-level interpolation as on a host without those variables set."""
    text = str(value)
    out, pos = [], 0
    while pos < len(text):
        if text.startswith("$$", pos):
            out.append("$")
            pos += 2
            continue
        m = _COMPOSE_VAR.match(text, pos)
        if m:
            out.append(m.group(2) or "")
            pos = m.end()
            continue
        out.append(text[pos])
        pos += 1
    return "".join(out)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): compose_interpolate(v) for k, v in env.items()}


def settings_of(service: dict[str, Any]) -> Settings:
    return load_settings(env=env_of(service))


def shell_expand(text: str, env: dict[str, str]) -> str:
    """Expand $VAR and ${VAR} that the service environment defines."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return shlex.quote(env[name]) if name in env else m.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def shell_commands(script: str, env: dict[str, str]) -> list[list[str]]:
    """Simple commands of a small sh script, as argv lists (after expansion)."""
    script = compose_interpolate(script).replace("\\\n", " ")
    commands: list[list[str]] = []
    for line in script.splitlines():
        lexer = shlex.shlex(shell_expand(line, env), posix=True, punctuation_chars=";&|(){}")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in SHELL_OPERATORS:
                if current:
                    commands.append(current)
                current = []
            elif not current and token in SHELL_KEYWORDS:
                continue
            else:
                current.append(token)
    return commands


def script_of(service: dict[str, Any]) -> str:
    entrypoint = service.get("entrypoint")
    assert entrypoint and entrypoint[0] in ("/bin/sh", "sh"), "expected an sh script"
    command = service["command"]
    return command if isinstance(command, str) else "\n".join(command)


def careledger_argvs(service: dict[str, Any]) -> list[list[str]]:
    """Every `careledger ...` invocation of an app service, without the program name."""
    if "entrypoint" not in service:
        command = service.get("command")
        assert isinstance(command, list) and command, "app services give command as a list"
        return [[str(a) for a in command]]
    return [
        argv[1:]
        for argv in shell_commands(script_of(service), env_of(service))
        if argv[0] == "careledger"
    ]


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def mounts(service: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    """(source, target, read_only) for each short-syntax volume of a service, variables
    interpolated as Compose does on a host without them set."""
    result = []
    for spec in service.get("volumes", []):
        parts = compose_interpolate(spec).split(":")
        assert len(parts) in (2, 3), f"use short volume syntax: {spec!r}"
        result.append((parts[0], PurePosixPath(parts[1]), len(parts) == 3 and "ro" in parts[2]))
    return result


def volume_file(service: dict[str, Any], path: str) -> tuple[str, PurePosixPath, bool]:
    """Which named volume (and path inside it) a container path is in."""
    p = PurePosixPath(path)
    for source, target, read_only in mounts(service):
        if p == target or target in p.parents:
            return source, p.relative_to(target), read_only
    raise AssertionError(f"{path} is not on any volume of the service")


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, rest = item.strip().split("://", 1)
        host, port = rest.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def published(service: dict[str, Any], protocol: str = "tcp") -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port), for ``protocol`` ("tcp" or "udp")."""
    out = {}
    for spec in service.get("ports", []):
        ip, host_port, container = str(spec).split(":")
        container_port, _, proto = container.partition("/")
        if (proto or "tcp") == protocol:
            out[int(container_port)] = (ip, int(host_port))
    return out


# --- environment ------------------------------------------------------------


def test_every_careledger_variable_is_a_settings_field(services: dict[str, dict[str, Any]]) -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    # kafka-config alone reads every principal's Kafka password (careledger kafka-config)
    logins = {password_variable(p) for p in PRINCIPALS}
    # secrets read from the environment by the code that uses them, never a setting
    from console.oidc import SECRET_ENV

    used = 0
    for name, service in services.items():
        for key in env_of(service):
            if (name == "kafka-config" and key in logins) or (
                name == "console" and key == SECRET_ENV
            ):
                continue
            if key.startswith(ENV_PREFIX):
                used += 1
                assert key[len(ENV_PREFIX) :].lower() in fields, (
                    f"{name}: {key} is no Settings field"
                )
    assert used > 0


def test_app_environments_load(
    app_services: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in {**app_services, "kafka-init": services["kafka-init"]}.items():
        settings = settings_of(service)  # raises ConfigError on a bad value
        assert settings.kafka_bootstrap == ",".join(f"{b}:9092" for b in BROKERS), name
        assert settings.clickhouse_host == "clickhouse-1", name


def test_shared_environment_is_one_anchor(
    compose: dict[str, Any], app_services: dict[str, dict[str, Any]], services: dict[str, Any]
) -> None:
    assert "x-careledger-env: &careledger-env" in COMPOSE.read_text(encoding="utf-8")
    shared = {k: compose_interpolate(v) for k, v in compose["x-careledger-env"].items()}
    assert all(k.startswith(ENV_PREFIX) for k in shared)
    for name, service in {**app_services, "kafka-init": services["kafka-init"]}.items():
        env = env_of(service)
        assert {k: env.get(k) for k in shared} == shared, f"{name} lost part of the shared env"


def test_topics_and_partitions_are_the_settings_defaults(compose: dict[str, Any]) -> None:
    settings = load_settings(
        env={k: compose_interpolate(v) for k, v in compose["x-careledger-env"].items()}
    )
    for field in ("topic_events", "topic_dead_letter", "topic_alerts", "topic_checkpoints"):
        assert getattr(settings, field) == getattr(DEFAULTS, field)
    assert settings.partitions == DEFAULTS.partitions


# --- Kafka -------------------------------------------------------------------


def test_kafka_image_is_the_settings_release_and_major_4(services: dict[str, Any]) -> None:
    repo, tag = services["kafka-1"]["image"].rsplit(":", 1)
    assert repo == "apache/kafka"
    assert tag == DEFAULTS.kafka_version
    assert int(tag.split(".")[0]) == 4


def test_kafka_is_kraft_without_auto_create(compose: dict[str, Any]) -> None:
    from tests.unit.compose_kafka import broker_envs  # it imports this module

    env = broker_envs(compose)["kafka-1"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    factors = {k: v for k, v in env.items() if k.endswith(("REPLICATION_FACTOR", "MIN_ISR"))}
    assert "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR" in factors
    assert "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR" in factors
    assert set(factors.values()) == {"3", "2"}, factors  # per broker: test_compose_cluster


def test_kafka_listeners_match_what_clients_use(
    compose: dict[str, Any], services: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    from tests.unit.compose_kafka import broker_envs  # it imports this module

    internal = set()
    configured = broker_envs(compose)
    for broker in BROKERS:
        env = configured[broker]
        bound = listeners(env["KAFKA_LISTENERS"])
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        protocols = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        assert set(bound) == {p.split(":")[0] for p in protocols}
        for name, (_host, port) in advertised.items():
            assert bound[name][1] == port, f"listener {name} advertises a port it does not bind"
        # Controller quorum: this node, on the controller listener.
        (controller,) = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters[env["KAFKA_NODE_ID"]] == f"{broker}:{bound[controller][1]}"
        assert controller not in advertised
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
        internal |= (ours := {f"{h}:{p}" for h, p in advertised.values() if h == broker})
        healthcheck = " ".join(services[broker]["healthcheck"]["test"])
        assert option(healthcheck.split(), "--bootstrap-server") in ours
        # ...and host tools to the one published on loopback (kafka-1: the Settings default).
        [external] = [(h, p) for h, p in advertised.values() if h != broker]
        assert external[0] == "127.0.0.1" and published(services[broker])[external[1]] == external

    # Apps bootstrap from the advertised listeners on the compose network...
    for name, service in app_services.items():
        assert set(settings_of(service).kafka_brokers) == internal, name
    assert published(services["kafka-1"])[DEFAULTS.kafka_port] == ("127.0.0.1", DEFAULTS.kafka_port)


def test_kafka_init_creates_the_settings_topics_as_the_stack_does(services: dict[str, Any]) -> None:
    """kafka-init runs ``careledger kafka-setup``: the topics, partition counts and topic
    settings of ``careledger up`` (careledger.stack.topics), for the settings every app
    uses, once every broker is healthy (the command against a real broker:
    tests/integration/test_kafka_deploy.py)."""
    init = services["kafka-init"]
    assert init["command"] == ["kafka-setup"]
    assert init["depends_on"] == {b: {"condition": "service_healthy"} for b in BROKERS}
    settings = settings_of(init)
    assert default_topics(settings) == default_topics(DEFAULTS)
    assert topic_config(settings, settings.topic_events)["message.timestamp.type"] == (
        "LogAppendTime"
    )
    assert topic_config(settings, settings.topic_events)[MIN_ISR] == "2"


# --- ClickHouse ----------------------------------------------------------------


def test_clickhouse_matches_what_clients_use(
    services: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    ch = services["clickhouse-1"]
    assert ch["image"].split(":")[0] == "clickhouse/clickhouse-server"
    assert "healthcheck" in ch
    assert any(target == PurePosixPath("/var/lib/clickhouse") for _, target, _ in mounts(ch))
    # users, passwords and TLS: tests/unit/test_compose_clickhouse.py
    for name, service in app_services.items():
        s = settings_of(service)
        assert (s.clickhouse_port, s.clickhouse_http_port) == (
            CLICKHOUSE_NATIVE_PORT,
            CLICKHOUSE_HTTP_PORT,
        ), name
        assert s.clickhouse_database == DEFAULTS.clickhouse_database, name
    ports = published(ch)
    assert ports[CLICKHOUSE_NATIVE_PORT] == ("127.0.0.1", DEFAULTS.clickhouse_port)
    assert ports[CLICKHOUSE_HTTP_PORT] == ("127.0.0.1", DEFAULTS.clickhouse_http_port)


# --- commands --------------------------------------------------------------------


def test_app_commands_are_careledger_subcommands(app_services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services.items():
        argvs = careledger_argvs(service)
        assert argvs, f"{name} runs no careledger command"
        for argv in argvs:
            assert argv[0] in cli.COMMANDS, f"{name}: {argv[0]!r} is no careledger subcommand"
        assert argvs[0][0] == EXPECTED_COMMANDS[name]
    assert app_services["simulator"].get("profiles"), "the simulator is optional"


@pytest.mark.parametrize("service_name", sorted(EXPECTED_COMMANDS))
def test_app_command_arguments_parse(
    service_name: str, app_services: dict[str, dict[str, Any]]
) -> None:
    for argv in careledger_argvs(app_services[service_name]):
        module_name = cli.COMMANDS[argv[0]][0]
        module = importlib.import_module(module_name)
        parser = cli.build_parser(load_modules=False)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        configure = getattr(module, f"configure_{argv[0].replace('-', '_')}", None)
        if configure is not None:
            configure(sub.choices[argv[0]])
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{service_name}: `careledger {' '.join(argv)}` does not parse")


# --- ingest gateway ------------------------------------------------------------------


def test_gateway_publishes_the_settings_ports_on_loopback(
    app_services: dict[str, dict[str, Any]],
) -> None:
    gateway = app_services["gateway"]
    settings = settings_of(gateway)
    # reachable through the published ports: every interface inside the container
    assert settings.gateway_host == "0.0.0.0"
    tcp, udp = published(gateway, "tcp"), published(gateway, "udp")
    for port in (settings.gateway_http_port, settings.gateway_syslog_tcp_port):
        assert port == getattr(DEFAULTS, _port_field(DEFAULTS, port))
        assert tcp[port] == ("127.0.0.1", port)
    assert udp[settings.gateway_syslog_udp_port] == ("127.0.0.1", DEFAULTS.gateway_syslog_udp_port)
    # TLS listeners need a certificate; none is configured, so none is published
    assert settings.gateway_tls_cert is None
    assert settings.gateway_https_port not in tcp and settings.gateway_syslog_tls_port not in tcp
    # the sender configuration is mounted read-only where the settings look for it
    assert settings.gateway_auth_file is not None
    source, rel, read_only = volume_file(gateway, str(settings.gateway_auth_file))
    assert read_only and source.startswith("./")
    assert (PROJECT_ROOT / source / rel).is_file()
    assert set(gateway["depends_on"]) == {"kafka-init", "keygen"}
    assert gateway.get("stop_grace_period")


def _port_field(settings: Settings, port: int) -> str:
    return next(
        f.name
        for f in dataclasses.fields(settings)
        if f.name.startswith("gateway_")
        and f.name.endswith("_port")
        and getattr(settings, f.name) == port
    )


# --- keys and state ------------------------------------------------------------------


def test_verifier_trusts_the_processor_key_without_seeing_it(
    compose: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    keygen, processor, verifier = (app_services[n] for n in ("keygen", "processor", "verifier"))
    [keygen_argv] = [a for a in careledger_argvs(keygen) if a[0] == "keygen"]
    key_out = option(keygen_argv, "--out")

    signing_key = settings_of(processor).signing_key
    assert signing_key is not None
    signing = volume_file(processor, str(signing_key))
    assert signing[2], "the processor mounts the signing key read-only"
    assert signing[:2] == volume_file(keygen, key_out)[:2], "processor signs with the keygen key"

    # keygen publishes the public key to the volume the verifier trusts keys from.
    copies = [
        c
        for c in shell_commands(script_of(keygen), env_of(keygen))
        if c[0] == "cp" and c[-2] == key_out + ".pub"
    ]
    assert len(copies) == 1
    src, dst = copies[0][-2:]
    # careledger.keys.write_keypair writes the public half to "<private path>.pub".
    assert volume_file(keygen, src) == volume_file(keygen, key_out + ".pub")
    trusted = settings_of(verifier).trusted_keys
    assert trusted
    for path in trusted:
        source, rel, read_only = volume_file(verifier, path)
        assert read_only
        assert (source, rel) == volume_file(keygen, dst)[:2]
    assert signing[0] not in {src for src, _, _ in mounts(verifier)}, (
        "the verifier must not see the private key"
    )
    assert signing[0] in compose["volumes"]


def test_each_producer_signs_with_its_own_registered_key(
    compose: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    keygen = app_services["keygen"]
    argvs = careledger_argvs(keygen)
    registered = {
        option(a, "--source-id"): option(a, "--public-key")
        for a in argvs
        if a[:2] == ["source", "register"]
    }
    created = {
        option(a, "--source-id"): option(a, "--out") for a in argvs if a[:2] == ["source", "keygen"]
    }
    registrar = settings_of(keygen).registrar_key
    assert registrar is not None
    registrar_volume = volume_file(keygen, str(registrar))[0]
    for name in ("simulator", "gateway"):
        service = app_services[name]
        s = settings_of(service)
        assert s.source_id == name and s.source_key is not None
        # the key the service signs with is the one keygen created and registered for it
        assert volume_file(service, str(s.source_key))[:2] == volume_file(keygen, created[name])[:2]
        assert registered[name] == created[name] + ".pub"
        assert volume_file(service, str(s.source_key))[2], "source keys are mounted read-only"
        assert "keygen" in service["depends_on"]
    # each source key volume is mounted by its own service (and keygen) only
    key_volumes = {
        name: volume_file(app_services[name], str(settings_of(app_services[name]).source_key))[0]
        for name in ("simulator", "gateway")
    }
    for name, service in app_services.items():
        mounted = {src for src, _, _ in mounts(service)}
        for owner, vol in key_volumes.items():
            if name not in (owner, "keygen"):
                assert vol not in mounted, f"{name} must not see the {owner} source key"
        if name != "keygen":
            assert registrar_volume not in mounted, f"{name} must not see the registrar key"
    # processor and verifier trust the registrar's public half that keygen publishes
    copies = [c for c in shell_commands(script_of(keygen), env_of(keygen)) if c[0] == "cp"]
    [(_src, dst)] = [c[-2:] for c in copies if c[-2] == f"{registrar}.pub"]
    for name in ("processor", "verifier"):
        service = app_services[name]
        s = settings_of(service)
        assert s.require_source_signatures
        [trusted] = s.trusted_registrar_keys
        assert volume_file(service, trusted)[:2] == volume_file(keygen, dst)[:2]


def test_verifier_state_survives_restarts(app_services: dict[str, dict[str, Any]]) -> None:
    verifier = app_services["verifier"]
    state = settings_of(verifier).verifier_state
    source, _, read_only = volume_file(verifier, str(state))
    assert not read_only and "/" not in source  # a named volume
    assert careledger_argvs(verifier)[0][:2] == ["verify", "--follow"]


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _, _ in mounts(service):
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


# --- ordering ----------------------------------------------------------------------


def test_depends_on_is_consistent(services: dict[str, dict[str, Any]]) -> None:
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert {"kafka-init", "migrate", "keygen"} <= one_shot
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if dep in one_shot:
                assert condition == "service_completed_successfully", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], dep

    def reaches(start: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert start not in seen, f"depends_on cycle through {start}"
        deps = set(services[start].get("depends_on") or {})
        return deps.union(*(reaches(d, (*seen, start)) for d in deps))

    for name in ("processor", "verifier"):
        assert {"migrate", "kafka-init", "keygen", *BROKERS, "clickhouse-1"} <= reaches(name)
    assert {"clickhouse-1", "clickhouse-2"} <= reaches("migrate")


# --- image --------------------------------------------------------------------------


def test_app_services_build_the_project_image(app_services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services.items():
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert PROJECT_ROOT.joinpath(service["build"]["dockerfile"]) == DOCKERFILE


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_project_as_non_root() -> None:
    instructions = _instructions()
    froms = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)

    copied: dict[str, str] = {}
    for kw, rest in instructions:
        if kw == "COPY" and "--from" not in rest:
            *sources, dest = rest.split()
            for src in sources:
                copied[src.rstrip("/")] = dest
    # every top-level package of the repository (a new wing must not be forgotten)
    packages = {p.parent.name for p in PROJECT_ROOT.glob("*/__init__.py")}
    assert {"careledger", "careledger_core", "commands", "verifiers"} <= packages
    assert packages | {"pyproject.toml"} <= set(copied), packages - set(copied)
    # top-level names, and the runtime lock (tests/unit/test_lockfile.py)
    assert all(Path(src).name == src for src in copied if src != "deploy/requirements-runtime.lock")
    workdir = next(rest for kw, rest in instructions if kw == "WORKDIR")
    installs = [rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest]
    assert any(
        re.search(rf"pip install(\s+--[\w-]+)*\s+(\.|{re.escape(workdir)})(\s|$)", r)
        for r in installs
    )

    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoints = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entrypoints[-1] == '["careledger"]'

    # The directories compose mounts named volumes on exist in the image, so fresh
    # volumes are owned by the non-root user.
    text = DOCKERFILE.read_text(encoding="utf-8")
    for target in ("/keys", "/trusted", "/var/lib/careledger/verifier"):
        assert target in text


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must_ignore in (".git", ".venv", ".run"):
        assert must_ignore in ignored
    for kw, rest in _instructions():
        if kw == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                name = src.rstrip("/")
                assert (PROJECT_ROOT / name).exists(), f"COPY {src}: missing from the repository"
                assert name not in ignored, f"COPY {src}: excluded by .dockerignore"


# --- witness ------------------------------------------------------------------------


def test_witness_key_is_on_a_volume_only_the_witness_mounts(
    compose: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    witness = app_services["witness"]
    s = settings_of(witness)
    assert s.witness_name and s.witness_signing_key is not None
    assert careledger_argvs(witness) == [["witness", "--create-key"]]
    volume, _, read_only = volume_file(witness, str(s.witness_signing_key))
    assert not read_only, "the witness creates its key on first start"
    assert volume in compose["volumes"]
    for name, service in app_services.items():
        if name != "witness":
            assert volume not in {src for src, _, _ in mounts(service)}, name
    # and it never sees the log's private key
    processor_key = settings_of(app_services["processor"]).signing_key
    signing_volume = volume_file(app_services["processor"], str(processor_key))[0]
    assert signing_volume not in {src for src, _, _ in mounts(witness)}
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert str(PurePosixPath(str(s.witness_signing_key)).parent) in text


def test_witness_state_survives_restarts_and_its_port_is_loopback(
    app_services: dict[str, dict[str, Any]],
) -> None:
    witness = app_services["witness"]
    s = settings_of(witness)
    assert s.witness_state_dir is not None
    source, _, read_only = volume_file(witness, str(s.witness_state_dir))
    assert not read_only and "/" not in source  # a named volume
    assert str(s.witness_state_dir) in DOCKERFILE.read_text(encoding="utf-8")
    assert s.witness_host == "0.0.0.0"
    assert s.witness_port == DEFAULTS.witness_port
    assert published(witness)[s.witness_port] == ("127.0.0.1", DEFAULTS.witness_port)


def test_witness_cosigns_every_chain_with_the_key_the_processor_signs_with(
    app_services: dict[str, dict[str, Any]],
) -> None:
    import tomllib

    witness, keygen = app_services["witness"], app_services["keygen"]
    s = settings_of(witness)
    assert s.witness_logs_file is not None
    source, rel, read_only = volume_file(witness, str(s.witness_logs_file))
    assert read_only and source.startswith("./")
    logs_file = PROJECT_ROOT / source / rel if str(rel) != "." else PROJECT_ROOT / source
    entries = tomllib.loads(logs_file.read_text(encoding="utf-8"))["log"]
    origins = {o for e in entries for o in e.get("origins", [e.get("origin")])}
    expected = {s.chain_id(s.topic_events, p) for p in range(s.partitions)}
    expected |= {s.chain_id(s.topic_raw, p) for p in range(s.partitions)}
    for topic in (
        s.topic_consents,
        s.topic_care_relationships,
        s.topic_workforce,
        s.topic_patients,
        s.topic_sources,
    ):
        expected |= {s.chain_id(topic, p) for p in range(s.reference_partitions)}
    assert origins == expected
    # the key files it trusts are the processor's public key that keygen publishes
    [key_out] = [option(a, "--out") for a in careledger_argvs(keygen) if a[0] == "keygen"]
    published_pub = next(
        c[-1]
        for c in shell_commands(script_of(keygen), env_of(keygen))
        if c[0] == "cp" and c[-2] == key_out + ".pub"
    )
    for entry in entries:
        for key in entry["keys"]:
            assert volume_file(witness, key)[:2] == volume_file(keygen, published_pub)[:2]
            assert volume_file(witness, key)[2], "trusted keys are mounted read-only"


# --- replica ----------------------------------------------------------------------------


def test_replica_has_its_own_clickhouse_and_trusts_only_the_public_key(
    services: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    """ADR 0017: the replica writes to a ClickHouse of its own (never the primary's),
    with that server's user, password and database, and verifies blocks with the
    public key keygen publishes, without ever seeing the private key."""
    replica, processor = app_services["replica"], app_services["processor"]
    s = settings_of(replica)
    own = services[s.replica_clickhouse_host]
    assert s.replica_clickhouse_host != s.clickhouse_host
    assert own["image"].split(":")[0] == "clickhouse/clickhouse-server"
    # its user and password: tests/unit/test_compose_clickhouse.py
    assert s.replica_clickhouse_database == "careledger_replica"
    assert s.replica_clickhouse_port == CLICKHOUSE_NATIVE_PORT
    assert any(target == PurePosixPath("/var/lib/clickhouse") for _, target, _ in mounts(own))
    assert replica["depends_on"][s.replica_clickhouse_host] == {"condition": "service_healthy"}
    # the trusted key is the public key the verifier trusts; the signing key is not mounted
    assert s.trusted_keys == settings_of(app_services["verifier"]).trusted_keys
    for path in s.trusted_keys:
        assert volume_file(replica, path)[2], "trusted keys are mounted read-only"
    signing_key = settings_of(processor).signing_key
    assert signing_key is not None
    signing_volume = volume_file(processor, str(signing_key))[0]
    assert signing_volume not in {src for src, _, _ in mounts(replica)}
    assert careledger_argvs(replica) == [["replica", "follow"]]


# --- cosigner ------------------------------------------------------------------------


def test_cosigner_reads_the_witness_policy_the_operator_fills_in(
    app_services: dict[str, dict[str, Any]],
) -> None:
    from careledger.witnesses import parse_witnesses
    from careledger_core.cosignature import WitnessKey
    from careledger_core.signing import SigningKey

    cosigner = app_services["cosigner"]
    assert cosigner.get("profiles") == ["witnessed"]  # witnesses are configured first
    assert careledger_argvs(cosigner) == [["cosign"]]
    s = settings_of(cosigner)
    assert s.witnesses_file is not None
    source, rel, read_only = volume_file(cosigner, str(s.witnesses_file))
    assert read_only and source == "./deploy/witnesses.toml" and str(rel) == "."
    template = (PROJECT_ROOT / "deploy" / "witnesses.toml").read_text(encoding="utf-8")
    # the commented example, filled in, is a valid policy
    example = [line[2:] for line in template.split("Fill in, uncommenting")[1].splitlines()[2:]]
    text = "\n".join(example)
    for i, name in enumerate(
        ("hospital-b.example/careledger-witness", "regulator.example/litewitness")
    ):
        vkey = WitnessKey(name, SigningKey.from_seed(bytes([i + 1]) * 32).public_key).vkey
        text = text.replace('"<vkey>"', f'"{vkey}"', 1)
    policy = parse_witnesses(text)
    assert (policy.quorum, len(policy.reachable)) == (2, 2)
    # it never holds a private key
    assert not {src for src, _, _ in mounts(cosigner)} & {"signing-key", "witness-key"}


def test_no_password_has_a_default() -> None:
    # `${VAR:-default}` would start with a password everyone knows; `:?` refuses to start
    found = re.findall(r"\$\{([A-Z_]*PASSWORD[A-Z_]*)(:?[-?])", COMPOSE.read_text())
    assert len(found) >= 4 and all(op == ":?" for _, op in found), found
