"""The house in four floors: imports only go downward, wings never import each other.

The table of docs/design.md (Packages) as a test. Every import is read from the source,
top-level or inside a function, absolute or relative, so an import hidden in a function
to dodge a loop or a floor fails here like any other:

    careledger_core   the pure integrity core            imports nothing of ours but itself
    careledger        shared infrastructure (glue)       + careledger_core
    wings             producers, processors, verifiers   + careledger, careledger_core, itself
    commands          the CLI router, demo, benchmarks   anything but console
    console           the privacy office's web console   anything

Inside the verifiers wing each job is a sub-package; ``integrity`` and ``auditor`` import
no other job, ``reports`` may import ``auditor`` (the reference state as of an instant).
No module takes part in an import loop, and no source file is longer than
``MAX_LINES``. The checker is itself attacked first (``test_the_checker_*``): a rule
test that cannot fail proves nothing.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE = "careledger_core"
GLUE = "careledger"
WINGS = ("producers", "processors", "verifiers", "witness", "replica")
TOP = "commands"
#: the console: the top floor, it may read every floor (commands.status among them);
#: nothing imports it (the router routes to it by name)
CONSOLE = "console"
PACKAGES = (CORE, GLUE, *WINGS, TOP, CONSOLE)

#: sub-packages of a wing -> the other sub-packages of that wing they may import
JOBS: Mapping[str, Mapping[str, frozenset[str]]] = {
    "verifiers": {
        "integrity": frozenset(),
        "auditor": frozenset(),
        "reports": frozenset({"auditor"}),
    },
}

#: no source file (packages and tests) is longer than this
MAX_LINES = 800


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (or package), dotted, ours only
    line: int
    nested: bool  # inside a function or class body


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_module(dotted: str, root: Path) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool, root: Path) -> Iterator[Import]:
    """Every import of one of our packages in ``source`` (the code of ``module``)."""
    tree = ast.parse(source)
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for inner in ast.walk(node):
                if inner is not node:
                    nested.add(id(inner))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            subs = [f"{parent}.{a.name}" for a in node.names]
            found = [s for s in subs if _known_module(s, root)]
            targets = found if len(found) == len(subs) else [parent, *found]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield Import(module, target, node.lineno, id(node) in nested)


def all_imports(root: Path) -> list[Import]:
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found.extend(
                imports_of(
                    path.read_text(encoding="utf-8"),
                    module_name(path, root),
                    path.name == "__init__.py",
                    root,
                )
            )
    return found


def floor_violation(imp: Import) -> str | None:
    """Why ``imp`` runs against the floors, or None."""
    src, dst = imp.source.split("."), imp.target.split(".")
    if src[0] == dst[0]:
        jobs = JOBS.get(src[0], {})
        crosses = len(src) > 1 and len(dst) > 1 and src[1] in jobs and dst[1] in jobs
        if crosses and src[1] != dst[1] and dst[1] not in jobs[src[1]]:
            return f"the {src[0]} job {src[1]!r} imports the job {dst[1]!r}"
        return None
    if src[0] == CONSOLE:
        return None
    if dst[0] == CONSOLE:
        return "imports the console (the top floor: only the router's table names it)"
    if src[0] == TOP:
        return None
    if dst[0] == TOP:
        return "imports the commands floor (only the CLI router may route to it)"
    if src[0] == CORE:
        return "the pure core imports another package"
    if src[0] == GLUE:
        return None if dst[0] == CORE else f"the shared infrastructure imports the wing {dst[0]}"
    if dst[0] in (CORE, GLUE):
        return None
    return f"the wing {src[0]} imports the wing {dst[0]}"


def violations(imports: Iterable[Import]) -> list[str]:
    out = []
    for imp in imports:
        why = floor_violation(imp)
        if why:
            where = "inside a function" if imp.nested else "at top level"
            out.append(f"{imp.source}:{imp.line} imports {imp.target} {where}: {why}")
    return out


def import_loops(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan), each an import loop."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                loops.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


# -- the checker, attacked first ---------------------------------------------------------


def _fake_tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"careledger/x.py": "def f():\n    from producers.sdk import Producer\n"},
            "careledger.x:2 imports producers.sdk inside a function: "
            "the shared infrastructure imports the wing producers",
        ),
        (
            {"careledger_core/x.py": "import careledger.config\n"},
            "careledger_core.x:1 imports careledger.config at top level: "
            "the pure core imports another package",
        ),
        (
            {"producers/x.py": "from verifiers.auditor import rules\n"},
            "producers.x:1 imports verifiers.auditor at top level: "
            "the wing producers imports the wing verifiers",
        ),
        (
            {"processors/x.py": "class C:\n    def m(self):\n        import commands.cli\n"},
            "processors.x:3 imports commands.cli inside a function: "
            "imports the commands floor (only the CLI router may route to it)",
        ),
        (
            {
                "verifiers/integrity/__init__.py": "",
                "verifiers/auditor/__init__.py": "",
                "verifiers/integrity/x.py": "from ..auditor import rules\n",
            },
            "verifiers.integrity.x:1 imports verifiers.auditor at top level: "
            "the verifiers job 'integrity' imports the job 'auditor'",
        ),
    ],
    ids=[
        "glue-imports-wing-in-function",
        "core-imports-glue",
        "wing-imports-wing",
        "wing-imports-commands-in-method",
        "job-imports-job-relatively",
    ],
)
def test_the_checker_catches_an_import_against_the_floors(
    tmp_path: Path, files: Mapping[str, str], expected: str
) -> None:
    root = _fake_tree(tmp_path, files)
    assert violations(all_imports(root)) == [expected]


def test_the_checker_allows_the_downward_imports(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "careledger/x.py": "from careledger_core import event\n",
            "producers/x.py": "import careledger.x\nfrom careledger_core.event import E\n",
            "verifiers/auditor/__init__.py": "",
            "verifiers/reports/__init__.py": "",
            "verifiers/reports/x.py": "def f():\n    from verifiers.auditor import state\n",
            "commands/x.py": "import producers.x, processors, verifiers.reports.x\n",
        },
    )
    assert violations(all_imports(root)) == []


def test_the_checker_finds_a_loop_hidden_in_a_function(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "producers/a.py": "from producers import b\n",
            "producers/b.py": "def f():\n    from producers.a import g\n",
            "producers/c.py": "from producers import a\n",
        },
    )
    assert import_loops(all_imports(root)) == [["producers.a", "producers.b"]]


# -- the real tree -------------------------------------------------------------------------


def test_every_top_level_package_has_a_floor() -> None:
    found = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert found == set(PACKAGES), "place a new package in the table of docs/design.md"


def test_every_package_is_installed_and_type_checked() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    checked = set(project["tool"]["mypy"]["files"])
    for package in PACKAGES:
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), package
        assert package in checked, package
    assert project["project"]["scripts"]["careledger"] == "commands.cli:main"


def test_no_import_runs_against_the_floors() -> None:
    assert violations(all_imports(REPO)) == []


def test_no_import_loops() -> None:
    assert import_loops(all_imports(REPO)) == []


def test_no_source_file_is_longer_than_the_limit() -> None:
    too_long = {}
    for package in (*PACKAGES, "tests"):
        for path in (REPO / package).rglob("*.py"):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                too_long[str(path.relative_to(REPO))] = n
    assert too_long == {}, "split these along their seams"
