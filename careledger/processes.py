"""Running careledger subcommands as child processes with given settings.

The demo, the benchmark and the integration tests all start real processors
(and other subcommands) as separate processes: that is what a deployment runs,
and it is what a crash test can SIGKILL. The child gets exactly the settings
passed here, through ``CARELEDGER_*`` variables, never the parent's leftovers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from careledger.config import PROJECT_ROOT, Settings


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELEDGER_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_processor(
    settings: Settings, log_path: Path, *, loglevel: str = "warning", baseline: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``careledger process`` in its own process group, logging to ``log_path``."""
    args = [sys.executable, "-m", "commands.cli", "process", "--loglevel", loglevel]
    if baseline:
        args.append("--baseline")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=child_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_cli(settings: Settings, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``careledger ARGS`` (e.g. ``audit --follow``) in its own process group,
    stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "commands.cli", *args],
            cwd=PROJECT_ROOT,
            env=child_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send ``sig`` to the child's process group; SIGKILL it if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run_cli(
    settings: Settings, *args: str, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``careledger ARGS`` to completion, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args],
        cwd=PROJECT_ROOT,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
