"""docker-compose.yml is a cluster (issue 12 point 1, ADR 0030), checked by construction.

No Docker engine runs here, so the file is read with the YAML parser test_compose.py
uses (the same helpers: interpolation as Compose does it, environments as Settings
load them) and checked by three checkers that return what is wrong, if anything:

- Kafka: three or more KRaft brokers (broker + controller), distinct node ids, one
  CLUSTER_ID, one static voter list naming exactly every broker's controller listener;
  the replication factor and min ISR of the brokers (default, offsets, transactions)
  are the ones careledger creates its topics with, and leave room for one broker down;
  every careledger service bootstraps from exactly the brokers.
- ClickHouse: two replicas of one shard, each with the same ZooKeeper, its own
  {replica} macro and interserver host, mounted config files that exist and parse;
  every careledger service uses replicated tables and fails over to the other replica.
- ZooKeeper (its mutual TLS, the replicas' secure nodes): test_compose_zookeeper.py.

Each checker is also run on mutated copies of the file (the attacks: a broker left out
of the quorum, a careledger service with another replication factor, two replicas
with the same macro, ...) and must report them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from careledger.config import PROJECT_ROOT
from tests.unit.compose_kafka import broker_envs
from tests.unit.test_compose import (
    CLICKHOUSE_NATIVE_PORT,
    COMPOSE,
    env_of,
    listeners,
    mounts,
    settings_of,
)

Compose = dict[str, Any]
XmlLoader = Callable[[Path], ET.Element]
CONFIG_D = PurePosixPath("/etc/clickhouse-server/config.d")
USERS_D = PurePosixPath("/etc/clickhouse-server/users.d")
BROKER_FACTORS = (
    "KAFKA_DEFAULT_REPLICATION_FACTOR",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
)
BROKER_MIN_ISRS = (
    "KAFKA_MIN_INSYNC_REPLICAS",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
)


def load_compose() -> Compose:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def compose() -> Compose:
    """A fresh parse per test: the attack tests mutate it."""
    return load_compose()


def image_repo(service: dict[str, Any]) -> str:
    return str(service.get("image", "")).split(":")[0]


def careledger_services(data: Compose) -> dict[str, dict[str, Any]]:
    """The app services (built from the project) and kafka-init: everything that reads
    CARELEDGER_* settings."""
    services: dict[str, dict[str, Any]] = data["services"]
    return {n: s for n, s in services.items() if "build" in s or n == "kafka-init"}


def brokers(data: Compose) -> dict[str, dict[str, str]]:
    """Kafka broker services -> the configuration each starts from (the file the
    kafka-config service writes for it, named as apache/kafka environment variables)."""
    return {name: env for name, env in broker_envs(data).items() if "KAFKA_NODE_ID" in env}


def host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host, int(port)


def depends_healthy(service: dict[str, Any], names: set[str]) -> bool:
    deps = service.get("depends_on") or {}
    return all(deps.get(n) == {"condition": "service_healthy"} for n in names)


# --- Kafka ------------------------------------------------------------------------


def kafka_problems(data: Compose) -> list[str]:
    problems: list[str] = []
    try:
        found = brokers(data)
    except ValueError as exc:  # what `careledger kafka-config` would exit 2 with
        return [f"kafka-config: {exc}"]
    if len(found) < 3:
        return [f"{len(found)} Kafka brokers, a cluster needs 3"]
    ids = {name: env.get("KAFKA_NODE_ID", "") for name, env in found.items()}
    if len(set(ids.values())) != len(ids):
        problems.append(f"node ids not distinct: {ids}")
    if len({env.get("CLUSTER_ID") for env in found.values()}) != 1:
        problems.append("brokers with different CLUSTER_IDs")
    voter_lists = {env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "") for env in found.values()}
    if len(voter_lists) != 1:
        problems.append(f"brokers disagree on the controller quorum: {sorted(voter_lists)}")
    for name, env in found.items():
        if set(env.get("KAFKA_PROCESS_ROLES", "").split(",")) != {"broker", "controller"}:
            problems.append(f"{name}: not a combined broker+controller")
        if data["services"][name].get("hostname") != name:
            problems.append(f"{name}: hostname is not the service name")
        # the quorum names every broker's controller listener, under its node id, and only them
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        expected = {
            ids[b]: f"{b}:{listeners(b_env['KAFKA_LISTENERS'])[controller][1]}"
            for b, b_env in found.items()
        }
        voters = dict(v.split("@", 1) for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        if voters != expected:
            problems.append(f"{name}: voters {voters} are not the brokers {expected}")
        logs = [t for src, t, _ in mounts(data["services"][name]) if not src.startswith((".", "/"))]
        if PurePosixPath(env.get("KAFKA_LOG_DIRS", "")) not in logs:
            problems.append(f"{name}: its log dir is not on a named volume")
    volumes = [
        src
        for name in found
        for src, target, _ in mounts(data["services"][name])
        if str(target) == found[name].get("KAFKA_LOG_DIRS")
    ]
    if len(set(volumes)) != len(found):
        problems.append(f"brokers share data volumes: {volumes}")
    problems += _replication_problems(data, found)
    problems += _bootstrap_problems(data, found)
    return problems


def _replication_problems(data: Compose, found: dict[str, dict[str, str]]) -> list[str]:
    problems: list[str] = []
    apps = careledger_services(data)
    settings = {name: settings_of(svc) for name, svc in apps.items()}
    factors = {(s.kafka_replication_factor, s.kafka_min_insync_replicas) for s in settings.values()}
    if len(factors) != 1:
        return [f"careledger services disagree on replication / min ISR: {sorted(factors)}"]
    [(rf, min_isr)] = factors
    if not 1 <= min_isr < rf <= len(found):
        problems.append(f"replication {rf} / min ISR {min_isr} on {len(found)} brokers")
    for name, env in found.items():
        for key in BROKER_FACTORS:
            if env.get(key) != str(rf):
                problems.append(f"{name}: {key}={env.get(key)}, careledger uses {rf}")
        for key in BROKER_MIN_ISRS:
            if env.get(key) != str(min_isr):
                problems.append(f"{name}: {key}={env.get(key)}, careledger uses {min_isr}")
    # kafka-init creates every topic with those numbers: `careledger kafka-setup` with the
    # settings checked above (careledger.stack.topics, as `careledger up --cluster`)
    if data["services"]["kafka-init"].get("command") != ["kafka-setup"]:
        problems.append("kafka-init: does not create the topics with careledger kafka-setup")
    return problems


def _bootstrap_problems(data: Compose, found: dict[str, dict[str, str]]) -> list[str]:
    problems: list[str] = []
    internal: set[tuple[str, int]] = set()
    for name, env in found.items():
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        internal |= {(h, p) for h, p in advertised.values() if h == name}
    for name, svc in careledger_services(data).items():
        listed = [host_port(b) for b in settings_of(svc).kafka_brokers]
        if sorted(listed) != sorted(internal):
            problems.append(f"{name}: bootstrap {listed} is not the brokers {sorted(internal)}")
    # whoever waited for a broker waits for all of them
    for name, svc in data["services"].items():
        if set(svc.get("depends_on") or {}) & set(found) and not depends_healthy(svc, set(found)):
            problems.append(f"{name}: does not wait for every broker to be healthy")
    return problems


# --- ClickHouse and ZooKeeper -------------------------------------------------------


def load_xml(path: Path) -> ET.Element:
    return ET.fromstring(path.read_bytes())


def clickhouse_replicas(data: Compose) -> dict[str, dict[str, Any]]:
    """The primary's ClickHouse servers: not the replica app's own (ADR 0017)."""
    replica = data["services"].get("replica")
    own = {settings_of(replica).replica_clickhouse_host} if replica else set()
    return {
        name: svc
        for name, svc in data["services"].items()
        if image_repo(svc) == "clickhouse/clickhouse-server" and name not in own
    }


def server_config(
    service: dict[str, Any], load: XmlLoader, problems: list[str], name: str
) -> dict[str, Any]:
    """The config.d files mounted into one server, merged (later files win per element)."""
    merged: dict[str, ET.Element] = {}
    for source, target, read_only in mounts(service):
        if target.parent != CONFIG_D:
            continue
        path = PROJECT_ROOT / source
        if not source.startswith(("./", "/")) or not path.is_file():
            problems.append(f"{name}: mounted config {source} is not a file in the repository")
            continue
        if not read_only:
            problems.append(f"{name}: {source} mounted writable")
        try:
            root = load(path)
        except ET.ParseError as exc:
            problems.append(f"{name}: {source} is not well-formed XML: {exc}")
            continue
        if root.tag not in ("clickhouse", "yandex"):
            problems.append(f"{name}: {source} root is <{root.tag}>")
        for child in root:
            merged[child.tag] = child
    return merged


def zookeeper_nodes(config: dict[str, Any]) -> list[tuple[str, int]]:
    zk = config.get("zookeeper")
    if zk is None:
        return []
    return [(n.findtext("host", ""), int(n.findtext("port", "0"))) for n in zk.findall("node")]


def clickhouse_problems(data: Compose, load: XmlLoader = load_xml) -> list[str]:
    problems: list[str] = []
    servers = clickhouse_replicas(data)
    if len(servers) != 2:
        return [f"{sorted(servers)}: expected two ClickHouse replicas"]
    configs = {name: server_config(svc, load, problems, name) for name, svc in servers.items()}
    macros: dict[str, dict[str, str]] = {}
    for name, config in configs.items():
        m = config.get("macros")
        macros[name] = {c.tag: (c.text or "").strip() for c in m} if m is not None else {}
        if macros[name].get("replica") != name:
            problems.append(f"{name}: macro replica={macros[name].get('replica')!r}")
        host = config.get("interserver_http_host")
        if (
            host is None
            or (host.text or "").strip() != name
            or servers[name].get("hostname") != name
        ):
            problems.append(f"{name}: interserver_http_host is not the service name")
        for zk_host, zk_port in zookeeper_nodes(config) or [("(none)", 0)]:
            zk = data["services"].get(zk_host)
            if zk is None or image_repo(zk) != "zookeeper":
                problems.append(f"{name}: ZooKeeper node {zk_host}:{zk_port} is no service")
        if not depends_healthy(servers[name], {h for h, _ in zookeeper_nodes(config)}):
            problems.append(f"{name}: does not wait for ZooKeeper")
        problems += _interserver_login_problems(name, servers[name], config)
    if len({m.get("shard") for m in macros.values()}) != 1:
        problems.append(f"replicas in different shards: {macros}")
    if len({tuple(zookeeper_nodes(c)) for c in configs.values()}) != 1:
        problems.append("replicas with different ZooKeepers")
    data_volumes = [
        src
        for svc in servers.values()
        for src, t, _ in mounts(svc)
        if str(t) == "/var/lib/clickhouse"
    ]
    if len(set(data_volumes)) != len(servers):
        problems.append(f"replicas share data volumes: {data_volumes}")
    creds = {
        (
            tuple(
                env_of(s).get(k)
                for k in ("CLICKHOUSE_WRITER_PASSWORD", "CLICKHOUSE_READER_PASSWORD")
            ),
            tuple(sorted(src for src, t, _ in mounts(s) if t.parent == USERS_D)),
        )
        for s in servers.values()
    }
    if len(creds) != 1:
        problems.append("replicas with different users or passwords")
    problems += _client_problems(data, set(servers))
    return problems


def _interserver_login_problems(
    name: str, svc: dict[str, Any], config: dict[str, ET.Element]
) -> list[str]:
    """Parts are fetched only with the interserver login (ADR 0032, addendum): a user and
    a password read from the server's environment, which the operator must set."""
    creds = config.get("interserver_http_credentials")
    if creds is None:
        return [f"{name}: no interserver_http_credentials: any peer fetches parts"]
    user = creds.find("user")
    password = creds.find("password")
    variable = "" if password is None else password.get("from_env", "")
    if user is None or not (user.text or "").strip() or not variable:
        return [f"{name}: the interserver login needs a user and a password from_env"]
    value = str(env_of(svc).get(variable, ""))
    if not value.startswith("${CARELEDGER_CLICKHOUSE_INTERSERVER_PASSWORD:?"):
        return [f"{name}: {variable} is not CARELEDGER_CLICKHOUSE_INTERSERVER_PASSWORD, required"]
    return []


