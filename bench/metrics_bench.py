"""Metrics: ingest samples/s, bytes/sample and dashboard query_range latency vs Prometheus and VictoriaMetrics.

``python bench/run.py metrics [--series 10000] [--hours 24] [--runs 3] [--rw-steps 240] [--no-peers]``

* Data: ``tests/query/promgen.py``'s fleet (the data the PromQL comparison test uses), scaled to
  about ``--series`` series over ``--hours`` at 15 s: request counters by route/method/code
  (an instance restarts: counter reset), classic latency histograms with ``_sum``/``_count``,
  gauges (memory, CPU, queue depth with a 12 min gap), two incidents (5xx and latency bursts).
* Stackwatch, one server process: the whole set through ``POST /api/v1/import/prometheus``
  (text, ms timestamps, 4 concurrent clients, bodies of ~100,000 samples), samples/s from the first
  request to the moment all are queryable (a count over everything, once ``/health`` shows the
  ingest buffer empty, as VictoriaMetrics's count follows its force-flush); remote write: ``--rw-steps`` scrapes of every series
  as a steady-state Prometheus sends them (one sample per series per request, snappy protobuf),
  samples/s to the last acknowledgement. Bytes/sample: active parts of ``metric_samples`` after
  ``OPTIMIZE FINAL``.
* Prometheus (Debian package): ``promtool tsdb create-blocks-from openmetrics`` (its backfill),
  samples/s of that command, bytes/sample of the blocks (chunks + index), then a server on them.
* VictoriaMetrics (Debian package ``victoria-metrics``): the same text bodies through its
  ``/api/v1/import/prometheus``, samples/s until all are queryable, bytes/sample of its data
  directory after a flush.
* Queries: the five dashboard queries of :data:`DASHBOARD` as ``query_range`` over the whole
  range at a 60 s step, interleaved: each round sends every query to each system in turn
  (Prometheus, VictoriaMetrics with caches off, Stackwatch), ``--runs`` rounds, medians; once
  with Stackwatch's numpy engine and once with SQL pushdown. Stackwatch's answer must equal
  Prometheus's within 1e-9 relative (topk: the same values per step, ties aside).
* ``--keep DIR`` keeps the stores; ``--queries-only DIR`` re-runs just the queries on them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "query"))
from _common import free_port
from promgen import Dataset, generate  # the comparison test's data, scaled up

ADMIN = "swa_bench_admin_token_0123456789"
INGEST = "swi_bench_ingest_token_0123456789"
STEP_MS = 15_000


def log(message: str) -> None:
    sys.stderr.write(f"[metrics-bench] {message}\n")
    sys.stderr.flush()


class Server:
    def __init__(self, data: Path, env: dict[str, str] | None = None) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "STACKWATCH_ADMIN_TOKEN": ADMIN, "STACKWATCH_INGEST_TOKEN": INGEST, **(env or {})}
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


DASHBOARD = {
    "rate by route": "sum by (route) (rate(http_requests_total[5m]))",
    "5xx ratio": 'sum by (route) (rate(http_requests_total{code=~"5.."}[5m])) / sum by (route) (rate(http_requests_total[5m]))',
    "p95 by route": "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))",
    "avg gauge by instance": "avg by (instance) (process_resident_memory_bytes)",
    "topk 5": "topk(5, sum by (instance, route) (rate(http_requests_total[5m])))",
}


def scaled(series: int, hours: float, t0_ms: int) -> Dataset:
    """promgen's fleet with about ``series`` series: 6 routes x 15 + 5 = 95 series per target."""
    routes = 6 if series >= 500 else 4
    per_target = routes * 15 + 5
    targets = max(1, round(series / per_target))
    jobs = min(4, targets)
    return generate(jobs=jobs, instances=max(1, targets // jobs), routes=routes, hours=hours, t0_ms=t0_ms)


def text_bodies(data: Dataset) -> list[bytes]:
    """Bodies of about 100,000 samples (~12 MB), under the server's 32 MB request limit."""
    n = len(data.series)
    per_chunk = max(1, 100_000 // max(1, max(t.size for t in data.timestamps)))
    return ["".join(data.exposition(range(a, min(a + per_chunk, n)))).encode() for a in range(0, n, per_chunk)]


def count_query(data: Dataset) -> str:
    return " + ".join(f"sum(count_over_time({n}[{int((data.t_end_ms - data.t0_ms) / 3600000) + 1}h]))"
                      for n in sorted({s[0] for s in data.series}))


def wait_stored(url: str, timeout: float = 1800) -> None:
    """Wait until Stackwatch's ingest buffer is empty: every acknowledged sample is in storage.

    The counterpart of VictoriaMetrics's ``/internal/force_flush`` before the count that checks
    the result: polling that count every second instead (a GROUP BY over every sample, 2.3 s on
    the 54 M-sample store) competed with the ingest for the CPU and found the end up to a poll
    late.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ingest = httpx.get(url + "/health", timeout=60).json()["ingest"]
        if ingest["buffered_bytes"] == 0 and ingest["pending_rows"] == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("the ingest buffer did not drain")


def wait_samples(url: str, data: Dataset, headers: dict[str, str], timeout: float = 1800) -> None:
    """Poll until every sample is queryable (ingest is asynchronous after the acknowledgement)."""
    deadline = time.monotonic() + timeout
    got = 0.0
    while time.monotonic() < deadline:
        r = httpx.get(url + "/api/v1/query", params={"query": count_query(data), "time": data.t_end_ms / 1000,
                                                      "nocache": 1}, headers=headers, timeout=600)
        if r.status_code == 200:
            result = r.json()["data"]["result"]
            got = float(result[0]["value"][1]) if result else 0.0
            if got >= data.samples:
                return
        time.sleep(1)
    raise RuntimeError(f"only {got:,.0f} of {data.samples:,} samples became queryable")


def dir_bytes(path: Path, only: str | None = None) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and (only is None or only in p.parts))


def same_result(ours: dict, theirs: dict, rel: float = 1e-9, ties: bool = False) -> str | None:
    """None if both query_range results have the same series, timestamps and values (NaN == NaN).

    ``ties``: topk/bottomk may keep a different one of *equal* values (which one is an artefact
    of the heap and of summation order), so compare each step's sorted values instead.
    """

    def close(x: float, y: float) -> bool:
        return x == y or (np.isnan(x) and np.isnan(y)) or abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-12

    def norm(d: dict) -> dict:
        return {tuple(sorted(s["metric"].items())): [(float(t), float(v)) for t, v in s["values"]] for s in d["result"]}

    a, b = norm(ours), norm(theirs)
    if ties:
        def by_step(m: dict) -> dict:
            out: dict = {}
            for pts in m.values():
                for t, v in pts:
                    out.setdefault(t, []).append(v)
            return {t: sorted(v) for t, v in out.items()}

        sa, sb = by_step(a), by_step(b)
        if set(sa) != set(sb):
            return "steps differ"
        for t in sa:
            if len(sa[t]) != len(sb[t]) or not all(close(x, y) for x, y in zip(sa[t], sb[t], strict=True)):
                return f"@ {t}: {sa[t]} != {sb[t]}"
        return None
    if set(a) != set(b):
        return f"series differ: {len(a)} vs {len(b)}"
    for k in a:
        if [t for t, _ in a[k]] != [t for t, _ in b[k]]:
            return f"timestamps differ for {dict(k)}"
        for (t, x), (_, y) in zip(a[k], b[k], strict=True):
            if not close(x, y):
                return f"{dict(k)} @ {t}: {x!r} != {y!r}"
    return None


class Prometheus:
    def __init__(self, tsdb: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tsdb.parent / "prometheus.yml"
        config.write_text("global:\n  evaluation_interval: 1m\n")
        self.log = (tsdb.parent / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}", "--storage.tsdb.retention.time=100y",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        _wait_http(self.url + "/-/ready", self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


class Victoria:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data.parent / "victoria.log").open("ab")
        self.proc = subprocess.Popen(
            ["victoria-metrics", f"-storageDataPath={data}", "-retentionPeriod=100y",
             f"-httpListenAddr=127.0.0.1:{self.port}", "-search.disableCache", "-search.maxSamplesPerQuery=1000000000",
             "-search.maxPointsPerTimeseries=100000"],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_http(self.url + "/health", self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def remote_write_rate(data: Dataset, work: Path, steps: int, clients: int) -> float:
    from stackwatch.ingest.prom_remote import TimeSeries, compress, encode_write_request

    now_ms = int(time.time() * 1000)
    reqs = []
    for k in range(steps):
        series = [TimeSeries([("__name__", name), *labels], [now_ms - (steps - k) * 15_000 + i % 1000],
                             [float(data.values[i][k % data.values[i].size])])
                  for i, (name, labels) in enumerate(data.series)]
        reqs.append(compress(encode_write_request(series)))
    headers = {"Authorization": f"Bearer {INGEST}", "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    server = Server(work / "rw")
    try:
        rw_s = post_all(server.url + "/api/v1/write", reqs, headers, clients)
    finally:
        server.stop()
    n = len(data.series) * steps
    log(f"stackwatch remote write: {n:,} samples acked in {rw_s:.1f} s ({n / rw_s:,.0f} samples/s, "
        f"{len(data.series)} samples per request)")
    return n / rw_s


def compare_queries(work: Path, data: Any, runs: int, results: dict, peers: bool = True) -> None:
    """The dashboard queries on every system, interleaved, so load drifts hit all alike.

    Prometheus and VictoriaMetrics stay up; Stackwatch runs twice on the same store (one
    embedded store opens in one process at a time): with the numpy engine, then with SQL
    pushdown. Each round sends every query to each running system in turn; medians over
    ``runs`` rounds, ratios against the peers' medians of the same phase. Stackwatch's answers
    must equal Prometheus's (topk: the same values per step, ties aside).
    """
    stops = []
    peer_systems: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {}
    try:
        if peers:
            p = Prometheus(work / "tsdb")
            stops.append(p.stop)
            peer_systems["prometheus"] = (p.url, {}, {})
            v = Victoria(work / "vm")
            stops.append(v.stop)
            peer_systems["victoriametrics"] = (v.url, {}, {"nocache": "1"})
        for mode, env in (("numpy", "0"), ("pushdown", "1")):
            srv = Server(work / "data", {"STACKWATCH_QUERY_PUSHDOWN": env})
            try:
                systems = {**peer_systems,
                           "stackwatch": (srv.url, {"Authorization": f"Bearer {ADMIN}"}, {})}
                times, bodies = _interleaved(systems, data, runs)
            finally:
                srv.stop()
            for qname in DASHBOARD:
                med = {sname: float(np.median(times[(sname, qname)])) for sname in systems}
                ours = med["stackwatch"]
                results[f"stackwatch-{mode} {qname}"] = ours
                line = f"query {qname!r} ({mode}): stackwatch {ours:.3f} s"
                if peers:
                    results[f"prometheus ({mode} phase) {qname}"] = med["prometheus"]
                    results[f"victoriametrics ({mode} phase) {qname}"] = med["victoriametrics"]
                    diff = same_result(bodies[("stackwatch", qname)], bodies[("prometheus", qname)],
                                       ties=qname.startswith("topk"))
                    line += (f", prometheus {med['prometheus']:.3f} s (ratio {ours / med['prometheus']:.2f}), "
                             f"victoriametrics {med['victoriametrics']:.3f} s "
                             f"(ratio {ours / med['victoriametrics']:.2f}); "
                             f"{'equal to Prometheus' if diff is None else 'DIFFERENT from Prometheus: ' + diff}")
                log(line)
    finally:
        for stop in reversed(stops):
            stop()


SETTLE_S = 0.5
"""Pause before each timed query (see _interleaved)."""


def _interleaved(systems: dict, data: Any, runs: int) -> tuple[dict, dict]:
    times: dict[tuple[str, str], list[float]] = {}
    bodies: dict[tuple[str, str], dict] = {}
    clients = {name: httpx.Client(base_url=url, headers=h, timeout=1800) for name, (url, h, _) in systems.items()}
    names = list(systems)
    try:
        for rnd in range(runs):
            for qname, q in DASHBOARD.items():
                # Each round starts with another system, and each request waits for the machine to
                # settle: a Go collector finishing after Prometheus's answer must not be billed
                # to whichever system is asked next on two cores.
                for sname in names[rnd % len(names):] + names[: rnd % len(names)]:
                    extra = systems[sname][2]
                    time.sleep(SETTLE_S)
                    t = time.perf_counter()
                    r = clients[sname].post("/api/v1/query_range", data={
                        "query": q, "start": data.t0_ms / 1000, "end": data.t_end_ms / 1000, "step": 60, **extra})
                    times.setdefault((sname, qname), []).append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise RuntimeError(f"{sname} {qname}: {r.status_code} {r.text[:300]}")
                    bodies[(sname, qname)] = r.json()["data"]
    finally:
        for c in clients.values():
            c.close()
    return times, bodies


@dataclass
class Span:
    """The time range of a kept run's data (what the queries need of the data set)."""

    t0_ms: int
    t_end_ms: int


def queries_only(work: Path, runs: int) -> int:
    """Re-run the query comparison on a directory kept by ``--keep`` (no ingest)."""
    meta = json.loads((work / "bench.json").read_text())
    results: dict[str, object] = {}
    compare_queries(work, Span(meta["t0_ms"], meta["t_end_ms"]), runs, results, (work / "tsdb").exists())
    log(f"results: {results}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--runs", type=int, default=3, help="runs of each dashboard query per system (median)")
    ap.add_argument("--rw-steps", type=int, default=240)
    ap.add_argument("--clients", type=int, default=4, help="concurrent senders")
    ap.add_argument("--no-peers", action="store_true", help="Stackwatch only (no Prometheus, VictoriaMetrics)")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    ap.add_argument("--queries-only", type=Path, help="only the queries, on a directory kept by --keep")
    args = ap.parse_args(argv)
    if args.queries_only:
        return queries_only(args.queries_only, args.runs)
    t0 = (int(time.time() * 1000) // 3_600_000 - int(np.ceil(args.hours)) - 2) * 3_600_000
    data = scaled(args.series, args.hours, t0)
    total = data.samples
    log(f"{len(data.series):,} series, {total:,} samples over {args.hours} h")
    work = args.keep or Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench.json").write_text(json.dumps({"t0_ms": data.t0_ms, "t_end_ms": data.t_end_ms,
                                                 "series": len(data.series), "samples": total}))
    results: dict[str, object] = {"series": len(data.series), "samples": total}
    try:
        bodies = text_bodies(data)
        log(f"{len(bodies)} import bodies, {sum(map(len, bodies)) / 1e6:.0f} MB of text")
        auth = {"Authorization": f"Bearer {ADMIN}"}
        server = Server(work / "data")
        try:
            start = time.perf_counter()
            acked = post_all(server.url + "/api/v1/import/prometheus", bodies, {"Authorization": f"Bearer {INGEST}"},
                             args.clients)
            wait_stored(server.url)
            wait_samples(server.url, data, auth)
            stored = time.perf_counter() - start
            log(f"stackwatch import: acked in {acked:.1f} s ({total / acked:,.0f} samples/s); queryable after "
                f"{stored:.1f} s ({total / stored:,.0f} samples/s)")
            results["sw_import"] = total / stored
        finally:
            server.stop()
        rows, nbytes = stackwatch_bytes(work / "data")
        log(f"stackwatch: {rows:,} samples, {nbytes:,} bytes, {nbytes / rows:.3f} bytes/sample")
        results["sw_bps"] = nbytes / rows
        if args.rw_steps:
            results["sw_rw"] = remote_write_rate(data, work, args.rw_steps, args.clients)
        if not args.no_peers:
            om = work / "data.om"
            with om.open("w") as f:
                f.writelines(data.openmetrics())
            start = time.perf_counter()
            subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(work / "tsdb")],
                           check=True, capture_output=True)
            secs = time.perf_counter() - start
            om.unlink()
            pbytes = dir_bytes(work / "tsdb")
            log(f"prometheus backfill (promtool): {secs:.1f} s ({total / secs:,.0f} samples/s); "
                f"{pbytes:,} bytes ({pbytes / total:.3f} bytes/sample, chunks {dir_bytes(work / 'tsdb', 'chunks') / total:.3f})")
            results.update(prom_import=total / secs, prom_bps=pbytes / total)
            v = Victoria(work / "vm")
            try:
                start = time.perf_counter()
                acked = post_all(v.url + "/api/v1/import/prometheus", bodies, {}, args.clients)
                httpx.get(v.url + "/internal/force_flush", timeout=60)
                wait_samples(v.url, data, {})
                secs = time.perf_counter() - start
                log(f"victoriametrics import: acked in {acked:.1f} s; queryable after {secs:.1f} s "
                    f"({total / secs:,.0f} samples/s)")
                results["vm_import"] = total / secs
            finally:
                v.stop()
            vbytes = dir_bytes(work / "vm")
            log(f"victoriametrics: {vbytes:,} bytes ({vbytes / total:.3f} bytes/sample)")
            results["vm_bps"] = vbytes / total
        compare_queries(work, data, args.runs, results, not args.no_peers)
        log(f"results: {results}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
