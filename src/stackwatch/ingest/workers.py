"""Pipeline worker processes: the CPU-heavy part of log ingest, beside the server process.

The server process answers HTTP, writes the WAL and inserts blocks; parsing, normalizing,
redacting and building the columnar block is pure Python work that would otherwise share one
core (and one GIL) with it. Workers receive WAL payloads (already-encoded bytes, so nothing is
pickled per event) and return an Arrow IPC stream, which the server reads without copying.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from stackwatch.pipeline.pipeline import Pipeline, PipelineConfig

__all__ = ["BlockBuilder", "build_block"]

log = logging.getLogger("stackwatch.ingest")

_pipeline: Pipeline | None = None


def _exit_with_the_server() -> None:
    """End this worker when the server process ends, however it ends.

    A pool worker waits on its call queue, whose writing end it holds itself, so it never sees
    the server go: killed (SIGKILL, the OOM killer), the server would leave its workers and
    their forkserver running for good. The parent's sentinel becomes ready when the server's
    end of the pipe closes, which the kernel does on any exit.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


def _init_worker(config: dict[str, Any]) -> None:
    global _pipeline
    _exit_with_the_server()
    _pipeline = Pipeline(PipelineConfig.from_dict(config))
    # The modules, the compiled rules and the pipeline live as long as the worker: frozen, the
    # full collections the batches trigger stop walking them (measured in-process on 200,000
    # lines: 0.43 -> 0.01 us a line of collection, the whole build 6.8 -> 6.3 us a line).
    gc.collect()
    gc.freeze()


def build_block(pipeline: Pipeline, payloads: Sequence[bytes]) -> pa.Table:
    """WAL payloads of ``logs`` records -> one Arrow block in the logs table's columns."""
    tables = []
    for payload in payloads:
        body = orjson.loads(payload)
        tables.append(
            pipeline.process_to_arrow(body["e"], project=body["p"], observed_ns=body["o"], defaults=body["d"])
        )
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _worker_build(payloads: list[bytes]) -> bytes:
    assert _pipeline is not None, "worker not initialised"
    table = build_block(_pipeline, payloads)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


class BlockBuilder:
    """Turns payloads into blocks, in ``workers`` processes (0: in this process)."""

    def __init__(self, config: dict[str, Any], workers: int) -> None:
        self.config = config
        self.workers = workers
        self._local = Pipeline(PipelineConfig.from_dict(config))
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # forkserver: the server process has threads (WAL writer, batcher, the embedded
                # engine's), and forking a threaded process can copy a held lock into the child.
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["stackwatch.ingest.workers"])
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self.config,)
                )
            return self._pool

    def build(self, payloads: Sequence[bytes], counts: Sequence[int]) -> pa.Table:
        if self.workers <= 0 or sum(counts) < 2000:
            return build_block(self._local, payloads)
        chunks = _split(payloads, counts, self.workers)
        pool = self._get_pool()
        try:
            futures = [pool.submit(_worker_build, chunk) for chunk in chunks]
            tables = [pa.ipc.open_stream(f.result()).read_all() for f in futures]
        except concurrent.futures.process.BrokenProcessPool:
            # A worker died (OOM killer, a crash): start a fresh pool; the batcher retries.
            log.error("a pipeline worker died; restarting the worker pool")
            with self._lock:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _split(payloads: Sequence[bytes], counts: Sequence[int], parts: int) -> list[list[bytes]]:
    """Split into at most ``parts`` runs of similar event counts, keeping order."""
    target = sum(counts) / parts
    chunks: list[list[bytes]] = [[]]
    filled = 0
    for payload, count in zip(payloads, counts, strict=True):
        if filled >= target and len(chunks) < parts:
            chunks.append([])
            filled = 0
        chunks[-1].append(payload)
        filled += count
    return [c for c in chunks if c]
