"""The event types of store/events.py against what a real guarded run writes and reads back, so the
types cannot drift from the log: every event the gateway appends has its kind's keys (the required
ones, and no key the kind does not declare) with values of the declared types, and every row read
back is a `StoredEvent` whose filled-in columns are its kind's."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import anyio
import pytest

from bastion.policy.errors import Denied
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.store import events as ev
from bastion.store.audit_store import AuditStore
from tests.test_holds import DEV, WRITE, approve_soon, write_config

pytestmark = pytest.mark.anyio
ENVELOPE = ev.Envelope.__optional_keys__


def mismatches(value: object, hint: Any, where: str) -> list[str]:
    """Where ``value`` is not of the type ``hint`` (the annotation forms events.py uses)."""
    origin = get_origin(hint)
    if hint is Any or hint is object:
        return []
    if hint is type(None):
        return [] if value is None else [f"{where}: {value!r} is not None"]
    if origin in (Union, types.UnionType):
        found = [mismatches(value, option, where) for option in get_args(hint)]
        return [] if any(not f for f in found) else [f"{where}: {value!r} is none of {hint}"]
    if origin is Literal:
        return [] if value in get_args(hint) else [f"{where}: {value!r} is not one of {get_args(hint)}"]
    if is_typeddict(hint):
        return shape_mismatches(value, hint, where) if isinstance(value, dict) else [f"{where}: {value!r} is no object"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [m for i, item in enumerate(value) for m in mismatches(item, get_args(hint)[0], f"{where}[{i}]")]
    if origin is dict:
        return [] if isinstance(value, dict) and all(isinstance(k, str) for k in value) else [f"{where}: {value!r} is no object"]
    if hint is float:
        return [] if isinstance(value, float) else [f"{where}: {value!r} is not a float"]
    if hint is int:  # bool is an int to isinstance, not to the log
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: {value!r} is not an int"]
    return [] if isinstance(value, hint) else [f"{where}: {value!r} is not a {hint.__name__}"]


def shape_mismatches(record: Mapping[str, object], shape: type, where: str) -> list[str]:
    """Keys ``shape`` requires that ``record`` lacks, keys it has that ``shape`` does not declare,
    and values not of their declared type."""
    hints = get_type_hints(shape)
    found = [f"{where}: lacks `{key}`" for key in sorted(shape.__required_keys__ - record.keys())]  # type: ignore[attr-defined]
    found += [f"{where}: `{key}` is not a key of {shape.__name__}" for key in sorted(record.keys() - hints.keys())]
    return found + [m for key in sorted(record.keys() & hints.keys()) for m in mismatches(record[key], hints[key], f"{where}.{key}")]


def filled(row: ev.StoredEvent, shape: type) -> dict[str, object]:
    """A row read back as its kind wrote it: the columns it filled in, and its required ones."""
    return {k: v for k, v in row.items() if v is not None or k in shape.__required_keys__}  # type: ignore[attr-defined]


def test_the_shapes_name_every_kind_once_and_the_stored_form_is_the_table() -> None:
    for kind, shape in ev.SHAPES.items():
        assert kind in get_args(get_type_hints(shape)["type"]), kind
        assert ENVELOPE <= shape.__optional_keys__, kind  # type: ignore[attr-defined]
        assert set(get_type_hints(shape)) - ENVELOPE <= set(ev.FIELDS), kind  # a shape names only real columns
    assert set(get_args(ev.AuditEvent)) == set(ev.SHAPES.values())
    assert set(get_args(ev.Terminal)) == {ev.SHAPES[kind] for kind in ev.TERMINAL}
    assert ev.StoredEvent.__required_keys__ == {*ev.FIELDS, "seq", "prev_hash", "hash"}
    # The checker itself tells a wrong event from a right one.
    good = ev.CallFailed(type=ev.FAILED, call_id="c1", error={"code": "x", "message": "y"}, duration_ms=1.5)
    assert shape_mismatches(good, ev.CallFailed, "e") == []
    assert shape_mismatches({**good, "duration_ms": 2, "rows": 3}, ev.CallFailed, "e") == [
        "e: `rows` is not a key of CallFailed", "e.duration_ms: 2 is not a float"]
    assert shape_mismatches({"type": ev.FAILED, "call_id": "c1", "error": {"code": "x"}}, ev.CallFailed, "e") == [
        "e: lacks `duration_ms`", "e.error: lacks `message`"]


async def test_a_guarded_run_writes_and_reads_back_events_of_their_declared_shapes(tmp_path: Path, demo_db: Path) -> None:
    gw = build_gateway(load(write_config(tmp_path, demo_db, wait="10s")))
    store: AuditStore = gw.store
    written: list[dict[str, object]] = []
    append_many, append_in = store.append_many, store.append_in

    def recording_many(events: Sequence[ev.AuditEvent]) -> list[ev.AuditEvent]:
        written.extend(dict(e) for e in events)
        return append_many(events)

    def recording_in(conn: Any, events: Sequence[ev.AuditEvent]) -> list[ev.AuditEvent]:
        written.extend(dict(e) for e in events)
        return append_in(conn, events)

    store.append_many = recording_many  # type: ignore[method-assign]
    store.append_in = recording_in  # type: ignore[method-assign]
    await gw.sql_query(DEV, "demo", "SELECT id, name FROM products LIMIT 3", "allowed")
    with pytest.raises(Denied):
        await gw.sql_query(DEV, "demo", "SELECT load_extension('x')", "denied")
    async with anyio.create_task_group() as tg:  # held, approved by a DBA while it waits, then run
        tg.start_soon(approve_soon, gw)
        await gw.sql_query(DEV, "demo", WRITE, "held and approved")
    await gw.list_connections(DEV)  # a call that runs nothing guarded: its finished event is shorter

    kinds = {e["type"] for e in written}
    assert kinds >= {ev.REQUESTED, ev.DENIED, ev.FINISHED, ev.HELD, ev.APPROVAL_PREVIEW, ev.APPROVAL_GRANTED,
                     ev.APPROVAL_CONSUMED}, kinds
    problems = [m for i, e in enumerate(written) for m in shape_mismatches(e, ev.SHAPES[str(e["type"])], f"written[{i}]")]
    assert not (written[0].keys() & ENVELOPE)  # the envelope is the store's to fill in
    rows = list(store.iter_all())
    assert len(rows) == len(written)
    for row in rows:
        assert row.keys() == ev.StoredEvent.__required_keys__
        problems += shape_mismatches(row, ev.StoredEvent, f"stored[{row['seq']}]")
        shape = ev.SHAPES[row["type"]]
        problems += shape_mismatches(filled(row, shape), shape, f"stored[{row['seq']}] as {row['type']}")
    assert problems == []
    # Read back, each kind's non-empty columns are exactly those it wrote (None stays out of both).
    for before, row in zip(written, rows):
        assert {k for k, v in before.items() if v is not None} == {k for k, v in row.items() if v is not None} - ENVELOPE
