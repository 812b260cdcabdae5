"""The first steps for every record: bound the size and hash the bytes exactly as received."""

from __future__ import annotations

from ._model import MIN_MAX_BYTES, IngestError, RawRecord

UTF8_BOM = b"\xef\xbb\xbf"


def intake(data: bytes, max_bytes: int) -> tuple[bytes, str]:
    """(bytes, sha256 hex) of ``data``; raises TOO_LARGE / EMPTY.

    The hash is taken before any decoding so it identifies the received frame exactly.
    ``max_bytes`` below :data:`MIN_MAX_BYTES` is a configuration error (ValueError).
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError("max_bytes must be an int")
    if max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES} (64 KiB)")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    sha256 = RawRecord.digest(raw)
    if len(raw) > max_bytes:
        raise IngestError(
            "TOO_LARGE",
            f"record of {len(raw)} bytes exceeds the bound of {max_bytes} bytes",
            sha256=sha256,
            size=len(raw),
            max_bytes=max_bytes,
        )
    if not raw.strip() or raw.strip() == UTF8_BOM:
        raise IngestError("EMPTY", "the record is empty", sha256=sha256, size=len(raw))
    return raw, sha256


def decode_utf8(raw: bytes, sha256: str) -> tuple[str, bool]:
    """(text, had a BOM). Raises NOT_UTF8 naming the offset of the first bad byte."""
    bom = raw.startswith(UTF8_BOM)
    body = raw[len(UTF8_BOM) :] if bom else raw
    try:
        return body.decode("utf-8"), bom
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(UTF8_BOM) if bom else 0)
        raise IngestError(
            "NOT_UTF8",
            f"not UTF-8: invalid byte at offset {offset}",
            sha256=sha256,
            size=len(raw),
            offset=offset,
        ) from None
