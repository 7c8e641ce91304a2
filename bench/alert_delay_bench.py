"""Alert delay: from a sample crossing a rule's threshold to the webhook arriving at a receiver.

One real server (``stackwatch server``) with one alerting rule (``bench_error_ratio > 0.05``,
``for`` = ``--for``) evaluated every ``--interval``, routed with ``group_wait: 0s`` to a webhook
receiver in this process. Each trial pushes a crossing sample for its own label set (its own
alert group) through the import endpoint and times the notification. Target (issue): at most
one evaluation interval + ``for`` + 2 s. Written to the ``## Alert delay`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from _common import free_port, write_section

REPO = Path(__file__).resolve().parents[1]
STACKWATCH = str(Path(sys.executable).parent / "stackwatch")
ADMIN = "bench-admin-token-0123456789abcdef"
INGEST = "bench-ingest-token-0123456789abcdef"


class Receiver:
    """Records when each trial's firing notification arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        arrived = self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if body.get("status") == "firing":
                    arrived.setdefault(body.get("commonLabels", {}).get("trial", ""), now)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run(args: argparse.Namespace) -> str:
    receiver = Receiver()
    work = Path(tempfile.mkdtemp(prefix="stackwatch-alert-delay-"))
    (work / "rules.yml").write_text(f"""
groups:
  - name: bench
    rules:
      - alert: BenchErrorRatio
        expr: bench_error_ratio > 0.05
        for: {args.for_s:g}s
        labels: {{severity: critical}}
""")
    (work / "stackwatch.yml").write_text(f"""
rule_files: [rules.yml]
evaluation_interval: {args.interval:g}s
alerting:
  route:
    receiver: hook
    group_by: [alertname, trial]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 1h
  receivers:
    - name: hook
      webhook_configs: [{{url: "http://127.0.0.1:{receiver.port}/hook"}}]
""")
    port = free_port()
    env = {**os.environ, "STACKWATCH_ADMIN_TOKEN": ADMIN, "STACKWATCH_INGEST_TOKEN": INGEST,
           "STACKWATCH_LOG_LEVEL": "WARNING"}
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([STACKWATCH, "server", "--data-dir", str(work / "data"), "--port", str(port),
                             "--config", str(work / "stackwatch.yml")], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    delays: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        load_before = os.getloadavg()[0]
        for trial in range(args.trials):
            # Staggered against the evaluation phase, so the trials sample the whole interval.
            time.sleep(args.interval * ((trial * 0.37) % 1))
            crossed = time.time()
            body = f'bench_error_ratio{{trial="{trial}"}} 0.5 {int(crossed * 1000)}\n'
            r = httpx.post(url + "/api/v1/import/prometheus", content=body,
                           headers={"Authorization": f"Bearer {INGEST}"}, timeout=10)
            r.raise_for_status()
            limit = time.monotonic() + args.interval + args.for_s + 30
            while str(trial) not in receiver.arrived and time.monotonic() < limit:
                time.sleep(0.02)
            if str(trial) not in receiver.arrived:
                raise SystemExit(f"trial {trial}: no notification within {args.interval + args.for_s + 30:g} s")
            delays.append(receiver.arrived[str(trial)] - crossed)
            print(f"trial {trial}: {delays[-1]:.2f} s", flush=True)
        load_after = os.getloadavg()[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        receiver.server.shutdown()
    bound = args.interval + args.for_s + 2
    median, worst = statistics.median(delays), max(delays)
    verdict = "pass" if worst <= bound else "**fail**"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count()
    return f"""## Alert delay

Run on {when} with `python bench/run.py alert_delay --interval {args.interval:g} --for {args.for_s:g} \
--trials {args.trials}`: one server, one rule (`bench_error_ratio > 0.05`, `for: {args.for_s:g}s`) evaluated every \
{args.interval:g} s, routed with `group_wait: 0s` to a webhook receiver on loopback; each trial pushes a crossing \
sample for its own alert group, staggered against the evaluation phase, and times the notification. Machine: \
{cpus} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}; load average \
{load_before:.1f} at the start, {load_after:.1f} at the end.

| metric | value | target |
|---|--:|---|
| threshold crossing → webhook, median s ({len(delays)} trials) | {median:.2f} | |
| the same, worst s | {worst:.2f} | ≤ interval + for + 2 s = {bound:g} s: {verdict} |
| each trial, s | {", ".join(f"{d:.2f}" for d in delays)} | |
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=5.0, help="evaluation interval, seconds")
    parser.add_argument("--for", dest="for_s", type=float, default=10.0, help="the rule's for, seconds")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    section = run(args)
    print(section)
    if not args.no_docs:
        write_section("Alert delay", section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
