"""The witness policy in ``careledger verify-proof`` (ADR 0019): is every line's block in
a checkpoint a quorum of witnesses cosigned? Pure, no I/O.

An access report exported under a witness policy carries, per chain it cites, one
checkpoint note (``doc["checkpoints"]``: ``[{"chain_id", "size", "cosigned_by",
"note"}]``, the note being the whole C2SP signed note with the log's signature line and
the witnesses' tlog-cosignature lines) and, per line whose block it covers, an RFC 9162
inclusion proof of that block in the checkpoint's tree (``proof.block_inclusion``:
``{"tree_size", "audit_path": [hex]}``; the leaf is
``careledger_core.chain_tree.block_leaf_hash(block hash of the line's signed header)``
at index = the block's height, ADR 0012).

:func:`check_witnessing` decides, with only the verifier's trusted keys (the processor
key(s) and the witnesses of its own witnesses file), for each checkpoint:

* **tampered** (``CHECKPOINT_INVALID``, ``CHECKPOINT_SIGNATURE_INVALID``,
  ``CHECKPOINT_KEY_UNKNOWN``, ``COSIGNATURE_INVALID``): not a tree checkpoint note, of
  another chain than it says, listed twice, a trusted key's signature that does not
  verify, signed by no trusted key, or a cosignature line with a policy witness's name
  and key id that does not verify (someone forges cosignatures);
* **witnessed**: the log signed it and ``quorum`` of the policy's witnesses cosigned it;
* **cannot tell**: short of the quorum only because some of the policy's witnesses
  cosigned under another key than the witnesses file names (a rotated witness key: fix
  the file);
* **not yet witnessed**: signed by the log, but short of the quorum;

and for each line (whose own proof, ADR 0009, verified the signed block header):

* the line's ``block_inclusion`` must lead from its block to the checkpoint's root for
  the checkpoint's size, else ``BLOCK_PROOF_INVALID`` (tampered: an edited proof, or a
  checkpoint of another history swapped in); a block the checkpoint covers without a
  proof is ``BLOCK_PROOF_MISSING``;
* then the line is as witnessed as its checkpoint; a line in a block the checkpoint does
  not cover (newer), or of a chain with no checkpoint in the report, is **not yet
  witnessed** (re-export once the cosigner has run).

Failures are appended to the line's :class:`~verifiers.reports.proofs.ProofResult`
(``fail``): a tampered witness part makes the line fail like any other proof. Lines get
``ProofResult.witnessing``; the whole report gets a :class:`WitnessVerdict` whose
``status`` feeds the exit code (precedence as ``careledger verify``: tampered, cannot
tell, not yet witnessed, witnessed).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from careledger_core.chain_tree import block_leaf_hash
from careledger_core.checkpoint import (
    Checkpoint,
    note_key_hash,
    open_note,
    parse_checkpoint,
)
from careledger_core.cosignature import WitnessPolicy, check_quorum, split_note
from careledger_core.errors import (
    CareledgerError,
    CheckpointError,
    NoteUnverifiedError,
    SignatureError,
)
from careledger_core.merkle import verify_inclusion
from careledger_core.signing import PublicKey
from verifiers.reports.proofs import ProofResult

__all__ = [
    "CANNOT_TELL",
    "NOT_WITNESSED",
    "NO_POLICY",
    "TAMPERED",
    "WITNESSED",
    "ChainCheckpoint",
    "WitnessVerdict",
    "check_witnessing",
    "open_log_checkpoint",
]

WITNESSED: Final = "witnessed"
NOT_WITNESSED: Final = "not_witnessed"
CANNOT_TELL: Final = "cannot_tell"
TAMPERED: Final = "tampered"
NO_POLICY: Final = "no_policy"
#: ProofResult.witnessing status of a line whose own proof failed before its block was known
NOT_CHECKED: Final = "not_checked"


def _line_signer(line: str) -> tuple[str, bytes] | None:
    """(key name, 4-byte key hash) of a signature line, None if it is not one."""
    parts = line.split(" ")
    if len(parts) != 3:
        return None
    try:
        blob = base64.b64decode(parts[2].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return (parts[1], blob[:4]) if len(blob) >= 4 else None


def open_log_checkpoint(
    note: str, trusted: Iterable[PublicKey]
) -> tuple[Checkpoint, tuple[str, ...]]:
    """The tree checkpoint of a signed note and the log's signature lines on it.

    The note's key name is its origin (the chain id, ADR 0013). Raises
    :class:`SignatureError` if a trusted key's line does not verify,
    :class:`NoteUnverifiedError` if no trusted key signed it, :class:`CheckpointError`
    if it is malformed or not a tree checkpoint (ADR 0012).
    """
    if not isinstance(note, str):
        raise CheckpointError("a checkpoint note is text")
    origin = note.partition("\n")[0]
    body: str | None = None
    signers: list[PublicKey] = []
    for key in trusted:
        try:
            body = open_note(note, {origin: key})
        except NoteUnverifiedError:
            continue
        signers.append(key)
    if body is None:
        raise NoteUnverifiedError(f"checkpoint of {origin[:100]!r} is signed by no trusted key")
    cp = parse_checkpoint(body)
    cp.head_hash  # noqa: B018 - validates the careledger-head line
    if not cp.is_tree:
        raise CheckpointError("a legacy checkpoint (no careledger-head line): no tree to prove in")
    hashes = {note_key_hash(origin, key) for key in signers}
    lines = tuple(
        line for line in split_note(note)[1] if _line_signer(line) in {(origin, h) for h in hashes}
    )
    return cp, lines


@dataclass
class ChainCheckpoint:
    """One checkpoint of the report, as the verifier judged it."""

    position: int  # in doc["checkpoints"]
    chain_id: str | None
    status: str = TAMPERED
    checkpoint: Checkpoint | None = None  # set once the log's signature verified
    cosigned_by: tuple[str, ...] = ()
    codes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, code: str, reason: str) -> None:
        self.status = TAMPERED
        self.codes.append(code)
        self.reasons.append(reason)

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "position": self.position,
            "chain_id": self.chain_id,
            "status": self.status,
            "size": None if cp is None else cp.size,
            "root": None if cp is None else base64.b64encode(cp.root_hash).decode("ascii"),
            "cosigned_by": list(self.cosigned_by),
            "codes": list(self.codes),
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


@dataclass
class WitnessVerdict:
    """The witness policy's verdict over a report."""

    policy: dict[str, Any]
    checkpoints: list[ChainCheckpoint] = field(default_factory=list)
    #: line -> status (witnessed | not_witnessed | cannot_tell | tampered | not_checked)
    lines: dict[int, str] = field(default_factory=dict)

    def lines_with(self, status: str) -> list[int]:
        return sorted(i for i, s in self.lines.items() if s == status)

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checkpoints} | set(self.lines.values())
        for worst in (TAMPERED, NOT_CHECKED, CANNOT_TELL, NOT_WITNESSED):
            if worst in statuses:
                return TAMPERED if worst == NOT_CHECKED else worst
        return WITNESSED

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            **self.policy,
            "witnessed_lines": len(self.lines_with(WITNESSED)),
            "not_witnessed_lines": self.lines_with(NOT_WITNESSED),
            "cannot_tell_lines": self.lines_with(CANNOT_TELL),
            "checkpoints": [c.to_json() for c in self.checkpoints],
        }


