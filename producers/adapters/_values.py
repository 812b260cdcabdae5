"""Value normalisation shared by the FHIR and the DICOM/RFC 3881 adapters.

Everything here is pure and total: given any input it returns a value or ``None`` and
reports departures from the standards to an :class:`Issues` collector; it never raises.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal, TypeVar

from careledger_core.event import (
    MAX_DESCRIPTION_LENGTH,
    MAX_ID_LENGTH,
    MAX_LIST_LENGTH,
    MAX_QUERY_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_URI_LENGTH,
    Coding,
    Confidentiality,
    normalise_identifier,
)

from ._model import Conformance

# ----------------------------------------------------------------------------- systems
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
IHE_TRANSACTIONS: Final = "urn:ihe:event-type-code"
#: Stands in for the code system of a coding that names none (CODE_WITHOUT_SYSTEM).
UNSPECIFIED_SYSTEM: Final = "urn:careledger:code-system:unspecified"
#: Same placeholder as the simulator's ``NO_PATIENT``: the RFC 5424 nil value.
NO_PATIENT_ID: Final = "-"
NO_PATIENT_SYSTEM: Final = "urn:careledger:no-patient"
#: Actor id / source system when the record names none.
NOBODY: Final = "-"

#: DICOM RoleIDCodes (PS3.16 CID 402) of the two sides of a transfer of data: who
#: received it (Destination Role ID, Destination Media) and who released it (Source
#: Role ID, Source Media), most telling first.
RECIPIENT_ROLES: Final = ("110152", "110154")
DISCLOSER_ROLES: Final = ("110153", "110155")

_P = TypeVar("_P")


def choose_client(
    candidates: Sequence[_P],
    roles: Callable[[_P], Iterable[str]],
    is_requestor: Callable[[_P], bool | None],
    action: str,
    transfer: bool,
) -> _P | None:
    """The participant the access came from when the actor names no address of its own,
    by the same rule for FHIR agents and DICOM / RFC 3881 participants: those flagged as
    requestor first (by the flag, never by their place in the list), then the others;
    within each, by DICOM RoleIDCode: for a transfer (export, import, disclosure) the
    releasing side (110153 / 110155, then 110150 Application), never the recipient
    (kept in ``recipient``); for a read 110152 Destination (the machine the data went to,
    BALP), else 110153; else 110153, 110152. A pool with no telling role gives its first.
    ``candidates``: the participants with a network address, the actor left out."""
    pool_all = list(candidates)
    if transfer:
        pool_all = [p for p in pool_all if not set(roles(p)) & set(RECIPIENT_ROLES)]
    if transfer:
        order: tuple[str, ...] = (*DISCLOSER_ROLES, "110150")
    elif action == "R":
        order = ("110152", "110153", "110150")
    else:
        order = ("110153", "110152", "110150")
    for pool in ([p for p in pool_all if is_requestor(p) is True], pool_all):
        for code in order:
            chosen = next((p for p in pool if code in set(roles(p))), None)
            if chosen is not None:
                return chosen
        if pool:
            return pool[0]
    return None


_SYSTEM_ALIASES: Final = {
    # DICOM: old FHIR URIs, the OID and the RFC 3881 / DICOM codeSystemName
    "http://nema.org/dicom/dicm": DCM,
    "http://dicom.nema.org/resources/ontology/dcm": DCM,
    "urn:oid:1.2.840.10008.2.16.4": DCM,
    "1.2.840.10008.2.16.4": DCM,
    "dcm": DCM,
    "dicom": DCM,
    "http://hl7.org/fhir/audit-event-type": AUDIT_EVENT_TYPE,
    "http://hl7.org/fhir/v3/actreason": ACT_REASON,
    "urn:oid:2.16.840.1.113883.5.8": ACT_REASON,
    "http://hl7.org/fhir/v3/confidentiality": CONFIDENTIALITY,
    "urn:oid:2.16.840.1.113883.5.25": CONFIDENTIALITY,
    "ihe transactions": IHE_TRANSACTIONS,
    "ihe transaction": IHE_TRANSACTIONS,
    "urn:oid:1.3.6.1.4.1.19376.1.2": IHE_TRANSACTIONS,
    "rfc-3881": "urn:ietf:rfc:3881",
    "rfc3881": "urn:ietf:rfc:3881",
}
_OID_RE: Final = re.compile(r"\A[0-2](?:\.(?:0|[1-9][0-9]*))+\Z")


def normalise_system(system: str) -> str:
    """Canonical URI for the code systems we reason about (DICOM DCM, audit-event-type,
    v3-ActReason, v3-Confidentiality, IHE transactions); a bare OID becomes ``urn:oid:``;
    anything else is kept as given."""
    key = system.strip()
    alias = _SYSTEM_ALIASES.get(key.lower())
    if alias is not None:
        return alias
    if _OID_RE.match(key):
        return "urn:oid:" + key
    return key


class Issues:
    """Collects :class:`Conformance` issues in order, once per (code, path)."""

    __slots__ = ("_items", "_seen")

    def __init__(self) -> None:
        self._items: list[Conformance] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, code: str, message: str, path: str) -> None:
        if (code, path) in self._seen:
            return
        self._seen.add((code, path))
        self._items.append(Conformance(code=code, message=message, path=path))

    def extend(self, items: Iterable[Conformance]) -> None:
        for item in items:
            self.add(item.code, item.message, item.path)

    def freeze(self) -> tuple[Conformance, ...]:
        return tuple(self._items)


# ----------------------------------------------------------------------------- strings
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def clean_text(value: str, issues: Issues, path: str) -> str:
    """``value`` with lone surrogates replaced (JSON can smuggle them in)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        issues.add("INVALID_UNICODE", "lone surrogate replaced by U+FFFD", path)
        value = _SURROGATE.sub("\ufffd", value)
    return value


