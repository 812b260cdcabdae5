"""RFC 6962 / RFC 9162 domain-separated SHA-256 hashing.

Leaves and interior nodes get different one-byte prefixes so a leaf can never be
passed off as an interior node (second-preimage attack on the tree).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "LEAF_PREFIX", "NODE_PREFIX", "leaf_hash", "node_hash"]

HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"

#: Merkle Tree Hash of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of one leaf (one canonical event)."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): the hash of an interior node."""
    return _sha256(NODE_PREFIX + left + right).digest()