def _client_problems(data: Compose, servers: set[str]) -> list[str]:
    problems: list[str] = []
    for name, svc in careledger_services(data).items():
        s = settings_of(svc)
        if not s.clickhouse_replicated:
            problems.append(f"{name}: CARELEDGER_CLICKHOUSE_REPLICATED is not true")
        others = [host_port(r) for r in s.clickhouse_replicas]
        if s.clickhouse_host not in servers or sorted(others) != [
            (h, CLICKHOUSE_NATIVE_PORT) for h in sorted(servers - {s.clickhouse_host})
        ]:
            problems.append(f"{name}: {s.clickhouse_host} + replicas {others} are not {servers}")
    if not depends_healthy(data["services"]["migrate"], servers):
        problems.append("migrate does not wait for every replica")
    return problems


# --- the file as it is ----------------------------------------------------------


def test_the_kafka_cluster_is_consistent(compose: Compose) -> None:
    assert kafka_problems(compose) == []
    found = brokers(compose)
    assert sorted(found) == ["kafka-1", "kafka-2", "kafka-3"]
    assert sorted(env["KAFKA_NODE_ID"] for env in found.values()) == ["1", "2", "3"]
    assert {compose["services"][n]["image"] for n in found} == {"apache/kafka:4.1.1"}


def test_careledger_services_use_replication_3_and_min_isr_2(compose: Compose) -> None:
    for name, svc in careledger_services(compose).items():
        s = settings_of(svc)
        assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2), name
        assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name


