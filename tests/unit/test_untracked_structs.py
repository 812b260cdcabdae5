"""The structs the garbage collector does not track (``gc=False``, ADR 0038) can never be
part of a reference cycle: every field holds only strings, numbers, bytes, tuples and
other untracked structs, never a list, dict or set (a cycle through one would never be
collected). And the events a processor keeps in flight are indeed untracked."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator

import msgspec
import msgspec.inspect as mi
from nacl.public import PrivateKey

from careledger.ingest_keys import IngestSealer
from careledger_core import event, sealed_event
from careledger_core.event import canonical_event_bytes, decode_event
from careledger_core.sealed_event import decode_sealed_documents
from producers.simulator import HospitalModel, simulate

EVENTS = list(simulate(HospitalModel(staff=20, patients=40, seed=3), 200, seed=3))


def _untracked() -> Iterator[type[msgspec.Struct]]:
    for module in (event, sealed_event):
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, msgspec.Struct) and not cls.__struct_config__.gc:
                yield cls


def _only_immutable(t: mi.Type, path: str) -> list[str]:
    """Where ``t`` could hold a mutable container (empty: nowhere)."""
    if isinstance(t, mi.Metadata):
        return _only_immutable(t.type, path)
    if isinstance(t, mi.StrType | mi.IntType | mi.BoolType | mi.NoneType | mi.LiteralType):
        return []
    if isinstance(t, mi.BytesType | mi.RawType | mi.FloatType):
        return []
    if isinstance(t, mi.UnionType):
        return [p for i, u in enumerate(t.types) for p in _only_immutable(u, f"{path}|{i}")]
    if isinstance(t, mi.VarTupleType):
        return _only_immutable(t.item_type, f"{path}[]")
    if isinstance(t, mi.TupleType):
        return [p for i, u in enumerate(t.item_types) for p in _only_immutable(u, f"{path}[{i}]")]
    if isinstance(t, mi.StructType):
        if t.cls.__struct_config__.gc or not t.cls.__struct_config__.frozen:
            return [f"{path}: {t.cls.__name__} is tracked or not frozen"]
        return [p for f in t.fields for p in _only_immutable(f.type, f"{path}.{f.name}")]
    return [f"{path}: {type(t).__name__}"]


def test_every_untracked_struct_holds_only_immutable_values() -> None:
    found = list(_untracked())
    names = {c.__name__ for c in found}
    assert {"AccessEvent", "Actor", "SealedAccessEvent", "_Sensitive"} <= names, names
    for cls in found:
        assert cls.__struct_config__.frozen, cls
        assert _only_immutable(mi.type_info(cls), cls.__name__) == []


def test_a_struct_with_a_list_would_be_caught() -> None:
    class Leaky(msgspec.Struct, frozen=True, gc=False):
        items: list[str]

    assert _only_immutable(mi.type_info(Leaky), "Leaky") == ["Leaky.items: ListType"]


def test_the_events_and_documents_a_processor_holds_are_not_tracked() -> None:
    decoded = [decode_event(canonical_event_bytes(e)) for e in EVENTS]
    sealer = IngestSealer(bytes(PrivateKey(bytes(range(32))).public_key))
    documents = decode_sealed_documents([sealer.seal(e)[0] for e in EVENTS])
    assert documents is not None
    for value in [*decoded, *documents]:
        assert not gc.is_tracked(value)
    assert all(not gc.is_tracked(e.actor) and not gc.is_tracked(e.source) for e in decoded)
