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
