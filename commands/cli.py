"""The ``careledger`` console entry point.

Each subcommand lives in the module that owns it; this file only routes. A module
named in ``COMMANDS`` provides ``configure_<name>(parser)`` (optional) and
``command_<name>(args, settings) -> int``. Modules are imported lazily so that
``careledger keygen`` does not pay for faust or Kafka imports.

Exit codes: 0 success, 1 the command ran and found a problem (e.g. verification
findings), 2 usage or infrastructure error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

import careledger
from careledger.config import ConfigError, load_settings, local_config_path
from careledger.log_format import configure_logging

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "careledger.stack",
        "install if needed and start the local Kafka broker and ClickHouse server",
    ),
    "down": ("careledger.stack", "stop the local stack"),
    "status": (
        "commands.status",
        "the local stack, and the pipeline: per chain what is not yet signed and the newest "
        "block's age, the processors, the last verification, open alerts",
    ),
    "migrate": ("careledger.storage.migrations", "create or upgrade the ClickHouse schema"),
    "keygen": (
        "careledger.keygen",
        "write a new Ed25519 signing key pair, or rotate the processor's (ledgered)",
    ),
    "simulate": ("producers.simulator", "emit realistic simulated hospital access events"),
    "process": ("processors.app", "run the chaining processor (faust worker)"),
    "gateway": (
        "producers.gateway.server",
        "run the ingest gateway: FHIR AuditEvent over HTTP, ATNA syslog over TCP/TLS/UDP",
    ),
    "verify": (
        "commands.verify",
        "verify every chain (or one), and the auditor's decisions, alerts and alert status "
        "changes against the ledger; report findings",
    ),
    "audit": ("verifiers.auditor.cli", "audit committed accesses: explanations, flags, alerts"),
    "alerts": (
        "verifiers.auditor.alerts_cli",
        "list, show, acknowledge, resolve or tail audit alerts",
    ),
    "dead-letters": ("processors.dead_letters", "list or replay dead-lettered input"),
    "demo": ("commands.demo", "run the whole pipeline locally on simulated traffic"),
    "benchmark": ("commands.benchmarks.pipeline", "measure end-to-end throughput and latency"),
    "benchmark-alerts": (
        "commands.benchmarks.alerts",
        "measure produce-to-alert latency of labelled inappropriate accesses at a sustained rate",
    ),
    "benchmark-audit": (
        "commands.benchmarks.audit",
        "measure the access auditor's recall and precision per rule on labelled traffic",
    ),
    "benchmark-decide": (
        "commands.benchmarks.decide",
        "measure the consent decision point's latency per decision (p50/p95/p99)",
    ),
    "benchmark-gateway": (
        "commands.benchmarks.gateway",
        "measure the ingest gateway's records/s per transport against real Kafka",
    ),
    "benchmark-replica": (
        "commands.benchmarks.replica",
        "measure a replica's lag behind the processor and a new replica's catch-up rate",
    ),
    "benchmark-sdk": (
        "commands.benchmarks.sdk",
        "measure the producer SDK's signed events/s per thread (batch and per-event records)",
    ),
    "benchmark-verify": (
        "commands.benchmarks.verify",
        "measure careledger verify's events/s (per core, per process count) on a signed ledger",
    ),
    "benchmark-witness": (
        "commands.benchmarks.witness",
        "measure checkpoint-to-quorum latency, witness cosignatures/s and verify with witnesses",
    ),
    "access-report": (
        "verifiers.reports.access_report",
        "who looked at a patient's record: access, HIPAA disclosures or GDPR view, with proofs",
    ),
    "patient-view": (
        "verifiers.reports.patient_view",
        "a patient's consents and their history, who may see the record now and why, the "
        "consent decisions and who did see it, each line with its proof",
    ),
    "verify-proof": ("verifiers.reports.verify_proof", "check an exported access report offline"),
    "source": (
        "careledger.sources",
        "source identity: key generation, registration, revocation, the registry",
    ),
    "cosign": (
        "processors.cosign_cli",
        "ask the witnesses to cosign each chain's newest checkpoint and publish the "
        "cosigned checkpoints",
    ),
    "replica": (
        "replica.cli",
        "keep a verified replica of every block from the blocks topic (follow, catch-up), "
        "compare it with the primary, list what it refused",
    ),
    "restore": (
        "replica.cli",
        "re-create tampered or deleted blocks of the primary from a replica checked against "
        "the signed checkpoints; each restore is ledgered",
    ),
    "witness": (
        "witness.server",
        "run a C2SP tlog-witness for a partner's logs (cosign consistent checkpoints, keep "
        "evidence of forks), or show its state and evidence",
    ),
    "console": (
        "console.cli",
        "the privacy office's web console: alerts in risk order, cases, who looked at a "
        "record, pipeline health (every view ledgered); and its accounts",
    ),
    "consent": ("commands.consent", "patients' consents: load FHIR Consents from files"),
    "keystore": (
        "commands.keystore",
        "the key store of per-patient data keys (ADR 0037): init, status",
    ),
    "erase": (
        "commands.erase",
        "erase a patient from a sealed ledger by destroying their data keys, under the "
        "retention policies and legal holds (ledgered; proofs intact)",
    ),
    "expire": (
        "commands.erase",
        "the retention expiry job of a sealed ledger: erase every subject whose newest "
        "record has expired under the policies (after an intact verify; ledgered)",
    ),
    "legal-hold": (
        "commands.erase",
        "place or lift a legal hold on a patient's records (ledgered; blocks erasure)",
    ),
    "tls-certs": (
        "careledger.tls",
        "make (or renew when stale) a CA and a server certificate for named hosts",
    ),
    "kafka-config": (
        "careledger.stack.kafka_deploy",
        "write a Kafka cluster's broker configurations: SASL_SSL logins, mutual TLS between "
        "controllers, ACLs enforced (docker-compose.yml's brokers)",
    ),
    "kafka-setup": (
        "careledger.stack.kafka_deploy",
        "create the topics and the ACLs on a running Kafka cluster, as the admin",
    ),
}


#: Commands that answer and exit: librdkafka's own lines (``careledger.*.rdkafka``) would
#: only repeat, rawly, the one line the command says itself when Kafka cannot be reached.
#: Services (process, gateway, replica, witness, cosign, audit --follow) keep them in
#: their logs, rate-limited. ``-v`` shows them everywhere.
ONE_SHOT = frozenset(
    {
        "status",
        "migrate",
        "keygen",
        "verify",
        "alerts",
        "dead-letters",
        "access-report",
        "patient-view",
        "verify-proof",
        "source",
        "consent",
        "keystore",
        "erase",
        "expire",
        "legal-hold",
        "kafka-setup",
        "simulate",
    }
)
#: Commands that set up a ledger in clear (the demo): on a sealed ledger (``seal_events``,
#: ADR 0037) they refuse in one line, with the reason. ``access-report``,
#: ``patient-view``, ``audit``, ``alerts``, the ``console`` and the consent decision
#: point (``consent decide|serve|replay``) open sealed data through the key store;
#: ``replica`` copies the signed documents (``restore`` refuses a sealed chain);
#: ``consent load`` seals each file and its consents to the ingest key, as the gateway
#: does. Keys are a command, or ``command subcommand``.
NOT_ON_SEALED_LEDGER: Final[Mapping[str, str]] = MappingProxyType(
    {
        "demo": "it sets up and runs a ledger in clear (no ingest key, no key store)",
    }
)


def _refused_on_sealed_ledger(args: argparse.Namespace) -> str | None:
    """The command line's name if it is refused on a sealed ledger, else None."""
    name = args.command
    if name in NOT_ON_SEALED_LEDGER:
        return str(name)
    sub = getattr(args, f"{name.replace('-', '_')}_command", None)
    full = f"{name} {sub}"
    return full if sub and full in NOT_ON_SEALED_LEDGER else None


