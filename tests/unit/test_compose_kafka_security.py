"""docker-compose.yml's Kafka logins, TLS and ACLs (issue 12 point 3, ADR 0033), checked
by construction and attacked.

The brokers' configuration is what the ``kafka-config`` service's own command writes
(tests/unit/compose_kafka.py runs it), so the checker reads what the brokers load:

- every broker starts from its file, formats its storage with the SCRAM logins file
  (globbing off) under the shared CLUSTER_ID, and is healthchecked with a login;
- no listener is plaintext: clients on SASL_SSL, controllers on TLS with client
  certificates required; the StandardAuthorizer refuses what no ACL grants; the super
  users are the broker, the admin and the member certificate's DN;
- the member key (kafka-tls) and the generated files (kafka-config, with every
  password) are mounted only by the services that need them, read-only by the brokers;
  the member certificate names every broker;
- every careledger service speaks SASL_SSL, trusts the CA from the read-only tls-trust
  volume, and holds the password of its own principal only, from a required variable;
  kafka-config requires every principal's.

Each attack (a plaintext listener, ACLs off, a service given another principal's
password, a password with a default, the generated files shared) must be reported.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from careledger.kafka.security import PRINCIPALS
from careledger.stack.kafka_deploy import CLIENT_FILE, SCRAM_ARGS_FILE, password_variable
from tests.unit.compose_kafka import (
    broker_envs,
    broker_files,
    broker_script,
    config_argv,
    parse_config_argv,
    volume_at,
)
from tests.unit.test_compose import COMPOSE, mounts, settings_of

Compose = dict[str, Any]

#: the principal each service logs in to Kafka as; the others never talk to Kafka
PRINCIPAL_OF = {
    "kafka-init": "admin",
    "keygen": "registrar",
    "processor": "processor",
    "verifier": "verifier",
    "gateway": "producer",
    "simulator": "producer",
    "replica": "replica",
    "cosigner": "cosigner",
    "auditor": "auditor",
    "alert-forwarder": "auditor",
    # the console ledgers its views and case actions as the alert workflow does
    "console": "auditor",
}
NO_KAFKA = {"certs", "kafka-config", "migrate", "witness"}
_REQUIRED = re.compile(r"\$\{(CARELEDGER_KAFKA_[A-Z]+_PASSWORD):\?[^}]+\}")


@pytest.fixture
def compose() -> Compose:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _apps(data: Compose) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in data["services"].items() if "build" in s}


def _broker_problems(data: Compose) -> list[str]:
    problems: list[str] = []
    args = parse_config_argv(config_argv(data))
    for name, env in broker_envs(data).items():
        svc = data["services"][name]
        script = broker_script(svc)
        files = broker_files(svc)
        if len(files) != 1:
            problems.append(f"{name}: formats and starts from {sorted(map(str, files))}")
        if "set -f" not in script or f"$$(cat {args.out}/{SCRAM_ARGS_FILE})" not in script:
            problems.append(f"{name}: storage not formatted with the SCRAM logins (globbing off)")
        if '--cluster-id "$$CLUSTER_ID"' not in script or not env.get("CLUSTER_ID"):
            problems.append(f"{name}: no shared cluster id")
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        if f"--command-config {args.out}/{CLIENT_FILE}" not in test:
            problems.append(f"{name}: healthcheck does not log in")
        if volume_at(svc, str(args.out)) != ("kafka-config", True):
            problems.append(f"{name}: the generated files are not mounted read-only")
        if volume_at(svc, str(args.tls)) != ("kafka-tls", True):
            problems.append(f"{name}: the member key is not mounted read-only at {args.tls}")
        protocols = dict(
            p.split(":", 1) for p in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",")
        )
        for listener, protocol in protocols.items():
            wanted = "SSL" if listener == env.get("KAFKA_CONTROLLER_LISTENER_NAMES") else "SASL_SSL"
            if protocol != wanted:
                problems.append(f"{name}: listener {listener} speaks {protocol}")
        if env.get("KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH") != "required":
            problems.append(f"{name}: controllers do not require client certificates")
        if not env.get("KAFKA_AUTHORIZER_CLASS_NAME", "").endswith(".StandardAuthorizer"):
            problems.append(f"{name}: no authorizer")
        if env.get("KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND") != "false":
            problems.append(f"{name}: allows everyone where no ACL is found")
        supers = env.get("KAFKA_SUPER_USERS", "").split(";")
        if supers[:2] != ["User:broker", "User:admin"] or len(supers) != 3:
            problems.append(f"{name}: super users {supers}")
    return problems


def _volume_problems(data: Compose) -> list[str]:
    problems: list[str] = []
    users: dict[str, list[str]] = {"kafka-config": [], "kafka-tls": []}
    for name, svc in data["services"].items():
        for src, _target, ro in mounts(svc):
            if src in users:
                users[src].append(name if ro else f"{name} (rw)")
    brokers = sorted(broker_envs(data))
    if sorted(users["kafka-config"]) != sorted(["kafka-config (rw)", *brokers]):
        problems.append(f"the generated Kafka files are mounted by {users['kafka-config']}")
    if sorted(users["kafka-tls"]) != sorted(["certs (rw)", "kafka-config", *brokers]):
        problems.append(f"the Kafka member key is mounted by {users['kafka-tls']}")
    certs = "\n".join(data["services"]["certs"]["command"])
    member = re.search(r"careledger tls-certs .*--name kafka .*", certs)
    if member is None or "--member" not in member.group(0) or "--keystore" not in member.group(0):
        problems.append("certs makes no Kafka member certificate and keystore")
    else:
        hosts = set(member.group(0).split("--hosts ")[1].split()[0].split(","))
        if not set(brokers) | {"127.0.0.1"} <= hosts:
            problems.append(f"the Kafka member certificate names {sorted(hosts)}")
    owner = parse_config_argv(config_argv(data)).owner
    if f"chown {owner} /kafka-tls/kafka.keystore.pem" not in certs:
        problems.append(f"the keystore is not given to the brokers' user {owner}")
    return problems


def _login_problems(data: Compose) -> list[str]:
    problems: list[str] = []
    for name, svc in _apps(data).items():
        env = svc.get("environment") or {}
        given = str(env.get("CARELEDGER_KAFKA_PASSWORD", ""))
        held = set(_REQUIRED.findall(yaml.safe_dump(env)))
        if name == "kafka-config":
            wanted = {password_variable(p) for p in PRINCIPALS}
            if held != wanted or given:
                problems.append(f"kafka-config: requires {sorted(held)}")
            continue
        principal = PRINCIPAL_OF.get(name)
        if principal is None:
            if held or given:
                problems.append(f"{name}: holds a Kafka password it does not use")
            continue
        if held != {password_variable(principal)} or not given.startswith(
            f"${{{password_variable(principal)}:?"
        ):
            problems.append(f"{name}: does not log in with {principal}'s password alone")
        s = settings_of(svc)
        if s.kafka_security_protocol != "SASL_SSL":
            problems.append(f"{name}: Kafka is {s.kafka_security_protocol}")
        if s.kafka_ca_file is None or volume_at(svc, str(s.kafka_ca_file.parent)) != (
            "tls-trust",
            True,
        ):
            problems.append(f"{name}: the Kafka CA {s.kafka_ca_file} is not on tls-trust")
    return problems


def kafka_security_problems(data: Compose) -> list[str]:
    return _broker_problems(data) + _volume_problems(data) + _login_problems(data)


# --- the file as it is -----------------------------------------------------------------


def test_compose_kafka_logins_tls_and_acls_are_consistent(compose: Compose) -> None:
    assert kafka_security_problems(compose) == []
    assert set(PRINCIPAL_OF) | NO_KAFKA == set(_apps(compose)), "a new service: who is it?"


def test_each_broker_advertises_its_own_name_inside_and_loopback_outside(
    compose: Compose,
) -> None:
    for name, env in broker_envs(compose).items():
        advertised = dict(
            item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
        assert advertised["INTERNAL"] == f"{name}:9092"
        assert advertised["EXTERNAL"].startswith("127.0.0.1:")
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"


# --- attacks: each must be reported ------------------------------------------------------


def test_a_plaintext_client_listener_is_caught(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careledger.kafka import security

    real = security.broker_properties

    def plaintext(**kwargs: Any) -> dict[str, str]:
        props = real(**kwargs)
        props["listener.security.protocol.map"] = props["listener.security.protocol.map"].replace(
            "EXTERNAL:SASL_SSL", "EXTERNAL:PLAINTEXT"
        )
        return props

    monkeypatch.setattr("careledger.stack.kafka_deploy.broker_properties", plaintext)
    problems = kafka_security_problems(compose)
    assert "kafka-1: listener EXTERNAL speaks PLAINTEXT" in problems, problems


def test_acls_off_are_caught(compose: Compose, monkeypatch: pytest.MonkeyPatch) -> None:
    from careledger.kafka import security

    real = security.broker_properties

    def open_door(**kwargs: Any) -> dict[str, str]:
        return {**real(**kwargs), "allow.everyone.if.no.acl.found": "true"}

    monkeypatch.setattr("careledger.stack.kafka_deploy.broker_properties", open_door)
    assert "kafka-2: allows everyone where no ACL is found" in kafka_security_problems(compose)


def test_a_service_given_the_admin_password_is_caught(compose: Compose) -> None:
    env = compose["services"]["verifier"]["environment"]
    env["CARELEDGER_KAFKA_PASSWORD"] = "${CARELEDGER_KAFKA_ADMIN_PASSWORD:?set it}"
    problems = kafka_security_problems(compose)
    assert "verifier: does not log in with verifier's password alone" in problems


def test_a_service_holding_a_second_password_is_caught(compose: Compose) -> None:
    env = compose["services"]["gateway"]["environment"]
    env["CARELEDGER_KAFKA_PROCESSOR_PASSWORD"] = "${CARELEDGER_KAFKA_PROCESSOR_PASSWORD:?x}"
    assert "gateway: does not log in with producer's password alone" in (
        kafka_security_problems(compose)
    )


def test_a_password_with_a_default_is_caught(compose: Compose) -> None:
    env = compose["services"]["processor"]["environment"]
    env["CARELEDGER_KAFKA_PASSWORD"] = "${CARELEDGER_KAFKA_PROCESSOR_PASSWORD:-changeme}"
    assert "processor: does not log in with processor's password alone" in (
        kafka_security_problems(compose)
    )
    config = compose["services"]["kafka-config"]["environment"]
    config["CARELEDGER_KAFKA_BROKER_PASSWORD"] = "${CARELEDGER_KAFKA_BROKER_PASSWORD:-changeme}"
    assert any(p.startswith("kafka-config: requires") for p in kafka_security_problems(compose))


def test_a_plaintext_service_is_caught(compose: Compose) -> None:
    env = compose["services"]["replica"]["environment"]
    env["CARELEDGER_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    assert "replica: Kafka is PLAINTEXT" in kafka_security_problems(compose)


def test_the_generated_files_shared_with_an_app_are_caught(compose: Compose) -> None:
    compose["services"]["gateway"]["volumes"].append("kafka-config:/kafka-config:ro")
    problems = kafka_security_problems(compose)
    assert any(p.startswith("the generated Kafka files are mounted by") for p in problems)


def test_a_broker_writing_the_generated_files_is_caught(compose: Compose) -> None:
    svc = compose["services"]["kafka-2"]
    svc["volumes"] = [
        v.replace("kafka-config:/kafka-config:ro", "kafka-config:/kafka-config")
        for v in svc["volumes"]
    ]
    assert "kafka-2: the generated files are not mounted read-only" in (
        kafka_security_problems(compose)
    )


def test_a_broker_formatted_without_logins_is_caught(compose: Compose) -> None:
    svc = compose["services"]["kafka-3"]
    svc["command"] = [svc["command"][0].replace(" $$(cat /kafka-config/scram.args)", "")]
    assert "kafka-3: storage not formatted with the SCRAM logins (globbing off)" in (
        kafka_security_problems(compose)
    )


def test_an_unauthenticated_healthcheck_is_caught(compose: Compose) -> None:
    svc = copy.deepcopy(compose["services"]["kafka-1"])
    svc["healthcheck"]["test"] = [
        svc["healthcheck"]["test"][0],
        "/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server kafka-1:9092",
    ]
    compose["services"]["kafka-1"] = svc
    assert "kafka-1: healthcheck does not log in" in kafka_security_problems(compose)


def test_a_member_certificate_missing_a_broker_is_caught(compose: Compose) -> None:
    certs = compose["services"]["certs"]
    certs["command"] = [certs["command"][0].replace("kafka-1,kafka-2,kafka-3,", "kafka-1,kafka-2,")]
    assert any(
        p.startswith("the Kafka member certificate names")
        for p in (kafka_security_problems(compose))
    )
