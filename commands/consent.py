"""``careledger consent``: patients' consents.

Subcommands (each a ``configure_*`` / ``run_*`` pair in :data:`SUBCOMMANDS`; add one by
adding an entry):

* ``load FILE|DIR ...``: ledger FHIR R4 / R5 Consents (JSON, XML, Bundles) from files,
  for back-filling (``producers.consents.load``). Prints per file what was ledgered or
  why it was rejected. Exit 0: all ledgered; 1: some rejected; 2: Kafka unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from careledger.config import Settings
from commands.consent_decide import SUBCOMMANDS as _decision_point_subcommands

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, Settings], int]


def configure_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    parser.add_argument(
        "--source",
        required=True,
        help="the source id the consents are recorded as coming from (the system that "
        "holds them); a consent's id is scoped by it",
    )


def run_load(args: argparse.Namespace, settings: Settings) -> int:
    from careledger.config import ConfigError
    from producers.consents.load import KafkaUnavailable, load_consents

    try:
        summary = load_consents(settings, args.paths, source_id=args.source)
    except ConfigError as exc:
        print(f"careledger consent load: configuration error: {exc}", file=sys.stderr)
        return 2
    except KafkaUnavailable as exc:
        print(f"careledger consent load: Kafka unavailable ({exc}); nothing more was ledgered")
        return 2
    for f in summary.files:
        for line in f.lines:
            print(f"{f.path}: {line}")
    print(
        f"consent load: {summary.ledgered} ledgered, {summary.rejected} rejected, "
        f"{len(summary.files)} file(s)"
    )
    return 1 if summary.rejected else 0


#: name -> (help, configure, run)
SUBCOMMANDS: dict[str, tuple[str, Configure, Run]] = {
    "load": (
        "ledger FHIR Consents (JSON, XML, Bundles) from files or directories (back-fill)",
        configure_load,
        run_load,
    ),
}
# the decision point's subcommands (decide, serve, replay): commands.consent_decide
SUBCOMMANDS.update(_decision_point_subcommands)


def configure_consent(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="consent_command", metavar="SUBCOMMAND", required=True)
    for name, (help_text, configure, _run) in SUBCOMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))


def command_consent(args: argparse.Namespace, settings: Settings) -> int:
    return SUBCOMMANDS[args.consent_command][2](args, settings)
