"""Opening a sealed ledger's batch records, or checking a ledger's batch records in
clear, ahead of the event loop, in a worker process (ADR 0039, ADR 0042).

A sealed ledger's processor spent most of its event loop opening what sources sealed to
the ingest key: per event, a decryption, a JSON decode, a commitment and the whole
event's validation (``careledger_core.sealed_event.open_ingest_batch``). That work needs
nothing but the ingest key and the record's bytes, so :class:`OpenAhead` hands each take's
records to a worker process as the take arrives, and the event loop, when it reaches a
record, finds it opened: it reads the record again without hashing it (the events' leaf
hashes and the root check are the worker's; one leaf, drawn at random, is recomputed),
reads the documents' columns (one call), checks each opening against the commitment the
source signed, and only seals under the patients' data keys (the key store stays in the
processor).

The worker is an optimisation, never a source of truth or of failure:

* an opening that does not open its document's commitment, or results that do not fit
  the record (an index missing or doubled, a leaf count or the recomputed leaf that
  differs), make the loop open the record in full itself (and count it:
  ``disagreements``); what it takes on trust (the validation, the leaves) ``verify``
  recomputes from the stored bytes;
* a worker that died, hangs past ``wait_s`` or cannot be started makes the loop open
  the record itself, and the pool is started again after a back-off
  (``restarts``, one log line each time, no record content);
* a record the worker could not read is opened in the loop, which names the problem as it
  always did; the same code opens in both places, so outcome and reasons are the same
  (``tests/unit/test_opening_ahead.py`` holds them equal on hostile batches).

A ledger in clear has its batch records *checked* ahead the same way (ADR 0042):
the worker computes the events' leaf hashes, checks the batch root and validates every
event in full (``careledger_core.event_batch.decode_canonical_events``); the loop reads
the record again (``read_checked_batch_record``), recomputes one leaf drawn at random,
and reads only each event's stored columns (``read_access_columns``). A record the worker
found invalid, or an answer that does not fit, is taken by the loop as before, which
names each problem: the same outcome either way.

The worker of a sealed ledger holds the ingest private key in memory, as the processor
does, and nothing else (a checking worker holds no key at all): no data key, no key
store session, no store or Kafka connection. It is a child of the processor, a new
interpreter fed over pipes (``processors.worker_pipes``: nothing of the processor's
threads is copied), and exits when the processor does, killed or not (its input
closes; busy, it sees its parent gone).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final

import msgspec

from careledger_core.batch_record import open_batch_record
from careledger_core.errors import CareledgerError
from careledger_core.event_batch import decode_canonical_events
from careledger_core.sealed_event import ingest_key, open_ingest_batch
from careledger_core.sealing import SealError
from processors.worker_pipes import PipePool, serve_frames

__all__ = [
    "AheadResult",
    "CheckResult",
    "OpenAhead",
    "check_record",
    "decode_check",
    "decode_result",
    "open_record",
]

log = logging.getLogger("careledger.processor")

#: how long the loop waits for a record's opening before it opens the record itself
WAIT_S: Final = 30.0
#: the first back-off before a pool that broke is started again; doubled up to the max
RESTART_BACKOFF_S: Final = 5.0
RESTART_BACKOFF_MAX_S: Final = 300.0

#: what the worker returns for a record: the opened events (index, salt, body, key
#: subject's system and id, actor id), those refused alone (index, code, reason, field)
#: and every event's leaf hash (the record's root was checked against them)
AheadResult = tuple[
    list[tuple[int, bytes, bytes, str, str, str]],
    list[tuple[int, str, str, str]],
    list[bytes],
]
_RESULT: Final = msgspec.msgpack.Decoder(AheadResult)
#: what a checking worker returns for a record in clear: the record's SHA-256 (what the
#: answer is about), every event's leaf hash (the record's root was checked against them)
#: and whether every event is valid, canonical and at most ``max_event_bytes`` long
CheckResult = tuple[bytes, list[bytes], bool]
_CHECK: Final = msgspec.msgpack.Decoder(CheckResult)
_ENCODER: Final = msgspec.msgpack.Encoder()

# the worker's state (set by ``_setup`` in the worker process only)
_private: bytes = b""
_max_event_bytes: int = 0
_opening = False
_shared: dict[bytes, bytes] = {}


def serve() -> None:
    """A worker process's main (started by :class:`processors.worker_pipes.PipePool`)."""
    # Ctrl-C reaches the whole process group: the processor stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve_frames(_setup, _work)


