"""Kafka TLS, SASL/SCRAM logins and ACLs, as data (issue 12, ADR 0033).

**Logins.** Every component logs in to Kafka as one *principal* (a SCRAM-SHA-512 user of
that name) over ``SASL_SSL``, the broker verified by name against ``kafka_ca_file``, else
the local stack's CA (``<run_dir>/tls/ca.pem``), else the system's trust store. A
password comes from ``kafka_password``, else ``kafka_password_file`` (owner-only), else
the local stack's ``<run_dir>/secrets/kafka-<principal>.password`` (made, 32 random
bytes, mode 0600, on first use), as ``careledger.credentials`` does for ClickHouse.
``kafka_security_protocol`` chooses between this and PLAINTEXT (ADR 0033).

**ACLs.** The broker runs the StandardAuthorizer with ``allow.everyone.if.no.acl.found=
false``: a principal may do only what :func:`acl_matrix` grants, from what the code
reads and writes (``ref`` = consents, care-relationships, workforce, patients; a group
ending in ``*`` is a prefix, ``careledger-`` left out; each READ or WRITE comes with
DESCRIBE, and every principal that writes has IDEMPOTENT_WRITE on the cluster):

=========  ======================  ==================================  =====================
principal  reads                   writes                              groups (READ); other
=========  ======================  ==================================  =====================
producer   sources                 events, raw, sources, ref,          sources-reader-*
                                   dead-letter
registrar  sources                 sources                             sources-reader-*
processor  events, raw, sources,   dead-letter, quarantine, alerts,    <app id>,
           ref                     checkpoints, blocks                 sources-reader-*;
                                                                       ALL on topics and
                                                                       groups <app id>-*;
                                                                       DESCRIBE_CONFIGS
                                                                       on events
auditor    alerts                  alerts, alert-status (and CREATE    alerts-tail-*
                                   it), events, sources
verifier   checkpoints             alerts                              verifier-checkpoints-*,
                                                                       checkpoint-notes-*
cosigner   checkpoints             checkpoints                         cosigner-*
replica    blocks                  (nothing)                           replica-*
=========  ======================  ==================================  =====================

*producer*: the SDK (events, and heartbeats to sources), the gateway (raw records, dead
letters of what it cannot parse, FHIR Consents), the simulator and consent loader
(reference topics), the consent decision point (raw records, events; it reads the
source registry). *registrar*: ``careledger source`` and ``keygen --rotate`` (key
events). *auditor*: ``careledger audit`` (alerts) and ``careledger alerts`` (``ack``
ledgers a status change as an access event and publishes it to alert-status, creating
that topic when missing; ``tail`` reads alerts); the auditor reads the ledger from
ClickHouse, not Kafka. *verifier*: ``verify`` (``--follow`` publishes alerts) and the
reports. *replica*: ``careledger replica``. ``broker`` (and the broker certificate's DN
on the mutual-TLS controller listener) and ``admin`` (``careledger up``, topics,
``dead-letters``, ``restore``, the benchmarks) are super users, with no rows. A consumer
that only ``assign()`` s still needs its group: librdkafka looks up the coordinator of
any ``group.id``, so each per-run random group id gets a prefixed READ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from cryptography import x509

from careledger.credentials import local_password, read_secret_file, tls_dir

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding  # type: ignore[attr-defined]

__all__ = [
    "ADMIN",
    "AUDITOR",
    "BROKER",
    "CLUSTER_NAME",
    "COSIGNER",
    "PRINCIPALS",
    "PROCESSOR",
    "PRODUCER",
    "REGISTRAR",
    "REPLICA",
    "SUPER_USERS",
    "VERIFIER",
    "AclSpec",
    "ClientListener",
    "KafkaLogin",
    "acl_bindings",
    "acl_matrix",
    "broker_properties",
    "certificate_principal",
    "kafka_login",
    "local_scram_password_file",
    "permits",
    "properties_text",
    "scram_format_args",
    "scram_jaas",
]

Principal = Literal[
    "producer",
    "registrar",
    "processor",
    "auditor",
    "verifier",
    "cosigner",
    "replica",
    "admin",
    "broker",
]
PRODUCER: Final = "producer"
REGISTRAR: Final = "registrar"
PROCESSOR: Final = "processor"
AUDITOR: Final = "auditor"
VERIFIER: Final = "verifier"
COSIGNER: Final = "cosigner"
REPLICA: Final = "replica"
ADMIN: Final = "admin"
BROKER: Final = "broker"
PRINCIPALS: Final[tuple[Principal, ...]] = get_args(Principal)
#: principals the authorizer lets do anything (no ACL rows)
SUPER_USERS: Final[tuple[Principal, ...]] = (BROKER, ADMIN)

Protocol = Literal["SASL_SSL", "PLAINTEXT"]
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]
ResourceType = Literal["topic", "group", "cluster", "transactional_id"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal[
    "ALL",
    "READ",
    "WRITE",
    "CREATE",
    "DELETE",
    "ALTER",
    "DESCRIBE",
    "DESCRIBE_CONFIGS",
    "ALTER_CONFIGS",
    "IDEMPOTENT_WRITE",
]
#: the one cluster resource's name
CLUSTER_NAME: Final = "kafka-cluster"

# Group ids made per run (``<prefix><random>``), by the consumers that use them:
#: careledger/sources/reading.py (processor, registrar, decision point, keygen --rotate)
SOURCES_READER_GROUP: Final = "careledger-sources-reader-"
#: processors/cosign_cli.py
COSIGNER_GROUP: Final = "careledger-cosigner-"
#: verifiers/integrity/checkpoints.py
VERIFIER_CHECKPOINTS_GROUP: Final = "careledger-verifier-checkpoints-"
#: careledger/cosigned_checkpoints.py (the reports' cosigned checkpoints)
CHECKPOINT_NOTES_GROUP: Final = "careledger-checkpoint-notes-"
#: verifiers/auditor/alerts_cli.py (``alerts tail``)
ALERTS_TAIL_GROUP: Final = "careledger-alerts-tail-"
#: verifiers/auditor/forward_cli.py (``alerts forward --name N``: its position, committed)
ALERT_FORWARDER_GROUP: Final = "careledger-alert-forwarder-"
#: replica/follow.py (``careledger-replica-<database>``, committed)
REPLICA_GROUP: Final = "careledger-replica-"
_GROUP_PREFIXES: Final = (
    SOURCES_READER_GROUP,
    COSIGNER_GROUP,
    VERIFIER_CHECKPOINTS_GROUP,
    CHECKPOINT_NOTES_GROUP,
    ALERTS_TAIL_GROUP,
    ALERT_FORWARDER_GROUP,
    REPLICA_GROUP,
)

#: a principal or user name that fits a JAAS option, ``super.users`` and ``--add-scram``
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: characters ``kafka-storage format --add-scram`` cannot carry in a value unquoted
_SCRAM_UNSAFE = frozenset("[],=\"'\\;")


# -- logins ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaLogin:
    """Who a client logs in to Kafka as, and how (see the module doc)."""

    username: str
    password: str
    ca_file: Path | None
    protocol: Protocol
    mechanism: Mechanism = "SCRAM-SHA-512"

    def __post_init__(self) -> None:
        if self.protocol not in get_args(Protocol):
            raise ValueError(f"unknown Kafka security protocol {self.protocol!r}")
        if self.mechanism not in get_args(Mechanism):
            raise ValueError(f"unknown SASL mechanism {self.mechanism!r}")
        if self.protocol == "SASL_SSL" and not (self.username and self.password):
            raise ValueError("a SASL_SSL login needs a user name and a password")

    def confluent(self) -> dict[str, str]:
        """librdkafka's settings for this login (none for PLAINTEXT); the broker's name
        is verified against its certificate."""
        if self.protocol == "PLAINTEXT":
            return {}
        config = {
            "security.protocol": self.protocol,
            "sasl.mechanisms": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.endpoint.identification.algorithm": "https",
        }
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka's (and faust's broker) arguments for this login (none for
        PLAINTEXT): an SSL context that verifies the broker's certificate and name."""
        if self.protocol == "PLAINTEXT":
            return {}
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=None if self.ca_file is None else str(self.ca_file))
        return {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
            "ssl_context": context,
        }

    def __repr__(self) -> str:  # never the password
        return (
            f"KafkaLogin(username={self.username!r}, "
            f"password={'***' if self.password else ''!r}, ca_file={self.ca_file}, "
            f"protocol={self.protocol!r}, mechanism={self.mechanism!r})"
        )


