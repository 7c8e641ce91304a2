"""Error events per second through the Sentry envelope endpoint into one server process.

``python bench/run.py errors [--events 5000] [--runs 3] [--clients 4] [--groups 50]``

* Data: ``--events`` Python exception events shaped as ``sentry_sdk`` sends them (an 8-frame
  stack trace with source context and local variables, 10 breadcrumbs, request headers,
  tags, user, contexts; about 6 KB of JSON each), spread over ``--groups`` distinct issues and
  1,000 users; one event per envelope, gzip-compressed, as the SDK sends (prepared before the
  timed section).
* Load: ``--clients`` concurrent HTTP clients post every envelope to
  ``/api/<project>/envelope/`` with ``X-Sentry-Auth``; each run goes to a fresh project on the
  same server.
* Figures per run: events/s from the first request to the last acknowledgement (durable in
  the WAL), and events/s until every event is counted into its issue (scrubbed, grouped,
  stored; read back through ``/api/v1/issues``). The median over ``--runs`` is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import free_port

ADMIN = "swa_bench_admin_token_0123456789"
INGEST = "swi_bench_ingest_token_0123456789"


def log(message: str) -> None:
    sys.stderr.write(f"[errors-bench] {message}\n")
    sys.stderr.flush()


class Server:
    def __init__(self, data: Path) -> None:
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


_MODULES = ["shop.views", "shop.payments", "shop.orders", "shop.cart", "shop.auth", "shop.api.v1", "shop.tasks"]
_FUNCS = ["checkout", "charge", "refund", "add_item", "login", "get_order", "sync_stock", "render", "validate"]
_TYPES = ["ValueError", "KeyError", "TypeError", "RuntimeError", "ConnectionError", "TimeoutError", "IntegrityError"]


def make_event(rng: random.Random, group: int, now: float) -> dict[str, Any]:
    g = random.Random(group)  # the group decides the stack; the event only its values
    kind = g.choice(_TYPES)
    frames = []
    for depth in range(8):
        in_app = depth >= 4
        module = g.choice(_MODULES) if in_app else f"framework.layer{depth}"
        frames.append({
            "filename": module.replace(".", "/") + ".py", "abs_path": "/srv/app/" + module.replace(".", "/") + ".py",
            "module": module, "function": g.choice(_FUNCS) + str(depth), "lineno": rng.randint(10, 400),
            "in_app": in_app, "context_line": "    result = handler(request, *args, **kwargs)",
            "pre_context": ["def wrapper(request, *args, **kwargs):", "    start = time.monotonic()"],
            "post_context": ["    elapsed = time.monotonic() - start", "    return result"],
            "vars": {"request": "<WSGIRequest: POST '/checkout'>", "order_id": str(rng.randint(1, 10**6)),
                     "amount": f"{rng.uniform(1, 500):.2f}", "db_password": "hunter2-" + str(rng.random())},
        })
    return {
        "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "timestamp": now - rng.uniform(0, 600),
        "platform": "python",
        "level": "error",
        "server_name": f"web-{rng.randint(1, 8)}",
        "release": "shop@1.4.2",
        "environment": "production",
        "transaction": "/checkout",
        "exception": {"values": [{"type": kind, "value": f"order {rng.randint(1, 10**6)} failed in group {group}",
                                  "module": "builtins", "mechanism": {"type": "django", "handled": False},
                                  "stacktrace": {"frames": frames}}]},
        "breadcrumbs": {"values": [
            {"timestamp": now - 1, "category": "query", "message": f"SELECT * FROM orders WHERE id = {i}",
             "data": {"duration_ms": rng.randint(1, 50)}} for i in range(10)
        ]},
        "request": {"method": "POST", "url": "https://shop.example.com/checkout",
                    "query_string": "step=2&token=abc123secret",
                    "headers": {"User-Agent": "Mozilla/5.0", "Authorization": "Bearer eyJabc.def.ghi",
                                "Accept": "application/json", "X-Request-Id": uuid.uuid4().hex},
                    "data": {"card_last4": "4242", "password": "s3cret"}},
        "user": {"id": f"user-{rng.randint(1, 1000)}", "ip_address": f"203.0.113.{rng.randint(1, 254)}"},
        "tags": {"browser": rng.choice(["Chrome", "Firefox", "Safari"]), "region": rng.choice(["eu", "us"])},
        "contexts": {"runtime": {"name": "CPython", "version": "3.12.3"}, "os": {"name": "Linux"},
                     "trace": {"trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16]}},
        "sdk": {"name": "sentry.python.django", "version": "2.19.0"},
        "modules": {"django": "5.0.6", "sentry-sdk": "2.19.0"},
    }


def envelope(event: dict[str, Any]) -> bytes:
    body = orjson.dumps(event)
    header = orjson.dumps({"event_id": event["event_id"], "sent_at": "2026-01-01T00:00:00Z"})
    item = orjson.dumps({"type": "event", "length": len(body), "content_type": "application/json"})
    return gzip.compress(header + b"\n" + item + b"\n" + body + b"\n", compresslevel=9)


def post_all(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    local = threading.local()
    latencies: list[float] = []
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-sentry-envelope"}

    def send(body: bytes) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=300)
        for _ in range(100):
            t0 = time.perf_counter()
            r = local.client.post(url, content=body, headers=headers)
            if r.status_code == 429:
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            latencies.append(time.perf_counter() - t0)
            return

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - start, latencies


def counted(server: Server, slug: str) -> int:
    r = httpx.get(f"{server.url}/api/v1/issues", params={"project": slug, "limit": 1000},
                  headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    r.raise_for_status()
    return sum(i["count"] for i in r.json()["issues"])


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(row for row in lines if row.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} CPUs ({model or platform.processor()}){mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="errors_bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    now = time.time()
    log(f"generating {args.events} events x {args.runs} runs")
    runs_data = []
    raw_bytes = 0
    wire_bytes = 0
    for _ in range(args.runs):
        events = [make_event(rng, rng.randrange(args.groups), now) for _ in range(args.events)]
        raw_bytes += sum(len(orjson.dumps(e)) for e in events)
        bodies = [envelope(e) for e in events]
        wire_bytes += sum(len(b) for b in bodies)
        runs_data.append(bodies)
    total = args.events * args.runs

    results = []
    with tempfile.TemporaryDirectory(prefix="errors-bench-") as tmp:
        server = Server(Path(tmp) / "data")
        try:
            for n, bodies in enumerate(runs_data, 1):
                slug = f"bench-{n}"
                r = httpx.post(f"{server.url}/api/v1/projects", json={"slug": slug},
                               headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
                r.raise_for_status()
                project = r.json()
                url = f"{server.url}/api/{project['id']}/envelope/?sentry_key={project['ingest_token']}"
                t0 = time.perf_counter()
                acked, latencies = post_all(url, bodies, args.clients)
                deadline = time.monotonic() + 600
                while counted(server, slug) < len(bodies):
                    if time.monotonic() > deadline:
                        raise RuntimeError("events were not all counted within 10 minutes")
                    time.sleep(0.05)
                stored = time.perf_counter() - t0
                result = {"acked_per_s": len(bodies) / acked, "stored_per_s": len(bodies) / stored,
                          "latency_ms": statistics.median(latencies) * 1000}
                log(f"run {n}: {result['acked_per_s']:,.0f} events/s acknowledged, "
                    f"{result['stored_per_s']:,.0f} events/s counted into issues, median request "
                    f"{result['latency_ms']:.1f} ms")
                results.append(result)
        finally:
            server.stop()

    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    cmd = "python bench/run.py errors " + " ".join(argv) if argv else "python bench/run.py errors"
    print(f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{cmd.strip()}`.\n")
    print(f"- **Data**: {args.runs} runs x {args.events:,} Python exception events ({total:,} in all) in "
          f"{args.groups} issues, {raw_bytes / total:,.0f} bytes of JSON per event "
          f"({wire_bytes / total:,.0f} bytes gzip'd on the wire), one event per envelope, as sentry_sdk sends.")
    print(f"- **Machine**: {machine()}.")
    print(f"- **Load**: {args.clients} concurrent HTTP clients, one server process, a fresh project per run; "
          "median of the runs.\n")
    print("| metric | median | runs |")
    print("|---|--:|---|")
    print(f"| events/s acknowledged (durable in the WAL) | {med['acked_per_s']:,.0f} | "
          + ", ".join(f"{r['acked_per_s']:,.0f}" for r in results) + " |")
    print(f"| events/s counted into issues (scrubbed, grouped, stored) | {med['stored_per_s']:,.0f} | "
          + ", ".join(f"{r['stored_per_s']:,.0f}" for r in results) + " |")
    print(f"| request latency, median ms | {med['latency_ms']:.1f} | "
          + ", ".join(f"{r['latency_ms']:.1f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
