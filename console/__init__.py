"""The privacy office's web console (issue 13, ADR 0035): the top floor beside the CLI
router, reading what the CLI reads. ``careledger console serve``."""
