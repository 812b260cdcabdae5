"""fsck for careledger chains: recheck everything the store claims, say exactly where.

``verify_chain(reader, chain_id, trusted_keys)`` streams one chain from a
``ChainReader`` (headers page by page, the event rows of a few thousand blocks at
a time, so memory stays flat on chains of millions of events) and checks:

Headers (one per height)
    * the stored header bytes decode strictly as a canonical ``careledger.block/1``
      header (``BLOCK_HEADER_INVALID``);
    * every header column equals the decoded header (``BLOCK_HEADER_MISMATCH``) and
      the ``block_hash`` column is SHA-256 of the header bytes (``BLOCK_HASH_MISMATCH``);
    * the Ed25519 signature verifies under a key the *verifier* trusts (its own
      configuration, never the store): ``KEY_UNKNOWN`` / ``SIGNATURE_INVALID``;
    * heights run contiguously from the start (``HEIGHT_GAP``), one header per
      height (``HEIGHT_FORK``), each ``prev_hash`` is the recomputed hash of the
      previous header (``PREV_HASH_MISMATCH``), and the Kafka offset ranges of
      consecutive blocks touch (``OFFSET_GAP`` / ``OFFSET_OVERLAP``).

Events of each block (rows with its chain and height)
    * rows of another block hash, or with an index beyond ``event_count``, or a
      second row at one index (``EVENT_UNEXPECTED``), rows without any header below
      the head (``EVENT_UNEXPECTED``), indexes with no row (``EVENT_MISSING``), and
      the number of rows of the block against ``event_count`` (``EVENT_COUNT_MISMATCH``);
    * per row: SHA-256(0x00 ‖ stored canonical bytes) against the stored leaf hash
      (``EVENT_HASH_MISMATCH``), the bytes decode as a valid event and re-encode to
      exactly themselves (``EVENT_NOT_CANONICAL``), every denormalised column, derived
      dates included, equals the decoded event in value and type
      (``EVENT_FIELD_MISMATCH``), offsets strictly increase (``EVENT_OUT_OF_ORDER``;
      never decrease when the header has ``event_records``: the events of one batch
      record share its offset, ADR 0020, and the distinct offsets must number
      ``event_records``, ``EVENT_OFFSETS_MISMATCH``) inside the block's range
      (``EVENT_OFFSET_OUT_OF_RANGE``), one event id per block (``EVENT_DUPLICATE_ID``);
    * the RFC 6962 Merkle root of the *recomputed* leaf hashes in index order equals
      the header's (``MERKLE_ROOT_MISMATCH``), and the events' offsets are those the
      header's ``event_offsets`` commits to (``EVENT_OFFSETS_MISMATCH``, ADR 0014).

Rows are untrusted and never raise: a column of the wrong type, NULL, empty or
non-hex hashes, non-UTF-8 bytes, impossible integers are findings at their row (an
unreadable height or index: ``EVENT_UNEXPECTED`` / ``BLOCK_HEADER_MISMATCH`` with the
location that is known), and an unsigned header's ``event_count`` never sizes a loop.

Rows above the head are a crash's uncommitted leftovers (``UNCOMMITTED_EVENTS``,
info only). Against ``known_head`` (the last head this verifier verified, kept in
its own state outside the store, or the head named by the newest signed checkpoint
the processor published to Kafka; see ``verifiers.integrity.checkpoints``): a lower head is
``CHAIN_TRUNCATED``, a different block at the known height is ``CHAIN_REWRITTEN``.

Cost per event: one msgspec decode + re-encode, one SHA-256, a tuple comparison;
per block one Ed25519 verification and one Merkle root. A store that reads in bulk
(``ChainStore.event_columns``) gives a block's rows as columns, and a block is first
checked whole, column by column (``events._block_sound``); only a block with something
to report is checked again row by row, which makes the findings. The whole-block check
decodes a block of access events in one msgspec call (``bulk.decode_block``: the rows
joined as one JSON array, then each record re-encoded and compared with its own row, so
it accepts exactly what the row-by-row decode accepts). The typed decode and re-encode
of each event's bytes stay: they are most of the remaining cost. Chains are verified in
parallel worker processes by ``verifiers.integrity.parallel``.

Follow-on noise is suppressed where the cause is already named: no link or offset
checks across a height gap, no Merkle check for a block with missing events, and
when several rows claim one index the one that reproduces the signed Merkle root
is taken as the block's and the others are reported as unexpected.

Modules: ``model`` (the reader protocol, ``VerifiedHead``, ``ChainReport``,
severities), ``headers`` (one header on its own), ``events`` (the event rows of
one block), ``bulk`` (a block's bytes decoded at once), ``chain`` (the chain walk and
``verify_chain``).
"""

from __future__ import annotations

from verifiers.integrity.fsck.chain import verify_chain
from verifiers.integrity.fsck.model import (
    DEFAULT_MAX_FINDINGS,
    ChainReport,
    HeaderVerifier,
    VerifiedHead,
    VerifyCancelled,
    is_failure,
    severity_of,
)

__all__ = [
    "DEFAULT_MAX_FINDINGS",
    "ChainReport",
    "HeaderVerifier",
    "VerifiedHead",
    "VerifyCancelled",
    "is_failure",
    "severity_of",
    "verify_chain",
]
