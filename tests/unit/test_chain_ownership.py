"""The processor side of the fence (ADR 0031): which partitions a processor may load
(and so claim), the settle wait after a claim, and what a fenced write leaves behind."""

from __future__ import annotations

import time

import pytest

from careledger.storage.backend import StorageError
from careledger.storage.store import ChainHead
from processors.ownership import ChainOwnership

P0, P1 = ("events", 0), ("events", 1)


class _Store:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def claim(self, chain_id: str, owner: str) -> int:
        self.calls.append(("claim", chain_id))
        return len(self.calls)

    def head(self, chain_id: str) -> None:
        self.calls.append(("head", chain_id))


def test_before_any_assignment_every_partition_may_be_loaded() -> None:
    own = ChainOwnership("app")
    assert own.may_load(P0) and own.may_load(P1)


def test_a_revoked_partition_may_not_be_loaded_so_it_cannot_claim_from_its_new_owner() -> None:
    own = ChainOwnership("app")
    own.assigned({P0, P1})
    own.revoked({P1})
    assert own.may_load(P0) and not own.may_load(P1)
    own.assigned({P1})
    assert own.may_load(P1)


def test_a_fenced_partition_stays_off_until_assigned_again() -> None:
    own = ChainOwnership("app")
    own.assigned({P0})
    own.lost({P0}, ["c/0"])
    assert not own.may_load(P0) and own.fenced_writes == 1
    own.assigned({P0})
    assert own.may_load(P0)


def test_the_claim_comes_before_the_head() -> None:
    own, store = ChainOwnership("app"), _Store()
    own.claim_then_head(store, "c/0")  # type: ignore[arg-type]
    assert store.calls == [("claim", "c/0"), ("head", "c/0")]


def test_the_first_write_after_a_claim_waits_for_it_to_settle_and_later_ones_do_not() -> None:
    from careledger.storage.fencing import CLAIM_SETTLE_S

    own, store = ChainOwnership("app"), _Store()
    own.claim(store, "c/0")  # type: ignore[arg-type]
    started = time.monotonic()
    own.settle({"c/0"})
    assert time.monotonic() - started >= CLAIM_SETTLE_S * 0.9
    started = time.monotonic()
    own.settle({"c/0"})
    own.settle(set())
    own.settle({"never-claimed"})
    assert time.monotonic() - started < CLAIM_SETTLE_S / 2


def test_owners_differ_per_process_run() -> None:
    assert ChainOwnership("app").owner != ChainOwnership("app").owner


# ADR 0030 addendum: a chain read again after a failed write, maybe from another replica


def _head(height: int) -> ChainHead:
    return ChainHead("c/0", height, "ab" * 32, height * 10)


def test_a_head_below_a_block_this_processor_stored_is_refused_so_no_fork_is_written() -> None:
    own = ChainOwnership("app")
    own.stored([("c/0", 4), ("c/0", 5)])
    own.failed(["c/0"])
    for behind in (None, _head(3), _head(4)):
        with pytest.raises(StorageError, match="below this processor's own stored block"):
            own.check_head("c/0", behind)
    assert own.check_head("c/0", _head(5)) is True  # caught up: delete the in-flight rows
    assert own.check_head("c/0", _head(7)) is True  # the failed write itself arrived


def test_a_failed_write_asks_for_the_in_flight_delete_until_it_is_done() -> None:
    own = ChainOwnership("app")
    assert own.check_head("c/0", None) is False
    own.failed(["c/0", "c/1"])
    assert own.check_head("c/0", None) is True
    own.discarded("c/0")
    assert own.check_head("c/0", None) is False
    assert own.check_head("c/1", _head(2)) is True


def test_what_was_stored_is_forgotten_when_the_chain_is_revoked_or_fenced() -> None:
    # another owner may have written above it meanwhile: an old height must neither
    # hold the chain back nor let a delete reach the new owner's rows
    own = ChainOwnership("app")
    own.stored([("c/0", 9), ("c/1", 9)])
    own.failed(["c/0", "c/1"])
    own.revoked({P0}, ["c/0"])
    assert own.check_head("c/0", _head(2)) is False
    own.lost({P1}, ["c/1"])
    assert own.check_head("c/1", _head(2)) is False
