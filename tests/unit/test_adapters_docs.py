"""The ingest mapping document lists every code the adapters can report, the fixtures'
README states the source and licence of every fixture, and the adapters stay pure."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from producers import simulator
from producers.adapters import ERROR_CODES, ISSUE_CODES
from producers.adapters._draft import NO_PATIENT

REPO = Path(__file__).resolve().parents[2]
MAPPING = REPO / "docs" / "ingest-mapping.md"
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
ADAPTERS = REPO / "producers" / "adapters"


def _table_codes(section: str) -> set[str]:
    text = MAPPING.read_text(encoding="utf-8")
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", body, flags=re.MULTILINE))


def test_the_mapping_document_lists_every_error_code() -> None:
    assert _table_codes("## IngestError codes") == set(ERROR_CODES)


def test_the_mapping_document_lists_every_issue_code() -> None:
    assert _table_codes("## Conformance issue codes") == set(ISSUE_CODES)


def test_every_code_the_adapters_raise_or_report_is_declared() -> None:
    """Scan the source for issue / error codes given as string literals."""
    used: set[str] = set()
    for path in ADAPTERS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                first = node.args[0]
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if (
                    name in ("add", "IngestError")
                    and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and first.value.isupper()
                ):
                    used.add(first.value)
    assert used
    assert used <= set(ISSUE_CODES) | set(ERROR_CODES)


def test_every_fixture_is_listed_with_its_source_in_the_readme() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    files = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.is_file())
    files.remove("README.md")
    assert files
    for name in files:
        assert f"`{name}`" in readme, f"{name} is not documented in the fixtures README"


def test_the_no_patient_placeholder_is_the_simulators() -> None:
    assert NO_PATIENT == simulator.NO_PATIENT


def test_the_adapters_do_no_io() -> None:
    """No sockets, files, subprocesses, clocks or Kafka/ClickHouse clients."""
    forbidden_modules = {
        "socket",
        "subprocess",
        "os",
        "pathlib",
        "io",
        "time",
        "random",
        "urllib",
        "http",
        "asyncio",
        "confluent_kafka",
        "aiokafka",
        "clickhouse_driver",
        "careledger",
    }
    for path in ADAPTERS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
                    raise AssertionError(f"{path.name} calls open()")
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden_modules, f"{path.name} imports {name}"
