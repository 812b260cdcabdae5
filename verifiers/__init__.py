"""Verifiers (a wing), one sub-package per job: ``integrity`` (fsck, checkpoints, sources,
state, follow, ``verify``), ``auditor`` (rules, consent evaluation, runner, the alert
workflow) and ``reports`` (patient access reports and their proofs)."""
