"""``careledger kafka-config``: the files a KRaft cluster's nodes start from (ADR 0033).

What a real broker makes of them is tests/integration/test_kafka_deploy.py; here, what
is written, with which modes, and what is refused before anything is written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from careledger import tls
from careledger.config import Settings
from careledger.kafka.security import PRINCIPALS, KafkaLogin, scram_format_args
from careledger.stack import kafka_deploy as kd
from commands.cli import main
from tests.unit.test_kafka_security import _load_properties

PASSWORDS = {p: f"{p}-password-0123456789" for p in PRINCIPALS}
NODES = ("kafka-1", "kafka-2", "kafka-3")


def _env() -> dict[str, str]:
    return {kd.password_variable(p): v for p, v in PASSWORDS.items()}


def _tls(tmp_path: Path) -> Path:
    member = tls.member_cert(tmp_path / "ca", "kafka", NODES)
    out = tmp_path / "tls"
    out.mkdir()
    for src, name in ((member.cert, "kafka.pem"), (member.ca, "ca.pem")):
        (out / name).write_bytes(src.read_bytes())
    tls.write_pem_keystore(member, out / "kafka.keystore.pem")
    return out


def _cluster() -> Settings:
    return Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)


def test_every_principal_password_is_required_and_none_is_echoed() -> None:
    assert kd.passwords_from_env(_env()) == PASSWORDS
    for principal in PRINCIPALS:
        env = _env()
        del env[kd.password_variable(principal)]
        with pytest.raises(ValueError, match=kd.password_variable(principal)):
            kd.passwords_from_env(env)
        env[kd.password_variable(principal)] = "short-secret"
        with pytest.raises(ValueError, match="shorter than 16") as info:
            kd.passwords_from_env(env)
        assert "short-secret" not in str(info.value)


def test_each_node_gets_its_own_file_and_the_quorum_names_all(tmp_path: Path) -> None:
    layout = kd.ClusterLayout(NODES, external=("127.0.0.1:19092", "127.0.0.1:19192", "h:19292"))
    written = kd.write_kafka_config(
        tmp_path / "out", layout, _cluster(), PASSWORDS, tls=_tls(tmp_path)
    )
    names = sorted(p.name for p in written)
    assert names == sorted(
        [*(f"{n}.properties" for n in NODES), kd.SCRAM_ARGS_FILE, kd.CLIENT_FILE]
    )
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o700
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for i, node in enumerate(NODES, 1):
        props = _load_properties((tmp_path / "out" / f"{node}.properties").read_text())
        assert props["node.id"] == str(i)
        assert props["controller.quorum.voters"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert props["listeners"] == (
            f"INTERNAL://:9092,EXTERNAL://:{layout.external[i - 1].rpartition(':')[2]},"
            "CONTROLLER://:9093"
        )
        assert props["advertised.listeners"].split(",")[0] == f"INTERNAL://{node}:9092"
        assert props["inter.broker.listener.name"] == "INTERNAL"
        assert props["listener.security.protocol.map"] == (
            "CONTROLLER:SSL,INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL"
        )
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["auto.create.topics.enable"] == "false"
        assert props["unclean.leader.election.enable"] == "false"
        assert props["allow.everyone.if.no.acl.found"] == "false"
        # every client listener has a login module; the brokers' own one logs in as broker
        for listener in ("internal", "external"):
            jaas = props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"]
            assert f'password="{PASSWORDS["broker"]}"' in jaas
    args = (tmp_path / "out" / kd.SCRAM_ARGS_FILE).read_text().split("\n")[:-1]
    logins = [KafkaLogin(p, PASSWORDS[p], None, "SASL_SSL") for p in PRINCIPALS]
    assert args == scram_format_args(logins)
    client = _load_properties((tmp_path / "out" / kd.CLIENT_FILE).read_text())
    assert client["security.protocol"] == "SASL_SSL"
    assert 'username="admin"' in client["sasl.jaas.config"]
    assert client["ssl.truststore.location"] == str(tmp_path / "tls" / "ca.pem")


def test_a_password_the_storage_tool_would_split_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    """``--add-scram`` splits on ``,`` and ``]``: ``x],name=admin,password=y`` would
    make another login than the one asked for. Nothing is written."""
    layout = kd.ClusterLayout(NODES)
    tls_dir = _tls(tmp_path)
    for bad in (
        "abcdefghijklmnop],name=admin,password=y",
        "abcdefgh ijklmnopq",
        'quote"d-password-x',
    ):
        with pytest.raises(ValueError):
            kd.write_kafka_config(
                tmp_path / "out",
                layout,
                _cluster(),
                {**PASSWORDS, "producer": bad},
                tls=tls_dir,
            )
        assert not (tmp_path / "out").exists()


def test_a_layout_that_cannot_run_is_refused(tmp_path: Path) -> None:
    for nodes, external in (
        ((), ()),
        (("a", "a"), ()),
        (("a b",), ()),
        (("a", "b"), ("127.0.0.1:1",)),
        (("a",), ("127.0.0.1:x",)),
        (("a",), ("127.0.0.1:9092",)),  # the same port as the nodes' own listener
    ):
        with pytest.raises(ValueError):
            kd.ClusterLayout(nodes, external=external)
    with pytest.raises(ValueError, match="replication factor 3 on 2 nodes"):
        kd.node_properties(
            kd.ClusterLayout(("a", "b")), "a", _cluster(), tls=_tls(tmp_path), broker_password="x"
        )


def test_the_command_says_which_variable_is_missing_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tls_dir = _tls(tmp_path)
    argv = ["kafka-config", "--out", str(tmp_path / "out"), "--tls", str(tls_dir)]
    argv += ["--nodes", ",".join(NODES)]
    monkeypatch.setenv("CARELEDGER_KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("CARELEDGER_KAFKA_MIN_INSYNC_REPLICAS", "2")
    for name, value in _env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CARELEDGER_KAFKA_AUDITOR_PASSWORD")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CARELEDGER_KAFKA_AUDITOR_PASSWORD is not set" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("CARELEDGER_KAFKA_AUDITOR_PASSWORD", PASSWORDS["auditor"])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(v not in out for v in PASSWORDS.values())
    assert (tmp_path / "out" / "kafka-3.properties").exists()
