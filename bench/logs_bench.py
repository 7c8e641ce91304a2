"""Logs benchmark: Stackwatch side by side with a raw ClickHouse server, same data, same run.

One run, one machine, the same generated events (``gen_logs.py``, 24 h, realistic mix) go to

* **raw ClickHouse** (Debian's ``clickhouse-server`` 18.16, started here with a minimal config in
  a temporary directory): one MergeTree table, ``INSERT ... FORMAT JSONEachRow`` over HTTP,
  plain SQL for the searches;
* **Stackwatch** (``stackwatch server`` on a fresh data directory): NDJSON pushed to
  ``POST /api/v1/logs``, searches through ``GET /api/v1/logs/search`` and ``/histogram``.

Both get the same chunks (``--chunk`` lines per request) from the same number of concurrent
clients (``--clients``), one server at a time (the other is stopped, so they never compete for
the CPU). Measured for each: ingest events/s from the first request sent to the last
acknowledged; how long after the last acknowledgement the count of stored events reaches N;
bytes on disk per event after a settle time; the median latency of the four searches (newest
100 hits and the total count) and of a 24 h per-minute error histogram, each over ``--runs``
runs after one warm-up. Every search result is checked against the generator's expected
counts. Results are printed as a Markdown table and written to ``docs/benchmarks.md``.

``--search-during-load`` also runs the payment search every 50 ms while the lines arrive, on
both sides, and reports its latency: what a search costs in the middle of a flood of logs
(the ingest figures of such a run include that work).

Run: ``python bench/logs_bench.py`` (1,000,000 events) or ``--events 50000`` for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_logs
from _common import DOCS_FILE, free_port, write_section

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
CLICKHOUSE_BIN = "/usr/sbin/clickhouse-server"
STACKWATCH_BIN = str(Path(sys.executable).parent / "stackwatch")

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
#: The search ``--search-during-load`` runs while the lines arrive.
PROBE_SEARCH = "payment_failures"
INGEST_TOKEN = "bench-ingest-token-0123456789abcdef"

HISTOGRAM = "level:ERROR"


# --- small helpers ----------------------------------------------------------------------


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes as ``du`` counts them, apparent bytes) under ``path``; symlinks not followed."""
    allocated = apparent = 0
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:  # hard links (ClickHouse shares files between parts)
                continue
            seen.add((st.st_dev, st.st_ino))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


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


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the process and every live descendant (Stackwatch's pipeline workers
    are children of its forkserver; ClickHouse runs as one process)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # a child that just exited
            continue
        total += t.user + t.system
    return total


class HttpError(RuntimeError):
    pass


class Http:
    """One keep-alive HTTP/1.1 connection; reconnects once when the server closed it."""

    def __init__(self, port: int, headers: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.port = port
        self.headers = headers or {}
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = {**self.headers, **(headers or {})}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, url, body=body, headers=all_headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- load -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    events: int
    first_sent: float
    last_ack: float
    throttled: int  # 429 answers
    latencies: list[float]
    client_cpu_s: float
    server_cpu_s: float
    server_cpu_start: float  # the server's CPU seconds when the load began
    server_cpu_searchable_s: float = float("nan")  # from then until all N were searchable
    probe_ms: list[float] = field(default_factory=list)  # searches during the load (--search-during-load)

    @property
    def seconds(self) -> float:
        return self.last_ack - self.first_sent

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def load(
    port: int,
    url: str,
    chunks: list[bytes],
    events: int,
    clients: int,
    headers: dict[str, str],
    server_pid: int,
    probe: Callable[[], Any] | None = None,
) -> LoadResult:
    """POST every chunk from ``clients`` threads; on 429 wait ``Retry-After`` and resend.

    ``probe``: a search run every 50 ms from one more thread while the load lasts, as an
    on-call engineer searches during a flood of logs; its latencies go to ``probe_ms``.
    """
    lock = threading.Lock()
    next_index = iter(range(len(chunks)))
    first: list[float] = []
    acks: list[float] = []
    latencies: list[float] = []
    throttled = [0]
    failures: list[str] = []

    def worker() -> None:
        conn = Http(port, headers)
        try:
            while not failures:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                while True:
                    sent = time.perf_counter()
                    with lock:
                        first.append(sent)
                    status, resp_headers, data = conn.request("POST", url, chunks[index])
                    done = time.perf_counter()
                    if status == 429:
                        with lock:
                            throttled[0] += 1
                        time.sleep(float(resp_headers.get("retry-after", "1") or 1))
                        continue
                    if status >= 300:
                        failures.append(f"chunk {index}: HTTP {status}: {data[:500]!r}")
                        return
                    with lock:
                        acks.append(done)
                        latencies.append(done - sent)
                    break
        except Exception as exc:  # a failed load must stop the run, with the reason
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    probe_ms: list[float] = []
    loading = threading.Event()
    loading.set()

    def prober() -> None:
        assert probe is not None
        while loading.is_set():
            t0 = time.perf_counter()
            try:
                probe()
            except Exception as exc:
                failures.append(f"search during the load: {type(exc).__name__}: {exc}")
                return
            probe_ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)

    probing = threading.Thread(target=prober, daemon=True) if probe is not None else None
    cpu0 = time.process_time()
    server_cpu0 = cpu_seconds(server_pid)
    for t in threads:
        t.start()
    if probing is not None:
        probing.start()
    for t in threads:
        t.join()
    loading.clear()
    if probing is not None:
        probing.join()
    client_cpu = time.process_time() - cpu0
    server_cpu = cpu_seconds(server_pid) - server_cpu0
    if failures:
        raise HttpError("ingest failed: " + failures[0])
    return LoadResult(
        events, min(first), max(acks), throttled[0], latencies, client_cpu, server_cpu, server_cpu0,
        probe_ms=probe_ms,
    )


