"""Integrity verification (fsck): chains, checkpoints, sources, the verifier state,
follow mode and the ``verify`` command."""
