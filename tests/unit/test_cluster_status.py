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


def test_each_replica_serves_parts_over_https_with_the_clusters_interserver_login(
    tmp_path: Path,
) -> None:
    """ADR 0032, addendum: what ``up --cluster`` writes into each replica's config."""
    cs = cluster.cluster_settings(Settings(run_dir=tmp_path))
    texts = [cluster._clickhouse_node(cs, n)[1] for n in (1, 2)]
    secret = cluster.interserver_password_file(cs)
    password = secret.read_text().strip()
    assert len(password) >= 32 and secret.stat().st_mode & 0o077 == 0
    for n, text in enumerate(texts, start=1):
        port = cs.clickhouse_port + cluster.PORT_STEP * (n - 1) + 9
        assert f"<interserver_https_port>{port}</interserver_https_port>" in text
        assert "interserver_http_port" not in text
        assert f"<user>{cluster.INTERSERVER_USER}</user><password>{password}</password>" in text


def test_a_plaintext_cluster_has_no_interserver_login_to_leak(tmp_path: Path) -> None:
    cs = cluster.cluster_settings(Settings(run_dir=tmp_path, clickhouse_secure=False))
    text = cluster._clickhouse_node(cs, 1)[1]
    assert "<interserver_http_port>" in text and "credentials" not in text
    assert not cluster.interserver_password_file(cs).exists()