def _principal(name: str) -> Principal:
    for p in PRINCIPALS:
        if p == name:
            return p
    raise ValueError(f"no Kafka principal {name!r} (one of {', '.join(PRINCIPALS)})")


def local_scram_password_file(settings: Any, principal: str) -> Path:
    """The SCRAM password the local stack generates for ``principal``: in
    ``kafka_secrets_dir`` when set (``careledger.credentials.pin_login``), else in
    ``<run_dir>/secrets``."""
    home = settings.kafka_secrets_dir or Path(settings.run_dir) / "secrets"
    return Path(home) / f"kafka-{_principal(principal)}.password"


def kafka_login(settings: Any, principal: str) -> KafkaLogin:
    """The login of ``principal`` under ``settings`` (see the module doc)."""
    name = _principal(principal)
    protocol = str(settings.kafka_security_protocol)
    if protocol == "PLAINTEXT":
        return KafkaLogin(name, "", None, "PLAINTEXT")
    if protocol != "SASL_SSL":
        raise ValueError(f"kafka_security_protocol must be SASL_SSL or PLAINTEXT: {protocol!r}")
    ca: Path | None = settings.kafka_ca_file
    if ca is None and (tls_dir(settings) / "ca.pem").exists():
        ca = tls_dir(settings) / "ca.pem"
    password = str(settings.kafka_password or "")
    file: Path | None = settings.kafka_password_file
    if not password and file is not None:
        password = read_secret_file(Path(file), "Kafka password file")
    if not password:
        password = local_password(
            local_scram_password_file(settings, name), f"Kafka {name} password file"
        )
    return KafkaLogin(name, password, None if ca is None else Path(ca), "SASL_SSL")


