"""The WAL: durable appends, group commit, torn tails, replay and trimming."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from stackwatch.ingest.wal import WAL


def test_append_then_replay_after_reopen(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    lsns = [wal.append_sync(f"record {i}".encode()) for i in range(5)]
    assert lsns == [1, 2, 3, 4, 5]
    wal.close()
    reopened = WAL(tmp_path)
    assert reopened.last_lsn == 5
    assert [p for _, p in reopened.replay(2)] == [b"record 2", b"record 3", b"record 4"]
    assert reopened.append_sync(b"next") == 6
    reopened.close()


def test_group_commit_from_many_coroutines_keeps_lsn_order(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    seen: list[int] = []
    lock = threading.Lock()

    def on_durable(lsn: int) -> None:
        with lock:
            seen.append(lsn)

    async def main() -> list[int]:
        return await asyncio.gather(*(wal.append(b"x" * i, on_durable) for i in range(200)))

    lsns = asyncio.run(main())
    assert sorted(lsns) == list(range(1, 201))
    # The callback runs on the writer thread in log order, whatever order the waiters resume in.
    assert seen == list(range(1, 201))
    wal.close()


def test_torn_tail_is_cut_and_not_replayed(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.append_sync(b"complete")
    wal.append_sync(b"also complete")
    wal.close()
    segment = next(tmp_path.glob("*.wal"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # a crash in the middle of the second record
    reopened = WAL(tmp_path)
    assert [p for _, p in reopened.replay(0)] == [b"complete"]
    assert reopened.append_sync(b"after crash") == 2
    assert [p for _, p in reopened.replay(0)] == [b"complete", b"after crash"]
    reopened.close()


def test_corrupt_record_stops_replay(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.append_sync(b"good")
    wal.append_sync(b"flipped")
    wal.close()
    segment = next(tmp_path.glob("*.wal"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    reopened = WAL(tmp_path)
    assert [p for _, p in reopened.replay(0)] == [b"good"]
    reopened.close()


def test_segments_roll_and_trim(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_bytes=100)
    for _ in range(20):
        wal.append_sync(b"y" * 60)
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) >= 10
    assert [lsn for lsn, _ in wal.replay(0)] == list(range(1, 21))
    removed = wal.trim(15)
    assert removed > 0
    # Everything after the committed LSN is still there.
    assert [lsn for lsn, _ in wal.replay(15)] == [16, 17, 18, 19, 20]
    wal.close()
    reopened = WAL(tmp_path, segment_bytes=100)
    assert reopened.last_lsn == 20
    reopened.close()