#: The exit status of a command whose reader went away (``| head``), as for SIGPIPE.
EXIT_BROKEN_PIPE = 141


#: Commands that run the stack for a person at a terminal (the demo, the benchmarks): as
#: for one-shot commands, their output is theirs alone. librdkafka's lines (a retry while
#: a group coordinator loads, a broker not up yet) are not shown; what fails is said by
#: the command, in one line.
AT_A_TERMINAL = frozenset(
    {
        "demo",
        "benchmark",
        "benchmark-alerts",
        "benchmark-audit",
        "benchmark-decide",
        "benchmark-gateway",
        "benchmark-replica",
        "benchmark-sdk",
        "benchmark-verify",
        "benchmark-witness",
    }
)
#: the loggers librdkafka's lines go to (``careledger.kafka.clients.rdkafka_logger``)
_RDKAFKA_LOGGERS = (
    "careledger.kafka.rdkafka",
    "careledger.producer.rdkafka",
    "careledger.gateway.rdkafka",
)


def _quiet_clients(command: str) -> None:
    # A failed connection is said by the command itself, in one line (issue 13);
    # clickhouse-driver would log it again with a traceback.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    if command in ONE_SHOT or command in AT_A_TERMINAL:
        for name in _RDKAFKA_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _module_for(name: str):  # type: ignore[no-untyped-def]
    module_name = COMMANDS[name][0]
    return importlib.import_module(module_name)


def build_parser(load_modules: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="careledger", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (CARELEDGER_CONFIG; default: .run/careledger.toml if the "
        "demo wrote one)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"careledger {careledger.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load_modules:
            configure = getattr(_module_for(name), f"configure_{name.replace('-', '_')}", None)
            if configure is not None:
                configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the module of the command actually asked for.
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(load_modules=False)
    if command is not None:
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        configure = getattr(_module_for(command), f"configure_{command.replace('-', '_')}", None)
        if configure is not None:
            configure(sub_action.choices[command])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        # the run directory's careledger.toml (written by `careledger demo`) unless
        # --config or CARELEDGER_CONFIG names another file
        settings = load_settings(args.config or local_config_path())
    except ConfigError as exc:
        print(f"careledger: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        _quiet_clients(args.command)
    refused = _refused_on_sealed_ledger(args) if settings.seal_events else None
    if refused is not None:
        print(
            f"careledger {refused}: not yet available on a sealed ledger (seal_events "
            f"is on): {NOT_ON_SEALED_LEDGER[refused]} (ADR 0037, next steps)",
            file=sys.stderr,
        )
        return 2
    run = getattr(_module_for(args.command), f"command_{args.command.replace('-', '_')}")
    try:
        return int(run(args, settings))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``careledger alerts list --json | head``): stop quietly,
        # as Unix tools do; stdout goes to /dev/null so that the interpreter's final
        # flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
