"""The Kafka client side every component shares: the producer SDK and its pure batching,
and the configuration every confluent-kafka client is built from (``client_config``)."""

from careledger.kafka.clients import client_config, rdkafka_logger

__all__ = ["client_config", "rdkafka_logger"]
