"""Metrics ingest and storage: samples/s through the server, bytes/sample on disk, vs Prometheus's TSDB.

``python bench/run.py metrics [--series 1000] [--hours 24] [--rw-steps 240] [--no-prometheus]``

* Data: ``--series`` series at 15 s for ``--hours`` (default 1,000 x 24 h = 5.76 M samples), the
  mix of a web app's exposition: request counters (fast and slow), histogram buckets, memory
  gauges moving in 4 KiB pages, few-valued gauges (up, pool sizes), and float-noise gauges
  (ratios, averages), with a few milliseconds of scrape jitter on every timestamp.
* Import: the whole set through ``POST /api/v1/import/prometheus`` (classic text, ms timestamps),
  4 concurrent clients, chunks of 50 series; samples/s from the first request to the moment all
  are queryable.
* Remote write: ``--rw-steps`` scrapes of every series as a steady-state Prometheus sends them
  (one sample per series per request, snappy protobuf), 4 concurrent clients; samples/s to the
  last acknowledgement.
* Bytes/sample: active parts of ``metric_samples`` after ``OPTIMIZE FINAL`` (the server is stopped
  and its store opened here), and the same data written by ``promtool tsdb
  create-blocks-from openmetrics`` (Prometheus's TSDB blocks, ``du``), when promtool is installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ADMIN = "swa_bench_admin_token_0123456789"
INGEST = "swi_bench_ingest_token_0123456789"
STEP_MS = 15_000


def log(message: str) -> None:
    sys.stderr.write(f"[metrics-bench] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(series: int, steps: int, t0_ms: int, seed: int = 42) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(series text ``name{labels}``, timestamps [series, steps], values [series, steps])."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    ts = np.empty((series, steps), dtype=np.int64)
    vals = np.empty((series, steps), dtype=np.float64)
    base = t0_ms + np.arange(steps, dtype=np.int64) * STEP_MS
    kinds = ["req_fast", "req_slow", "bucket", "bucket", "mem", "few", "noise", "req_fast", "bucket", "few"]
    for i in range(series):
        kind = kinds[i % len(kinds)]
        inst = f"web-{i % 20}"
        route = f"/api/r{i // 20 % 25}"
        ts[i] = base + rng.integers(0, 1000) + rng.integers(-3, 4, steps)
        rate = rng.uniform(0.5, 40) * (1 + 0.5 * np.sin(np.arange(steps) / 400 + i))
        if kind == "req_fast":
            names.append(f'http_requests_total{{instance="{inst}",route="{route}",code="200",s="{i}"}}')
            vals[i] = np.cumsum(rng.poisson(rate * 15))
        elif kind == "req_slow":
            names.append(f'http_requests_total{{instance="{inst}",route="{route}",code="500",s="{i}"}}')
            vals[i] = np.cumsum(rng.poisson(rate * 0.05))
        elif kind == "bucket":
            names.append(f'http_request_duration_seconds_bucket{{instance="{inst}",route="{route}",le="0.{i % 9 + 1}",s="{i}"}}')
            vals[i] = np.cumsum(rng.poisson(rate * 3))
        elif kind == "mem":
            names.append(f'process_resident_memory_bytes{{instance="{inst}",s="{i}"}}')
            vals[i] = 2e8 + np.cumsum(rng.integers(-20, 21, steps)) * 4096
        elif kind == "few":
            names.append(f'db_pool_connections{{instance="{inst}",s="{i}"}}')
            vals[i] = rng.choice([8.0, 9.0, 10.0, 12.0], steps, p=[0.7, 0.2, 0.05, 0.05])
        else:
            names.append(f'cpu_utilization_ratio{{instance="{inst}",s="{i}"}}')
            vals[i] = np.abs(rng.normal(0.3, 0.08, steps))
    return names, ts, vals


def _fmt(v: float) -> str:
    return repr(v) if v != int(v) else str(int(v))


def text_chunks(names: list[str], ts: np.ndarray, vals: np.ndarray, per_chunk: int) -> list[bytes]:
    out = []
    for a in range(0, len(names), per_chunk):
        lines = []
        for i in range(a, min(a + per_chunk, len(names))):
            prefix = names[i] + " "
            lines.extend(f"{prefix}{_fmt(v)} {t}" for t, v in zip(ts[i].tolist(), vals[i].tolist(), strict=True))
        out.append(("\n".join(lines) + "\n").encode())
    return out


class Server:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "STACKWATCH_ADMIN_TOKEN": ADMIN, "STACKWATCH_INGEST_TOKEN": INGEST}
        self.log = (data.parent / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stackwatch.cli", "server", "--data-dir", str(data), "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


def post_all(url: str, bodies: list[bytes], headers: dict[str, str], clients: int = 4) -> float:
    local = threading.local()

    def send(body: bytes) -> None:
        if not hasattr(local, "client"):  # one connection per sender, as Prometheus's shards keep
            local.client = httpx.Client(timeout=300)
        for _ in range(100):
            r = local.client.post(url, content=body, headers=headers)
            if r.status_code == 429:
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status_code not in (200, 204):
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            return

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - start


def wait_count(url: str, query: str, t_s: float, expected: float, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(url + "/api/v1/query", params={"query": query, "time": t_s},
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        result = r.json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= expected:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{query} never reached {expected}")


def stackwatch_bytes(data: Path) -> tuple[int, int]:
    from stackwatch.storage.executor import ChdbExecutor

    ex = ChdbExecutor(data / "clickhouse")
    try:
        ex.command("OPTIMIZE TABLE stackwatch.metric_samples FINAL")
        row = ex.rows("SELECT sum(rows) AS r, sum(bytes_on_disk) AS b FROM system.parts "
                      "WHERE database = 'stackwatch' AND table = 'metric_samples' AND active")[0]
        return int(row["r"]), int(row["b"])
    finally:
        ex.close()


def promtool_bytes(names: list[str], ts: np.ndarray, vals: np.ndarray, work: Path) -> int | None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    path = work / "data.om"
    with path.open("w") as f:
        # OpenMetrics needs each family's samples together and timestamps in seconds.
        for i in np.argsort(np.array([n.split("{")[0] for n in names]), kind="stable").tolist():
            prefix = names[i] + " "
            f.writelines(f"{prefix}{_fmt(v)} {t / 1000:.3f}\n" for t, v in zip(ts[i].tolist(), vals[i].tolist(),
                                                                               strict=True))
        f.write("# EOF\n")
    out = work / "tsdb"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(out)],
                   check=True, capture_output=True)
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and "chunks" in p.parts)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--rw-steps", type=int, default=240)
    ap.add_argument("--no-prometheus", action="store_true")
    ap.add_argument("--clients", type=int, default=4, help="concurrent remote-write senders")
    args = ap.parse_args(argv)
    steps = int(args.hours * 3600 * 1000 // STEP_MS)
    now_ms = int(time.time() * 1000) // 86_400_000 * 86_400_000
    t0 = now_ms - steps * STEP_MS
    log(f"generating {args.series} series x {steps} samples")
    names, ts, vals = generate(args.series, steps, t0)
    total = args.series * steps
    work = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    try:
        bodies = text_chunks(names, ts, vals, 50)
        log(f"{total:,} samples in {len(bodies)} import bodies, {sum(map(len, bodies)) / 1e6:.0f} MB of text")
        server = Server(work / "data")
        try:
            start = time.perf_counter()
            acked = post_all(server.url + "/api/v1/import/prometheus", bodies, {"Authorization": f"Bearer {INGEST}"})
            wait_count(server.url, "count(http_requests_total) + count(cpu_utilization_ratio) "
                       "+ count(db_pool_connections) + count(process_resident_memory_bytes) "
                       "+ count(http_request_duration_seconds_bucket)", (t0 + (steps - 1) * STEP_MS) / 1000 + 1,
                       args.series)
            stored = time.perf_counter() - start
            log(f"import: acked in {acked:.1f} s ({total / acked:,.0f} samples/s); queryable after {stored:.1f} s "
                f"({total / stored:,.0f} samples/s)")
        finally:
            server.stop()
        rows, nbytes = stackwatch_bytes(work / "data")
        log(f"stackwatch: {rows:,} samples, {nbytes:,} bytes, {nbytes / rows:.3f} bytes/sample")
        if args.rw_steps:
            from stackwatch.ingest.prom_remote import TimeSeries, compress, encode_write_request
            from stackwatch.ingest.prom_text import _parse_series

            parsed = [_parse_series(n) for n in names]
            reqs = []
            for k in range(args.rw_steps):
                series = [TimeSeries([("__name__", name), *labels], [int(now_ms + k * STEP_MS + i)],
                                     [float(vals[i, k % steps])]) for i, (name, labels) in enumerate(parsed)]
                reqs.append(compress(encode_write_request(series)))
            headers = {"Authorization": f"Bearer {INGEST}", "Content-Encoding": "snappy",
                       "Content-Type": "application/x-protobuf"}
            server = Server(work / "rw")
            try:
                rw_s = post_all(server.url + "/api/v1/write", reqs, headers, args.clients)
                log(f"remote write: {args.series * args.rw_steps:,} samples acked in {rw_s:.1f} s "
                    f"({args.series * args.rw_steps / rw_s:,.0f} samples/s, {args.series} samples per request)")
            finally:
                server.stop()
        if not args.no_prometheus:
            pbytes = promtool_bytes(names, ts, vals, work)
            if pbytes is not None:
                log(f"prometheus tsdb (promtool backfill): {pbytes:,} bytes of chunks, {pbytes / total:.3f} bytes/sample")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
