"""Tunable parameters of the access auditor (windows, thresholds, permitted purposes).

Everything is in microseconds or counts; ``AuditConfig()`` is the default used by the
benchmark. A config is part of what makes a decision reproducible: replaying with the
same records, events and config gives the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ._time import US_PER_DAY, US_PER_HOUR, US_PER_MINUTE

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_CONSENT_POLICY_TABLE",
    "DEFAULT_PERMITTED_DISCLOSURE_PURPOSES",
    "AuditConfig",
    "RoleWindow",
]

#: the shipped consent policy table (policy URI -> decision) a deployment edits; see
#: ``verifiers.auditor.consent.policy_table`` and docs/adr/0021-consent-evaluation.md
DEFAULT_CONSENT_POLICY_TABLE: Final = str(
    Path(__file__).resolve().parents[2] / "config" / "consent-policies.toml"
)

#: v3-ActReason purposes for which an export or disclosure is permitted by default.
DEFAULT_PERMITTED_DISCLOSURE_PURPOSES: Final = frozenset(
    {
        "TREAT",
        "ETREAT",
        "BTG",
        "CAREMGT",
        "COC",
        "HPAYMT",
        "CLMATTCH",
        "COVERAGE",
        "HOPERAT",
        "PATRQT",
        "FAMRQT",
        "PWATRNY",
        "PUBHLTH",
        "HRESCH",
        "HLEGAL",
        "HCOMPL",
        "HSYSADMIN",
    }
)


@dataclass(frozen=True, slots=True)
class RoleWindow:
    """A role explained by *any* care relationship of the patient in a window
    (registration before a visit, billing and records management after it)."""

    lead_us: int
    lag_us: int


_DEFAULT_ROLE_WINDOWS: Final[Mapping[str, RoleWindow]] = MappingProxyType(
    {
        "registration-clerk": RoleWindow(lead_us=7 * US_PER_DAY, lag_us=2 * US_PER_DAY),
        "billing-specialist": RoleWindow(lead_us=0, lag_us=120 * US_PER_DAY),
        "him-specialist": RoleWindow(lead_us=0, lag_us=365 * US_PER_DAY),
        # Application support opens charts of patients the hospital is treating
        # (tickets about an encounter's orders or results), not arbitrary ones.
        "it-admin": RoleWindow(lead_us=7 * US_PER_DAY, lag_us=30 * US_PER_DAY),
    }
)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # -- explanations
    #: an access up to ``lead`` before a relationship starts, or ``lag`` after it ends,
    #: is explained by it (charts are prepared before and followed up after a visit)
    relationship_lead_us: int = 1 * US_PER_DAY
    relationship_lag_us: int = 7 * US_PER_DAY
    #: a colleague (same department or team) with a relationship explains the access
    group_explanations: bool = True
    #: roles explained by any relationship of the patient within a role window
    role_windows: Mapping[str, RoleWindow] = field(default_factory=lambda: _DEFAULT_ROLE_WINDOWS)

    # -- break-the-glass
    #: a 110127 start needs its 110138 stop within this window
    btg_stop_window_us: int = 4 * US_PER_HOUR
    #: ETREAT/BTG accesses count as inside an override started this long before
    btg_episode_us: int = 4 * US_PER_HOUR

    # -- volume
    volume_window_us: int = 1 * US_PER_HOUR
    #: never a spike below this many distinct patients per window
    volume_min_distinct: int = 30
    #: spike when above factor x the 95th percentile of the actor's own hourly counts ...
    volume_own_factor: float = 3.0
    #: ... and above factor x the 95th percentile of the peers' (same role) hourly counts
    volume_peer_factor: float = 3.0
    #: hours of history needed before a baseline is used
    volume_min_baseline_hours: int = 8
    volume_own_hours: int = 24 * 28
    volume_peer_hours: int = 4096

    # -- after hours: shifts are extended by these margins (handover, overtime)
    after_hours_grace_before_us: int = 1 * US_PER_HOUR
    after_hours_grace_after_us: int = 2 * US_PER_HOUR

    # -- shared credentials: two different client addresses within this window
    shared_credentials_window_us: int = 2 * US_PER_MINUTE

    # -- denied bursts: this many outcome 4/8 events within the window
    denied_burst_count: int = 5
    denied_burst_window_us: int = 10 * US_PER_MINUTE

    # -- disclosures
    permitted_disclosure_purposes: frozenset[str] = DEFAULT_PERMITTED_DISCLOSURE_PURPOSES

    # -- consents whose rules are only a policy reference: the policy table file
    #: (overridden by the environment variable CARELEDGER_CONSENT_POLICIES)
    consent_policy_table: str = DEFAULT_CONSENT_POLICY_TABLE

    # -- inactive users
    #: an actor missing from the workforce directory counts as inactive
    unknown_user_is_inactive: bool = True

    # -- repeat offenders: confirmed violations within this window raise the weight
    repeat_window_us: int = 365 * US_PER_DAY
    repeat_weight_per_violation: float = 0.5
    repeat_max_multiplier: float = 3.0

    # -- bounds on per-actor memory in the history (entries per deque)
    max_window_entries: int = 20_000


DEFAULT_CONFIG: Final = AuditConfig()
