"""The main job, ``careledger demo``, end to end on the real stack (a database and topics
of its own): the hospital's reference data and simulated traffic chained, signed,
witnessed and verified, the accesses audited, and a summary that says what verify and
the audit found. A second run with the first run's seed sends the very same events
again: they are chained (nothing a sender sends is dropped) and the summary names them
as DUPLICATE_EVENT, still intact (ADR 0023).

Issue 13: the demo sent no reference data, so the first audit flagged every access
(0 explained); and its trust settings lived in its own process, so every later command
needed them again as variables. Now it sends the reference data, audits, and writes
``.run/careledger.toml``, which a later ``verify`` with no trust variables uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.config import LOCAL_CONFIG_NAME, PROJECT_ROOT, Settings
from tests.integration.pipeline import run_cli

pytestmark = pytest.mark.integration

SMALL_HOSPITAL = ("--patients", "300", "--staff", "60")


def _summary(out: str) -> dict[str, str]:
    lines = out.split("careledger demo summary\n", 1)[1].splitlines()
    return {ln[:28].strip(): ln[28:].strip() for ln in lines if ln.startswith("  ")}


@pytest.fixture
def local_config(isolated: Settings) -> Iterator[Path]:
    """The run directory's careledger.toml, as it was before the test (the shared .run)."""
    path = isolated.run_dir / LOCAL_CONFIG_NAME
    before = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)


def _as_a_user_would(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``careledger ARGS`` with the test's database and topics but no trust settings and
    no CARELEDGER_CONFIG: what a person types after the demo."""
    trust = {"TRUSTED_KEYS", "TRUSTED_REGISTRAR_KEYS", "SOURCE_KEY", "REGISTRAR_KEY", "CONFIG"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(
        {k: v for k, v in settings.as_env().items() if k.removeprefix("CARELEDGER_") not in trust}
    )
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_runs_the_pipeline_and_a_repeated_seed_is_reported_as_duplicates(
    isolated: Settings, tmp_path: Path, local_config: Path
) -> None:
    settings = isolated.replace(run_dir=isolated.run_dir)
    # a small hospital: its reference data is ~1/10 of the default one's (the test is about
    # the pipeline and the summary, not the volume)
    first = run_cli(settings, "demo", "--events", "2000", *SMALL_HOSPITAL, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    seed = re.search(r"hospital access events \(seed (\d+)\)", first.stdout)
    assert seed, first.stdout
    s1 = _summary(first.stdout)
    assert s1["events sent this run"].startswith("2,000 (and "), s1  # + reference records
    assert s1["verification"].startswith("intact (0 findings, exit 0)"), s1
    assert "witnessed to their head" in s1["witnesses"], s1
    audit = re.fullmatch(
        r"([\d,]+) accesses: ([\d,]+) explained, ([\d,]+) flagged; ([\d,]+) alerts",
        s1["audit (all runs)"],
    )
    assert audit, s1
    decided, explained, flagged, _alerts = (int(g.replace(",", "")) for g in audit.groups())
    # (an access can be explained and still flagged, e.g. a break-the-glass to review)
    assert decided >= 2000 and explained <= decided and flagged <= decided
    assert explained >= decided // 2, (
        f"the reference data explains too little: {s1['audit (all runs)']}"
    )
    assert "where to look next" in first.stdout
    assert "earlier runs had left unchained" not in first.stdout, "no backlog to speak of"

    # a later command trusts what the demo trusted, from .run/careledger.toml alone
    assert local_config.exists()
    later = _as_a_user_would(settings, "verify", "--no-record")
    assert later.returncode == 0, later.stdout[-2000:] + later.stderr[-2000:]
    local_config.rename(local_config.with_suffix(".away"))
    try:
        without = _as_a_user_would(settings, "verify", "--no-record")
        assert without.returncode == 2 and "trusted key" in without.stderr, without.stderr
    finally:
        local_config.with_suffix(".away").rename(local_config)

    again = run_cli(
        settings,
        "demo",
        "--events",
        "2000",
        *SMALL_HOSPITAL,
        "--seed",
        seed[1],
        "--no-witnesses",
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    s2 = _summary(again.stdout)
    assert s2["events stored (all runs)"] == "4,000", s2
    assert s2["verification"] == "intact (2,000 findings: 2,000 DUPLICATE_EVENT, exit 0)", s2


def test_a_backlog_left_in_kafka_is_signed_before_the_demo_says_done(
    isolated: Settings, local_config: Path
) -> None:
    """Found on 2026-12-07: after a `careledger simulate` with no processor running, a
    demo of 600,000 events stopped waiting once as many events as it had sent were stored:
    the backlog's, chained first, while ~400,000 of its own were not yet signed. It now
    waits until every record Kafka held when its traffic was sent is in a stored block."""
    from producers.simulator import run_simulation

    backlog = run_simulation(isolated, 20_000, seed=11, progress=False, patients=300, staff=60)
    assert backlog.acked == 20_000
    result = run_cli(isolated, "demo", "--events", "2000", *SMALL_HOSPITAL, "--no-witnesses")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = _summary(result.stdout)
    assert summary["events stored (all runs)"] == "22,000", summary
    assert summary["verification"].startswith("intact (0 findings"), summary
    left = re.search(
        r"including ([\d,]+) Kafka records earlier runs had left unchained", result.stdout
    )
    assert left, result.stdout  # the backlog's batch records (up to 500 events each)
    assert 20_000 // 500 <= int(left[1].replace(",", "")) <= 20_000, left[0]
