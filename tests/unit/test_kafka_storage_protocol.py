"""A Kafka storage formatted for one security protocol is refused by a broker started
for the other (its SCRAM logins are made only at format time; ADR 0033), with the
directory to remove and the setting that would start it as it was made."""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.stack.kafka_server import SECURITY_MARK, _kafka_format
from careledger.stack.model import StackError
from careledger.stack.paths import _paths


@pytest.mark.parametrize(("made", "asked"), [("SASL_SSL", "PLAINTEXT"), (None, "SASL_SSL")])
def test_a_storage_formatted_for_another_protocol_is_refused(
    tmp_path: Path, made: str | None, asked: str
) -> None:
    s = Settings(run_dir=tmp_path, kafka_security_protocol=asked)
    data = _paths(s).kafka_data
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("cluster.id=x\n")
    if made is not None:  # a storage from before the mark is a plaintext one
        (data / SECURITY_MARK).write_text(made + "\n")
    with pytest.raises(StackError) as refused:
        _kafka_format(s, "java-not-needed")
    text = str(refused.value)
    assert str(data) in text and f"start a {asked} broker" in text
    assert f"CARELEDGER_KAFKA_SECURITY_PROTOCOL={made or 'PLAINTEXT'}" in text


def test_a_storage_formatted_for_the_same_protocol_is_kept(tmp_path: Path) -> None:
    s = Settings(run_dir=tmp_path, kafka_security_protocol="SASL_SSL")
    data = _paths(s).kafka_data
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("cluster.id=x\n")
    (data / SECURITY_MARK).write_text("SASL_SSL\n")
    _kafka_format(s, "java-not-needed")  # nothing to do, nothing run


def test_the_broker_certificate_is_issued_by_the_ca_the_clients_are_told_to_trust(
    tmp_path: Path,
) -> None:
    """A copy of the stack's settings with another run_dir keeps ``kafka_ca_file``
    pinned to the shared stack's CA (``pin_login``): its broker's certificate must come
    from that CA, not a new one in its own run_dir (the SASL_SSL suite's "SSL handshake
    failed" for test_stack's separate stack). A CA whose key is elsewhere is not ours to
    issue from: the stack's own directory then."""
    from careledger import tls
    from careledger.credentials import tls_dir
    from careledger.stack.kafka_server import KafkaNode, _cert_dir

    shared = tls.server_cert(tmp_path / "shared-tls", "clickhouse")
    own = Settings(run_dir=tmp_path / "own", kafka_ca_file=shared.ca)
    assert _cert_dir(own, None) == tmp_path / "shared-tls"
    (tmp_path / "shared-tls" / "ca.key").unlink()
    assert _cert_dir(own, None) == tls_dir(own)
    node = KafkaNode(2, "1@h:1,2@h:2", 2, 1, home=tmp_path / "cluster")
    assert _cert_dir(own, node) == tmp_path / "cluster" / "tls"
