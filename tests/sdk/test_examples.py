"""The example apps, stand-alone (no server), through their frameworks' test clients.

Each runs in a subprocess: ``stackwatch.sdk.init()`` configures the process (logging, tracing),
which must not leak into the rest of the test session. The JSON log lines the app prints are
parsed back and checked, as an operator would read them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, body: str, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "STACKWATCH_ENVIRONMENT": "production",
           "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}", "STACKWATCH_SERVICE": f"example-{name}"}
    for var in ("STACKWATCH_URL", "STACKWATCH_INGEST_TOKEN", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(var, None)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], cwd=ROOT / "examples" / name, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
    statuses = next(line for line in lines if "statuses" in line)
    return statuses["statuses"], [line for line in lines if "message" in line]


def find(logs: list[dict[str, Any]], message: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["message"].startswith(message)]


def test_flask_example(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    statuses, logs = run_example("flask_app", """
        import json, sys
        import app as example
        c = example.app.test_client()
        s = {}
        s["leads"] = c.get("/api/leads?city=Austin").status_code
        s["lead"] = c.get("/api/leads/3").status_code
        s["missing"] = c.get("/api/leads/999").status_code
        s["new"] = c.post("/api/leads", json={"customer_name": "Ann", "customer_phone": "+15125550100",
                                             "city": "Austin", "description": "leak"}).status_code
        s["invalid"] = c.post("/api/leads", json={"city": "Austin"}).status_code
        s["login"] = c.post("/api/auth/login", json={"email": "plumber1@example.com", "password": "secret-1"}).status_code
        s["bad_login"] = c.post("/api/auth/login", json={"email": "plumber1@example.com", "password": "x"},
                                headers={"X-Forwarded-For": "203.0.113.5"}).status_code
        s["declined"] = c.post("/api/payments", json={"lead_id": 5, "plumber_id": 2,
                                                     "card_number": "4000 0000 0000 9995"}).status_code
        s["leaderboard"] = c.get("/api/plumbers/leaderboard").status_code
        s["revenue"] = c.get("/api/reports/revenue").status_code
        s["crash"] = c.get("/api/debug/crash").status_code
        s["ready"] = c.get("/health/ready").get_json()["checks"]["database"]["status"]
        s["metrics"] = "db_query_duration_seconds_bucket" in c.get("/metrics").get_data(as_text=True)
        print(json.dumps({"statuses": s}), flush=True)
    """, tmp_path)
    assert statuses == {"leads": 200, "lead": 200, "missing": 404, "new": 201, "invalid": 400, "login": 200,
                        "bad_login": 401, "declined": 402, "leaderboard": 200, "revenue": 200, "crash": 500,
                        "ready": "healthy", "metrics": True}
    (login,) = find(logs, "Failed login attempt")
    assert login["level"] == "ERROR" and login["service"] == "example-flask_app"
    assert login["context"]["ip_address"] == "203.0.113.5" and login["context"]["email"] == "p***@example.com"
    (payment,) = find(logs, "Payment processing failed")
    assert payment["context"]["error_code"] == "insufficient_funds"
    assert "4000 0000 0000 9995" not in json.dumps(payment)
    assert find(logs, "N+1 query detected")[0]["context"]["count"] == 11
    assert find(logs, "Slow query detected")[0]["context"]["duration_ms"] >= 500
    assert find(logs, "Exception on /api/debug/crash")[0]["exception"]["type"] == "RuntimeError"
    assert find(logs, "Business event: lead_created")


def test_fastapi_example(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    statuses, logs = run_example("fastapi_app", """
        import json
        from starlette.testclient import TestClient
        import app as example
        c = TestClient(example.app, raise_server_exceptions=False)
        s = {}
        s["leads"] = c.get("/api/leads").status_code
        s["missing"] = c.get("/api/leads/999").status_code
        s["bad_login"] = c.post("/api/auth/login", json={"email": "owner@example.com", "password": "x"}).status_code
        s["login"] = c.post("/api/auth/login", json={"email": "owner@example.com", "password": "letmein"}).status_code
        s["declined"] = c.post("/api/payments", json={"lead_id": 1, "plumber_id": 2,
                                                     "card_number": "4000000000000002"}).status_code
        s["revenue"] = c.get("/api/reports/revenue").status_code
        s["crash"] = c.get("/api/debug/crash").status_code
        s["ready"] = c.get("/health/ready").json()["checks"]["database"]["status"]
        print(json.dumps({"statuses": s}), flush=True)
    """, tmp_path)
    assert statuses == {"leads": 200, "missing": 404, "bad_login": 401, "login": 200, "declined": 402,
                        "revenue": 200, "crash": 500, "ready": "healthy"}
    assert find(logs, "Failed login attempt")[0]["level"] == "ERROR"
    assert find(logs, "Payment processing failed")[0]["context"]["error_code"] == "card_declined"
    assert find(logs, "Slow query detected")[0]["context"]["operation"] == "SELECT"