def _judge(
    position: int, entry: object, trusted: Sequence[PublicKey], policy: WitnessPolicy, setting: str
) -> ChainCheckpoint:
    chain = entry.get("chain_id") if isinstance(entry, Mapping) else None
    judged = ChainCheckpoint(position, chain if isinstance(chain, str) else None)
    note = entry.get("note") if isinstance(entry, Mapping) else None
    if not isinstance(note, str):
        judged.fail("CHECKPOINT_INVALID", "checkpoint entry without a note (text)")
        return judged
    try:
        cp, _log_lines = open_log_checkpoint(note, trusted)
    except SignatureError as exc:
        judged.fail("CHECKPOINT_SIGNATURE_INVALID", f"checkpoint note: {exc.message}")
        return judged
    except NoteUnverifiedError as exc:
        judged.fail(
            "CHECKPOINT_KEY_UNKNOWN",
            f"{exc.message} (if the log's key should be trusted: --trusted-key / "
            "CARELEDGER_TRUSTED_KEYS)",
        )
        return judged
    except CheckpointError as exc:
        judged.fail("CHECKPOINT_INVALID", f"checkpoint note: {exc.message}")
        return judged
    judged.checkpoint = cp
    if judged.chain_id is None:
        judged.chain_id = cp.origin
    elif judged.chain_id != cp.origin:
        claimed, judged.chain_id = judged.chain_id, cp.origin  # the signed origin counts
        judged.fail(
            "CHECKPOINT_INVALID", f"entry says chain {claimed}, the signed note is of {cp.origin}"
        )
        return judged
    if isinstance(entry, Mapping) and entry.get("size", cp.size) != cp.size:
        judged.fail("CHECKPOINT_INVALID", f"entry says size {entry['size']!r}, the note {cp.size}")
        return judged
    try:
        quorum = check_quorum(note, policy)
    except CheckpointError as exc:
        judged.fail("CHECKPOINT_INVALID", f"checkpoint note: {exc.message}")
        return judged
    judged.cosigned_by = tuple(sorted(quorum.cosigned))
    if quorum.invalid:
        judged.fail(
            "COSIGNATURE_INVALID",
            f"a cosignature line of witness(es) {', '.join(quorum.invalid)} (name and key id "
            "of the policy) does not verify: someone forges witness cosignatures",
        )
        return judged
    if quorum.met:
        judged.status = WITNESSED
        return judged
    stale = _other_key(note, policy, set(quorum.cosigned))
    have = f"{len(quorum.cosigned)} of the {policy.quorum} valid cosignatures needed"
    if stale and len(quorum.cosigned) + len(stale) >= policy.quorum:
        judged.status = CANNOT_TELL
        judged.notes.append(
            f"{have}; witness(es) {', '.join(stale)} cosigned under another key than "
            f"the one in {setting}: update their keys there"
        )
    else:
        judged.status = NOT_WITNESSED
        judged.notes.append(have)
    return judged


