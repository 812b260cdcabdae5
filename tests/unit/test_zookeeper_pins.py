"""Supply chain (issue 12) for the local cluster's ZooKeeper (ADR 0030): the jars Maven
fetches are refused unless they are exactly the files pinned in
deploy/zookeeper/jars-<version>.sha256, like the Kafka jars (tests/unit/test_lockfile.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from careledger.stack import zookeeper_server as zk
from careledger.stack.kafka_server import jar_problem, pinned_jars
from careledger.stack.model import StackError

ROOT = Path(__file__).resolve().parents[2]
VERSION = zk.ZOOKEEPER_VERSION


def _pins() -> dict[str, str]:
    return pinned_jars(VERSION, zk.ZOOKEEPER_PINS, product="ZooKeeper")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _installed_copy(tmp_path: Path) -> Path:
    lib = zk.zookeeper_lib_dir()
    assert zk.zookeeper_installed(), "deploy/bootstrap.sh installs the ZooKeeper jars first"
    copy = tmp_path / "lib"
    copy.mkdir()
    for jar in lib.glob("*.jar"):
        shutil.copyfile(jar, copy / jar.name)
    return copy


def test_the_pins_file_parses_and_pins_the_server_and_its_logging() -> None:
    pins = _pins()
    assert f"zookeeper-{VERSION}.jar" in pins
    assert f"zookeeper-jute-{VERSION}.jar" in pins
    assert any(name.startswith("logback-classic-") for name in pins)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in pins.values())
    # a small set: no TLS natives for five platforms, no client shell, no admin server
    assert not [n for n in pins if "tcnative" in n or "jetty" in n or "jline" in n], pins


def test_the_installed_zookeeper_is_the_pinned_one() -> None:
    assert zk.zookeeper_installed(), "deploy/bootstrap.sh installs the ZooKeeper jars first"
    assert jar_problem(zk.zookeeper_lib_dir(), _pins()) is None


def test_a_copy_made_before_the_pins_changed_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stamped copy without a jar pinned since (the epoll transport the TLS port
    needs) is not "installed": bootstrap fetches it again instead of starting a server
    that cannot open its TLS port."""
    copy = _installed_copy(tmp_path)
    root = tmp_path / "root"
    (root / VERSION).parent.mkdir(parents=True)
    copy.rename(root / VERSION)
    (root / VERSION / ".complete").touch()
    monkeypatch.setattr(zk, "ZOOKEEPER_LIB_ROOT", root)
    assert zk.zookeeper_installed()
    epoll = next((root / VERSION).glob("netty-transport-native-epoll-*.jar"))
    epoll.unlink()
    assert not zk.zookeeper_installed()


def test_a_tampered_jar_is_refused(tmp_path: Path) -> None:
    lib = _installed_copy(tmp_path)
    jar = lib / f"zookeeper-{VERSION}.jar"
    jar.write_bytes(jar.read_bytes() + b"\0")  # one byte appended: still a valid zip
    assert jar_problem(lib, _pins()) == f"zookeeper-{VERSION}.jar does not have its pinned SHA-256"


def test_an_extra_jar_is_refused(tmp_path: Path) -> None:
    lib = _installed_copy(tmp_path)
    (lib / "agent.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert jar_problem(lib, _pins()) == "not pinned: agent.jar"


def test_a_missing_jar_is_refused(tmp_path: Path) -> None:
    lib = _installed_copy(tmp_path)
    (lib / f"zookeeper-jute-{VERSION}.jar").unlink()
    assert jar_problem(lib, _pins()) == f"missing zookeeper-jute-{VERSION}.jar"


def test_a_malformed_pins_file_is_refused(tmp_path: Path) -> None:
    pins = tmp_path / "jars-{version}.sha256"
    Path(str(pins).format(version="1")).write_text(f"{_sha(b'A')}  ../a.jar\n")
    with pytest.raises(StackError, match=r"line 1 is not a `sha256sum` line of a jar"):
        pinned_jars("1", pins, product="ZooKeeper")


def test_a_zookeeper_version_without_pins_is_refused() -> None:
    with pytest.raises(StackError, match=r"no pinned checksums for ZooKeeper 0\.0\.0"):
        pinned_jars("0.0.0", zk.ZOOKEEPER_PINS, product="ZooKeeper")


def test_install_refuses_and_removes_jars_maven_fetched_that_are_not_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the repository serves other bytes under ZooKeeper's coordinates
    (modelled by a pin that differs from what Maven fetches). The install fails, and no
    jar is left where a start would run it."""
    pins = tmp_path / "jars-{version}.sha256"
    good = _pins()
    bad = {**good, f"zookeeper-{VERSION}.jar": "0" * 64}
    Path(str(pins).format(version=VERSION)).write_text(
        "".join(f"{d}  {n}\n" for n, d in sorted(bad.items()))
    )
    monkeypatch.setattr(zk, "ZOOKEEPER_PINS", pins)
    monkeypatch.setattr(zk, "ZOOKEEPER_LIB_ROOT", tmp_path / "lib")
    with pytest.raises(StackError, match=r"ZooKeeper 3\.9\.5 jars refused: zookeeper-3\.9\.5\.jar"):
        zk.install_zookeeper(tmp_path / "logs", quiet=True)
    assert not (tmp_path / "lib" / VERSION).exists()
    assert not zk.zookeeper_installed()

    # the same install with the real pins is accepted (the refusal was the pin)
    Path(str(pins).format(version=VERSION)).write_text(
        "".join(f"{d}  {n}\n" for n, d in sorted(good.items()))
    )
    lib = zk.install_zookeeper(tmp_path / "logs", quiet=True)
    assert lib == tmp_path / "lib" / VERSION
    assert jar_problem(lib, good) is None and zk.zookeeper_installed()


def test_the_pom_names_no_repository_and_bootstrap_installs_zookeeper() -> None:
    pom = (ROOT / "deploy" / "zookeeper" / "pom.xml").read_text()
    assert "<repositories>" not in pom and "<pluginRepositories>" not in pom
    assert f"<zookeeper.version>{VERSION}</zookeeper.version>" in pom
    bootstrap = (ROOT / "deploy" / "bootstrap.sh").read_text()
    assert "-m careledger.stack install-zookeeper" in bootstrap
    assert "deploy/zookeeper/lib/" in (ROOT / ".gitignore").read_text().splitlines()
