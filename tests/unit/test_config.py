"""Settings: precedence and the per-pipeline topic suffix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from careledger.config import ConfigError, Settings, load_settings


def test_environment_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "careledger.toml"
    cfg.write_text("kafka_port = 29092\nblock_max_events = 10\n")
    s = load_settings(cfg, env={"CARELEDGER_KAFKA_PORT": "39092"})
    assert (s.kafka_port, s.block_max_events, s.clickhouse_port) == (39092, 10, 19000)


def test_unknown_or_malformed_settings_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "careledger.toml"
    cfg.write_text("kafak_port = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="kafka_port"):
        load_settings(env={"CARELEDGER_KAFKA_PORT": "many"})


def test_topic_suffix_renames_every_topic_and_nothing_else() -> None:
    base = Settings()
    s = base.with_topic_suffix("-x", processor_app_id="app-x")
    for f in dataclasses.fields(Settings):
        before, after = getattr(base, f.name), getattr(s, f.name)
        if f.name.startswith("topic_"):
            assert after == before + "-x"
        elif f.name == "processor_app_id":
            assert after == "app-x"
        else:
            assert after == before


def test_settings_round_trip_through_the_environment() -> None:
    s = Settings(trusted_keys=("a.pub", "ed25519:AAAA"), partitions=7)
    assert load_settings(env=s.as_env()) == s
