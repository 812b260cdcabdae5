"""C2SP witnessing, pure: tlog-cosignature/v1 and the tlog-witness ``add-checkpoint`` call.

Formats, exactly as the specifications say (C2SP tlog-cosignature v1.0.1, tlog-witness
as of C2SP commit 95978ca, signed-note v1.0.0, tlog-checkpoint v1.0.0):

* **Cosignature line**: ``careledger_core.cosignature`` (re-exported here): key ID
  SHA-256(<name> ‖ "\\n" ‖ 0x04 ‖ key)[:4], then an 8-byte timestamp and an Ed25519
  signature over ``"cosignature/v1\\ntime <timestamp>\\n" ‖ <note text>``. It says: as of
  ``timestamp`` the largest consistent tree the witness has seen for this origin has this
  root (nothing about extension lines).
* **add-checkpoint request body**::

      old <size>\\n                 size of the last checkpoint the client saw cosigned
      <base64 hash>\\n              0..63 lines: RFC 6962 consistency proof old -> new
      \\n
      <signed note of the checkpoint>

* **Responses**: 200 and one or more cosignature lines; 409 ``text/x.tlog.size`` with the
  witness's latest cosigned size and a newline; 404 unknown origin; 403 no valid
  signature by a trusted log key (or a trusted key's line fails); 400 malformed, or old
  size > checkpoint size; 422 the proof does not verify, a proof came with old size 0,
  a size-0 checkpoint without the empty root, or the same size with another root (422
  since C2SP commit 95978ca; tlog-witness v1.0.0 said 409).

The root is an opaque 32-byte RFC 6962 tree root and the size the tree size: this
module never asks what the leaves are.

The witness side is split so the I/O layer can make "check old size, then persist" one
atomic step: :func:`examine` (no state: parse, origin, log signature) then, inside the
caller's transaction, :func:`decide` against what the witness recorded. The client side
(the log asking for cosignatures, a verifier counting them) is
:func:`format_add_checkpoint`, :func:`read_add_checkpoint_response`,
:func:`attach_cosignatures`, :class:`WitnessPolicy` and :func:`check_quorum`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final

from .checkpoint import Checkpoint, open_note, parse_checkpoint
from .cosignature import (
    COSIGNATURE_ALGORITHM,
    ED25519_ALGORITHM,
    MAX_TIMESTAMP,
    Cosignature,
    QuorumResult,
    WitnessKey,
    WitnessPolicy,
    _b64,
    _b64decode,
    _canonical_body,
    _parse_signature_line,
    attach_cosignatures,
    check_quorum,
    cosign,
    cosignature_key_hash,
    cosignature_message,
    format_vkey,
    log_key_from_vkey,
    parse_vkey,
    split_note,
    verify_cosignature,
)
from .errors import CareledgerError, CheckpointError, ProofError, SignatureError, ValidationError
from .hashing import EMPTY_ROOT, HASH_SIZE
from .merkle import verify_consistency
from .signing import PublicKey

__all__ = [
    "COSIGNATURE_ALGORITHM",
    "ED25519_ALGORITHM",
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpointRefused",
    "AddCheckpointRequest",
    "Cosignature",
    "CosignedState",
    "Decision",
    "Evidence",
    "EvidenceKind",
    "LogKeys",
    "QuorumResult",
    "Status",
    "Submission",
    "WitnessAnswer",
    "WitnessKey",
    "WitnessPolicy",
    "WitnessRequestError",
    "attach_cosignatures",
    "check_quorum",
    "cosign",
    "cosignature_key_hash",
    "cosignature_message",
    "decide",
    "examine",
    "format_add_checkpoint",
    "format_vkey",
    "log_key_from_vkey",
    "parse_add_checkpoint",
    "parse_cosignature_lines",
    "parse_size_response",
    "parse_vkey",
    "read_add_checkpoint_response",
    "split_note",
    "verify_cosignature",
    "verify_fork",
]

MAX_PROOF_LINES: Final = 63
#: Default bound of an add-checkpoint body (a note with dozens of cosignatures and a
#: full 63-line proof is under 16 KiB; litewitness takes 10 KiB).
MAX_REQUEST_BYTES: Final = 65536
MAX_RESPONSE_LINES: Final = 100
SIZE_CONTENT_TYPE: Final = "text/x.tlog.size"

_DECIMAL = re.compile(r"\A(?:0|[1-9][0-9]{0,18})\Z")

#: origin -> {key name -> log public key}: the logs a witness cosigns.
LogKeys = Mapping[str, Mapping[str, PublicKey]]


class WitnessRequestError(ValidationError):
    """An add-checkpoint body or a witness response does not follow C2SP tlog-witness."""

    code = "WITNESS_REQUEST_INVALID"


class Status(IntEnum):
    """The HTTP status codes of C2SP tlog-witness ``add-checkpoint``."""

    OK = 200
    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    UNPROCESSABLE = 422


class AddCheckpointRefused(CareledgerError):
    """The witness refuses a request: ``status`` is the answer, ``latest_size`` the body of
    a 409. The message never contains the request's bytes."""

    code = "WITNESS_REFUSED"

    def __init__(self, status: Status, message: str, *, latest_size: int | None = None) -> None:
        super().__init__(message, details={"status": int(status), "latest_size": latest_size})
        self.status = status
        self.latest_size = latest_size


