"""Producers (a wing): the SDK's public entry point for hospital integrations
(``producers.sdk``, a re-export of ``careledger.kafka.producer``), the ingest adapters
and gateway, and the seeded hospital traffic simulator behind ``careledger simulate``
(``producers.simulator``).

Nothing is imported here, so ``import producers.simulator`` does not load the Kafka
client.
"""
