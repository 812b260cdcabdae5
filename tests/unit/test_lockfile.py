"""Supply chain (issue 12): what is installed is what was locked, byte for byte.

Python packages come from requirements.lock (deploy/lock.sh), installed with
``pip install --require-hashes``; the Kafka jars Maven fetches are refused unless they
are exactly the files pinned in deploy/kafka/jars-<version>.sha256.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from careledger.config import Settings
from careledger.stack.kafka_server import KAFKA_LIB_ROOT, jar_problem, pinned_jars
from careledger.stack.model import StackError

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
BOOTSTRAP = ROOT / "deploy" / "bootstrap.sh"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")


def _lock() -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hex...])} of requirements.lock."""
    return _lock_of(LOCK.read_text())


def _lock_of(text: str) -> dict[str, tuple[str, list[str]]]:
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _PIN.match(line):
            current = canonicalize_name(m[1])
            assert current not in entries, f"{current} pinned twice"
            entries[current] = (m[2], [])
        elif (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and current:
            entries[current][1].append(h[1])
    return entries


def _pyproject_requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = [
        *data["project"]["dependencies"],
        *data["project"]["optional-dependencies"]["dev"],
        *data["project"]["optional-dependencies"]["benchmark"],
        *data["build-system"]["requires"],
    ]
    return [Requirement(t) for t in texts]


def test_every_requirement_of_pyproject_is_pinned_within_its_range() -> None:
    lock = _lock()
    for req in _pyproject_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in requirements.lock: run deploy/lock.sh"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {req}: run deploy/lock.sh"
        )


def test_every_pinned_package_has_its_file_hashes() -> None:
    lock = _lock()
    assert len(lock) > 40  # the whole closure, not only the direct requirements
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash: pip would refuse the whole lock"


def test_the_lock_names_no_index_no_url_and_no_option() -> None:
    text = LOCK.read_text()
    assert "://" not in text
    for line in text.splitlines():
        stripped = line.strip()
        assert not stripped.startswith(("-i", "--index", "--extra-index", "-f", "--find-links")), (
            line
        )
        assert not stripped.startswith(("-e", "--editable", "-c", "-r")), line


def test_bootstrap_installs_the_lock_with_hashes_and_adds_nothing() -> None:
    script = BOOTSTRAP.read_text()
    assert re.search(r"pip install[^\n]*--require-hashes[^\n]*\\\n\s*-r requirements\.lock", script)
    # careledger itself: editable, no dependency resolution, no unpinned build backend
    assert re.search(r"--no-deps[^\n]*\\\n\s*--no-build-isolation -e \.", script)
    assert "-e '.[" not in script
    # the venv is redone when the lock changes, not only pyproject.toml
    assert "cat pyproject.toml requirements.lock | sha256sum" in script


def test_a_package_whose_bytes_are_not_the_locked_ones_is_refused(tmp_path: Path) -> None:
    """The attack: the index (or a mirror, or a proxy) serves other bytes under a pinned
    version. pip, in the lock's hash mode, refuses them; the same pin with the lock's
    own hashes is accepted (so the refusal is the hash, not the network)."""
    version, hashes = _lock()["defusedxml"]
    good = tmp_path / "good.lock"
    good.write_text(f"defusedxml=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes))
    bad = tmp_path / "bad.lock"
    bad.write_text(f"defusedxml=={version} --hash=sha256:{'0' * 64}\n")

    def download(lock: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--require-hashes",
                "-d",
                str(tmp_path / lock.stem),
                "-r",
                str(lock),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    accepted = download(good)
    assert accepted.returncode == 0, accepted.stderr[-500:]
    refused = download(bad)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr
    assert not list((tmp_path / "bad").glob("*.whl"))


# --- Kafka jars -------------------------------------------------------------------


def _lib(tmp_path: Path, files: dict[str, bytes]) -> Path:
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, data in files.items():
        (lib / name).write_bytes(data)
    return lib


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_jars_exactly_as_pinned_are_accepted(tmp_path: Path) -> None:
    lib = _lib(tmp_path, {"a.jar": b"A", "b.jar": b"B"})
    assert jar_problem(lib, {"a.jar": _sha(b"A"), "b.jar": _sha(b"B")}) is None


def test_a_jar_with_other_bytes_is_refused(tmp_path: Path) -> None:
    lib = _lib(tmp_path, {"a.jar": b"A", "b.jar": b"B, backdoored"})
    problem = jar_problem(lib, {"a.jar": _sha(b"A"), "b.jar": _sha(b"B")})
    assert problem == "b.jar does not have its pinned SHA-256"


def test_an_extra_or_missing_jar_is_refused(tmp_path: Path) -> None:
    lib = _lib(tmp_path, {"a.jar": b"A", "agent.jar": b"X"})
    assert jar_problem(lib, {"a.jar": _sha(b"A")}) == "not pinned: agent.jar"
    assert jar_problem(lib, {"a.jar": _sha(b"A"), "agent.jar": _sha(b"X"), "c.jar": "0" * 64}) == (
        "missing c.jar"
    )


def test_a_kafka_version_without_pins_is_refused() -> None:
    with pytest.raises(StackError, match=r"no pinned checksums for Kafka 0\.0\.0"):
        pinned_jars("0.0.0")


def test_the_installed_kafka_is_the_pinned_one() -> None:
    version = Settings().kafka_version
    pins = pinned_jars(version)
    assert f"kafka_2.13-{version}.jar" in pins
    lib = KAFKA_LIB_ROOT / version
    assert lib.is_dir(), "deploy/bootstrap.sh installs the Kafka jars before the tests"
    assert jar_problem(lib, pins) is None


def test_the_image_installs_the_runtime_lock_with_hashes() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements-runtime.lock" in dockerfile
    assert "pip install --no-deps --no-build-isolation /src" in dockerfile


def test_the_runtime_lock_is_the_full_lock_s_versions_and_hashes() -> None:
    full = _lock()
    runtime_text = (ROOT / "deploy" / "requirements-runtime.lock").read_text()
    runtime = _lock_of(runtime_text)
    assert "pytest" not in runtime and "mypy" not in runtime  # runtime only
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for text in data["project"]["dependencies"]:
        assert canonicalize_name(Requirement(text).name) in runtime, text
    for name, (version, hashes) in runtime.items():
        assert full[name] == (version, hashes), name
