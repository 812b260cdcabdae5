"""The load `careledger benchmark` offers: its events, their pacing, and retries.

* :class:`EventPool`: the same events for every mode of a run, event ``i`` always the
  same. A pool of simulated hospital events (``producers.simulator``, ~11k events/s: too
  slow to feed 15k events/s live) is reused round-robin, each copy with an event id of
  its own derived from ``(seed, i)``, so a million distinct events cost a pool's memory.
* :class:`TokenBucket` and :func:`produce_paced`: events offered at a target rate by one
  or more SDK producers (threads), each paced by a token bucket over the clock; a thread
  that falls behind by more than the bucket's capacity loses the difference instead of
  bursting it, so the *achieved* offered rate is measured and reported next to the target.
* :func:`produce_backlog`: events sent as fast as one SDK producer can, then flushed.
* :func:`retry_with_deadline` and :func:`leader_not_ready`: a freshly created topic may
  still be electing its partition leaders (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE,
  UNKNOWN_TOPIC_OR_PART); setting a pipeline up retries those until a deadline instead of
  failing.

Events are produced with the real SDK (``careledger.kafka.producer``) and the settings'
source key, as the pipeline uses them: signed at the source, in the SDK's record format.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from careledger.config import Settings
from careledger_core.event import AccessEvent

__all__ = [
    "EventPool",
    "Produced",
    "TokenBucket",
    "event_id_for",
    "leader_not_ready",
    "produce_backlog",
    "produce_paced",
    "retry_with_deadline",
    "split_rate",
    "threads_for",
]

T = TypeVar("T")

#: how long a thread may fall behind its schedule before the shortfall is dropped
BUCKET_SECONDS = 0.1
#: the pacing loop never sleeps less than this (the scheduler's granularity)
MIN_SLEEP_S = 0.0005
#: Kafka error names and phrases of a partition whose leader is not serving it yet
_LEADER_MARKERS = (
    "NOT_LEADER",
    "LEADER_NOT_AVAILABLE",
    "UNKNOWN_TOPIC_OR_PART",
    "Not leader for partition",
    "Leader not available",
    "Unknown topic or partition",
    "no partition leader",
)
#: careledger error codes of a Kafka that is reachable but not ready for the topic yet
_NOT_READY_CODES = frozenset({"KAFKA_UNAVAILABLE", "KAFKA_TIMEOUT", "KAFKA_TOPIC_MISSING"})


# --------------------------------------------------------------------------- events


def event_id_for(seed: int, index: int) -> str:
    """The event id of event ``index`` of a run seeded ``seed`` (a random-looking v4 UUID)."""
    digest = hashlib.blake2b(f"careledger-bench:{seed}:{index}".encode(), digest_size=16)
    return str(uuid.UUID(bytes=digest.digest(), version=4))


class EventPool:
    """Event ``i`` of a run: simulated event ``i mod size`` with an id of its own."""

    def __init__(self, size: int, seed: int = 1) -> None:
        from producers.simulator import HospitalModel, simulate

        if size < 1:
            raise ValueError("the pool needs at least one event")
        self.seed = seed
        self._pool: list[AccessEvent] = list(
            simulate(HospitalModel(seed=seed), count=size, seed=seed)
        )

    @classmethod
    def of(cls, events: list[AccessEvent], seed: int = 1) -> EventPool:
        """A pool of given events (tests)."""
        pool = cls.__new__(cls)
        pool.seed = seed
        pool._pool = list(events)
        if not pool._pool:
            raise ValueError("the pool needs at least one event")
        return pool

    def __len__(self) -> int:
        return len(self._pool)

    def event(self, index: int) -> AccessEvent:
        base = self._pool[index % len(self._pool)]
        return msgspec.structs.replace(base, event_id=event_id_for(self.seed, index))


# --------------------------------------------------------------------------- pacing


class TokenBucket:
    """Tokens accrue at ``rate`` per second up to ``capacity``; one token, one event.

    Starts empty at ``now``: the first event goes out ``1/rate`` seconds later, so ``n``
    events take ``n/rate`` seconds when the sender keeps up. A sender that stalls longer
    than ``capacity/rate`` loses the excess tokens (no catch-up burst).
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if capacity < 1:
            raise ValueError("capacity must be at least one token")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = 0.0
        self.dropped = 0.0  # tokens lost to the capacity (the sender fell behind)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            tokens = self.tokens + (now - self._last) * self.rate
            if tokens > self.capacity:
                self.dropped += tokens - self.capacity
                tokens = self.capacity
            self.tokens = tokens
            self._last = now

    def take(self, now: float, at_most: int) -> int:
        """How many events may go out at ``now`` (at most ``at_most``); takes their tokens."""
        self._refill(now)
        n = max(min(int(self.tokens), at_most), 0)
        self.tokens -= n
        return n

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the next token."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


def split_rate(rate: float, threads: int) -> list[float]:
    """Each thread's share of ``rate``."""
    if threads < 1:
        raise ValueError("at least one thread")
    return [rate / threads] * threads


