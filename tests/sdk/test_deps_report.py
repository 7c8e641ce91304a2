"""Dependency reports: readiness results posted as NDJSON ``system`` log events, rate-limited."""

from __future__ import annotations

import time
from pathlib import Path

from telemetry_receiver import TelemetryReceiver

from serverproc import free_port
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk._deps_report import DependencyReporter


def test_results_become_system_log_events(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        config = SDKConfig(service="leads-api", environment="production", version="1.2.3",
                           server_url=receiver.url + "/", token="swi_x")
        reporter = DependencyReporter(config, interval=60)
        reporter.report({
            "database": {"status": "healthy", "message": "ok", "latency_ms": 3.14159, "required": True},
            "mailer": {"status": "degraded", "message": "slow", "latency_ms": 950.0, "required": False},
        })
        assert receiver.wait_for(lambda: len(receiver.ndjson_events()) == 2)
        request = receiver.on("/api/v1/logs")[0]
        events = {e["dependency.name"]: e for e in receiver.ndjson_events()}
    assert request.headers["authorization"] == "Bearer swi_x"
    assert request.headers["content-type"] == "application/x-ndjson"
    db = events["database"]
    assert db["message"] == "dependency database healthy"
    assert db["log_type"] == "system" and db["level"] == "INFO" and db["service"] == "leads-api"
    assert db["dependency.status"] == "healthy" and db["dependency.latency_ms"] == 3.14
    assert events["mailer"]["level"] == "WARN" and events["mailer"]["dependency.required"] is False


def test_report_never_blocks_and_is_rate_limited() -> None:
    with TelemetryReceiver() as receiver:
        reporter = DependencyReporter(SDKConfig(server_url=receiver.url, token="t"), interval=0.5)
        reporter.report({"db": {"status": "healthy", "latency_ms": 1}})
        assert receiver.wait_for(lambda: len(receiver.on("/api/v1/logs")) == 1, timeout=5)
        first_sent = time.monotonic()
        started = time.perf_counter()
        for i in range(50):
            reporter.report({"db": {"status": "healthy" if i < 49 else "unhealthy", "latency_ms": i}})
        assert time.perf_counter() - started < 0.1
        # The 50 reports inside the interval coalesce into one send, carrying the latest state.
        assert receiver.wait_for(lambda: len(receiver.on("/api/v1/logs")) >= 2, timeout=5)
        assert time.monotonic() - first_sent >= 0.45
        time.sleep(0.7)
        posts = receiver.on("/api/v1/logs")
        events = receiver.ndjson_events()
    assert len(posts) == 2
    assert events[-1]["dependency.status"] == "unhealthy" and events[-1]["level"] == "ERROR"


def test_an_unreachable_server_costs_nothing_visible() -> None:
    reporter = DependencyReporter(SDKConfig(server_url=f"http://127.0.0.1:{free_port()}", token="t"), interval=0)
    started = time.perf_counter()
    reporter.report({"db": {"status": "healthy", "latency_ms": 1}})
    assert time.perf_counter() - started < 0.05
    deadline = time.monotonic() + 5
    while reporter.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reporter.failed == 1 and reporter.sent == 0
    reporter.close(timeout=0.5)


def test_without_a_server_nothing_happens() -> None:
    reporter = DependencyReporter(SDKConfig())
    reporter.report({"db": {"status": "healthy"}})
    assert reporter._thread is None
