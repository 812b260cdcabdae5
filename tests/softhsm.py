"""A SoftHSM2 token for the integration tests of the key store (ADR 0037).

SoftHSM reads its configuration once per process, so every test module of a pytest
process shares one token directory (each test may still make tokens of its own
labels in it)."""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from pathlib import Path

from careledger.config import Settings
from careledger.keystore import TokenConfig, local_token


@functools.cache
def softhsm_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="careledger-softhsm-"))


def with_token(s: Settings) -> tuple[Settings, TokenConfig]:
    """``s`` using a new token of its own in the process's SoftHSM directory, and that
    token (its PIN in an owner-only file, as a deployment keeps it; SoftHSM's
    configuration in ``SOFTHSM2_CONF``, as a deployment on SoftHSM sets it)."""
    label = f"t{uuid.uuid4().hex[:12]}"
    token = local_token(softhsm_dir(), label)
    assert token.softhsm_conf is not None
    os.environ["SOFTHSM2_CONF"] = str(token.softhsm_conf)
    pin_file = token.softhsm_conf.parent / f"{label}.pin"
    return s.replace(keystore_token_label=label, keystore_pin_file=pin_file), token
