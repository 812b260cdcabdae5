"""The processor side of the fence (ADR 0031): which partitions a processor may load
(and so claim), the settle wait after a claim, and what a fenced write leaves behind."""

from __future__ import annotations

import time

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
