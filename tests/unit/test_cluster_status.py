"""``careledger status --cluster`` and ``down --cluster`` only look: they must not make
the cluster's passwords or CA (only ``up --cluster`` does, ADR 0032)."""

from __future__ import annotations

from pathlib import Path

from careledger.config import Settings
from careledger.stack import cluster


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_status_makes_no_secrets_or_certificates(tmp_path: Path) -> None:
    # ports nobody listens on: this is about files, not about what answers
    settings = Settings(run_dir=tmp_path, kafka_port=1, clickhouse_port=2, clickhouse_http_port=3)
    st = cluster.status(settings)
    assert not st.up
    made = _files(tmp_path)
    assert not [f for f in made if "secrets" in f or f.endswith((".password", ".key", ".pem"))], (
        made
    )


def test_status_lines_keep_their_columns_for_replica_names() -> None:
    st = cluster.status(Settings(run_dir=Path("/nonexistent"), kafka_port=1, clickhouse_port=2))
    lines = [n.line() for n in st.nodes]
    states = {line[13:18].strip() for line in lines}  # after a 12-wide name column
    assert states <= {"up", "down"}, lines
