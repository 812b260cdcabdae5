"""``audit --follow`` in three threads (``FollowPipeline``): reading, deciding, storing.

A ``Follower`` cycle waits on ClickHouse and Kafka for most of its round trips (heads,
events, reviews, decision and alert inserts, the alerts' delivery). Here a **reader**
thread polls (``Follower.read``) every ``interval_s`` from its own cursors while the
main thread decides what was read before (``Follower.decide``: what was read since its
last cycle, merged into one cycle of at most ``max_cycle_events``, the reader waiting
while a cycle's worth is queued), and a **writer** thread stores each decided
cycle (``write_cycle``) while the next one is read and decided.

What is durable, and in which order (ADR 0029): a cycle's alert rows, then its alerts
published, then its decision rows (one INSERT: all or none; the commit point); cycles one
after the other in the order they were decided, the writer finishing (or retrying) one
before it starts the next. Reads change nothing durable. A restarted follower resumes
after the highest block whose decisions are stored (``AuditStore.decided_heights``), so
a crash at any point leaves a prefix of cycles committed: the cycles read or decided but
not committed are read and decided again, each event once, and their alerts stored
again under the same ids (an upsert: one alert) and published again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from careledger.storage.backend import StorageError

from .follow import CycleWrites, Follower, ReadBatch, write_cycle
from .store import AuditSource

log = logging.getLogger("careledger.auditor")

#: decided cycles waiting for the writer (then the main thread waits: bounded memory)
_QUEUED: Final = 2


class FollowPipeline:
    """Read, decide and store a follower's cycles on three threads (module docstring).

    ``step`` decides on the calling thread; ``close`` stops the reader and waits for the
    writer to store what was decided. ``writer_store``: the store the writer thread uses
    (its own connection, so inserts do not wait for reads); default the follower's."""

    def __init__(
        self,
        follower: Follower,
        *,
        interval_s: float,
        writer_store: AuditSource | None = None,
    ) -> None:
        self.follower = follower
        self.interval_s = interval_s
        self.writer_store = writer_store if writer_store is not None else follower.store
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._read: list[ReadBatch] = []
        self._held: ReadBatch | None = None  # read, not decided (a failed decide)
        self._polls = 0  # polls the reader completed
        self._seen = 0  # ... when the last cycle started
        self._writes: queue.Queue[CycleWrites | None] = queue.Queue(maxsize=_QUEUED)
        self._failure: BaseException | None = None
        self.read_error: str | None = None
        self.write_error: str | None = None
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._reader is not None

    # -- threads
    def start(self) -> None:
        """Resume after what earlier runs stored, then start reading and writing."""
        if not self.follower.started:
            self.follower._start()
        cursors = dict(self.follower.cursors)
        self._reader = threading.Thread(
            target=self._guard, args=(self._read_loop, cursors), name="audit-read", daemon=True
        )
        self._writer = threading.Thread(
            target=self._guard, args=(self._write_loop,), name="audit-write", daemon=True
        )
        self._reader.start()
        self._writer.start()

    def _guard(self, loop: Callable[..., None], *args: object) -> None:
        try:
            loop(*args)
        except BaseException as exc:  # a bug: the main thread raises it (clean-up re-raises)
            self._failure = exc
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            raise

    def _queued_full(self) -> bool:
        """A cycle's worth of events is read and not decided yet (the reader waits: a
        follower catching up holds about one cycle ahead, ``max_cycle_events``)."""
        cap = self.follower.max_cycle_events
        return cap is not None and cap > 0 and sum(len(b.events) for b in self._read) >= cap

    def _read_loop(self, cursors: dict[str, int]) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: not self._queued_full() or self._stop.is_set())
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                batch = self.follower.read(cursors)
                self.read_error = None
            except StorageError as exc:
                self.read_error = exc.message
                log.error("audit read failed: %s (retrying)", exc.message)
            else:
                cursors.update(batch.cursors)
                with self._cond:
                    if batch.cursors:
                        self._read.append(batch)
                    self._polls += 1
                    self._cond.notify_all()
            # a poll every interval, not an interval after each read
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _write_loop(self) -> None:
        while True:
            w = self._writes.get()
            if w is None:
                return
            while True:
                try:
                    write_cycle(w, self.writer_store, self.follower.publisher)
                    self.write_error = None
                    break
                except StorageError as exc:
                    # the steps done are not repeated; nothing later is stored before it
                    self.write_error = exc.message
                    log.error("audit write failed: %s (retrying)", exc.message)
                    time.sleep(self.interval_s)

    def _check(self) -> None:
        if self._failure is not None:
            raise RuntimeError("an audit pipeline thread failed") from self._failure

    # -- the main thread
    def step(self, timeout_s: float) -> int:
        """One cycle: wait (up to ``timeout_s``; else return 0) for a poll newer than
        the last cycle (or one left over), decide what was read since the last cycle (up
        to ``max_cycle_events``) and hand it to the writer; returns the number of
        decisions. Raises StorageError if reading the reviews or the warm-up fails (what
        was read is kept for the next step)."""
        self._check()
        with self._cond:
            if self._polls == self._seen and not self._read:
                self._cond.wait_for(
                    lambda: self._polls != self._seen or self._failure is not None, timeout_s
                )
            self._check()
            if self._polls == self._seen and not self._read:
                return 0
            self._seen = self._polls
            batch = self._held
            self._held = None
            # the polls read since, merged into one cycle up to ``max_cycle_events``
            # (at least one poll); the rest is the next cycle's
            cap = self.follower.max_cycle_events
            size = 0 if batch is None else len(batch.events)
            while self._read:
                later = self._read[0]
                if batch is not None and cap and size + len(later.events) > cap:
                    break
                del self._read[0]
                size += len(later.events)
                if batch is None:
                    batch = later
                else:
                    batch.extend(later)
            self._cond.notify_all()  # the reader may read again
        if batch is None:
            batch = ReadBatch({}, [], [])  # a poll with nothing new (reviews still read)
        try:
            n = self.follower.decide(batch)
        except StorageError:
            self._held = batch  # nothing was decided: decide it again next step
            raise
        self._hand_over()
        return n

    def _hand_over(self) -> None:
        try:
            writes = self.follower.take_writes()
        except StorageError as exc:  # the flags stay pending: grouped at the next step
            log.error("audit alerts not grouped yet: %s (retrying)", exc.message)
            return
        for w in writes:
            while True:
                self._check()
                try:
                    self._writes.put(w, timeout=1.0)
                    break
                except queue.Full:
                    continue

    def close(self, timeout_s: float = 30.0) -> bool:
        """Stop reading, store what was decided (up to ``timeout_s``); True if all of it
        was stored. What was not is decided again by the next run (module docstring)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._reader is not None:
            self._reader.join(timeout_s)
        stored = True
        if self._writer is not None and self._writer.is_alive():
            try:
                self._writes.put(None, timeout=timeout_s)
            except queue.Full:
                stored = False
            self._writer.join(timeout_s)
            stored = stored and not self._writer.is_alive()
        return stored and self._failure is None
