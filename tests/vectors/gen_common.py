"""Shared inputs of the test-vector generator: the fixed keys, names and Merkle test leaves.

The test key's seed is SHA-256(b"careledger test key"); the "other" (untrusted) key's
seed is SHA-256(b"careledger other key"). Merkle test leaf ``i`` is the ASCII string
``"leaf-<i>"`` (leaf hash = SHA-256(0x00 || data)).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from careledger_core import SigningKey, leaf_hash

Doc = dict[str, Any]

TEST_SEED = hashlib.sha256(b"careledger test key").digest()
OTHER_SEED = hashlib.sha256(b"careledger other key").digest()
TEST_KEY = SigningKey.from_seed(TEST_SEED)
OTHER_KEY = SigningKey.from_seed(OTHER_SEED)
NOTE_NAME = "careledger.test"
CHAIN_ID = "careledger.test/careledger.access-events/0"
MERKLE_SIZES = (*range(10), 1000)
BIG = 1000


def merkle_leaf_data(i: int) -> bytes:
    return f"leaf-{i}".encode("ascii")


def merkle_leaves(n: int) -> list[bytes]:
    return [leaf_hash(merkle_leaf_data(i)) for i in range(n)]


def _hex_list(items: tuple[bytes, ...] | list[bytes]) -> list[str]:
    return [h.hex() for h in items]


def _wire(doc: Doc) -> bytes:
    """How a producer would send it: compact JSON in insertion (not sorted) order."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
