"""Pipeline worker processes build the same blocks as the server process would."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import orjson
import pytest

from stackwatch.ingest.batcher import Entry
from stackwatch.ingest.workers import BlockBuilder, _split


def entries(n_requests: int, per_request: int) -> list[Entry]:
    out = []
    for r in range(n_requests):
        events = [
            {"timestamp": f"2026-01-01T00:{r % 60:02d}:{i % 60:02d}.000Z", "level": "WARNING", "service": "api",
             "message": f"slow request {r}-{i} for jane.doe@example.com", "context": {"duration": i, "ok": i % 2 == 0}}
            for i in range(per_request)
        ]
        out.append(Entry.create("logs", "default", events, 1_767_225_600 * 10**9 + r, {"host": "web-1"}))
    return out


def test_worker_blocks_equal_in_process_blocks() -> None:
    block = entries(6, 1000)
    payloads, counts = [e.payload for e in block], [e.count for e in block]
    local = BlockBuilder({}, workers=0)
    pooled = BlockBuilder({}, workers=2)
    try:
        expected = local.build(payloads, counts)
        got = pooled.build(payloads, counts)
        assert got.num_rows == 6000
        assert got.equals(expected)
        messages = got.column("message").to_pylist()
        assert messages[0] == "slow request 0-0 for j***@example.com"
        assert got.column("host").to_pylist()[0] == "web-1"
    finally:
        local.close()
        pooled.close()


def test_a_dead_worker_is_replaced() -> None:
    block = entries(4, 1000)
    payloads, counts = [e.payload for e in block], [e.count for e in block]
    pooled = BlockBuilder({}, workers=2)
    try:
        assert pooled.build(payloads, counts).num_rows == 4000
        pool = pooled._get_pool()
        for pid in list(pool._processes):  # the OOM killer picks a worker
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            pooled.build(payloads, counts)
        assert pooled.build(payloads, counts).num_rows == 4000  # the batcher's retry succeeds
    finally:
        pooled.close()


def test_split_keeps_order_and_balances() -> None:
    payloads = [orjson.dumps(i) for i in range(10)]
    chunks = _split(payloads, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 3)
    assert [p for c in chunks for p in c] == payloads
    assert len(chunks) == 3
    assert _split(payloads[:1], [5], 4) == [payloads[:1]]
