"""Which processor key may sign which block: the ledgered key rotation (ADR 0015).

The processor's block-signing keys are registered in the source registry under
``careledger_core.source.processor_source_id(origin)`` by registrar-signed key events
(``careledger keygen --rotate-processor``: the new key active from the rotation, the old
one revoked from then). ``check_processor_keys`` reports, as ``BLOCK_KEY_NOT_CURRENT``
at the block, every block signed by a key that was not the current one. Which keys are
*trusted* stays the verifier's own configuration (``trusted_keys``, ADR 0004): a key the
verifier does not trust is ``verify_chain``'s ``KEY_UNKNOWN`` whatever the registry says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from careledger.storage.store import ChainStore
from careledger_core.event import is_valid_timestamp
from careledger_core.findings import Finding, FindingCode
from careledger_core.source import SourceAuthError, SourceRegistry, processor_source_id

log = logging.getLogger("careledger.verify.processor_keys")

#: at most this many findings are listed (the rest are counted in the log)
MAX_FINDINGS = 200


def _valid_since(history: tuple[tuple[str, str], ...], since: str) -> bool:
    """Whether a key with this history was active at ``since`` or became so later."""
    status = None
    for t, s in history:
        if t > since:
            if s == "active":
                return True
            continue
        status = s
    return status == "active"


class _HeaderKey(msgspec.Struct):
    """The signing key and signed time of a stored header (the rest is verify_chain's)."""

    key_id: str = ""
    created_at: str = ""


def read_block_keys(store: ChainStore) -> Iterator[tuple[str, int, Any]]:
    """(chain id, height, header bytes) of every stored block, chain by chain in height
    order, streamed."""
    for chain in store.chain_ids():
        for row in store.headers(chain):
            yield chain, row.height, row.header


def check_processor_keys(
    blocks: Iterable[tuple[str, Any, Any]], registry: SourceRegistry, origin: str
) -> list[Finding]:
    """Blocks signed by a processor key that was not the current one (ADR 0015).

    Once the log's processor keys are registered (a ledgered, registrar-signed rotation,
    ``careledger keygen --rotate-processor``), every block must be signed by one of them
    that was active at the block's signed ``created_at``, and never by a key retired
    before a key that already signed a lower height of the same chain became active (so
    a retired key cannot sign a new block by backdating ``created_at`` either). Blocks
    whose header does not decode are ``verify_chain``'s findings. A log that never
    registered a processor key is not checked (any trusted key may sign)."""
    identity = processor_source_id(origin)
    registered = registry.keys_of(identity)
    if not registered:
        return []
    histories = {k: registry.history(k) for k in registered}
    findings: list[Finding] = []
    dropped = 0
    newest: dict[str, tuple[str, Any, str]] = {}  # chain -> (activation, height, key)

    def emit(chain: str, height: Any, message: str, **details: Any) -> None:
        nonlocal dropped
        if len(findings) >= MAX_FINDINGS:
            dropped += 1
            return
        findings.append(
            Finding.of(
                FindingCode.BLOCK_KEY_NOT_CURRENT,
                chain,
                message,
                height=height if type(height) is int else None,
                details=details,
            )
        )

    for chain, height, header in blocks:
        if type(header) is not bytes:
            continue
        try:
            h = msgspec.json.decode(header, type=_HeaderKey)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            continue
        if not is_valid_timestamp(h.created_at):
            continue
        history = histories.get(h.key_id)
        if history is None:
            emit(
                chain,
                height,
                f"block signed by {h.key_id}, which is not a registered processor key of {origin}",
                key_id=h.key_id,
                created_at=h.created_at,
                registered=registered,
            )
            continue
        try:
            registry.authorize(identity, h.key_id, h.created_at)
        except SourceAuthError as exc:
            status = "retired" if exc.code == "REVOKED_KEY" else "not yet valid"
            emit(
                chain,
                height,
                f"block signed by processor key {h.key_id}, {status} at the block's time "
                f"{h.created_at} (ledgered key rotation)",
                key_id=h.key_id,
                created_at=h.created_at,
                status=status,
            )
            continue
        later = newest.get(chain)
        # the activation that makes the key current at the block's time
        activation = max(t for t, s in history if s == "active" and t <= h.created_at)
        if later is not None and not _valid_since(history, later[0]):
            emit(
                chain,
                height,
                f"block signed by processor key {h.key_id} after its successor {later[2]} "
                f"signed height {later[1]} of this chain",
                key_id=h.key_id,
                created_at=h.created_at,
                successor_key_id=later[2],
                successor_height=later[1],
                status="retired",
            )
            continue
        if later is None or activation > later[0]:
            newest[chain] = (activation, height, h.key_id)
    if dropped:
        log.warning("%d more BLOCK_KEY_NOT_CURRENT findings not listed", dropped)
    return findings
