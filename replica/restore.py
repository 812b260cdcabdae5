"""``careledger restore``: re-create tampered or deleted rows of the primary from a replica.

Nothing is copied on the replica's word. Per chain:

1. **The replica against the signed checkpoints** (``replica.checkpoints``: signed by a
   trusted processor key; with a witness policy, cosigned by a quorum). The replica's
   block hashes must form one chain from height 0 (``careledger.storage.trees``), and
   the RFC 6962 root over its first ``n`` block hashes must be the signed root of every
   checkpoint of size ``n`` it reaches (and name the same head). One mismatch, or two
   signed roots for one size, and the chain is refused: the replica (or the log) is not
   trustworthy for it. ``covered`` is the largest signed size the replica reaches:
   only heights below it are restored.
2. **Where the primary differs** (``replica.compare``, heights below ``covered``).
3. **Each block to copy, verified again** from the replica's rows
   (``replica.verify.verify_material``: signature, canonical bytes, Merkle root,
   offsets, attestation proofs, batch roots), its hash the leaf the checkpoint's tree
   was built from, linked to the block below. The rows written are derived from those verified
   bytes exactly as the processor derives them (``ChainStore.write_blocks``), so a
   replica whose *derived* columns were altered still restores the genuine rows
   (and is reported). A height where the primary already holds exactly those rows is
   left alone.
4. **Ledgered first**: one access event per block to restore (source system
   ``careledger-restore``, DICOM 110101 "Audit Log Used", action U, no patient, object
   ``ledger-block`` = ``<chain>#<height>``, ``raw_ref`` = the block hash), sent to the
   events topic and acknowledged before the primary is touched; it is chained and
   signed like any access. If it cannot be sent, nothing is restored.
5. **Then the primary**: the block's rows are deleted from every table a block is in
   (``ALTER TABLE ... DELETE``, waited for: mutations are asynchronous and 18.16 has no
   ``mutations_sync``) and written again (records, attestations and batch rows (ADR
   0020), then the header).

Heights above ``covered`` that differ are reported as not restorable (no signed
checkpoint covers them yet), never copied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger.storage.backend import StorageError
from careledger.storage.block_records import stored_block_records
from careledger.storage.compare import Comparison, block_rows, compare_chain, tables_of
from careledger.storage.store import (
    ChainStore,
    SealedBlock,
    attestation_rows,
    batch_rows,
    event_rows,
    header_rows,
)
from careledger.storage.trees import ChainTreeError, chain_block_hashes
from careledger_core.chain_tree import ChainTree, block_leaf_hash
from careledger_core.event import AccessEvent, event_from_dict
from careledger_core.signing import TrustedKeys
from replica.checkpoints import SignedCheckpoints
from replica.verify import Refused, verify_material

__all__ = [
    "RESTORE_RECORD_FORMAT",
    "RESTORE_SOURCE",
    "ChainPlan",
    "RestorePlan",
    "apply_restore",
    "plan_restore",
    "restore_event",
]

RESTORE_SOURCE: Final = "careledger-restore"
RESTORE_RECORD_FORMAT: Final = "careledger.restore/1"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
#: the patient of an event about no patient (as the alert-status events)
NO_PATIENT_ID: Final = "-"
#: how long to wait for a deletion (a ClickHouse mutation) to be applied
MUTATION_TIMEOUT_S: Final = 120.0

Row = tuple[Any, ...]


@dataclass
class ChainPlan:
    """What a restore does (or refuses to do) for one chain."""

    chain_id: str
    replica_size: int = 0
    #: the largest signed checkpoint size the replica matches: heights below are restorable
    covered: int = 0
    checkpoints_matched: int = 0
    #: signed sizes beyond the replica (it is behind)
    checkpoints_beyond: int = 0
    refused: str | None = None
    code: str | None = None
    blocks: list[SealedBlock] = field(default_factory=list)
    #: heights below ``covered`` where the primary differs but already holds the
    #: verified rows (the replica's own rows are the altered ones)
    replica_rows_altered: list[int] = field(default_factory=list)
    #: differing heights no signed checkpoint covers
    not_covered: list[int] = field(default_factory=list)

    @property
    def heights(self) -> list[int]:
        return [b.header.height for b in self.blocks]

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "replica_size": self.replica_size,
            "covered": self.covered,
            "checkpoints_matched": self.checkpoints_matched,
            "checkpoints_beyond_replica": self.checkpoints_beyond,
            "refused": self.refused,
            "code": self.code,
            "restore_heights": self.heights,
            "replica_rows_altered": self.replica_rows_altered,
            "not_covered": self.not_covered,
        }


@dataclass
class RestorePlan:
    chains: list[ChainPlan]
    checkpoints: SignedCheckpoints
    comparison: Comparison

    @property
    def blocks(self) -> list[SealedBlock]:
        return [b for c in self.chains for b in c.blocks]

    @property
    def complete(self) -> bool:
        """Every difference is restorable: no chain refused, nothing uncovered."""
        return all(c.refused is None and not c.not_covered for c in self.chains)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": self.checkpoints.to_json(),
            "chains": [c.to_json() for c in self.chains],
            "blocks_to_restore": len(self.blocks),
        }


def _refuse(plan: ChainPlan, code: str, reason: str) -> ChainPlan:
    plan.refused, plan.code, plan.blocks = reason, code, []
    return plan


def _norm(row: Sequence[Any]) -> Row:
    """A row as the reader returns it (strings as bytes)."""
    return tuple(v.encode("utf-8") if isinstance(v, str) else v for v in row)


def expected_rows(store: ChainStore, block: SealedBlock) -> dict[str, list[Row]]:
    """The rows the processor wrote for ``block``, per table, as the reader returns them."""
    kind = store.kind_of(block.header.chain_id)
    return {
        "blocks": sorted(map(_norm, header_rows([block])), key=repr),
        kind.table: sorted(map(_norm, event_rows([block], kind)), key=repr),
        "source_attestations": sorted(map(_norm, attestation_rows([block])), key=repr),
        "source_batches": sorted(map(_norm, batch_rows([block])), key=repr),
    }


def stored_rows(store: ChainStore, chain_id: str, height: int) -> dict[str, list[Row]]:
    """The rows ``store`` holds for ``chain_id`` at ``height``, per table."""
    return {
        table: sorted(block_rows(store, chain_id, table, columns, height, height), key=repr)
        for table, columns, _ in tables_of(store, chain_id)
    }


def _plan_chain(
    primary: ChainStore,
    replica: ChainStore,
    chain_id: str,
    keys: TrustedKeys,
    checkpoints: SignedCheckpoints,
    comparison: Comparison,
) -> ChainPlan:
    plan = ChainPlan(chain_id)
    signed = checkpoints.by_chain.get(chain_id, {})
    conflicting = sorted(n for c, n in checkpoints.conflicting if c == chain_id)
    if conflicting:
        return _refuse(
            plan,
            "CHECKPOINT_CONFLICT",
            f"the log signed two histories at size {conflicting[0]}: which is genuine "
            "cannot be told from the checkpoints",
        )
    try:
        hashes = chain_block_hashes(replica, chain_id)
    except ChainTreeError as exc:
        return _refuse(plan, "REPLICA_BROKEN", f"the replica's blocks are not one chain: {exc}")
    plan.replica_size = len(hashes)
    tree = ChainTree()
    for size in sorted(signed):
        if size > len(hashes):
            plan.checkpoints_beyond += 1
            continue
        tree = tree.extend(block_leaf_hash(h) for h in hashes[tree.size : size])
        cp = signed[size]
        if tree.root != cp.root_hash or (size and hashes[size - 1] != cp.head_hash):
            return _refuse(
                plan,
                "REPLICA_MISMATCH",
                f"the replica's first {size} blocks are not the signed checkpoint of size "
                f"{size} (root {tree.root.hex()[:16]}…, signed {cp.root_hash.hex()[:16]}…)",
            )
        plan.checkpoints_matched += 1
        plan.covered = size
    chain = compare_chain(primary, replica, chain_id, comparison, upto=len(hashes) - 1)
    kind = primary.kind_of(chain_id)
    if kind.private_columns and chain.heights:
        return _refuse(
            plan,
            "SEALED_NOT_RESTORABLE",
            "a sealed chain (ADR 0037): the replica holds its signed documents, not the "
            "sealed parts and pseudonyms the key store made; restore it from a backup of "
            "the primary",
        )
    for height in sorted(chain.heights):
        if height >= plan.covered:
            plan.not_covered.append(height)
            continue
        want = hashes[height].hex()
        material = [m for m in stored_block_records(replica, chain_id, height, height)]
        material = [m for m in material if m.block_hash == want]
        if not material:
            return _refuse(
                plan,
                "REPLICA_MISMATCH",
                f"the replica has no readable block {want[:16]}… at height {height}",
            )
        try:
            block = verify_material(material[0], kind, keys)
        except Refused as exc:
            return _refuse(
                plan, exc.code, f"the replica's block at height {height} does not verify: {exc}"
            )
        if height and block.header.prev_hash != hashes[height - 1].hex():
            return _refuse(
                plan, "PREV_HASH_MISMATCH", f"the replica's block at {height} is not linked"
            )
        expected = expected_rows(primary, block)
        if stored_rows(replica, chain_id, height) != expected:
            plan.replica_rows_altered.append(height)
        if stored_rows(primary, chain_id, height) == expected:
            continue  # the primary is right; the replica's derived columns were altered
        plan.blocks.append(block)
    return plan


def plan_restore(
    primary: ChainStore,
    replica: ChainStore,
    keys: TrustedKeys,
    checkpoints: SignedCheckpoints,
    chains: Sequence[str] | None = None,
) -> RestorePlan:
    """What to restore, chain by chain (nothing is written)."""
    names = (
        sorted(chains)
        if chains is not None
        else sorted(set(primary.chain_ids()) | set(replica.chain_ids()) | set(checkpoints.by_chain))
    )
    comparison = Comparison()
    plans = [_plan_chain(primary, replica, name, keys, checkpoints, comparison) for name in names]
    return RestorePlan(plans, checkpoints, comparison)


# --------------------------------------------------------------------------- ledger


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def restore_event(block: SealedBlock, by: str, run_id: str, at: str | None = None) -> AccessEvent:
    """The access event that ledgers the restore of ``block`` (see the module doc)."""
    h = block.header
    digest = block.block_hash.hex()
    seed = hashlib.sha256(f"{run_id}\n{h.chain_id}\n{h.height}\n{digest}".encode()).hexdigest()
    place = f"{h.chain_id}#{h.height}"
    at = at or _now()
    return event_from_dict(
        {
            "schema": "careledger.access-event/1",
            "event_id": str(uuid.UUID(hex=seed[:32], version=4)),
            "occurred_at": at,
            "recorded_at": at,
            "event_type": {"system": DCM, "code": "110101", "display": "Audit Log Used"},
            "action": "U",
            "outcome": 0,
            "outcome_desc": "ledger block restored from a verified replica",
            "actor": {"id": by, "roles": [], "is_requestor": True},
            "source": {"system": RESTORE_SOURCE, "type": 4},
            "patient": {"id": NO_PATIENT_ID},
            "object": {
                "type": "ledger-block",
                "id": place if len(place) <= 256 else hashlib.sha256(place.encode()).hexdigest(),
            },
            "correlation_id": run_id,
            "raw_ref": {"format": RESTORE_RECORD_FORMAT, "sha256": digest},
        }
    )


# --------------------------------------------------------------------------- apply


def _wait_deleted(store: ChainStore, table: str, chain_id: str, heights: tuple[int, ...]) -> None:
    deadline = time.monotonic() + MUTATION_TIMEOUT_S
    while True:
        rows = store.backend.execute(
            f"SELECT count() FROM {store.db}.{table} WHERE chain_id = %(c)s AND height IN %(h)s",
            {"c": chain_id, "h": heights},
        )
        if not rows or int(rows[0][0]) == 0:
            return
        if time.monotonic() > deadline:
            raise StorageError(
                f"deleting the rows of {chain_id} to restore in {table} did not finish in "
                f"{MUTATION_TIMEOUT_S:.0f}s"
            )
        time.sleep(0.05)


def apply_restore(
    plan: RestorePlan, primary: ChainStore, ledger: Callable[[list[SealedBlock]], None]
) -> list[tuple[str, int]]:
    """Ledger, then restore every block of ``plan``; returns ``(chain, height)`` of each
    block whose rows in the primary are now exactly the verified ones. ``ledger`` raises
    if the restore cannot be ledgered (then nothing is touched)."""
    blocks = plan.blocks
    if not blocks:
        return []
    ledger(blocks)
    done: list[tuple[str, int]] = []
    for chain in plan.chains:
        if not chain.blocks:
            continue
        heights = tuple(chain.heights)
        tables = [t for t, _, _ in tables_of(primary, chain.chain_id)]
        for table in tables:
            primary.backend.execute(
                f"ALTER TABLE {primary.db}.{table} DELETE "
                "WHERE chain_id = %(c)s AND height IN %(h)s",
                {"c": chain.chain_id, "h": heights},
            )
        for table in tables:
            _wait_deleted(primary, table, chain.chain_id, heights)
        primary.write_blocks(chain.blocks)
        for block in chain.blocks:
            if stored_rows(primary, chain.chain_id, block.header.height) == expected_rows(
                primary, block
            ):
                done.append((chain.chain_id, block.header.height))
    return done