# -- ACLs -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class AclSpec:
    """One ALLOW rule: ``principal`` may do ``operation`` on the ``resource_type``
    named ``name`` (``pattern`` "prefixed": every name starting with it)."""

    principal: Principal
    resource_type: ResourceType
    name: str
    pattern: Pattern
    operation: Operation

    def __post_init__(self) -> None:
        _principal(self.principal)
        for value, kind in (
            (self.resource_type, ResourceType),
            (self.pattern, Pattern),
            (self.operation, Operation),
        ):
            if value not in get_args(kind):
                raise ValueError(f"{value!r} is not one of {get_args(kind)}")
        if not self.name or "*" in self.name:
            raise ValueError(f"an ACL names its resource, not {self.name!r}")
        if self.resource_type == "cluster" and (self.name, self.pattern) != (
            CLUSTER_NAME,
            "literal",
        ):
            raise ValueError(f"the cluster resource is {CLUSTER_NAME!r}, literal")
        if self.operation == "IDEMPOTENT_WRITE" and self.resource_type != "cluster":
            raise ValueError("IDEMPOTENT_WRITE is granted on the cluster")


#: operations that grant an operation besides itself and ALL (Kafka's implications)
_IMPLIED_BY: Mapping[str, frozenset[str]] = {
    "DESCRIBE": frozenset({"READ", "WRITE", "DELETE", "ALTER"}),
    "DESCRIBE_CONFIGS": frozenset({"ALTER_CONFIGS"}),
}


def permits(
    specs: Iterable[AclSpec], principal: str, operation: str, resource_type: str, name: str
) -> bool:
    """Whether the authorizer, given ``specs``, lets ``principal`` do ``operation`` on
    the resource (super users may do anything)."""
    if principal in SUPER_USERS:
        return True
    granting = {operation, "ALL"} | _IMPLIED_BY.get(operation, frozenset())
    return any(
        s.principal == principal
        and s.resource_type == resource_type
        and s.operation in granting
        and (s.name == name if s.pattern == "literal" else name.startswith(s.name))
        for s in specs
    )


