"""docker-compose.yml's Kafka nodes as they will run: the files its ``kafka-config``
service writes, made by running that service's own ``careledger kafka-config`` argv
(with test passwords, its volumes mapped to a temporary directory), and the file each
broker's script starts from.

Used by test_compose.py's neighbours: a broker's configuration is then read like an
apache/kafka environment (``node.id`` as ``KAFKA_NODE_ID``), so the cluster checks of
test_compose_cluster.py apply to what the brokers really load.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from careledger import tls
from careledger.kafka.security import PRINCIPALS
from careledger.stack import kafka_deploy
from tests.unit.test_compose import env_of, mounts, settings_of

Compose = dict[str, Any]

#: a password per principal, as an operator's .env would hold them
TEST_PASSWORDS = {p: f"test-{p}-0123456789abcdef" for p in PRINCIPALS}
_PROPERTIES = re.compile(r"(\S+\.properties)")


def config_argv(data: Compose) -> list[str]:
    """The ``careledger kafka-config`` arguments of the kafka-config service."""
    command = data["services"]["kafka-config"]["command"]
    assert isinstance(command, list) and command[0] == "kafka-config", command
    return [str(a) for a in command[1:]]


def parse_config_argv(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    kafka_deploy.configure_kafka_config(parser)
    return parser.parse_args(argv)


def broker_script(service: dict[str, Any]) -> str:
    command = service.get("command")
    return command if isinstance(command, str) else "\n".join(command or [])


def broker_files(service: dict[str, Any]) -> set[PurePosixPath]:
    """Every ``.properties`` file a broker's script names (the format and the start)."""
    return {PurePosixPath(p) for p in _PROPERTIES.findall(broker_script(service))}


def run_kafka_config(data: Compose, out: Path) -> dict[str, str]:
    """Run the kafka-config service's command into ``out`` (its TLS directory: a member
    certificate made here for the hosts the certs service names); the generated files'
    names -> text. Raises what the command would exit 2 for."""
    args = parse_config_argv(config_argv(data))
    service = data["services"]["kafka-config"]
    settings = settings_of(service)
    ca_dir, tls_dir = out / "ca", out / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    member = tls.member_cert(ca_dir, "kafka", ("kafka-1", "kafka-2", "kafka-3", "127.0.0.1"))
    shutil.copy(member.cert, tls_dir / "kafka.pem")
    shutil.copy(member.ca, tls_dir / "ca.pem")
    shutil.copy(tls.write_pem_keystore(member), tls_dir / "kafka.keystore.pem")
    layout = kafka_deploy.layout_from_args(args)
    env = {
        **env_of(service),
        **{kafka_deploy.password_variable(p): TEST_PASSWORDS[p] for p in PRINCIPALS},
    }
    written = kafka_deploy.write_kafka_config(
        out / "config", layout, settings, kafka_deploy.passwords_from_env(env), tls=tls_dir
    )
    text = {p.name: p.read_text(encoding="utf-8") for p in written}
    # as the brokers see them: the TLS directory at the --tls path kafka-config was given
    return {k: v.replace(str(tls_dir), str(args.tls)) for k, v in text.items()}


def load_properties(text: str) -> dict[str, str]:
    """A properties file careledger wrote (one ``key=value`` per line, no escapes in the
    entries read here)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def as_env(props: dict[str, str]) -> dict[str, str]:
    """``props`` named as the apache/kafka image's environment names them."""
    return {"KAFKA_" + k.upper().replace(".", "_").replace("-", "___"): v for k, v in props.items()}


def broker_envs(data: Compose) -> dict[str, dict[str, str]]:
    """Each broker service -> the configuration it starts from (as environment names)
    plus its own environment (CLUSTER_ID); a broker whose file kafka-config does not
    write gets only its environment."""
    args = parse_config_argv(config_argv(data))
    with tempfile.TemporaryDirectory() as tmp:
        files = run_kafka_config(data, Path(tmp))
    found = {}
    for name, svc in data["services"].items():
        if not str(svc.get("image", "")).startswith("apache/kafka:"):
            continue
        env = dict(env_of(svc))
        for path in broker_files(svc):
            if path.parent == PurePosixPath(args.out) and path.name in files:
                env.update(as_env(load_properties(files[path.name])))
        found[name] = env
    return found


def volume_at(service: dict[str, Any], path: str) -> tuple[str, bool] | None:
    """(named volume, read-only) mounted at exactly ``path`` in ``service``."""
    for src, target, ro in mounts(service):
        if target == PurePosixPath(path):
            return src, ro
    return None
