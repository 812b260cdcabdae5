"""The access auditor's rule codes: stable names shared by producers and verifiers.

The auditor (``verifiers.auditor``) flags accesses under these codes; the simulator
(``producers.simulator``) labels the inappropriate accesses it injects with the same codes,
so a benchmark can score each rule. They are part of the contract (alerts, decisions,
dashboards): never rename one, only add.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RuleCode"]


class RuleCode(StrEnum):
    CONSENT_DENIED = "CONSENT_DENIED"
    NO_EXPLANATION = "NO_EXPLANATION"
    BREAK_THE_GLASS = "BREAK_THE_GLASS"
    SELF_ACCESS = "SELF_ACCESS"
    FAMILY = "FAMILY"
    CO_WORKER = "CO_WORKER"
    VIP_OR_SENSITIVE_UNEXPLAINED = "VIP_OR_SENSITIVE_UNEXPLAINED"
    INACTIVE_USER = "INACTIVE_USER"
    VOLUME_SPIKE = "VOLUME_SPIKE"
    AFTER_HOURS = "AFTER_HOURS"
    SHARED_CREDENTIALS = "SHARED_CREDENTIALS"
    DENIED_BURST = "DENIED_BURST"
    DISCLOSURE_WITHOUT_PURPOSE = "DISCLOSURE_WITHOUT_PURPOSE"
    REPEAT_OFFENDER = "REPEAT_OFFENDER"
