"""The persistent outbox: FIFO order, the cap drops the oldest and counts them, restarts, corrupt files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from amsd.outbox import Outbox


def _topics(outbox: Outbox, limit: int = 1000) -> list[str]:
    return [m.topic for m in outbox.peek(limit)]


def test_fifo_order_and_fields(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append("a/1", b"\x00one", qos=1, retain=False)
    outbox.append_many([("a/2", b"two", 0, True), ("a/3", b"three", 1, False)])
    assert outbox.depth == 3
    first, second, third = outbox.peek(10)
    assert (first.topic, first.payload, first.qos, first.retain) == ("a/1", b"\x00one", 1, False)
    assert (second.topic, second.payload, second.qos, second.retain) == ("a/2", b"two", 0, True)
    assert third.topic == "a/3"
    assert first.id < second.id < third.id
    assert _topics(outbox, 2) == ["a/1", "a/2"]  # peek respects the limit and does not remove
    assert outbox.depth == 3
    outbox.close()


def test_remove_only_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append_many((f"t/{i}", str(i).encode(), 1, False) for i in range(10))
    batch = outbox.peek(4)
    outbox.remove(m.id for m in batch)
    assert outbox.depth == 6
    assert _topics(outbox) == [f"t/{i}" for i in range(4, 10)]
    outbox.remove([])  # nothing acknowledged: nothing changes
    assert outbox.depth == 6
    outbox.close()


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_messages=5)
    for i in range(3):
        assert outbox.append(f"t/{i}", b"x") == 0
    # One transaction of 6 more: the 4 oldest of the 9 go.
    assert outbox.append_many((f"t/{i}", b"x", 1, False) for i in range(3, 9)) == 4
    assert outbox.depth == 5
    assert outbox.dropped == 4
    assert _topics(outbox) == [f"t/{i}" for i in range(4, 9)]
    assert outbox.append("t/9", b"x") == 1
    assert outbox.dropped == 5
    assert _topics(outbox) == [f"t/{i}" for i in range(5, 10)]
    outbox.close()


def test_survives_restart_with_order_and_dropped_count(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"  # the state directory is created when missing
    outbox = Outbox(path, max_messages=3)
    outbox.append_many((f"t/{i}", bytes([i]), 1, i % 2 == 0) for i in range(5))
    outbox.close()

    reopened = Outbox(path, max_messages=3)
    assert reopened.depth == 3
    assert reopened.dropped == 2
    assert [(m.topic, m.payload, m.retain) for m in reopened.peek(10)] == [
        ("t/2", b"\x02", True),
        ("t/3", b"\x03", False),
        ("t/4", b"\x04", True),
    ]
    reopened.append("t/5", b"\x05")
    assert _topics(reopened)[-1] == "t/5"  # new messages still come after the old ones
    reopened.close()


def test_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(content)
    outbox = Outbox(path)
    assert outbox.depth == 0
    outbox.append("t/after", b"ok")
    assert _topics(outbox) == ["t/after"]
    outbox.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content  # kept for inspection, not deleted
    assert "moved aside" in caplog.text


def test_invalid_cap_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path / "outbox.db", max_messages=0)


def test_batched_appends_are_fast_enough(tmp_path: Path) -> None:
    # Not a timing assertion (benchmarks live in bench/): a large batch works in one transaction.
    outbox = Outbox(tmp_path / "outbox.db", max_messages=50_000)
    outbox.append_many((f"amsd/m/state/{i}", b"{}" * 100, 1, False) for i in range(20_000))
    assert outbox.depth == 20_000
    assert _topics(outbox, 1) == ["amsd/m/state/0"]
    outbox.close()


def test_peek_after_a_cursor(tmp_path: Path) -> None:
    """The publisher pages through the outbox while earlier pages are still unacknowledged."""
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append_many((f"t/{i}", b"x", 1, False) for i in range(6))
    first = outbox.peek(2)
    second = outbox.peek(2, after=first[-1].id)
    assert [m.topic for m in first + second] == ["t/0", "t/1", "t/2", "t/3"]
    assert outbox.peek(10, after=second[-1].id)[0].topic == "t/4"
    assert outbox.depth == 6  # peeking never removes
    outbox.close()


def test_prepend_puts_unacknowledged_messages_ahead_of_the_backlog(tmp_path: Path) -> None:
    """Messages in flight when a connection dropped are older than anything spilled since."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, max_messages=10)
    outbox.append_many((f"spilled/{i}", b"x", 1, False) for i in range(3))
    outbox.prepend_many([("inflight/0", b"a", 1, False), ("inflight/1", b"b", 1, True)])
    expected = ["inflight/0", "inflight/1", "spilled/0", "spilled/1", "spilled/2"]
    assert _topics(outbox) == expected and outbox.depth == 5
    outbox.prepend_many([])
    outbox.close()
    reopened = Outbox(path, max_messages=10)
    assert _topics(reopened) == expected
    empty = Outbox(tmp_path / "empty.db")
    empty.prepend_many([("only", b"x", 1, False)])
    empty.append("next", b"y")
    assert _topics(empty) == ["only", "next"]
    reopened.close()
    empty.close()


def test_peek_after_and_prepend_keep_global_order(tmp_path: Path) -> None:
    """The publisher pages through the outbox while earlier pages are in flight, and puts messages that
    were in flight when the connection dropped back AHEAD of anything stored meanwhile."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    outbox.append_many((f"t/{i}", b"x", 1, False) for i in range(5))
    first = outbox.peek(2)
    assert [m.topic for m in outbox.peek(10, after=first[-1].id)] == ["t/2", "t/3", "t/4"]
    outbox.prepend_many([("t/a", b"a", 1, False), ("t/b", b"b", 1, True)])
    assert outbox.depth == 7
    assert _topics(outbox) == ["t/a", "t/b", "t/0", "t/1", "t/2", "t/3", "t/4"]
    outbox.append("t/5", b"x")
    outbox.close()
    reopened = Outbox(path)
    assert _topics(reopened) == ["t/a", "t/b", "t/0", "t/1", "t/2", "t/3", "t/4", "t/5"]
    reopened.remove(m.id for m in reopened.peek(8))
    reopened.prepend_many([("t/c", b"c", 1, False)])  # into an empty outbox
    assert _topics(reopened) == ["t/c"]
    reopened.close()
