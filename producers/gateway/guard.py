"""What keeps the gateway up under abuse (ADR 0025): replay cache, connection caps,
counts and rate-limited samples of refused peers.

* :class:`ReplayCache` remembers the signed requests seen within the signature window
  (keyed by the SHA-256 of what the signature covers), bounded in entries: a second
  copy of a signed request is refused; when the cache is full of unexpired entries new
  signed requests are refused (retry later) rather than let a replay through.
* :class:`ConnectionLimits` counts open connections per listener and per peer address.
* :class:`Refusals` counts refused peers and frames and logs at most one sample per
  :data:`SAMPLE_INTERVAL_S` per kind: peer, size and SHA-256, never the bytes.
* :class:`SourceRates` gives each authenticated source a byte rate (a token bucket):
  one noisy or compromised source cannot take the gateway from the others. Over its
  rate an HTTP request is answered 429 with Retry-After (nothing recorded: the sender
  retries); a syslog stream is read more slowly (TCP backpressure: nothing lost).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger("careledger.gateway.guard")

__all__ = [
    "SAMPLE_INTERVAL_S",
    "ClaimStore",
    "ConnectionLimits",
    "Refusals",
    "ReplayCache",
    "SourceRates",
]

#: At most one log line per kind of refusal per this many seconds.
SAMPLE_INTERVAL_S: Final = 10.0


class ClaimStore(Protocol):
    """Where signed requests are claimed: this process (:class:`ReplayCache`) or the
    gateways' shared ZooKeeper (``shared_replay.ZooKeeperReplayCache``)."""

    remote: bool

    def claim(self, digest: bytes, signed_at: int, now: float) -> bool | None: ...

    def release(self, digest: bytes, signed_at: int) -> None: ...


class ReplayCache:
    """Signed requests seen within the signature window (thread-safe).

    Entries are grouped by the request's signed timestamp (whole seconds): a group is
    dropped once its timestamp is more than ``window_s`` from the clock, when the
    signature check would refuse the request anyway. An entry is the first 8 bytes of
    the digest as an int (a collision within the window, about n^2 / 2^65, only refuses
    a request, never accepts one): ~60 bytes per entry, so the default 1,000,000 entries
    (~3,300 signed requests/s sustained over a 300 s window) take ~60 MB.
    """

    #: claims are answered in memory (a shared cache is asked over the network: off
    #: the event loop)
    remote = False

    def __init__(self, max_entries: int, window_s: float) -> None:
        if max_entries < 1:
            raise ValueError("the replay cache needs at least one entry")
        self.max_entries = max_entries
        self.window_s = window_s
        self._groups: dict[int, set[int]] = {}
        self._size = 0
        self._purged_at = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def _purge(self, now: float) -> None:
        if now - self._purged_at < 1.0:
            return
        self._purged_at = now
        for signed_at in [t for t in self._groups if t + self.window_s < now]:
            self._size -= len(self._groups.pop(signed_at))

    def claim(self, digest: bytes, signed_at: int, now: float) -> bool | None:
        """True: first sighting (now remembered); False: a replay; None: the cache is
        full of entries still inside the window (refuse for now)."""
        entry = int.from_bytes(digest[:8], "big")
        with self._lock:
            self._purge(now)
            group = self._groups.get(signed_at)
            if group is not None and entry in group:
                return False
            if self._size >= self.max_entries:
                return None
            if group is None:
                group = self._groups[signed_at] = set()
            group.add(entry)
            self._size += 1
            return True

    def release(self, digest: bytes, signed_at: int) -> None:
        """Forget a claim whose request was not recorded (so that it may be retried)."""
        entry = int.from_bytes(digest[:8], "big")
        with self._lock:
            group = self._groups.get(signed_at)
            if group is not None and entry in group:
                group.discard(entry)
                self._size -= 1


class ConnectionLimits:
    """Open connections of one listener, in total and per peer address."""

    def __init__(self, name: str, total: int, per_peer: int, refusals: Refusals) -> None:
        self.name = name
        self.total = total
        self.per_peer = per_peer
        self.refusals = refusals
        self.open = 0
        self.by_peer: dict[str, int] = {}

    def acquire(self, peer: str) -> bool:
        if self.open >= self.total:
            self.refusals.refuse(self.name, "connection-limit", peer)
            return False
        if self.by_peer.get(peer, 0) >= self.per_peer:
            self.refusals.refuse(self.name, "peer-connection-limit", peer)
            return False
        self.open += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        return True

    def release(self, peer: str) -> None:
        self.open -= 1
        left = self.by_peer.get(peer, 0) - 1
        if left > 0:
            self.by_peer[peer] = left
        else:
            self.by_peer.pop(peer, None)


