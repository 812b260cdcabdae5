"""``careledger verify --follow``: verify blocks as they land, alert on findings.

Every ``Settings.follow_interval_s`` the follower runs one *cycle*:

* **incremental** (normally): for each chain it continues from the last block it
  verified (height, hash, last offset kept in memory). ``fsck.verify_chain`` re-reads
  that block, so a rewrite of it (``CHAIN_REWRITTEN``) or a truncation below it
  (``CHAIN_TRUNCATED``) is noticed at once, and every new block must link to it
  (prev hash and Kafka offsets). A chain seen for the first time is verified whole.
* **full**, on start and then every ``Settings.full_reverify_every_s``: all history
  again, against the heads in the verifier state (old blocks can be altered too).

Before each cycle reads the store, the follower reads the checkpoints published
since the previous cycle (``verifiers.integrity.checkpoints.CheckpointReader``; everything on
the first cycle): a chain's head is compared with the higher of the state's (or the
last verified position's) and the newest signed checkpoint's. Kafka being down does
not stop the cycle: the heads read so far are used and a warning is logged when
checkpoints become unavailable (and when they are back).

Each cycle is recorded in ``verification_runs``; heads of chains that verified clean
go to the state directory. Every finding that is not info is published once as a
JSON alert (``Finding.to_dict()`` plus ``run_id``, ``detected_at``, ``alert_id``) to
``Settings.topic_alerts``, key = chain id, by an idempotent confluent-kafka producer.
A finding is not re-alerted while it persists; one that disappears from a full
cycle and comes back later is alerted again. An alert whose delivery failed is
retried in the next cycle. At most ``max_alerts_per_cycle`` new alerts go out per
cycle (the rest follow in later cycles), so a wholesale rewrite cannot flood the
topic in one burst.

With a witness policy (ADR 0018) each cycle also says which chains a quorum-cosigned
checkpoint covers (``run.witnessing``, in the JSON of each cycle); a chain that becomes
"not yet witnessed" (or witnessed again) is logged once per change, and the follower's
exit status is 3 if the last cycle was not witnessed (and nothing was tampered).

Infrastructure failures (ClickHouse down) do not stop the follower: the cycle is
logged as failed and retried after the interval. SIGTERM/SIGINT stop it cleanly
between batches. ``max_cycles`` / ``stop_after_s`` bound a run (tests, cron).
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from careledger.config import Settings
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import VERIFIER
from careledger.service_health import ServiceHealth
from careledger.storage.backend import StorageError
from careledger.storage.store import ChainStore
from careledger.witnesses import WitnessSet
from careledger_core.findings import Finding
from careledger_core.signing import TrustedKeys
from verifiers.integrity.checkpoints import CheckpointReader, CheckpointSnapshot, skipped_snapshot
from verifiers.integrity.fsck import DEFAULT_MAX_FINDINGS, VerifiedHead, VerifyCancelled, is_failure
from verifiers.integrity.run import (
    EXIT_ERROR,
    EXIT_INTACT,
    EXIT_NOT_WITNESSED,
    EXIT_TAMPERED,
    VerificationRun,
    assess_run,
    chains_to_verify,
    checkpoint_heads,
    clean_heads,
    format_finding,
    record_run,
    run_verification,
)
from verifiers.integrity.state import StateError, VerifierState

log = logging.getLogger("careledger.verifier")

AlertKey = tuple[str, str, int | None, int | None, str | None]

#: Remembered alert keys (bounded: oldest forgotten first).
_MAX_ALERTED = 200_000


def alert_key(f: Finding) -> AlertKey:
    return (str(f.code), f.chain_id, f.height, f.event_index, f.event_id)


def alert_id(key: AlertKey) -> str:
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


class AlertSink(Protocol):
    def publish(
        self, key: AlertKey, document: dict[str, Any], on_failure: Callable[[], None]
    ) -> None: ...

    def flush(self, timeout: float) -> int: ...

    def close(self) -> None: ...


class KafkaAlertSink:
    """Alerts to ``Settings.topic_alerts`` with an idempotent producer, key = chain id."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.topic_alerts
        self._producer = Producer(
            kafka_config(
                settings,
                VERIFIER,
                {
                    "client.id": "careledger-verifier",
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 20,
                    "message.timeout.ms": 60_000,
                },
            )
        )

    def publish(
        self, key: AlertKey, document: dict[str, Any], on_failure: Callable[[], None]
    ) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                log.error("alert %s not delivered to %s: %s", document["alert_id"], self.topic, err)
                on_failure()

        payload = json.dumps(document, sort_keys=True).encode("utf-8")
        while True:
            try:
                self._producer.produce(
                    self.topic, key=key[1].encode(), value=payload, on_delivery=delivered
                )
                break
            except BufferError:
                self._producer.poll(0.5)
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        remaining = self.flush(10.0)
        if remaining:
            log.error("%d alerts still undelivered at shutdown", remaining)


