"""``python -m careledger.stack install-kafka|install-zookeeper``: for deploy/bootstrap.sh."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from careledger.config import load_settings

from .kafka_server import install_kafka
from .model import StackError
from .paths import _paths
from .zookeeper_server import install_zookeeper


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m careledger.stack install-kafka|install-zookeeper``: used by
    deploy/bootstrap.sh (prints the folder of jars)."""
    parser = argparse.ArgumentParser(prog="python -m careledger.stack")
    parser.add_argument("action", choices=["install-kafka", "install-zookeeper", "kafka-version"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    if args.action == "kafka-version":
        print(settings.kafka_version)
        return 0
    try:
        if args.action == "install-zookeeper":
            lib = install_zookeeper(_paths(settings).logs, quiet=False)
        else:
            lib = install_kafka(settings)
    except StackError as exc:
        print(f"careledger: {exc}", file=sys.stderr)
        return 2
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
