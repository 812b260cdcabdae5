"""Every confluent-kafka client is configured by ``client_config``: librdkafka never
writes to stderr.

Left alone, librdkafka prints its log lines (``%3|...|FAIL|rdkafka#producer-1| ...
Connection refused``) to the process's stderr from its own threads, for as long as a
client lives. ``careledger.kafka.clients.client_config`` gives each client a Python
logger instead. Two halves:

* the rule, read from the source like tests/unit/test_floors.py: every call of
  confluent-kafka's ``Producer``, ``Consumer`` or ``AdminClient`` (however imported) in
  our packages and tests takes exactly one argument, and it is a call of
  ``client_config`` (or ``producer_config``, which calls it), or a local name that every
  assignment in the same function binds to such a call (items may then be set on it:
  callbacks). Anything else (a dict, a parameter, keywords) breaks the rule. The
  checker is attacked first (``test_the_checker_*``).
* the behaviour: a client pointed at a closed port writes nothing on fd 2 and its lines
  reach the Python logger; the same client built from a bare dict does write on fd 2
  (so the capture can see a failure).
* the login (issue 12): ``client_config`` merges its ``login``'s security properties and
  refuses a caller's own (``security.protocol``, ``sasl.*``, ``ssl.*``); ``kafka_config``
  makes the login of a principal from ``Settings``. ``login=None`` (no security at all)
  is for the tests' clients of fake bootstraps: no product file may pass it.
"""

from __future__ import annotations

import ast
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from careledger.config import Settings
from careledger.kafka import client_config, rdkafka_logger
from careledger.kafka.clients import RDKAFKA_LOGGER, RateLimit, kafka_config
from careledger.kafka.producer import AccessEventProducer, DeliveryError, producer_config
from careledger.kafka.security import ADMIN, PRINCIPALS, PROCESSOR, KafkaLogin, kafka_login

REPO = Path(__file__).resolve().parents[2]
ROOTS = (
    "careledger",
    "producers",
    "processors",
    "verifiers",
    "commands",
    "replica",
    "witness",
    "tests",
)
CLIENTS = frozenset({"Producer", "Consumer", "AdminClient"})
MODULES = frozenset({"confluent_kafka", "confluent_kafka.admin"})
FACTORIES = frozenset({"client_config", "kafka_config", "producer_config"})
#: the roots of product code (the tests may pass ``login=None`` for fake bootstraps)
PRODUCT_ROOTS = tuple(r for r in ROOTS if r != "tests")
#: the one client allowed a bare dict: the attack below, which must print on stderr
ATTACK = ("tests/unit/test_kafka_clients.py", "# kafka-clients: the attack")
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


# -- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    line: int
    client: str
    problem: str | None  # None: configured by client_config