def threads_for(
    rate: float, per_thread: float | None, *, headroom: float = 0.5, most: int = 4
) -> int:
    """Threads needed to offer ``rate`` when one thread sends ``per_thread`` events/s flat
    out: each thread is asked for at most ``headroom`` of that (it shares the machine with
    the pipeline). Unknown ``per_thread``: one."""
    if not per_thread or per_thread <= 0:
        return 1
    return max(1, min(most, math.ceil(rate / (per_thread * headroom))))


@dataclass(frozen=True)
class Produced:
    """What a producing step did."""

    events: int
    seconds: float  # first send to last send (paced) or to the end of the flush (backlog)
    threads: int
    target_rate: float | None = None  # None: as fast as possible
    dropped: int = 0  # paced: events the schedule lost because a thread fell behind
    finished: float = 0.0  # time.monotonic() of the last send
    #: paced: the wall-clock time (time.time()) each event was handed to ``send``, by its
    #: index from the first event produced (0.0: not sent)
    sent_at: array[float] | None = field(default=None, repr=False, compare=False)

    @property
    def rate(self) -> float | None:
        return self.events / self.seconds if self.seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "threads": self.threads,
            "target_events_per_s": self.target_rate,
            "offered_events_per_s": None if self.rate is None else round(self.rate, 1),
            "schedule_dropped_events": self.dropped,
        }


def _producer(settings: Settings) -> Any:
    from careledger.kafka.producer import AccessEventProducer
    from careledger.kafka.security import ADMIN

    return AccessEventProducer(settings, principal=ADMIN)


def produce_backlog(settings: Settings, pool: EventPool, start: int, count: int) -> Produced:
    """Send events ``start .. start+count-1`` as fast as one producer can; flush."""
    began = time.monotonic()
    producer = _producer(settings)
    try:
        for i in range(start, start + count):
            producer.send(pool.event(i))
        producer.flush(timeout=300.0)
    finally:
        producer.close(timeout=60.0)
    ended = time.monotonic()
    return Produced(count, ended - began, 1, finished=ended)


def produce_paced(
    settings: Settings,
    pool: EventPool,
    start: int,
    count: int,
    rate: float,
    threads: int = 1,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Produced:
    """Offer events ``start .. start+count-1`` at ``rate`` events/s, spread over
    ``threads`` producers (thread ``k`` sends the events ``i`` with ``i % threads == k``),
    each paced by a :class:`TokenBucket`. Every producer is flushed and closed before this
    returns; ``seconds`` runs from the common start to the last send, ``sent_at`` holds
    each event's send time. Whatever a thread raises (e.g. ``DeliveryError``) is raised
    here."""
    threads = max(1, min(threads, count)) if count else 1
    rates = split_rate(rate, threads)
    producers = [_producer(settings) for _ in range(threads)]
    ready = threading.Barrier(threads + 1)
    t0: list[float] = []
    last_send = [0.0] * threads
    dropped = [0.0] * threads
    sent_at = array("d", bytes(8 * count))

    def run(k: int) -> None:
        producer = producers[k]
        mine = range(start + k, start + count, threads)
        ready.wait()
        began = t0[0]
        bucket = TokenBucket(rates[k], max(1.0, rates[k] * BUCKET_SECONDS), began)
        position = 0
        total = len(mine)
        while position < total:
            now = clock()
            n = bucket.take(now, total - position)
            if n == 0:
                time.sleep(max(bucket.wait(now), MIN_SLEEP_S))
                continue
            wall = time.time()
            for i in mine[position : position + n]:
                sent_at[i - start] = wall
                producer.send(pool.event(i))
            position += n
            last_send[k] = clock()
        dropped[k] = bucket.dropped
        producer.flush(timeout=300.0)

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-producer") as ex:
            futures = [ex.submit(run, k) for k in range(threads)]
            t0.append(clock())
            ready.wait()
            for fut in futures:
                fut.result()
    finally:
        for producer in producers:
            producer.close(timeout=60.0)
    end = max(last_send) if any(last_send) else t0[0]
    return Produced(
        count, end - t0[0], threads, rate, int(sum(dropped)), finished=end, sent_at=sent_at
    )


# --------------------------------------------------------------------------- retries


def leader_not_ready(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a partition's leader is
    not serving it yet, or the topic is not known to the broker yet: transient right
    after a topic is created."""
    from confluent_kafka import KafkaError, KafkaException

    from careledger_core.errors import CareledgerError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KafkaException) and current.args:
            err = current.args[0]
            if isinstance(err, KafkaError) and (
                err.code()
                in (
                    KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                    KafkaError._UNKNOWN_PARTITION,
                )
            ):
                return True
        if isinstance(current, CareledgerError) and current.code in _NOT_READY_CODES:
            return True
        text = str(current)
        if any(marker.lower() in text.lower() for marker in _LEADER_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_with_deadline(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    transient: Callable[[BaseException], bool],
    timeout_s: float,
    pause_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, called again while it raises one of ``retry_on`` that ``transient``
    accepts, pausing ``pause_s`` between calls, until ``timeout_s`` have passed; then (or
    at once for any other error) the last error is raised."""
    deadline = clock() + timeout_s
    while True:
        try:
            return fn()
        except retry_on as exc:
            if not transient(exc) or clock() + pause_s > deadline:
                raise
        sleep(pause_s)
