"""Persistent FIFO of MQTT messages kept while the broker is unreachable (DESIGN.md section 5).

SQLite in WAL mode: appends survive a crash or power cut once committed, replay is in insertion
order, and messages are deleted only after the broker acknowledged them. At `max_messages` the
oldest are dropped, and counted: a reading is lost only there, and never silently.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class StoredMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A capped, persistent message queue. Not thread-safe; use it from one task."""

    def __init__(self, path: str | Path, max_messages: int = 100_000) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = Path(path)
        self.max_messages = max_messages
        self.dropped = 0
        self._db = self._open()
        self.depth = self._count()

    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # A corrupt file must not stop the daemon: keep it for inspection and start afresh.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved aside to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + suffix).unlink()
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE name = 'dropped'").fetchone()
            self.dropped = int(row[0]) if row else 0
            db.execute("SELECT count(*) FROM outbox").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def append_many(self, messages: Iterable[tuple[str, bytes, int, bool]]) -> int:
        """Store messages in order (one transaction); returns how many old ones the cap dropped."""
        rows = [(topic, payload, qos, int(retain)) for topic, payload, qos, retain in messages]
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)", rows)
            self.depth += len(rows)
            overflow = self.depth - self.max_messages
            if overflow > 0:
                db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (overflow,))
                self.depth -= overflow
                self.dropped += overflow
                db.execute(
                    "INSERT INTO meta (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (self.dropped,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.depth = self._count()
            raise
        return max(0, overflow)

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        return self.append_many([(topic, payload, qos, retain)])

    def peek(self, limit: int = 100, after: int | None = None) -> list[StoredMessage]:
        """The oldest `limit` messages (with an id above `after`, if given), oldest first."""
        if after is None:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [StoredMessage(int(i), str(t), bytes(p), int(q), bool(r)) for i, t, p, q, r in rows]

    def prepend_many(self, messages: Iterable[tuple[str, bytes, int, bool]]) -> None:
        """Store messages, in the given order, AHEAD of everything stored: ones that were in flight when
        the connection dropped are older than anything spilled meanwhile. Not subject to the cap:
        they were already accepted (the next append trims)."""
        rows = [(topic, payload, qos, int(retain)) for topic, payload, qos, retain in messages]
        if not rows:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            first = db.execute("SELECT min(id) FROM outbox").fetchone()[0]
            start = (int(first) if first is not None else 1) - len(rows)
            db.executemany(
                "INSERT INTO outbox (id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                [(start + n, *row) for n, row in enumerate(rows)],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self.depth = self._count()

    def remove(self, ids: Iterable[int]) -> None:
        """Delete messages the broker has acknowledged."""
        id_list = [(i,) for i in ids]
        if not id_list:
            return
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM outbox WHERE id = ?", id_list)
        self._db.execute("COMMIT")
        self.depth = self._count()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
