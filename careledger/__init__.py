"""careledger's glue floor: configuration, storage, the local stack, process control."""

from __future__ import annotations


def version() -> str:
    """The installed careledger's version (a source tree never installed says so)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("careledger")
    except PackageNotFoundError:
        return "unknown (not installed)"
