"""The source registry, followed incrementally in the background (issue 12, ADR 0027).

The processor used to re-read the whole sources topic, heartbeats included, on its
event loop whenever a record named a key id it did not know: a cost that grew with the
topic (every heartbeat ever sent) and stalled every partition meanwhile.

``RegistryFollower`` reads the sources topic from where it stopped (the next offset of
every partition), on a thread of its own: every ``poll_interval_s``, and sooner when
asked (``request``), but never more often than every ``min_interval_s``. Heartbeats
are counted and dropped; key events that verify against the trusted registrar keys
are kept (a handful per key, their registrations and revocations), so memory is bounded
by the keys, not by the records. Each read swaps in a new ``SourceRegistry`` built from
the key events kept, so a reader on another thread always sees a whole registry.

Freshness: a read that *started* at wall time ``t`` has seen every key event the broker
appended before ``t`` (the topic's end is taken after ``t``). A record appended at
``appended_at`` is decided on the registry only once a read started at or after
``appended_at + margin_s`` (``fresh_for``); until then the gate asks the processor to
wait (off the event loop, ``wait_fresh``, at most ``wait_s``) for one more read. So an
unknown key id costs at most one incremental read, rate-limited, never a full re-read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

from careledger_core.errors import CareledgerError, ValidationError
from careledger_core.reference import SourceHeartbeatBody, SourceKeyBody, decode_reference
from careledger_core.signing import PublicKey
from careledger_core.source import (
    KeyEventStatement,
    SourceAuthError,
    SourceRegistry,
    verify_key_event,
)

log = logging.getLogger("careledger.processor.registry")

#: whether to hold a record read: (partition, offset, value) -> keep it
Keep = Callable[[int, int, bytes | None], bool]
#: ``read_from(start, keep)``: the records from ``start`` (next offset per partition)
#: that ``keep`` keeps (the others are never held), and the next offset of every partition
ReadFrom = Callable[
    [Mapping[int, int], Keep], tuple[list[tuple[int, int, bytes | None]], dict[int, int]]
]

DEFAULT_POLL_INTERVAL_S: Final = 5.0
DEFAULT_MIN_INTERVAL_S: Final = 1.0
DEFAULT_MARGIN_S: Final = 0.5


class RegistryFollower:
    def __init__(
        self,
        read_from: ReadFrom,
        registrars: Mapping[str, PublicKey],
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        margin_s: float = DEFAULT_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read_from = read_from
        self._registrars = dict(registrars)
        self.poll_interval_s = poll_interval_s
        self.min_interval_s = min_interval_s
        self.margin_s = margin_s
        self._clock = clock
        self._read_lock = threading.Lock()  # one read at a time
        self._cond = threading.Condition()  # guards the state below, signals reads
        self._offsets: dict[int, int] = {}
        self._events: list[KeyEventStatement] = []
        self._registry = SourceRegistry()
        #: wall time the last successful read started (None: never read)
        self.read_started_at: float | None = None
        self._last_attempt = -1e18  # monotonic
        self.reads = 0
        self.failed_reads = 0
        self.records_read = 0
        self.heartbeats_skipped = 0
        self.problems = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registry(self) -> SourceRegistry:
        """The registry as of the last read (never mutated once published)."""
        return self._registry

    @property
    def offsets(self) -> dict[int, int]:
        with self._cond:
            return dict(self._offsets)

    @property
    def key_events(self) -> int:
        return len(self._events)

    # ------------------------------------------------------------- reading
    def poll(self) -> bool:
        """One incremental read, on the caller's thread. False if the topic could not
        be read (what was known is kept)."""
        with self._read_lock:
            started = self._clock()
            self._last_attempt = time.monotonic()
            with self._cond:
                start = dict(self._offsets)
            added: list[tuple[int, int, KeyEventStatement]] = []
            seen = 0

            def keep(partition: int, offset: int, value: bytes | None) -> bool:
                # each record is judged as it is read and none is held: what a read
                # keeps is bounded by the key events, not by the records (heartbeats)
                nonlocal seen
                seen += 1
                st = self._key_event((partition, offset, value))
                if st is not None:
                    added.append((partition, offset, st))
                return False

            try:
                _none, ends = self._read_from(start, keep)
            except CareledgerError as exc:
                self.failed_reads += 1
                log.warning("cannot read the source registry: %s", exc.code)
                return False
            with self._cond:
                for p, end in ends.items():
                    self._offsets[p] = end
                self.records_read += seen
                self.reads += 1
                if added:
                    # in topic order, as ``careledger.sources.read_sources`` applies them
                    self._events.extend(st for _p, _o, st in sorted(added, key=lambda a: a[:2]))
                    self._registry = SourceRegistry(self._events)
                    log.info("source registry: %d keys", len(self._registry))
                self.read_started_at = started
                self._cond.notify_all()
            return True

    def _key_event(self, record: tuple[int, int, bytes | None]) -> KeyEventStatement | None:
        partition, offset, value = record
        try:
            if value is None:
                raise ValidationError("empty record (a tombstone)", code="REFERENCE_INVALID")
            ref = decode_reference(value)
        except CareledgerError as exc:
            self._problem(partition, offset, exc.code)
            return None
        body = ref.parsed
        if isinstance(body, SourceHeartbeatBody):
            self.heartbeats_skipped += 1
            return None
        if not isinstance(body, SourceKeyBody):
            self._problem(partition, offset, "WRONG_KIND")
            return None
        try:
            verify_key_event(body.statement, body.signature, self._registrars)
        except SourceAuthError as exc:
            self._problem(partition, offset, exc.code)
            return None
        return body.statement

    def _problem(self, partition: int, offset: int, code: str) -> None:
        self.problems += 1
        log.warning(
            "source registry: skipped the record at partition %d offset %d: %s",
            partition,
            offset,
            code,
        )

    # ------------------------------------------------------------- freshness
    def fresh_for(self, appended_at: float) -> bool:
        """Has a read started after a record appended at ``appended_at`` (plus margin)?"""
        started = self.read_started_at
        return started is not None and started >= appended_at + self.margin_s

    def request(self) -> None:
        """Ask the background thread for a read (no sooner than ``min_interval_s``)."""
        self._wake.set()

    def wait_fresh(self, appended_at: float, timeout: float) -> bool:
        """Block (a worker thread, never the event loop) until a read fresh for
        ``appended_at`` has completed, at most ``timeout`` s. Without a running
        background thread the read is done here, rate-limited the same way."""
        deadline = time.monotonic() + timeout
        while not self.fresh_for(appended_at):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._thread is None or not self._thread.is_alive():
                pause = self.min_interval_s - (time.monotonic() - self._last_attempt)
                if pause > 0:
                    time.sleep(min(pause, remaining))
                    continue
                self.poll()
                continue
            self.request()
            with self._cond:
                self._cond.wait(min(remaining, 0.5))
        return True

    # ------------------------------------------------------------- background
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="careledger-registry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            if self._stop.is_set():
                return
            pause = self.min_interval_s - (time.monotonic() - self._last_attempt)
            if pause > 0 and self._stop.wait(pause):
                return
            self._wake.clear()
            self.poll()
