"""The SQLite event history and the file snapshot store."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.alerts.history import EventHistory
from stream_agent.alerts.snapshots import FileSnapshotStore, snapshot_key
from stream_agent.alerts.state import EventRecord


def ev(i: int, *, camera: str = "door", rule: str = "person", ended: bool = True) -> EventRecord:
    return EventRecord(
        id=f"e{i:03d}",
        rule=rule,
        camera=camera,
        start_time=1000.0 + 10 * i,
        end_time=1005.0 + 10 * i if ended else None,
        score=0.8,
        peak_score=0.9,
        description=f"event {i}",
        moments=((1000.0 + 10 * i, 1002.0 + 10 * i),),
    )


def test_record_update_list_filter_and_survive_restart(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite"
    h = EventHistory(db)
    for i in range(6):
        h.record(ev(i, camera="door" if i % 2 else "yard", ended=False), "start")
    h.record(ev(3), "end")
    h.close()
    h = EventHistory(db)
    everything = h.list_events()
    assert [e.record.id for e in everything] == [f"e{i:03d}" for i in range(6)]  # oldest first
    assert h.get("e003") is not None and h.get("e003").type == "end"  # type: ignore[union-attr]
    assert h.get("e003").record.end_time == 1035.0  # type: ignore[union-attr]
    assert [e.record.id for e in h.list_events(camera="door")] == ["e001", "e003", "e005"]
    assert [e.record.id for e in h.list_events(since=1030.0)] == ["e003", "e004", "e005"]
    assert [e.record.id for e in h.list_events(limit=2)] == ["e004", "e005"]  # the newest two
    assert h.list_events(rule="other") == []
    assert [e.record.id for e in h.open_events()] == ["e000", "e001", "e002", "e004", "e005"]
    assert h.get("e001").record.moments == ((1010.0, 1012.0),)  # type: ignore[union-attr]


def test_prune_by_age_and_budget_deletes_snapshots(tmp_path: Path) -> None:
    snaps = FileSnapshotStore(tmp_path / "frames")
    h = EventHistory(tmp_path / "events.sqlite", snaps)
    for i in range(10):
        key = snapshot_key(f"e{i:03d}")
        snaps.put(key, b"\xff\xd8" + bytes(1000))
        record = ev(i, ended=i != 9)
        h.record(_with(record, key), "end")
    r = h.prune(1005.0 + 10 * 2 + 1.0, retention_s=0.0, max_bytes=None)
    assert r.by_age == 3  # e000..e002 ended before now
    assert snaps.get(snapshot_key("e000")) is None and snaps.get(snapshot_key("e003")) is not None
    per_event = h.total_bytes() // h.count()
    r = h.prune(0.0, retention_s=None, max_bytes=per_event * 3)
    assert h.total_bytes() <= per_event * 3
    left = [e.record.id for e in h.list_events()]
    assert left[-1] == "e009"  # the open event is never pruned
    assert left == sorted(left) and len(left) == 3


def _with(record: EventRecord, key: str) -> EventRecord:
    from dataclasses import replace

    return replace(record, snapshot=key)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=30), st.integers(1000, 50_000))
def test_budget_holds_after_prune_when_every_event_ended(sizes: list[int], budget: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        h = EventHistory(Path(d) / "e.sqlite")
        for i, n in enumerate(sizes):
            from dataclasses import replace

            h.record(replace(ev(i), description="x" * n), "end")
        h.prune(0.0, retention_s=None, max_bytes=budget)
        assert h.total_bytes() <= budget
        kept = [e.record.id for e in h.list_events(limit=1000)]
        assert kept == [f"e{i:03d}" for i in range(len(sizes))][len(sizes) - len(kept) :]
        h.close()


def test_file_snapshot_store(tmp_path: Path) -> None:
    s = FileSnapshotStore(tmp_path / "f")
    s.put("event-a.jpg", b"jpeg")
    assert FileSnapshotStore(tmp_path / "f").get("event-a.jpg") == b"jpeg"
    s.delete("event-a.jpg")
    s.delete("event-a.jpg")
    assert s.get("event-a.jpg") is None
    import pytest

    with pytest.raises(ValueError):
        s.put("../evil", b"")


def test_event_query_parsing() -> None:
    import pytest

    from stream_agent.alerts.history import EventQuery, InvalidQuery

    q = EventQuery.parse({"camera": "door", "since": "2026-01-01T00:00:00Z", "limit": "5"})
    assert (q.camera, q.rule, q.since, q.limit) == ("door", None, 1767225600.0, 5)
    assert EventQuery.parse({"since": "1000.5"}).since == 1000.5
    assert EventQuery.parse({}).limit == 100
    for bad, word in [
        ({"cam": "x"}, "unknown parameter"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "offset"),
        ({"rule": ""}, "empty"),
    ]:
        with pytest.raises(InvalidQuery, match=word):
            EventQuery.parse(bad)


def test_query_runs_the_listing(tmp_path: Path) -> None:
    from stream_agent.alerts.history import EventQuery

    h = EventHistory(tmp_path / "e.sqlite")
    for i in range(4):
        h.record(ev(i, camera="door" if i < 2 else "yard"), "end")
    got = h.query(EventQuery.parse({"camera": "yard", "limit": "1"}))
    assert [e.record.id for e in got] == ["e003"]
    assert got[0].to_json()["type"] == "end" and got[0].to_json()["id"] == "e003"