def _other_key(note: str, policy: WitnessPolicy, counted: set[str]) -> list[str]:
    """Policy witnesses (not counted) with a cosignature line under their name but
    another key id than the policy's."""
    lines = split_note(note)[1]
    out = []
    for witness in policy.witnesses:
        if witness.name in counted:
            continue
        for line in lines:
            signer = _line_signer(line)
            if signer is not None and signer[0] == witness.name and signer[1] != witness.key_hash:
                out.append(witness.name)
                break
    return out


def _block_proof(value: object) -> tuple[int, list[bytes]]:
    if not isinstance(value, Mapping):
        raise CheckpointError("proof.block_inclusion is not an object")
    size, path = value.get("tree_size"), value.get("audit_path")
    if type(size) is not int or size < 1:
        raise CheckpointError("proof.block_inclusion.tree_size is not a positive integer")
    if not isinstance(path, list) or not all(
        isinstance(p, str) and len(p) == 64 and p == p.lower() for p in path
    ):
        raise CheckpointError("proof.block_inclusion.audit_path is not a list of 32-byte hex")
    try:
        return size, [bytes.fromhex(p) for p in path]
    except ValueError as exc:
        raise CheckpointError("proof.block_inclusion.audit_path is not hex") from exc


def check_witnessing(
    doc: Mapping[str, Any],
    results: Sequence[ProofResult],
    trusted: Iterable[PublicKey],
    policy: WitnessPolicy,
    *,
    policy_json: Mapping[str, Any] | None = None,
    setting: str = "the witnesses file",
) -> WitnessVerdict:
    """Apply ``policy`` to the report ``doc`` whose lines ``verify_report`` checked into
    ``results`` (one ``ProofResult`` per line, updated in place). ``setting`` names
    where the policy came from, for messages (e.g. ``"--witnesses w.toml"``)."""
    keys = list(trusted)
    verdict = WitnessVerdict(dict(policy_json or {"quorum": policy.quorum}))
    entries = doc.get("checkpoints", [])
    by_chain: dict[str, ChainCheckpoint] = {}
    if not isinstance(entries, list):
        bad = ChainCheckpoint(0, None)
        bad.fail("CHECKPOINT_INVALID", "the report's checkpoints are not a list")
        verdict.checkpoints.append(bad)
        entries = []
    for position, entry in enumerate(entries):
        judged = _judge(position, entry, keys, policy, setting)
        verdict.checkpoints.append(judged)
        if judged.chain_id is None:
            continue
        if judged.chain_id in by_chain:
            judged.fail("CHECKPOINT_INVALID", f"a second checkpoint of chain {judged.chain_id}")
            first = by_chain[judged.chain_id]
            if first.status != TAMPERED:
                first.fail("CHECKPOINT_INVALID", f"a second checkpoint of chain {first.chain_id}")
            continue
        by_chain[judged.chain_id] = judged
    lines = doc.get("lines")
    for result in results:
        line = lines[result.line] if isinstance(lines, list) else None
        proof = line.get("proof") if isinstance(line, Mapping) else None
        status = _check_line(result, proof if isinstance(proof, Mapping) else {}, by_chain)
        verdict.lines[result.line] = status
    return verdict