def clip(value: str | None, limit: int, issues: Issues, path: str) -> str | None:
    """Trim white space; empty -> None; longer than ``limit`` -> shortened (flagged)."""
    if value is None:
        return None
    value = clean_text(value, issues, path).strip()
    if not value:
        return None
    if len(value) > limit:
        issues.add("VALUE_TRUNCATED", f"{len(value)} characters shortened to {limit}", path)
        value = value[:limit].rstrip() or value[:limit]
    return value


def clip_code(value: str | None, issues: Issues, path: str) -> str | None:
    return clip(value, MAX_ID_LENGTH, issues, path)


def clip_id(value: str | None, issues: Issues, path: str) -> str | None:
    """An identifier (actor, patient, object, party, session, correlation id) clipped and
    in its one spelling (ADR 0026): full-width forms mapped, NFC (IDENTIFIER_NORMALISED
    when that changed it). One holding invisible or control characters is kept as it is:
    the event refuses it and the record is dead-lettered (INVALID_IDENTIFIER)."""
    value = clip(value, MAX_ID_LENGTH, issues, path)
    if value is None or value.isascii():
        return value
    try:
        spelled = normalise_identifier(value)
    except ValueError:
        return value
    if spelled != value:
        issues.add(
            "IDENTIFIER_NORMALISED",
            "identifier written in full-width forms or not in NFC: normalised",
            path,
        )
    while len(spelled) > MAX_ID_LENGTH:  # NFC can lengthen (e.g. U+0958): cut again
        issues.add("VALUE_TRUNCATED", f"shortened to {MAX_ID_LENGTH} characters", path)
        spelled = unicodedata.normalize("NFC", spelled[:MAX_ID_LENGTH]).rstrip()
    return spelled


def clip_text(value: str | None, issues: Issues, path: str) -> str | None:
    return clip(value, MAX_TEXT_LENGTH, issues, path)


def clip_uri(value: str | None, issues: Issues, path: str) -> str | None:
    return clip(value, MAX_URI_LENGTH, issues, path)


def clip_description(value: str | None, issues: Issues, path: str) -> str | None:
    return clip(value, MAX_DESCRIPTION_LENGTH, issues, path)


def unique_codes(codes: Iterable[str], issues: Issues, path: str) -> tuple[str, ...]:
    """Distinct codes in order, each clipped, at most MAX_LIST_LENGTH."""
    out: list[str] = []
    for code in codes:
        c = clip_code(code, issues, path)
        if c is not None and c not in out:
            out.append(c)
    if len(out) > MAX_LIST_LENGTH:
        issues.add("LIST_TRUNCATED", f"{len(out)} codes shortened to {MAX_LIST_LENGTH}", path)
        out = out[:MAX_LIST_LENGTH]
    return tuple(out)


