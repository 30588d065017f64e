"""The bounded on-disk outbox of MQTT messages that must not be lost (events).

Messages are appended in order to a SQLite table and deleted only once the broker acknowledged
them (QoS 1 PUBACK), so a broker that is down, or a daemon restart, loses nothing: delivery
resumes in order from the oldest. At ``max_messages`` the oldest waiting message is dropped to
make room (the newest events matter most); every drop is counted and logged (one line when
dropping begins, one when it stops). Delivery is at least once: a receiver may see a message
twice if the connection died between delivery and acknowledgement.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from stream_agent.alerts.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Outbox:
    """Thread-safe FIFO of :class:`OutMessage` in SQLite (``path`` None: in memory)."""

    def __init__(self, path: Path | None, max_messages: int = 10_000) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._max = max_messages
        self._lock = threading.Lock()
        self.dropped = 0
        self._dropping = False
        target = ":memory:" if path is None else str(path)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
                "retain INTEGER NOT NULL)"
            )
            self._size = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the MQTT outbox {path}: {exc}") from None
        if self._size:
            log.info("MQTT outbox holds %d undelivered messages from before", self._size)

    def __len__(self) -> int:
        with self._lock:
            return self._size

    @property
    def max_messages(self) -> int:
        return self._max

    def push(self, message: OutMessage) -> None:
        with self._lock:
            overflow = self._size + 1 - self._max
            if overflow > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                    (overflow,),
                )
                self._size -= overflow
                self.dropped += overflow
                if not self._dropping:
                    self._dropping = True
                    log.warning(
                        "MQTT outbox full (%d messages): dropping the oldest undelivered ones",
                        self._max,
                    )
            elif self._dropping and self._size < self._max // 2:
                self._dropping = False
                log.info("MQTT outbox below half full again (%d dropped so far)", self.dropped)
            self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                (message.topic, message.payload, message.qos, int(message.retain)),
            )
            self._size += 1

    def peek(self, n: int = 32) -> list[tuple[int, OutMessage]]:
        """The ``n`` oldest messages with their sequence numbers (not removed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [(int(s), OutMessage(str(t), bytes(p), int(q), bool(r))) for s, t, p, q, r in rows]

    def ack(self, seq: int) -> None:
        """Remove a delivered message (a no-op if overflow already dropped it)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._size -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
