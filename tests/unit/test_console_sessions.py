"""The console's sessions: idle and absolute timeouts, sign-out, CSRF tokens."""

from __future__ import annotations

from console.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_session_expires_and_activity_keeps_it_alive() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, absolute_s=3600, clock=clock)
    s = store.create("dana", "analyst")
    clock.now += 50
    assert store.get(s.id) is s  # restarts the idle clock
    clock.now += 50
    assert store.get(s.id) is s
    clock.now += 61
    assert store.get(s.id) is None
    assert store.get(s.id) is None  # gone, not revived


def test_a_busy_session_still_ends_at_the_absolute_timeout() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, absolute_s=300, clock=clock)
    s = store.create("dana", "analyst")
    for _ in range(5):
        clock.now += 50
        assert store.get(s.id) is s  # 250 s, active all along
    clock.now += 51
    assert store.get(s.id) is None  # 301 s


def test_sign_out_ends_the_session_and_ids_and_tokens_are_unguessable() -> None:
    store = SessionStore()
    a, b = store.create("dana", "analyst"), store.create("dana", "analyst")
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 40 and len(a.csrf) >= 40
    store.drop(a.id)
    assert store.get(a.id) is None and store.get(b.id) is b
    assert store.get(None) is None and store.get("") is None


def test_csrf_needs_the_session_s_own_token() -> None:
    s = SessionStore().create("dana", "analyst")
    assert s.csrf_ok(s.csrf)
    assert not s.csrf_ok(None) and not s.csrf_ok("") and not s.csrf_ok(s.csrf + "x")