def make_coding(
    system: str | None,
    code: str | None,
    display: str | None,
    issues: Issues,
    path: str,
) -> Coding | None:
    """A :class:`Coding`, or ``None`` without a code. A missing system becomes
    :data:`UNSPECIFIED_SYSTEM` (CODE_WITHOUT_SYSTEM). The result and the issues of a
    (system, code, display) are remembered: the same codes recur in every record."""
    found = _make_coding_cached(system, code, display)
    for issue_code, message in found[1]:
        issues.add(issue_code, message, path)
    return found[0]


@functools.lru_cache(maxsize=4096)
def _make_coding_cached(
    system: str | None, code: str | None, display: str | None
) -> tuple[Coding | None, tuple[tuple[str, str], ...]]:
    collected = Issues()
    coding = _make_coding(system, code, display, collected, "")
    return coding, tuple((i.code, i.message) for i in collected.freeze())


def _make_coding(
    system: str | None,
    code: str | None,
    display: str | None,
    issues: Issues,
    path: str,
) -> Coding | None:
    c = clip_code(code, issues, path)
    if c is None:
        return None
    s = clip_uri(system, issues, path)
    if s is None:
        issues.add("CODE_WITHOUT_SYSTEM", f"code {c!r} has no code system", path)
        s = UNSPECIFIED_SYSTEM
    else:
        s = normalise_system(s)
    return Coding(system=s, code=c, display=clip_text(display, issues, path))


# ----------------------------------------------------------------------------- time
_TIME_RE: Final = re.compile(
    r"""\A\s*
    (?P<year>[0-9]{4})
    (?:-(?P<month>[0-9]{2})
      (?:-(?P<day>[0-9]{2})
        (?:[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})
          (?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?)?
          (?P<zone>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?
        )?
      )?
    )?\s*\Z""",
    re.VERBOSE,
)
_MAX_FRACTION_DIGITS: Final = 64