def _client_names(tree: ast.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(local name -> client class, local name -> module) bound by imports of confluent_kafka."""
    classes: dict[str, str] = {}
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in MODULES and not node.level:
            for alias in node.names:
                if alias.name in CLIENTS:
                    classes[alias.asname or alias.name] = alias.name
                elif alias.name == "admin":
                    modules[alias.asname or alias.name] = "confluent_kafka.admin"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        modules["confluent_kafka"] = "confluent_kafka"
    return classes, modules


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _client_of(call: ast.Call, classes: dict[str, str], modules: dict[str, str]) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return classes.get(func.id)
    if isinstance(func, ast.Attribute) and func.attr in CLIENTS:
        base = _dotted(func.value)
        if base is None:
            return None
        head, _, rest = base.partition(".")
        module = modules.get(head)
        if module is None:
            return None
        full = f"{module}.{rest}" if rest else module
        return func.attr if full in MODULES else None
    return None


def _is_factory_call(node: ast.expr | None) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name in FACTORIES


def _bindings(scope: ast.AST, name: str) -> Iterator[ast.expr | None]:
    """Every value ``name`` is bound to in ``scope`` (not in nested functions or classes);
    None for a binding whose value is not one expression (parameter, loop, with, del...)."""
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        a = scope.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
            if arg is not None and arg.arg == name:
                yield None
    body = getattr(scope, "body", [])  # a lambda's is one expression
    todo: list[ast.AST] = list(body) if isinstance(body, list) else [body]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            if getattr(node, "name", None) == name:
                yield None
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    yield node.value
                elif not isinstance(target, ast.Subscript | ast.Attribute) and any(
                    isinstance(n, ast.Name) and n.id == name for n in ast.walk(target)
                ):
                    yield None  # unpacking
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            target = node.target
            if isinstance(target, ast.Name) and target.id == name:
                yield node.value if isinstance(node, ast.AnnAssign | ast.NamedExpr) else None
        elif isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            parent = getattr(node, "_parent", None)
            if not isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
                yield None  # for/with/except/import targets
        elif isinstance(node, ast.Import | ast.ImportFrom) and any(
            (a.asname or a.name.split(".")[0]) == name for a in node.names
        ):
            yield None
        todo.extend(ast.iter_child_nodes(node))


def _problem(call: ast.Call, scope: ast.AST) -> str | None:
    if call.keywords or len(call.args) != 1 or isinstance(call.args[0], ast.Starred):
        return "takes other arguments than one client_config(...)"
    arg = call.args[0]
    if _is_factory_call(arg):
        return None
    if isinstance(arg, ast.Name):
        values = list(_bindings(scope, arg.id))
        if values and all(_is_factory_call(v) for v in values):
            return None
        return f"{arg.id!r} is not bound only to client_config(...) in its function"
    return f"config is a {type(arg).__name__}, not client_config(...)"


def client_sites(source: str) -> list[Site]:
    """Every construction of a confluent-kafka client in ``source``, judged."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child._parent = node  # type: ignore[attr-defined]
    classes, modules = _client_names(tree)
    sites: list[Site] = []

    def visit(scope: ast.AST) -> None:
        todo = list(ast.iter_child_nodes(scope))
        while todo:
            node = todo.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(node)
                continue
            if isinstance(node, ast.Call):
                client = _client_of(node, classes, modules)
                if client is not None:
                    sites.append(Site(node.lineno, client, _problem(node, scope)))
            todo.extend(ast.iter_child_nodes(node))

    visit(tree)
    return sorted(sites, key=lambda s: s.line)


def problems(source: str, exempt: str | None = None) -> list[str]:
    """The rule's breaches in ``source``; a site whose line ends with ``exempt`` is let be."""
    lines = source.splitlines()
    return [
        f"{s.line}: {s.client} {s.problem}"
        for s in client_sites(source)
        if s.problem and not (exempt and lines[s.line - 1].endswith(exempt))
    ]


def logins_refused(source: str) -> list[str]:
    """Every call in ``source`` that passes ``login=None`` (no login: a product client
    would then talk to a SASL_SSL broker as nobody)."""
    return [
        f"{node.lineno}: login=None"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "login" and isinstance(kw.value, ast.Constant) and kw.value.value is None
    ]


# -- the checker, attacked ------------------------------------------------------------------

BAD = {
    "a bare dict": 'from confluent_kafka import Producer\nProducer({"bootstrap.servers": "b"})\n',
    "a dict in a name": (
        "from confluent_kafka import Consumer\n"
        "def f():\n"
        '    config = {"bootstrap.servers": "b", "group.id": "g"}\n'
        "    return Consumer(config)\n"
    ),
    "a name bound twice": (
        "from confluent_kafka import Producer\n"
        "def f():\n"
        '    config = client_config("b", login=None)\n'
        '    config = {"bootstrap.servers": "b"}\n'
        "    return Producer(config)\n"
    ),
    "a parameter": (
        "from confluent_kafka import Consumer\ndef f(config):\n    return Consumer(config)\n"
    ),
    "a name bound in another function": (
        "from confluent_kafka import Producer\n"
        'def g():\n    config = client_config("b", login=None)\n'
        "def f():\n    return Producer(config)\n"
    ),
    "keywords": (
        'from confluent_kafka import Producer\nProducer(client_config("b", login=None), logger=x)\n'
    ),
    "a splat": 'from confluent_kafka import Producer\nProducer(**client_config("b", login=None))\n',
    "a merged dict": (
        "from confluent_kafka import Producer\n"
        'Producer({**client_config("b", login=None), "logger": None})\n'
    ),
    "an alias": 'from confluent_kafka import Producer as P\nP({"bootstrap.servers": "b"})\n',
    "the module": 'import confluent_kafka\nconfluent_kafka.Consumer({"group.id": "g"})\n',
    "the module aliased": 'import confluent_kafka as ck\nck.Producer({"bootstrap.servers": "b"})\n',
    "the admin module": (
        "import confluent_kafka.admin\n"
        'confluent_kafka.admin.AdminClient({"bootstrap.servers": "b"})\n'
    ),
    "the admin class": (
        "def f(s):\n"
        "    from confluent_kafka.admin import AdminClient\n"
        '    return AdminClient({"bootstrap.servers": s})\n'
    ),
    "admin imported from the package": (
        'from confluent_kafka import admin\nadmin.AdminClient({"bootstrap.servers": "b"})\n'
    ),
    "another function's result": (
        "from confluent_kafka import Producer\n"
        'def cfg():\n    return client_config("b", login=None)\n'
        "Producer(cfg())\n"
    ),
    "a loop variable": (
        "from confluent_kafka import Producer\n"
        "def f(configs):\n"
        '    c = client_config("b", login=None)\n'
        "    for c in configs:\n"
        "        Producer(c)\n"
    ),
}


@pytest.mark.parametrize("source", BAD.values(), ids=BAD.keys())
def test_the_checker_catches_a_client_not_configured_by_client_config(source: str) -> None:
    assert len(problems(source)) == 1, source


GOOD = {
    "a call": 'from confluent_kafka import Producer\nProducer(client_config("b", login=None))\n',
    "a call with settings": (
        "def f(s):\n"
        "    from confluent_kafka.admin import AdminClient\n"
        '    return AdminClient(client_config(s, {"log_level": 3}, login=login))\n'
    ),
    "a name with callbacks set on it": (
        "from confluent_kafka import Producer\n"
        "def f(cb):\n"
        '    config = producer_config("b", login=None, extra_config={"linger.ms": 2})\n'
        '    config["error_cb"] = cb\n'
        "    return Producer(config)\n"
    ),
    "a module function": (
        "import confluent_kafka as ck\nck.Consumer(clients.client_config('b', login=None))\n"
    ),
    "another class of that name": "class Consumer:\n    pass\nConsumer({})\n",
    "kafka_config": (
        "from confluent_kafka import Consumer\n"
        'def f(s):\n    return Consumer(kafka_config(s, PROCESSOR, {"group.id": "g"}))\n'
    ),
}


@pytest.mark.parametrize("source", GOOD.values(), ids=GOOD.keys())
def test_the_checker_allows_client_config(source: str) -> None:
    assert problems(source) == []


def test_the_checker_sees_every_kind_of_client() -> None:
    source = (
        "import confluent_kafka\n"
        "from confluent_kafka import Consumer, Producer\n"
        "from confluent_kafka.admin import AdminClient\n"
        "Producer({})\nConsumer({})\nAdminClient({})\nconfluent_kafka.admin.AdminClient({})\n"
    )
    assert [s.client for s in client_sites(source)] == [
        "Producer",
        "Consumer",
        "AdminClient",
        "AdminClient",
    ]


# -- the real tree --------------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, str]]:
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")


def test_every_kafka_client_is_configured_by_client_config() -> None:
    found = [
        f"{name}:{p}"
        for name, source in _sources()
        for p in problems(source, ATTACK[1] if name == ATTACK[0] else None)
    ]
    assert found == []


def test_only_the_attack_is_exempt() -> None:
    source = (REPO / ATTACK[0]).read_text(encoding="utf-8")
    assert len(problems(source)) == 1
    assert problems(source, ATTACK[1]) == []


def test_the_login_checker_catches_login_none_and_only_it() -> None:
    assert logins_refused('client_config("b", login=None)\n') == ["1: login=None"]
    assert logins_refused('kafka.producer_config("b",\n  login=None)\n') == ["1: login=None"]
    assert logins_refused('client_config("b", login=kafka_login(s, ADMIN))\n') == []
    assert logins_refused('client_config("b", login=login)\n') == []
    assert logins_refused('f(login="None", other=None)\n') == []


def test_no_product_client_goes_without_a_login() -> None:
    found = [
        f"{name}:{p}"
        for name, source in _sources()
        if name.split("/")[0] in PRODUCT_ROOTS
        for p in logins_refused(source)
    ]
    assert found == []
    # the rule has something to hold: the tests do pass login=None
    assert any(logins_refused(source) for name, source in _sources() if name.startswith("tests/"))


def test_the_tree_has_the_clients_the_rule_is_about() -> None:
    # a checker that finds nothing proves nothing: the packages build ~25 clients
    sites = [s for _name, source in _sources() for s in client_sites(source)]
    assert len(sites) >= 40
    assert {s.client for s in sites} == CLIENTS


# -- the behaviour ----------------------------------------------------------------------


def _client(kind: str, logger: logging.Logger) -> Producer | Consumer | AdminClient:
    settings = _settings(kind)
    if kind == "producer":
        return Producer(client_config(CLOSED, settings, login=None, logger=logger))
    if kind == "consumer":
        consumer = Consumer(client_config(CLOSED, settings, login=None, logger=logger))
        consumer.subscribe(["careledger-no-such-topic"])
        return consumer
    return AdminClient(client_config(CLOSED, settings, login=None, logger=logger))


def _poll(client: Producer | Consumer | AdminClient, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.poll(0.1)


def _close(client: Producer | Consumer | AdminClient) -> None:
    if isinstance(client, Consumer):
        client.close()
    elif isinstance(client, Producer):
        client.flush(0)


KINDS = ("producer", "consumer", "admin")


def _settings(kind: str) -> dict[str, Any]:
    # the consumer needs a group; a short reconnect backoff makes the refusals frequent
    group = {"group.id": f"careledger-test-{uuid.uuid4().hex[:8]}"} if kind == "consumer" else {}
    return {**group, "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100}


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_of_client_config_writes_nothing_on_stderr(
    kind: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    name = f"careledger.test.rdkafka.{uuid.uuid4().hex[:8]}"  # its own rate limit
    caplog.set_level(logging.DEBUG, logger=name)
    client = _client(kind, rdkafka_logger(name))
    try:
        _poll(client, 1.0)
    finally:
        _close(client)
        del client
    assert capfd.readouterr().err == ""
    lines = [r for r in caplog.records if r.name == name]
    assert any("Connection refused" in r.getMessage() for r in lines), lines
    assert all(r.levelno == logging.ERROR for r in lines if "refused" in r.getMessage())


def test_the_default_logger_takes_the_lines_not_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=RDKAFKA_LOGGER)
    config = client_config(CLOSED, _settings("producer"), login=None)
    assert config["logger"] is logging.getLogger(RDKAFKA_LOGGER)
    producer = Producer(config)
    _poll(producer, 1.0)
    producer.flush(0)
    assert capfd.readouterr().err == ""
    # the rate limit may hold back a repeat of an earlier test's line, never the first
    # of a kind: every line that got through came from librdkafka via the logger
    assert all(r.name == RDKAFKA_LOGGER for r in caplog.records if "rdkafka#" in r.getMessage())


def test_the_capture_sees_librdkafka_on_stderr_without_client_config(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # the attack: the same producer from a bare dict prints on fd 2 (else the tests
    # above could pass with a capture that sees nothing)
    bare = {"bootstrap.servers": CLOSED, **_settings("producer")}
    producer = Producer(bare)  # kafka-clients: the attack
    _poll(producer, 1.0)
    producer.flush(0)
    del producer
    err = capfd.readouterr().err
    assert "|FAIL|rdkafka#producer-" in err
    assert "Connection refused" in err


def test_producer_config_goes_through_client_config() -> None:
    config = producer_config(CLOSED, login=None, extra_config={"linger.ms": 2})
    assert config["bootstrap.servers"] == CLOSED
    assert config["linger.ms"] == 2
    assert config["acks"] == "all"
    assert config["logger"] is logging.getLogger("careledger.producer.rdkafka")
    assert any(isinstance(f, RateLimit) for f in config["logger"].filters)


def test_client_config_keeps_the_callers_settings_and_owns_its_keys() -> None:
    config = client_config("b:9092", {"group.id": "g", "log_level": 3}, login=None)
    assert config["bootstrap.servers"] == "b:9092"
    assert config["group.id"] == "g"
    assert config["log_level"] == 3
    assert client_config("b:9092", login=None)["log_level"] == 6
    with pytest.raises(ValueError, match=r"bootstrap\.servers"):
        client_config("b:9092", {"bootstrap.servers": "other:9092"}, login=None)
    with pytest.raises(ValueError, match="logger"):
        client_config("b:9092", {"logger": logging.getLogger("x")}, login=None)


def test_the_rate_limit_lets_one_line_per_kind_through() -> None:
    limit = RateLimit()

    def record(facility: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 0, "%s [%s] %s", (facility, "c", "m"), None)

    assert limit.filter(record("FAIL"))
    assert not limit.filter(record("FAIL"))
    assert limit.filter(record("ERROR"))
    assert limit.filter(record("FAIL", logging.WARNING))


# -- the login ----------------------------------------------------------------------------

SASL = KafkaLogin("processor", "pw-of-the-processor", Path("/ca.pem"), "SASL_SSL")


def test_client_config_merges_the_logins_properties() -> None:
    config = client_config("b:9093", {"group.id": "g"}, login=SASL)
    assert {k: config[k] for k in SASL.confluent()} == SASL.confluent()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == (
        "processor",
        "pw-of-the-processor",
    )
    assert config["ssl.ca.location"] == "/ca.pem"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert (config["group.id"], config["bootstrap.servers"]) == ("g", "b:9093")
    plain = KafkaLogin("processor", "", None, "PLAINTEXT")
    assert client_config("b", login=plain) == client_config("b", login=None)
    assert not [k for k in client_config("b", login=None) if k.startswith(("sasl.", "ssl.", "sec"))]


@pytest.mark.parametrize(
    "key",
    [
        "security.protocol",
        "sasl.username",
        "sasl.password",
        "sasl.mechanisms",
        "sasl.jaas.config",
        "ssl.ca.location",
        "ssl.endpoint.identification.algorithm",
        "ssl.certificate.location",
    ],
)
@pytest.mark.parametrize("login", [SASL, None], ids=["sasl", "none"])
def test_client_config_refuses_a_callers_own_security_settings(
    key: str, login: KafkaLogin | None
) -> None:
    # a caller cannot weaken (or replace) its login, with or without one
    with pytest.raises(ValueError, match=re.escape(key)):
        client_config("b:9093", {key: "PLAINTEXT"}, login=login)


def test_producer_config_takes_its_login() -> None:
    config = producer_config("b:9093", login=SASL, extra_config={"linger.ms": 2})
    assert config["sasl.username"] == "processor"
    assert config["security.protocol"] == "SASL_SSL"
    with pytest.raises(ValueError, match="sasl"):
        producer_config("b:9093", login=SASL, extra_config={"sasl.username": "admin"})


def _sasl_settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(run_dir=tmp_path, kafka_security_protocol="SASL_SSL", **kw)


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_kafka_config_logs_in_as_the_principal(tmp_path: Path, principal: str) -> None:
    s = _sasl_settings(tmp_path)
    config = kafka_config(s, principal, {"group.id": "g"})
    assert config["bootstrap.servers"] == s.kafka_bootstrap
    assert config["group.id"] == "g"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.username"] == principal
    assert config["sasl.password"] == kafka_login(s, principal).password  # kept, per principal
    assert "ssl.ca.location" not in config  # no local CA yet: the system's trust store


def test_kafka_config_trusts_the_local_ca_or_the_configured_one(tmp_path: Path) -> None:
    s = _sasl_settings(tmp_path)
    ca = tmp_path / "tls" / "ca.pem"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert kafka_config(s, ADMIN)["ssl.ca.location"] == str(ca)
    own = tmp_path / "own-ca.pem"
    chosen = kafka_config(_sasl_settings(tmp_path, kafka_ca_file=own), ADMIN)
    assert chosen["ssl.ca.location"] == str(own)


def test_kafka_config_takes_the_configured_password(tmp_path: Path) -> None:
    s = _sasl_settings(tmp_path, kafka_password="given-password")
    assert kafka_config(s, PROCESSOR)["sasl.password"] == "given-password"
    assert not (tmp_path / "secrets").exists()  # nothing made when a password is given


def test_kafka_config_on_plaintext_has_no_security_settings(tmp_path: Path) -> None:
    plain = Settings(run_dir=tmp_path, kafka_security_protocol="PLAINTEXT")
    config = kafka_config(plain, PROCESSOR, {"group.id": "g"})
    assert config == client_config(plain.kafka_bootstrap, {"group.id": "g"}, login=None)
    with pytest.raises(ValueError, match="no Kafka principal"):
        kafka_config(plain, "nobody")


def test_the_sdk_logs_in_as_the_producer_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    class FakeProducer:
        def __init__(self, config: dict[str, Any]) -> None:
            seen.append(config)

        def __len__(self) -> int:
            return 0

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
            return None

        def flush(self, timeout: float = 0) -> int:
            return 0

    import careledger.kafka.producer as sdk

    monkeypatch.setattr(sdk, "Producer", FakeProducer)
    s = _sasl_settings(tmp_path, source_key=None)
    AccessEventProducer(s, sign=False).close()
    AccessEventProducer(s, sign=False, principal=ADMIN).close()
    assert [c["sasl.username"] for c in seen] == ["producer", "admin"]
    assert all(c["security.protocol"] == "SASL_SSL" for c in seen)


def test_a_new_producer_asks_for_its_topic_first_and_a_silent_broker_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``AccessEventProducer._connect``: one metadata request for its own topic, bounded
    by ``CONNECT_WAIT_S``, before the first send (a short-lived producer's first delivery
    waited ~0.5 s for its idempotent producer id otherwise). A broker that does not
    answer is not an error here: the record is still queued and ``flush`` reports it."""
    asked: list[tuple[str | None, float]] = []
    produced: list[str] = []

    class SilentBroker:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
            asked.append((topic, timeout))
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

        def produce(self, topic: str, value: bytes, key: Any = None, **_: Any) -> None:
            produced.append(topic)

        def poll(self, timeout: float = 0) -> int:
            return 0

        def __len__(self) -> int:
            return len(produced)

        def flush(self, timeout: float = 0) -> int:
            return len(produced)  # never acknowledged

    import careledger.kafka.producer as sdk

    monkeypatch.setattr(sdk, "Producer", SilentBroker)
    s = Settings()
    producer = AccessEventProducer(s, topic=s.topic_dead_letter, sign=False)
    assert asked == [(s.topic_dead_letter, sdk.CONNECT_WAIT_S)]
    producer.send_raw(b"record", b"key")
    assert produced == [s.topic_dead_letter]
    with pytest.raises(DeliveryError, match="1 message"):
        producer.flush(0.1)
