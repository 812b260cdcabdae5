"""Chains verified in worker processes (``careledger verify --processes N``).

Each chain is verified on its own (``verify_chain`` links a chain's blocks only to each
other), so the chains of one run are spread over a pool of worker processes, each with
its own ClickHouse connection opened by ``open_store``. The reports come back in chain
order, whatever order the workers finish in, so a run's findings are those of the
sequential run, in the same order. Meanwhile the calling process is free for the checks
over the whole ledger (the source checks), which run alongside.

Workers are forked where the platform can (Linux): they inherit the imported code and
the trusted keys, and start in milliseconds. A worker never touches the parent's
connection: it opens its own in its initializer.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from careledger.storage.store import ChainStore
from careledger_core.signing import PublicKey, TrustedKeys
from verifiers.integrity.fsck import ChainReport, VerifiedHead, verify_chain

#: the worker's store and keys, set by ``_init`` in each worker process
_WORKER: dict[str, Any] = {}


def default_processes(chains: int) -> int:
    """One worker per chain, at most one per core this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(chains, cores))


def _init(open_store: Callable[[], ChainStore], keys: Sequence[bytes]) -> None:
    _WORKER["store"] = open_store()
    _WORKER["keys"] = TrustedKeys(PublicKey(raw) for raw in keys)


def _verify(
    chain: str, from_height: int, known: VerifiedHead | None, max_findings: int
) -> ChainReport:
    store: ChainStore = _WORKER["store"]
    return verify_chain(
        store,
        chain,
        _WORKER["keys"],
        from_height=from_height,
        known_head=known,
        max_findings=max_findings,
        kind=store.kind_of(chain),
    )


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


class ChainPool:
    """A pool of ``processes`` workers verifying chains; ``submit`` all chains, then
    ``reports`` yields their reports in the order submitted."""

    def __init__(
        self, processes: int, open_store: Callable[[], ChainStore], keys: TrustedKeys
    ) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=_context(),
            initializer=_init,
            initargs=(open_store, [k.raw for k in keys.values()]),
        )
        self._futures: list[Future[ChainReport]] = []

    def submit(
        self,
        chains: Sequence[str],
        from_heights: Mapping[str, int],
        known: Mapping[str, VerifiedHead],
        max_findings: int,
    ) -> None:
        for chain in chains:
            self._futures.append(
                self._pool.submit(
                    _verify, chain, from_heights.get(chain, 0), known.get(chain), max_findings
                )
            )

    def reports(self) -> Iterator[ChainReport]:
        """The reports in submission order; a worker's exception (``StorageError``)
        is raised here, at its chain."""
        for future in self._futures:
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
