"""Traces benchmark: OTLP span ingest rate, compared with log ingest, and trace fetch latency.

One machine, one run:

1. **Data**: ``--spans`` spans (default 1,000,000) in traces of 2-16 spans across five services
   (web -> api -> payments/db/cache, as a small SaaS request looks), spread over the 24 h before
   now, seeded and deterministic; encoded beforehand (not timed) into OTLP protobuf
   ``ExportTraceServiceRequest`` bodies of ``--chunk`` spans, as an OpenTelemetry exporter's
   batch span processor sends them.
2. **Spans**: a fresh ``stackwatch server``; the bodies posted to ``POST /v1/traces`` by
   ``--clients`` concurrent clients. Measured: spans/s from the first request to the last
   acknowledgement, and until all spans are stored (the server's ``stored_events``).
3. **Trace fetch**: ``GET /api/v1/traces/{id}`` of ``--fetches`` random traces out of all stored
   spans, each ``--runs`` times after a warm-up; median and p95 client-side wall time (spans
   with depth and offsets, the trace's logs and errors: the whole answer). Also a trace search
   and the service map over 24 h.
4. **Logs, same machine**: a fresh server; ``--log-events`` NDJSON lines of ``gen_logs.py`` posted
   to ``POST /api/v1/logs`` the same way, to compare events/s.
5. **Layout**: with the server stopped, the same fetch in SQL on the embedded store, two ways:
   bounded by the ``trace_index`` time range (what the server does), and by trace id alone;
   median ms of each.

Results are printed and written as the ``## Traces`` section of ``docs/benchmarks.md``.
Run: ``python bench/run.py traces`` (1M spans) or ``--spans 100000 --log-events 50000`` for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
from _common import DOCS_FILE, free_port, write_section
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
STACKWATCH_BIN = str(Path(sys.executable).parent / "stackwatch")
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
INGEST_TOKEN = "bench-ingest-token-0123456789abcdef"
NS = 1_000_000_000
MS = 1_000_000


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def machine() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "cpu": model or platform.processor() or "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# --- data ----------------------------------------------------------------------------------

# (service, operation, kind, typical ms) of the calls a request makes, by caller.
_CALLS: dict[str, list[tuple[str, str, int, float]]] = {
    "web": [("api", "GET /api/leads", Span.SPAN_KIND_SERVER, 40), ("api", "POST /api/checkout", Span.SPAN_KIND_SERVER, 120)],
    "api": [
        ("db", "SELECT leads", Span.SPAN_KIND_CLIENT, 4),
        ("cache", "GET session", Span.SPAN_KIND_CLIENT, 0.5),
        ("payments", "POST /charge", Span.SPAN_KIND_SERVER, 300),
        ("db", "INSERT orders", Span.SPAN_KIND_CLIENT, 6),
    ],
    "payments": [("payments", "stripe.charge", Span.SPAN_KIND_CLIENT, 250), ("db", "UPDATE payments", Span.SPAN_KIND_CLIENT, 5)],
}
_SERVICES = ("web", "api", "payments", "db", "cache")


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def generate(spans: int, chunk: int, seed: int, days: float = 1.0) -> tuple[list[bytes], list[str], int]:
    """(request bodies, trace ids, bytes) of ``spans`` spans in whole traces over ``days``."""
    rng = random.Random(seed)
    end_ns = time.time_ns() - 60 * NS
    start_ns = end_ns - int(days * 86_400 * NS)
    by_service: dict[str, list[Span]] = {s: [] for s in _SERVICES}
    bodies: list[bytes] = []
    trace_ids: list[str] = []
    made = pending = 0
    total_bytes = 0

    def flush() -> None:
        nonlocal pending, total_bytes
        request = ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[_kv("service.name", s), _kv("deployment.environment", "prod"),
                                              _kv("telemetry.sdk.language", "python")]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name=f"{s}.instrumentation", version="1.0"),
                                        spans=by_service[s])],
            )
            for s in _SERVICES if by_service[s]
        ])
        body = request.SerializeToString()
        bodies.append(body)
        total_bytes += len(body)
        for s in _SERVICES:
            by_service[s] = []
        pending = 0

    while made < spans:
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        trace_ids.append(trace_id.hex())
        t0 = rng.randrange(start_ns, end_ns)
        budget = min(rng.randint(2, 16), spans - made)
        # Breadth-first: the root, then calls of each span's service until the budget is spent.
        root_id = rng.getrandbits(64).to_bytes(8, "big")
        root_ms = rng.lognormvariate(4, 0.6)
        queue = [("web", root_id, t0, root_ms)]
        error = rng.random() < 0.03
        by_service["web"].append(Span(
            trace_id=trace_id, span_id=root_id, name=rng.choice(["GET /", "GET /leads", "POST /checkout"]),
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=t0, end_time_unix_nano=t0 + int(root_ms * MS),
            attributes=[_kv("http.method", "GET"), _kv("http.status_code", 500 if error else 200),
                        _kv("http.route", "/leads"), _kv("user.id", rng.randrange(10_000))],
            status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
        ))
        count = 1
        while queue and count < budget:
            service, parent_id, p_start, p_ms = queue.pop(0)
            for callee, name, kind, typical in _CALLS.get(service, []):
                if count >= budget:
                    break
                span_id = rng.getrandbits(64).to_bytes(8, "big")
                ms = min(rng.lognormvariate(0, 0.7) * typical, p_ms)
                start = p_start + int(rng.random() * max(p_ms - ms, 0) * MS)
                by_service[callee if kind == Span.SPAN_KIND_SERVER else service].append(Span(
                    trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, name=name, kind=kind,
                    start_time_unix_nano=start, end_time_unix_nano=start + int(ms * MS),
                    attributes=[_kv("peer.service", callee), _kv("db.system", "postgresql")] if callee == "db"
                    else [_kv("peer.service", callee)],
                ))
                count += 1
                queue.append((callee, span_id, start, ms))
        made += count
        pending += count
        if pending >= chunk:
            flush()
    if pending:
        flush()
    return bodies, trace_ids, total_bytes


# --- server and load -----------------------------------------------------------------------


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        env = {**os.environ, "STACKWATCH_ADMIN_TOKEN": ADMIN_TOKEN, "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN}
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / "server.log"
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [STACKWATCH_BIN, "server", "--data-dir", str(data_dir), "--port", str(self.port)],
            env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = self.get("/health")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stored(self) -> int:
        return int(orjson.loads(self.get("/health")[1])["ingest"]["stored_events"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def post_all(port: int, path: str, content_type: str, bodies: list[bytes], clients: int) -> tuple[float, float, int]:
    """Post every body with ``clients`` threads; (seconds to last ack, median request ms, 429s)."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    retried = [0]
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": content_type}
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies):
                break
            while True:
                t = time.perf_counter()
                conn.request("POST", path, body=bodies[i], headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 429:
                    with lock:
                        retried[0] += 1
                    time.sleep(float(response.getheader("Retry-After") or 1))
                    continue
                if response.status >= 300:
                    errors.append(f"HTTP {response.status}")
                with lock:
                    latencies.append((time.perf_counter() - t) * 1000)
                break
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return time.perf_counter() - start, statistics.median(latencies), retried[0]


def wait_stored(server: Server, n: int, timeout: float = 900) -> float:
    start = time.perf_counter()
    while server.stored() < n:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {server.stored()} of {n} stored after {timeout} s")
        time.sleep(0.1)
    return time.perf_counter() - start


def timed_get(server: Server, path: str, runs: int) -> list[float]:
    status, body = server.get(path)  # warm-up
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        status, body = server.get(path)
        out.append((time.perf_counter() - t) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- logs for comparison -------------------------------------------------------------------


def log_bodies(events: int, chunk: int) -> list[bytes]:
    sys.path.insert(0, str(BENCH_DIR))
    import gen_logs

    cached = sorted(WORK_DIR.glob("logs-*-s42-*.ndjson"), key=lambda p: p.stat().st_size, reverse=True)
    source = next((p for p in cached if int(p.name.split("-")[1]) >= events), None)
    if source is None:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        source = WORK_DIR / f"logs-{events}-traces-bench.ndjson"
        if not source.exists():
            gen_logs.generate(source, events)
    bodies: list[bytes] = []
    lines: list[bytes] = []
    with source.open("rb") as f:
        for i, line in enumerate(f):
            if i >= events:
                break
            lines.append(line)
            if len(lines) == chunk:
                bodies.append(b"".join(lines))
                lines = []
    if lines:
        bodies.append(b"".join(lines))
    return bodies


# --- layout comparison ---------------------------------------------------------------------


def layout_compare(data_dir: Path, trace_ids: list[str], runs: int) -> dict[str, float]:
    from stackwatch.storage.executor import ChdbExecutor

    ex = ChdbExecutor(data_dir / "clickhouse")  # where the server keeps its embedded store
    db = ex.database
    bounded_sql = (
        f"WITH (SELECT (min(start_ns), max(end_ns)) FROM `{db}`.trace_index "
        "WHERE project = 'default' AND trace_id = {t:String}) AS bounds "
        f"SELECT * FROM `{db}`.spans WHERE project = 'default' AND trace_id = {{t:String}} "
        "AND start >= fromUnixTimestamp64Nano(bounds.1) AND start <= fromUnixTimestamp64Nano(bounds.2)"
    )
    unbounded_sql = f"SELECT * FROM `{db}`.spans WHERE project = 'default' AND trace_id = {{t:String}}"
    times: dict[str, list[float]] = {"index + bounded read": [], "trace id only": []}
    try:
        for tid in trace_ids:
            for _ in range(runs):
                t = time.perf_counter()
                ex.rows(bounded_sql, {"t": tid})
                times["index + bounded read"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                ex.rows(unbounded_sql, {"t": tid})
                times["trace id only"].append((time.perf_counter() - t) * 1000)
        stats = ex.rows(
            f"SELECT count() AS rows, sum(bytes_on_disk) AS bytes FROM system.parts WHERE database = '{db}' "
            "AND table = 'spans' AND active"
        )
        rows = ex.rows(f"SELECT sum(rows) AS n FROM system.parts WHERE database = '{db}' AND table = 'spans' AND active")
    finally:
        ex.close()
    out = {k: statistics.median(v) for k, v in times.items()}
    out["bytes_per_span"] = int(stats[0]["bytes"]) / max(int(rows[0]["n"]), 1)
    return out


# --- report --------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000, help="spans per OTLP request")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--log-events", type=int, default=200_000)
    parser.add_argument("--log-chunk", type=int, default=5000)
    parser.add_argument("--fetches", type=int, default=50, help="distinct traces fetched")
    parser.add_argument("--runs", type=int, default=5, help="fetches of each trace")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)

    log(f"generating {args.spans:,} spans")
    bodies, trace_ids, size = generate(args.spans, args.chunk, args.seed)
    log(f"{len(bodies)} requests, {size / 1e6:.1f} MB protobuf, {len(trace_ids):,} traces")
    tmp = Path(tempfile.mkdtemp(prefix="sw-traces-bench-"))
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    try:
        server = Server(tmp / "spans" / "data")
        try:
            cpu0 = psutil.Process(server.proc.pid).cpu_times()
            seconds, req_ms, retried = post_all(server.port, "/v1/traces", "application/x-protobuf", bodies, args.clients)
            stored_after = wait_stored(server, args.spans)
            cpu1 = psutil.Process(server.proc.pid).cpu_times()
            results["spans"] = {
                "acked_s": seconds, "stored_s": seconds + stored_after, "req_ms": req_ms, "retried": retried,
                "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            }
            log(f"spans: {args.spans / seconds:,.0f}/s acked, {args.spans / (seconds + stored_after):,.0f}/s stored")
            time.sleep(2)
            sample = random.Random(args.seed).sample(trace_ids, min(args.fetches, len(trace_ids)))
            fetch: list[float] = []
            span_counts = []
            for tid in sample:
                fetch.extend(timed_get(server, f"/api/v1/traces/{tid}", args.runs))
                span_counts.append(len(orjson.loads(server.get(f"/api/v1/traces/{tid}")[1])["spans"]))
            results["fetch"] = {"median": statistics.median(fetch), "p95": percentile(fetch, 0.95),
                                "spans": statistics.mean(span_counts)}
            search = timed_get(server, "/api/v1/traces?service=payments&min_duration=300ms&start=-25h&limit=20", 5)
            search_err = timed_get(server, "/api/v1/traces?status=error&start=-25h&limit=20", 5)
            smap = timed_get(server, "/api/v1/services/map?start=-25h", 3)
            results["search"] = statistics.median(search)
            results["search_err"] = statistics.median(search_err)
            results["map"] = statistics.median(smap)
            log(f"fetch median {results['fetch']['median']:.1f} ms, p95 {results['fetch']['p95']:.1f} ms")
        finally:
            server.stop()
        results["layout"] = layout_compare(tmp / "spans" / "data", sample[:20], 3)
        log(f"layout: {results['layout']}")

        if args.log_events:
            lbodies = log_bodies(args.log_events, args.log_chunk)
            n_logs = sum(b.count(b"\n") for b in lbodies)
            server = Server(tmp / "logs" / "data")
            try:
                seconds, req_ms, retried = post_all(server.port, "/api/v1/logs", "application/x-ndjson", lbodies, args.clients)
                stored_after = wait_stored(server, n_logs)
                results["logs"] = {"n": n_logs, "acked_s": seconds, "stored_s": seconds + stored_after, "req_ms": req_ms}
                log(f"logs: {n_logs / seconds:,.0f}/s acked, {n_logs / (seconds + stored_after):,.0f}/s stored")
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results["load_after"] = os.getloadavg()[0]
    section = report(args, results, size, len(trace_ids))
    print(section)
    if not args.no_docs:
        write_section("Traces", section)
        log(f"wrote the Traces section of {DOCS_FILE}")
    return 0


def report(args: argparse.Namespace, r: dict[str, Any], size: int, traces: int) -> str:
    from importlib.metadata import version

    m = machine()
    s = r["spans"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"python bench/run.py traces --spans {args.spans} --log-events {args.log_events}"
    lines = [
        "## Traces", "",
        f"Run on {when} with `{cmd}`.", "",
        f"- **Data**: {args.spans:,} spans in {traces:,} traces (2-16 spans, five services, over the last 24 h; "
        f"seed {args.seed}), {size / 1e6:.1f} MB of OTLP protobuf in requests of {args.chunk:,} spans.",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, {m['os']}, Python {m['python']}; "
        f"shared with other work while it ran (1-minute load average {r['load_before']:.1f} at the start, "
        f"{r['load_after']:.1f} at the end, on {m['nproc']} CPUs), so every figure here is pessimistic.",
        f"- **Versions**: stackwatch {version('stackwatch')} (chDB {version('chdb')}).",
        f"- **Load**: {args.clients} concurrent HTTP clients, one server process, embedded store.", "",
        "| metric | value | target |", "|---|--:|---|",
        f"| span ingest, spans/s (first request → last ack) | {args.spans / s['acked_s']:,.0f} | |",
        f"| span ingest, spans/s (first request → all stored) | {args.spans / s['stored_s']:,.0f} | |",
    ]
    if "logs" in r:
        lg = r["logs"]
        lines += [
            f"| log ingest (NDJSON, same machine), events/s → last ack | {lg['n'] / lg['acked_s']:,.0f} | |",
            f"| log ingest (NDJSON, same machine), events/s → all stored | {lg['n'] / lg['stored_s']:,.0f} | |",
            f"| spans / logs, acked rate | {(args.spans / s['acked_s']) / (lg['n'] / lg['acked_s']):.2f}x | |",
        ]
    f = r["fetch"]
    target = "pass" if f["median"] < 50 else "**fail**"
    lines += [
        f"| fetch one trace of {args.spans:,} spans (`GET /api/v1/traces/{{id}}`), median ms | "
        f"{f['median']:.1f} | < 50 ms: {target} |",
        f"| the same, p95 ms | {f['p95']:.1f} | |",
        f"| the spans read alone (SQL on the embedded store, server stopped), median ms | "
        f"{r['layout']['index + bounded read']:.1f} | |",
        f"| trace search `service=payments&min_duration=300ms`, 24 h, median ms | {r['search']:.1f} | |",
        f"| trace search `status=error`, 24 h, median ms | {r['search_err']:.1f} | |",
        f"| service map, 24 h, median ms | {r['map']:.1f} | |",
        f"| spans on disk, bytes/span (active parts) | {r['layout']['bytes_per_span']:.1f} | |",
        "",
        "Details:", "",
        f"- Spans: {args.spans:,} in {s['acked_s']:.2f} s to the last ack, {s['stored_s']:.2f} s until stored; "
        f"request latency median {s['req_ms']:.0f} ms; {s['retried']} answers 429; server CPU {s['cpu_s']:.1f} s. "
        "Each span is decoded, written to the WAL, inserted with its trace-index row, and counted into the "
        "`traces_spanmetrics_*` series.",
        f"- Fetch: {args.fetches} random traces (mean {f['spans']:.1f} spans) x {args.runs} runs after a warm-up, "
        "client-side wall time of the whole answer (spans in waterfall order, the trace's logs and errors). "
        "Besides the spans read it runs the trace's log search and error lookup (two more queries on the "
        "embedded engine, which runs one query at a time, shared with background merges), authentication "
        "and JSON encoding; on a loaded machine most of the difference to the SQL figure is waiting for a CPU.",
        "- Layout (server stopped, the same fetch in SQL on the embedded store, median of 20 traces x 3): "
        f"`spans` bounded by the `trace_index` time range (one statement, as the server does) {r['layout']['index + bounded read']:.1f} ms; "
        f"`spans` by trace id alone, without the hours from `trace_index` (every hour's key range is "
        f"searched for the id) {r['layout']['trace id only']:.1f} ms.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
