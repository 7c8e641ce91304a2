"""The write-ahead log: an ingest request is acknowledged only once its payload is here, fsync'd.

Layout: ``<dir>/<first_lsn:020d>.wal`` segment files of framed records
``[u32 length][u64 lsn][u32 crc32(payload)][payload]``. LSNs grow by one per record across
segments. A torn or corrupt tail (a crash mid-write) ends replay at the last whole record; such a
record was never acknowledged, because acknowledgement waits for the fsync that follows it.

Appends from many requests are *group-committed*: one writer thread drains everything queued,
writes it, fsyncs once and then wakes all the waiters, so the cost of an fsync is shared by every
request that arrived during the previous one.
"""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WAL", "WALClosed"]

_HEADER = struct.Struct("<IQI")
_SUFFIX = ".wal"


class WALClosed(RuntimeError):
    pass


@dataclass
class _Segment:
    first_lsn: int
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Yield (lsn, payload, end_offset) for each whole, checksummed record in a segment."""
    with path.open("rb") as f:
        data = f.read()
    offset = 0
    size = len(data)
    while offset + _HEADER.size <= size:
        length, lsn, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if end > size:
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return
        yield lsn, payload, end
        offset = end


class WAL:
    """Durable, append-only record log with group commit."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._segments: list[_Segment] = sorted(
            (_Segment(int(p.stem), p) for p in self.dir.glob(f"*{_SUFFIX}") if p.stem.isdigit()),
            key=lambda s: s.first_lsn,
        )
        self.last_lsn = 0
        if self._segments:
            active = self._segments[-1]
            valid_end = 0
            self.last_lsn = active.first_lsn - 1
            for lsn, _payload, end in _read_records(active.path):
                self.last_lsn = lsn
                valid_end = end
            # Cut a torn tail so new records follow the last whole one.
            with active.path.open("r+b") as f:
                f.truncate(valid_end)
        self._file = None
        self._file_size = 0
        self._open_active()
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="wal-writer", daemon=True)
        self._writer.start()

    # -- writing -----------------------------------------------------------------------------

    def _open_active(self) -> None:
        if not self._segments:
            self._new_segment(self.last_lsn + 1)
            return
        path = self._segments[-1].path
        self._file = path.open("ab")
        self._file_size = path.stat().st_size

    def _new_segment(self, first_lsn: int) -> None:
        if self._file is not None:
            self._file.close()
        path = self.dir / f"{first_lsn:020d}{_SUFFIX}"
        self._file = path.open("ab")
        self._file_size = 0
        self._segments.append(_Segment(first_lsn, path))
        if self.fsync:
            _fsync_dir(self.dir)

    def _write_batch(self, payloads: list[bytes]) -> list[int]:
        assert self._file is not None
        lsns = []
        chunks = []
        for payload in payloads:
            if self._file_size >= self.segment_bytes and chunks:
                self._file.write(b"".join(chunks))
                chunks = []
            if self._file_size >= self.segment_bytes:
                self._flush()
                self._new_segment(self.last_lsn + 1)
            self.last_lsn += 1
            header = _HEADER.pack(len(payload), self.last_lsn, zlib.crc32(payload))
            chunks.append(header)
            chunks.append(payload)
            self._file_size += len(header) + len(payload)
            lsns.append(self.last_lsn)
        self._file.write(b"".join(chunks))
        self._flush()
        return lsns

    def _flush(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fdatasync(self._file.fileno())

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [b for b in batch if b is not None]
            if items:
                error: BaseException | None = None
                try:
                    lsns = self._write_batch([i.payload for i in items])
                except BaseException as exc:  # disk full, I/O error: every waiter must hear it
                    lsns = [0] * len(items)
                    error = exc
                for item, lsn in zip(items, lsns, strict=True):
                    if error is None and item.on_durable is not None:
                        # Called here, in LSN order, so a consumer sees records in log order even
                        # when the request that wrote one was cancelled while waiting.
                        item.on_durable(lsn)
                    item.done(lsn, error)
            if any(b is None for b in batch):
                return

    async def append(self, payload: bytes, on_durable: Callable[[int], None] | None = None) -> int:
        """Append a record; returns its LSN once it is on disk (fsync'd).

        ``on_durable(lsn)`` runs on the writer thread right after the fsync, in LSN order.
        """
        if self._closed:
            raise WALClosed("the write-ahead log is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put(_Item(payload, on_durable, fut=fut))
        return await fut

    def append_sync(self, payload: bytes, on_durable: Callable[[int], None] | None = None) -> int:
        """Blocking append for threads without an event loop (syslog, tests)."""
        if self._closed:
            raise WALClosed("the write-ahead log is closed")
        item = _Item(payload, on_durable, event=threading.Event())
        self._queue.put(item)
        assert item.event is not None
        item.event.wait()
        if item.error is not None:
            raise item.error
        return item.lsn

    # -- reading and trimming ----------------------------------------------------------------

    def replay(self, after_lsn: int) -> Iterator[tuple[int, bytes]]:
        """Records with LSN > ``after_lsn``, in order."""
        segments = list(self._segments)
        for i, seg in enumerate(segments):
            nxt = segments[i + 1].first_lsn if i + 1 < len(segments) else None
            if nxt is not None and nxt - 1 <= after_lsn:
                continue
            if not seg.path.exists():
                continue
            for lsn, payload, _end in _read_records(seg.path):
                if lsn > after_lsn:
                    yield lsn, payload

    def trim(self, committed_lsn: int) -> int:
        """Delete segments whose records are all stored; returns how many were removed."""
        removed = 0
        while len(self._segments) > 1 and self._segments[1].first_lsn - 1 <= committed_lsn:
            seg = self._segments.pop(0)
            seg.path.unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        if self._file is not None:
            self._file.close()


def _resolve(fut: asyncio.Future[int], lsn: int, error: BaseException | None) -> None:
    if fut.done():  # the waiting request was cancelled; the record is durable all the same
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(lsn)


@dataclass
class _Item:
    payload: bytes
    on_durable: Callable[[int], None] | None
    fut: asyncio.Future[int] | None = None
    event: threading.Event | None = None
    lsn: int = 0
    error: BaseException | None = None

    def done(self, lsn: int, error: BaseException | None) -> None:
        if self.fut is not None:
            self.fut.get_loop().call_soon_threadsafe(_resolve, self.fut, lsn, error)
        elif self.event is not None:
            self.lsn, self.error = lsn, error
            self.event.set()