def _check_line(
    result: ProofResult, proof: Mapping[str, Any], by_chain: Mapping[str, ChainCheckpoint]
) -> str:
    signed = result.signed_block
    if signed is None:  # the line's own proof failed before its block was known
        result.witnessing = {"status": NOT_CHECKED}
        return NOT_CHECKED
    chain, height, digest = signed
    judged = by_chain.get(chain)
    if judged is None:
        return _set(result, NOT_WITNESSED, f"the report carries no checkpoint of chain {chain}")
    cp = judged.checkpoint
    if cp is None:  # the checkpoint itself is tampered
        for code, reason in zip(judged.codes, judged.reasons, strict=True):
            result.fail(code, f"the report's checkpoint of {chain}: {reason}")
        return _set(result, TAMPERED, "the report's checkpoint of this chain is tampered")
    if "block_inclusion" in proof:
        try:
            size, path = _block_proof(proof["block_inclusion"])
            if size != cp.size:
                raise CheckpointError(
                    f"proof for a tree of {size} blocks, the checkpoint has {cp.size}"
                )
            verify_inclusion(block_leaf_hash(digest), height, cp.size, path, cp.root_hash)
        except CareledgerError as exc:
            result.fail(
                "BLOCK_PROOF_INVALID",
                f"block {height} is not proven in the checkpoint of size {cp.size}: {exc.message}",
            )
            return _set(result, TAMPERED, "the block's inclusion proof fails", cp.size)
    elif height < cp.size:
        result.fail(
            "BLOCK_PROOF_MISSING",
            f"the checkpoint of size {cp.size} covers block {height}, the line has no "
            "inclusion proof in it",
        )
        return _set(result, TAMPERED, "no inclusion proof of a covered block", cp.size)
    else:
        return _set(
            result,
            NOT_WITNESSED,
            f"block {height} is newer than the report's checkpoint of chain {chain} "
            f"(size {cp.size}): re-export once the cosigner has run",
            cp.size,
        )
    if judged.status == TAMPERED:
        for code, reason in zip(judged.codes, judged.reasons, strict=True):
            result.fail(code, f"the report's checkpoint of {chain}: {reason}")
        return _set(result, TAMPERED, "the report's checkpoint of this chain is tampered")
    reason = {
        WITNESSED: f"in the checkpoint of size {cp.size} cosigned by "
        f"{', '.join(judged.cosigned_by)}",
        NOT_WITNESSED: f"in the checkpoint of size {cp.size}, which is not cosigned by a "
        f"quorum ({'; '.join(judged.notes)})",
        CANNOT_TELL: f"in the checkpoint of size {cp.size}: {'; '.join(judged.notes)}",
    }[judged.status]
    return _set(result, judged.status, reason, cp.size, judged.cosigned_by)


def _set(
    result: ProofResult,
    status: str,
    reason: str,
    size: int | None = None,
    cosigned_by: tuple[str, ...] = (),
) -> str:
    result.witnessing = {
        "status": status,
        "checkpoint_size": size,
        "cosigned_by": list(cosigned_by),
        "reason": reason,
    }
    return status
