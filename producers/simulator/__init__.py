"""A realistic, seeded, reproducible hospital access-event simulator.

``HospitalModel`` is a small fictional hospital ("Northbridge General"): a workforce
(ids, names, roles, departments, campuses, shift patterns and working days),
patients (MRNs, a responsible department, an encounter, a care team drawn from
the workforce, sensitivity labels on some records), workstations with plausible
addresses, and the source systems that emit audit records (EHR, PACS imaging,
LIS lab, pharmacy, single sign-on).

``simulate(model, count, seed, start)`` yields ``count`` access events in
``occurred_at`` order, deterministic from its inputs (no wall clock, no global random
state, so ``(model seed, seed, start)`` gives the same bytes every time).

``HospitalModel.reference_records(start)`` is the reference data behind the traffic
(workforce directory, patient demographics, care relationships, FHIR consents) and
``simulate_audit_scenario`` (``producers.simulator.scenarios``, also importable from
``producers.simulator.scenarios``) adds labelled inappropriate accesses of every audit rule type
with their ground truth (``careledger simulate --with-reference --ground-truth FILE``).

The modules, each importing only the ones above it:

* ``vocabulary``: code systems and codings, the hospital's fixed tables (departments,
  shifts, roles, names, source systems), the model's value types, time helpers;
* ``plan``: facts about the model's people shared by the reference data and the
  injections (addresses, employees who are patients, relatives, consent choices);
* ``reference``: the reference records (``build_reference_records``, ``Departure``);
* ``model``: ``HospitalModel``;
* ``events``: the traffic (``simulate``) and its event templates;
* ``injector``: one injection of labelled inappropriate accesses per audit rule type;
* ``scenarios``: ``simulate_audit_scenario``, ``Scenario``, ``GroundTruth``;
* ``cli``: ``careledger simulate`` (``configure_simulate`` / ``command_simulate``),
  ``run_simulation`` and ``produce_reference`` (Kafka, imported only when sending).

Authentication events (login/logout) concern no patient, but the wire format
requires one: they carry ``NO_PATIENT`` (id ``"-"``, the RFC 5424 nil value, with
system ``urn:careledger:no-patient``). Consumers that reason about patients must
skip that id.
"""

from __future__ import annotations

from .cli import command_simulate, configure_simulate, produce_reference, run_simulation
from .events import simulate
from .model import HospitalModel
from .vocabulary import DCM, DEFAULT_START, NO_PATIENT, _uuid4, format_timestamp, parse_start

__all__ = [
    "DCM",
    "DEFAULT_START",
    "NO_PATIENT",
    "HospitalModel",
    "_uuid4",
    "command_simulate",
    "configure_simulate",
    "format_timestamp",
    "parse_start",
    "produce_reference",
    "run_simulation",
    "simulate",
]
