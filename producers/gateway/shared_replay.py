"""A replay cache shared by several gateway processes, in ZooKeeper (ADR 0025 addendum).

One gateway remembers the signed requests it saw (``guard.ReplayCache``); behind a
load balancer a copy sent to another gateway would be accepted there. With
``gateway_replay_zookeeper`` set, every gateway claims a signed request by creating
one znode for it in the ZooKeeper ensemble the replicated ClickHouse already needs
(ADR 0030): ZooKeeper's ``create`` succeeds for exactly one client, so exactly one
gateway, whichever it is, accepts a given signed request within the window.

Layout: ``<root>/<signed-at seconds>/<first 16 bytes of the digest, hex>``, the data a
random token of the claim. A group per signed second keeps every child list small
(ZooKeeper answers a list in one packet of at most ``jute.maxbuffer``, 1 MiB) and lets
the sweeper drop a whole second once it is outside the window. The digest's first 16
bytes: a collision only refuses a request, never accepts one.

Failure: a claim that cannot be made or checked (ZooKeeper unreachable, no quorum, a
timeout) answers None, and the gateway refuses the request with 503 Retry-After: it
never accepts a signed request it could not claim. A create whose answer was lost
(connection loss) is retried; if the node then exists, its token says whether the
earlier attempt was ours. A claim answered None may still land later (a create sent
before the connection dropped, or queued while it was coming back): it is
**withdrawn** (deleted if its data is still our token) when its answer arrives or the
connection returns, so the sender's retry of that request is not taken for a replay.

TLS: ``gateway_replay_zookeeper_ca`` (with the client certificate and key when the
ensemble requires them, as docker-compose.yml's does) verifies the server's
certificate and host name.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Final

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    ZookeeperError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry, RetryFailedError

from careledger.config import Settings

__all__ = ["ZooKeeperReplayCache"]

log = logging.getLogger("careledger.gateway.replay")

#: how long one claim may take before the request is refused (503)
CLAIM_DEADLINE_S: Final = 3.0
SWEEP_INTERVAL_S: Final = 30.0
_TOKEN_BYTES: Final = 16
_ERRORS: Final = (KazooException, KazooTimeoutError, RetryFailedError, OSError)


class ZooKeeperReplayCache:
    """``claim``/``release`` like ``guard.ReplayCache``, over ZooKeeper (thread-safe:
    call it off the event loop)."""

    remote = True

    def __init__(
        self,
        hosts: str,
        window_s: float,
        *,
        root: str = "/careledger/gateway-replay",
        ca: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        sweep: bool = True,
    ) -> None:
        if not root.startswith("/") or root.endswith("/"):
            raise ValueError("the replay root is an absolute ZooKeeper path without a final /")
        self.window_s = window_s
        self.root = root
        tls: dict[str, Any] = {}
        if ca:
            tls = {"use_ssl": True, "ca": ca, "verify_certs": True, "check_hostname": True}
            if certfile:
                tls |= {"certfile": certfile, "keyfile": keyfile}
        self._zk = KazooClient(
            hosts=hosts,
            timeout=10.0,
            connection_retry=KazooRetry(max_tries=-1, max_delay=5.0),
            command_retry=KazooRetry(
                max_tries=3, delay=0.05, max_delay=0.5, deadline=CLAIM_DEADLINE_S
            ),
            logger=logging.getLogger("careledger.gateway.replay.kazoo"),
            **tls,
        )
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweep = sweep
        #: claims that may have landed after they were answered None: path -> our token
        #: (None: a release that failed, ours for certain)
        self._pending: dict[str, bytes | None] = {}
        self._pending_lock = threading.Lock()
        self._zk.add_listener(self._on_state)

    @classmethod
    def from_settings(cls, settings: Settings, window_s: float) -> ZooKeeperReplayCache:
        def path(value: object) -> str | None:
            return str(value) if value else None

        return cls(
            settings.gateway_replay_zookeeper,
            window_s,
            root=settings.gateway_replay_zookeeper_root,
            ca=path(settings.gateway_replay_zookeeper_ca),
            certfile=path(settings.gateway_replay_zookeeper_cert),
            keyfile=path(settings.gateway_replay_zookeeper_key),
        )

    # ------------------------------------------------------------------ life
    def start(self, timeout: float = 15.0) -> None:
        """Connect (raises ``ConnectionError`` in one line when it cannot)."""
        try:
            self._zk.start(timeout=timeout)
            self._zk.ensure_path(self.root)
        except _ERRORS as exc:
            self._zk.stop()
            raise ConnectionError(
                f"cannot reach ZooKeeper for the shared replay cache: {type(exc).__name__}"
            ) from None
        if self._sweep and self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="gateway-replay-sweeper", daemon=True
            )
            self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        try:
            self._zk.stop()
            self._zk.close()
        except _ERRORS:
            pass

    # ------------------------------------------------------------------ claims
    def _path(self, digest: bytes, signed_at: int) -> str:
        return f"{self.root}/{signed_at}/{digest[:16].hex()}"

    def claim(self, digest: bytes, signed_at: int, now: float) -> bool | None:
        """True: first sighting anywhere (now claimed); False: a replay; None: it
        cannot be checked now (refuse for now)."""
        if abs(signed_at - now) > self.window_s:
            return False  # outside the window: the signature check refuses it anyway
        if not self._zk.connected:
            return None  # nothing sent, nothing to withdraw later
        path = self._path(digest, signed_at)
        token = os.urandom(_TOKEN_BYTES)
        deadline = time.monotonic() + CLAIM_DEADLINE_S
        try:
            return bool(self._zk.retry(self._create, path, token, deadline))
        except _ERRORS as exc:
            self._remember(path, token)  # it may have landed: withdraw it when we can
            log.warning("shared replay cache: a claim could not be made (%s)", type(exc).__name__)
            return None

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise KazooTimeoutError("the claim's deadline passed")
        return left

    def _create(self, path: str, token: bytes, deadline: float) -> bool:
        # asynchronous calls with a timeout: a synchronous one waits for as long as the
        # client is reconnecting, which would hold the request (and the gateway's stop)
        result = self._zk.create_async(path, token, makepath=True)
        try:
            result.get(timeout=self._left(deadline))
            return True
        except KazooTimeoutError:
            # still on its way: if it lands after all, it is withdrawn then
            result.rawlink(self._landed_late)
            raise
        except NodeExistsError:
            data, _stat = self._zk.get_async(path).get(timeout=self._left(deadline))
            return bool(data == token)  # ours if an earlier attempt's answer was lost

    def release(self, digest: bytes, signed_at: int) -> None:
        """Forget a claim whose request was not recorded (so that it may be retried)."""
        path = self._path(digest, signed_at)
        deadline = time.monotonic() + CLAIM_DEADLINE_S
        try:
            self._zk.retry(lambda: self._zk.delete_async(path).get(timeout=self._left(deadline)))
        except NoNodeError:
            pass
        except _ERRORS as exc:
            self._remember(path, None)
            log.warning(
                "shared replay cache: a claim could not be released now (%s): it is "
                "released when ZooKeeper answers again",
                type(exc).__name__,
            )

    # ------------------------------------------------------------------ withdrawals
    def _remember(self, path: str, token: bytes | None) -> None:
        with self._pending_lock:
            self._pending[path] = token

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED and self._pending:
            self._withdraw_soon()  # listeners must not block: in a thread

    def _landed_late(self, result: Any) -> None:
        if result.successful():
            self._withdraw_soon()

    def _withdraw_soon(self) -> None:
        threading.Thread(target=self.withdraw_pending, daemon=True).start()

    def withdraw_pending(self) -> int:
        """Delete the claims answered None that landed after all (if their data is
        still our token); those that cannot be checked now stay pending. How many went."""
        with self._pending_lock:
            items = list(self._pending.items())
        done = 0
        for path, token in items:
            try:
                if token is not None:
                    data, stat = self._zk.get_async(path).get(timeout=CLAIM_DEADLINE_S)
                    if data == token:
                        self._zk.delete_async(path, version=stat.version).get(
                            timeout=CLAIM_DEADLINE_S
                        )
                        done += 1
                else:
                    self._zk.delete_async(path).get(timeout=CLAIM_DEADLINE_S)
                    done += 1
            except (NoNodeError, BadVersionError):
                pass  # never landed, or another gateway's claim now: nothing of ours
            except _ERRORS:
                continue  # not now: at the next connection or sweep
            with self._pending_lock:
                if self._pending.get(path, b"") == token:
                    del self._pending[path]
        return done

    # ------------------------------------------------------------------ sweeping
    def sweep(self, now: float | None = None) -> int:
        """Delete the groups of signed seconds outside the window; how many."""
        now = time.time() if now is None else now
        if not self._zk.connected:
            return 0  # the next sweep will do it
        try:
            groups = self._zk.get_children_async(self.root).get(timeout=CLAIM_DEADLINE_S)
        except _ERRORS:
            return 0
        dropped = 0
        for name in groups:
            if not name.isdigit() or int(name) + self.window_s + 5 >= now:
                continue
            try:
                self._zk.delete(f"{self.root}/{name}", recursive=True)
                dropped += 1
            except NoNodeError:
                continue  # another gateway swept it
            except (ZookeeperError, *_ERRORS):
                break  # try again at the next sweep
        return dropped

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_S):
            if self._pending and self._zk.connected:
                self.withdraw_pending()
            self.sweep()
