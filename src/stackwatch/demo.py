"""``stackwatch demo``: run an example app against a server with realistic traffic.

The example app (``examples/flask_app`` under gunicorn, or ``examples/fastapi_app`` under
uvicorn, two workers each) runs in a subprocess pointed at the server through ``STACKWATCH_*``
variables, exactly as a user's app would be. A load generator then sends a weighted mix of
requests at a fixed rate for a fixed time: browsing and creating leads, logins that succeed and
logins that fail, payments that go through and payments that are declined, a slow endpoint, a
slow query, an N+1 endpoint and an endpoint that raises. At the end the app is stopped (its SDK
flushes what it buffered) and a summary is printed: requests per scenario with status codes
and latency percentiles, and the app's log lines by level.

The load is bounded (``duration`` seconds at ``rate`` requests per second) and goes only to the
app on the loopback interface.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["APPS", "DemoError", "Scenario", "find_examples", "run_demo"]


class DemoError(RuntimeError):
    """The example app could not be started (the message holds the end of its output)."""


@dataclass(frozen=True)
class Scenario:
    """One kind of request the load generator sends."""

    name: str
    weight: int
    method: str
    path: Callable[[random.Random], str]
    body: Callable[[random.Random], dict[str, Any]] | None = None


def _fixed(path: str) -> Callable[[random.Random], str]:
    return lambda _rng: path


CITIES = ["Austin", "Dallas", "Houston", "Denver", "Phoenix", "Seattle"]
_GOOD_CARDS = ["4242 4242 4242 4242", "5555 5555 5555 4444"]
_BAD_CARDS = ["4000 0000 0000 0002", "4000 0000 0000 9995"]


def _new_lead(rng: random.Random) -> dict[str, Any]:
    lead = {"customer_name": f"Customer {rng.randint(1000, 9999)}", "customer_phone": f"+1512555{rng.randint(0, 9999):04d}",
            "city": rng.choice(CITIES), "description": "Water heater leaking", "price_cents": rng.choice([1500, 2500])}
    if rng.random() < 0.1:
        del lead["customer_phone"]  # a validation error now and then
    return lead


def _payment(cards: list[str]) -> Callable[[random.Random], dict[str, Any]]:
    return lambda rng: {"lead_id": rng.randint(1, 100), "plumber_id": rng.randint(1, 20), "card_number": rng.choice(cards)}


FLASK_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("browse leads", 30, "GET", lambda rng: f"/api/leads?city={rng.choice(CITIES)}"),
    Scenario("view lead", 20, "GET", lambda rng: f"/api/leads/{rng.randint(1, 220)}"),
    Scenario("list plumbers", 8, "GET", _fixed("/api/plumbers")),
    Scenario("create lead", 8, "POST", _fixed("/api/leads"), _new_lead),
    Scenario("login", 5, "POST", _fixed("/api/auth/login"),
             lambda rng: {"email": f"plumber{(n := rng.randint(1, 20))}@example.com", "password": f"secret-{n}"}),
    Scenario("failed login", 8, "POST", _fixed("/api/auth/login"),
             lambda rng: {"email": f"plumber{rng.randint(1, 25)}@example.com", "password": "wrong-password"}),
    Scenario("payment", 6, "POST", _fixed("/api/payments"), _payment(_GOOD_CARDS)),
    Scenario("declined payment", 4, "POST", _fixed("/api/payments"), _payment(_BAD_CARDS)),
    Scenario("slow endpoint", 2, "GET", _fixed("/api/reports/daily")),
    Scenario("slow query", 2, "GET", _fixed("/api/reports/revenue")),
    Scenario("n+1 endpoint", 2, "GET", _fixed("/api/plumbers/leaderboard")),
    Scenario("exception", 2, "GET", _fixed("/api/debug/crash")),
    Scenario("readiness probe", 3, "GET", _fixed("/health/ready")),
)

FASTAPI_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("browse leads", 35, "GET", _fixed("/api/leads")),
    Scenario("view lead", 25, "GET", lambda rng: f"/api/leads/{rng.randint(1, 110)}"),
    Scenario("login", 5, "POST", _fixed("/api/auth/login"),
             lambda rng: {"email": "owner@example.com", "password": "letmein"}),
    Scenario("failed login", 8, "POST", _fixed("/api/auth/login"),
             lambda rng: {"email": "owner@example.com", "password": "guess"}),
    Scenario("payment", 6, "POST", _fixed("/api/payments"), _payment(_GOOD_CARDS)),
    Scenario("declined payment", 4, "POST", _fixed("/api/payments"), _payment(_BAD_CARDS)),
    Scenario("slow endpoint", 2, "GET", _fixed("/api/reports/daily")),
    Scenario("slow query", 2, "GET", _fixed("/api/reports/revenue")),
    Scenario("exception", 2, "GET", _fixed("/api/debug/crash")),
    Scenario("readiness probe", 3, "GET", _fixed("/health/ready")),
)

#: app name -> (example directory name, default service name, scenarios)
APPS: dict[str, tuple[str, str, tuple[Scenario, ...]]] = {
    "flask": ("flask_app", "plumberleads-api", FLASK_SCENARIOS),
    "fastapi": ("fastapi_app", "plumberleads-fastapi", FASTAPI_SCENARIOS),
}


def find_examples() -> Path:
    """The ``examples/`` directory: ``STACKWATCH_EXAMPLES_DIR``, else the source checkout's."""
    configured = os.environ.get("STACKWATCH_EXAMPLES_DIR")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[2] / "examples", Path.cwd() / "examples"]
    for candidate in candidates:
        if (candidate / "flask_app" / "app.py").is_file():
            return candidate
    raise DemoError("examples/ not found: run from a Stackwatch checkout or set STACKWATCH_EXAMPLES_DIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Result:
    scenario: str
    status: int | None
    seconds: float
    error: str | None = None


@dataclass
class _Stats:
    results: list[_Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: _Result) -> None:
        with self.lock:
            self.results.append(result)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_demo(
    app: str = "flask",
    *,
    server_url: str | None = None,
    token: str | None = None,
    duration: float = 30.0,
    rate: float = 5.0,
    workers: int = 2,
    service: str | None = None,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the example ``app`` for ``duration`` seconds at ``rate`` requests/s; return the summary.

    The summary is also printed through ``echo``. Raises :class:`DemoError` when the app does not
    start. ``service`` overrides the example's service name (tests use a unique one).
    """
    if app not in APPS:
        raise DemoError(f"unknown app {app!r}: choose {' or '.join(APPS)}")
    if duration <= 0 or rate <= 0:
        raise DemoError("duration and rate must be positive")
    directory_name, default_service, scenarios = APPS[app]
    app_dir = find_examples() / directory_name
    service = service or default_service
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    rng = random.Random(seed)

    with tempfile.TemporaryDirectory(prefix="stackwatch-demo-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "prometheus").mkdir()
        env = {
            **os.environ,
            "STACKWATCH_SERVICE": service,
            "STACKWATCH_ENVIRONMENT": os.environ.get("STACKWATCH_ENVIRONMENT", "demo"),
            "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("STACKWATCH_URL", "STACKWATCH_INGEST_TOKEN"):
            env.pop(name, None)
        if server_url:
            env["STACKWATCH_URL"] = server_url
        if token:
            env["STACKWATCH_INGEST_TOKEN"] = token
        if app == "flask":
            command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
                       "--chdir", str(app_dir), "--graceful-timeout", "10", "app:app"]
        else:
            command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(app_dir), "--host", "127.0.0.1",
                       "--port", str(port), "--workers", str(workers), "--no-access-log"]
        log_path = tmp_path / "app.log"
        echo(f"starting {app} example ({service}) on {base_url} with {workers} workers"
             + (f", sending to {server_url}" if server_url else ", stand-alone (no server)"))
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                _wait_ready(proc, base_url, log_path)
                stats = _generate_load(base_url, scenarios, duration, rate, rng)
                app_metrics = _app_metrics(base_url)
            finally:
                _stop(proc)
        log_levels = _count_log_levels(log_path)

    summary = _summarize(app, service, server_url, duration, stats, log_levels, app_metrics)
    for line in format_summary(summary):
        echo(line)
    return summary


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the example app exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(base_url + "/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise DemoError(f"the example app did not become live in {timeout:.0f}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _generate_load(base_url: str, scenarios: tuple[Scenario, ...], duration: float, rate: float,
                   rng: random.Random) -> _Stats:
    stats = _Stats()
    weights = [s.weight for s in scenarios]
    interval = 1.0 / rate
    # Slow endpoints take > 1 s: enough threads that they never hold the schedule back.
    pool_size = max(4, min(64, int(rate * 2) + 4))
    # Idle connections are dropped well before the servers' keep-alive timeouts (uvicorn 5 s,
    # gunicorn 2 s), so a request never races the server closing its connection.
    limits = httpx.Limits(max_connections=pool_size, keepalive_expiry=1.0)
    with httpx.Client(base_url=base_url, timeout=15, limits=limits) as client, ThreadPoolExecutor(pool_size) as pool:

        def send(scenario: Scenario, path: str, body: dict[str, Any] | None, ip: str) -> None:
            started = time.perf_counter()
            for attempt in (1, 2):
                try:
                    response = client.request(scenario.method, path, json=body, headers={"X-Forwarded-For": ip})
                    stats.add(_Result(scenario.name, response.status_code, time.perf_counter() - started))
                    return
                except httpx.TimeoutException as exc:  # a slow answer is what the scenario shows
                    stats.add(_Result(scenario.name, None, time.perf_counter() - started, type(exc).__name__))
                    return
                except httpx.TransportError as exc:
                    # A connection the app dropped before answering (a worker still starting, a
                    # closed keep-alive): once more on a fresh one, so each scenario is shown.
                    if attempt == 2:
                        stats.add(_Result(scenario.name, None, time.perf_counter() - started, type(exc).__name__))
                except httpx.HTTPError as exc:
                    stats.add(_Result(scenario.name, None, time.perf_counter() - started, type(exc).__name__))
                    return

        # Every scenario once first (even a short demo shows each kind of trouble), then the mix.
        first_round = list(scenarios)
        rng.shuffle(first_round)
        start = time.monotonic()
        next_at = start
        while next_at < start + duration:
            scenario = first_round.pop() if first_round else rng.choices(scenarios, weights)[0]
            body = scenario.body(rng) if scenario.body else None
            ip = f"203.0.113.{rng.randint(1, 254)}"  # documentation range: realistic, never routed
            pool.submit(send, scenario, scenario.path(rng), body, ip)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    return stats


def _app_metrics(base_url: str) -> dict[str, Any] | None:
    """The app's own view, from the SDK's ``/metrics?format=json`` (None when unavailable)."""
    try:
        response = httpx.get(base_url + "/metrics", params={"format": "json"}, timeout=5)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _count_log_levels(path: Path) -> dict[str, int]:
    levels: Counter[str] = Counter()
    try:
        with path.open(errors="replace") as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        levels[str(json.loads(line).get("level", "?"))] += 1
                    except ValueError:
                        pass
    except OSError:
        pass
    return dict(levels)


def _summarize(app: str, service: str, server_url: str | None, duration: float, stats: _Stats,
               log_levels: dict[str, int], app_metrics: dict[str, Any] | None) -> dict[str, Any]:
    by_scenario: dict[str, list[_Result]] = defaultdict(list)
    for result in stats.results:
        by_scenario[result.scenario].append(result)
    scenarios = {}
    for name, results in sorted(by_scenario.items(), key=lambda item: -len(item[1])):
        latencies = [r.seconds * 1000 for r in results]
        scenarios[name] = {
            "requests": len(results),
            "statuses": dict(sorted(Counter(str(r.status or r.error) for r in results).items())),
            "p50_ms": round(_percentile(latencies, 0.5), 1),
            "p95_ms": round(_percentile(latencies, 0.95), 1),
        }
    statuses = Counter(r.status for r in stats.results)
    return {
        "app": app,
        "service": service,
        "server_url": server_url,
        "duration_s": duration,
        "requests": len(stats.results),
        "ok": sum(n for s, n in statuses.items() if s is not None and s < 400),
        "client_errors": sum(n for s, n in statuses.items() if s is not None and 400 <= s < 500),
        "server_errors": sum(n for s, n in statuses.items() if s is not None and s >= 500),
        "failed": statuses.get(None, 0),
        "scenarios": scenarios,
        "log_lines": log_levels,
        "app_metrics": app_metrics,
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as plain text lines (a table per scenario, then totals and where to look)."""
    lines = [
        "",
        f"{summary['requests']} requests in {summary['duration_s']:g}s to {summary['service']}: "
        f"{summary['ok']} ok, {summary['client_errors']} 4xx, {summary['server_errors']} 5xx, "
        f"{summary['failed']} failed",
        "",
        f"{'scenario':<20} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}  statuses",
    ]
    for name, row in summary["scenarios"].items():
        statuses = " ".join(f"{k}x{v}" for k, v in row["statuses"].items())
        lines.append(f"{name:<20} {row['requests']:>8} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}  {statuses}")
    if summary["log_lines"]:
        levels = ", ".join(f"{k} {v}" for k, v in sorted(summary["log_lines"].items()))
        lines += ["", f"app log lines: {levels}"]
    metrics = summary.get("app_metrics") or {}
    application = metrics.get("application") if isinstance(metrics, dict) else None
    if isinstance(application, dict):
        requests = application.get("requests", {})
        times = application.get("response_times", {})
        p95 = times.get("p95")
        p95_text = f"{p95 * 1000:.1f} ms" if isinstance(p95, int | float) else "?"
        lines.append(f"app /metrics: {requests.get('total', '?')} requests, error rate "
                     f"{requests.get('error_rate', '?')}, p95 {p95_text}")
    if summary["server_url"]:
        lines += [
            "",
            f"look in Stackwatch ({summary['server_url']}):",
            f"  stackwatch logs search 'service:{summary['service']} AND level:ERROR'",
            f"  stackwatch logs search 'service:{summary['service']} AND message:\"Failed login attempt\"'",
            f"  stackwatch logs search 'service:{summary['service']} AND message:\"Slow query detected\"'",
        ]
    return lines
