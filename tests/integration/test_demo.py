"""The main job, ``careledger demo``, end to end on the real stack (a database and topics
of its own): simulated traffic chained, signed, witnessed and verified, and a summary
that says what verify found. A second run with the first run's seed sends the very same
events again: they are chained (nothing a sender sends is dropped) and the summary names
them as DUPLICATE_EVENT, still intact (ADR 0023)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from careledger.config import Settings
from tests.integration.pipeline import run_cli

pytestmark = pytest.mark.integration


def _summary(out: str) -> dict[str, str]:
    lines = out.split("careledger demo summary\n", 1)[1].splitlines()
    return {ln[:28].strip(): ln[28:].strip() for ln in lines if ln.startswith("  ")}


def test_demo_runs_the_pipeline_and_a_repeated_seed_is_reported_as_duplicates(
    isolated: Settings, tmp_path: Path
) -> None:
    settings = isolated.replace(run_dir=isolated.run_dir)
    first = run_cli(settings, "demo", "--events", "2000", timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    seed = re.search(r"hospital access events \(seed (\d+)\)", first.stdout)
    assert seed, first.stdout
    s1 = _summary(first.stdout)
    assert s1["events sent this run"] == "2,000"
    assert s1["verification"].startswith("intact (0 findings, exit 0)"), s1
    assert "witnessed to their head" in s1["witnesses"], s1

    again = run_cli(
        settings, "demo", "--events", "2000", "--seed", seed[1], "--no-witnesses", timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    s2 = _summary(again.stdout)
    assert s2["events stored (all runs)"] == "4,000", s2
    assert s2["verification"] == "intact (2,000 findings: 2,000 DUPLICATE_EVENT, exit 0)", s2
