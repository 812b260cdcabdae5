"""Every named volume an unprivileged app service mounts is owned by the image's user
(issue 13 point 7).

Docker gives a fresh named volume the ownership of the directory the image has at the
mount point, on first mount; a directory the image lacks is created owned by root.
The image runs as uid 10001, so a volume mounted where the image has no directory of
that user is not writable by the service: `keygen` wrote its registrar key and the
sources' keys to /registrar and /sources/..., which deploy/Dockerfile did not create,
so it would have failed on first start and every service waiting for it with it (read
from the files: no Docker engine here). The check reads the Dockerfile's final stage:
the directories its RUN lines create (`mkdir -p`) and give to the user (`chown -R`),
and the private ones (`chmod 0700`) for keys.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.unit.test_compose import COMPOSE, DOCKERFILE, mounts

Compose = dict[str, Any]
#: volumes that hold private keys: their mount points must be 0700 in the image
KEY_VOLUMES = frozenset(
    {
        "signing-key",
        "registrar-key",
        "simulator-source-key",
        "gateway-source-key",
        "witness-key",
        "audit-salt",
        "console-source-key",
        "console-accounts",
    }
)


def image_dirs(dockerfile: str) -> tuple[set[str], set[str], set[str], str]:
    """(created, owned by the user, mode 0700, the user) in the final stage."""
    text = re.sub(r"\\\n", " ", dockerfile)
    final = text[text.rindex("\nFROM ") :]
    created: set[str] = set()
    owned: set[str] = set()
    private: set[str] = set()
    user = ""
    for line in final.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword == "USER":
            user = rest.strip()
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            argv = shlex.split(command)
            if argv[:2] == ["mkdir", "-p"]:
                created |= set(argv[2:])
            elif argv[:2] == ["chown", "-R"]:
                owned |= set(argv[3:])
            elif argv[:2] == ["chmod", "0700"]:
                private |= set(argv[2:])
    return created, owned, private, user


def _owned(target: str, created: set[str], owned: set[str]) -> bool:
    path = PurePosixPath(target)
    return target in created and any(
        path == PurePosixPath(o) or PurePosixPath(o) in path.parents for o in owned
    )


def volume_problems(data: Compose, dockerfile: str) -> list[str]:
    created, owned, private, user = image_dirs(dockerfile)
    problems: list[str] = []
    if user.split(":")[0] in ("", "root", "0"):
        problems.append("the image runs as root")

    def rooted(svc: dict[str, Any]) -> bool:
        return str(svc.get("user", "")).split(":")[0] in ("0", "root")

    # a volume only root one-shots write (certs' tls-trust) is root's by design: the
    # others only read it. Any other volume's first mount decides its owner: every
    # mount point the unprivileged image has must be the user's.
    user_written = {
        source
        for svc in data["services"].values()
        if not rooted(svc)
        for source, _t, read_only in mounts(svc)
        if not read_only and "/" not in source
    }
    for name, svc in data["services"].items():
        if "build" not in svc or rooted(svc):
            continue  # not the project image, or a one-shot that runs as root on purpose
        for source, target, _read_only in mounts(svc):
            if "/" in source or source not in user_written:
                continue  # a file of the repository, or a volume root writes
            if not _owned(str(target), created, owned):
                problems.append(
                    f"{name}: volume {source} at {target}: the image has no directory there "
                    f"owned by {user or '?'} (a fresh volume would be root's)"
                )
            elif source in KEY_VOLUMES and str(target) not in private:
                problems.append(f"{name}: key volume {source} at {target} is not 0700 in the image")
    return problems


@pytest.fixture
def compose() -> Compose:
    import yaml

    data: Compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_every_app_volume_is_owned_by_the_image_user(compose: Compose) -> None:
    assert volume_problems(compose, DOCKERFILE.read_text(encoding="utf-8")) == []


def test_keygen_writes_every_key_volume(compose: Compose) -> None:
    """The volumes of this check are the ones the issue named, really mounted."""
    keygen = {str(t): s for s, t, ro in mounts(compose["services"]["keygen"]) if not ro}
    assert {"/registrar", "/sources/simulator", "/sources/gateway"} <= set(keygen)


# --- attacks ------------------------------------------------------------------------


def test_a_volume_where_the_image_has_no_directory_is_caught(compose: Compose) -> None:
    data = copy.deepcopy(compose)
    data["services"]["keygen"]["volumes"].append("signing-key:/elsewhere")
    problems = volume_problems(data, DOCKERFILE.read_text(encoding="utf-8"))
    assert any("keygen: volume signing-key at /elsewhere" in p for p in problems), problems


def test_the_image_before_this_change_is_caught(compose: Compose) -> None:
    """The Dockerfile as it was: /registrar and /sources/... not created."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    before = re.sub(r" /registrar| /sources/\w+| /source\b", "", text)
    problems = volume_problems(compose, before)
    for target in ("/registrar", "/sources/simulator", "/sources/gateway"):
        assert any(f"at {target}:" in p for p in problems), (target, problems)


def test_a_key_directory_others_may_read_is_caught(compose: Compose) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    loose = text.replace("chmod 0700 ", "chmod 0755 ")
    problems = volume_problems(compose, loose)
    assert any("is not 0700 in the image" in p for p in problems), problems


def test_an_image_running_as_root_is_caught(compose: Compose) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("USER careledger", "USER root")
    assert "the image runs as root" in volume_problems(compose, text)


def test_the_audit_salt_is_the_auditors_and_the_verifier_reads_it(compose: Compose) -> None:
    """The verifier recomputes the patient references the auditor wrote (ADR 0016) and
    the console re-identifies a pseudonym for a privacy officer (ADR 0035): both need the
    same salt, read-only; nothing else sees it (ADR 0026)."""
    from careledger.config import Settings
    from tests.unit.test_compose import settings_of

    holders = {
        name: (target, read_only)
        for name, svc in compose["services"].items()
        for source, target, read_only in mounts(svc)
        if source == "audit-salt"
    }
    assert {n: ro for n, (_t, ro) in holders.items()} == {
        "auditor": False,
        "verifier": True,
        "console": True,
    }
    # Settings.keys_dir is <run_dir>/keys; the image sets the run directory
    run_dir = re.search(r"CARELEDGER_RUN_DIR=(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert run_dir
    for name, (target, _ro) in holders.items():
        env_dir = settings_of(compose["services"][name]).run_dir
        assert env_dir == Settings().run_dir, f"{name}: the image's run directory, not its own"
        assert PurePosixPath(run_dir[1]) / "keys" == target
    assert compose["services"]["auditor"]["command"] == ["audit", "--follow"]