def test_the_clickhouse_replicas_are_consistent(compose: Compose) -> None:
    assert clickhouse_problems(compose) == []
    assert sorted(clickhouse_replicas(compose)) == ["clickhouse-1", "clickhouse-2"]
    for name, svc in careledger_services(compose).items():
        s = settings_of(svc)
        assert s.clickhouse_replicated, name
        assert (s.clickhouse_host, s.clickhouse_replicas) == (
            "clickhouse-1",
            ("clickhouse-2:9440",),
        )


def test_mounted_clickhouse_configs_exist_and_are_xml(compose: Compose) -> None:
    seen = set()
    for name, svc in clickhouse_replicas(compose).items():
        problems: list[str] = []
        config = server_config(svc, load_xml, problems, name)
        assert problems == []
        assert {"zookeeper", "macros", "interserver_http_host"} <= set(config), name
        seen |= {src for src, t, _ in mounts(svc) if t.parent == CONFIG_D}
    assert seen == {
        "./deploy/compose/clickhouse/replication.xml",
        "./deploy/compose/clickhouse/clickhouse-1.xml",
        "./deploy/compose/clickhouse/clickhouse-2.xml",
        "./deploy/compose/clickhouse/tls.xml",  # ADR 0032
    }


def test_the_independent_replica_keeps_its_own_single_clickhouse(compose: Compose) -> None:
    """ADR 0017: replica-clickhouse is no member of the cluster (no ZooKeeper, no macros)."""
    own = compose["services"]["replica-clickhouse"]
    problems: list[str] = []
    config = server_config(own, load_xml, problems, "replica-clickhouse")
    assert problems == [] and "tcp_port_secure" in config  # TLS, like the primary
    assert not {"zookeeper", "macros", "interserver_http_host"} & set(config)
    assert "replica-clickhouse" not in clickhouse_replicas(compose)