class Follower:
    def __init__(
        self,
        settings: Settings,
        store: ChainStore,
        keys: TrustedKeys,
        state: VerifierState,
        *,
        chains: list[str] | None = None,
        record: bool = True,
        json_output: bool = False,
        max_findings: int = DEFAULT_MAX_FINDINGS,
        alerts: AlertSink | None = None,
        max_alerts_per_cycle: int = 1000,
        out: TextIO | None = None,
        checkpoints: bool | CheckpointReader = True,
        witnesses: WitnessSet | None = None,
        recorder: ChainStore | None = None,
    ) -> None:
        self.settings = settings
        #: where runs are recorded (the writer's login, ADR 0032); ``store`` if None
        self.recorder = recorder
        self.witnesses = witnesses
        self.not_witnessed: set[str] = set()  # chains not yet witnessed in the last cycle
        self.store = store
        self.keys = keys
        self.state = state
        self.chains = chains
        self.record = record
        self.json_output = json_output
        self.max_findings = max_findings
        self._alerts = alerts
        self.max_alerts_per_cycle = max_alerts_per_cycle
        self.out = out or sys.stdout
        self.positions: dict[str, VerifiedHead] = {}  # last verified block per chain
        self.alerted: dict[AlertKey, None] = {}  # ordered set
        self.next_full: float | None = None  # monotonic time of the next full cycle
        self.cycles = 0
        self.failed_cycles = 0
        self.failures_seen = 0
        self.alerts_sent = 0
        self.last_error: str | None = None
        self.last_result: str | None = None  # of the last finished cycle
        self.last_findings = 0
        self.last_cycle_at = time.monotonic()  # a cycle finished (or the start)
        self._stop = threading.Event()
        if checkpoints is True:
            checkpoints = CheckpointReader(settings, keys.values(), witnesses=witnesses)
        self.checkpoints: CheckpointReader | None = checkpoints or None
        self._checkpoints_ok: bool | None = None

    # ------------------------------------------------------------------ /health, /metrics
    def metrics(self) -> dict[str, Any]:
        return {
            "cycles_total": self.cycles,
            "failed_cycles_total": self.failed_cycles,
            "findings_total": self.failures_seen,
            "last_cycle_findings": self.last_findings,
            "last_cycle_intact": self.last_result == "intact",
            "alerts_sent_total": self.alerts_sent,
            "seconds_since_cycle": round(time.monotonic() - self.last_cycle_at, 1),
            "chain_heights": {c: p.height for c, p in self.positions.items()},
            "not_witnessed_chains": len(self.not_witnessed),
        }

    def health(self) -> tuple[bool, str]:
        """Working, not "intact": findings are metrics and alerts, not a sick service."""
        if self.last_error is not None:
            return False, f"cannot verify: {self.last_error}"
        idle = time.monotonic() - self.last_cycle_at
        if idle > max(120.0, 5 * self.settings.follow_interval_s):
            return False, f"no verification cycle for {idle:.0f} s"
        return True, f"last cycle {self.last_result or 'not yet run'}"

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def alerts(self) -> AlertSink:
        if self._alerts is None:
            self._alerts = KafkaAlertSink(self.settings)
        return self._alerts

    def run(self, max_cycles: int | None = None, stop_after_s: float | None = None) -> int:
        """Cycle until stopped (signal, ``stop()``, ``max_cycles``, ``stop_after_s``).

        Returns 2 if the last cycle failed for an infrastructure reason, else 1 if any
        cycle found something that is not info, else 0.
        """
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        restore = self._install_signal_handlers()
        log.info(
            "following %s every %.1fs (full re-verification every %.0fs)",
            self.settings.clickhouse_database,
            self.settings.follow_interval_s,
            self.settings.full_reverify_every_s,
        )
        last_ok = True
        health = ServiceHealth.for_settings(self.settings, "verifier", self.metrics, self.health)
        try:
            while not self.stopping:
                last_ok = self.cycle() is not None or self.stopping
                if max_cycles is not None and self.cycles >= max_cycles:
                    break
                wait = self.settings.follow_interval_s
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = min(wait, left)
                self._stop.wait(wait)
        finally:
            if health is not None:
                health.stop()
            restore()
            if self._alerts is not None:
                self._alerts.close()
        log.info(
            "follow stopped after %d cycles (%d failed), %d alerts published",
            self.cycles,
            self.failed_cycles,
            self.alerts_sent,
        )
        if not last_ok:
            return EXIT_ERROR
        if self.failures_seen:
            return EXIT_TAMPERED
        return EXIT_NOT_WITNESSED if self.not_witnessed else EXIT_INTACT

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping after the current batch", signum)
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    # ------------------------------------------------------------------ one cycle
    def cycle(self) -> VerificationRun | None:
        """One verification cycle; None if it failed (infrastructure) or was cancelled."""
        self.cycles += 1
        now = time.monotonic()
        full = self.next_full is None or now >= self.next_full
        collected: list[Finding] = []

        def collect(f: Finding) -> None:
            if is_failure(f):
                collected.append(f)

        try:
            persisted = self.state.load()
            snapshot = self._read_checkpoints()
            if full:
                from_heights: dict[str, int] = {}
                known, cp_findings = checkpoint_heads(persisted, snapshot, self.chains)
            else:
                from_heights = {c: p.height + 1 for c, p in self.positions.items()}
                # What this follower saw last already differs from a checkpoint if it
                # was rewritten: reported by fsck, not again as a disagreement.
                known, cp_findings = checkpoint_heads(
                    {**persisted, **self.positions},
                    snapshot,
                    self.chains,
                    report_disagreement=False,
                )
            chains = chains_to_verify(self.store, self.chains, known)
            run = run_verification(
                self.store,
                self.keys,
                mode="follow-full" if full else "follow-incremental",
                database=self.settings.clickhouse_database,
                chains=chains,
                from_heights=from_heights,
                known=known,
                scope={"chains": self.chains or "all", "cycle": self.cycles},
                max_findings=self.max_findings,
                on_finding=collect,
                cancel=lambda: self.stopping,
                checkpoints=snapshot,
                checkpoint_findings=cp_findings,
            )
            assess_run(run, self.store, self.witnesses)
        except VerifyCancelled:
            log.info("cycle %d cancelled", self.cycles)
            return None
        except (StorageError, StateError) as exc:
            self.failed_cycles += 1
            self.last_error = exc.message
            log.error("verification cycle %d failed: %s (retrying)", self.cycles, exc.message)
            return None
        self.last_error = None
        self.last_cycle_at = time.monotonic()
        self.last_result = run.result
        self.last_findings = run.failures

        for report in run.reports:
            if report.head is None:
                self.positions.pop(report.chain_id, None)
            else:
                # Continue after what we have seen, clean or not: findings are alerted
                # once, and the next full cycle re-checks everything anyway.
                self.positions[report.chain_id] = report.head
        if full:
            self.next_full = now + self.settings.full_reverify_every_s
        self.failures_seen += run.failures

        try:
            self.state.save(clean_heads(run))
        except StateError as exc:
            log.error("%s", exc.message)
        if self.record:
            try:
                record_run(self.recorder or self.store, run)
            except StorageError as exc:
                log.error("could not record verification run %s: %s", run.run_id, exc.message)
        self._note_witnessing(run)
        new = self._alert(run, collected, full)
        self._print(run, new)
        return run

    def _note_witnessing(self, run: VerificationRun) -> None:
        if run.witnessing_unknown is not None:
            log.warning("witnesses: cannot tell: %s", run.witnessing_unknown)
        if run.witnessing is None:
            return
        late = {c.chain for c in run.witnessing.not_witnessed}
        for chain in sorted(late - self.not_witnessed):
            log.warning(
                "%s is NOT YET WITNESSED: no quorum-cosigned checkpoint covers "
                "blocks older than %ds",
                chain,
                run.witnessing.policy["max_age_s"],
            )
        for chain in sorted(self.not_witnessed - late):
            log.info("%s is witnessed again", chain)
        self.not_witnessed = late

    def _read_checkpoints(self) -> CheckpointSnapshot:
        if self.checkpoints is None:
            return skipped_snapshot(self.settings.topic_checkpoints)
        snapshot = self.checkpoints.refresh()
        if snapshot.available != self._checkpoints_ok:
            if snapshot.available:
                if self._checkpoints_ok is not None:
                    log.warning("checkpoints are readable again")
            else:
                log.warning(
                    "checkpoints unavailable (%s); comparing with the heads known so far",
                    snapshot.error,
                )
            self._checkpoints_ok = snapshot.available
        return snapshot

    def _alert(self, run: VerificationRun, findings: list[Finding], full: bool) -> list[Finding]:
        seen: set[AlertKey] = set()
        new: list[Finding] = []
        deferred = 0
        detected_at = run.finished_at or run.started_at
        for f in findings:
            key = alert_key(f)
            if key in seen:
                continue
            seen.add(key)
            if key in self.alerted:
                continue
            if len(new) >= self.max_alerts_per_cycle:
                deferred += 1  # not remembered: goes out in a later cycle
                continue
            new.append(f)
            self.alerted[key] = None
            document = {
                **f.to_dict(),
                "alert_id": alert_id(key),
                "run_id": run.run_id,
                "detected_at": detected_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "database": run.database,
                "mode": run.mode,
            }
            self.alerts.publish(key, document, self._forget(key))
        if full:
            # Forget findings that are gone, so that they alert again if they return.
            for key in [k for k in self.alerted if k not in seen]:
                del self.alerted[key]
        while len(self.alerted) > _MAX_ALERTED:
            del self.alerted[next(iter(self.alerted))]
        if new:
            remaining = self.alerts.flush(10.0)
            if remaining:
                log.error(
                    "%d alerts not yet delivered to %s", remaining, self.settings.topic_alerts
                )
            self.alerts_sent += len(new)
        if deferred:
            log.warning("%d further new findings will be alerted in later cycles", deferred)
        return new

    def _forget(self, key: AlertKey) -> Callable[[], None]:
        """Undo the 'alerted' mark of a key whose delivery failed, so it is retried."""

        def forget() -> None:
            self.alerted.pop(key, None)

        return forget

    def _print(self, run: VerificationRun, new: list[Finding]) -> None:
        if self.json_output:
            doc = run.to_json()
            doc["new_alerts"] = [f.to_dict() for f in new]
            self.out.write(json.dumps(doc) + "\n")
        else:
            print(
                f"cycle {self.cycles} ({run.mode}): {len(run.reports)} chains, "
                f"{run.blocks} blocks, {run.events} events in {run.elapsed_s:.2f}s: {run.result}"
                + (f", {len(new)} new alert(s)" if new else ""),
                file=self.out,
            )
            for f in new:
                print(format_finding(f), file=self.out)
        self.out.flush()
