"""The consent policy table: what an external policy says, for consents whose rules are
only a reference to one (R4 ``policy.uri`` / a ``policyRule`` code other than the v3
opt-in/opt-out family, R5 ``policyBasis`` / ``regulatoryBasis``; IHE BALP's example).

A deployment writes its table as TOML (``config/consent-policies.toml`` documents the
format and is the default; ``AuditConfig.consent_policy_table`` or the environment
variable ``CARELEDGER_CONSENT_POLICIES`` names another file). Parsing is pure
(:func:`parse_policy_table`); :func:`load_policy_table` and
:func:`configured_policy_table` read files.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from careledger_core.errors import ValidationError

from .model import ACTION_REQUIREMENTS, ConsentRequest, Effect

__all__ = [
    "EMPTY_POLICY_TABLE",
    "ENV_POLICY_TABLE",
    "PolicyRule",
    "PolicyTable",
    "configured_policy_table",
    "load_policy_table",
    "parse_policy_table",
]

ENV_POLICY_TABLE: Final = "CARELEDGER_CONSENT_POLICIES"
Otherwise: TypeAlias = Literal["permit", "deny", "undecided"]
_CONSENT_ACTIONS: Final = frozenset({"collect", "access", "use", "correct", "disclose"})


def _bad(source: str, where: str, reason: str) -> ValidationError:
    return ValidationError(
        f"consent policy table {source}: {where}: {reason}",
        details={"source": source, "field": where, "reason": reason},
    )


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """What one policy decides: ``decision`` for accesses meeting the conditions
    (purposes, consent actions; none stated = every access), ``otherwise`` for the rest
    (``undecided``: this policy says nothing about them)."""

    uri: str
    decision: Effect
    purposes: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    otherwise: Otherwise = "undecided"
    note: str = ""

    def decide(self, request: ConsentRequest, purposes: frozenset[str]) -> Otherwise:
        if self.purposes and purposes.isdisjoint(self.purposes):
            return self.otherwise
        if self.actions and not all(
            set(req) & set(self.actions) for req in ACTION_REQUIREMENTS[request.action]
        ):
            return self.otherwise
        return self.decision


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """Policy URI (or ``system|code``) -> :class:`PolicyRule`; ``source`` names the file."""

    rules: Mapping[str, PolicyRule] = field(default_factory=dict)
    source: str = "<empty>"

    def lookup(self, refs: tuple[str, ...]) -> PolicyRule | None:
        """The rule of the first reference the table knows (document order)."""
        for ref in refs:
            rule = self.rules.get(ref)
            if rule is not None:
                return rule
        return None


EMPTY_POLICY_TABLE: Final = PolicyTable()


def _strings(value: object, source: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(source, where, "must be a list of non-empty strings")
    return tuple(sorted(set(value)))


def _entry(raw: object, source: str, where: str) -> PolicyRule:
    if not isinstance(raw, Mapping):
        raise _bad(source, where, "must be a table")
    unknown = set(raw) - {"uri", "decision", "purposes", "actions", "otherwise", "note"}
    if unknown:
        raise _bad(source, where, f"unknown keys {sorted(unknown)}")
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise _bad(source, f"{where}.uri", "must be a non-empty string")
    decision = raw.get("decision")
    if decision not in ("permit", "deny"):
        raise _bad(source, f"{where}.decision", "must be 'permit' or 'deny'")
    purposes = _strings(raw.get("purposes", []), source, f"{where}.purposes")
    actions = _strings(raw.get("actions", []), source, f"{where}.actions")
    if not set(actions) <= _CONSENT_ACTIONS:
        raise _bad(source, f"{where}.actions", f"must be among {sorted(_CONSENT_ACTIONS)}")
    conditional = bool(purposes or actions)
    default: Otherwise = ("deny" if decision == "permit" else "permit") if conditional else decision
    otherwise = raw.get("otherwise", default)
    if otherwise not in ("permit", "deny", "undecided"):
        raise _bad(source, f"{where}.otherwise", "must be 'permit', 'deny' or 'undecided'")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise _bad(source, f"{where}.note", "must be a string")
    return PolicyRule(uri.strip(), decision, purposes, actions, otherwise, note)


def parse_policy_table(text: str, source: str = "<inline>") -> PolicyTable:
    """Parse a TOML policy table (``[[policy]]`` entries). Raises ``ValidationError``."""
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(source, "$", f"not TOML: {exc}") from None
    unknown = set(doc) - {"policy"}
    if unknown:
        raise _bad(source, "$", f"unknown keys {sorted(unknown)}")
    entries = doc.get("policy", [])
    if not isinstance(entries, list):
        raise _bad(source, "policy", "must be an array of tables ([[policy]])")
    rules: dict[str, PolicyRule] = {}
    for i, raw in enumerate(entries):
        rule = _entry(raw, source, f"policy[{i}]")
        if rule.uri in rules:
            raise _bad(source, f"policy[{i}].uri", f"{rule.uri} is listed twice")
        rules[rule.uri] = rule
    return PolicyTable(rules, source)


def load_policy_table(path: str | os.PathLike[str]) -> PolicyTable:
    """Read and parse a policy table file. Raises ``ValidationError`` (also when the
    file cannot be read)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(str(p), "$", f"cannot be read: {exc}") from None
    return parse_policy_table(text, str(p))


_CACHE: dict[tuple[str, int, int], PolicyTable] = {}
#: the Path of each configured name (building one costs more than the stat)
_PATHS: dict[str, Path] = {}


def configured_policy_table() -> PolicyTable:
    """The deployment's table: the file named by ``CARELEDGER_CONSENT_POLICIES``, else
    ``AuditConfig().consent_policy_table``. A missing file is the empty table (every
    policy-only consent is then "no rule for policy X"); a malformed one raises. Cached
    by path, size and modification time."""
    from ..config import DEFAULT_CONFIG

    name = os.environ.get(ENV_POLICY_TABLE) or DEFAULT_CONFIG.consent_policy_table
    path = _PATHS.get(name)
    if path is None:
        if len(_PATHS) > 16:
            _PATHS.clear()
        path = _PATHS[name] = Path(name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return PolicyTable({}, f"{path} (missing)")
    key = (str(path), st.st_size, st.st_mtime_ns)
    table = _CACHE.get(key)
    if table is None:
        _CACHE.clear()
        table = _CACHE[key] = load_policy_table(path)
    return table
