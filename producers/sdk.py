"""The producer SDK's public entry point for hospital integrations.

    from producers.sdk import AccessEventProducer

    with AccessEventProducer(settings) as producer:
        for event in events:
            producer.send(event)          # canonical JSON, key = patient id
        report = producer.flush()         # raises DeliveryError unless all were acknowledged

The implementation lives on the shared Kafka floor (:mod:`careledger.kafka.producer`),
where every careledger component that produces (the gateway, the simulator, the
processor's dead letters, the alert workflow, the source registry) takes it from. This
module re-exports exactly its public API, so integrators keep one stable import path.
"""

from __future__ import annotations

from careledger.kafka.producer import (
    DEFAULT_COMPRESSION,
    AccessEventProducer,
    DeliveryError,
    DeliveryReport,
    FailedDelivery,
    partition_key,
    producer_config,
)

__all__ = [
    "DEFAULT_COMPRESSION",
    "AccessEventProducer",
    "DeliveryError",
    "DeliveryReport",
    "FailedDelivery",
    "partition_key",
    "producer_config",
]
