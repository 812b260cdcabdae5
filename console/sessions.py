"""Server-side sessions of the console (ADR 0035): a random id in a cookie
(``Secure; HttpOnly; SameSite=Strict``), a CSRF token per session that every form
posts back, an idle and an absolute timeout. Nothing about the user is in the cookie.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["COOKIE", "Session", "SessionStore"]

COOKIE: Final = "careledger_console"
IDLE_S: Final = 15 * 60.0
ABSOLUTE_S: Final = 8 * 3600.0


@dataclass(slots=True)
class Session:
    id: str
    user: str
    role: str
    csrf: str
    created: float
    last_seen: float
    #: patient ids this session re-identified, by pseudonym (privacy officers only)
    #: pseudonym -> (patient id, system) re-identified in this session (ledgered)
    reidentified: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: what the last action said, shown once on the next page (never from the URL)
    flash: str = ""

    def take_flash(self) -> str:
        said, self.flash = self.flash, ""
        return said

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf, token)


class SessionStore:
    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str, role: str) -> Session:
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._expire(now)
            self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id (its idle clock restarted), or None."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                return None
            if now - s.last_seen > self.idle_s or now - s.created > self.absolute_s:
                del self._sessions[session_id]
                return None
            s.last_seen = now
            return s

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _expire(self, now: float) -> None:
        for sid in [
            sid
            for sid, s in self._sessions.items()
            if now - s.last_seen > self.idle_s or now - s.created > self.absolute_s
        ]:
            del self._sessions[sid]
