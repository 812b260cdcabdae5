"""Kafka logins, ACLs and broker security settings (careledger.kafka.security), attacked:
a password never shows in a repr and comes from an owner-only file; the TLS a client gets
verifies the broker by name; the ACL matrix keeps each principal to what its code
reads and writes (and every group id the code uses is in it); a hostile password cannot
break out of the broker's JAAS line, its properties file or the storage tool's
``--add-scram`` argument."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from careledger import tls
from careledger.config import Settings
from careledger.kafka import security as sec
from careledger.kafka.security import AclSpec, KafkaLogin, acl_matrix, kafka_login, permits
from careledger.keys import KeyFileError

REPO = Path(__file__).resolve().parents[2]
HOSTILE = 'p"w\\d ;x=1 username="admin"'


def _SaslSettings(**kw: Any) -> Settings:
    """Settings of a stack that speaks SASL_SSL."""
    return Settings(kafka_security_protocol="SASL_SSL", **kw)


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


# -- logins -------------------------------------------------------------------------------


def test_a_login_never_shows_its_password() -> None:
    login = KafkaLogin("processor", "s3cret-value", None, "SASL_SSL")
    for text in (repr(login), str(login), f"{login}", repr([login])):
        assert "s3cret-value" not in text
        assert "processor" in text
    with pytest.raises(ValueError):
        KafkaLogin("processor", "", None, "SASL_SSL")  # no password: refused, not blank


def test_plaintext_adds_nothing_and_makes_no_secret(tmp_path: Path) -> None:
    login = kafka_login(
        Settings(run_dir=tmp_path, kafka_security_protocol="PLAINTEXT"), "processor"
    )
    assert (login.protocol, login.confluent(), login.aiokafka()) == ("PLAINTEXT", {}, {})
    assert not (tmp_path / "secrets").exists()


def test_the_local_password_is_made_owner_only_kept_and_per_principal(tmp_path: Path) -> None:
    s = _SaslSettings(run_dir=tmp_path)
    first = kafka_login(s, "processor")
    path = sec.local_scram_password_file(s, "processor")
    assert path == tmp_path / "secrets" / "kafka-processor.password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first.password) >= 40
    assert kafka_login(s, "processor").password == first.password
    assert kafka_login(s, "verifier").password != first.password
    with pytest.raises(ValueError, match="no Kafka principal"):
        kafka_login(s, "../processor")


def test_a_set_password_wins_over_its_file_and_the_local_one(tmp_path: Path) -> None:
    s = _SaslSettings(run_dir=tmp_path)
    _secret(sec.local_scram_password_file(s, "auditor"), "local\n")
    file = _secret(tmp_path / "pw", "from-file\n")
    assert kafka_login(s, "auditor").password == "local"
    assert kafka_login(s.replace(kafka_password_file=file), "auditor").password == "from-file"
    both = s.replace(kafka_password_file=file, kafka_password="set")
    assert kafka_login(both, "auditor").password == "set"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_password_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    s = _SaslSettings(run_dir=tmp_path)
    file = _secret(tmp_path / "pw", "p", mode)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        kafka_login(s.replace(kafka_password_file=file), "auditor")
    _secret(sec.local_scram_password_file(s, "auditor"), "p", mode)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        kafka_login(s, "auditor")


def test_the_client_settings_trust_the_local_ca_unless_another_is_named(tmp_path: Path) -> None:
    s = _SaslSettings(run_dir=tmp_path, kafka_password="pw")
    assert "ssl.ca.location" not in kafka_login(s, "replica").confluent()  # system store
    ca = tls.local_ca_file(tmp_path / "tls")
    assert kafka_login(s, "replica").confluent() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "replica",
        "sasl.password": "pw",
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
    }
    other = tmp_path / "hospital-ca.pem"
    assert kafka_login(s.replace(kafka_ca_file=other), "replica").ca_file == other


def _handshake(context: ssl.SSLContext, server: tls.ServerCert, host: str) -> None:
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(server.cert, server.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with srv.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with (
            socket.create_connection(listener.getsockname()[:2]) as raw,
            context.wrap_socket(raw, server_hostname=host) as c,
        ):
            c.sendall(b"x")
    finally:
        t.join(5)


def test_the_aiokafka_context_verifies_the_brokers_certificate_and_name(tmp_path: Path) -> None:
    broker = tls.member_cert(tmp_path / "tls", "kafka-1")
    s = _SaslSettings(run_dir=tmp_path, kafka_password="pw")
    options = kafka_login(s, "processor").aiokafka()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "processor",
        "sasl_plain_password": "pw",
    }
    context = options["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    _handshake(context, broker, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, broker, "kafka.elsewhere.example")
    stranger = tls.member_cert(tmp_path / "other", "kafka-1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, stranger, "localhost")


# -- the ACL matrix -----------------------------------------------------------------------


def _clients() -> tuple[str, ...]:
    return tuple(p for p in sec.PRINCIPALS if p not in sec.SUPER_USERS)


def _writers(specs: tuple[AclSpec, ...], topic: str) -> set[str]:
    return {p for p in _clients() if permits(specs, p, "WRITE", "topic", topic)}


def test_only_the_processor_writes_what_the_ledger_publishes() -> None:
    s = Settings()
    m = acl_matrix(s)
    assert _writers(m, s.topic_quarantine) == {"processor"}
    assert _writers(m, s.topic_blocks) == {"processor"}
    assert _writers(m, s.topic_checkpoints) == {"processor", "cosigner"}
    # the gateway dead-letters what it cannot parse (producers/gateway/publisher.py)
    assert _writers(m, s.topic_dead_letter) == {"processor", "producer"}
    assert _writers(m, s.topic_alerts) == {"processor", "auditor", "verifier"}
    assert _writers(m, s.topic_alert_status) == {"auditor"}
    assert _writers(m, s.topic_sources) == {"producer", "registrar", "auditor"}


def test_a_producer_cannot_read_the_ledger_or_forge_its_outputs() -> None:
    s = Settings()
    m = acl_matrix(s)
    for topic in (s.topic_events, s.topic_raw, s.topic_checkpoints, s.topic_blocks):
        assert not permits(m, "producer", "READ", "topic", topic)
    for topic in (s.topic_alerts, s.topic_checkpoints, s.topic_blocks, s.topic_quarantine):
        assert not permits(m, "producer", "WRITE", "topic", topic)
    assert not permits(m, "producer", "READ", "group", s.processor_app_id)
    assert not permits(m, "producer", "CREATE", "topic", s.topic_events)
    assert not permits(m, "producer", "ALTER", "topic", s.topic_events)


def test_the_verifier_and_the_replica_only_read_but_for_the_verifiers_alerts() -> None:
    s = Settings()
    m = acl_matrix(s)
    for spec in m:
        if spec.principal == "replica":
            assert spec.operation in ("READ", "DESCRIBE"), spec
        if spec.principal == "verifier" and spec.operation not in ("READ", "DESCRIBE"):
            assert (spec.name, spec.operation) in {
                (s.topic_alerts, "WRITE"),
                (sec.CLUSTER_NAME, "IDEMPOTENT_WRITE"),
            }, spec
    assert permits(m, "verifier", "READ", "topic", s.topic_checkpoints)
    assert permits(m, "replica", "READ", "topic", s.topic_blocks)
    assert permits(m, "replica", "READ", "group", "careledger-replica-careledger_replica")


def test_every_read_and_write_comes_with_describe_and_every_writer_is_idempotent() -> None:
    m = acl_matrix(Settings())
    for spec in m:
        if spec.operation in ("READ", "WRITE"):
            same = dataclasses.replace(spec, operation="DESCRIBE")
            assert same in m, spec
        if spec.operation == "WRITE":
            idem = AclSpec(
                spec.principal, "cluster", "kafka-cluster", "literal", "IDEMPOTENT_WRITE"
            )
            assert idem in m, spec
    assert len(set(m)) == len(m) and list(m) == sorted(m)


def test_no_rule_names_every_resource_or_reaches_a_topic_by_prefix() -> None:
    s = Settings()
    m = acl_matrix(s)
    assert all(spec.name and "*" not in spec.name for spec in m)
    topics = {getattr(s, f.name) for f in dataclasses.fields(s) if f.name.startswith("topic_")}
    for spec in m:
        if spec.pattern == "prefixed" and spec.resource_type == "topic":
            assert not [t for t in topics if t.startswith(spec.name)], spec
    for bad in ("*", ""):
        with pytest.raises(ValueError):
            AclSpec("producer", "topic", bad, "literal", "WRITE")
    with pytest.raises(ValueError):
        AclSpec("producer", "topic", "t", "literal", "IDEMPOTENT_WRITE")
    with pytest.raises(ValueError):
        AclSpec("producer", "cluster", "kafka-cluster", "prefixed", "IDEMPOTENT_WRITE")
    with pytest.raises(ValueError):
        AclSpec("mallory", "topic", "t", "literal", "READ")  # type: ignore[arg-type]


def test_the_processors_own_prefix_cannot_cover_a_real_topic_or_group() -> None:
    s = Settings()
    with pytest.raises(ValueError, match="own prefix"):
        acl_matrix(s.replace(topic_checkpoints=f"{s.processor_app_id}-checkpoints"))
    with pytest.raises(ValueError, match="own prefix"):
        acl_matrix(s.replace(processor_app_id="careledger"))  # careledger-replica-... too


def test_the_matrix_follows_the_settings_topic_names() -> None:
    s = Settings().with_topic_suffix("-t1", processor_app_id="careledger-bench-x")
    m = acl_matrix(s)
    named = {spec.name for spec in m if spec.resource_type == "topic"}
    assert named == {
        getattr(s, f.name) for f in dataclasses.fields(s) if f.name.startswith("topic_")
    } | {"careledger-bench-x-"}
    assert permits(m, "processor", "READ", "group", "careledger-bench-x")


def _group_ids(path: Path) -> list[tuple[int, str]]:
    """(line, prefix) of each ``"group.id": ...`` in ``path``: an f-string's leading
    text, else the expression's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "group.id":
                if isinstance(value, ast.JoinedStr) and isinstance(value.values[0], ast.Constant):
                    found.append((value.lineno, str(value.values[0].value) + "{"))
                else:
                    found.append((value.lineno, ast.unparse(value)))
    return found