def _topic(p: Principal, op: Operation, name: str) -> list[AclSpec]:
    rules = [AclSpec(p, "topic", name, "literal", op)]
    return [*rules, AclSpec(p, "topic", name, "literal", "DESCRIBE")] if op != "DESCRIBE" else rules


def _group(p: Principal, name: str, pattern: Pattern = "literal") -> list[AclSpec]:
    return [AclSpec(p, "group", name, pattern, op) for op in ("READ", "DESCRIBE")]


def _idempotent(p: Principal) -> AclSpec:
    return AclSpec(p, "cluster", CLUSTER_NAME, "literal", "IDEMPOTENT_WRITE")


def acl_matrix(settings: Any) -> tuple[AclSpec, ...]:
    """The ACLs of every principal for ``settings``' topics (the module doc's table),
    sorted, each once. Raises ValueError when a topic falls under the processor's own
    prefix (``<processor_app_id>-``), where the processor may do anything."""
    s = settings
    reference = (
        s.topic_consents,
        s.topic_care_relationships,
        s.topic_workforce,
        s.topic_patients,
    )
    own = f"{s.processor_app_id}-"
    topics = (
        s.topic_events,
        s.topic_raw,
        s.topic_sources,
        *reference,
        s.topic_dead_letter,
        s.topic_quarantine,
        s.topic_alerts,
        s.topic_alert_status,
        s.topic_checkpoints,
        s.topic_blocks,
    )
    clash = sorted(t for t in (*topics, *_GROUP_PREFIXES) if t.startswith(own))
    if clash:
        raise ValueError(f"{clash} start with the processor's own prefix {own!r}")

    rules: list[AclSpec] = []

    def reads(p: Principal, *names: str) -> None:
        for n in names:
            rules.extend(_topic(p, "READ", n))

    def writes(p: Principal, *names: str) -> None:
        for n in names:
            rules.extend(_topic(p, "WRITE", n))

    # producers: the SDK, the gateway, the simulator, the consent loader, the decision point
    writes(PRODUCER, s.topic_events, s.topic_raw, s.topic_sources, *reference, s.topic_dead_letter)
    reads(PRODUCER, s.topic_sources)
    rules += _group(PRODUCER, SOURCES_READER_GROUP, "prefixed")
    # the registrar: source key events (register, revoke, the processor key's rotation)
    writes(REGISTRAR, s.topic_sources)
    reads(REGISTRAR, s.topic_sources)
    rules += _group(REGISTRAR, SOURCES_READER_GROUP, "prefixed")
    # the processor: every chained topic in, dead letters and the ledger's outputs out
    reads(PROCESSOR, s.topic_events, s.topic_raw, s.topic_sources, *reference)
    writes(
        PROCESSOR,
        s.topic_dead_letter,
        s.topic_quarantine,
        s.topic_alerts,
        s.topic_checkpoints,
        s.topic_blocks,
    )
    rules.append(AclSpec(PROCESSOR, "topic", s.topic_events, "literal", "DESCRIBE_CONFIGS"))
    rules += _group(PROCESSOR, s.processor_app_id)
    rules += _group(PROCESSOR, SOURCES_READER_GROUP, "prefixed")
    rules += [AclSpec(PROCESSOR, kind, own, "prefixed", "ALL") for kind in ("topic", "group")]
    # the auditor: alerts out; ``careledger alerts`` ledgers status changes and tails
    writes(AUDITOR, s.topic_alerts, s.topic_alert_status, s.topic_events, s.topic_sources)
    rules.append(AclSpec(AUDITOR, "topic", s.topic_alert_status, "literal", "CREATE"))
    reads(AUDITOR, s.topic_alerts)
    rules += _group(AUDITOR, ALERTS_TAIL_GROUP, "prefixed")
    rules += _group(AUDITOR, ALERT_FORWARDER_GROUP, "prefixed")
    # the verifier: checkpoints in (verify, the reports), alerts out (verify --follow)
    reads(VERIFIER, s.topic_checkpoints)
    writes(VERIFIER, s.topic_alerts)
    rules += _group(VERIFIER, VERIFIER_CHECKPOINTS_GROUP, "prefixed")
    rules += _group(VERIFIER, CHECKPOINT_NOTES_GROUP, "prefixed")
    # the cosigner: checkpoints in, cosigned checkpoints out
    reads(COSIGNER, s.topic_checkpoints)
    writes(COSIGNER, s.topic_checkpoints)
    rules += _group(COSIGNER, COSIGNER_GROUP, "prefixed")
    # a replica: the blocks, from its group's committed offsets
    reads(REPLICA, s.topic_blocks)
    rules += _group(REPLICA, REPLICA_GROUP, "prefixed")

    writers = {r.principal for r in rules if r.operation in ("WRITE", "ALL")}
    rules += [_idempotent(p) for p in writers]
    return tuple(sorted(set(rules)))


