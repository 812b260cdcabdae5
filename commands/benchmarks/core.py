"""Micro-benchmark of the pure core on one core: ``python -m commands.benchmarks.core [n]``.

Measures, in one process and on the same synthetic ~540-byte access events:

* baseline: stdlib ``json.loads`` + generic RFC 8785 ``canonicalize`` (no validation);
* msgspec alone: typed decode + sorted encode, without careledger's extra checks;
* ``decode_and_canonicalize`` on canonical input (what the producer SDK sends: fast path);
* ``decode_and_canonicalize`` on non-canonical input (other key order: diagnostic path);
* sealing: leaf hash per event + ``merkle_root`` + one Ed25519 signature per 1,000 events.

Not a test: figures depend on the machine. Lives outside ``careledger_core`` because it
reads the clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable

import msgspec

from careledger_core.block import GENESIS_PREV_HASH, BlockHeader, block_hash
from careledger_core.event import AccessEvent, decode_and_canonicalize
from careledger_core.hashing import leaf_hash
from careledger_core.jcs import canonicalize
from careledger_core.merkle import merkle_root
from careledger_core.signing import SigningKey

BLOCK_SIZE = 1000
_TS = "2024-06-15T08:{m:02d}:{s:02d}.{us:06d}Z"


def sample_event(i: int) -> dict[str, object]:
    """A realistic FHIR read event of about 540 canonical bytes, varied by ``i``."""
    ts = _TS.format(m=(i // 60) % 60, s=i % 60, us=(i * 7919) % 1_000_000)
    return {
        "schema": "careledger.access-event/1",
        "event_id": f"{i:08x}-7425-40de-944b-e07fc1f90ae7",
        "occurred_at": ts,
        "recorded_at": ts,
        "event_type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": "R",
        "outcome": 0,
        "purpose_of_use": ["TREAT"],
        "actor": {
            "id": f"practitioner-{i % 997}",
            "name": "Dr. Jane Roe",
            "roles": ["physician"],
            "is_requestor": True,
        },
        "source": {"system": "ehr-prod-1", "type": 4},
        "patient": {"id": f"patient-{i % 100_003:06d}"},
        "object": {"type": "Observation", "id": f"obs-{i}"},
    }


def _rate(n: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def run(n: int = 200_000) -> dict[str, float]:
    """Run all measurements on ``n`` events; returns events/s figures and ratios."""
    dicts = [sample_event(i) for i in range(min(n, 10_000))]
    canonical = [canonicalize(d) for d in dicts]
    non_canonical = [json.dumps(d, separators=(",", ":")).encode() for d in dicts]
    inputs = [canonical[i % len(canonical)] for i in range(n)]
    other_inputs = [non_canonical[i % len(non_canonical)] for i in range(n)]

    def baseline() -> None:
        loads = json.loads
        for data in inputs:
            canonicalize(loads(data))

    raw_decoder = msgspec.json.Decoder(AccessEvent)
    raw_encoder = msgspec.json.Encoder(order="sorted")

    def msgspec_only() -> None:
        for data in inputs:
            raw_encoder.encode(raw_decoder.decode(data))

    def fast() -> None:
        for data in inputs:
            decode_and_canonicalize(data)

    def slow() -> None:
        for data in other_inputs:
            decode_and_canonicalize(data)

    key = SigningKey.from_seed(hashlib.sha256(b"careledger benchmark key").digest())

    def seal() -> None:
        prev = GENESIS_PREV_HASH
        for height, start in enumerate(range(0, n, BLOCK_SIZE)):
            batch = inputs[start : start + BLOCK_SIZE]
            root = merkle_root([leaf_hash(data) for data in batch])
            header = BlockHeader(
                chain_id="bench/careledger.access-events/0",
                height=height,
                prev_hash=prev,
                merkle_root=root.hex(),
                event_count=len(batch),
                first_offset=start,
                last_offset=start + len(batch) - 1,
                dead_lettered=0,
                absent_offsets=0,
                first_event_time="2024-06-15T08:00:00.000000Z",
                last_event_time="2024-06-15T08:00:00.000000Z",
                created_at="2024-06-15T08:00:00.000000Z",
                key_id=key.key_id,
            )
            key.sign_header(header)
            prev = block_hash(header).hex()

    results = {
        "events": float(n),
        "event_bytes": sum(map(len, canonical)) / len(canonical),
        "baseline_json_canonicalize_per_s": _rate(n, baseline),
        "msgspec_decode_encode_per_s": _rate(n, msgspec_only),
        "decode_and_canonicalize_per_s": _rate(n, fast),
        "decode_and_canonicalize_noncanonical_input_per_s": _rate(n, slow),
        "leaf_merkle_sign_per_s": _rate(n, seal),
    }
    results["speedup_vs_baseline"] = (
        results["decode_and_canonicalize_per_s"] / results["baseline_json_canonicalize_per_s"]
    )
    return results


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 200_000
    r = run(n)
    rows = [
        ("stdlib json + canonicalize (baseline)", r["baseline_json_canonicalize_per_s"], ""),
        ("msgspec typed decode + sorted encode only", r["msgspec_decode_encode_per_s"], ""),
        (
            "decode_and_canonicalize, canonical input",
            r["decode_and_canonicalize_per_s"],
            f"  ({r['speedup_vs_baseline']:.1f}x baseline)",
        ),
        (
            "decode_and_canonicalize, other key order",
            r["decode_and_canonicalize_noncanonical_input_per_s"],
            "",
        ),
        ("leaf hash + merkle root + 1 sig/1000 events", r["leaf_merkle_sign_per_s"], ""),
    ]
    print(f"careledger core: {n} events of ~{r['event_bytes']:.0f} bytes on one core")
    print(f"  machine cores: {os.cpu_count()}")
    for label, rate, note in rows:
        print(f"  {label:<44} {rate:>10,.0f} events/s{note}")


if __name__ == "__main__":
    main()