def format_timestamp(value: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` of an aware datetime (converted to UTC)."""
    utc = value.astimezone(dt.UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_time(value: str, issues: Issues, path: str) -> str | None:
    """An event timestamp from an ISO 8601 / FHIR dateTime / xs:dateTime string (see
    :func:`_parse_time`; the result and the issues of a value are remembered, as the
    same times recur in a stream)."""
    found = _parse_time_cached(value)
    for code, message in found[1]:
        issues.add(code, message, path)
    return found[0]


@functools.lru_cache(maxsize=4096)
def _parse_time_cached(value: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    collected = Issues()
    result = _parse_time(value, collected, "")
    return result, tuple((i.code, i.message) for i in collected.freeze())


def _parse_time(value: str, issues: Issues, path: str) -> str | None:
    """An event timestamp from an ISO 8601 / FHIR dateTime / xs:dateTime string.

    Offsets are converted to UTC; fractions are kept to the microsecond (further digits
    are cut, not rounded). A date or partial date gives 00:00:00 UTC of its first day
    (DATE_ONLY_TIME); a time without offset is taken as UTC (TIME_WITHOUT_ZONE). Returns
    ``None`` (TIME_INVALID) when nothing usable is there.
    """
    text = value.strip() if isinstance(value, str) else ""
    m = _TIME_RE.match(text)
    if m is None or len(m.group("fraction") or "") > _MAX_FRACTION_DIGITS:
        issues.add("TIME_INVALID", f"not a date/time: {value[:64]!r}", path)
        return None
    g = m.groupdict()
    if g["hour"] is None:
        issues.add("DATE_ONLY_TIME", f"{text!r} has no time of day: taken as 00:00 UTC", path)
    try:
        second = int(g["second"] or 0)
        micro = int((g["fraction"] or "")[:6].ljust(6, "0"))
        if second == 60:  # a leap second: keep it inside the minute, in order
            issues.add("LEAP_SECOND", f"{text!r}: second 60 taken as 59.999999", path)
            second, micro = 59, 999_999
        zone = g["zone"]
        if zone is None:
            if g["hour"] is not None:
                issues.add("TIME_WITHOUT_ZONE", f"{text!r} has no UTC offset: taken as UTC", path)
            tz: dt.tzinfo = dt.UTC
        elif zone in ("Z", "z"):
            tz = dt.UTC
        else:
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        local = dt.datetime(
            int(g["year"]),
            int(g["month"] or 1),
            int(g["day"] or 1),
            int(g["hour"] or 0),
            int(g["minute"] or 0),
            second,
            micro,
            tzinfo=tz,
        )
        utc = local.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        issues.add("TIME_INVALID", f"no such date/time: {text[:64]!r}", path)
        return None
    if utc.year < 1:  # pragma: no cover - astimezone raises OverflowError first
        issues.add("TIME_INVALID", f"out of range: {text[:64]!r}", path)
        return None
    return format_timestamp(utc)


# ----------------------------------------------------------------------------- ids
_UUID_ANY_CASE: Final = re.compile(
    r"\A(?:urn:uuid:)?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\Z"
)
_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET: Final = (0x4000 << 64) | (0x8000 << 48)
ID_DERIVATION_CONTEXT: Final = b"careledger.ingest-event-id/1"


def as_uuid(value: object) -> str | None:
    """The lowercase UUID ``value`` spells (optionally as ``urn:uuid:``), else ``None``."""
    if not isinstance(value, str):
        return None
    m = _UUID_ANY_CASE.match(value.strip())
    return m.group(1).lower() if m else None


def uuid4_from_bits(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))``: the same bit-setting as the simulator's
    ``producers.simulator._uuid4``."""
    h = "%032x" % ((bits & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_event_id(raw_sha256: str, patient_index: int, entry_index: int | None = None) -> str:
    """Deterministic event id: a version-4-shaped UUID from the first 16 bytes of
    SHA-256(``careledger.ingest-event-id/1`` NUL raw-sha256-hex NUL [entry NUL] patient),
    so the same bytes always give the same ids (the idempotency key)."""
    parts = [ID_DERIVATION_CONTEXT, raw_sha256.encode("ascii")]
    if entry_index is not None:
        parts.append(str(entry_index).encode("ascii"))
    parts.append(str(patient_index).encode("ascii"))
    digest = hashlib.sha256(b"\x00".join(parts)).digest()
    return uuid4_from_bits(int.from_bytes(digest[:16], "big"))


# ----------------------------------------------------------------------------- codes
ACTIONS: Final = frozenset("CRUDE")
_ACTION_WORDS: Final = {
    "create": "C",
    "read": "R",
    "view": "R",
    "print": "R",
    "update": "U",
    "delete": "D",
    "execute": "E",
}
#: FHIR restful-interaction code -> action (access-events.md).
INTERACTION_ACTIONS: Final = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search": "E",
    "search-type": "E",
    "search-system": "E",
    "transaction": "E",
    "batch": "E",
    "operation": "E",
    "capabilities": "E",
}


def normalise_action(
    value: str | None, subtypes: Iterable[Coding], issues: Issues, path: str
) -> Literal["C", "R", "U", "D", "E"]:
    """C/R/U/D/E; a word (read, update, ...) is mapped; a missing action is derived from
    a REST interaction subtype; otherwise E (execute)."""
    text = (value or "").strip()
    if text in ACTIONS:
        return _as_action(text)
    if text:
        mapped = text.upper() if text.upper() in ACTIONS else _ACTION_WORDS.get(text.lower())
        if mapped is None:
            mapped = INTERACTION_ACTIONS.get(text.lower(), "E")
        issues.add("ACTION_UNKNOWN", f"action {text[:32]!r} taken as {mapped}", path)
        return _as_action(mapped)
    for coding in subtypes:
        if coding.system == RESTFUL_INTERACTION and coding.code in INTERACTION_ACTIONS:
            derived = INTERACTION_ACTIONS[coding.code]
            issues.add(
                "ACTION_MISSING", f"no action: {derived} from interaction {coding.code}", path
            )
            return _as_action(derived)
    issues.add("ACTION_MISSING", "no action: taken as E", path)
    return "E"


def _as_action(code: str) -> Literal["C", "R", "U", "D", "E"]:
    if code == "C":
        return "C"
    if code == "R":
        return "R"
    if code == "U":
        return "U"
    if code == "D":
        return "D"
    return "E"


_OUTCOME_WORDS: Final[dict[str, Literal[0, 4, 8, 12]]] = {
    "success": 0,
    "successful": 0,
    "succeeded": 0,
    "ok": 0,
    "permit": 0,
    "minor": 4,
    "minor-failure": 4,
    "minor failure": 4,
    "failure": 8,
    "fail": 8,
    "failed": 8,
    "serious": 8,
    "serious-failure": 8,
    "serious failure": 8,
    "deny": 8,
    "denied": 8,
    "major": 12,
    "major-failure": 12,
    "major failure": 12,
    "error": 12,
}
_OUTCOME_CODES: Final[dict[str, Literal[0, 4, 8, 12]]] = {"0": 0, "4": 4, "8": 8, "12": 12}


def normalise_outcome(
    value: str | None, issues: Issues, path: str
) -> tuple[Literal[0, 4, 8, 12], str | None]:
    """(outcome, text to keep): 0/4/8/12 as given; words like ``success`` normalised
    (OUTCOME_TEXT); missing or unknown -> 0 (the access is assumed to have happened),
    an unknown value is returned for ``outcome_desc``."""
    text = (value or "").strip()
    if not text:
        issues.add("OUTCOME_MISSING", "no outcome: taken as 0", path)
        return 0, None
    if text in _OUTCOME_CODES:
        return _OUTCOME_CODES[text], None
    word = _OUTCOME_WORDS.get(text.lower())
    if word is not None:
        issues.add("OUTCOME_TEXT", f"outcome {text!r} normalised to {word}", path)
        return word, None
    issues.add("OUTCOME_UNKNOWN", f"outcome {text[:32]!r} not recognised: taken as 0", path)
    return 0, f"outcome: {text}"


_SOURCE_TYPES: Final = {str(n) for n in range(1, 10)}


def normalise_source_type(values: Iterable[str], issues: Issues, path: str) -> int:
    """The first security-source-type code 1..9; otherwise 9 (other)."""
    seen: list[str] = []
    for value in values:
        v = value.strip()
        if v in _SOURCE_TYPES:
            return int(v)
        seen.append(v)
    what = f"source type {seen[0][:32]!r}" if seen else "no source type"
    issues.add("SOURCE_TYPE_UNKNOWN", f"{what}: taken as 9 (other)", path)
    return 9


#: v3-Confidentiality, least to most restrictive.
CONFIDENTIALITY_ORDER: Final = ("U", "L", "M", "N", "R", "V")


_CONFIDENTIALITY_CODES: Final[dict[str, Confidentiality]] = {
    "U": "U",
    "L": "L",
    "M": "M",
    "N": "N",
    "R": "R",
    "V": "V",
}


def as_confidentiality(code: str) -> Confidentiality:
    """The v3-Confidentiality code ``code`` (upper case); anything else is R."""
    return _CONFIDENTIALITY_CODES.get(code.strip().upper(), "R")


def most_restrictive(codes: Iterable[str]) -> str | None:
    best: str | None = None
    for code in codes:
        if code in CONFIDENTIALITY_ORDER and (
            best is None or CONFIDENTIALITY_ORDER.index(code) > CONFIDENTIALITY_ORDER.index(best)
        ):
            best = code
    return best


def is_act_reason(system: str | None) -> bool:
    return system is None or normalise_system(system) == ACT_REASON


# ----------------------------------------------------------------------------- network
AddressType = Literal["ip", "hostname", "uri"]


def is_ip(value: str) -> bool:
    host = value.strip().strip("[]")
    if "%" in host:  # IPv6 zone id (fe80::1%11)
        host = host.split("%", 1)[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def classify_address(address: str, declared: str | None, issues: Issues, path: str) -> AddressType:
    """Address type of a network access point. ``declared`` is the FHIR R4 / DICOM
    network type code (1 machine name, 2 IP, 3 telephone, 4 e-mail, 5 URI) or
    ``uri``/``string`` for the R5 choice types. The address itself decides when they
    disagree (NETWORK_TYPE_MISMATCH)."""
    looks_ip = is_ip(address)
    looks_uri = ":" in address and not looks_ip
    d = (declared or "").strip()
    if d in ("1", "2", "string"):
        actual: AddressType = "ip" if looks_ip else ("uri" if looks_uri else "hostname")
        if d in ("1", "2"):
            expected = "hostname" if d == "1" else "ip"
            if actual != expected:
                issues.add(
                    "NETWORK_TYPE_MISMATCH",
                    f"type {d} ({expected}) but {address[:64]!r} looks like: {actual}",
                    path,
                )
        return actual
    if d in ("3", "4", "5", "uri"):
        return "uri"
    if d:
        issues.add("NETWORK_TYPE_MISMATCH", f"unknown network type {d[:16]!r}", path)
    if looks_ip:
        return "ip"
    return "uri" if looks_uri else "hostname"


# ----------------------------------------------------------------------------- patients
_XML_ENTITY: Final = re.compile(r"&(amp|lt|gt|quot|apos);")
_XML_ENTITIES: Final = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def unescape_once(value: str) -> tuple[str, bool]:
    """(value, changed): XML entity references left in an attribute value after the XML
    parser's own unescaping (a sender that escaped twice: ``&amp;amp;`` arrives as
    ``&amp;``) replaced exactly once, in one pass, never repeatedly (``&amp;amp;`` left
    by a triple escape stays ``&amp;``)."""
    if "&" not in value:
        return value, False
    out = _XML_ENTITY.sub(lambda m: _XML_ENTITIES[m.group(1)], value)
    return out, out != value


def parse_cx(value: str) -> tuple[str, str | None]:
    """(id, system) of an HL7 v2 CX identifier ``ID^^^namespace&universal-id&type^...``.

    The system is ``urn:oid:`` + the universal id when its type is ISO (or it looks like
    an OID), the universal id or namespace otherwise. A value without ``^`` is an id.
    """
    if "^" not in value:
        return value.strip(), None
    parts = value.split("^")
    ident = parts[0].strip()
    authority = parts[3] if len(parts) > 3 else ""
    pieces = authority.split("&")
    namespace = pieces[0].strip() if pieces else ""
    universal = pieces[1].strip() if len(pieces) > 1 else ""
    kind = pieces[2].strip().upper() if len(pieces) > 2 else ""
    system: str | None = None
    if universal:
        if kind == "ISO" or _OID_RE.match(universal):
            system = universal if universal.startswith("urn:") else "urn:oid:" + universal
        else:
            system = universal
    elif namespace:
        system = namespace
    return ident, system


# ----------------------------------------------------------------------------- query
_B64_STRICT: Final = re.compile(
    r"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"
)


def normalise_query(value: str | None, issues: Issues, path: str) -> str | None:
    """Standard padded base64 for the event's ``query``. Line breaks and missing padding
    are repaired silently; text that is not base64 at all is encoded (QUERY_NOT_BASE64);
    a query that would exceed the model's bound is dropped (VALUE_TRUNCATED)."""
    if value is None:
        return None
    compact = "".join(value.split())
    if not compact:
        return None
    candidate = compact.replace("-", "+").replace("_", "/")
    candidate += "=" * (-len(candidate) % 4)
    result: str | None = None
    if _B64_STRICT.match(candidate):
        try:
            base64.b64decode(candidate, validate=True)
            result = candidate
        except (binascii.Error, ValueError):
            result = None
    if result is None:
        issues.add("QUERY_NOT_BASE64", "query text was not base64: encoded it", path)
        result = base64.b64encode(clean_text(value, issues, path).encode("utf-8")).decode("ascii")
    if len(result) > MAX_QUERY_LENGTH:
        issues.add(
            "VALUE_TRUNCATED",
            f"query of {len(result)} base64 characters exceeds {MAX_QUERY_LENGTH}: dropped",
            path,
        )
        return None
    return result


#: Detail types (FHIR entity.detail, DICOM ParticipantObjectDetail) that carry a
#: correlation id: HTTP X-Request-Id, HL7 v2 message control id (MSH-10).
CORRELATION_DETAILS: Final = frozenset({"x-request-id", "xrequestid", "requestid", "msh-10"})


def b64_text(value: str) -> str:
    """Detail values are base64: their UTF-8 text when printable, else as given."""
    try:
        decoded = base64.b64decode("".join(value.split()), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return value
    return decoded if decoded.strip() and decoded.isprintable() else value