def test_every_group_id_in_the_code_is_in_the_matrix() -> None:
    """A consumer added (or renamed) in the code without its ACL fails here, and so does
    an ACL no consumer needs. ``commands`` (the benchmarks) runs as admin."""
    s = Settings()
    m = acl_matrix(s)
    # run by admin (a super user): dead-letters list/replay, restore
    admin_only = {"careledger-dlq-reader-{", "careledger-restore-checkpoints-{"}
    # group ids that are not f-strings: what they are bound to
    bound = {"settings.processor_app_id": s.processor_app_id, "self.group": "careledger-replica-{"}
    seen: set[str] = set()
    for package in ("careledger", "producers", "processors", "verifiers", "replica", "witness"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, group in _group_ids(path):
                group = bound.get(group, group)
                seen.add(group)
                if group in admin_only:
                    continue
                name = group.removesuffix("{") + ("x" if group.endswith("{") else "")
                assert any(permits(m, p, "READ", "group", name) for p in _clients()), (
                    f"{path.relative_to(REPO)}:{line}: group {group} has no ACL"
                )
    follow = (REPO / "replica" / "follow.py").read_text(encoding="utf-8")
    assert 'self.group = f"careledger-replica-{' in follow
    granted = {spec.name for spec in m if spec.resource_type == "group"}
    granted -= {f"{s.processor_app_id}-"}  # faust's own groups
    assert {g.removesuffix("{") for g in seen} >= granted


def test_bindings_convert_types_patterns_and_principals() -> None:
    s = Settings()
    m = acl_matrix(s)
    bindings = sec.acl_bindings(m)
    assert len(bindings) == len(m)
    by = {(b.principal, b.restype, b.name, b.resource_pattern_type, b.operation) for b in bindings}
    assert ("User:processor", ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL,
            AclOperation.IDEMPOTENT_WRITE) in by  # fmt: skip
    assert ("User:replica", ResourceType.GROUP, "careledger-replica-",
            ResourcePatternType.PREFIXED, AclOperation.READ) in by  # fmt: skip
    assert ("User:cosigner", ResourceType.TOPIC, s.topic_checkpoints,
            ResourcePatternType.LITERAL, AclOperation.WRITE) in by  # fmt: skip
    assert ("User:processor", ResourceType.TOPIC, s.topic_events,
            ResourcePatternType.LITERAL, AclOperation.DESCRIBE_CONFIGS) in by  # fmt: skip
    assert {b.host for b in bindings} == {"*"}
    assert {b.permission_type for b in bindings} == {AclPermissionType.ALLOW}
    assert all(b.restype != ResourceType.ANY for b in bindings)


# -- the broker ---------------------------------------------------------------------------


def _jaas_options(text: str) -> tuple[str, dict[str, str]]:
    """The login module and options of one JAAS entry, quoted values read as Java's
    StreamTokenizer (Kafka's JaasConfig) reads them: ``\\x`` is ``x``."""
    token = re.compile(r'\s*(?:(;)|([A-Za-z0-9_.$-]+)|(=)|"((?:[^"\\]|\\.)*)")', re.S)
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = token.match(text, pos)
        assert match, f"cannot tokenize at {text[pos:]!r}"
        pos = match.end()
        semi, word, eq, quoted = match.groups()
        if quoted is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", quoted, flags=re.S)))
        else:
            tokens.append(("op", semi or eq) if semi or eq else ("word", word))
    assert tokens[-1] == ("op", ";") and tokens.count(("op", ";")) == 1, tokens
    module, flag, rest = tokens[0][1], tokens[1][1], tokens[2:-1]
    assert flag == "required"
    options = {}
    for i in range(0, len(rest), 3):
        (_, key), eq, (_, value) = rest[i : i + 3]
        assert eq == ("op", "=")
        assert key not in options, f"{key} given twice"
        options[key] = value
    return module, options


def test_the_broker_properties_follow_the_recipe(tmp_path: Path) -> None:
    member = tls.member_cert(tmp_path, "kafka-1")
    keystore = tls.write_pem_keystore(member)
    props = sec.broker_properties(
        host="127.0.0.1",
        port=19092,
        controller_port=19093,
        keystore=keystore,
        truststore=member.ca,
        broker_cert=member.cert,
        broker_password="broker-pw",
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert (props["ssl.keystore.type"], props["ssl.keystore.location"]) == ("PEM", str(keystore))
    assert (props["ssl.truststore.type"], props["ssl.truststore.location"]) == (
        "PEM",
        str(member.ca),
    )
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith(".StandardAuthorizer")
    assert props["super.users"] == (
        "User:broker;User:admin;User:CN=careledger kafka-1,O=careledger"
    )
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    module, options = _jaas_options(jaas)
    assert module == "org.apache.kafka.common.security.scram.ScramLoginModule"
    assert options == {"username": "broker", "password": "broker-pw"}
    ipv6 = sec.broker_properties(
        host="::1",
        port=1,
        controller_port=2,
        keystore=keystore,
        truststore=member.ca,
        broker_cert=member.cert,
        broker_password="x",
    )
    assert ipv6["listeners"] == "SASL_SSL://[::1]:1,CONTROLLER://[::1]:2"


def test_a_hostile_broker_password_stays_inside_its_quotes(tmp_path: Path) -> None:
    member = tls.member_cert(tmp_path, "kafka-1")
    common = {
        "host": "127.0.0.1",
        "port": 1,
        "controller_port": 2,
        "keystore": tmp_path / "k.pem",
        "truststore": member.ca,
        "broker_cert": member.cert,
    }
    props = sec.broker_properties(**common, broker_password=HOSTILE)  # type: ignore[arg-type]
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert _jaas_options(jaas)[1] == {"username": "broker", "password": HOSTILE}
    for bad in ("a\nb", "a\rb", "", "tab\there"):
        with pytest.raises(ValueError, match="control characters"):
            sec.broker_properties(**common, broker_password=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain user name"):
        sec.broker_properties(**common, broker_password="x", super_users=("a;User:b",))  # type: ignore[arg-type]


def _load_properties(text: str) -> dict[str, str]:
    """What java.util.Properties.load reads from ``text`` (one line per entry): leading
    blanks skipped, the key ends at an unescaped blank, ``=`` or ``:``, then blanks, one
    ``=`` or ``:`` and blanks before the value; ``\\x`` escapes and ``\\uXXXX``."""

    table = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def char(m: re.Match[str]) -> str:
        c = m.group(1)
        return chr(int(c[1:], 16)) if len(c) == 5 else table.get(c, c)

    def unescape(s: str) -> str:
        s = re.sub(r"\\(u[0-9A-Fa-f]{4}|.)", char, s)
        return s.encode("utf-16", "surrogatepass").decode("utf-16")  # join surrogate pairs

    entry = re.compile(r"[ \t\f]*((?:[^ \t\f=:\\]|\\.)*)[ \t\f]*[=:]?[ \t\f]*(.*)")
    out = {}
    for line in text.splitlines():
        match = entry.fullmatch(line)
        assert match is not None, line
        out[unescape(match.group(1))] = unescape(match.group(2))
    return out


def test_the_properties_file_reads_back_the_same_values() -> None:
    props = {
        "a.jaas": 'X required password="p\\"w\\\\d";',
        "with\nnewline": "line\nallow.everyone.if.no.acl.found=true",
        " spaced": " leading and # ! : = ",
        "k=e:y #!": "\\u0041 is not A",
        "unicode": "é\u2603\U0001f600",
    }
    text = sec.properties_text(props)
    assert text.count("\n") == len(props)  # nothing starts a line of its own
    assert text.isascii()
    assert _load_properties(text) == props


def test_the_scram_arguments_refuse_what_the_storage_tool_would_split() -> None:
    logins = [
        KafkaLogin("broker", "Abc_-123", None, "SASL_SSL"),
        KafkaLogin("processor", "x" * 43, None, "SASL_SSL"),
    ]
    assert sec.scram_format_args(logins) == [
        "--add-scram",
        "SCRAM-SHA-512=[name=broker,password=Abc_-123]",
        "--add-scram",
        f"SCRAM-SHA-512=[name=processor,password={'x' * 43}]",
    ]
    for bad in ("a]b", "a,b", "a=b", 'a"b', "a'b", "a b", "a\\b", "é"):
        with pytest.raises(ValueError, match="cannot carry"):
            sec.scram_format_args([KafkaLogin("broker", bad, None, "SASL_SSL")])
    with pytest.raises(ValueError, match="unique"):
        sec.scram_format_args(logins + logins[:1])
    with pytest.raises(ValueError, match="not a SCRAM login"):
        sec.scram_format_args([KafkaLogin("broker", "", None, "PLAINTEXT")])
