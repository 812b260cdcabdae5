"""``careledger consent load``: FHIR Consents from files (back-filling) -> the ledger.

Each file (``.json`` / ``.xml``; a directory is searched recursively) is one received
record, exactly as the gateway would take it over HTTP from an authenticated sender:
its bytes are hashed and kept as a raw record (transport ``protocol = file``, the file
name, ``auth = operator``: whoever can write to Kafka), a Consent becomes a ``consent``
reference record of source ``--source``, a Bundle one per Consent entry, and anything
refused is dead-lettered with its bytes and reason. Nothing is reported as ledgered
before Kafka acknowledged it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from careledger.config import Settings
from producers.consents.ingest import ConsentIngest, ingest_bundle, ingest_consent
from producers.consents.intake import ConsentProblem, VersionClock, decode_document
from producers.gateway.auth import Identity
from producers.gateway.ingest import BundleIngest, Ingestor, received
from producers.gateway.publisher import Job, Publisher, PublishError

__all__ = ["FileOutcome", "KafkaUnavailable", "LoadSummary", "consent_files", "load_consents"]

SUFFIXES: Final = (".json", ".xml")


class KafkaUnavailable(Exception):
    """Kafka did not answer, or did not acknowledge: nothing more can be claimed."""


@dataclass
class FileOutcome:
    path: Path
    lines: list[str] = field(default_factory=list)
    rejected: int = 0
    ledgered: int = 0


@dataclass
class LoadSummary:
    files: list[FileOutcome] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def ledgered(self) -> int:
        return sum(f.ledgered for f in self.files)


def consent_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The files named, and the .json / .xml files under the directories named."""
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    if name.lower().endswith(SUFFIXES):
                        yield Path(root) / name
        else:
            yield path


def _job_for(
    path: Path,
    data: bytes,
    identity: Identity,
    ingestor: Ingestor,
    clock: VersionClock,
    topic: str,
) -> tuple[Job, FileOutcome]:
    rec = received(data, "file", {"file": path.name[:200], **identity.transport()})
    out = FileOutcome(path)
    syntax = "xml" if path.suffix.lower() == ".xml" else "json"
    try:
        is_bundle = decode_document(data, syntax).resource.get("resourceType") == "Bundle"
    except ConsentProblem:
        is_bundle = False  # ingest_consent reports it
    if is_bundle:
        bundle = ingest_bundle(
            ingestor, rec, identity, syntax=syntax, fhir_version=None, clock=clock, topic=topic
        )
        _bundle_lines(bundle, out)
        return bundle.job, out
    single = ingest_consent(
        rec, identity, url_id=None, syntax=syntax, fhir_version=None, clock=clock, topic=topic
    )
    _single_lines(single, out)
    return single.job, out


def _single_lines(single: ConsentIngest, out: FileOutcome) -> None:
    if single.error is not None:
        e = single.error
        out.rejected = 1
        out.lines.append(f"rejected: {e.code} at {e.path}: {e.message}")
        return
    assert single.record is not None
    r = single.record
    out.ledgered = 1
    out.lines.append(
        f"ledgered: consent {r.record_id} version {r.version} status {r.body.get('status')}"
        + (" (retracted)" if r.retracted else "")
    )


def _bundle_lines(bundle: BundleIngest, out: FileOutcome) -> None:
    if bundle.error is not None:
        out.rejected = 1
        out.lines.append(f"rejected: {bundle.error.code}: {bundle.error.message}")
        return
    refused = {e.index for e in bundle.refused_entries}
    if refused:
        out.lines.append("rejected: transaction refused as a whole, nothing ledgered")
    for index in sorted(bundle.consents):
        c = bundle.consents[index]
        if c.error is not None:
            out.rejected += 1
            out.lines.append(
                f"entry {index}: rejected: {c.error.code} at {c.error.path}: {c.error.message}"
            )
        elif c.record is not None and not refused:
            out.ledgered += 1
            out.lines.append(
                f"entry {index}: ledgered: consent {c.record.record_id} version "
                f"{c.record.version}" + (" (retracted)" if c.record.retracted else "")
            )
    if bundle.result is not None:
        for e in bundle.result.entries:
            if e.error is not None:
                out.rejected += 1
                out.lines.append(f"entry {e.index}: rejected: {e.error.code}: {e.error.message}")
            else:
                out.ledgered += 1
                out.lines.append(f"entry {e.index}: ledgered: {len(e.events)} access event(s)")
    if refused and not out.rejected:
        out.rejected = len(refused)


def load_consents(
    settings: Settings,
    paths: Sequence[Path],
    *,
    source_id: str,
    publisher: Publisher | None = None,
) -> LoadSummary:
    """Ledger the consents in ``paths``; KafkaUnavailable if Kafka cannot take them."""
    own = publisher is None
    pub = publisher or Publisher(settings)
    try:
        ok, detail = pub.kafka_status(timeout=5.0)
        if not ok:
            raise KafkaUnavailable(detail)
        return asyncio.run(_load(settings, paths, source_id, pub))
    finally:
        if own:
            pub.close(timeout=10.0)


async def _load(
    settings: Settings, paths: Sequence[Path], source_id: str, pub: Publisher
) -> LoadSummary:
    identity = Identity(source_id, "operator", f"user:{_user()}")
    ingestor = Ingestor(settings.gateway_max_record_bytes)
    clock = VersionClock(backfill=True)
    summary = LoadSummary()
    for path in consent_files(paths):
        try:
            size = path.stat().st_size
            data = path.read_bytes() if size <= ingestor.max_bytes else b""
        except OSError as exc:
            summary.files.append(
                FileOutcome(path, [f"rejected: cannot read: {exc.strerror}"], rejected=1)
            )
            continue
        if size > ingestor.max_bytes:
            # as the gateway's 413: not read, so not dead-lettered (the file is the copy)
            line = f"rejected: TOO_LARGE: {size} bytes exceed the bound of {ingestor.max_bytes}"
            summary.files.append(FileOutcome(path, [line], rejected=1))
            continue
        job, out = _job_for(path, data, identity, ingestor, clock, settings.topic_consents)
        try:
            await pub.publish(job)
        except PublishError as exc:
            raise KafkaUnavailable(f"{path.name}: not acknowledged by Kafka: {exc}") from None
        summary.files.append(out)
    return summary


def _user() -> str:
    try:
        return os.getlogin()
    except OSError:
        return str(os.getuid())
