"""What may be erased when: retention policies per jurisdiction and legal holds
(issue 14 point 4, ADR 0037).

A :class:`Policy` says how long access records must be kept from their creation
(``retain_years``), whether a person's request may erase them once that duty allows
(``erasure_on_request``), and whether they expire on their own (``expire_years``).
:func:`decide_request` answers an erasure request for records created at a given
instant under one or more policies (a deployment may answer to several: the strictest
wins) and the legal holds on the patient; :func:`expired` says whether records have
reached their end. Holds block both while they stand.

The default table (:data:`DEFAULT_POLICIES`) encodes two common regimes; a deployment
names its own in a TOML file (``retention_policy_file``) with ``[[policy]]`` tables:

    [[policy]]
    name = "us-hipaa"          # 45 CFR 164.316(b)(2): six years from creation
    retain_years = 6
    erasure_on_request = false
    expire_years = 0           # 0: never on its own

Pure decisions (dates in, a decision out); reading the file is :func:`load_policies`.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_POLICIES",
    "Decision",
    "Hold",
    "Policy",
    "PolicyError",
    "decide_request",
    "expired",
    "load_policies",
]


class PolicyError(ValueError):
    """A policy table that cannot be used."""


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    #: years the records must be kept from their creation (0: no duty)
    retain_years: int
    #: a person's request may erase them once the retention duty has passed; false: a
    #: request never does, the records end by expiry only
    erasure_on_request: bool
    #: years after creation they are erased on their own (0: never)
    expire_years: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise PolicyError(f"a policy name is letters, digits, - or _ (got {self.name!r})")
        if not 0 <= self.retain_years <= 100 or not 0 <= self.expire_years <= 100:
            raise PolicyError(f"{self.name}: years must be between 0 and 100")
        if self.expire_years and self.expire_years < self.retain_years:
            raise PolicyError(
                f"{self.name}: records cannot expire ({self.expire_years} years) before "
                f"their retention ends ({self.retain_years} years)"
            )


DEFAULT_POLICIES: Final[Mapping[str, Policy]] = {
    # HIPAA: documentation kept six years from creation (45 CFR 164.316(b)(2)(i)); no
    # right to erasure: they end by expiry, which the deployment sets
    "us-hipaa": Policy("us-hipaa", retain_years=6, erasure_on_request=False),
    # GDPR-style: erasure on request (Art. 17), no retention duty of its own here; a
    # member state's duty to keep access logs is a policy of its own, combined with it
    "eu-gdpr": Policy("eu-gdpr", retain_years=0, erasure_on_request=True),
}


@dataclass(frozen=True, slots=True)
class Hold:
    """A legal hold on a patient's records: placed, and lifted (or not yet)."""

    id: str
    placed_at: dt.datetime
    lifted_at: dt.datetime | None = None
    reason: str = ""

    def stands(self, at: dt.datetime) -> bool:
        return self.placed_at <= at and (self.lifted_at is None or at < self.lifted_at)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: why, in one sentence fit for the erasure record or the refusal
    reason: str
    #: when a refusal for time alone ends (None: not a matter of time)
    not_before: dt.datetime | None = None


def _plus_years(moment: dt.datetime, years: int) -> dt.datetime:
    """``moment`` plus calendar years; 29 February becomes 1 March in common years (the
    duty is not shortened by a day)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February -> a common year
        return moment.replace(year=moment.year + years, month=3, day=1)


def _aware(moment: dt.datetime, what: str) -> None:
    if moment.tzinfo is None:
        raise PolicyError(f"{what} must carry a time zone")


def decide_request(
    policies: Sequence[Policy],
    created_at: dt.datetime,
    now: dt.datetime,
    holds: Iterable[Hold] = (),
) -> Decision:
    """May a person's request erase records created at ``created_at``, now? Every
    policy must allow it (the strictest wins) and no hold may stand."""
    _aware(created_at, "created_at")
    _aware(now, "now")
    if not policies:
        raise PolicyError("no policy applies: say which jurisdictions the records fall under")
    standing = [h for h in holds if h.stands(now)]
    if standing:
        first = min(standing, key=lambda h: h.placed_at)
        return Decision(
            False,
            f"legal hold {first.id} stands since {first.placed_at.date().isoformat()}"
            + (f" ({first.reason})" if first.reason else ""),
        )
    refusing = [p for p in policies if not p.erasure_on_request]
    if refusing:
        names = ", ".join(p.name for p in refusing)
        return Decision(
            False, f"{names}: a request does not erase these records (they end by expiry only)"
        )
    until = max(_plus_years(created_at, p.retain_years) for p in policies)
    if now < until:
        keeping = max(policies, key=lambda p: p.retain_years)
        return Decision(
            False,
            f"{keeping.name} keeps these records {keeping.retain_years} years from their "
            f"creation, until {until.date().isoformat()}",
            not_before=until,
        )
    return Decision(
        True,
        "erasure on request allowed by "
        + ", ".join(p.name for p in policies)
        + (f" (retention ended {until.date().isoformat()})" if until > created_at else ""),
    )


def expired(
    policies: Sequence[Policy],
    created_at: dt.datetime,
    now: dt.datetime,
    holds: Iterable[Hold] = (),
) -> Decision:
    """Have records created at ``created_at`` reached the end every policy gives them
    (the latest expiry of those that have one, and never before any retention ends)?"""
    _aware(created_at, "created_at")
    _aware(now, "now")
    ends = [p for p in policies if p.expire_years]
    if not ends:
        return Decision(False, "no policy makes these records expire")
    until = max(
        [_plus_years(created_at, p.expire_years) for p in ends]
        + [_plus_years(created_at, p.retain_years) for p in policies]
    )
    if now < until:
        return Decision(False, f"they expire on {until.date().isoformat()}", not_before=until)
    standing = [h for h in holds if h.stands(now)]
    if standing:
        return Decision(False, f"legal hold {standing[0].id} stands")
    names = ", ".join(p.name for p in ends)
    return Decision(True, f"expired on {until.date().isoformat()} under {names}")


def load_policies(path: Path | None) -> dict[str, Policy]:
    """The policy table of ``path`` (TOML ``[[policy]]`` tables), or the defaults."""
    if path is None:
        return dict(DEFAULT_POLICIES)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"cannot read the retention policy file {path}: {exc}") from None
    entries: Any = doc.get("policy")
    if not isinstance(entries, list) or not entries:
        raise PolicyError(f"{path}: no [[policy]] table")
    table: dict[str, Policy] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise PolicyError(f"{path}: a [[policy]] is not a table")
        unknown = set(entry) - {"name", "retain_years", "erasure_on_request", "expire_years"}
        if unknown:
            raise PolicyError(f"{path}: unknown key(s) {sorted(unknown)}")
        try:
            policy = Policy(
                name=str(entry["name"]),
                retain_years=_int(entry.get("retain_years", 0)),
                erasure_on_request=_bool(entry.get("erasure_on_request", False)),
                expire_years=_int(entry.get("expire_years", 0)),
            )
        except KeyError:
            raise PolicyError(f"{path}: a [[policy]] has no name") from None
        if policy.name in table:
            raise PolicyError(f"{path}: policy {policy.name!r} is given twice")
        table[policy.name] = policy
    return table


def _int(value: object) -> int:
    if type(value) is not int:
        raise PolicyError(f"years are whole numbers (got {value!r})")
    return value


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise PolicyError(f"erasure_on_request is true or false (got {value!r})")
    return value