def _setup(settings: Any) -> bool:
    """The worker's settings: ready with the ingest key when it is to open sealed
    records."""
    global _private, _max_event_bytes, _opening
    private, _max_event_bytes, _opening = settings
    _private = bytes(private)
    return bool(_private) or not _opening


def _work(value: bytes) -> bytes | None:
    return _open_record(value) if _opening else _check_record(value)


def _open_record(value: bytes) -> bytes | None:
    """In the worker: :func:`open_record` with the worker's key."""
    return open_record(value, _private, _max_event_bytes, _shared)


def open_record(
    value: bytes, private: bytes, max_event_bytes: int, shared_keys: dict[bytes, bytes]
) -> bytes | None:
    """A batch record's events opened (:data:`AheadResult`, msgpack), or None for a
    record that is not a well-formed batch of sealed events, or whose ephemeral key is
    refused (the loop says why when it reaches it). ``shared_keys``: a cache of the
    records' ingest keys by ephemeral key."""
    try:
        opened = open_batch_record(value)
    except CareledgerError:
        return None
    if not opened.sealed or not opened.sealed_key:
        return None
    shared = shared_keys.get(opened.sealed_key)
    if shared is None:
        try:
            shared = ingest_key(opened.sealed_key, private)
        except SealError:
            return None
        if len(shared_keys) >= 1024:
            shared_keys.clear()
        shared_keys[opened.sealed_key] = shared
    openings, refused = open_ingest_batch(
        shared, opened.events, opened.leaf_hashes, opened.sealed, max_event_bytes
    )
    return _ENCODER.encode(
        (
            [(o.index, o.salt, o.body, o.subject[0], o.subject[1], o.actor_id) for o in openings],
            refused,
            list(opened.leaf_hashes),
        )
    )


def _check_record(value: bytes) -> bytes | None:
    """In the worker: :func:`check_record`."""
    return check_record(value, _max_event_bytes)


def check_record(value: bytes, max_event_bytes: int) -> bytes | None:
    """A batch record of events in clear checked (:data:`CheckResult`, msgpack), or None
    for a record that is not a well-formed batch of events in clear, or whose events are
    not the signed batch (the loop says why when it reaches it)."""
    try:
        opened = open_batch_record(value)
    except CareledgerError:
        return None
    if opened.sealed or opened.sealed_key:
        return None
    events = opened.events
    valid = (
        max(map(len, events), default=0) <= max_event_bytes
        and decode_canonical_events(events) is not None
    )
    return _ENCODER.encode((hashlib.sha256(value).digest(), list(opened.leaf_hashes), valid))


