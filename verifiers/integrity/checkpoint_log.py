"""What the signed checkpoint notes read so far prove, per chain (pure, no I/O).

``CheckpointLog`` takes the records of the checkpoints topic one by one (and, first,
the checkpoints this verifier remembered from earlier runs, ``remember``):

* A note is verified under each trusted public key with the note name = its chain id
  (the checkpoint's origin line, what C2SP witnesses require) or, for notes published
  before witnesses, ``Settings.origin``. A note signed by no trusted key (or not a note at all) is
  ignored, only counted; a note carrying a signature line of a trusted key that does
  *not* verify is an integrity finding (``SIGNATURE_INVALID``): someone forges
  checkpoints.
* Per chain the verified checkpoint with the greatest size is the chain's known head
  (``heads``: the ``careledger-head`` block hash at height size - 1). Two verified
  checkpoints of one size naming different heads or different roots prove that the
  signing key signed two histories (``HEIGHT_FORK``, both in the details; the first one
  seen is kept).
* Tree checkpoints (ADR 0012: root = RFC 6962 root over the block hashes) are kept per
  size (``tree_checkpoints``) for ``verifiers.integrity.trees`` to compare with the
  store. A record's ``careledger-consistency`` header (not signed: anyone who can
  write to the topic can attach one) is an RFC 9162 proof from an older size. It is
  checked against the first checkpoint seen at that size (later, when that one arrives
  after it): a proof that leads to the new root proves the new checkpoint extends the
  old one (``proofs_verified``), or, if it leads to the new root from *another* old root,
  proves it does not (``CHECKPOINT_INCONSISTENT``: a fork or rollback in the checkpoint
  log). A proof that does not lead to the new root proves nothing (``proofs_unusable``).
* Legacy checkpoints (before ADR 0012: no ``careledger-head`` line, root = head block
  hash) still name a head; they are counted as ``legacy`` and not compared as trees.

* With a witness policy (ADR 0018: k of n witness keys), the valid cosignatures on each
  verified tree checkpoint are counted, merged across every note of the same checkpoint
  (the processor's own, the cosigner's republication, the copies witnesses serve:
  ``add_witnessed``). ``witnessed`` gives per chain the largest checkpoint with a quorum.
  A cosignature line naming a policy witness that does not verify is a finding
  (``COSIGNATURE_INVALID``): someone forges cosignatures.

``CheckpointLog`` also notes what the reader found missing from the topic
(``records_missing``: records below the log-start offset of a topic that must keep
everything, ``remembered_missing``: a checkpoint this verifier read before that is no
longer there): ``CHECKPOINTS_MISSING`` findings.
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from careledger_core.chain_tree import consistency_roots
from careledger_core.checkpoint import (
    CONSISTENCY_HEADER,
    Checkpoint,
    open_note,
    parse_checkpoint,
    parse_consistency,
)
from careledger_core.cosignature import WitnessPolicy, check_quorum
from careledger_core.errors import (
    CheckpointError,
    NoteUnverifiedError,
    ProofError,
    SignatureError,
)
from careledger_core.findings import Finding, FindingCode
from careledger_core.signing import PublicKey
from verifiers.integrity.fsck import VerifiedHead

__all__ = ["CheckpointLog", "SeenCheckpoint", "consistency_header"]

C = FindingCode

#: Findings kept (all are counted).
MAX_FINDINGS = 1000
_MAX_KEY_TEXT = 200

Headers = Sequence[tuple[str, bytes | str | None]] | None


@dataclass(frozen=True, slots=True)
class SeenCheckpoint:
    """A verified checkpoint, its note, and where it was read (``source="state"``: a
    checkpoint this verifier remembered from an earlier run, at its topic position)."""

    checkpoint: Checkpoint
    partition: int
    offset: int
    note: str = ""
    source: str = "topic"

    @property
    def chain(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def height(self) -> int:
        return self.checkpoint.size - 1

    @property
    def root_hex(self) -> str:
        return self.checkpoint.root_hash.hex()

    @property
    def head_hex(self) -> str:
        return self.checkpoint.head_hash.hex()

    def head(self) -> VerifiedHead:
        return VerifiedHead(self.height, self.head_hex, None, "checkpoint")

    def location(self) -> dict[str, Any]:
        if self.source.startswith("witness:"):
            return {"witness": self.source.removeprefix("witness:")}
        where: dict[str, Any] = {"partition": self.partition, "offset": self.offset}
        if self.source != "topic":
            where["remembered"] = True
        return where

    def describe(self) -> dict[str, Any]:
        """Evidence for a finding: size, root, head, where, the signed note."""
        return {
            "size": self.size,
            "root": self.root_hex,
            "head_hash": self.head_hex,
            **self.location(),
            "note": self.note,
        }

    def conflicts_with(self, other: SeenCheckpoint) -> bool:
        """Same size, and another head block or (both trees) another root."""
        a, b = self.checkpoint, other.checkpoint
        if a.head_hash != b.head_hash:
            return True
        return a.is_tree and b.is_tree and a.root_hash != b.root_hash


def consistency_header(headers: Headers) -> str | None:
    """The ``careledger-consistency`` header's text, if the record has one."""
    for name, value in headers or ():
        if name == CONSISTENCY_HEADER and value is not None:
            if isinstance(value, str):
                return value
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return ""
    return None


