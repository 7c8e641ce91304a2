"""The batcher: blocks, back-pressure, and exactly-once recovery from the WAL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stackwatch.errors import Overloaded
from stackwatch.ingest.batcher import Batcher, Entry
from stackwatch.ingest.wal import WAL


class RecordingStore:
    """A sink with ClickHouse's dedup-token semantics, to watch what the batcher does."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.rows: list[object] = []
        self.fail_next = 0

    def __call__(self, entries: list[Entry], token: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("storage unavailable")
        if token in self.tokens:
            return
        self.tokens.append(token)
        for e in entries:
            self.rows.extend(e.body()["e"])


def make(tmp_path: Path, store: RecordingStore, **kw: object) -> Batcher:
    wal = WAL(tmp_path / "wal")
    return Batcher(wal, tmp_path / "wal" / "checkpoint.json", {"logs": store}, **kw)  # type: ignore[arg-type]


def test_submitted_events_are_stored_in_blocks(tmp_path: Path) -> None:
    store = RecordingStore()
    b = make(tmp_path, store, max_rows=50, max_delay_s=0.05)
    b.start()

    async def main() -> None:
        await asyncio.gather(*(b.submit("logs", "default", [{"n": i}, {"n": -i}]) for i in range(100)))

    asyncio.run(main())
    assert b.flush(10)
    assert len(store.rows) == 200
    assert len(store.tokens) >= 4  # max_rows=50 splits 200 rows into several blocks
    assert b.buffered_bytes == 0
    b.stop()
    b.wal.close()


def test_storage_failure_is_retried_not_dropped(tmp_path: Path) -> None:
    store = RecordingStore()
    store.fail_next = 2
    b = make(tmp_path, store, max_delay_s=0.01)
    b.start()
    b.submit_sync("logs", "default", [{"n": 1}])
    assert b.flush(10)
    assert store.rows == [{"n": 1}]
    b.stop()
    b.wal.close()


def test_buffer_full_answers_overloaded(tmp_path: Path) -> None:
    store = RecordingStore()
    b = make(tmp_path, store, buffer_bytes=200, max_delay_s=60)  # not started: nothing drains
    b.submit_sync("logs", "default", [{"m": "x" * 150}])
    with pytest.raises(Overloaded) as err:
        b.submit_sync("logs", "default", [{"m": "y" * 150}])
    assert err.value.retry_after >= 1
    b.wal.close()


def test_recovery_replays_unstored_records_exactly_once(tmp_path: Path) -> None:
    store = RecordingStore()
    b = make(tmp_path, store)  # never started: as if killed before the batcher ran
    for i in range(5):
        b.submit_sync("logs", "default", [{"n": i}])
    b.wal.close()

    b2 = make(tmp_path, store, max_delay_s=0.01)
    assert b2.recover() == 5
    b2.start()
    assert b2.flush(10)
    assert sorted(r["n"] for r in store.rows) == [0, 1, 2, 3, 4]  # type: ignore[index]
    b2.stop()
    b2.wal.close()

    b3 = make(tmp_path, store)
    assert b3.recover() == 0  # all committed: nothing to replay
    b3.wal.close()


def test_crash_after_insert_before_commit_is_not_duplicated(tmp_path: Path) -> None:
    store = RecordingStore()
    b = make(tmp_path, store)
    for i in range(4):
        b.submit_sync("logs", "default", [{"n": i}])
    # The block 1..4 reached storage, then the process died before writing committed=4.
    b._checkpoint.write(0, (1, 4))
    store(list(Entry.decode(lsn, p) for lsn, p in b.wal.replay(0)), "logs-1-4")
    b.wal.close()

    b2 = make(tmp_path, store, max_delay_s=0.01)
    b2.recover()
    b2.start()
    b2.submit_sync("logs", "default", [{"n": 99}])
    assert b2.flush(10)
    assert sorted(r["n"] for r in store.rows) == [0, 1, 2, 3, 99]  # type: ignore[index]
    b2.stop()
    b2.wal.close()


def test_staged_sinks_prepare_ahead_and_commit_in_order_exactly_once(tmp_path: Path) -> None:
    """The next block is prepared while the previous one is being committed; commits keep LSN
    order, and a failed prepare or commit is retried without loss or duplication."""
    import time

    from stackwatch.ingest.batcher import Staged

    intervals: dict[str, list[tuple[float, float]]] = {"prepare": [], "commit": []}
    commits: list[tuple[int, str]] = []
    failures = {"prepare": 1, "commit": 1}

    def prepare(entries: list[Entry]) -> list[int]:
        start = time.monotonic()
        if failures["prepare"]:
            failures["prepare"] -= 1
            raise RuntimeError("worker died")
        time.sleep(0.03)  # the pipeline's work
        intervals["prepare"].append((start, time.monotonic()))
        return [e.body()["e"][0]["n"] for e in entries]

    def commit(ns: list[int], token: str) -> None:
        start = time.monotonic()
        time.sleep(0.03)  # the insert
        if failures["commit"]:
            failures["commit"] -= 1
            raise RuntimeError("storage unavailable")
        if token not in {t for _, t in commits}:
            commits.extend((n, token) for n in ns)
        intervals["commit"].append((start, time.monotonic()))

    wal = WAL(tmp_path / "wal")
    b = Batcher(wal, tmp_path / "wal" / "checkpoint.json", {"logs": Staged(prepare, commit)}, max_rows=5,
                max_delay_s=0.01)
    b.start()

    async def main() -> None:
        await asyncio.gather(*(b.submit("logs", "default", [{"n": i}]) for i in range(60)))

    asyncio.run(main())
    assert b.flush(20)
    assert sorted(n for n, _ in commits) == list(range(60))
    tokens = [t for _, t in commits]
    lsns = [int(t.split("-")[1]) for t in dict.fromkeys(tokens)]
    assert lsns == sorted(lsns), "blocks are committed in LSN order"
    overlaps = sum(
        1 for p0, p1 in intervals["prepare"] for c0, c1 in intervals["commit"] if p0 < c1 and c0 < p1
    )
    assert overlaps >= 3, intervals
    assert b.stored_events == 60 and b.buffered_bytes == 0 and b.last_error is None
    b.stop()
    wal.close()


def test_backlog_is_held_to_storage_pace_by_waiting_then_429(tmp_path: Path) -> None:
    """With backlog_s, the buffer allows what storage clears in that time at its measured pace:
    a request that does not fit waits for room (and goes through when storage catches up), or
    gets a 429 after wait_s."""
    import time

    from stackwatch.ingest.batcher import Staged

    slow = {"delay": 0.05}

    def commit(entries: list[Entry], token: str) -> None:
        time.sleep(slow["delay"])

    wal = WAL(tmp_path / "wal")
    b = Batcher(wal, tmp_path / "wal" / "checkpoint.json", {"logs": Staged(lambda e: e, commit)}, max_rows=10,
                max_delay_s=0.001, backlog_s=0.2, wait_s=3.0)
    assert b.limit_bytes == 64 << 20  # pace unknown yet: a fixed first limit
    b.start()
    payload = [{"m": "x" * 2000}]

    async def burst(n: int) -> list[float]:
        async def one() -> float:
            t0 = time.monotonic()
            await b.submit("logs", "default", payload)
            return time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(burst(60))  # storage's pace gets measured
    assert b.flush(20)
    # Blocks of at most 10 rows of ~2 kB, 50 ms per commit: about 400 kB/s (less on a busy box).
    assert b._store_rate is not None and 10e3 < b._store_rate < 2e6, b._store_rate
    assert b.limit_bytes == 4 << 20  # 0.2 s of so slow a store is below the 4 MiB floor
    b._store_rate = 1e6  # the limit follows the pace: 100 s of 1 MB/s, within the buffer
    b.backlog_s = 100.0
    assert b.limit_bytes == 100_000_000
    b.buffer_bytes = 5000  # never more than two requests' worth: the others must wait
    waits = asyncio.run(burst(6))
    assert max(waits) > 0.04, waits  # some waited for a commit instead of failing
    assert b.flush(20) and b.buffered_bytes == 0

    slow["delay"] = 2.0  # storage stalls: a waiting request gives up after wait_s with a 429
    b.wait_s = 0.3

    async def stalled() -> None:
        await b.submit("logs", "default", payload)  # fills the buffer
        with pytest.raises(Overloaded):
            await b.submit("logs", "default", payload)
            await b.submit("logs", "default", payload)
            await b.submit("logs", "default", payload)

    asyncio.run(stalled())
    assert b.flush(30)
    b.stop()
    wal.close()


def test_an_entry_its_data_cannot_be_prepared_is_set_aside_not_retried_for_ever(tmp_path: Path) -> None:
    """A pipeline that fails on one entry's data (a value nobody thought of) once blocked every
    entry behind it, across restarts. It is quarantined as received; the others are stored.
    A failure that is not the data's (a worker lost) is still retried without end."""
    from stackwatch.ingest.batcher import Staged

    stored: list[int] = []
    lost_worker = {"left": 4}

    def prepare(entries: list[Entry]) -> list[int]:
        ns = [e.body()["e"][0]["n"] for e in entries]
        if lost_worker["left"]:
            lost_worker["left"] -= 1
            raise RuntimeError("worker died")
        if 13 in ns:
            raise OverflowError("Python int too large to convert to C long")
        return ns

    def commit(ns: list[int], token: str) -> None:
        stored.extend(ns)

    wal = WAL(tmp_path / "wal")
    b = Batcher(wal, tmp_path / "wal" / "checkpoint.json", {"logs": Staged(prepare, commit)}, max_rows=10,
                max_delay_s=0.01)
    b.start()

    async def main() -> None:
        for group in range(3):  # one block of several entries, then entries of their own
            await asyncio.gather(*(b.submit("logs", "default", [{"n": i}]) for i in range(group * 10, group * 10 + 10)))

    asyncio.run(main())
    assert b.flush(30)
    assert sorted(stored) == [n for n in range(30) if n != 13]
    assert b.quarantined == 1 and b.buffered_bytes == 0
    (kept,) = (tmp_path / "wal" / "quarantine").iterdir()
    assert b'"n":13' in kept.read_bytes()
    b.stop()
    wal.close()
    # Nothing is replayed after a restart: the quarantined record is behind the checkpoint.
    stored.clear()
    wal = WAL(tmp_path / "wal")
    b = Batcher(wal, tmp_path / "wal" / "checkpoint.json", {"logs": Staged(prepare, commit)}, max_delay_s=0.01)
    b.start()
    assert b.flush(10) and stored == []
    b.stop()
    wal.close()
