"""Runtime configuration for every careledger component.

One frozen ``Settings`` value, built from defaults, then an optional TOML file,
then ``CARELEDGER_*`` environment variables (highest precedence). Every
component (stack control, producers, processor, verifier, tests, the
docker-compose file) reads the same names, so a value changed in one place is
seen everywhere. Ports are loopback and deliberately non-default so a local
stack never collides with a developer's own Kafka or ClickHouse.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENV_PREFIX = "CARELEDGER_"
#: The settings file ``careledger demo`` writes in the run directory: the trust anchors
#: and the local source it made. Commands read it when neither ``--config`` nor
#: ``CARELEDGER_CONFIG`` names a file (``local_config_path``); ``CARELEDGER_CONFIG=""``
#: reads none (child processes get their parent's settings whole, ``Settings.as_env``).
LOCAL_CONFIG_NAME = "careledger.toml"
#: what ``write_local_config`` keeps: where trust comes from and who the local source is
LOCAL_CONFIG_KEYS = (
    "signing_key",
    "trusted_keys",
    "trusted_registrar_keys",
    "registrar_key",
    "source_id",
    "source_key",
)


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # --- where local state lives -------------------------------------------
    run_dir: Path = PROJECT_ROOT / ".run"
    # How commands and services log: "text" (one line per record) or "json" (one JSON
    # object per line, for log shippers; careledger.log_format).
    log_format: str = "text"
    # /health and /metrics (Prometheus) of a long-running service (process, audit
    # --follow, verify --follow, gateway, witness) on this port; 0: off
    # (careledger.service_health). One service per process, so one port per host.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    # --- Kafka (KRaft, one combined broker+controller node locally) ---------
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_version: str = "4.1.1"
    # A cluster (ADR 0030): every broker's host:port (overrides kafka_host:kafka_port
    # as the bootstrap list), the replication of the topics careledger creates, and the
    # in-sync replicas a write needs (producers always ask for acks=all).
    kafka_brokers: tuple[str, ...] = ()
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1
    # TLS and SCRAM logins (issue 12, careledger.kafka.security): every client logs in
    # as its component's principal over SASL_SSL, the broker verified by name against
    # kafka_ca_file (else the local stack's <run_dir>/tls/ca.pem, else the system's
    # store). A password comes from kafka_password, else kafka_password_file (0600),
    # else <run_dir>/secrets/kafka-<principal>.password, made by the local stack.
    # PLAINTEXT (no security) only where asked for (ADR 0033).
    kafka_security_protocol: str = "SASL_SSL"
    kafka_ca_file: Path | None = None
    kafka_password: str = dataclasses.field(default="", repr=False)
    kafka_password_file: Path | None = None
    # where the local stack's per-principal password files are (default <run_dir>/secrets;
    # set by pin_login for scratch copies of the settings with another run_dir)
    kafka_secrets_dir: Path | None = None
    topic_events: str = "careledger.access-events"
    topic_dead_letter: str = "careledger.dead-letter"
    topic_alerts: str = "careledger.alerts"
    topic_checkpoints: str = "careledger.checkpoints"
    # Reference data, ledgered like access events (chains of their own).
    topic_consents: str = "careledger.consents"
    topic_care_relationships: str = "careledger.care-relationships"
    topic_workforce: str = "careledger.workforce"
    topic_patients: str = "careledger.patients"
    # Source identity (ADR 0010): registrar-signed key events and source heartbeats,
    # ledgered like reference data; records failing source checks go to quarantine.
    topic_sources: str = "careledger.sources"
    topic_quarantine: str = "careledger.quarantine"
    # Raw records the ingest gateway received (bytes as received, ledgered in chains
    # of their own, kept forever like reference data).
    topic_raw: str = "careledger.raw-records"
    # Every stored block (header, signature, canonical records, attestations), published
    # by the processor after the store write for replicas (ADR 0017); kept forever.
    topic_blocks: str = "careledger.blocks"
    partitions: int = 4
    reference_partitions: int = 1
    # Largest access-event message the processor accepts; larger ones are
    # dead-lettered (a real event is ~0.5 KiB, so 64 KiB is generous).
    max_event_bytes: int = 65536
    # Largest batch record (one Kafka record per source-signed batch, ADR 0020) the
    # processor accepts; larger ones are dead-lettered whole. Each event inside is still
    # bounded by max_event_bytes.
    max_batch_record_bytes: int = 1_048_576

    # --- ClickHouse ---------------------------------------------------------
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 19000
    clickhouse_http_port: int = 18123  # HTTPS in the local stack (ADR 0032)
    # Logins (ADR 0032, careledger.credentials): the writer (processor, auditor,
    # migrations) and the read-only reader (verify, reports). A password comes from its
    # setting, else its *_password_file (mode 0600), else <run_dir>/secrets/ (made by
    # the local stack on first start); there is no default password.
    clickhouse_user: str = "careledger"
    clickhouse_password: str = dataclasses.field(default="", repr=False)
    clickhouse_password_file: Path | None = None
    clickhouse_reader_user: str = "careledger_reader"
    clickhouse_reader_password: str = dataclasses.field(default="", repr=False)
    clickhouse_reader_password_file: Path | None = None
    # TLS on the native port, verified against clickhouse_ca_file (else the local
    # stack's <run_dir>/tls/ca.pem, else the system's trust store).
    clickhouse_secure: bool = True
    clickhouse_ca_file: Path | None = None
    clickhouse_database: str = "careledger"
    # Replicated ClickHouse (ADR 0030): the other replicas of the same data, host:port of
    # their native port (clients fail over to them; migrations run on each), and whether
    # tables are ReplicatedMergeTree under /careledger/tables/<database>/<table> with
    # the server's {replica} macro (the servers need ZooKeeper and that macro).
    clickhouse_replicas: tuple[str, ...] = ()
    clickhouse_replicated: bool = False

    # --- processor ----------------------------------------------------------
    processor_app_id: str = "careledger-processor"
    processor_web_port: int = 16066
    # How long the group waits for a silent (e.g. killed) worker before giving
    # its partitions to another; the broker's minimum is 6 s.
    processor_session_timeout_s: float = 10.0
    # Bytes of Kafka records the processor holds ahead of chaining: the records of a take,
    # the stream buffer behind it and one poll, counted at the largest record a topic
    # takes (a batch record, ADR 0020). Memory stays flat whatever the backlog (issue 10).
    # 72 MiB: ~300 MB peak RSS and ~23k events/s draining a backlog on 2 cores; 48 MiB:
    # ~250 MB and ~20k; 96 MiB: ~340 MB and ~27k (README, Performance).
    processor_buffer_bytes: int = 72 * 1024 * 1024
    # Records per take (0: as many as processor_buffer_bytes allows); the stream buffer
    # and one poll hold as many again each.
    processor_take_records: int = 0
    # How long the broker may hold the processor's fetch when it has nothing new (the
    # long poll): a fetch of the empty reference and raw topics held the events topic's
    # next fetch that long (ADR 0043; faust's own is 1,500 ms).
    processor_fetch_wait_ms: int = 100
    block_max_events: int = 1000
    block_max_ms: int = 250
    # Origin names the log in chain ids and checkpoints: "<origin>/<topic>/<partition>".
    origin: str = "careledger.local"
    signing_key: Path | None = None  # path to the Ed25519 private key file
    # Fail closed: only events signed by a registered source are chained (ADR 0010);
    # anything else is quarantined. false = legacy mode for migrating producers that
    # cannot sign yet (plain events chained; signed ones are still checked).
    require_source_signatures: bool = True
    # verify: unsigned events in blocks created before this instant are legacy history,
    # not findings ("" = from the first source key registration in the ledger).
    source_signatures_since: str = ""
    # A batch statement's signed_at may differ from the broker's append time of its
    # records (the events topic uses LogAppendTime) by this much; `verify` allows the
    # same around the append times a block header signs (ADR 0015).
    source_max_skew_s: float = 900.0
    # --- broker time, replays, processor key rotation (ADR 0015) ---------------------
    # How often the processor reads the source sequence numbers other processor
    # instances chained (replays are REPLAYED whichever instance chained the original);
    # 0: only when a chain is (re)loaded. A single instance reads nothing periodically.
    seq_refresh_ms: int = 250

    # --- sources (SDK) --------------------------------------------------------
    # Who this producer is and its Ed25519 key (registered with `careledger source
    # register`); without a key the SDK sends plain (unsigned) events.
    source_id: str = "careledger-local"
    source_key: Path | None = None
    source_batch_max_events: int = 500
    source_batch_max_ms: int = 50
    # A signed batch travels as one Kafka record (ADR 0020) of at most this many bytes
    # (below Kafka's 1 MiB default message size); an event that would overflow it closes
    # the batch first. "event" sends one careledger.signed-event/1 record per event instead.
    source_batch_max_bytes: int = 900_000
    source_record_format: str = "batch"
    source_heartbeat_interval_s: float = 10.0
    # Registrar public keys the processor and verifier trust for key events (files or
    # "ed25519:<base64>" literals); the registrar's private key signs registrations.
    trusted_registrar_keys: tuple[str, ...] = ()
    registrar_key: Path | None = None

    # --- verifier -----------------------------------------------------------
    # Trusted public keys come from the verifier's own configuration, never from
    # the database being verified: a comma-separated list of key files or of
    # "ed25519:<base64>" literals.
    trusted_keys: tuple[str, ...] = ()
    verifier_state_dir: Path | None = None  # defaults to run_dir / "verifier"
    follow_interval_s: float = 2.0
    full_reverify_every_s: float = 300.0

    # --- witnesses (ADR 0018) ----------------------------------------------------
    # The TOML file naming the witnesses, their keys and URLs, the quorum (k of n) and
    # how old an unwitnessed block may be (careledger/witnesses.py). The log's cosigner
    # asks them for cosignatures; verify, access-report, verify-proof and follow require
    # a quorum-cosigned checkpoint. Unset: no witnesses (verify says so).
    witnesses_file: Path | None = None
    # How often the cosigner looks for new checkpoints, and how long one witness
    # request may take before that witness is skipped for the round.
    cosign_interval_s: float = 0.5
    cosign_timeout_s: float = 5.0

    # --- access auditor -----------------------------------------------------
    # Status changes of alerts (ack, resolve) are also published here, key = alert id.
    topic_alert_status: str = "careledger.alert-status"
    # Secret salt of patient pseudonyms in decisions and alerts; empty: read (or
    # create, mode 0600) <run_dir>/keys/audit-salt.
    audit_salt: str = ""
    # How often `careledger audit --follow` looks for newly committed blocks.
    audit_poll_interval_s: float = 0.5

    # --- ingest gateway (producers/gateway, `careledger gateway`) --------------
    # FHIR AuditEvent over HTTP (IHE ITI-20) and ATNA syslog (TCP, TLS, UDP). Port -1
    # disables a listener, 0 picks a free one; the TLS listeners (HTTPS, syslog TLS)
    # only run when gateway_tls_cert and gateway_tls_key are set. With
    # gateway_tls_client_ca set, TLS clients may present a certificate (mTLS), which
    # identifies the sender through gateway_auth_file.
    gateway_host: str = "127.0.0.1"
    gateway_http_port: int = 18090
    gateway_https_port: int = 18453
    gateway_syslog_tcp_port: int = 16601
    gateway_syslog_tls_port: int = 16514
    gateway_syslog_udp_port: int = 16515
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    gateway_tls_client_ca: Path | None = None
    # Senders: TOML file of [[source]] entries (mTLS certificates, Ed25519 request
    # keys, open legacy sources); none: every sender is unauthenticated.
    gateway_auth_file: Path | None = None
    # Largest received record (HTTP body, syslog frame), bytes.
    gateway_max_record_bytes: int = 1048576
    # How long a record may wait for Kafka's acknowledgement before the sender is told
    # 503 (HTTP) or the record is retried (syslog).
    gateway_ack_timeout_s: float = 15.0
    # Hardening (ADR 0025). Proxy headers (X-Forwarded-For) are ignored unless the
    # connection comes from one of these addresses (empty: never trusted).
    gateway_trusted_proxies: tuple[str, ...] = ()
    # Signed requests remembered within the signature window (+-300 s; a copy is
    # refused), ~60 bytes each; when full, signed requests get 503 until entries expire
    # (the default sustains ~3,300 signed requests/s).
    gateway_replay_cache_entries: int = 1000000
    # Several gateways behind one address: the replay cache shared in ZooKeeper (ADR 0025
    # addendum), as "host:port,host:port" (empty: each gateway remembers its own). Its
    # root znode, and TLS to it: the CA of the servers' certificates and, when the
    # ensemble requires client certificates, this gateway's certificate and key.
    gateway_replay_zookeeper: str = ""
    gateway_replay_zookeeper_root: str = "/careledger/gateway-replay"
    gateway_replay_zookeeper_ca: Path | None = None
    gateway_replay_zookeeper_cert: Path | None = None
    gateway_replay_zookeeper_key: Path | None = None
    # Deadlines: a connection with nothing to do (syslog between frames, HTTP between
    # requests), a request's header, a request's body; seconds.
    gateway_idle_timeout_s: float = 30.0
    gateway_header_timeout_s: float = 10.0
    gateway_body_timeout_s: float = 30.0
    # Open connections per listener and per peer address (more are closed at once).
    gateway_max_connections: int = 1024
    gateway_max_connections_per_peer: int = 64
    # Bytes per second each authenticated source may send (0: no limit), and how much
    # it may send at once after a pause. Over it: HTTP 429 with Retry-After, syslog
    # streams read more slowly (nothing lost). 16 MiB/s is ~15,000 events/s of ~1 KB.
    gateway_source_bytes_per_s: int = 16 * 1024 * 1024
    gateway_source_burst_bytes: int = 32 * 1024 * 1024

    # --- witness (`careledger witness`: a partner's C2SP tlog-witness, witness/) ------
    # Its name (in its cosignature lines, e.g. "hospital-b.example/witness"), its own
    # Ed25519 key (mode 0600; default <run_dir>/keys/witness.key; or the key text in
    # CARELEDGER_WITNESS_SIGNING_KEY_TEXT), the TOML file of the logs it cosigns
    # ([[log]] origin(s) and public keys), where it keeps its state (cosigned
    # checkpoints and evidence, SQLite) and where it listens (loopback by default).
    witness_name: str = ""
    witness_signing_key: Path | None = None
    witness_logs_file: Path | None = None
    witness_state_dir: Path | None = None  # defaults to run_dir / "witness"
    witness_host: str = "127.0.0.1"
    witness_port: int = 17380
    # Largest add-checkpoint body accepted (413 beyond), bytes.
    witness_max_request_bytes: int = 65536

    # --- key store (careledger/keystore.py, ADR 0037) ---------------------------------
    # Per-patient data keys wrapped by a key-encryption key in a PKCS#11 token: its
    # library, the token's label, its PIN's file (mode 0600; or CARELEDGER_KEYSTORE_PIN;
    # neither, with SoftHSM2's library: the local stack's own token under run_dir).
    # The wrapped keys live in the ledger's ClickHouse (data_keys, replicated with the
    # ledger), or with keystore_file set, in that owner-only file (one node only).
    # Sealed events (ADR 0037): sources seal to the processor's ingest public key
    # (ingest_public_key: its .pub file); with seal_events the processor (ingest_key, its
    # private file, 0600, or CARELEDGER_INGEST_KEY_TEXT) chains sealed documents only
    # and stores each event's sensitive part under the patient's data key; verify reads
    # the events table as sealed documents. Reference data that names a person
    # (consents, care relationships, staff, patients) is sealed too: sources seal each
    # record to the ingest key, the processor under the subject's data key.
    seal_events: bool = False
    # the identifier system of the patient ids in reference data (consents, care
    # relationships, patient records), as the events name it: a patient's reference
    # records are sealed under the data key of their events (and erased with it)
    reference_patient_system: str = ""
    # how long a processor keeps a data key in memory; `careledger erase` waits this
    # long (and 2 s) after destroying a patient's keys, so nothing is sealed under them
    sealing_key_cache_s: float = 30.0
    # worker processes that open a sealed ledger's incoming batch records (ADR 0039), or
    # check a ledger in clear's (ADR 0042), ahead of the processor's event loop; 0: the
    # loop opens or checks them itself
    opening_workers: int = 1
    ingest_key: Path | None = None
    ingest_public_key: Path | None = None
    keystore_pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    keystore_token_label: str = "careledger"
    keystore_pin_file: Path | None = None
    keystore_file: Path | None = None
    # What may be erased when (careledger/retention.py): a TOML file of [[policy]]
    # tables (name, retain_years, erasure_on_request, expire_years); none: the built-in
    # us-hipaa and eu-gdpr.
    retention_policy_file: Path | None = None

    # --- console (`careledger console`, console/, ADRs 0035, 0036) -------------------
    # Single sign-on with an OpenID Provider (ADR 0036); off while the issuer is empty.
    # The issuer exactly as its discovery document names it (https), the console's
    # client id there, the client secret's file (mode 0600; or the secret itself in
    # CARELEDGER_CONSOLE_OIDC_CLIENT_SECRET), the CA bundle of the provider's
    # certificate (none: the system's), the URL browsers reach the console at (its
    # redirect URI is <url>/login/oidc/callback), the sign-in button's label, and an
    # authentication context (acr) to ask for and require (empty: none).
    console_oidc_issuer: str = ""
    console_oidc_client_id: str = ""
    console_oidc_client_secret_file: Path | None = None
    console_oidc_ca_file: Path | None = None
    console_public_url: str = ""
    console_oidc_label: str = "single sign-on"
    console_oidc_acr: str = ""

    # --- replica (`careledger replica` / `restore`, replica/, ADR 0017) -------------
    # The replica's own ClickHouse database (or server): fed from topic_blocks, each
    # block verified with trusted_keys before it is stored. `replica compare` and
    # `restore` read the primary (clickhouse_*) and this replica.
    replica_clickhouse_host: str = "127.0.0.1"
    replica_clickhouse_port: int = 19000
    replica_clickhouse_user: str = ""  # empty: the writer's login (clickhouse_user)
    replica_clickhouse_password: str = dataclasses.field(default="", repr=False)
    replica_clickhouse_database: str = "careledger_replica"

    @property
    def kafka_bootstrap(self) -> str:
        if self.kafka_brokers:
            return ",".join(self.kafka_brokers)
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def verifier_state(self) -> Path:
        return self.verifier_state_dir or (self.run_dir / "verifier")

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    def chain_id(self, topic: str, partition: int) -> str:
        return f"{self.origin}/{topic}/{partition}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def with_topic_suffix(self, suffix: str, **changes: Any) -> Settings:
        """Every Kafka topic renamed ``<name><suffix>``: a pipeline of its own on a
        shared broker (tests, benchmarks)."""
        topics = {
            f.name: getattr(self, f.name) + suffix
            for f in dataclasses.fields(self)
            if f.name.startswith("topic_")
        }
        return dataclasses.replace(self, **topics, **changes)

    def as_env(self) -> dict[str, str]:
        """The settings as CARELEDGER_* variables, for child processes."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            env[ENV_PREFIX + f.name.upper()] = str(value)
        env[ENV_PREFIX + "CONFIG"] = ""  # these are the whole settings: read no file
        return env