def acl_bindings(specs: Iterable[AclSpec]) -> list[AclBinding]:
    """``specs`` as confluent-kafka ``AclBinding`` s (ALLOW, any host) to create."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    types = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "cluster": ResourceType.BROKER,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }
    patterns = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
    return [
        AclBinding(
            types[s.resource_type],
            s.name,
            patterns[s.pattern],
            f"User:{s.principal}",
            "*",
            AclOperation[s.operation],
            AclPermissionType.ALLOW,
        )
        for s in specs
    ]


# -- the broker -------------------------------------------------------------------------


def certificate_principal(cert_file: Path) -> str:
    """The name Kafka's default SSL principal builder gives the holder of the
    certificate in ``cert_file``: its subject as an RFC 2253 DN, ``CN=...,O=...``."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return cert.subject.rfc4514_string()


def _jaas_value(value: str, what: str) -> str:
    """``value`` as a quoted JAAS option value (``\\`` and ``"`` escaped)."""
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"the {what} must be non-empty and without control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def scram_jaas(username: str, password: str) -> str:
    """A ``sasl.jaas.config`` value logging in as ``username`` with SCRAM, both quoted
    (a broker's own login on its listeners, a Kafka tool's client file)."""
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f"username={_jaas_value(username, 'user name')} "
        f"password={_jaas_value(password, f'{username} password')};"
    )


def _listener(name: str, host: str, port: int) -> str:
    return f"{name}://[{host}]:{port}" if ":" in host else f"{name}://{host}:{port}"


#: a listener name Kafka accepts and that cannot collide with the controllers'
_LISTENER_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


@dataclass(frozen=True)
class ClientListener:
    """A SASL_SSL listener of a broker: bound to ``bind_host`` ("" = every interface) at
    ``port``, advertised to clients as ``advertised_host:advertised_port``. The first
    one a broker has is also the one other brokers dial (docker-compose.yml's INTERNAL;
    its EXTERNAL is the host's port)."""

    name: str
    port: int
    advertised_host: str
    advertised_port: int
    bind_host: str = ""

    def __post_init__(self) -> None:
        if not _LISTENER_NAME.fullmatch(self.name) or self.name == "CONTROLLER":
            raise ValueError(f"not a client listener name: {self.name!r}")
        for port in (self.port, self.advertised_port):
            if not 0 < port < 65536:
                raise ValueError(f"not a port: {port}")
        if not self.advertised_host:
            raise ValueError("a listener advertises a host")


