"""Syslog framing over a byte stream (RFC 6587), detected per frame.

* Octet counting (RFC 6587 3.4.1, the only framing RFC 5425 allows over TLS):
  ``MSG-LEN SP SYSLOG-MSG`` with ``MSG-LEN`` a decimal byte count.
* Non-transparent framing (RFC 6587 3.4.2): the message ends at LF (a CR before it is
  dropped). A message that itself contains LF (pretty-printed XML) cannot be framed
  this way; such senders must use octet counting.

Each frame is detected on its own: a frame starting with a digit is octet-counted, any
other frame runs to the next LF, so one connection may mix both. CR, LF, NUL and
spaces between frames are skipped (some senders end octet-counted frames with LF).

A frame longer than the bound is never buffered whole: an octet-counted one is skipped
by its declared length, a non-transparent one up to its LF, and a
:class:`FrameError` (``FRAME_TOO_LARGE``) carrying its first bytes is reported, so the
stream stays in sync. At the end of the stream, a partial octet-counted frame is
``FRAME_TRUNCATED``; an unterminated non-transparent frame is taken as a frame (the
sender closed the connection instead of sending LF).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_KEEP",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Framing",
    "datagram",
    "octet_counted",
]

Framing = Literal["octet-counting", "non-transparent", "datagram"]

#: How many leading bytes of an oversized or truncated frame are kept for the dead letter.
DEFAULT_KEEP: Final = 64 * 1024
#: MSG-LEN has at most this many digits (enough for any bound we accept).
_MAX_LEN_DIGITS: Final = 10
_SEPARATORS: Final = b"\r\n\x00 "
_DIGITS: Final = b"0123456789"


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete syslog message as framed on the wire (framing bytes removed)."""

    data: bytes
    framing: Framing


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that could not be taken whole: too large, or cut off by the end of stream.

    ``prefix`` holds its first bytes (at most ``keep``), ``size`` its (declared or seen)
    length in bytes.
    """

    code: Literal["FRAME_TOO_LARGE", "FRAME_TRUNCATED"]
    reason: str
    prefix: bytes
    size: int
    framing: Framing


def datagram(data: bytes) -> Frame:
    """One UDP datagram as a frame: RFC 5426 carries exactly one syslog message per
    datagram, so the frame is the datagram *exactly as received* — a trailing LF that
    some senders add included — and the raw record's SHA-256 is the hash of the bytes
    that arrived. The MSG parser takes the white space after the XML as it is."""
    return Frame(bytes(data), "datagram")


def octet_counted(message: bytes) -> bytes:
    """``message`` framed by octet counting (what a sender writes)."""
    return str(len(message)).encode("ascii") + b" " + message


class FrameDecoder:
    """Incremental frame decoder: ``feed`` bytes as they arrive, get complete frames."""

    def __init__(self, max_bytes: int, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.keep = keep
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._scan = 0  # where the LF search of a non-transparent frame continues
        # an oversized frame being skipped
        self._skip = 0  # octet counting: bytes still to skip
        self._skip_line = False  # non-transparent: skipping up to the next LF
        self._skip_prefix = bytearray()
        self._skip_size = 0
        self._skip_framing: Framing = "octet-counting"

    @property
    def buffered(self) -> int:
        """Bytes received and not yet framed."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        self._buf += data
        out: list[Frame | FrameError] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        self._compact()
        return out

    def close(self) -> list[Frame | FrameError]:
        """The stream ended: whatever is left, as a frame or an error."""
        out: list[Frame | FrameError] = []
        if self._skip or self._skip_line:
            out.append(self._oversize_error())
            self._skip, self._skip_line = 0, False
        self._skip_separators()
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = self._scan = 0
        if not rest:
            return out
        length = _octet_length(rest)
        if length:
            out.append(
                FrameError(
                    "FRAME_TRUNCATED",
                    f"the stream ended inside an octet-counted frame of {length} bytes",
                    rest[: self.keep],
                    length,
                    "octet-counting",
                )
            )
        elif len(rest) > self.max_bytes:
            out.append(self._too_large(rest[: self.keep], len(rest), "non-transparent"))
        else:
            out.append(Frame(rest.removesuffix(b"\r"), "non-transparent"))
        return out

    # ----------------------------------------------------------------- internals
    def _next(self) -> Frame | FrameError | None:
        buf = self._buf
        if self._skip:
            take = min(self._skip, len(buf) - self._pos)
            self._keep_prefix(buf[self._pos : self._pos + take])
            self._pos += take
            self._skip -= take
            if self._skip:
                return None
            return self._finish_skip()
        if self._skip_line:
            lf = buf.find(b"\n", self._pos)
            end = len(buf) if lf < 0 else lf
            self._keep_prefix(buf[self._pos : end])
            self._skip_size += end - self._pos
            self._pos = end
            if lf < 0:
                return None
            self._pos = lf + 1
            return self._finish_skip()
        self._skip_separators()
        if self._pos >= len(buf):
            return None
        start = self._pos
        length = _octet_length(buf, start)
        if length is None:
            return None  # only digits so far: wait for the rest of MSG-LEN
        if length:
            header = buf.index(b" ", start) + 1
            if length > self.max_bytes:
                self._pos = header
                self._skip = length
                self._skip_size = length
                self._skip_framing = "octet-counting"
                self._skip_prefix = bytearray()
                return self._next()
            if len(buf) - header < length:
                return None
            self._pos = header + length
            return Frame(bytes(buf[header : self._pos]), "octet-counting")
        # non-transparent: up to LF
        lf = buf.find(b"\n", max(start, self._scan))
        if lf < 0:
            if len(buf) - start > self.max_bytes:
                self._skip_line = True
                self._skip_framing = "non-transparent"
                self._skip_prefix = bytearray()
                self._skip_size = 0
                return self._next()
            self._scan = len(buf)
            return None
        self._scan = 0
        frame = bytes(buf[start:lf]).removesuffix(b"\r")
        self._pos = lf + 1
        if len(frame) > self.max_bytes:
            return self._too_large(frame[: self.keep], len(frame), "non-transparent")
        return Frame(frame, "non-transparent")

    def _skip_separators(self) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in _SEPARATORS:
            pos += 1
        if pos != self._pos:
            self._pos = pos
            self._scan = 0

    def _keep_prefix(self, chunk: bytes | bytearray) -> None:
        room = self.keep - len(self._skip_prefix)
        if room > 0:
            self._skip_prefix += chunk[:room]

    def _finish_skip(self) -> FrameError:
        error = self._oversize_error()
        self._skip_prefix = bytearray()
        self._skip_line = False
        self._scan = 0
        return error

    def _oversize_error(self) -> FrameError:
        return self._too_large(bytes(self._skip_prefix), self._skip_size, self._skip_framing)

    def _too_large(self, prefix: bytes, size: int, framing: Framing) -> FrameError:
        return FrameError(
            "FRAME_TOO_LARGE",
            f"syslog frame of {size} bytes exceeds the limit of {self.max_bytes} bytes",
            prefix,
            size,
            framing,
        )

    def _compact(self) -> None:
        if self._pos and (self._pos > 65536 or self._pos == len(self._buf)):
            del self._buf[: self._pos]
            if self._scan:
                self._scan = max(0, self._scan - self._pos)
            self._pos = 0


def _octet_length(buf: bytes | bytearray, start: int = 0) -> int | None:
    """MSG-LEN at ``start``: its value; ``None`` if more bytes are needed to tell;
    0 if this is not an octet-counted frame."""
    if start >= len(buf) or buf[start] not in b"123456789":
        return 0
    i = start
    end = min(len(buf), start + _MAX_LEN_DIGITS + 1)
    while i < end and buf[i] in _DIGITS:
        i += 1
    if i == len(buf):
        return None if i - start <= _MAX_LEN_DIGITS else 0
    if buf[i] != 0x20 or i - start > _MAX_LEN_DIGITS:
        return 0
    return int(buf[start:i])
