"""How much of each chain the witnesses vouch for (ADR 0018).

With a witness policy (``witnesses_file``: k of n witness keys) the verifier vouches for
a block only if a checkpoint covering it carries a quorum of valid cosignatures
(counted by ``CheckpointLog``, merged over every copy of the checkpoint: the topic, the
verifier's memory, the witnesses themselves). Three outcomes per chain:

* **witnessed**: the stored head is covered by a quorum checkpoint;
* **pending**: blocks beyond it, all younger than ``max_age_s`` (cosigning takes time);
* **not yet witnessed**: a block beyond the newest quorum checkpoint is older than
  ``max_age_s``. Not tampering (the store may be exactly what the log signed) but the
  verifier cannot vouch for it: exit 3. A block whose signed time lies in the future
  counts as due at once (a signer choosing its times cannot keep blocks "young").

Tampering found through the witnesses' checkpoints is reported by the usual checks
(``CHECKPOINT_ROOT_MISMATCH``, ``CHAIN_TRUNCATED``, ``HEIGHT_FORK``...), located at
the witness that served the checkpoint.

The checkpoints the witnesses serve are fetched by
``careledger.cosigned_checkpoints.fetch_from_witnesses`` (shared with the reports); a
witness that cannot be reached is named in the report, never a finding.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.kinds import raw_topics, reference_topics
from careledger.storage.store import ChainStore
from careledger.witnesses import WitnessSet

__all__ = [
    "ChainWitnessing",
    "WitnessingReport",
    "assess_witnessing",
    "expected_chains",
]

WITNESSED: Final = "witnessed"
PENDING: Final = "pending"
NOT_WITNESSED: Final = "not_witnessed"
#: a block dated further than this in the future is due at once
_FUTURE_SKEW_S: Final = 300


def expected_chains(settings: Any) -> list[str]:
    """Every chain this deployment's topics can have (``<origin>/<topic>/<partition>``):
    the chains to ask witnesses about even when the store and the topic lost them."""
    chains = [settings.chain_id(settings.topic_events, p) for p in range(settings.partitions)]
    for topic in sorted(reference_topics(settings)):
        chains += [settings.chain_id(topic, p) for p in range(settings.reference_partitions)]
    for topic in sorted(raw_topics(settings)):
        chains += [settings.chain_id(topic, p) for p in range(settings.partitions)]
    return chains


@dataclass(frozen=True)
class ChainWitnessing:
    chain: str
    stored_size: int
    witnessed_size: int
    status: str  # witnessed | pending | not_witnessed
    witnesses: tuple[str, ...] = ()  # who cosigned the newest quorum checkpoint
    oldest_unwitnessed: str | None = None  # created_at of the first block beyond it

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "status": self.status,
            "stored_size": self.stored_size,
            "witnessed_size": self.witnessed_size,
            "cosigned_by": list(self.witnesses),
            "oldest_unwitnessed_block": self.oldest_unwitnessed,
        }


@dataclass
class WitnessingReport:
    """The witness policy's verdict over the verified chains."""

    policy: dict[str, Any]
    chains: list[ChainWitnessing] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # witness -> why it was not asked

    @property
    def not_witnessed(self) -> list[ChainWitnessing]:
        return [c for c in self.chains if c.status == NOT_WITNESSED]

    @property
    def status(self) -> str:
        if self.not_witnessed:
            return NOT_WITNESSED
        return PENDING if any(c.status == PENDING for c in self.chains) else WITNESSED

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            **self.policy,
            "unreachable": dict(sorted(self.errors.items())),
            "chains": [c.to_json() for c in self.chains],
        }

    def describe(self) -> str:
        counts = {s: sum(1 for c in self.chains if c.status == s) for s in (WITNESSED, PENDING)}
        late = self.not_witnessed
        text = (
            f"witnesses: quorum {self.policy['quorum']} of {self.policy['of']}; "
            f"{counts[WITNESSED]} chain(s) witnessed to their head, {counts[PENDING]} pending"
        )
        if late:
            text += f", {len(late)} NOT YET WITNESSED beyond {self.policy['max_age_s']}s: " + (
                ", ".join(f"{c.chain} ({c.witnessed_size} of {c.stored_size})" for c in late[:5])
            )
        if self.errors:
            text += f"; unreachable: {', '.join(sorted(self.errors))}"
        return text


def _parse_time(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC)


def assess_witnessing(
    store: ChainStore,
    witnesses: WitnessSet,
    stored_sizes: Mapping[str, int],
    witnessed: Mapping[str, tuple[int, tuple[str, ...]]],
    *,
    errors: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> WitnessingReport:
    """Per chain of ``stored_sizes`` (chain -> blocks in the store): witnessed, pending or
    not yet witnessed, given ``witnessed`` (chain -> (quorum size, cosigners))."""
    now = now or dt.datetime.now(dt.UTC)
    report = WitnessingReport(witnesses.describe(), errors=dict(errors or {}))
    for chain in sorted(stored_sizes):
        stored = stored_sizes[chain]
        size, names = witnessed.get(chain, (0, ()))
        if stored <= size:
            report.chains.append(ChainWitnessing(chain, stored, size, WITNESSED, names))
            continue
        rows = store.backend.execute(
            f"SELECT min(created_at), max(created_at) FROM {store.db}.blocks "
            "WHERE chain_id = %(c)s AND height >= %(h)s",
            {"c": chain, "h": size},
        )
        oldest_text = str(rows[0][0]) if rows else ""
        newest = _parse_time(str(rows[0][1])) if rows else None
        oldest = _parse_time(oldest_text)
        due = (
            oldest is None
            or (now - oldest).total_seconds() > witnesses.max_age_s
            or (newest is not None and (newest - now).total_seconds() > _FUTURE_SKEW_S)
        )
        report.chains.append(
            ChainWitnessing(
                chain,
                stored,
                size,
                NOT_WITNESSED if due else PENDING,
                names,
                oldest_text or None,
            )
        )
    return report
