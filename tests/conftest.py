"""Session-wide fixtures shared by every test suite.

* ``settings`` - the Settings of the local stack (``<repo>/.run``, ports from the
  ``CARELEDGER_*`` environment if set), the same stack ``careledger up`` manages.
* ``stack``    - makes sure Kafka and ClickHouse are up (starting them if needed) and
  returns ``settings``. If this test session started them they are stopped at the
  end, unless another session still uses them or ``CARELEDGER_KEEP_STACK=1``.
* ``isolated`` - per test: a Settings copy with its own ClickHouse database
  (created and migrated) and its own Kafka topics (created), all removed afterwards
  (kept with ``CARELEDGER_KEEP_TEST_DATA=1``, handy when debugging a failure).

Tests under ``tests/integration`` get the ``integration`` marker automatically, so
``pytest -m "not integration"`` runs the fast suite without any service.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careledger.config import PROJECT_ROOT, Settings, load_settings
from careledger.credentials import pin_login
from careledger.kafka.clients import kafka_config
from careledger.kafka.security import ADMIN

log = logging.getLogger("careledger.tests")

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

# The run directory's careledger.toml, which `careledger demo` writes and commands read
# when no file is named, is a developer's state, not a test's: commands run in-process
# here read none unless a test names one (tests of the file itself run commands with an
# environment of their own).
os.environ.setdefault("CARELEDGER_CONFIG", "")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


#: integration modules that share one fixed-port cluster (``careledger up --cluster``) and
#: kill its nodes: never run beside each other
_CLUSTER_MODULES: frozenset[str] = frozenset(
    {"test_cluster.py", "test_cluster_faults.py", "test_cluster_keystore.py"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist's ``--dist loadfile`` (deploy/test.sh): a module's tests on one
    worker, in order (its module fixtures set up once), and the cluster's modules as one
    unit, one after the other on one worker. Each test is isolated on the shared stack by
    its own database, topics and app id (``isolated``). (xdist's ``loadgroup`` marks
    would say the same, but pytest 9.2 ignores the node ids they rewrite.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class _Modules(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "cluster" if Path(module).name in _CLUSTER_MODULES else module

    return _Modules(config, log)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(run_dir=PROJECT_ROOT / ".run")


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    from careledger import stack as stack_mod

    lease = stack_mod.acquire_lease(settings)
    try:
        status = stack_mod.up(settings, quiet=True)
        if status.started:
            stack_mod.mark_started_by_tests(settings)
        if not status.up:
            raise stack_mod.StackError(f"local stack is not up:\n{status}")
    except BaseException:
        stack_mod.release_lease(settings, lease, stop_if_last=not _flag("CARELEDGER_KEEP_STACK"))
        raise
    try:
        _processor_key(settings)
        # the stack's logins named explicitly: a test's copy with another run_dir logs in
        yield pin_login(settings)
    finally:
        stopped = stack_mod.release_lease(
            settings, lease, stop_if_last=not _flag("CARELEDGER_KEEP_STACK")
        )
        if stopped:
            log.info("stopped the local stack this test session started")


def _processor_key(settings: Settings) -> None:
    """The run directory's processor signing key, made if missing: the key every test
    processor without one of its own (``tests.integration.pipeline.with_keys``) signs
    with. Made here, once, not by whichever test happened to run first (with several
    workers, a test's order is not fixed); under the stack's lock, since every worker
    comes here."""
    from careledger.keys import default_key_path, write_keypair
    from careledger.stack.paths import _stack_lock

    with _stack_lock(settings):
        path = default_key_path(settings)
        if not path.exists():
            write_keypair(path)


def _migrate(settings: Settings) -> None:
    try:
        from careledger.storage.migrations import migrate
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("careledger.storage"):
            _create_database(settings)
            return
        raise
    migrate(settings)


def _create_database(settings: Settings) -> None:
    from careledger.storage.backend import ClickHouseBackend

    backend = ClickHouseBackend.from_settings(settings)
    try:
        backend.execute(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse_database}")
    finally:
        backend.close()


def _drop_database(settings: Settings) -> None:
    from careledger.storage.backend import ClickHouseBackend

    backend = ClickHouseBackend.from_settings(settings)
    try:
        backend.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    finally:
        backend.close()


def isolated_settings(base: Settings, tag: str | None = None) -> Settings:
    """``base`` with a unique database, topic names and processor app id."""
    tag = tag or uuid.uuid4().hex[:10]
    return base.with_topic_suffix(
        f"-t{tag}",
        clickhouse_database=f"careledger_t_{tag}",
        processor_app_id=f"{base.processor_app_id}-t{tag}",
    )


@pytest.fixture
def isolated(stack: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    from careledger import stack as stack_mod

    if not _listening(stack):
        # A service died during the session (crash, someone ran `careledger down`):
        # bring it back rather than failing every remaining test.
        log.warning("local stack not fully up; restarting it")
        if stack_mod.up(stack, quiet=True).started:
            stack_mod.mark_started_by_tests(stack)
    s = isolated_settings(stack).replace(verifier_state_dir=tmp_path / "verifier")
    topics = stack_mod.default_topics(s)
    stack_mod.ensure_topics(s, topics)
    _migrate(s)
    if request.node.get_closest_marker("bare_sources") is None:
        s = _with_local_source(s, tmp_path)
    try:
        yield s
    finally:
        if not _flag("CARELEDGER_KEEP_TEST_DATA"):
            _cleanup(s, list(topics))


def _listening(s: Settings) -> bool:
    """Whether the stack's broker and server still accept connections: enough to tell a
    service that died (the test then fails on anything subtler), without a login per test
    (a SASL_SSL one costs a TLS handshake and a SCRAM exchange)."""
    from careledger.stack.processes import _port_open

    return _port_open(s.kafka_host, s.kafka_port) and _port_open(
        s.clickhouse_host, s.clickhouse_port
    )


def _with_local_source(s: Settings, tmp_path: Path) -> Settings:
    """Signatures are required by default (ADR 0010): every test pipeline gets a
    registrar and a registered source key of its own, so the SDK signs its events.
    Tests of other sources add them with ``tests.integration.pipeline.with_source``."""
    from careledger.sources import ensure_local_source

    keys = tmp_path / "fixture-keys"
    return ensure_local_source(
        s.replace(registrar_key=keys / "registrar.key", source_key=keys / "source-local.key"),
        say=lambda *_: None,
        principal=ADMIN,
    )


def _cleanup(s: Settings, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    from careledger import stack as stack_mod

    try:
        _drop_database(s)
    except Exception as exc:
        log.warning("could not drop test database %s: %s", s.clickhouse_database, exc)
    try:
        # Topics the processor (faust) created for this test's app id go too.
        existing = AdminClient(kafka_config(s, ADMIN)).list_topics(timeout=10)
        extra = [t for t in existing.topics if t.startswith(f"{s.processor_app_id}-")]
        stack_mod.delete_topics(s, [t for t in topics if t in existing.topics] + extra)
    except Exception as exc:
        log.warning("could not delete test topics %s: %s", topics, exc)
