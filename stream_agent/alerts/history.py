"""The event history: every alert event in SQLite beside the memory's store.

One row per event id, updated through its lifecycle (start, updates, end): rule, camera, start
and end time, peak score, description, evidence moments (JSON), snapshot key (in the
:class:`~stream_agent.alerts.snapshots.SnapshotStore`). :meth:`EventHistory.list_events` filters by
camera, rule and start time and returns oldest first. :meth:`EventHistory.prune` keeps the
history within a retention horizon and a byte budget (each row's text plus its snapshot's size),
deleting the oldest ended events first, together with their snapshots. Survives restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stream_agent.alerts.errors import AlertsError, StoreError
from stream_agent.alerts.snapshots import SnapshotStore
from stream_agent.alerts.state import EventRecord
from stream_agent.protocol import parse_wall_time

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    camera TEXT NOT NULL,
    type TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL,
    score REAL NOT NULL,
    peak_score REAL NOT NULL,
    description TEXT,
    moments TEXT NOT NULL,
    snapshot TEXT,
    end_reason TEXT,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_start ON events (start_time);
CREATE INDEX IF NOT EXISTS events_camera ON events (camera, start_time);
CREATE INDEX IF NOT EXISTS events_rule ON events (rule, start_time);
"""
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
QUERY_KEYS = ("camera", "rule", "since", "limit")


class InvalidQuery(AlertsError):
    """An event query (``GET /events?...``, a WebSocket request) is malformed."""

    code = "bad_request"