def _coerce(field: dataclasses.Field[Any], raw: Any) -> Any:
    kind = str(field.type)
    try:
        if kind.startswith("tuple"):
            if isinstance(raw, list | tuple):
                return tuple(str(v) for v in raw)
            return tuple(p.strip() for p in str(raw).split(",") if p.strip())
        if "Path" in kind:
            return Path(str(raw)).expanduser() if str(raw) else None
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {field.name!r}: cannot use value {raw!r}: {exc}") from exc


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then ``config_file`` (TOML, flat keys), then the environment, then overrides."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file or (
        Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None
    )
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(f"unknown setting {key!r} in {path}")
            values[key] = _coerce(fields[key], raw)
    for name, field in fields.items():
        raw_env = env.get(ENV_PREFIX + name.upper())
        if raw_env is not None:
            values[name] = _coerce(field, raw_env)
    for key, raw in overrides.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = raw
    settings = Settings(**values)
    if not 1 <= settings.kafka_min_insync_replicas <= settings.kafka_replication_factor:
        raise ConfigError(
            "kafka_min_insync_replicas must be between 1 and kafka_replication_factor"
        )
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be text or json")
    if settings.kafka_security_protocol not in ("SASL_SSL", "PLAINTEXT"):
        raise ConfigError("kafka_security_protocol must be SASL_SSL or PLAINTEXT")
    if settings.block_max_events < 1 or settings.block_max_ms < 1:
        raise ConfigError("block_max_events and block_max_ms must be positive")
    if settings.partitions < 1 or settings.reference_partitions < 1:
        raise ConfigError("partitions and reference_partitions must be at least 1")
    if settings.processor_buffer_bytes < 1 or settings.processor_take_records < 0:
        raise ConfigError("processor_buffer_bytes must be positive, processor_take_records >= 0")
    if not 1 <= settings.processor_fetch_wait_ms <= 30_000:
        raise ConfigError("processor_fetch_wait_ms must be between 1 and 30000")
    if not 0 <= settings.opening_workers <= 64:
        raise ConfigError("opening_workers must be between 0 and 64")
    return settings


def local_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The run directory's settings file (``LOCAL_CONFIG_NAME``) when it applies: it
    exists and no other file was named (``CARELEDGER_CONFIG`` unset). Else None."""
    env = os.environ if env is None else env
    if ENV_PREFIX + "CONFIG" in env:
        return None
    run_dir = env.get(ENV_PREFIX + "RUN_DIR")
    path = (Path(run_dir) if run_dir else Settings.run_dir) / LOCAL_CONFIG_NAME
    return path if path.is_file() else None


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def write_local_config(settings: Settings) -> Path:
    """Write ``LOCAL_CONFIG_KEYS`` of ``settings`` to the run directory's settings file
    (mode 0600, replaced whole), for the commands run after the demo. Returns its path."""
    path = settings.run_dir / LOCAL_CONFIG_NAME
    lines = [
        "# Written by `careledger demo`: the trust anchors and the local source it made.",
        "# Read by careledger commands unless --config or CARELEDGER_CONFIG names a file;",
        "# CARELEDGER_* variables override it.",
    ]
    for key in LOCAL_CONFIG_KEYS:
        value = getattr(settings, key)
        if value is None or value == () or value == "":
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