def wait_searchable(count: Callable[[], int], expected: int, last_ack: float, timeout: float = 120) -> float:
    """Seconds from the last ack until ``count()`` first answers ``expected`` (or raise)."""
    while True:
        n = count()
        now = time.perf_counter()
        if n >= expected:
            if n != expected:
                raise HttpError(f"stored {n} events, expected {expected}")
            return now - last_ack
        if now - last_ack > timeout:
            raise HttpError(f"only {n} of {expected} events searchable {timeout:.0f}s after the last ack")
        time.sleep(0.02)


def timed_runs(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    """One warm-up call, then ``runs`` timed calls; returns the times (s) and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


# --- raw ClickHouse ---------------------------------------------------------------------

_CH_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>30</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>8589934592</uncompressed_cache_size>
    <mark_cache_size>5368709120</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
{compression}</yandex>
"""

_CH_ZSTD = """    <compression>
        <case><min_part_size>0</min_part_size><min_part_size_ratio>0</min_part_size_ratio><method>zstd</method></case>
    </compression>
"""

_CH_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>10000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"""

# The table a competent engineer would make for these logs on ClickHouse 18.16, which has no
# DateTime64, no column codecs, no skip indexes and only an experimental LowCardinality:
# * time as DateTime (seconds) plus a UInt16 of milliseconds, so sorting newest-first is exact;
# * level as Enum8 (one byte, compared as a number), service as a plain String: sorted first
#   in the key, it compresses to almost nothing with the default LZ4;
# * the context kept whole as a JSON String (any field stays readable), plus MATERIALIZED
#   columns for the context fields the searches use, extracted once at insert by
#   visitParamExtract* so a search reads a narrow typed column instead of parsing JSON;
# * ORDER BY (service, ts): most searches name a service; PARTITION BY day as usual for logs.
CH_TABLE = """
CREATE TABLE logs (
    ts DateTime,
    ts_ms UInt16,
    level Enum8('TRACE' = 1, 'DEBUG' = 2, 'INFO' = 3, 'WARN' = 4, 'ERROR' = 5, 'FATAL' = 6),
    service String,
    trace_id String,
    source String,
    message String,
    context String,
    ctx_ip_address String MATERIALIZED visitParamExtractString(context, 'ip_address'),
    ctx_duration Float64 MATERIALIZED visitParamExtractFloat(context, 'duration'),
    ctx_error_code String MATERIALIZED visitParamExtractString(context, 'error_code')
) ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, ts)
"""

#: The searches in plain SQL, the same meaning as Stackwatch's query language gives them:
#: message terms are case-insensitive substrings, ``field:*`` means the field is present.
CH_WHERE: dict[str, str] = {
    "failed_logins": (
        "level = 'ERROR' AND service = 'auth' AND positionCaseInsensitive(message, 'Failed login attempt') > 0 "
        "AND ctx_ip_address != ''"
    ),
    "trace": "trace_id = 'abc123def456' AND level != 'DEBUG'",
    "slow_api": "service = 'api' AND ctx_duration > 500 AND level = 'WARN'",
    "payment_failures": (
        "service = 'payment' AND level = 'ERROR' AND positionCaseInsensitive(message, 'Payment processing failed') > 0 "
        "AND ctx_error_code != ''"
    ),
}
CH_HISTOGRAM_WHERE = "level = 'ERROR'"


def to_clickhouse_rows(lines: list[bytes]) -> list[bytes]:
    """The generator's lines in the shape the table takes (done before, outside the timing).

    ClickHouse 18.16 reads neither ISO 8601 with milliseconds into DateTime nor a nested
    object into a String column, so the timestamp is split and the context serialised.
    """
    out = []
    loads, dumps = orjson.loads, orjson.dumps
    for line in lines:
        r = loads(line)
        ts = r["timestamp"]  # 2026-11-19T00:00:04.135Z
        out.append(
            dumps(
                {
                    "ts": ts[:10] + " " + ts[11:19],
                    "ts_ms": int(ts[20:23]),
                    "level": r["level"],
                    "service": r["service"],
                    "trace_id": r["trace_id"],
                    "source": r["source"],
                    "message": r["message"],
                    "context": dumps(r["context"]).decode(),
                }
            )
            + b"\n"
        )
    return out


class ClickHouse:
    """A clickhouse-server process on a temporary directory, spoken to over HTTP."""

    def __init__(self, root: Path, compression: str) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.compression = compression
        self.http = Http(self.port)

    def start(self) -> None:
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        config = _CH_CONFIG.format(
            dir=self.root,
            http_port=self.port,
            tcp_port=free_port(),
            compression=_CH_ZSTD if self.compression == "zstd" else "",
        )
        (self.root / "config.xml").write_text(config)
        (self.root / "users.xml").write_text(_CH_USERS)
        out = (self.root / "log" / "stdout.log").open("wb")
        self.proc = subprocess.Popen(
            [CLICKHOUSE_BIN, f"--config-file={self.root / 'config.xml'}"],
            cwd=self.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HttpError(f"clickhouse-server exited with {self.proc.returncode}; see {self.root}/log")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = Http(self.port, timeout=2).request("GET", "/ping")
                if status == 200:
                    return
            time.sleep(0.2)
        raise HttpError("clickhouse-server did not answer /ping within 60 s")

    def query(self, sql: str) -> bytes:
        status, _, body = self.http.request("POST", "/", sql.encode())
        if status != 200:
            raise HttpError(f"ClickHouse HTTP {status}: {body[:1000].decode(errors='replace')}")
        return body

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- Stackwatch -------------------------------------------------------------------------


class Stackwatch:
    """``stackwatch server`` on a fresh data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"
        self.http = Http(self.port, {"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def start(self, timeout: float = 180) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "STACKWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
            "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN,
            "STACKWATCH_LOG_LEVEL": "WARNING",
        }
        out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [STACKWATCH_BIN, "server", "--data-dir", str(self.data), "--port", str(self.port)],
            cwd=self.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise HttpError(f"stackwatch server exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = Http(self.port, timeout=2).request("GET", "/health")
                if status == 200:
                    return
            time.sleep(0.25)
        raise HttpError(f"stackwatch server did not answer /health within {timeout:.0f} s")

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        url = path + "?" + urllib.parse.urlencode(params)
        status, _, body = self.http.request("GET", url)
        if status != 200:
            raise HttpError(f"Stackwatch {url}: HTTP {status}: {body[:1000].decode(errors='replace')}")
        return orjson.loads(body)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the run ----------------------------------------------------------------------------


@dataclass
class SideResult:
    name: str
    version: str = ""
    ingest: LoadResult | None = None
    searchable_s: float | None = None
    parts_bytes: int | None = None  # sum(bytes_on_disk) of the active parts of the log table(s)
    du_bytes: int | None = None  # `du` of the whole store directory
    disk_detail: dict[str, Any] = field(default_factory=dict)
    search_ms: dict[str, float] = field(default_factory=dict)  # median per search
    search_p90_ms: dict[str, float] = field(default_factory=dict)
    one_query_ms: dict[str, float] = field(default_factory=dict)  # raw ClickHouse, page + total in one query
    totals: dict[str, int] = field(default_factory=dict)
    error: str = ""


def chunked(lines: list[bytes], size: int) -> list[bytes]:
    return [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def check(name: str, side: str, got: int, want: int) -> None:
    if got != want:
        raise HttpError(f"{side}: search {name!r} found {got}, expected {want}")


def _rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of an ordered list (nearest rank)."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _median_ms(times: list[float]) -> tuple[float, float]:
    return statistics.median(times) * 1000, _rank(sorted(times), 0.9) * 1000


def run_side(
    name: str,
    fn: Callable[[SideResult, argparse.Namespace, list[bytes], dict[str, Any], Path], None],
    args: argparse.Namespace,
    lines: list[bytes],
    meta: dict[str, Any],
    root: Path,
) -> SideResult:
    """Run one side; a failure is recorded with whatever was measured before it."""
    res = SideResult(name)
    try:
        fn(res, args, lines, meta, root)
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        log(f"{name} failed:\n{traceback.format_exc()}")
    return res


def run_clickhouse(
    res: SideResult, args: argparse.Namespace, lines: list[bytes], meta: dict[str, Any], root: Path
) -> None:
    log("preparing ClickHouse rows (split timestamp, context as a string; not timed)")
    chunks = chunked(to_clickhouse_rows(lines), args.chunk)
    ch = ClickHouse(root / "clickhouse", args.ch_compression)
    ch.start()
    try:
        res.version = "clickhouse-server " + ch.query("SELECT version()").decode().strip()
        ch.query(CH_TABLE)
        log(f"ClickHouse: loading {len(lines):,} events in {len(chunks)} chunks, {args.clients} clients")
        insert = "/?" + urllib.parse.urlencode({"query": "INSERT INTO logs FORMAT JSONEachRow"})
        assert ch.proc is not None
        probe = None
        if args.search_during_load:
            during = Http(ch.port)  # a connection of its own: the loaders have theirs
            scope_sql = (
                f"ts >= toDateTime('{meta['start'][:19].replace('T', ' ')}') "
                f"AND ts < toDateTime('{meta['end'][:19].replace('T', ' ')}')"
            )

            def probe() -> None:  # the same two queries as the timed search below
                where = CH_WHERE[PROBE_SEARCH]
                for sql in (
                    "SELECT ts, ts_ms, level, service, trace_id, source, message, context FROM logs "
                    f"WHERE {scope_sql} AND ({where}) ORDER BY ts DESC, ts_ms DESC LIMIT 100 FORMAT JSONEachRow",
                    f"SELECT count() FROM logs WHERE {scope_sql} AND ({where})",
                ):
                    status, _, body = during.request("POST", "/", sql.encode())
                    if status != 200:
                        raise HttpError(f"ClickHouse HTTP {status}: {body[:300]!r}")

        res.ingest = load(ch.port, insert, chunks, len(lines), args.clients, {}, ch.proc.pid, probe)
        if args.search_during_load:
            during.close()
        res.searchable_s = wait_searchable(
            lambda: int(ch.query("SELECT count() FROM logs")), len(lines), res.ingest.last_ack
        )
        res.ingest.server_cpu_searchable_s = cpu_seconds(ch.proc.pid) - res.ingest.server_cpu_start
        log(f"ClickHouse: {res.ingest.rate:,.0f} events/s; searching")
        start = meta["start"][:19].replace("T", " ")
        end = meta["end"][:19].replace("T", " ")
        scope = f"ts >= toDateTime('{start}') AND ts < toDateTime('{end}')"
        # Two queries per search, one after the other on one connection: the newest 100 hits,
        # then the total count (18.16 has no window functions to do both in one query);
        # Stackwatch also runs two.
        for name, where in CH_WHERE.items():

            def search(where: str = where) -> tuple[int, int]:
                hits = ch.query(
                    "SELECT ts, ts_ms, level, service, trace_id, source, message, context FROM logs "
                    f"WHERE {scope} AND ({where}) ORDER BY ts DESC, ts_ms DESC LIMIT 100 FORMAT JSONEachRow"
                )
                total = ch.query(f"SELECT count() FROM logs WHERE {scope} AND ({where})")
                return len(hits.splitlines()), int(total)

            times, (n_hits, total) = timed_runs(search, args.runs)
            check(name, "ClickHouse", total, meta["expected"][name])
            check(name + " hits", "ClickHouse", n_hits, min(100, total))
            res.totals[name] = total
            res.search_ms[name], res.search_p90_ms[name] = _median_ms(times)

            # For reference (not the target's baseline): the same page and total from one query,
            # the total read from JSON's rows_before_limit_at_least, as Stackwatch's endpoint does.
            def search_one(where: str = where) -> tuple[int, int]:
                doc = orjson.loads(
                    ch.query(
                        "SELECT ts, ts_ms, level, service, trace_id, source, message, context FROM logs "
                        f"WHERE {scope} AND ({where}) ORDER BY ts DESC, ts_ms DESC LIMIT 100 FORMAT JSON"
                    )
                )
                return len(doc["data"]), int(doc["rows_before_limit_at_least"])

            times, (n_hits, total) = timed_runs(search_one, args.runs)
            if total == meta["expected"][name] and n_hits == min(100, total):
                res.one_query_ms[name] = _median_ms(times)[0]
            else:  # reference only: a wrong total is reported, not fatal
                log(f"ClickHouse one-query {name}: total {total}, hits {n_hits}: not exact, not reported")

        def histogram() -> int:
            body = ch.query(
                f"SELECT toStartOfMinute(ts) AS t, count() AS n FROM logs WHERE {scope} AND ({CH_HISTOGRAM_WHERE}) "
                "GROUP BY t ORDER BY t FORMAT JSONEachRow"
            )
            return sum(int(orjson.loads(line)["n"]) for line in body.splitlines())

        times, errors = timed_runs(histogram, args.runs)
        check("histogram", "ClickHouse", int(errors), meta["errors"])
        res.totals["histogram"] = int(errors)
        res.search_ms["histogram"], res.search_p90_ms["histogram"] = _median_ms(times)

        log(f"ClickHouse: settling {args.settle:.0f} s before measuring disk")
        time.sleep(args.settle)
        for _ in range(120):  # and until no merge is running
            if int(ch.query("SELECT count() FROM system.merges")) == 0:
                break
            time.sleep(1)
        parts = orjson.loads(
            ch.query(
                "SELECT sum(bytes_on_disk) AS bytes, count() AS parts, sum(rows) AS rows FROM system.parts "
                "WHERE active AND database = 'default' AND table = 'logs' FORMAT JSONEachRow"
            )
        )
        res.parts_bytes = int(parts["bytes"])
        res.disk_detail = {"parts": int(parts["parts"]), "rows": int(parts["rows"])}
        res.du_bytes = disk_usage(root / "clickhouse" / "data")[0]
        # For reference only: the smallest this table gets, fully merged.
        ch.query("OPTIMIZE TABLE logs FINAL")
        optimized = orjson.loads(
            ch.query(
                "SELECT sum(bytes_on_disk) AS bytes, count() AS parts FROM system.parts "
                "WHERE active AND database = 'default' AND table = 'logs' FORMAT JSONEachRow"
            )
        )
        res.disk_detail["optimized_bytes"] = int(optimized["bytes"])
        res.disk_detail["optimized_parts"] = int(optimized["parts"])
    finally:
        ch.stop()


def run_stackwatch(
    res: SideResult, args: argparse.Namespace, lines: list[bytes], meta: dict[str, Any], root: Path
) -> None:
    chunks = chunked(lines, args.chunk)
    sw = Stackwatch(root / "stackwatch")
    log("Stackwatch: starting the server")
    sw.start()
    try:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            res.version = (
                f"stackwatch {importlib.metadata.version('stackwatch')} "
                f"(chDB {importlib.metadata.version('chdb')})"
            )
        log(f"Stackwatch: loading {len(lines):,} events in {len(chunks)} chunks, {args.clients} clients")
        headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/x-ndjson"}
        assert sw.proc is not None
        scope = {"start": meta["start"], "end": meta["end"]}
        probe = None
        if args.search_during_load:
            during = Http(sw.port, {"Authorization": f"Bearer {ADMIN_TOKEN}"})

            def probe() -> None:
                url = "/api/v1/logs/search?" + urllib.parse.urlencode(
                    {"q": gen_logs.SEARCHES[PROBE_SEARCH], **scope, "limit": 100}
                )
                status, _, body = during.request("GET", url)
                if status != 200:
                    raise HttpError(f"HTTP {status}: {body[:300]!r}")

        res.ingest = load(
            sw.port, "/api/v1/logs", chunks, len(lines), args.clients, headers, sw.proc.pid, probe
        )
        if args.search_during_load:
            during.close()
        res.searchable_s = wait_searchable(
            lambda: int(sw.get("/api/v1/logs/search", {"q": "", **scope, "limit": 1})["total"]),
            len(lines),
            res.ingest.last_ack,
        )
        res.ingest.server_cpu_searchable_s = cpu_seconds(sw.proc.pid) - res.ingest.server_cpu_start
        log(f"Stackwatch: {res.ingest.rate:,.0f} events/s; searching")
        for name, query in gen_logs.SEARCHES.items():

            def search(query: str = query) -> tuple[int, int]:
                data = sw.get("/api/v1/logs/search", {"q": query, **scope, "limit": 100})
                return len(data["hits"]), int(data["total"])

            times, (n_hits, total) = timed_runs(search, args.runs)
            check(name, "Stackwatch", total, meta["expected"][name])
            check(name + " hits", "Stackwatch", n_hits, min(100, total))
            res.totals[name] = total
            res.search_ms[name], res.search_p90_ms[name] = _median_ms(times)

        def histogram() -> int:
            data = sw.get("/api/v1/logs/histogram", {"q": HISTOGRAM, **scope, "interval": "1m"})
            return sum(int(b["count"]) for b in data["buckets"])

        times, errors = timed_runs(histogram, args.runs)
        check("histogram", "Stackwatch", errors, meta["errors"])
        res.totals["histogram"] = errors
        res.search_ms["histogram"], res.search_p90_ms["histogram"] = _median_ms(times)

        log(f"Stackwatch: settling {args.settle:.0f} s before measuring disk")
        time.sleep(args.settle)
        ch_dir = sw.data / "clickhouse"
        res.du_bytes = disk_usage(ch_dir)[0]
        res.disk_detail["wal"] = disk_usage(sw.data / "wal")[0] if (sw.data / "wal").exists() else 0
    finally:
        sw.stop()
    parts = stackwatch_parts(ch_dir)
    res.parts_bytes = sum(p["bytes"] for p in parts)
    res.disk_detail["parts"] = sum(p["parts"] for p in parts)
    # Lines are the rows of the log tiers; logs_minutes holds per-minute counts of them (its
    # bytes count as the store's, its rows are not lines).
    res.disk_detail["rows"] = sum(p["rows"] for p in parts if p["table"] in ("logs_hot", "logs_warm"))
    res.disk_detail["tables"] = parts
    if res.disk_detail["rows"] != len(lines):
        raise HttpError(
            f"Stackwatch's active parts hold {res.disk_detail['rows']} rows, expected {len(lines)}"
        )


_PARTS_SCRIPT = """
import sys, orjson
from chdb import session
s = session.Session(sys.argv[1])
r = s.query(
    "SELECT table, toInt64(sum(bytes_on_disk)) AS bytes, toInt64(count()) AS parts, toInt64(sum(rows)) AS rows "
    "FROM system.parts WHERE active AND database = 'stackwatch' GROUP BY table ORDER BY table",
    "JSONEachRow",
)
sys.stdout.write(orjson.dumps([orjson.loads(l) for l in r.bytes().splitlines() if l]).decode())
s.close()
"""


def stackwatch_parts(store: Path) -> list[dict[str, Any]]:
    """Active parts of Stackwatch's tables, read from its (stopped) embedded store with chDB.

    The server owns the store while it runs, so this opens it afterwards, in a separate
    process (chDB allows one store per process).
    """
    out = subprocess.run(
        [sys.executable, "-c", _PARTS_SCRIPT, str(store)], capture_output=True, check=False, timeout=300
    )
    if out.returncode != 0:
        raise HttpError(
            f"reading Stackwatch's system.parts failed: {out.stderr.decode(errors='replace')[-2000:]}"
        )
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


# --- report -----------------------------------------------------------------------------

SEARCH_LABELS = {
    "failed_logins": 'search: `level:ERROR AND service:auth AND message:"Failed login attempt" AND context.ip_address:*`',
    "trace": 'search: `trace_id:"abc123def456" AND NOT level:DEBUG`',
    "slow_api": "search: `service:api AND context.duration:>500 AND level:WARN`",
    "payment_failures": (
        'search: `service:payment AND level:ERROR AND message:"Payment processing failed" '
        "AND context.error_code:*`"
    ),
    "histogram": "histogram: `level:ERROR`, 24 h, 1 min buckets",
}


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def report(
    args: argparse.Namespace, meta: dict[str, Any], ch: SideResult | None, sw: SideResult | None, command: str
) -> str:
    n = meta["events"]
    rows: list[tuple[str, str, str, str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("pass" if ok else "**fail**")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    ch_rate = ch.ingest.rate if ch and ch.ingest else None
    sw_rate = sw.ingest.rate if sw and sw.ingest else None
    r = ratio(sw_rate, ch_rate)
    rows.append(
        (
            "ingest, events/s (first request → last ack)",
            _fmt(ch_rate),
            _fmt(sw_rate),
            _fmt(r, "x", 2),
            "≥ 1.0x",
            verdict(None if r is None else r >= 1.0),
        )
    )
    ch_s = ch.searchable_s if ch else None
    sw_s = sw.searchable_s if sw else None
    rows.append(
        (
            f"all {n:,} searchable, s after last ack",
            _fmt(ch_s, " s", 2),
            _fmt(sw_s, " s", 2),
            "",
            "≤ 2 s",
            verdict(None if sw_s is None else sw_s <= 2.0),
        )
    )
    # Two readings of the disk target: like for like (the active parts' bytes on each side), and
    # as the issue words it (Stackwatch's whole store by `du`, which also counts parts merged
    # away but not yet deleted, against ClickHouse's active parts).
    for ch_attr, sw_attr, label in (
        ("parts_bytes", "parts_bytes", "on disk, bytes/event: active parts `sum(bytes_on_disk)`, both sides"),
        (
            "parts_bytes",
            "du_bytes",
            "on disk, bytes/event: Stackwatch `du` of its store vs ClickHouse active parts",
        ),
    ):
        ch_v = getattr(ch, ch_attr) if ch else None
        sw_v = getattr(sw, sw_attr) if sw else None
        ch_b = None if ch_v is None else ch_v / n
        sw_b = None if sw_v is None else sw_v / n
        r = ratio(sw_b, ch_b)
        rows.append(
            (
                label,
                _fmt(ch_b, "", 1),
                _fmt(sw_b, "", 1),
                _fmt(r, "x", 2),
                "≤ 0.8x",
                verdict(None if r is None else r <= 0.8),
            )
        )
    if sw and "wal" in sw.disk_detail:
        rows.append(("Stackwatch WAL after settle, bytes", "", _fmt(sw.disk_detail["wal"]), "", "", ""))
    for key, label in SEARCH_LABELS.items():
        a = ch.search_ms.get(key) if ch else None
        b = sw.search_ms.get(key) if sw else None
        r = ratio(b, a)
        ok = None if r is None or b is None else (r <= 1.5 and b < 100)
        rows.append(
            (
                label + ", median ms",
                _fmt(a, "", 1),
                _fmt(b, "", 1),
                _fmt(r, "x", 2),
                "≤ 1.5x and < 100 ms",
                verdict(ok),
            )
        )

    info = machine()
    out = ["## Logs", ""]
    out.append(f"Run on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} with `{command}`.")
    out.append("")
    out.append(
        f"- **Data**: {n:,} generated events (`bench/gen_logs.py`, seed {meta['seed']}), "
        f"24 h from {meta['start']} to {meta['end']}, {meta['bytes'] / 1e6:,.1f} MB of NDJSON "
        f"({meta['bytes_per_line']} bytes/line); levels {_mix(meta['levels'], n)}."
    )
    out.append(
        f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, {info['os']}, "
        f"Python {info['python']}."
    )
    versions = [s.version for s in (ch, sw) if s and s.version]
    if versions:
        out.append(f"- **Versions**: {'; '.join(versions)}.")
    out.append(
        f"- **Load**: chunks of {args.chunk:,} lines, {args.clients} concurrent HTTP clients, one server "
        "at a time (the other is stopped). Searches: median of "
        f"{args.runs} runs after one warm-up, over the whole 24 h, client-side wall time."
    )
    out.append("")
    out.append("| metric | raw ClickHouse | Stackwatch | Stackwatch / ClickHouse | target | result |")
    out.append("|---|--:|--:|--:|---|---|")
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("Details:")
    out.append("")
    for side in (ch, sw):
        if side is None or side.ingest is None:
            continue
        lat = sorted(side.ingest.latencies)
        out.append(
            f"- {side.name}: {side.ingest.events:,} events in {side.ingest.seconds:.2f} s; "
            f"request latency median {statistics.median(lat) * 1000:.0f} ms, "
            f"max {lat[-1] * 1000:.0f} ms; {side.ingest.throttled} answers 429; "
            f"server CPU {side.ingest.server_cpu_s:.1f} s until the last ack and "
            f"{side.ingest.server_cpu_searchable_s:.1f} s until all were searchable; load client CPU "
            f"{side.ingest.client_cpu_s:.1f} s. Search p90 ms: "
            + ", ".join(f"{k} {v:.1f}" for k, v in side.search_p90_ms.items())
            + "."
        )
        if side.ingest.probe_ms:
            probe = sorted(side.ingest.probe_ms)
            out.append(
                f"- {side.name}, the {PROBE_SEARCH} search every 50 ms during the load: "
                f"{len(probe)} searches, median {statistics.median(probe):.0f} ms, "
                f"p90 {_rank(probe, 0.9):.0f} ms, p99 {_rank(probe, 0.99):.0f} ms, max {probe[-1]:.0f} ms."
            )
        if side.one_query_ms:
            out.append(
                f"- {side.name}, for reference: each search as one query (the page, the total from "
                "`rows_before_limit_at_least` in the JSON format), median ms: "
                + ", ".join(f"{k} {v:.1f}" for k, v in side.one_query_ms.items())
                + ". The table's baseline stays the two queries of the issue."
            )
    if ch and ch.parts_bytes is not None:
        d = ch.disk_detail
        out.append(
            f"- raw ClickHouse disk, measured after a {args.settle:.0f} s settle and no merge running: "
            f"{d['parts']} active parts, {ch.parts_bytes:,} bytes; `du` of its whole data path "
            f"{ch.du_bytes:,} bytes (includes parts merged away but not yet deleted). Compression "
            f"{args.ch_compression} "
            f"({'the packaged default' if args.ch_compression == 'lz4' else 'set in config.xml'}). "
            f"For reference, after `OPTIMIZE TABLE logs FINAL` ({d['optimized_parts']} parts): "
            f"{d['optimized_bytes']:,} bytes = {d['optimized_bytes'] / n:.1f} bytes/event."
        )
    if sw and sw.du_bytes is not None:
        d = sw.disk_detail
        parts_text = ""
        if sw.parts_bytes is not None:
            tables = ", ".join(f"{t['table']} {t['parts']} parts {t['bytes']:,} bytes" for t in d["tables"])
            parts_text = (
                f"; active parts read from the stopped store with chDB: {sw.parts_bytes:,} bytes ({tables})"
            )
        out.append(
            f"- Stackwatch disk, measured after a {args.settle:.0f} s settle: `du` of `<data-dir>/clickhouse` "
            f"(the whole embedded store) {sw.du_bytes:,} bytes{parts_text}. The WAL directory held "
            f"{d['wal']:,} bytes at the same moment, not included."
        )
    if ch and sw and ch.totals and sw.totals:
        out.append(
            "- Every search found the same total on both sides, equal to the generator's expected count: "
            + ", ".join(f"{k} {v:,}" for k, v in sw.totals.items())
            + "."
        )
    out.append(
        "- Fairness notes: ClickHouse receives the lines already in its own shape (timestamp split "
        "into DateTime + milliseconds, context serialised to a string), prepared before the timed "
        "section; Stackwatch receives the original NDJSON and parses, normalises and redacts it. "
        "ClickHouse 18.16 acknowledges an insert once the part is written (no fsync); Stackwatch "
        "acknowledges after its WAL is fsync'd. Each ClickHouse search is two queries (hits, then "
        "count) on one keep-alive connection; Stackwatch's search endpoint runs one (the page, with "
        "the total taken from the rows that reached its LIMIT). Stackwatch's histogram sums per-minute "
        "counts kept at insert (`logs_minutes`, included in its disk figures, and the same counts held "
        "in the server's memory, which answer it); ClickHouse's scans the lines."
    )
    for side in (ch, sw):
        if side is not None and side.error:
            out.append(f"- {side.name} did not complete: {side.error}")
    out.append("")
    return "\n".join(out)


def _mix(levels: dict[str, int], n: int) -> str:
    return ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(levels.items(), key=lambda kv: -kv[1]))


def data_file(events: int, seed: int, end: str) -> tuple[Path, dict[str, Any]]:
    """The generated NDJSON, cached in bench/.work/ by its parameters."""
    stamp = end.replace(":", "").replace("-", "")
    path = WORK_DIR / f"logs-{events}-s{seed}-{stamp}.ndjson"
    meta_path = Path(str(path) + ".meta.json")
    if path.exists() and meta_path.exists():
        return path, orjson.loads(meta_path.read_bytes())
    log(f"generating {events:,} events into {path}")
    return path, gen_logs.generate(path, events, seed=seed, end=end)


def _default_end() -> str:
    # Midnight UTC today: recent enough for any retention, fixed for a day (so the cache holds).
    today = dt.datetime.now(dt.UTC).date()
    return f"{today.isoformat()}T00:00:00Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Logs benchmark: Stackwatch vs a raw ClickHouse server.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end", default=None, help="end of the 24 h of data (default: today 00:00 UTC)")
    parser.add_argument("--chunk", type=int, default=5000, help="lines per ingest request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent ingest clients")
    parser.add_argument("--runs", type=int, default=21, help="timed runs per search")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait before measuring disk")
    parser.add_argument("--only", choices=("both", "clickhouse", "stackwatch"), default="both")
    parser.add_argument("--ch-compression", choices=("lz4", "zstd"), default="lz4")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temporary directories")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument(
        "--search-during-load",
        action="store_true",
        help=f"run the {PROBE_SEARCH} search every 50 ms during each load and report its latency "
        "(the load's own figures then include that work)",
    )
    args = parser.parse_args(argv)

    end = args.end or _default_end()
    path, meta = data_file(args.events, args.seed, end)
    lines = path.read_bytes().splitlines(keepends=True)
    if len(lines) != args.events:
        raise SystemExit(f"{path} has {len(lines)} lines, expected {args.events}")
    root = Path(tempfile.mkdtemp(prefix="stackwatch-logs-bench-"))
    log(f"working in {root}")
    ch = sw = None
    try:
        if args.only in ("both", "clickhouse"):
            ch = run_side("raw ClickHouse", run_clickhouse, args, lines, meta, root)
        if args.only in ("both", "stackwatch"):
            sw = run_side("Stackwatch", run_stackwatch, args, lines, meta, root)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    script = (
        os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
        if sys.argv and sys.argv[0]
        else "bench/logs_bench.py"
    )
    command = " ".join(["python", script, *sys.argv[1:]])
    section = report(args, meta, ch, sw, command.strip())
    sys.stdout.write(section + "\n")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"meta": meta, "clickhouse": _as_json(ch), "stackwatch": _as_json(sw)}, indent=2)
        )
    complete = all(s is not None and not s.error for s in (ch, sw))
    if complete and not args.no_docs:
        write_section("Logs", section)
        log(f"wrote the Logs section of {DOCS_FILE}")
    elif not args.no_docs:
        log("not writing docs/benchmarks.md: the run did not complete on both sides")
    return 0 if all(s is None or not s.error for s in (ch, sw)) else 1


def _as_json(side: SideResult | None) -> dict[str, Any] | None:
    if side is None:
        return None
    out: dict[str, Any] = {
        "name": side.name,
        "version": side.version,
        "searchable_s": side.searchable_s,
        "parts_bytes": side.parts_bytes,
        "du_bytes": side.du_bytes,
        "disk_detail": side.disk_detail,
        "search_median_ms": side.search_ms,
        "search_p90_ms": side.search_p90_ms,
        "one_query_ms": side.one_query_ms,
        "totals": side.totals,
        "error": side.error,
    }
    if side.ingest:
        out["ingest"] = {
            "events": side.ingest.events,
            "seconds": side.ingest.seconds,
            "events_per_s": side.ingest.rate,
            "throttled_429": side.ingest.throttled,
            "client_cpu_s": side.ingest.client_cpu_s,
            "server_cpu_s": side.ingest.server_cpu_s,
            "server_cpu_searchable_s": side.ingest.server_cpu_searchable_s,
            "search_during_load_ms": side.ingest.probe_ms,
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