# -------------------------------------------------------- add-checkpoint: client side


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """``old_size``, the consistency proof from it, and the signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The add-checkpoint request body."""
    if type(old_size) is not int or not 0 <= old_size <= MAX_TIMESTAMP:
        raise WitnessRequestError("old size is an integer in 0..2^63-1")
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessRequestError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    if any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in proof):
        raise WitnessRequestError(f"proof hashes are {HASH_SIZE} bytes")
    split_note(note)
    lines = "".join(f"{_b64(h)}\n" for h in proof)
    return f"old {old_size}\n{lines}\n{note}".encode()


def parse_size_response(body: bytes) -> int:
    """The size of a 409 ``text/x.tlog.size`` body (decimal and a newline)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise WitnessRequestError("a size response is ASCII") from exc
    if not text.endswith("\n") or not _DECIMAL.match(text[:-1]):
        raise WitnessRequestError("a size response is a decimal and a newline")
    return int(text[:-1])


def parse_cosignature_lines(body: bytes) -> tuple[str, ...]:
    """The signature lines of a 200 answer (not yet verified: see :func:`check_quorum`)."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessRequestError("cosignature response too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WitnessRequestError("a cosignature response is UTF-8") from exc
    if not text.endswith("\n"):
        raise WitnessRequestError("a cosignature response is newline-terminated lines")
    lines = tuple(text[:-1].split("\n"))
    if len(lines) > MAX_RESPONSE_LINES:
        raise WitnessRequestError("too many cosignature lines")
    for line in lines:
        try:
            _parse_signature_line(line)
        except CheckpointError as exc:
            raise WitnessRequestError(f"cosignature response: {exc.message}") from exc
    return lines


@dataclass(frozen=True, slots=True)
class WitnessAnswer:
    """A witness's answer to add-checkpoint, read by the client."""

    status: int
    cosignatures: tuple[str, ...] = ()
    latest_size: int | None = None

    @property
    def cosigned(self) -> bool:
        return self.status == Status.OK


def read_add_checkpoint_response(
    status: int, content_type: str | None, body: bytes
) -> WitnessAnswer:
    """Interpret an answer: 200 -> its lines, 409 -> the witness's latest size, any other
    status -> refused. Raises :class:`WitnessRequestError` if a 200 or 409 body is
    malformed (a 409 must be ``text/x.tlog.size``)."""
    if status == Status.OK:
        return WitnessAnswer(status, cosignatures=parse_cosignature_lines(body))
    if status == Status.CONFLICT:
        media = (content_type or "").split(";")[0].strip().lower()
        if media != SIZE_CONTENT_TYPE:
            raise WitnessRequestError(f"a 409 answer is {SIZE_CONTENT_TYPE}")
        return WitnessAnswer(status, latest_size=parse_size_response(body))
    return WitnessAnswer(status)


