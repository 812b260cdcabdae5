"""Who an actor is, from the ledgered workforce directory (committed records only): the
console shows names and departments beside actor ids, and filters alerts by department.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from careledger.storage.store import ChainStore
from verifiers.auditor.state import ReferenceState
from verifiers.reports.report_reader import _Reader

__all__ = ["StaffEntry", "staff_directory"]


@dataclass(frozen=True, slots=True)
class StaffEntry:
    user_id: str
    name: str
    department: str
    roles: tuple[str, ...]


def staff_directory(store: ChainStore, actor_ids: Sequence[str], at: str) -> dict[str, StaffEntry]:
    """The directory entries of ``actor_ids`` in force at ``at`` (unknown ids left out).
    Raises ``StorageError`` if the store cannot be read."""
    ids = sorted(set(actor_ids))
    if not ids:
        return {}
    view = ReferenceState(_Reader(store).staff_records(ids)).as_of(at)
    found = {}
    for user_id in ids:
        staff = view.staff(user_id)
        if staff is not None:
            found[user_id] = StaffEntry(
                user_id, f"{staff.given_name} {staff.family_name}", staff.department, staff.roles
            )
    return found
