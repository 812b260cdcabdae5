"""The values the processor passes between its parts: a partition, a Kafka record as
the chainer sees it (decoupled from faust) and a chain's new head after a write."""

from __future__ import annotations

from dataclasses import dataclass

from careledger_core.block import BlockHeader
from careledger_core.chain_tree import ChainTree
from processors.sources import LOG_APPEND_TIME

Part = tuple[str, int]  # (topic, partition): one chain each


@dataclass(frozen=True, slots=True)
class ChainUpdate:
    """A chain's new head after a write: what its checkpoint is made of (ADR 0012).

    ``tree`` is the RFC 6962 tree over the chain's block hashes up to ``head``;
    ``proof`` the RFC 9162 consistency proof from the tree of ``old_size`` blocks (the
    previous checkpoint this processor published for the chain, or the stored head it
    resumed from) to ``tree``.
    """

    head: BlockHeader
    tree: ChainTree
    old_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka record the chainer needs (decoupled from faust)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float
    topic: str = ""  # "" = the access-events topic
    #: 1: the broker set ``timestamp`` (LogAppendTime); 0: the producer did (CreateTime)
    timestamp_type: int = LOG_APPEND_TIME