@dataclass
class CheckpointLog:
    """What the notes read so far prove: see the module doc."""

    origin: str  # Settings.origin: the legacy note name (now notes are named by chain id)
    trusted: tuple[PublicKey, ...]
    topic: str = ""
    # Only chains of this deployment's topics count: other pipelines (a benchmark, a
    # second topic) may publish to the same checkpoints topic.
    chain_prefix: str | tuple[str, ...] = ""
    best: dict[str, SeenCheckpoint] = field(default_factory=dict)
    #: every size seen per chain, first checkpoint seen at each (tree and legacy)
    by_size: dict[str, dict[int, SeenCheckpoint]] = field(default_factory=dict)
    #: the same for tree checkpoints only (what proofs and the store are compared with)
    tree_by_size: dict[str, dict[int, SeenCheckpoint]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    notes: int = 0  # records read from the topic
    verified: int = 0  # verified under a trusted key
    untrusted: int = 0  # well-formed notes without a signature of a trusted key: ignored
    malformed: int = 0  # not a signed note, or a signed body that is not a checkpoint
    foreign: int = 0  # verified, but of a chain outside ``chain_prefix``: ignored
    invalid: int = 0  # a trusted key's signature line that fails: a finding each
    forks: int = 0
    legacy: int = 0  # verified checkpoints whose root is a head block hash (pre ADR 0012)
    remembered: int = 0  # checkpoints remembered by this verifier's state
    proofs_verified: int = 0
    proofs_unusable: int = 0  # attached proofs that do not lead to the new root
    inconsistent: int = 0
    missing: int = 0  # CHECKPOINTS_MISSING findings
    _forks_seen: set[tuple[str, int, str, str]] = field(default_factory=set)
    # proofs waiting for the checkpoint at their old size: (chain, old size) -> ...
    _pending: dict[tuple[str, int], list[tuple[SeenCheckpoint, tuple[bytes, ...]]]] = field(
        default_factory=dict
    )
    _remembered_at: dict[tuple[int, int], SeenCheckpoint] = field(default_factory=dict)
    _confirmed: set[tuple[int, int]] = field(default_factory=set)
    #: the witnesses whose cosignatures count, and how many a checkpoint needs
    policy: WitnessPolicy | None = None
    #: (chain, size, root hex) -> witness name -> newest valid cosignature timestamp
    cosigned: dict[tuple[str, int, str], dict[str, int]] = field(default_factory=dict)
    #: (chain, size, root hex) -> the first verified note of that checkpoint
    _cosigned_seen: dict[tuple[str, int, str], SeenCheckpoint] = field(default_factory=dict)
    forged_cosignatures: int = 0
    from_witnesses: int = 0  # checkpoints served by witnesses (``add_witnessed``)

    def __post_init__(self) -> None:
        self.trusted = tuple(self.trusted)
        if not self.trusted:
            raise ValueError("no trusted key to verify checkpoints with")

    # ------------------------------------------------------------------ input
    def add(
        self,
        value: bytes | None,
        *,
        key: bytes | None,
        partition: int,
        offset: int,
        headers: Headers = None,
    ) -> None:
        """Take one record of the checkpoints topic."""
        self.notes += 1
        where = {"topic": self.topic, "partition": partition, "offset": offset}
        try:
            note = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            self.malformed += 1
            return
        remembered = self._remembered_at.get((partition, offset))
        if remembered is not None and remembered.note == note:
            self._confirmed.add((partition, offset))
        cp = self._open(note, key, where)
        if cp is None:
            return
        self.verified += 1
        self._take(SeenCheckpoint(cp, partition, offset, note), consistency_header(headers))

    def remember(self, note: str, *, partition: int, offset: int) -> bool:
        """Take a checkpoint this verifier read at ``partition``/``offset`` in an earlier
        run (from its state directory). False if it no longer verifies (the key is no
        longer trusted, or the note is not what it was): then it is ignored."""
        try:
            cp = self._verified_checkpoint(note)
        except (CheckpointError, SignatureError):
            return False
        if cp is None:
            return False
        seen = SeenCheckpoint(cp, partition, offset, note, source="state")
        self.remembered += 1
        self._remembered_at[(partition, offset)] = seen
        self._take(seen, None)
        return True

    def add_witnessed(self, note: str, witness: str) -> None:
        """Take the latest checkpoint a witness says it cosigned (fetched from it): it
        counts like a topic record (the log's signature must verify) but is located at
        the witness."""
        where: dict[str, Any] = {"witness": witness}
        cp = self._open(note, None, where)
        if cp is None:
            return
        self.from_witnesses += 1
        self._take(SeenCheckpoint(cp, -1, -1, note, source=f"witness:{witness}"), None)

    def _verified_checkpoint(self, note: str) -> Checkpoint | None:
        """The checkpoint if a trusted key signed ``note`` (None if none did); raises
        SignatureError for a failing trusted signature, CheckpointError if malformed."""
        body: str | None = None
        chain = note.partition("\n")[0]
        for public_key in self.trusted:
            try:
                opened = open_note(note, {chain: public_key, self.origin: public_key})
            except NoteUnverifiedError:
                continue  # no signature line by this key
            except SignatureError as exc:
                exc.details.setdefault("key_id", public_key.key_id)
                raise
            body = opened if body is None else body
        return None if body is None else parse_checkpoint(body)

    def _open(self, note: str, key: bytes | None, where: dict[str, Any]) -> Checkpoint | None:
        try:
            cp = self._verified_checkpoint(note)
        except SignatureError as exc:
            self.invalid += 1
            chain, height = _claimed(note, key)
            key_id = exc.details.get("key_id")
            self._emit(
                C.SIGNATURE_INVALID,
                chain,
                height,
                f"checkpoint note {_where(self.topic, where)} carries a signature by "
                f"trusted key {key_id} that does not verify",
                {"source": "checkpoint", **where, "key_id": key_id, "reason": exc.message},
            )
            return None
        except CheckpointError:
            self.malformed += 1
            return None
        if cp is None:
            self.untrusted += 1
        return cp

    def _take(self, seen: SeenCheckpoint, proof_text: str | None) -> None:
        cp = seen.checkpoint
        if not cp.origin.startswith(self.chain_prefix):
            self.foreign += 1
            return
        if cp.size == 0:
            return  # an empty chain: nothing to compare
        try:
            cp.head_hash  # noqa: B018 - validates the careledger-head line
        except CheckpointError:
            self.malformed += 1
            return
        if not cp.is_tree:
            self.legacy += 1
        elif self.policy is not None:
            self._count_cosignatures(seen)
        chain = cp.origin
        for sizes in (self.by_size, self.tree_by_size) if cp.is_tree else (self.by_size,):
            first = sizes.setdefault(chain, {}).setdefault(cp.size, seen)
            if first is not seen and seen.conflicts_with(first):
                self._fork(first, seen)  # reported once per conflicting checkpoint
        if cp.is_tree and self.tree_by_size[chain][cp.size] is seen:
            for waiting, proof in self._pending.pop((chain, cp.size), []):
                self._check_proof(seen, waiting, proof)
        best = self.best.get(chain)
        if best is None or cp.size > best.size:
            self.best[chain] = seen
        if proof_text is not None and cp.is_tree:
            self._take_proof(seen, proof_text)

    def _count_cosignatures(self, seen: SeenCheckpoint) -> None:
        assert self.policy is not None
        try:
            result = check_quorum(seen.note, self.policy)
        except CheckpointError:
            return  # the note verified, so its framing is sound: nothing to count
        key = (seen.chain, seen.size, seen.root_hex)
        self._cosigned_seen.setdefault(key, seen)
        names = self.cosigned.setdefault(key, {})
        for name, cos in result.cosigned.items():
            names[name] = max(names.get(name, 0), cos.timestamp)
        for name in result.invalid:
            self.forged_cosignatures += 1
            self._emit(
                C.COSIGNATURE_INVALID,
                seen.chain,
                seen.height,
                f"the checkpoint of size {seen.size} {_where(self.topic, seen.location())} "
                f"carries a cosignature line of witness {name} (its name and key id) that "
                "does not verify: someone forges witness cosignatures",
                {"source": "cosignature", "witness": name, "checkpoint": seen.describe()},
            )

    def witnessed(self) -> dict[str, tuple[SeenCheckpoint, dict[str, int]]]:
        """Per chain, the largest checkpoint whose valid cosignatures (merged over its
        notes) reach the policy's quorum, with the witnesses and their timestamps."""
        if self.policy is None:
            return {}
        out: dict[str, tuple[SeenCheckpoint, dict[str, int]]] = {}
        for key, names in self.cosigned.items():
            if len(names) < self.policy.quorum:
                continue
            seen = self._cosigned_seen[key]
            best = out.get(seen.chain)
            if best is None or seen.size > best[0].size:
                out[seen.chain] = (seen, dict(sorted(names.items())))
        return out

    def _take_proof(self, seen: SeenCheckpoint, text: str) -> None:
        try:
            old_size, proof = parse_consistency(text)
        except CheckpointError:
            self.proofs_unusable += 1
            return
        if not 0 < old_size < seen.size:
            if old_size == 0 and not proof:
                self.proofs_verified += 1  # from the empty tree: nothing to prove
            elif old_size != seen.size or proof:
                self.proofs_unusable += 1
            return
        old = self.tree_by_size.get(seen.chain, {}).get(old_size)
        if old is None:
            self._pending.setdefault((seen.chain, old_size), []).append((seen, proof))
        else:
            self._check_proof(old, seen, proof)

    def _check_proof(
        self, old: SeenCheckpoint, new: SeenCheckpoint, proof: Sequence[bytes]
    ) -> None:
        try:
            old_root, new_root = consistency_roots(
                old.size, new.size, proof, old.checkpoint.root_hash
            )
        except ProofError:
            self.proofs_unusable += 1
            return
        if not hmac.compare_digest(new_root, new.checkpoint.root_hash):
            self.proofs_unusable += 1  # not a proof about this tree: proves nothing
            return
        if hmac.compare_digest(old_root, old.checkpoint.root_hash):
            self.proofs_verified += 1
            return
        self.inconsistent += 1
        self._emit(
            C.CHECKPOINT_INCONSISTENT,
            new.chain,
            new.height,
            f"the signed checkpoint of size {new.size} does not extend the signed checkpoint "
            f"of size {old.size}: its tree has another root at size {old.size} "
            f"({old_root.hex()[:16]}… instead of {old.root_hex[:16]}…); the log signed two "
            "histories (a fork, or a rollback and a rewrite)",
            {
                "source": "checkpoint",
                "topic": self.topic,
                "how": "consistency proof",
                "older": old.describe(),
                "newer": new.describe(),
                "newer_tree_root_at_older_size": old_root.hex(),
            },
        )

    def _fork(self, kept: SeenCheckpoint, seen: SeenCheckpoint) -> None:
        fork = (seen.chain, seen.size, seen.head_hex, seen.root_hex)
        if fork in self._forks_seen:
            return
        self._forks_seen.add(fork)
        self.forks += 1
        self._emit(
            C.HEIGHT_FORK,
            seen.chain,
            seen.height,
            f"two checkpoints signed by a trusted key name different histories at size "
            f"{seen.size}: head {kept.head_hex[:16]}… root {kept.root_hex[:16]}… and head "
            f"{seen.head_hex[:16]}… root {seen.root_hex[:16]}…",
            {
                "source": "checkpoint",
                "topic": self.topic,
                "kept": kept.head_hex,
                "kept_root": kept.root_hex,
                "blocks": [
                    {"block_hash": kept.head_hex, "root": kept.root_hex, **kept.location()},
                    {"block_hash": seen.head_hex, "root": seen.root_hex, **seen.location()},
                ],
                "notes": [kept.note, seen.note],
                "witnessed": [self._witnessed_by(kept), self._witnessed_by(seen)],
            },
        )

    def _witnessed_by(self, seen: SeenCheckpoint) -> list[str]:
        """The policy witnesses whose valid cosignatures this checkpoint carries."""
        return sorted(self.cosigned.get((seen.chain, seen.size, seen.root_hex), {}))

    # ------------------------------------------------------------------ missing records
    def records_missing(self, partition: int, log_start: int) -> None:
        """The topic's partition starts at ``log_start`` > 0: records were removed from a
        topic whose checkpoints are kept forever (DeleteRecords, or retention set on it)."""
        self.missing += 1
        self._emit(
            C.CHECKPOINTS_MISSING,
            self.topic,
            None,
            f"the first {log_start} record(s) of {self.topic}[{partition}] are gone (log "
            f"start offset {log_start}): checkpoints are kept forever, so someone deleted "
            "them (DeleteRecords) or set a retention on the topic; what they proved is lost "
            "to a verifier that did not read them before",
            {
                "source": "checkpoint",
                "topic": self.topic,
                "partition": partition,
                "log_start_offset": log_start,
            },
        )

    def topic_restarted(self, partition: int, end: int, read_before: int) -> None:
        """The partition ends before an offset read earlier: recreated or truncated."""
        self.missing += 1
        self._emit(
            C.CHECKPOINTS_MISSING,
            self.topic,
            None,
            f"{self.topic}[{partition}] now ends at offset {end}, before offset {read_before} "
            "read earlier: the topic was deleted and recreated, or truncated",
            {
                "source": "checkpoint",
                "topic": self.topic,
                "partition": partition,
                "end_offset": end,
                "read_before": read_before,
            },
        )

    def check_remembered(self, ends: Mapping[int, tuple[int, int]]) -> None:
        """After a complete read: every remembered checkpoint must still be in the topic
        at its position (``ends``: partition -> (log start, end offset))."""
        for (partition, offset), seen in sorted(self._remembered_at.items()):
            if (partition, offset) in self._confirmed:
                continue
            low, high = ends.get(partition, (0, 0))
            why = (
                f"below the log start offset {low}"
                if offset < low
                else f"past the end of the topic ({high})"
                if offset >= high
                else "replaced by another record"
            )
            self.missing += 1
            self._emit(
                C.CHECKPOINTS_MISSING,
                seen.chain,
                seen.height,
                f"the checkpoint of size {seen.size} this verifier read at "
                f"{self.topic}[{partition}]@{offset} is no longer in the topic ({why}); "
                "it is still used as a known head",
                {"source": "checkpoint", "topic": self.topic, "remembered": seen.describe()},
            )

    def _emit(
        self,
        code: FindingCode,
        chain: str,
        height: int | None,
        message: str,
        details: dict[str, Any],
    ) -> None:
        self.findings_total += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding.of(code, chain, message, height=height, details=details))

    # ------------------------------------------------------------------ output
    def heads(self) -> dict[str, VerifiedHead]:
        return {chain: self._preferred(seen).head() for chain, seen in self.best.items()}

    def tree_checkpoints(self) -> dict[str, list[SeenCheckpoint]]:
        """Per chain, the tree checkpoint of each size the store is compared with: the
        quorum-witnessed one if two differ (a fork), else the first seen."""
        return {
            chain: [self._preferred(s) for _, s in sorted(sizes.items())]
            for chain, sizes in self.tree_by_size.items()
        }

    def _preferred(self, seen: SeenCheckpoint) -> SeenCheckpoint:
        """``seen``, or the checkpoint of the same chain and size that a quorum of
        witnesses cosigned if ``seen`` is not it: what the witnesses vouch for is what
        the store must hold (the other one is reported as a fork)."""
        if self.policy is None:
            return seen
        key = (seen.chain, seen.size, seen.root_hex)
        if len(self.cosigned.get(key, {})) >= self.policy.quorum:
            return seen
        for (chain, size, _root), names in self.cosigned.items():
            if chain == seen.chain and size == seen.size and len(names) >= self.policy.quorum:
                return self._cosigned_seen[(chain, size, _root)]
        return seen

    def counts(self) -> dict[str, int]:
        return {
            "notes": self.notes,
            "verified": self.verified,
            "untrusted": self.untrusted,
            "malformed": self.malformed,
            "foreign": self.foreign,
            "invalid": self.invalid,
            "forks": self.forks,
            "chains": len(self.best),
            "legacy": self.legacy,
            "remembered": self.remembered,
            "proofs_verified": self.proofs_verified,
            "proofs_unusable": self.proofs_unusable,
            "proofs_pending": sum(len(v) for v in self._pending.values()),
            "inconsistent": self.inconsistent,
            "missing": self.missing,
            "from_witnesses": self.from_witnesses,
            "forged_cosignatures": self.forged_cosignatures,
        }


def _where(topic: str, where: Mapping[str, Any]) -> str:
    if "witness" in where:
        return f"served by witness {where['witness']}"
    if "partition" in where:
        return f"at {topic}[{where['partition']}]@{where['offset']}"
    return "remembered by this verifier"


def _claimed(note: str, key: bytes | None) -> tuple[str, int | None]:
    """Chain and height a note *claims* (unverified; for locating a finding only)."""
    split = note.rfind("\n\n")
    try:
        cp = parse_checkpoint(note[: split + 1]) if split > 0 else None
    except (CheckpointError, binascii.Error, ValueError):
        cp = None
    if cp is not None:
        return cp.origin, cp.size - 1
    text = (key or b"").decode("utf-8", errors="replace")[:_MAX_KEY_TEXT]
    return text or "?", None
