"""The batcher: moves durable WAL records into storage in large blocks, exactly once.

Exactly once across crashes comes from three facts:

1. A block is a contiguous LSN range ``a..b``. Before inserting it the batcher writes
   ``pending = [a, b]`` to the checkpoint file (fsync'd); after the insert it writes
   ``committed = b``. At most one block is in flight.
2. Each insert carries the deduplication token ``<kind>-<a>-<b>``; ClickHouse stores a block
   with a token it has already seen only once.
3. On start, a pending block is rebuilt from the WAL with exactly the same range, hence the
   same token, and re-inserted: if the crash came after the insert, ClickHouse drops it; if
   before, it is stored now. Records after ``b`` were never inserted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stackwatch.errors import Overloaded
from stackwatch.ingest.wal import WAL

__all__ = ["Batcher", "Entry", "Sink"]

log = logging.getLogger("stackwatch.ingest")


@dataclass
class Entry:
    """One acknowledged ingest request, as the WAL holds it.

    Only the encoded payload is kept in memory (not the decoded events): it is what the WAL
    replays, what pipeline worker processes receive, and several times smaller than the
    Python objects it decodes to.
    """

    kind: str
    project: str
    observed_ns: int
    count: int
    payload: bytes
    lsn: int = 0

    @classmethod
    def create(
        cls, kind: str, project: str, events: list[Any], observed_ns: int, defaults: dict[str, Any] | None
    ) -> Entry:
        payload = orjson.dumps({"k": kind, "p": project, "o": observed_ns, "d": defaults or {}, "e": events})
        return cls(kind, project, observed_ns, len(events), payload)

    @classmethod
    def decode(cls, lsn: int, payload: bytes) -> Entry:
        obj = orjson.loads(payload)
        return cls(obj["k"], obj["p"], obj["o"], len(obj["e"]), payload, lsn)

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    def body(self) -> dict[str, Any]:
        """The decoded payload: ``e`` events, ``d`` defaults, ``p`` project, ``o`` observed ns."""
        return orjson.loads(self.payload)  # type: ignore[no-any-return]


#: A sink stores the entries of one kind from one block; ``token`` makes a repeat a no-op.
Sink = Callable[[list[Entry], str], None]


class _Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed = 0
        self.pending: tuple[int, int] | None = None
        if path.exists():
            obj = orjson.loads(path.read_bytes())
            self.committed = int(obj.get("committed", 0))
            pending = obj.get("pending")
            self.pending = (int(pending[0]), int(pending[1])) if pending else None

    def write(self, committed: int, pending: tuple[int, int] | None) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps({"committed": committed, "pending": list(pending) if pending else None}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.committed, self.pending = committed, pending


class Batcher:
    def __init__(
        self,
        wal: WAL,
        checkpoint_path: str | Path,
        sinks: dict[str, Sink],
        *,
        max_rows: int = 200_000,
        max_delay_s: float = 0.4,
        buffer_bytes: int = 256 << 20,
    ) -> None:
        self.wal = wal
        self.sinks = sinks
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.buffer_bytes = buffer_bytes
        self._checkpoint = _Checkpoint(Path(checkpoint_path))
        self._queue: deque[tuple[float, Entry]] = deque()
        self._queued_rows = 0
        self.buffered_bytes = 0
        self._cond = threading.Condition()
        self._in_flight = False
        self._urgent = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stored_events = 0
        self.last_error: str | None = None

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> int:
        """Replay the WAL past the checkpoint; returns the number of records replayed."""
        cp = self._checkpoint
        replayed = 0
        pending_block: list[Entry] = []
        for lsn, payload in self.wal.replay(cp.committed):
            entry = Entry.decode(lsn, payload)
            self.buffered_bytes += entry.nbytes
            replayed += 1
            if cp.pending and cp.pending[0] <= lsn <= cp.pending[1]:
                pending_block.append(entry)
            else:
                self._enqueue(entry)
        if cp.pending:
            a, b = cp.pending
            if pending_block:
                self._store_block(pending_block, a, b)
            else:
                cp.write(max(cp.committed, b), None)
        if replayed:
            log.info("replayed %d WAL records", replayed)
        return replayed

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        project: str,
        events: list[Any],
        *,
        observed_ns: int | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> int:
        """Make ``events`` durable; returns once they are in the WAL (then the caller may ack)."""
        if not events:
            return 0
        entry = self._prepare(kind, project, events, observed_ns, defaults)
        try:
            await self.wal.append(entry.payload, lambda lsn: self._durable(entry, lsn))
        except BaseException:
            self._abandon(entry)
            raise
        return entry.count

    def submit_sync(
        self,
        kind: str,
        project: str,
        events: list[Any],
        *,
        observed_ns: int | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`submit` for threads without an event loop."""
        if not events:
            return 0
        entry = self._prepare(kind, project, events, observed_ns, defaults)
        try:
            self.wal.append_sync(entry.payload, lambda lsn: self._durable(entry, lsn))
        except BaseException:
            self._abandon(entry)
            raise
        return entry.count

    def _prepare(
        self, kind: str, project: str, events: list[Any], observed_ns: int | None, defaults: dict[str, Any] | None
    ) -> Entry:
        entry = Entry.create(kind, project, events, observed_ns or time.time_ns(), defaults)
        self._reserve(entry.nbytes)
        return entry

    def _abandon(self, entry: Entry) -> None:
        # Written to the WAL or not? Only a record that reached on_durable holds buffer space
        # that the batcher will release; anything else is released here.
        if entry.lsn == 0:
            self._release(entry.nbytes)

    def _reserve(self, nbytes: int) -> None:
        with self._cond:
            if self.buffered_bytes and self.buffered_bytes + nbytes > self.buffer_bytes:
                raise Overloaded(
                    f"ingest buffer full ({self.buffered_bytes} bytes waiting for storage); retry later",
                    retry_after=max(1.0, self.max_delay_s * 2),
                )
            self.buffered_bytes += nbytes

    def _release(self, nbytes: int) -> None:
        with self._cond:
            self.buffered_bytes -= nbytes
            self._cond.notify_all()

    def _durable(self, entry: Entry, lsn: int) -> None:
        entry.lsn = lsn
        self._enqueue(entry)

    def _enqueue(self, entry: Entry) -> None:
        with self._cond:
            self._queue.append((time.monotonic(), entry))
            self._queued_rows += entry.count
            self._cond.notify_all()

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def _take_block(self) -> list[Entry] | None:
        with self._cond:
            while True:
                if self._queue:
                    oldest = self._queue[0][0]
                    due = oldest + self.max_delay_s
                    if (
                        self._queued_rows >= self.max_rows
                        or self._stopping
                        or self._urgent
                        or time.monotonic() >= due
                    ):
                        break
                    self._cond.wait(timeout=max(0.0, due - time.monotonic()))
                elif self._stopping:
                    return None
                else:
                    self._cond.wait(timeout=1.0)
            block: list[Entry] = []
            rows = 0
            while self._queue and (rows < self.max_rows or not block):
                _, entry = self._queue.popleft()
                block.append(entry)
                rows += entry.count
            self._queued_rows -= rows
            if not self._queue:
                self._urgent = False
            self._in_flight = True
            return block

    def _run(self) -> None:
        while True:
            block = self._take_block()
            if block is None:
                return
            backoff = 0.1
            while True:
                try:
                    self._store_block(block, block[0].lsn, block[-1].lsn)
                    self.last_error = None
                    break
                except Exception as exc:  # storage down: keep the block, retry, never drop
                    self.last_error = str(exc)
                    log.exception("storing block %d..%d failed; retrying", block[0].lsn, block[-1].lsn)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            with self._cond:
                self._in_flight = False
                self._cond.notify_all()

    def _store_block(self, block: list[Entry], a: int, b: int) -> None:
        cp = self._checkpoint
        cp.write(cp.committed, (a, b))
        by_kind: dict[str, list[Entry]] = {}
        for entry in block:
            by_kind.setdefault(entry.kind, []).append(entry)
        for kind, entries in by_kind.items():
            sink = self.sinks.get(kind)
            if sink is None:
                log.error("no sink for WAL records of kind %r; %d records skipped", kind, len(entries))
                continue
            sink(entries, f"{kind}-{a}-{b}")
        cp.write(b, None)
        self.wal.trim(b)
        nbytes = sum(e.nbytes for e in block)
        self.stored_events += sum(e.count for e in block)
        self._release(nbytes)

    # -- observing ---------------------------------------------------------------------------

    @property
    def pending_rows(self) -> int:
        return self._queued_rows

    def stored_watermark_ns(self) -> int:
        """Every entry observed at or before this time is in storage."""
        with self._cond:
            if self._queue or self._in_flight:
                oldest = min((e.observed_ns for _, e in self._queue), default=time.time_ns())
                return oldest - 1
        return time.time_ns()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is stored (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
