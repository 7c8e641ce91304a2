"""The batcher: moves durable WAL records into storage in large blocks, exactly once.

Exactly once across crashes comes from three facts:

1. A block is a contiguous LSN range ``a..b``. Before inserting it the batcher writes
   ``pending = [a, b]`` to the checkpoint file (fsync'd); after the insert it writes
   ``committed = b``. At most one block is being inserted.
2. Each insert carries the deduplication token ``<kind>-<a>-<b>``; ClickHouse stores a block
   with a token it has already seen only once.
3. On start, a pending block is rebuilt from the WAL with exactly the same range, hence the
   same token, and re-inserted: if the crash came after the insert, ClickHouse drops it; if
   before, it is stored now. Records after ``b`` were never inserted.

Two threads keep storage busy: a builder takes the next block and *prepares* it (for logs,
the pipeline turns payloads into an Arrow block in worker processes) while an inserter
commits the previous one, in LSN order, under the checkpoint protocol above. Preparing has
no side effect, so a crash between the two loses nothing: the block is rebuilt from the WAL.
A sink is either a callable ``(entries, token)`` (prepare-free) or a :class:`Staged` pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stackwatch.errors import Overloaded
from stackwatch.ingest.wal import WAL

__all__ = ["Batcher", "Entry", "Sink", "Staged"]

#: Failures that say something about the data being prepared, not about the machine: the
#: same entry fails the same way every time (pyarrow's errors derive from these too).
_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, AttributeError, RecursionError)

log = logging.getLogger("stackwatch.ingest")


@dataclass
class Entry:
    """One acknowledged ingest request, as the WAL holds it.

    Usually only the encoded payload is kept in memory (not the decoded events): it is what the
    WAL replays, what pipeline worker processes receive, and several times smaller than the
    Python objects it decodes to. ``live`` keeps the events as given when they are columns
    (metrics: a few numpy arrays, smaller than their base64 in the payload), so the sink does
    not decode its own payload again: that decoding took a third of the metrics batcher's time.
    ``nbytes`` counts both, so the buffer limit still bounds the memory held.
    """

    kind: str
    project: str
    observed_ns: int
    count: int
    payload: bytes
    lsn: int = 0
    live: list[Any] | None = None
    live_bytes: int = 0

    @classmethod
    def create(
        cls,
        kind: str,
        project: str,
        events: list[Any],
        observed_ns: int,
        defaults: dict[str, Any] | None,
        *,
        default: Callable[[Any], Any] | None = None,
        option: int = 0,
        live_bytes: int | None = None,
    ) -> Entry:
        """``default`` and ``option`` are ``orjson``'s (to encode what JSON lacks); with
        ``live_bytes`` the entry keeps ``events`` as :attr:`live`, counted as that much memory."""
        payload = orjson.dumps({"k": kind, "p": project, "o": observed_ns, "d": defaults or {}, "e": events},
                               default=default, option=option)
        if live_bytes is None:
            return cls(kind, project, observed_ns, len(events), payload)
        return cls(kind, project, observed_ns, len(events), payload, live=events, live_bytes=live_bytes)

    @classmethod
    def decode(cls, lsn: int, payload: bytes) -> Entry:
        obj = orjson.loads(payload)
        return cls(obj["k"], obj["p"], obj["o"], len(obj["e"]), payload, lsn)

    @property
    def nbytes(self) -> int:
        return len(self.payload) + self.live_bytes

    def body(self) -> dict[str, Any]:
        """The decoded payload: ``e`` events, ``d`` defaults, ``p`` project, ``o`` observed ns."""
        return orjson.loads(self.payload)  # type: ignore[no-any-return]


#: A sink stores the entries of one kind from one block; ``token`` makes a repeat a no-op.
@dataclass(frozen=True)
class Staged:
    """A sink in two steps: ``prepare(entries)`` (pure, may run ahead, e.g. the log pipeline)
    and ``commit(prepared, token)`` (the insert, in order, exactly once per token)."""

    prepare: Callable[[list[Entry]], Any]
    commit: Callable[[Any, str], Any]


Sink = Callable[[list[Entry], str], Any] | Staged


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
        backlog_s: float = 0.0,
        wait_s: float = 0.0,
    ) -> None:
        self.wal = wal
        self.sinks = sinks
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.buffer_bytes = buffer_bytes
        #: With ``backlog_s`` > 0 the buffer is also held to what storage clears in that many
        #: seconds at its measured rate, so everything acknowledged is searchable that soon
        #: after; a request that does not fit waits up to ``wait_s`` for room (backpressure by
        #: slower answers) before it gets a 429.
        self.backlog_s = backlog_s
        self.wait_s = wait_s
        self._store_rate: float | None = None  # bytes/s storage can take (EWMA)
        self._prepare_s: dict[int, float] = {}  # id(block) -> seconds its prepare took
        self._checkpoint = _Checkpoint(Path(checkpoint_path))
        self._queue: deque[tuple[float, Entry]] = deque()
        self._queued_rows = 0
        self._queued_bytes = 0
        self.buffered_bytes = 0
        self._cond = threading.Condition()
        self._in_flight = 0  # blocks taken from the queue and not yet stored
        self._flight_oldest: dict[int, int] = {}  # id(block) -> oldest observed_ns in it
        self._ready: queue.Queue[tuple[list[Entry], dict[str, Any]] | None] = queue.Queue(maxsize=1)
        self._urgent = False
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.stored_events = 0
        #: Arrival times of entries not yet queued, with their counts (see _arrival).
        self._arriving: dict[int, int] = {}
        #: Events set aside because their data could not be prepared (see _prepare_isolating).
        self.quarantined = 0
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
        with self._arrival(observed_ns) as observed:
            return await self.submit_entry(Entry.create(kind, project, events, observed, defaults))

    @contextlib.contextmanager
    def _arrival(self, observed_ns: int | None) -> Iterator[int]:
        """The entry's arrival time: ``observed_ns``, else now, counted as not stored until the
        block ends, by then the entry is queued (see :meth:`stored_watermark_ns`). Between the
        two the request is encoded, waits for buffer space and for the WAL's fsync, and a
        watermark taken then must not pass it."""
        if observed_ns is not None:
            yield observed_ns
            return
        with self._cond:
            now = time.time_ns()
            self._arriving[now] = self._arriving.get(now, 0) + 1
        try:
            yield now
        finally:
            with self._cond:
                left = self._arriving[now] - 1
                if left:
                    self._arriving[now] = left
                else:
                    del self._arriving[now]

    async def submit_entry(self, entry: Entry) -> int:
        """:meth:`submit` for an entry the caller built (to choose how it is encoded and kept)."""
        await self._reserve_waiting(entry.nbytes)
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
        with self._arrival(observed_ns) as observed:
            entry = Entry.create(kind, project, events, observed, defaults)
            self._reserve(entry.nbytes)
            try:
                self.wal.append_sync(entry.payload, lambda lsn: self._durable(entry, lsn))
            except BaseException:
                self._abandon(entry)
                raise
            return entry.count

    def _abandon(self, entry: Entry) -> None:
        # Written to the WAL or not? Only a record that reached on_durable holds buffer space
        # that the batcher will release; anything else is released here.
        if entry.lsn == 0:
            self._release(entry.nbytes)

    @property
    def limit_bytes(self) -> int:
        """How many acknowledged-but-unstored bytes are allowed now (see ``backlog_s``)."""
        if self.backlog_s <= 0:
            return self.buffer_bytes
        rate = self._store_rate
        if rate is None:
            return min(self.buffer_bytes, 64 << 20)  # until storage's pace is known
        return int(min(self.buffer_bytes, max(4 << 20, rate * self.backlog_s)))

    def _block_bytes(self) -> int:
        """Largest block under a backlog limit: a third of it, so that one block can be
        prepared while another is inserted and a third fills up. A block as large as the
        whole limit would leave no room for the next until it is stored, and the two stages
        would take turns instead of overlapping."""
        if self.backlog_s <= 0:
            return 1 << 62
        return max(1, self.limit_bytes // 3)

    def _try_reserve(self, nbytes: int) -> bool:
        with self._cond:
            if self.buffered_bytes and self.buffered_bytes + nbytes > self.limit_bytes:
                return False
            self.buffered_bytes += nbytes
            return True

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"ingest buffer full ({self.buffered_bytes} bytes waiting for storage); retry later",
            retry_after=max(1.0, self.max_delay_s * 2),
        )

    def _reserve(self, nbytes: int) -> None:
        if not self._try_reserve(nbytes):
            raise self._overloaded()

    async def _reserve_waiting(self, nbytes: int) -> None:
        """Reserve room, waiting up to ``wait_s`` while storage catches up, then 429."""
        if self._try_reserve(nbytes):
            return
        deadline = time.monotonic() + self.wait_s
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            if self._try_reserve(nbytes):
                return
            delay = min(delay * 2, 0.05)
        raise self._overloaded()

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
            self._queued_bytes += entry.nbytes
            self._cond.notify_all()

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._build_loop, name="batcher-build", daemon=True),
            threading.Thread(target=self._insert_loop, name="batcher-insert", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _take_block(self) -> list[Entry] | None:
        with self._cond:
            while True:
                if self._queue:
                    oldest = self._queue[0][0]
                    due = oldest + self.max_delay_s
                    if (
                        self._queued_rows >= self.max_rows
                        or self._queued_bytes >= self._block_bytes()
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
            rows = nbytes = 0
            cap = self._block_bytes()
            while self._queue and ((rows < self.max_rows and nbytes < cap) or not block):
                _, entry = self._queue.popleft()
                block.append(entry)
                rows += entry.count
                nbytes += entry.nbytes
            self._queued_rows -= rows
            self._queued_bytes -= nbytes
            if not self._queue:
                self._urgent = False
            self._in_flight += 1
            self._flight_oldest[id(block)] = min(e.observed_ns for e in block)
            return block

    def _retrying(self, what: str, block: list[Entry], step: Callable[..., Any], *args: Any) -> Any:
        """Run ``step(*args)`` until it succeeds: storage being down must delay data, never drop it."""
        backoff = 0.1
        while True:
            try:
                result = step(*args)
                self.last_error = None
                return result
            except Exception as exc:
                self.last_error = str(exc)
                log.exception("%s block %d..%d failed; retrying", what, block[0].lsn, block[-1].lsn)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _prepare_isolating(self, block: list[Entry]) -> dict[str, Any]:
        """Prepare a block; an entry that fails by its data alone is set aside, not retried for ever.

        Storage being away is retried without end (:meth:`_retrying`), but preparing is the
        pipeline's work on the entries themselves: an entry whose data the code cannot handle
        (a bug, or a value nobody thought of) fails the same way every time, and blocked every
        entry behind it, across restarts, because the WAL replays it first. After three failures
        with a data error, each entry is prepared alone; those that still fail are written to
        ``<wal>/quarantine/`` as they were received (re-sendable) and logged, and the rest go on.
        Any other failure (a worker process lost, no memory) is retried as before.
        """
        backoff = 0.1
        failures = 0
        while True:
            try:
                result = self._prepare_block(block)
                self.last_error = None
                return result
            except Exception as exc:
                self.last_error = str(exc)
                log.exception("preparing block %d..%d failed; retrying", block[0].lsn, block[-1].lsn)
                failures = failures + 1 if isinstance(exc, _DATA_ERRORS) else 0
                if failures >= 3:
                    kept = [e for e in block if not self._poisoned(e)]
                    if len(kept) < len(block):
                        return self._retrying("preparing", block, self._prepare_block, kept) if kept else {}
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _poisoned(self, entry: Entry) -> bool:
        """Prepare ``entry`` alone; on a data error, quarantine it and say so."""
        try:
            self._prepare_block([entry])
            return False
        except _DATA_ERRORS as exc:
            folder = self.wal.dir / "quarantine"
            folder.mkdir(exist_ok=True)
            path = folder / f"{entry.lsn:012d}-{entry.kind}.rec"
            with path.open("wb") as f:  # durable before the WAL is trimmed past the record
                f.write(entry.payload)
                f.flush()
                os.fsync(f.fileno())
            self.quarantined += entry.count
            log.error("WAL record %d (%s, project %s, %d events) cannot be stored: %s: %s; set aside as %s",
                      entry.lsn, entry.kind, entry.project, entry.count, type(exc).__name__, exc, path)
            return True
        except Exception:
            return False  # not the data's fault: the block is retried whole

    def _build_loop(self) -> None:
        try:
            while True:
                block = self._take_block()
                if block is None:
                    return
                started = time.monotonic()
                prepared = self._prepare_isolating(block)
                self._prepare_s[id(block)] = time.monotonic() - started
                self._ready.put((block, prepared))  # waits while the inserter is busy: backpressure
        finally:
            self._ready.put(None)

    def _insert_loop(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            block, prepared = item
            started = time.monotonic()
            self._retrying("storing", block, self._store_block, block, block[0].lsn, block[-1].lsn, prepared)
            self._measure(sum(e.nbytes for e in block), self._prepare_s.pop(id(block), 0.0),
                          time.monotonic() - started)
            with self._cond:
                self._in_flight -= 1
                self._flight_oldest.pop(id(block), None)
                self._cond.notify_all()

    def _by_kind(self, block: list[Entry]) -> dict[str, list[Entry]]:
        by_kind: dict[str, list[Entry]] = {}
        for entry in block:
            by_kind.setdefault(entry.kind, []).append(entry)
        return by_kind

    def _prepare_block(self, block: list[Entry]) -> dict[str, Any]:
        prepared: dict[str, Any] = {}
        for kind, entries in self._by_kind(block).items():
            sink = self.sinks.get(kind)
            prepared[kind] = sink.prepare(entries) if isinstance(sink, Staged) else entries
        return prepared

    def _store_block(self, block: list[Entry], a: int, b: int, prepared: dict[str, Any] | None = None) -> None:
        if prepared is None:
            prepared = self._prepare_block(block)
        cp = self._checkpoint
        cp.write(cp.committed, (a, b))
        for kind, item in prepared.items():
            sink = self.sinks.get(kind)
            if sink is None:
                log.error("no sink for WAL records of kind %r; %d records skipped", kind, len(item))
                continue
            token = f"{kind}-{a}-{b}"
            if isinstance(sink, Staged):
                sink.commit(item, token)
            else:
                sink(item, token)
        cp.write(b, None)
        self.wal.trim(b)
        nbytes = sum(e.nbytes for e in block)
        self.stored_events += sum(e.count for e in block)
        self._release(nbytes)

    def _measure(self, nbytes: int, prepare_s: float, commit_s: float) -> None:
        """Storage's capacity: a block's bytes over its slower stage's time (the two stages
        overlap). Not bytes over wall time between commits: that is the demand, and a limit
        derived from it would shrink with every slow-down and never grow back."""
        busiest = max(prepare_s, commit_s)
        if busiest > 0 and nbytes > 0:
            sample = nbytes / busiest
            rate = self._store_rate
            self._store_rate = sample if rate is None else 0.7 * rate + 0.3 * sample

    # -- observing ---------------------------------------------------------------------------

    @property
    def pending_rows(self) -> int:
        return self._queued_rows

    def stored_watermark_ns(self) -> int:
        """Every entry observed at or before this time is in storage."""
        with self._cond:
            now = time.time_ns()
            if self._queue or self._in_flight or self._arriving:
                oldest = min(
                    min((e.observed_ns for _, e in self._queue), default=now),
                    min(self._flight_oldest.values(), default=now),
                    min(self._arriving, default=now),
                )
                return oldest - 1
            return now - 1  # an arrival in this same nanosecond is not stored yet

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
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
