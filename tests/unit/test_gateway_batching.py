"""Per-record outcomes stay exact when the gateway works in batches (issue 10, ADR 0025).

The syslog listeners parse every complete frame of one read in one worker-thread hop
and publish them together; a Bundle is parsed in one hop. These tests send good records
mixed with hostile ones in ONE write (or one Bundle) to a real Gateway on loopback, with
a recording publisher in place of Kafka, and check that exactly the good ones are
relayed, each bad one is dead-lettered with its bytes and reason, and nothing is lost
or duplicated; and that a connection sending huge frames does not hold up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx

from producers.gateway.framing import octet_counted
from producers.gateway.publisher import DeadLetter
from producers.gateway.server import Gateway
from tests.unit.test_gateway_abuse import Recorder, atna_frame, audit_event, run

MAX = 64 * 1024


def _header(letter: DeadLetter, name: str) -> str:
    value = dict(letter.headers)[name]
    assert isinstance(value, bytes)
    return value.decode()


def test_one_read_of_good_and_hostile_frames_relays_exactly_the_good_ones(
    tmp_path: Path,
) -> None:
    good = [atna_frame(f"MRN-B{i}") for i in range(40)]
    no_pri = b"this is not syslog at all"
    not_xml = b"<85>1 2026-11-29T09:20:00Z h app 1 IHE+RFC-3881 - <AuditMessage><unclosed"
    oversize = b"<85>1 2026-11-29T09:20:00Z h app 1 IHE+RFC-3881 - " + b"x" * (MAX + 10)
    stream = b"".join(
        [
            *(octet_counted(f) for f in good[:15]),
            octet_counted(no_pri),
            *(octet_counted(f) for f in good[15:30]),
            octet_counted(oversize),
            octet_counted(not_xml),
            *(octet_counted(f) for f in good[30:]),
        ]
    )

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
        writer.write(stream)  # one write: the frames arrive in one or a few reads
        await writer.drain()
        writer.write_eof()
        await reader.read()  # the gateway closes once it has handled everything
        writer.close()

    recorder_box: list[Recorder] = []

    async def wrapped(gateway: Gateway, recorder: Recorder) -> None:
        recorder_box.append(recorder)
        await scenario(gateway, recorder)

    run(tmp_path, wrapped, gateway_max_record_bytes=MAX)
    recorder = recorder_box[0]
    raws = recorder.raws()
    # exactly the good frames, each once, in the order sent
    assert [r["sha256"] for r in raws] == [hashlib.sha256(f).hexdigest() for f in good]
    assert len({r["record_id"] for r in raws}) == len(good)
    events = [e for j in recorder.jobs for e in j.events]
    assert sorted(e.patient.id for e in events) == sorted(f"MRN-B{i}" for i in range(40))
    letters = [d for j in recorder.jobs for d in j.dead_letters]
    codes = [_header(d, "careledger-error-code") for d in letters]
    assert codes == ["SYSLOG_NO_PRI", "FRAME_TOO_LARGE", "NOT_XML"]
    assert letters[0].value == no_pri
    assert letters[1].value == oversize[: len(letters[1].value)] and len(letters[1].value) > 0
    assert _header(letters[1], "careledger-original-size") == str(len(oversize))
    assert letters[2].value == not_xml
    for d in letters:
        assert _header(d, "careledger-error")  # a reason, not just a code
    # every frame is accounted for exactly once: relayed or dead-lettered
    assert len(raws) + len(letters) == len(good) + 3


def test_an_unauthenticated_peer_gets_nothing_recorded_while_a_source_gets_everything(
    tmp_path: Path,
) -> None:
    from tests.unit.test_gateway_abuse import registry

    good = [atna_frame(f"MRN-U{i}") for i in range(30)]
    hostile = b"".join(octet_counted(atna_frame(f"MRN-X{i}")) for i in range(30))

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        port = gateway.ports["syslog-tcp"]
        # the open source "pacs" is registered at another address: 127.0.0.1 is nobody
        bad_r, bad_w = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):  # refused at connect: reset
            bad_w.write(hostile)
            await bad_w.drain()
            assert await bad_r.read() == b""
        bad_w.close()
        assert recorder.jobs == []  # nothing recorded, not even a dead letter

    run(tmp_path, scenario, reg=registry(open_pacs="10.9.9.9/32"))

    recorder_box: list[Recorder] = []

    async def good_scenario(gateway: Gateway, recorder: Recorder) -> None:
        recorder_box.append(recorder)
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
        writer.write(b"".join(octet_counted(f) for f in good))
        await writer.drain()
        writer.write_eof()
        await reader.read()
        writer.close()

    run(tmp_path, good_scenario)
    raws = recorder_box[0].raws()
    assert [r["sha256"] for r in raws] == [hashlib.sha256(f).hexdigest() for f in good]


def test_a_bundle_with_one_bad_entry_relays_exactly_the_others(tmp_path: Path) -> None:
    entries: list[dict[str, Any]] = [
        {"resource": audit_event(f"PAT-BB{i}"), "request": {"method": "POST", "url": "AuditEvent"}}
        for i in range(20)
    ]
    entries.insert(7, {"resource": {"resourceType": "Patient", "id": "p"}})
    body = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}).encode()
    box: list[Recorder] = []

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        box.append(recorder)
        headers = signed_headers_for("/", body)
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"http://127.0.0.1:{gateway.ports['http']}/", content=body, headers=headers
            )
        assert answer.status_code == 200
        statuses = [e["response"]["status"] for e in answer.json()["entry"]]
        assert statuses[7].startswith("422")
        assert all(s.startswith("201") for i, s in enumerate(statuses) if i != 7)

    run(tmp_path, scenario)
    recorder = box[0]
    assert len(recorder.raws()) == 1  # the Bundle is one raw record
    events = [e for j in recorder.jobs for e in j.events]
    assert sorted(e.patient.id for e in events) == sorted(f"PAT-BB{i}" for i in range(20))
    letters = [d for j in recorder.jobs for d in j.dead_letters]
    assert len(letters) == 1
    assert _header(letters[0], "careledger-bundle-entry") == "7"
    assert json.loads(letters[0].value) == entries[7]
    assert _header(letters[0], "careledger-error")


def signed_headers_for(path: str, body: bytes) -> dict[str, str]:
    from producers.gateway.auth import signed_headers
    from tests.unit.test_gateway_abuse import KEY

    headers = signed_headers("ehr", KEY, "POST", path, body)
    headers["Content-Type"] = "application/fhir+json"
    return headers


def _huge_frame(i: int, size: int) -> bytes:
    """A frame of about ``size`` bytes that is expensive to parse: an AuditMessage with
    thousands of participant objects (each a patient)."""
    head = (
        '<AuditMessage><EventIdentification EventActionCode="R" '
        'EventDateTime="2026-11-29T09:20:00Z" EventOutcomeIndicator="0">'
        '<EventID csd-code="110110" codeSystemName="DCM"/></EventIdentification>'
        '<ActiveParticipant UserID="u1" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="pacs"/>'
    )
    item = '<ParticipantObjectDetail type="x" value="y"/>'
    body = head + f'<ParticipantObjectIdentification ParticipantObjectID="HUGE-{i}" '
    body += 'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
    body += item * ((size - len(body) - 200) // len(item))
    body += "</ParticipantObjectIdentification></AuditMessage>"
    return b"<85>1 2026-11-29T09:20:00Z h app 1 IHE+RFC-3881 - " + body.encode()


def test_huge_frames_on_one_connection_do_not_hold_up_another(tmp_path: Path) -> None:
    size = 1024 * 1024
    huge = [_huge_frame(i, size - 1024) for i in range(12)]

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        port = gateway.ports["syslog-tcp"]
        big_r, big_w = await asyncio.open_connection("127.0.0.1", port)

        async def flood() -> None:
            for frame in huge:
                big_w.write(octet_counted(frame))
                await big_w.drain()
            big_w.write_eof()
            await big_r.read()

        flooding = asyncio.create_task(flood())
        # wait until the huge frames are being handled
        while not any(r["sha256"] == hashlib.sha256(huge[0]).hexdigest() for r in recorder.raws()):
            await asyncio.sleep(0.01)
        small = atna_frame("MRN-SMALL")
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(octet_counted(small))
        await writer.drain()
        sha = hashlib.sha256(small).hexdigest()
        while not any(r["sha256"] == sha for r in recorder.raws()):
            await asyncio.sleep(0.005)
        huge_done = sum(
            1 for r in recorder.raws() if r["sha256"] != sha
        )  # huge frames recorded when the small one was
        writer.close()
        await flooding
        big_w.close()
        assert huge_done < len(huge)  # the small frame did not wait for the flood
        assert len(recorder.raws()) == len(huge) + 1

    run(tmp_path, scenario, gateway_max_record_bytes=size, gateway_body_timeout_s=30.0)


def test_nothing_is_relayed_twice_when_kafka_fails_part_of_a_read(tmp_path: Path) -> None:
    """Kafka refuses the first records of a read: they are offered again (retries), the
    rest are not offered twice; every frame ends up recorded exactly once."""
    good = [atna_frame(f"MRN-R{i}") for i in range(10)]
    box: list[Recorder] = []

    async def scenario(gateway: Gateway, recorder: Recorder) -> None:
        box.append(recorder)
        recorder.fail_next = 3
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["syslog-tcp"])
        writer.write(b"".join(octet_counted(f) for f in good))
        await writer.drain()
        writer.write_eof()
        await reader.read()
        writer.close()

    run(tmp_path, scenario)
    shas = [r["sha256"] for r in box[0].raws()]
    assert sorted(shas) == sorted(hashlib.sha256(f).hexdigest() for f in good)
    assert len(set(shas)) == len(shas)


def test_record_ids_from_many_parsing_threads_are_distinct_uuid4s() -> None:
    """Record ids come from a random pool per thread (no lock for the parsing threads to
    queue on): ids taken concurrently by several threads never repeat."""
    import threading
    import uuid

    from producers.gateway.ingest import random_uuid

    got: list[list[str]] = [[] for _ in range(8)]

    def take(out: list[str]) -> None:
        for _ in range(3000):
            out.append(random_uuid())

    threads = [threading.Thread(target=take, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in got for i in out]
    assert len(set(ids)) == len(ids) == 8 * 3000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_the_atna_mapper_reads_attributes_and_children_as_a_scan_would() -> None:
    """The mapper groups each element's attributes and children once; what it finds is
    what a scan in document order finds: local names, any case, the first match."""
    from xml.etree.ElementTree import Element, fromstring

    from producers.adapters._values import Issues
    from producers.adapters.dicom import _Mapper

    root = fromstring(
        '<AuditMessage xmlns:x="urn:x"><ActiveParticipant userid="first" UserID="second" '
        'x:UserName="ns"/><x:activeparticipant UserID="third"/><!-- c -->'
        "<ACTIVEPARTICIPANT/></AuditMessage>"
    )

    def scan_children(element: Element, name: str) -> list[Element]:
        return [c for c in element if str(c.tag).rsplit("}", 1)[-1].lower() == name.lower()]

    def scan_attr(element: Element, name: str) -> str | None:
        for key, value in element.attrib.items():
            if key.rsplit("}", 1)[-1].lower() == name.lower():
                return value
        return None

    mapper = _Mapper(root, "2026-12-03T10:00:00.000000Z", Issues())
    found = mapper._children(root, "ActiveParticipant")
    assert found == scan_children(root, "ActiveParticipant") and len(found) == 3
    assert mapper._first(root, "nothing") is None
    for element in found:
        for name in ("UserID", "userid", "UserName", "AlternativeUserID"):
            assert mapper._raw_attr(element, name) == scan_attr(element, name)
    assert mapper._raw_attr(found[0], "UserID") == "first"
    assert mapper._raw_attr(found[0], "username") == "ns"