class Refusals:
    """Counts of refused peers, frames and connections by listener and reason; a
    rate-limited log sample (peer, size, SHA-256: never the bytes)."""

    def __init__(
        self, interval_s: float = SAMPLE_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counts: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def refuse(self, listener: str, reason: str, peer: str, data: bytes | None = None) -> None:
        name = f"{listener}/{reason}"
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            if data is not None:
                self.bytes[name] = self.bytes.get(name, 0) + len(data)
            now = self._clock()
            due = now - self._last.get(name, -self.interval_s) >= self.interval_s
            if due:
                self._last[name] = now
            count = self.counts[name]
        if due:
            sample = (
                f", sample {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}"
                if data is not None
                else ""
            )
            log.warning(
                "%s refused (%s) from %s%s; %d so far", listener, reason, peer, sample, count
            )

    def summary(self) -> str:
        with self._lock:
            items = sorted(self.counts.items())
        return ", ".join(f"{k} {v}" for k, v in items) or "none"


class SourceRates:
    """Bytes per second each source may send: a token bucket per source id (thread-safe).

    A bucket holds at most ``burst_bytes`` and refills at ``bytes_per_s``; a source's
    first request finds it full. One record costs its size, capped at the burst (a
    record larger than the burst still passes once the bucket is full, so no record
    within ``gateway_max_record_bytes`` is refused for ever). ``bytes_per_s`` 0: no
    limit. Only authenticated sources get a bucket, so the table is bounded by the
    sender registry, not by what peers send.
    """

    def __init__(
        self,
        bytes_per_s: float,
        burst_bytes: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bytes_per_s < 0 or (bytes_per_s > 0 and burst_bytes <= 0):
            raise ValueError("a source rate needs a non-negative rate and a positive burst")
        self.bytes_per_s = float(bytes_per_s)
        self.burst_bytes = float(burst_bytes)
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # source: (tokens, at)
        self._lock = threading.Lock()
        #: requests refused and seconds streams were slowed, per source
        self.throttled: dict[str, int] = {}
        self.slowed_s: dict[str, float] = {}

    def _level(self, source: str, now: float) -> float:
        tokens, at = self._tokens.get(source, (self.burst_bytes, now))
        return min(self.burst_bytes, tokens + (now - at) * self.bytes_per_s)

    def try_take(self, source: str, size: int) -> float:
        """Take ``size`` bytes now: 0.0; else nothing is taken and the answer is the
        seconds until they would fit (HTTP: 429 with that Retry-After)."""
        if self.bytes_per_s == 0:
            return 0.0
        cost = min(float(size), self.burst_bytes)
        with self._lock:
            now = self._clock()
            level = self._level(source, now)
            if level >= cost:
                self._tokens[source] = (level - cost, now)
                return 0.0
            self._tokens[source] = (level, now)
            self.throttled[source] = self.throttled.get(source, 0) + 1
            return (cost - level) / self.bytes_per_s

    def reserve(self, source: str, size: int) -> float:
        """Take ``size`` bytes, into debt if need be; the seconds to wait before going
        on (a stream reads nothing meanwhile: TCP backpressure slows the sender)."""
        if self.bytes_per_s == 0:
            return 0.0
        with self._lock:
            now = self._clock()
            level = self._level(source, now) - size  # a read costs all it holds
            self._tokens[source] = (level, now)
            wait = -level / self.bytes_per_s if level < 0 else 0.0
            if wait:
                self.slowed_s[source] = self.slowed_s.get(source, 0.0) + wait
            return wait

    def summary(self) -> str:
        with self._lock:
            refused = sum(self.throttled.values())
            slowed = sum(self.slowed_s.values())
            sources = len(set(self.throttled) | set(self.slowed_s))
        if not sources:
            return "none"
        return f"{refused} requests refused, streams slowed {slowed:.1f} s, {sources} sources"
