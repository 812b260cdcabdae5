"""The Kafka client side every component shares: the producer SDK and its pure batching."""
