"""The processor's cache of lookups and actor pseudonyms (``processors.sealing.
SubjectKeys``), asked for a batch at once, with a real SoftHSM2 token: the same answers
as one at a time, the token asked once per subject not yet cached, never for one that
is."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from careledger.keystore import DataKey, KeyStore, KeyStoreError, local_token
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


class _Reads:
    """The key store's data key reads, with the thread each ran on; ``fail_on`` makes the
    reads on that thread fail."""

    def __init__(self, keystore: KeyStore) -> None:
        self.keystore = keystore
        self.threads: list[str] = []
        self.fail_on: str | None = None

    def data_keys_for(self, lookups: list[bytes], purpose: str) -> dict[bytes, DataKey]:
        name = threading.current_thread().name
        self.threads.append(name)
        if self.fail_on is not None and name.startswith(self.fail_on):
            raise KeyStoreError("injected: the token is unreachable")
        return self.keystore.data_keys_for(lookups, purpose)


def _wait(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "the background read did not happen"
        time.sleep(0.01)


def test_keys_in_use_are_read_again_in_the_background_and_never_served_past_their_time(
    keystore: KeyStore,
) -> None:
    now = [0.0]
    reads = _Reads(keystore)
    keys = SubjectKeys(reads, clock=lambda: now[0], ttl_s=30.0)  # type: ignore[arg-type]
    lookups = [keystore.lookup(SYSTEM, f"p{i}") for i in range(3)]
    try:
        first = keys.data_keys(lookups)  # read here, at 0
        assert reads.threads == [threading.current_thread().name]
        now[0] = 10.0
        assert keys.data_keys(lookups) == first and len(reads.threads) == 1
        now[0] = 25.0  # in the last quarter: served, and read again on the keys thread
        assert keys.data_keys(lookups) == first
        _wait(lambda: keys.refreshed == 3)
        assert reads.threads[1].startswith("careledger-keys")
        now[0] = 40.0  # past the first read's time, within the second's: no read here
        assert keys.data_keys(lookups) == first and len(reads.threads) == 2

        # an erasure: the destroyed key is served no longer than its read allows
        keystore.destroy(lookups[0])
        now[0] = 48.0  # due again: the background read finds no key, and makes one
        assert keys.data_keys(lookups) == first
        _wait(lambda: keys.refreshed == 6)
        now[0] = 50.0
        after = keys.data_keys(lookups)
        assert after[lookups[0]] != first[lookups[0]]
        assert after[lookups[1]] == first[lookups[1]]
        assert reads.threads[2:] == [reads.threads[1]]  # none in the caller's thread
    finally:
        keys.close()


def test_a_background_read_that_fails_leaves_the_keys_to_expire_and_be_read_by_the_caller(
    keystore: KeyStore,
) -> None:
    now = [0.0]
    reads = _Reads(keystore)
    keys = SubjectKeys(reads, clock=lambda: now[0], ttl_s=30.0)  # type: ignore[arg-type]
    lookups = [keystore.lookup(SYSTEM, "q")]
    try:
        first = keys.data_keys(lookups)
        reads.fail_on = "careledger-keys"
        now[0] = 28.0
        assert keys.data_keys(lookups) == first
        _wait(lambda: keys.refresh_failures == 1)
        now[0] = 31.0  # expired: read by the caller, as without the background reads
        assert keys.data_keys(lookups) == first
        assert reads.threads[-1] == threading.current_thread().name
    finally:
        keys.close()
    # closed (the processor stopping): keys are served until they expire, never read
    # again in the background
    reads.fail_on = None
    now[0] = 55.0
    assert keys.data_keys(lookups) == first
    now[0] = 62.0
    assert keys.data_keys(lookups) == first
    assert reads.threads[-1] == threading.current_thread().name