def test_every_replica_password_is_required_without_default(compose: Compose) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    found = re.findall(r"\$\{(CARELEDGER_CLICKHOUSE_PASSWORD)(:?[-?])", text)
    assert len(found) >= 3 and {op for _, op in found} == {":?"}
    for svc in clickhouse_replicas(compose).values():
        password = svc["environment"]["CLICKHOUSE_WRITER_PASSWORD"]
        assert password.startswith("${CARELEDGER_CLICKHOUSE_PASSWORD:?"), password
        reader = svc["environment"]["CLICKHOUSE_READER_PASSWORD"]
        assert reader.startswith("${CARELEDGER_CLICKHOUSE_READER_PASSWORD:?"), reader


# --- attacks: each mutation must be reported ------------------------------------------


def _config_option(data: Compose, name: str, value: str) -> None:
    command = data["services"]["kafka-config"]["command"]
    command[command.index(name) + 1] = value


def test_a_broker_left_out_of_the_configured_nodes_is_caught(compose: Compose) -> None:
    _config_option(compose, "--nodes", "kafka-1,kafka-2")
    _config_option(compose, "--external", "127.0.0.1:19092,127.0.0.1:19192")
    problems = kafka_problems(compose)
    assert problems == ["kafka-config: replication factor 3 on 2 nodes"], problems


