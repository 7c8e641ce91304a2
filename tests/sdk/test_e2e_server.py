"""End to end: the example apps, instrumented by the SDK, report to a RUNNING Stackwatch server.

The Flask example runs under gunicorn with two workers, pointed at the server only through
``STACKWATCH_*`` variables; its log lines (failed logins, declined payments, an unhandled
exception, a slow query, an N+1, a slow request) and its dependency reports are then found
through the server's search API. ``stackwatch demo`` runs the FastAPI example the same way.

The SDK's spans and its Sentry events go to the same server and are read back through the
trace and issues APIs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import INGEST_TOKEN, ServerProcess, free_port
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk._deps_report import DependencyReporter
from stackwatch.sdk.health import HealthRegistry

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("e2e") / "data").start()
    yield srv
    srv.stop()


def search(server: ServerProcess, q: str, limit: int = 50) -> dict[str, Any]:
    with server.client() as c:
        r = c.get("/api/v1/logs/search", params={"q": q, "start": "-1h", "end": "+1h", "limit": limit})
        r.raise_for_status()
        return dict(r.json())


def app_env(server: ServerProcess, tmp_path: Path, service: str) -> dict[str, str]:
    (tmp_path / "prom").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "STACKWATCH_URL": server.url,
        "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN,
        "STACKWATCH_SERVICE": service,
        "STACKWATCH_ENVIRONMENT": "production",
        "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'leads.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }


def test_flask_example_logs_are_found_on_the_server(server: ServerProcess, tmp_path: Path) -> None:
    service = f"e2e-leads-{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir",
             str(EXAMPLES / "flask_app"), "--graceful-timeout", "10", "app:app"],
            env=app_env(server, tmp_path, service), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(base + "/health/live", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            with httpx.Client(base_url=base, timeout=15) as client:
                assert client.get("/api/leads", params={"city": "Austin"}).status_code == 200
                bad = client.post("/api/auth/login", json={"email": "plumber3@example.com", "password": "nope"},
                                  headers={"X-Forwarded-For": "203.0.113.9"})
                assert bad.status_code == 401
                declined = client.post("/api/payments", json={"lead_id": 4, "plumber_id": 2,
                                                              "card_number": "4000 0000 0000 0002"})
                assert declined.status_code == 402
                assert client.get("/api/debug/crash").status_code == 500
                assert client.get("/api/reports/revenue").status_code == 200
                assert client.get("/api/plumbers/leaderboard").status_code == 200
                assert client.get("/api/reports/daily").status_code == 200
                ready = client.get("/health/ready")
                assert ready.status_code == 200 and ready.json()["checks"]["database"]["status"] == "healthy"
        finally:
            # SIGTERM: gunicorn stops its workers gracefully and each one flushes its shipper.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    app_log = log_path.read_text(errors="replace")

    q = f"service:{service}"
    # The guide's own searches (guide 1, "Log Search Examples").
    assert server.wait_for_count(f'{q} AND level:ERROR AND message:"Failed login attempt" AND context.ip_address:*',
                                 1, start="-1h") == 1, app_log
    login = search(server, f'{q} AND message:"Failed login attempt"')["hits"][0]
    assert login["attributes"]["context.ip_address"] == "203.0.113.9"
    assert login["attributes"]["context.email"] == "p***@example.com"  # redacted in the process
    assert len(login["trace_id"]) == 32 and login["trace_id"] != "0" * 32  # the request's trace
    assert server.wait_for_count(
        f'{q} AND level:ERROR AND message:"Payment processing failed" AND context.error_code:card_declined', 1,
        start="-1h") == 1
    payment = search(server, f'{q} AND message:"Payment processing failed"')["hits"][0]
    assert payment["attributes"]["context.card_number"] == "************0002"
    # The unhandled exception, with its stack, via the error log.
    assert server.wait_for_count(f"{q} AND level:ERROR AND exception.type:RuntimeError", 1, start="-1h") == 1
    crash = search(server, f"{q} AND exception.type:RuntimeError")["hits"][0]
    assert "Lead matching service returned malformed response" in crash["attributes"]["exception.message"]
    assert "Traceback" in crash["attributes"]["exception.stack"]
    # Database and request warnings.
    assert server.wait_for_count(f'{q} AND message:"Slow query detected" AND context.duration_ms:>500', 1,
                                 start="-1h") == 1
    assert server.wait_for_count(f'{q} AND message:"N+1 query detected" AND context.count:>10', 1, start="-1h") == 1
    assert server.wait_for_count(f'{q} AND level:WARN AND context.route:"/api/reports/daily"', 1, start="-1h") == 1
    # Dependency reports from the readiness probe.
    assert server.wait_for_count(f"{q} AND log_type:system AND dependency.name:database", 1, start="-1h") >= 1
    dep = search(server, f"{q} AND log_type:system AND dependency.name:database")["hits"][0]
    assert dep["message"] == "dependency database healthy"
    assert dep["attributes"]["dependency.status"] == "healthy"


def test_health_registry_reports_dependencies_to_the_server(server: ServerProcess) -> None:
    """Readiness results from HealthRegistry, through its listener hook, found by search."""
    service = f"e2e-deps-{uuid.uuid4().hex[:8]}"
    config = SDKConfig(service=service, server_url=server.url, token=INGEST_TOKEN)
    reporter = DependencyReporter(config, interval=0)
    health = HealthRegistry(config)
    health.add_check("database", lambda: "Database connection successful")
    health.add_check("payments-api", lambda: False, required=False)
    health.add_listener(reporter.report)
    status, body = health.ready()
    assert status == 200 and body["status"] == "degraded"
    assert server.wait_for_count(f"service:{service} AND log_type:system", 2, start="-1h") == 2
    hits = search(server, f'service:{service} AND message:"dependency payments-api unhealthy"')["hits"]
    assert len(hits) == 1
    attributes = hits[0]["attributes"]
    assert attributes["dependency.name"] == "payments-api"
    assert attributes["dependency.status"] == "unhealthy"
    assert float(attributes["dependency.latency_ms"]) >= 0
    assert hits[0]["level"] == "ERROR" and hits[0]["log_type"] == "system"


def test_demo_command_against_a_real_server(server: ServerProcess) -> None:
    pytest.importorskip("uvicorn")
    service = f"e2e-demo-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", "demo", "--app", "fastapi", "--server", server.url,
         "--token", INGEST_TOKEN, "--duration", "3", "--rate", "6", "--service", service],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"requests in 3s to {service}" in result.stdout
    for scenario in ("failed login", "declined payment", "slow endpoint", "slow query", "exception"):
        assert scenario in result.stdout, result.stdout  # every kind of trouble was sent at least once
    # On a failure, the demo's summary (status codes and latencies per scenario, the app's log
    # lines by level) says whether the request failed or its log line went missing.
    for message in ("Failed login attempt", "Payment processing failed", "Slow query detected"):
        found = server.wait_for_count(f'service:{service} AND message:"{message}"', 1, start="-1h")
        assert found >= 1, f"no {message!r} line stored\n{result.stdout}"


def run_script(code: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _wait_json(server: ServerProcess, path: str, ready: Any, timeout: float = 20.0, **params: Any) -> Any:
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while True:
            r = c.get(path, params=params)
            if r.status_code == 200 and ready(r.json()):
                return r.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {r.status_code} {r.text[:500]}")
            time.sleep(0.3)


def test_sdk_spans_reach_the_server_as_a_trace(server: ServerProcess) -> None:
    stats = run_script(f"""
        import json
        from opentelemetry import trace
        from stackwatch.sdk._config import SDKConfig
        from stackwatch.sdk import tracing
        tracing.setup_tracing(SDKConfig(service="e2e-traces", server_url={server.url!r}, token={INGEST_TOKEN!r}))
        tracer = trace.get_tracer("e2e")
        with tracer.start_as_current_span("POST /api/payments") as root:
            with tracer.start_as_current_span("SELECT payments"):
                pass
        tracing.force_flush(10000)
        print(json.dumps({{**tracing.export_stats.__dict__,
                          "trace_id": format(root.get_span_context().trace_id, "032x")}}))
    """)
    assert stats["exported"] == 2 and stats["failed"] == 0 and stats["last_status"] == 200
    trace_json = _wait_json(server, f"/api/v1/traces/{stats['trace_id']}", lambda j: len(j["spans"]) == 2)
    spans = {s["name"]: s for s in trace_json["spans"]}
    assert spans["POST /api/payments"]["service"] == "e2e-traces" and spans["POST /api/payments"]["depth"] == 0
    assert spans["SELECT payments"]["parent_span_id"] == spans["POST /api/payments"]["span_id"]


def test_sdk_error_events_become_an_issue(server: ServerProcess) -> None:
    """sentry_sdk, set up by the SDK with the server's DSN, reports an exception twice: one issue."""
    out = run_script(f"""
        import json
        import sentry_sdk
        from stackwatch.sdk._config import SDKConfig
        from stackwatch.sdk.errors import setup_errors
        assert setup_errors(SDKConfig(service="e2e-errors", server_url={server.url!r}, token={INGEST_TOKEN!r}))
        def charge():
            raise ValueError("Payment processing failed for order 123")
        for _ in range(2):
            try:
                charge()
            except ValueError:
                sentry_sdk.capture_exception()
        sentry_sdk.flush(5)
        print(json.dumps({{"ok": True}}))
    """)
    assert out["ok"]
    # Other tests in this module run example apps that report payment errors of their own: this
    # script's issue is the one whose culprit is its charge() function.
    def mine(j: dict[str, Any]) -> list[dict[str, Any]]:
        return [i for i in j["issues"] if "charge" in i["culprit"] and i["count"] == 2]

    found = _wait_json(server, "/api/v1/issues", lambda j: bool(mine(j)), query="Payment processing")
    (issue,) = mine(found)
    assert issue["title"].startswith("ValueError: Payment processing failed")
    assert issue["level"] == "error" and issue["status"] == "unresolved"