def decode_check(data: bytes) -> CheckResult | None:
    """A checking worker's result, or None if it is not one."""
    try:
        return _CHECK.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_result(data: bytes) -> AheadResult | None:
    """A worker's result, or None if it is not one (then the loop opens the record)."""
    try:
        return _RESULT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class OpenAhead:
    """A pool of worker processes opening a take's sealed batch records (with the ingest
    key) or checking its batch records in clear (``ingest_private`` None) ahead of the
    loop.

    ``submit`` (as a take arrives) hands the records over; ``result`` (sealed) or
    ``checked`` (in clear), as the loop reaches a record, waits for the worker's answer;
    ``clear`` (when the take is done) forgets what was not asked for (records skipped,
    partitions revoked)."""

    def __init__(
        self,
        ingest_private: bytes | None,
        max_event_bytes: int,
        *,
        workers: int = 1,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        #: opening sealed records (with the ingest key), else checking records in clear
        self.opening = ingest_private is not None
        self._private = ingest_private or b""
        self._max_event_bytes = max_event_bytes
        self.workers = workers
        self.wait_s = wait_s
        self._clock = clock
        self._pool: PipePool | None = None
        #: a pool starting: it, its workers' first answers, and since when
        self._starting: tuple[PipePool, list[Future[bool]], float] | None = None
        self._pending: dict[bytes, Future[bytes | None]] = {}
        self._backoff_s = RESTART_BACKOFF_S
        self._start_after = 0.0
        #: pools started again after one broke, hung or could not start
        self.restarts = 0
        #: records whose worker results the loop could not use (it opened them itself)
        self.disagreements = 0

    @property
    def running(self) -> bool:
        return self._pool is not None

    def start(self, *, wait: bool = True) -> bool:
        """Start the workers; True once they answer. ``wait``: until they do (at the
        processor's start), else False while they start (the loop does not wait for a
        new interpreter: it opens records itself meanwhile, and asks again at the next
        take). False too if they cannot start (tried again after a back-off)."""
        if self._pool is not None:
            return True
        if self._starting is None:
            if self._clock() < self._start_after:
                return False
            try:
                pool = PipePool(
                    self.workers,
                    __name__,
                    (self._private, self._max_event_bytes, self.opening),
                )
            except OSError as exc:
                self._broke(f"could not start ({type(exc).__name__})")
                return False
            self._starting = (pool, pool.ready, self._clock())
        pool, ready, since = self._starting
        try:
            if wait:
                answers = [f.result(timeout=self.wait_s) for f in ready]
            elif all(f.done() for f in ready):
                answers = [f.result() for f in ready]
            elif self._clock() - since > self.wait_s:
                raise FutureTimeout()
            else:
                return False
        except (BrokenProcessPool, FutureTimeout, OSError) as exc:
            self._broke(f"could not start ({type(exc).__name__})")
            return False
        if not all(answers):
            self._broke("could not start (no ingest key)")
            return False
        self._starting = None
        self._pool = pool
        self._backoff_s = RESTART_BACKOFF_S
        return True

    def _broke(self, why: str) -> None:
        """The pool stopped working: drop it; the loop opens records itself until it is
        started again, after a back-off."""
        self._stop()
        self._pending.clear()
        self.restarts += 1
        self._start_after = self._clock() + self._backoff_s
        log.warning(
            "the %s worker %s; %s in the event loop, starting it again in %.0f s",
            "opening" if self.opening else "checking",
            why,
            "opening sealed records" if self.opening else "checking records",
            self._backoff_s,
        )
        self._backoff_s = min(self._backoff_s * 2, RESTART_BACKOFF_MAX_S)

    def submit(self, records: Iterable[bytes]) -> None:
        """Hand records to the workers (each once: equal records open alike)."""
        if self._pool is None and not self.start(wait=False):
            return
        pool = self._pool
        assert pool is not None
        try:
            for value in records:
                if value and value not in self._pending:
                    self._pending[value] = pool.submit(value)
        except BrokenProcessPool:
            self._broke("stopped")

    def result(self, record: bytes) -> AheadResult | None:
        """The opening of a submitted record (waiting for it), or None: not submitted, not
        a batch of sealed events, or the worker failed (the loop opens it itself)."""
        data = self._answer(record) if self.opening else None
        return None if data is None else decode_result(data)

    def checked(self, record: bytes) -> CheckResult | None:
        """The checking of a submitted record in clear (waiting for it), or None: not
        submitted, not a batch of events in clear, or the worker failed (the loop checks
        it itself)."""
        data = None if self.opening else self._answer(record)
        return None if data is None else decode_check(data)

    def _answer(self, record: bytes) -> bytes | None:
        future = self._pending.get(record)
        if future is None:
            return None
        try:
            data = future.result(timeout=self.wait_s)
        except BrokenProcessPool:
            self._broke("stopped")
            return None
        except FutureTimeout:
            self._broke(f"gave no answer in {self.wait_s:.0f} s")
            return None
        return data

    def clear(self) -> None:
        """Forget the records not asked for (a take is done)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        self.clear()
        self._stop()

    def _stop(self) -> None:
        """Drop the pool (running or starting) and kill its workers: one that hangs would
        otherwise stay, holding the ingest key (closing its input stops only an idle
        one)."""
        pool, self._pool = self._pool, None
        if pool is None and self._starting is not None:
            pool = self._starting[0]
        self._starting = None
        if pool is None:
            return
        processes = pool.processes
        pool.shutdown()
        for process in processes:
            if process.is_alive():
                process.kill()
