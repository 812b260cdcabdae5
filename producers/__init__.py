"""Producers: the SDK hospital integrations use (``producers.sdk``) and the seeded
hospital traffic simulator behind ``careledger simulate`` (``producers.simulator``).

Nothing is imported here, so ``import producers.simulator`` does not load the Kafka
client.
"""
