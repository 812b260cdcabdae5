"""`careledger demo`: the whole pipeline locally, ending in a verified chain.

Starts the local stack, makes a signing key if there is none, sets up source
identity (a registrar key and the local source's key, registered on the sources
topic, so the simulated traffic is signed at the source; ``--unsigned`` sends plain
events instead), runs the processor, streams simulated hospital traffic through
Kafka, waits until every
event sits in a signed block in ClickHouse, verifies every chain with the
trusted public key only, and prints a summary.

Three local witnesses (``commands.local_witnesses``: stand-ins for partner
institutions, quorum 2 of 3) cosign the checkpoints while the demo runs
(``careledger cosign``), and the verification applies that witness policy: the summary
says how far each chain is witnessed. ``--no-witnesses`` leaves them out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from careledger.config import Settings, write_local_config
from careledger.keys import default_key_path, write_keypair
from careledger.processes import run_cli, start_cli, start_processor, stop
from careledger_core.errors import CareledgerError
from commands.local_witnesses import LocalWitnesses, local_witnesses
from commands.status import not_yet_signed, partition_ends


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=50_000, help="simulated events to send")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="simulation seed (default: a new one each run, printed: the same seed sends the "
        "same events again, which verify then reports as DUPLICATE_EVENT)",
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=3000,
        help="patients in the simulated hospital (its reference data grows with them)",
    )
    parser.add_argument("--staff", type=int, default=400, help="staff in the simulated hospital")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for chaining")
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="send plain events (no source key): the legacy mode of ADR 0010",
    )
    parser.add_argument(
        "--no-witnesses",
        action="store_true",
        help="no local witnesses, no cosigning: verify with the processor's key alone",
    )


def _committed(store: Any) -> int:
    rows = store.backend.execute(f"SELECT sum(event_count), count() FROM {store.db}.blocks")
    return int(rows[0][0] or 0)


def command_demo(args: argparse.Namespace, settings: Settings) -> int:
    from careledger import stack
    from producers.simulator.vocabulary import ROLES

    if args.staff < len(ROLES) or args.patients < 1 or args.events < 0:
        print(
            f"careledger demo: the hospital needs at least {len(ROLES)} staff (one per role), "
            "1 patient and 0 or more events",
            file=sys.stderr,
        )
        return 2
    print("== careledger demo: starting the local stack (Kafka KRaft + ClickHouse)")
    stack.up(settings)

    key_path = default_key_path(settings)
    if not key_path.exists():
        write_keypair(key_path)
        print(f"== created signing key {key_path} (public key {key_path}.pub)")
    settings = settings.replace(signing_key=key_path)
    if not settings.trusted_keys:
        settings = settings.replace(trusted_keys=(str(key_path) + ".pub",))
    if args.unsigned:  # legacy mode: plain events, chained without source checks
        settings = settings.replace(source_key=None, require_source_signatures=False)
    else:
        from careledger.kafka.security import REGISTRAR
        from careledger.sources import ensure_local_source

        settings = ensure_local_source(settings, principal=REGISTRAR)
        print(f"== events are signed at the source as {settings.source_id}")
    written = write_local_config(settings)
    print(f"== trust settings for later commands (verify, alerts, reports): {written}")

    if args.no_witnesses:
        return _run(args, settings, None)
    print("== starting three local witnesses (quorum 2 of 3) and the cosigner")
    with local_witnesses(settings, Path(f"{key_path}.pub")) as witnesses:
        print(f"   witnesses file {witnesses.file}")
        return _run(args, settings.replace(witnesses_file=witnesses.file), witnesses)


def _run(args: argparse.Namespace, settings: Settings, witnesses: LocalWitnesses | None) -> int:
    from careledger.storage.backend import ClickHouseBackend
    from careledger.storage.store import ChainStore
    from producers.simulator import HospitalModel, produce_reference, run_simulation

    store = ChainStore.for_settings(ClickHouseBackend.from_settings(settings), settings)
    before = _committed(store)
    # records an earlier run (or a `careledger simulate`) left in Kafka unchained: this
    # run's processor chains them too, and the summary says so (the source registry is
    # left out: this run has just registered its source there)
    ends_before = partition_ends(settings)
    left_over = not_yet_signed(
        settings,
        store.heads(),
        {tp: end for tp, end in ends_before.items() if tp[0] != settings.topic_sources},
    )
    log_path = settings.run_dir / "logs" / "processor-demo.log"
    print(f"== starting the processor (log: {log_path})")
    proc = start_processor(settings, log_path)
    cosigner = None
    if witnesses is not None:
        cosigner = start_cli(settings, settings.run_dir / "logs" / "cosign-demo.log", "cosign")
    try:
        seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") >> 1
        # what explains an access (workforce, patients, care relationships, consents):
        # without it the audit would flag every access
        model = HospitalModel(staff=args.staff, patients=args.patients, seed=seed)
        records = model.reference_records()
        ref_sent, ref_acked = produce_reference(settings, records)
        if ref_acked != ref_sent:
            print(f"!! {ref_sent - ref_acked} reference records were not acknowledged by Kafka")
            return 1
        print(
            f"== sent the hospital's reference data: {ref_acked:,} records (workforce, "
            "patients, care relationships, consents)"
        )
        print(f"== simulating {args.events:,} hospital access events (seed {seed})")
        started = time.monotonic()
        at_start = _committed(store)
        summary = run_simulation(
            settings,
            args.events,
            seed,
            rate=args.rate,
            progress=True,
            patients=args.patients,
            staff=args.staff,
        )
        if summary.failed:
            print(f"!! {summary.failed} events were not acknowledged by Kafka")
            return 1
        print("== waiting until every event and reference record is in a signed block")
        # what Kafka holds now (this run's records, and any an earlier run or a
        # `careledger simulate` left unchained) must all be in stored blocks: a count of
        # stored events alone would call a backlog's events this run's
        ends = partition_ends(settings)
        if not ends:
            print("!! cannot read the partitions' ends from Kafka: cannot tell when done")
            return 2
        total = ref_acked + summary.acked
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        while True:
            behind = not_yet_signed(settings, store.heads(), ends)
            if behind == 0:
                break
            if proc.poll() is not None:
                print(f"!! processor exited with {proc.returncode}; see {log_path}")
                said = [
                    line
                    for line in log_path.read_text(errors="replace").splitlines()
                    if line.startswith("careledger process: ")
                ]
                if said:  # why it refused to run (one line, written by the processor)
                    print(f"   {said[-1]}")
                return 1
            if time.monotonic() > deadline:
                print(
                    f"!! timed out: {behind:,} Kafka records are not yet in a signed block "
                    f"({_committed(store) - before:,} chained since the processor started)"
                )
                return 1
            if time.monotonic() - last_report > 2:
                print(
                    f"   chained {_committed(store) - before:,} / {total:,}; "
                    f"{behind:,} Kafka records not yet in a signed block",
                    file=sys.stderr,
                )
                last_report = time.monotonic()
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        in_window = _committed(store) - at_start
    except CareledgerError as exc:  # Kafka unreachable, or the records refused outright
        print(f"!! {exc.code}: {exc.message}")
        return 2
    finally:
        stop(proc)
        if cosigner is not None:
            stop(cosigner)
    if witnesses is not None:
        print("== asking the witnesses to cosign the final checkpoints")
        cosigned = run_cli(settings, "cosign", "--once", timeout=600)
        print("   " + (cosigned.stdout.strip() or cosigned.stderr.strip()))

    print(
        "== verifying every chain with the trusted public key"
        + (" and the witness policy" if witnesses is not None else "")
    )
    result = run_cli(settings, "verify", "--json", timeout=3600)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(result.stdout + result.stderr)
        return 2
    events, blocks = store.event_counts()
    chains = report.get("chains", [])
    findings = report.get("findings", [])
    print()
    print("careledger demo summary")
    print(f"  events sent this run      {summary.acked:,} (and {ref_acked:,} reference records)")
    print(
        f"  end-to-end throughput     {in_window / elapsed:,.0f} records/s "
        f"({in_window:,} records chained in {elapsed:.1f} s, from the first event produced "
        f"to the last record in a signed block, {os.cpu_count()} cores)"
    )
    if left_over:
        print(
            f"  (including {left_over:,} Kafka records earlier runs had left unchained: "
            "batch records count once, however many events they carry)"
        )
    print(f"  events stored (all runs)  {events:,}")
    print(f"  signed blocks             {blocks:,}")
    print(f"  chains                    {len(chains)}")
    witnessing = report.get("witnessing") or {}
    if witnesses is not None:
        wchains = witnessing.get("chains", [])
        full = sum(1 for c in wchains if c.get("status") == "witnessed")
        print(
            f"  witnesses                 quorum {witnessing.get('quorum')} of "
            f"{witnessing.get('of')}: {full} of {len(wchains)} chains witnessed to their head "
            f"({witnessing.get('status', '?')})"
        )
    by_code = report.get("totals", {}).get("findings_by_code") or {}
    listed = ", ".join(f"{n:,} {code}" for code, n in sorted(by_code.items()))
    print(
        f"  verification              {report.get('result', '?')} "
        f"({sum(by_code.values()) if by_code else len(findings):,} findings"
        + (f": {listed}" if listed else "")
        + f", exit {result.returncode})"
    )
    audited = _audit(settings)
    print(f"  audit (all runs)          {audited}")
    _where_next(settings)
    return 0 if result.returncode == 0 else 1


def _audit(settings: Settings) -> str:
    """Audit every simulated access (the simulation starts at DEFAULT_START); one line."""
    import datetime as dt

    from producers.simulator import DEFAULT_START

    start = DEFAULT_START.strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=366)).strftime("%Y-%m-%dT00:00:00Z")
    result = run_cli(settings, "audit", "--from", start, "--to", end, "--json", timeout=3600)
    try:
        done = json.loads(result.stdout)
    except json.JSONDecodeError:
        return f"failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
    return (
        f"{done['decisions']:,} accesses: {done['explained']:,} explained, "
        f"{done['flagged']:,} flagged; {done['alerts']:,} alerts"
    )


def _where_next(settings: Settings) -> None:
    print()
    print(f"where to look next (trust settings: {settings.run_dir / 'careledger.toml'}):")
    for command, what in (
        ("careledger alerts list", "the alerts, highest risk first"),
        ("careledger alerts show ALERT_ID", "one alert as a case: why, who, when"),
        (
            "careledger access-report --patient ID --from 2026-11-02 --to 2026-12-31",
            "who looked at a patient's record, with proofs",
        ),
        ("careledger verify", "verify the ledger again"),
        ("careledger dead-letters", "what could not be chained, and why"),
    ):
        print(f"  {command:<74} {what}")