# -------------------------------------------------------- add-checkpoint: witness side


def _bad(message: str) -> AddCheckpointRefused:
    return AddCheckpointRefused(Status.BAD_REQUEST, message)


def parse_add_checkpoint(
    data: bytes, *, max_bytes: int = MAX_REQUEST_BYTES
) -> AddCheckpointRequest:
    """Strictly parse an add-checkpoint body; any defect is a 400 refusal."""
    if not isinstance(data, bytes | bytearray):
        raise _bad("request body must be bytes")
    if len(data) > max_bytes:
        raise _bad(f"request body larger than {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("request body is not UTF-8") from exc
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise _bad("request has no empty line before the checkpoint")
    lines = head.split("\n")
    old_line, proof_lines = lines[0], lines[1:]
    if not old_line.startswith("old ") or not _DECIMAL.match(old_line[4:]):
        raise _bad("first line must be 'old <size>' without leading zeroes")
    old_size = int(old_line[4:])
    if old_size > MAX_TIMESTAMP:
        raise _bad("old size beyond 2^63-1")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _bad(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in proof_lines:
        try:
            raw = _b64decode(line, "proof line")
        except CheckpointError as exc:
            raise _bad(exc.message) from exc
        if len(raw) != HASH_SIZE:
            raise _bad(f"a proof line is a {HASH_SIZE}-byte hash")
        proof.append(raw)
    if not note:
        raise _bad("request has no checkpoint")
    return AddCheckpointRequest(old_size, tuple(proof), note)


@dataclass(frozen=True, slots=True)
class Submission:
    """An add-checkpoint request whose checkpoint a trusted log key signed."""

    request: AddCheckpointRequest
    checkpoint: Checkpoint
    body: str  # the checkpoint note text (what the cosignature covers)

    @property
    def origin(self) -> str:
        return self.checkpoint.origin


def examine(data: bytes, logs: LogKeys, *, max_bytes: int = MAX_REQUEST_BYTES) -> Submission:
    """Everything a witness checks without its state: framing and checkpoint (400), known
    origin (404), a valid signature by a key trusted for that origin (403; a note whose
    signature lines are malformed has none).

    Raises only :class:`AddCheckpointRefused`, whatever ``data`` holds.
    """
    request = parse_add_checkpoint(data, max_bytes=max_bytes)
    try:
        body, _lines = split_note(request.note)
        checkpoint = _canonical_body(body)
    except CheckpointError as exc:  # its message may quote the request: not echoed
        raise _bad("malformed checkpoint note") from exc
    verifiers = logs.get(checkpoint.origin)
    if not verifiers:
        raise AddCheckpointRefused(Status.NOT_FOUND, "unknown log origin")
    try:
        open_note(request.note, verifiers)
    except (CheckpointError, SignatureError) as exc:
        raise AddCheckpointRefused(
            Status.FORBIDDEN, "checkpoint has no valid signature by a trusted log key"
        ) from exc
    return Submission(request, checkpoint, body)


@dataclass(frozen=True, slots=True)
class CosignedState:
    """A checkpoint the witness cosigned: size, root and the log-signed note it got."""

    size: int
    root_hash: bytes
    note: str


class EvidenceKind(StrEnum):
    #: two log-signed checkpoints of one size with different roots: proof by itself
    FORK = "fork"
    #: a log-signed checkpoint whose proof from the cosigned one does not verify: the log
    #: must produce a consistency proof between the two, or it forked
    INCONSISTENT = "inconsistent"


def _text_of(note: str) -> str:
    split = note.rfind("\n\n")
    return note[: split + 1] if split >= 0 else note


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a witness keeps when a log shows it a checkpoint that conflicts with one it
    cosigned: both signed notes (and the proof that came with the new one)."""

    kind: EvidenceKind
    origin: str
    cosigned_note: str
    presented_note: str
    old_size: int
    proof: tuple[bytes, ...]
    reason: str

    @property
    def digest(self) -> str:
        """Identifies the pair of checkpoints (their note texts, not the signature lines
        or the proof, which anyone can vary), so each piece of evidence is kept once."""
        h = hashlib.sha256()
        for part in (self.kind.value, _text_of(self.cosigned_note), _text_of(self.presented_note)):
            raw = part.encode("utf-8")
            h.update(len(raw).to_bytes(8, "big") + raw)
        return h.hexdigest()

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "origin": self.origin,
            "reason": self.reason,
            "cosigned_note": self.cosigned_note,
            "presented_note": self.presented_note,
            "old_size": self.old_size,
            "proof": [_b64(p) for p in self.proof],
            "digest": self.digest,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the witness does with a submission, given its state."""

    status: Status
    reason: str
    latest_size: int | None = None  # for 409
    new_state: CosignedState | None = None  # set iff status is OK: persist, then cosign
    evidence: Evidence | None = field(default=None)

    @property
    def cosign(self) -> bool:
        return self.status == Status.OK


def decide(
    submission: Submission, latest: CosignedState | None, at_size: CosignedState | None
) -> Decision:
    """The stateful checks, to run atomically with persisting ``new_state``.

    ``latest`` is the largest checkpoint the witness cosigned for the origin (None:
    never), ``at_size`` the one it cosigned at the submitted size, if any (a witness that
    keeps its history catches a fork at any size it cosigned, not only at the latest).
    """
    req, cp = submission.request, submission.checkpoint
    note = req.note
    evidence: Evidence | None = None
    if at_size is not None and not hmac.compare_digest(at_size.root_hash, cp.root_hash):
        evidence = Evidence(
            EvidenceKind.FORK,
            cp.origin,
            at_size.note,
            note,
            req.old_size,
            req.proof,
            f"two log-signed checkpoints of size {cp.size} with different roots",
        )
    latest_size = latest.size if latest is not None else 0
    if req.old_size > cp.size:
        return Decision(
            Status.BAD_REQUEST, "old size is larger than the checkpoint size", evidence=evidence
        )
    if req.old_size != latest_size:
        return Decision(
            Status.CONFLICT,
            "old size is not the size of the latest cosigned checkpoint",
            latest_size=latest_size,
            evidence=evidence,
        )
    if cp.size == 0 and not hmac.compare_digest(cp.root_hash, EMPTY_ROOT):
        return Decision(Status.UNPROCESSABLE, "a size-0 checkpoint must have the empty root")
    new_state = CosignedState(cp.size, cp.root_hash, note)
    if req.old_size == 0:
        if req.proof:
            return Decision(Status.UNPROCESSABLE, "a proof from size 0 must be empty")
        return Decision(Status.OK, "first checkpoint", new_state=new_state, evidence=evidence)
    if latest is None:  # unreachable: old_size == latest_size > 0
        raise CheckpointError("no cosigned checkpoint to prove consistency from")
    try:
        verify_consistency(req.old_size, cp.size, latest.root_hash, cp.root_hash, req.proof)
    except ProofError as exc:
        if evidence is None:
            evidence = Evidence(
                EvidenceKind.INCONSISTENT,
                cp.origin,
                latest.note,
                note,
                req.old_size,
                req.proof,
                f"consistency proof {req.old_size} -> {cp.size} fails: {exc.message}",
            )
        return Decision(
            Status.UNPROCESSABLE, f"consistency proof: {exc.message}", evidence=evidence
        )
    return Decision(Status.OK, "consistent", new_state=new_state)


def verify_fork(note_a: str, note_b: str, log_keys: Mapping[str, PublicKey]) -> int:
    """Check offline that two notes prove a fork: both signed by the log's keys (key name
    -> key), same origin and size, different roots. Returns the size; raises
    :class:`CheckpointError` (or :class:`SignatureError`) otherwise."""
    a = parse_checkpoint(open_note(note_a, log_keys))
    b = parse_checkpoint(open_note(note_b, log_keys))
    if a.origin != b.origin or a.size != b.size:
        raise CheckpointError("not two checkpoints of one log at one size")
    if hmac.compare_digest(a.root_hash, b.root_hash):
        raise CheckpointError("the two checkpoints have the same root: no fork")
    return a.size
