"""Generate the careledger test vectors (``python tests/vectors/generate.py``).

Fixed inputs -> exact outputs, as JSON files anyone can check a re-implementation
against: canonical event bytes, leaf hashes, RFC 6962 roots and proofs, block header
bytes, block hashes, Ed25519 signatures, a C2SP signed-note checkpoint; and, under
``negative/``, one file per thing an attacker (or a bug) can break, each naming the
error a verifier must raise. The vectors are built by ``gen_events``,
``gen_references``, ``gen_chain`` (Merkle, blocks, checkpoint, test key) and
``gen_negative`` from the inputs in ``gen_common``; this file collects and writes them.

Conventions: binary values are lowercase hex; text (canonical JSON, notes) is given as
a UTF-8 string and, where bytes matter, also as hex. The test key's seed is
SHA-256(b"careledger test key"); the "other" (untrusted) key's seed is
SHA-256(b"careledger other key"). Merkle test leaf ``i`` is the ASCII string
``"leaf-<i>"`` (leaf hash = SHA-256(0x00 || data)).

``tests/unit/test_vectors.py`` regenerates everything in memory and fails if a file
here is stale, then checks every vector against careledger_core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parent
_REPO = VECTOR_DIR.parents[1]
if str(_REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_REPO))

from tests.vectors.gen_chain import (  # noqa: E402
    blocks_doc,
    checkpoint_doc,
    consistency_cases,
    inclusion_cases,
    merkle_roots_doc,
    test_key_doc,
)
from tests.vectors.gen_common import Doc, merkle_leaves  # noqa: E402
from tests.vectors.gen_events import events_doc  # noqa: E402
from tests.vectors.gen_negative import negative_docs  # noqa: E402
from tests.vectors.gen_references import references_doc  # noqa: E402

__all__ = ["build_vectors", "main", "merkle_leaves", "render"]


def build_vectors() -> dict[str, Doc]:
    """Every vector file: relative path -> JSON document."""
    files: dict[str, Doc] = {
        "test-key.json": test_key_doc(),
        "events.json": events_doc(),
        "references.json": references_doc(),
        "merkle-roots.json": merkle_roots_doc(),
        "inclusion-proofs.json": {
            "description": "RFC 9162 inclusion proofs over the merkle-roots.json leaves",
            "cases": inclusion_cases(),
        },
        "consistency-proofs.json": {
            "description": "RFC 9162 consistency proofs over the merkle-roots.json leaves "
            "(old_size 0 and old_size == new_size have empty proofs)",
            "cases": consistency_cases(),
        },
        "blocks.json": blocks_doc(),
        "checkpoint.json": checkpoint_doc(),
    }
    for name, doc in negative_docs().items():
        files[f"negative/{name}.json"] = doc
    return files


def render(doc: Doc) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    files = build_vectors()
    for rel, doc in files.items():
        path = VECTOR_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(doc), encoding="utf-8")
    for path in VECTOR_DIR.rglob("*.json"):
        if path.relative_to(VECTOR_DIR).as_posix() not in files:
            path.unlink()
            print(f"removed stale {path.relative_to(VECTOR_DIR)}")
    print(f"wrote {len(files)} vector files to {VECTOR_DIR}")


if __name__ == "__main__":
    main()