def test_a_node_the_brokers_do_not_run_is_caught(compose: Compose) -> None:
    """A fourth voter no service runs: the quorum names a controller that is not there."""
    _config_option(compose, "--nodes", "kafka-1,kafka-2,kafka-3,kafka-4")
    _config_option(
        compose, "--external", "127.0.0.1:19092,127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392"
    )
    problems = kafka_problems(compose)
    assert any("voters" in p and "kafka-4" in p for p in problems), problems


def test_a_broker_starting_from_another_nodes_file_is_caught(compose: Compose) -> None:
    svc = compose["services"]["kafka-3"]
    svc["command"] = [svc["command"][0].replace("kafka-3.properties", "kafka-2.properties")]
    problems = kafka_problems(compose)
    assert any("node ids not distinct" in p for p in problems), problems


def test_brokers_with_another_replication_factor_are_caught(compose: Compose) -> None:
    svc = compose["services"]["kafka-config"]
    svc["environment"] = {**svc["environment"], "CARELEDGER_KAFKA_REPLICATION_FACTOR": "2"}
    problems = kafka_problems(compose)
    assert any("disagree on replication" in p for p in problems), problems


def test_min_isr_equal_to_replication_is_caught(compose: Compose) -> None:
    """min ISR 3 of 3: one broker down and every write is refused."""
    for svc in careledger_services(compose).values():
        env = svc["environment"] = dict(svc["environment"])
        env["CARELEDGER_KAFKA_MIN_INSYNC_REPLICAS"] = "3"
    assert any("replication 3 / min ISR 3" in p for p in kafka_problems(compose))


def test_a_service_bootstrapping_from_two_brokers_is_caught(compose: Compose) -> None:
    svc = compose["services"]["verifier"]
    svc["environment"] = {
        **svc["environment"],
        "CARELEDGER_KAFKA_BROKERS": "kafka-1:9092,kafka-2:9092",
    }
    assert any(p.startswith("verifier: bootstrap") for p in kafka_problems(compose))


def test_kafka_init_not_waiting_for_every_broker_is_caught(compose: Compose) -> None:
    del compose["services"]["kafka-init"]["depends_on"]["kafka-3"]
    assert "kafka-init: does not wait for every broker to be healthy" in kafka_problems(compose)


