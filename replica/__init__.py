"""The replica wing: ``careledger replica`` and ``careledger restore`` (ADR 0017).

A witness institution (a partner hospital, a regulator) keeps a full, independent copy
of every chain: block headers, signatures and the canonical bytes of every chained
record, in a ClickHouse database of its own (same schema, same migrations as the
primary), fed from the blocks topic the processor publishes after each store write.
Each block is verified as it arrives (``verify``: the processor's signature under the
replica's own trusted keys, canonical bytes, Merkle root, offsets digest, source
attestation proofs; ``follow``: the link to the replica's head); anything that does not
verify is refused and recorded with its bytes, never dropped silently.

``careledger.storage.compare`` says where the primary and a replica differ (table,
chain, height, index, columns). ``restore`` re-creates tampered or deleted rows of the
primary from a replica, after checking the replica against the signed (and, with a
witness policy, cosigned) checkpoints and verifying every block it copies; each
restored block is ledgered as an access event of the system source
``careledger-restore``.

Modules: ``verify`` (one block's bytes), ``follow`` (the consumer),
``checkpoints`` (reading the signed checkpoints), ``restore``, ``cli`` (the commands).
The replica imports no verifier: what it checks comes from ``careledger_core``.
"""