def broker_properties(
    *,
    host: str,
    port: int,
    controller_port: int,
    keystore: Path,
    truststore: Path,
    broker_cert: Path,
    broker_password: str,
    super_users: Sequence[str] = SUPER_USERS,
    listeners: Sequence[ClientListener] = (),
) -> dict[str, str]:
    """The ``server.properties`` entries of a combined broker and controller that
    serves clients on SASL_SSL (SCRAM-SHA-512) at ``host:port`` and its controllers
    on mutual TLS at ``host:controller_port``, with ACLs enforced. ``keystore``: the
    member's key and certificate in one PEM file (``careledger.tls.write_pem_keystore``),
    ``broker_cert`` its certificate (its DN is a super user: controllers know brokers
    by it), ``truststore`` the CA's PEM. ``listeners``: named client listeners instead
    of the one called SASL_SSL at ``host:port`` (the first is the brokers' own; ``host``
    then binds the controller listener only). Write them with :func:`properties_text`."""
    for user in super_users:
        if not _USER.fullmatch(user):
            raise ValueError(f"not a plain user name: {user!r}")
    dn = certificate_principal(broker_cert)
    if ";" in dn:
        raise ValueError(f"the broker certificate's DN {dn!r} cannot be listed in super.users")
    clients = list(listeners) or [ClientListener("SASL_SSL", port, host, port, host)]
    if len({c.name for c in clients}) != len(clients):
        raise ValueError("client listener names must be unique")
    jaas = scram_jaas(BROKER, broker_password)
    props = {
        "listeners": ",".join(
            [
                *(_listener(c.name, c.bind_host, c.port) for c in clients),
                _listener("CONTROLLER", host, controller_port),
            ]
        ),
        "advertised.listeners": ",".join(
            _listener(c.name, c.advertised_host, c.advertised_port) for c in clients
        ),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(
            ["CONTROLLER:SSL", *(f"{c.name}:SASL_SSL" for c in clients)]
        ),
        "inter.broker.listener.name": clients[0].name,
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
    }
    for c in clients:
        # every SASL listener needs a login module; the brokers' own also logs in with it
        props[f"listener.name.{c.name.lower()}.scram-sha-512.sasl.jaas.config"] = jaas
    props.update(
        {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(truststore),
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": ";".join([*(f"User:{u}" for u in super_users), f"User:{dn}"]),
            "allow.everyone.if.no.acl.found": "false",
        }
    )
    return props


def _escape_property(text: str, *, key: bool) -> str:
    """``text`` as ``java.util.Properties.load`` reads it back: a key's ``=``, ``:``,
    ``#``, ``!`` and blanks escaped (they would end it or make a comment), a value's
    leading blank; backslashes, line breaks and anything not printable ASCII everywhere
    (the file is read as ISO 8859-1: ``\\uXXXX``)."""
    out = []
    for i, c in enumerate(text):
        if c == "\\" or (key and c in "=:#!"):
            out.append("\\" + c)
        elif c == " ":
            out.append("\\ " if key or i == 0 else " ")
        elif c in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[c])
        elif " " < c <= "~":
            out.append(c)
        else:
            units = c.encode("utf-16-be")
            out.extend(f"\\u{units[j : j + 2].hex().upper()}" for j in range(0, len(units), 2))
    return "".join(out)


def properties_text(properties: Mapping[str, str]) -> str:
    """``properties`` as a ``.properties`` file (one line each) that
    ``java.util.Properties`` reads back as the same strings."""
    return "".join(
        f"{_escape_property(k, key=True)}={_escape_property(v, key=False)}\n"
        for k, v in properties.items()
    )


def scram_format_args(logins: Iterable[KafkaLogin]) -> list[str]:
    """``kafka-storage format`` arguments that create each login's SCRAM credential
    (``--add-scram 'SCRAM-SHA-512=[name=...,password=...]'``). Refuses a name or
    password the tool's parser would split or trim (``[],="'\\;``, spaces, control
    characters) rather than create another credential than the one asked for."""
    args: list[str] = []
    seen: set[str] = set()
    for login in logins:
        if login.protocol != "SASL_SSL":
            raise ValueError(f"{login.username!r} is not a SCRAM login")
        if not _USER.fullmatch(login.username) or login.username in seen:
            raise ValueError(f"not a plain, unique user name: {login.username!r}")
        seen.add(login.username)
        if any(c in _SCRAM_UNSAFE or not " " < c <= "~" for c in login.password):
            raise ValueError(
                f"the password of {login.username!r} has characters --add-scram cannot carry"
            )
        args += [
            "--add-scram",
            f"{login.mechanism}=[name={login.username},password={login.password}]",
        ]
    return args
