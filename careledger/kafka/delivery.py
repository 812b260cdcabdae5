"""What the producer SDK says about deliveries (``careledger.kafka.producer``): the
failures it keeps, its report, and the error ``flush`` raises. Re-exported by the
producer module and ``producers.sdk``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from careledger_core.errors import InfrastructureError

__all__ = ["MAX_FAILURE_DETAILS", "DeliveryError", "DeliveryReport", "FailedDelivery"]

#: How many failed deliveries are kept with their details (all are counted).
MAX_FAILURE_DETAILS = 1000


@dataclasses.dataclass(frozen=True)
class FailedDelivery:
    """One message Kafka did not acknowledge (no key, no value: they may identify a patient)."""

    topic: str
    partition: int | None
    error_code: str  # librdkafka error name, e.g. "_MSG_TIMED_OUT"
    reason: str
    retriable: bool
    event_id: str | None  # when the value was an access event


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Counts since the producer was created."""

    sent: int  # accepted by send()/send_raw()
    acked: int  # acknowledged by the broker (acks=all)
    failed: int  # definitively failed
    pending: int  # still queued or in flight when the report was made
    seconds: float  # since the producer was created

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0


class DeliveryError(InfrastructureError):
    """Some messages were not acknowledged by Kafka (failed or still pending at a timeout)."""

    code = "KAFKA_DELIVERY_FAILED"

    def __init__(
        self,
        message: str,
        *,
        report: DeliveryReport,
        failures: Sequence[FailedDelivery] = (),
        failed: int = 0,
    ) -> None:
        errors: dict[str, int] = {}
        for f in failures:
            errors[f.error_code] = errors.get(f.error_code, 0) + 1
        super().__init__(
            message,
            details={
                "failed": failed,
                "pending": report.pending,
                "sent": report.sent,
                "acked": report.acked,
                "errors": errors,
            },
        )
        self.report = report
        #: the failed deliveries since the previous flush (details of at most
        #: MAX_FAILURE_DETAILS; ``failed`` counts them all)
        self.failures = list(failures)
        self.failed = failed