@dataclass(frozen=True, slots=True)
class EventQuery:
    """The filters of an event listing (see :meth:`EventHistory.list_events`)."""

    camera: str | None = None
    rule: str | None = None
    since: float | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> EventQuery:
        """From query parameters: ``camera``, ``rule``, ``since`` (Unix seconds or ISO 8601
        with an offset), ``limit`` (1-1000). Unknown or empty parameters are refused."""
        unknown = sorted(set(params) - set(QUERY_KEYS))
        if unknown:
            raise InvalidQuery(
                f"unknown parameter {unknown[0]!r}; allowed: {', '.join(QUERY_KEYS)}"
            )
        for key, value in params.items():
            if not value:
                raise InvalidQuery(f"parameter {key!r} is empty")
        since = None
        if "since" in params:
            text = params["since"]
            try:
                since = float(text)
            except ValueError:
                try:
                    since = parse_wall_time(text)
                except ValueError as exc:
                    raise InvalidQuery(f"since: {exc}") from None
        limit = DEFAULT_LIMIT
        if "limit" in params:
            try:
                limit = int(params["limit"])
            except ValueError:
                raise InvalidQuery("limit must be a whole number") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise InvalidQuery(f"limit must be 1-{MAX_LIMIT}")
        return cls(params.get("camera"), params.get("rule"), since, limit)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the history holds it; ``type`` is the last lifecycle step recorded."""

    record: EventRecord
    type: str

    def to_json(self) -> dict[str, object]:
        return {**self.record.to_json(), "type": self.type}


@dataclass(frozen=True, slots=True)
class PruneResult:
    by_age: int
    by_budget: int


class EventHistory:
    """The SQLite event table. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, snapshots: SnapshotStore | None = None) -> None:
        self._snapshots = snapshots
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the event history {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, event: EventRecord, type_: str) -> None:
        """Insert or update the row of ``event.id``."""
        moments = json.dumps([list(m) for m in event.moments])
        snap_bytes = 0
        if event.snapshot is not None and self._snapshots is not None:
            data = self._snapshots.get(event.snapshot)
            snap_bytes = len(data) if data is not None else 0
        size = 200 + len(moments) + len(event.description or "") + snap_bytes
        row = (
            event.id,
            event.rule,
            event.camera,
            type_,
            event.start_time,
            event.end_time,
            event.score,
            event.peak_score,
            event.description,
            moments,
            event.snapshot,
            event.end_reason,
            size,
        )
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO "
                    "UPDATE SET type=excluded.type, end_time=excluded.end_time, "
                    "score=excluded.score, peak_score=excluded.peak_score, "
                    "description=excluded.description, moments=excluded.moments, "
                    "snapshot=excluded.snapshot, end_reason=excluded.end_reason, "
                    "bytes=excluded.bytes",
                    row,
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record event {event.id}: {exc}") from None

    def get(self, event_id: str) -> StoredEvent | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else _stored(row)

    def list_events(
        self,
        *,
        camera: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events matching every filter given (``since``: started at or after, Unix s), oldest
        first; at most ``limit`` (1..1000) of them, the newest ones when more match."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1-{MAX_LIMIT}")
        where: list[str] = []
        args: list[object] = []
        for column, value in (("camera", camera), ("rule", rule)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("start_time >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        query = f"SELECT * FROM events {clause} ORDER BY start_time DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [_stored(r) for r in reversed(rows)]

    def query(self, q: EventQuery) -> list[StoredEvent]:
        return self.list_events(camera=q.camera, rule=q.rule, since=q.since, limit=q.limit)

    def open_events(self) -> list[StoredEvent]:
        """Events without an end (left open by a crash; the service ends them at start-up)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE end_time IS NULL ORDER BY start_time"
            ).fetchall()
        return [_stored(r) for r in rows]

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM events").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def prune(self, now: float, *, retention_s: float | None, max_bytes: int | None) -> PruneResult:
        """Delete ended events that ended before ``now - retention_s``, then the oldest ended
        events until the total fits ``max_bytes``; their snapshots go with them."""
        doomed_age: list[tuple[str, str | None]] = []
        doomed_budget: list[tuple[str, str | None]] = []
        with self._lock:
            if retention_s is not None:
                doomed_age = self._db.execute(
                    "SELECT id, snapshot FROM events WHERE end_time IS NOT NULL AND end_time < ?",
                    (now - retention_s,),
                ).fetchall()
                self._delete(doomed_age)
            if max_bytes is not None:
                total = int(
                    self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM events").fetchone()[0]
                )
                if total > max_bytes:
                    rows = self._db.execute(
                        "SELECT id, snapshot, bytes FROM events WHERE end_time IS NOT NULL "
                        "ORDER BY start_time, id"
                    ).fetchall()
                    for event_id, snapshot, size in rows:
                        if total <= max_bytes:
                            break
                        doomed_budget.append((event_id, snapshot))
                        total -= int(size)
                    self._delete(doomed_budget)
        for _, snapshot in (*doomed_age, *doomed_budget):
            if snapshot is not None and self._snapshots is not None:
                try:
                    self._snapshots.delete(snapshot)
                except OSError as exc:
                    log.warning("cannot delete snapshot %s: %s", snapshot, exc)
        if doomed_age or doomed_budget:
            log.info(
                "event history pruned: %d past retention, %d over the byte budget",
                len(doomed_age),
                len(doomed_budget),
            )
        return PruneResult(len(doomed_age), len(doomed_budget))

    def _delete(self, rows: list[tuple[str, str | None]]) -> None:
        self._db.executemany("DELETE FROM events WHERE id = ?", [(r[0],) for r in rows])


def _stored(row: tuple[object, ...]) -> StoredEvent:
    (eid, rule, camera, type_, start, end, score, peak, desc, moments, snap, reason, _) = row
    record = EventRecord(
        id=str(eid),
        rule=str(rule),
        camera=str(camera),
        start_time=float(start),  # type: ignore[arg-type]
        end_time=None if end is None else float(end),  # type: ignore[arg-type]
        score=float(score),  # type: ignore[arg-type]
        peak_score=float(peak),  # type: ignore[arg-type]
        description=None if desc is None else str(desc),
        moments=tuple((float(a), float(b)) for a, b in json.loads(str(moments))),
        snapshot=None if snap is None else str(snap),
        end_reason=None if reason is None else str(reason),
    )
    return StoredEvent(record, str(type_))
