"""``python -m careledger.stack install-kafka``: used by deploy/bootstrap.sh."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from careledger.config import load_settings

from .kafka_server import install_kafka
from .model import StackError


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m careledger.stack install-kafka``: used by deploy/bootstrap.sh."""
    parser = argparse.ArgumentParser(prog="python -m careledger.stack")
    parser.add_argument("action", choices=["install-kafka", "kafka-version"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    if args.action == "kafka-version":
        print(settings.kafka_version)
        return 0
    try:
        lib = install_kafka(settings)
    except StackError as exc:
        print(f"careledger: {exc}", file=sys.stderr)
        return 2
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
