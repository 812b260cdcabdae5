"""The processor's cache of lookups and actor pseudonyms (``processors.sealing.
SubjectKeys``), asked for a batch at once, with a real SoftHSM2 token: the same answers
as one at a time, the token asked once per subject not yet cached, never for one that
is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from careledger.keystore import KeyStore, local_token
from processors.sealing import SubjectKeys
from tests.softhsm import softhsm_dir

SYSTEM = "urn:oid:1.2.3"


@pytest.fixture
def keystore() -> Iterator[KeyStore]:
    store = KeyStore(local_token(softhsm_dir(), f"k{uuid.uuid4().hex[:12]}"), create=True)
    yield store
    store.close()


class _Counting:
    """The key store's lookup and pseudonym calls, counted."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self.calls: list[str] = []

    def lookup(self, system: str, subject_id: str) -> bytes:
        self.calls.append(f"lookup {system} {subject_id}")
        return self.keystore.lookup(system, subject_id)

    def actor_ref(self, actor_id: str) -> str:
        self.calls.append(f"actor {actor_id}")
        return self.keystore.actor_ref(actor_id)


def test_a_batch_gets_each_subjects_answer_asking_the_token_once_per_new_subject(
    keystore: KeyStore,
) -> None:
    counting = _Counting(keystore)
    keys = SubjectKeys(counting)  # type: ignore[arg-type]
    first = keys.lookup(SYSTEM, "p1")
    assert keys.actor_ref("dr-a") == keystore.actor_ref("dr-a")
    counting.calls.clear()

    subjects = [(SYSTEM, "p1"), (SYSTEM, "p2"), (SYSTEM, "p1"), ("urn:other", "p1")]
    got = keys.lookups(subjects)
    assert got == [keystore.lookup(s, i) for s, i in subjects]
    assert got[0] == first and got[0] != got[3]  # the system is part of the subject
    refs = keys.actor_refs(["dr-a", "dr-b", "dr-b"])
    assert refs == [keystore.actor_ref(a) for a in ("dr-a", "dr-b", "dr-b")]
    # asked for: only what was not cached, once each (dr-b is cached by its first
    # answer, and its second in the batch is read from the cache)
    assert counting.calls == [f"lookup {SYSTEM} p2", "lookup urn:other p1", "actor dr-b"]

    counting.calls.clear()
    assert keys.lookups(subjects) == got and keys.actor_refs(["dr-b", "dr-a"]) == refs[1::-1]
    assert counting.calls == []  # everything was cached
    assert keys.lookups([]) == [] and keys.actor_refs([]) == []
