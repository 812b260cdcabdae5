"""``careledger verify-proof FILE``: check an exported access report offline.

``careledger verify-proof FILE [--trusted-key KEY]... [--witnesses FILE] [--json]
[--require-content] [--events-topic TOPIC]`` checks every line of an access report with
only the verifier's own trusted public keys: the processor key(s) (``--trusted-key``,
else ``CARELEDGER_TRUSTED_KEYS``) and, with a witness policy (``--witnesses``, else
``CARELEDGER_WITNESSES_FILE``), the witnesses' keys and quorum. Nothing is read from
Kafka, ClickHouse or the network; keys inside the report are never used.

1. Each line's own proof (ADR 0009, :func:`verifiers.reports.proofs.verify_report`):
   the signed block header, the event (full) or leaf hash (redacted) in its Merkle tree,
   the displayed fields.
2. With a witness policy (ADR 0019, :func:`verifiers.reports.witnessed.check_witnessing`):
   each line's block is in a checkpoint the log signed and a quorum of the policy's
   witnesses cosigned, by an RFC 9162 inclusion proof of the block hash in that
   checkpoint's tree.

Exit status and JSON ``result`` (the precedence of ``careledger verify``):

* 0 ``verified``: every line verifies and, with a policy, is witnessed;
* 1 ``tampered``: some line's proof, a signature, a checkpoint or a cosignature fails
  (each named with its codes and reasons);
* 2 ``cannot_tell``: a usage or configuration problem, one line on stderr naming the
  flag or setting to fix (no trusted key, an unreadable or wrong witnesses file,
  an unreadable report), or a witness of the policy cosigned under another key than
  the witnesses file names;
* 3 ``not_witnessed``: every proof holds, but some lines' blocks are not in a
  quorum-cosigned checkpoint of the report (exported before the cosigner ran, or while
  witnesses were down): the lines are named; re-export the report later.

Without a witness policy the witness part is not checked and the JSON ``witnessing`` is
``{"status": "no_policy"}``: such a report is vouched for by the log's key alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from careledger.config import Settings
from careledger.keys import load_public_keys, load_trusted_keys
from careledger.witnesses import (
    WITNESSES_FILE_ENV,
    WitnessesConfigError,
    WitnessSet,
    parse_witnesses,
)
from careledger_core.errors import CareledgerError
from careledger_core.signing import TrustedKeys
from verifiers.reports.proofs import ProofResult, ReportFormatError, verify_report
from verifiers.reports.witnessed import (
    CANNOT_TELL,
    NOT_WITNESSED,
    TAMPERED,
    WitnessVerdict,
    check_witnessing,
)

__all__ = [
    "EXIT_CANNOT_TELL",
    "EXIT_NOT_WITNESSED",
    "EXIT_OK",
    "EXIT_TAMPERED",
    "RESULTS",
    "command_verify_proof",
    "configure_verify_proof",
    "load_policy",
    "outcome",
]

EXIT_OK: Final = 0
EXIT_TAMPERED: Final = 1
EXIT_CANNOT_TELL: Final = 2
EXIT_NOT_WITNESSED: Final = 3
RESULTS: Final = {
    EXIT_OK: "verified",
    EXIT_TAMPERED: "tampered",
    EXIT_CANNOT_TELL: "cannot_tell",
    EXIT_NOT_WITNESSED: "not_witnessed",
}
NO_POLICY_TEXT: Final = (
    f"witnesses: no policy (--witnesses / {WITNESSES_FILE_ENV} unset): not checked that "
    "witnesses cosigned the blocks"
)


def load_policy(flag: Path | None, settings: Any) -> tuple[WitnessSet | None, str]:
    """The witness policy of ``--witnesses FILE`` (``flag``), else of the
    ``witnesses_file`` setting, with the label naming where it came from; ``(None, "")``
    if neither is given. Raises :class:`WitnessesConfigError` naming the flag or the
    setting."""
    if flag is not None:
        path, label = Path(flag), f"--witnesses {flag}"
    elif settings.witnesses_file is not None:
        path = Path(settings.witnesses_file)
        label = f"{WITNESSES_FILE_ENV}={path}"
    else:
        return None, ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WitnessesConfigError(f"cannot read the witnesses file {label}: {reason}") from exc
    return parse_witnesses(text, label), label


def policy_json(witnesses: WitnessSet, label: str) -> dict[str, Any]:
    return {**witnesses.describe(), "source": label}


def outcome(results: list[ProofResult], verdict: WitnessVerdict | None) -> int:
    """The exit status: tampered, cannot tell, not yet witnessed, verified."""
    if any(not r.ok for r in results) or (verdict is not None and verdict.status == TAMPERED):
        return EXIT_TAMPERED
    if verdict is not None and verdict.status == CANNOT_TELL:
        return EXIT_CANNOT_TELL
    if verdict is not None and verdict.status == NOT_WITNESSED:
        return EXIT_NOT_WITNESSED
    return EXIT_OK


def configure_verify_proof(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="access report (JSON)")
    parser.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="trusted public key: 'ed25519:<base64>' or a key file (repeatable; "
        "replaces CARELEDGER_TRUSTED_KEYS). Keys inside the report are never used.",
    )
    parser.add_argument(
        "--witnesses",
        type=Path,
        metavar="FILE",
        help="witness policy (TOML: quorum and witness keys; replaces "
        f"{WITNESSES_FILE_ENV}): every line's block must be in a checkpoint of the "
        "report that a quorum of these witnesses cosigned",
    )
    parser.add_argument(
        "--require-content",
        action="store_true",
        help="fail every redacted line (CONTENT_NOT_PROVEN): for a requester entitled to "
        "the event bytes, who must not accept inclusion-only proofs",
    )
    parser.add_argument(
        "--events-topic",
        metavar="TOPIC",
        help="the access-events topic a redacted line's signed chain must be on "
        "(default: the settings' topic_events)",
    )
    parser.add_argument("--json", action="store_true", help="results as one JSON document")


def _usage(message: str) -> int:
    print(f"careledger verify-proof: {message}", file=sys.stderr)
    return EXIT_CANNOT_TELL


def _describe(r: ProofResult) -> str:
    where = f"{r.chain_id}@{r.height}#{r.index}" if r.chain_id else "-"
    head = f"line {r.line} (event {r.event_id or '-'}, {where}): "
    if not r.ok:
        return (
            head
            + "FAILED: "
            + "; ".join(f"[{c}] {m}" for c, m in zip(r.codes, r.reasons, strict=True))
        )
    if r.status == "content-verified":
        text = (
            head + "content verified (the event bytes are in the signed block and match "
            "every displayed field)"
        )
    else:
        text = (
            head + f"inclusion verified, REDACTED: leaf {r.leaf_hash} is in the signed block; "
            f"NOT bound to it offline: {', '.join(r.unbound)} (only a holder of the event "
            "bytes can check them)"
        )
        text += "".join(f"; {n}" for n in r.notes)
    w = r.witnessing
    if w is not None:
        label = {
            "witnessed": "witnessed",
            NOT_WITNESSED: "NOT YET WITNESSED",
            CANNOT_TELL: "witnesses: CANNOT TELL",
        }.get(str(w["status"]), str(w["status"]))
        text += f"; {label}: {w['reason']}"
    return text


def _summary(
    results: list[ProofResult], verdict: WitnessVerdict | None, trusted: int, code: int
) -> str:
    failed = sum(not r.ok for r in results)
    content = sum(r.status == "content-verified" for r in results)
    inclusion = sum(r.status == "inclusion-verified" for r in results)
    status = {
        EXIT_OK: "VERIFIED",
        EXIT_TAMPERED: "FAILED",
        EXIT_CANNOT_TELL: "CANNOT TELL",
        EXIT_NOT_WITNESSED: "NOT YET WITNESSED",
    }[code]
    redacted = (
        f", {inclusion} inclusion only (redacted: their displayed fields are NOT bound "
        "to the ledger offline)"
        if inclusion
        else ""
    )
    text = (
        f"{status}: {len(results) - failed} of {len(results)} line(s) verify "
        f"under {trusted} trusted key(s): {content} content verified{redacted}; "
        "the report is complete only up to the ledger (a removed line cannot be "
        "detected from the file); "
    )
    if verdict is None:
        return text + NO_POLICY_TEXT
    policy = verdict.policy
    text += (
        f"witnesses: quorum {policy.get('quorum')} of {policy.get('of')} "
        f"({policy.get('source')}): {len(verdict.lines_with('witnessed'))} line(s) in a "
        "quorum-cosigned checkpoint"
    )
    late = verdict.lines_with(NOT_WITNESSED)
    if late:
        text += f", NOT YET WITNESSED: line(s) {', '.join(map(str, late))} (re-export later)"
    unsure = verdict.lines_with(CANNOT_TELL)
    if unsure:
        text += f", CANNOT TELL: line(s) {', '.join(map(str, unsure))}"
    bad = [c for c in verdict.checkpoints if c.status == TAMPERED]
    if bad:
        text += f", {len(bad)} checkpoint(s) TAMPERED: " + "; ".join(
            f"{c.chain_id or '#' + str(c.position)}: {' '.join(c.codes)}" for c in bad
        )
    return text


def command_verify_proof(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.trusted_key:
            keys = load_public_keys(args.trusted_key)
            if not keys:
                return _usage("--trusted-key names no key")
            trusted = TrustedKeys(keys)
        else:
            trusted = load_trusted_keys(settings)
    except CareledgerError as exc:
        return _usage(f"no usable trusted key: {exc.message}")
    try:
        witnesses, label = load_policy(args.witnesses, settings)
    except WitnessesConfigError as exc:
        return _usage(exc.message)
    try:
        doc = json.loads(Path(args.file).read_bytes())
    except OSError as exc:
        return _usage(f"cannot read {args.file}: {exc}")
    except ValueError as exc:
        return _usage(f"{args.file} is not JSON: {exc}")
    try:
        results = verify_report(
            doc,
            trusted,
            events_topic=args.events_topic or settings.topic_events,
            require_content=args.require_content,
        )
    except ReportFormatError as exc:
        return _usage(f"{args.file}: {exc.message}")
    verdict = None
    if witnesses is not None:
        verdict = check_witnessing(
            doc,
            results,
            trusted.values(),
            witnesses.policy,
            policy_json=policy_json(witnesses, label),
            setting=label,
        )
    code = outcome(results, verdict)
    if args.json:
        json.dump(
            {
                "result": RESULTS[code],
                "lines": len(results),
                "failed": sum(not r.ok for r in results),
                "content_verified": sum(r.status == "content-verified" for r in results),
                "inclusion_verified": sum(r.status == "inclusion-verified" for r in results),
                "witnessing": {"status": "no_policy"} if verdict is None else verdict.to_json(),
                "results": [r.to_json() for r in results],
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        for r in results:
            print(_describe(r))
        print(_summary(results, verdict, len(trusted), code))
    if code == EXIT_CANNOT_TELL and verdict is not None:
        why = "; ".join(n for c in verdict.checkpoints if c.status == CANNOT_TELL for n in c.notes)
        print(f"careledger verify-proof: cannot tell: {why}", file=sys.stderr)
    return code