def test_topics_created_by_another_command_are_caught(compose: Compose) -> None:
    compose["services"]["kafka-init"]["command"] = ["up", "--no-migrate"]
    assert any("kafka-init: does not create" in p for p in kafka_problems(compose))


def _xml_with(replace: dict[str, tuple[str, str]]) -> XmlLoader:
    """A loader that edits the text of some files before parsing them."""

    def load(path: Path) -> ET.Element:
        text = path.read_text(encoding="utf-8")
        if path.name in replace:
            old, new = replace[path.name]
            assert old in text
            text = text.replace(old, new)
        return ET.fromstring(text)

    return load


def test_two_replicas_with_the_same_macro_are_caught(compose: Compose) -> None:
    load = _xml_with({"clickhouse-2.xml": ("<replica>clickhouse-2<", "<replica>clickhouse-1<")})
    problems = clickhouse_problems(compose, load)
    assert any("clickhouse-2: macro replica='clickhouse-1'" in p for p in problems), problems


def test_replicas_with_different_zookeepers_are_caught(compose: Compose) -> None:
    compose["services"]["zk-other"] = {"image": "zookeeper:3.9"}
    extra = "<zookeeper><node><host>zk-other</host><port>2181</port></node></zookeeper>"
    load = _xml_with({"clickhouse-2.xml": ("</clickhouse>", extra + "</clickhouse>")})
    problems = clickhouse_problems(compose, load)
    assert "replicas with different ZooKeepers" in problems, problems


def test_a_missing_or_malformed_config_file_is_caught(compose: Compose, tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<clickhouse><macros><replica>clickhouse-1</macros></clickhouse>")
    volumes = compose["services"]["clickhouse-1"]["volumes"]
    volumes[-1] = f"{broken}:/etc/clickhouse-server/config.d/replica.xml:ro"
    compose["services"]["clickhouse-2"]["volumes"][-1] = (
        "./deploy/compose/clickhouse/nowhere.xml:/etc/clickhouse-server/config.d/replica.xml:ro"
    )
    problems = clickhouse_problems(compose)
    assert any("broken.xml is not well-formed XML" in p for p in problems), problems
    assert any("nowhere.xml is not a file" in p for p in problems), problems


def test_a_service_without_replicated_tables_or_failover_is_caught(compose: Compose) -> None:
    svc = compose["services"]["processor"]
    svc["environment"] = {**svc["environment"], "CARELEDGER_CLICKHOUSE_REPLICATED": "false"}
    gw = compose["services"]["gateway"]
    gw["environment"] = {**gw["environment"], "CARELEDGER_CLICKHOUSE_REPLICAS": "clickhouse-1:9440"}
    problems = clickhouse_problems(compose)
    assert "processor: CARELEDGER_CLICKHOUSE_REPLICATED is not true" in problems
    assert any(p.startswith("gateway: clickhouse-1 + replicas") for p in problems), problems


def test_migrate_not_waiting_for_the_second_replica_is_caught(compose: Compose) -> None:
    del compose["services"]["migrate"]["depends_on"]["clickhouse-2"]
    assert "migrate does not wait for every replica" in clickhouse_problems(compose)


def test_replicas_fetching_parts_without_a_login_are_caught(compose: Compose) -> None:
    def without_credentials(path: Path) -> ET.Element:
        root = load_xml(path)
        for node in root.findall("interserver_http_credentials"):
            root.remove(node)
        return root

    problems = clickhouse_problems(compose, without_credentials)
    assert any("interserver_http_credentials" in p for p in problems), problems
    for name in clickhouse_replicas(compose):
        compose["services"][name]["environment"]["CLICKHOUSE_INTERSERVER_PASSWORD"] = "secret"
    problems = clickhouse_problems(compose)
    assert any("CARELEDGER_CLICKHOUSE_INTERSERVER_PASSWORD" in p for p in problems), problems
