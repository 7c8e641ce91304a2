"""RequestMetrics and the business metric helpers, read back through prometheus-client's parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from stackwatch.sdk import metrics as sdk_metrics
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.metrics import RequestMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)  # type: ignore[no-any-return]


@pytest.fixture
def metrics() -> RequestMetrics:
    return RequestMetrics(SDKConfig(apdex_t=0.1), CollectorRegistry())


def test_red_series_by_template_and_status_class(metrics: RequestMetrics) -> None:
    for _ in range(3):
        metrics.record("GET", "/api/leads/{id}", 200, 0.05)
    metrics.record("GET", "/api/leads/{id}", 404, 0.02)
    metrics.record("POST", "/api/payments", 502, 0.3)
    metrics.record("POST", "/api/payments", 201, 0.9)
    body, content_type = metrics.prometheus_text()
    assert content_type.startswith("text/plain")
    parsed = samples(body.decode())
    assert value(parsed, "http_requests_total", method="GET", route="/api/leads/{id}", status_class="2xx") == 3
    assert value(parsed, "http_requests_total", method="GET", route="/api/leads/{id}", status_class="4xx") == 1
    assert value(parsed, "http_requests_total", method="POST", route="/api/payments", status_class="5xx") == 1
    assert value(parsed, "http_request_errors_total", method="POST", route="/api/payments") == 1
    assert value(parsed, "http_request_errors_total", method="GET", route="/api/leads/{id}") == 0
    assert value(parsed, "http_request_duration_seconds_count", method="GET", route="/api/leads/{id}") == 4
    assert value(parsed, "http_request_duration_seconds_bucket", method="POST", route="/api/payments",
                 le="1.0") == 2
    assert value(parsed, "http_request_duration_seconds_bucket", method="POST", route="/api/payments",
                 le="0.5") == 1
    assert value(parsed, "http_requests_in_flight") == 0
    # Apdex with T = 0.1: satisfied <= 0.1, tolerating <= 0.4, errors are frustrated.
    assert value(parsed, "http_apdex_satisfied_total", route="/api/leads/{id}") == 4
    assert value(parsed, "http_apdex_satisfied_total", route="/api/payments") == 0
    assert value(parsed, "http_apdex_tolerating_total", route="/api/payments") == 0  # 0.3 was a 502


def test_counts_stay_exact_under_threads_and_scrapes(metrics: RequestMetrics) -> None:
    """The request series count without a lock (see metrics._Tally): many threads recording
    while others scrape must still add up exactly, and scrapes must never go backwards."""
    import threading

    threads, per_thread = 8, 5000
    seen: list[float] = []
    done = threading.Event()

    def record() -> None:
        for i in range(per_thread):
            metrics.record("GET", "/api/leads/{id}", 200, 0.05 if i % 2 else 0.2)

    def scrape() -> None:
        while not done.is_set():
            seen.append(value(samples(metrics.prometheus_text()[0].decode()), "http_requests_total",
                              method="GET", route="/api/leads/{id}", status_class="2xx"))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=record) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    scraper.join()
    parsed = samples(metrics.prometheus_text()[0].decode())
    total = threads * per_thread
    assert value(parsed, "http_requests_total", method="GET", route="/api/leads/{id}", status_class="2xx") == total
    assert value(parsed, "http_request_duration_seconds_count", method="GET", route="/api/leads/{id}") == total
    assert value(parsed, "http_request_duration_seconds_bucket", method="GET", route="/api/leads/{id}",
                 le="0.05") == total / 2
    assert value(parsed, "http_apdex_satisfied_total", route="/api/leads/{id}") == total / 2
    assert seen == sorted(seen) and len(seen) > 1


def test_the_request_counters_keep_prometheus_client_semantics(metrics: RequestMetrics) -> None:
    """Code that touches the SDK's series through prometheus-client's API (an app adding to
    them, a test resetting them) sees ordinary counters."""
    metrics.record("POST", "/api/payments", 201, 0.01)
    child = metrics.requests.labels("POST", "/api/payments", "2xx")
    child.inc(2.5)
    child.inc()
    assert child._value.get() == 4.5
    child.reset()
    metrics.record("POST", "/api/payments", 201, 0.01)
    parsed = samples(metrics.prometheus_text()[0].decode())
    assert value(parsed, "http_requests_total", method="POST", route="/api/payments", status_class="2xx") == 1
    # A series counted before the SDK first saw it keeps its count.
    metrics.requests.labels("GET", "/early", "2xx").inc(3)
    metrics.record("GET", "/early", 200, 0.01)
    parsed = samples(metrics.prometheus_text()[0].decode())
    assert value(parsed, "http_requests_total", method="GET", route="/early", status_class="2xx") == 4


def test_in_flight_counts_requests_being_served(metrics: RequestMetrics) -> None:
    def in_flight() -> float:
        return value(samples(metrics.prometheus_text()[0].decode()), "http_requests_in_flight")

    assert in_flight() == 0
    metrics.enter()
    metrics.enter()
    assert in_flight() == 2
    assert in_flight() == 2  # a scrape does not move it
    metrics.exit()
    assert in_flight() == 1
    # A second RequestMetrics on the same registry shares the gauge and its count.
    other = RequestMetrics(SDKConfig(), metrics.registry)
    other.enter()
    assert in_flight() == 2
    other.exit()
    metrics.exit()
    assert in_flight() == 0


def test_in_flight_with_an_app_gauge_of_the_same_name() -> None:
    """An app that already defined ``http_requests_in_flight`` (as guide middlewares do) keeps
    its gauge, and its own increments still count beside the SDK's."""
    registry = CollectorRegistry()
    app_gauge = Gauge("http_requests_in_flight", "app's own", registry=registry)
    metrics = RequestMetrics(SDKConfig(), registry)
    assert metrics.in_flight is app_gauge
    app_gauge.inc()
    metrics.enter()
    assert value(samples(metrics.prometheus_text()[0].decode()), "http_requests_in_flight") == 2
    metrics.exit()
    app_gauge.dec()
    assert value(samples(metrics.prometheus_text()[0].decode()), "http_requests_in_flight") == 0


def test_openmetrics_when_the_scraper_asks(metrics: RequestMetrics) -> None:
    metrics.record("GET", "/", 200, 0.01)
    body, content_type = metrics.prometheus_text("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_cardinality_guards() -> None:
    metrics = RequestMetrics(SDKConfig(), CollectorRegistry(), max_routes=3)
    for i in range(10):
        metrics.record("GET", f"/r{i}", 200, 0.01)
    metrics.record("BREW", "/r0", 200, 0.01)
    parsed = samples(metrics.prometheus_text()[0].decode())
    routes = {dict(labels)["route"] for (name, labels) in parsed if name == "http_requests_total"}
    assert routes == {"/r0", "/r1", "/r2", "<other>"}
    assert value(parsed, "http_requests_total", method="GET", route="<other>", status_class="2xx") == 7
    assert value(parsed, "http_requests_total", method="OTHER", route="/r0", status_class="2xx") == 1


def test_json_summary_shape_and_numbers(metrics: RequestMetrics) -> None:
    for i in range(1, 101):
        metrics.record("GET", "/api/leads", 200, i / 1000)  # 1..100 ms
    metrics.record("POST", "/api/leads", 500, 0.2)
    metrics.record("GET", "/api/customers", 200, 0.3)
    status, content_type, body = metrics.answer("format=json")
    assert status == 200 and content_type == "application/json"
    summary = json.loads(body)
    assert set(summary) == {"timestamp", "application", "endpoints", "system"}
    app = summary["application"]
    assert app["requests"] == {"total": 102, "errors": 1, "error_rate": round(1 / 102, 6)}
    times = app["response_times"]
    assert times["average"] == pytest.approx((5.05 + 0.2 + 0.3) / 102, abs=1e-6)
    assert times["p50"] == 0.051 and times["p95"] == 0.097 and times["p99"] == 0.2
    assert app["uptime_seconds"] >= 0
    assert app["apdex"]["t"] == 0.1
    assert summary["endpoints"]["/api/leads"] == {"requests": 101, "errors": 1,
                                                  "avg_response_time": pytest.approx(5.25 / 101, abs=1e-6)}
    assert summary["endpoints"]["/api/customers"]["avg_response_time"] == 0.3
    system = summary["system"]
    assert system["cpu"]["count"] >= 1 and 0 <= system["cpu"]["usage_percent"] <= 100 * system["cpu"]["count"]
    assert set(system["memory"]) == {"total_mb", "available_mb", "used_mb", "percent"}
    assert set(system["disk"]) == {"total_gb", "used_gb", "free_gb", "percent"}
    assert summary["timestamp"].endswith("Z")


def test_percentile_reservoir_is_bounded() -> None:
    metrics = RequestMetrics(SDKConfig(), CollectorRegistry(), reservoir_size=100)
    for _ in range(1000):
        metrics.record("GET", "/", 200, 5.0)
    for _ in range(100):
        metrics.record("GET", "/", 200, 0.01)
    times = metrics.summary()["application"]["response_times"]
    assert times["window"] == 100 and times["p99"] == 0.01  # only the last 100 count
    assert times["average"] > 4  # the average covers every request


def test_empty_summary() -> None:
    summary = RequestMetrics(SDKConfig(), CollectorRegistry()).summary()
    assert summary["application"]["requests"] == {"total": 0, "errors": 0, "error_rate": 0.0}
    assert summary["application"]["response_times"]["p99"] == 0.0
    assert summary["endpoints"] == {}


def test_text_is_the_default_answer(metrics: RequestMetrics) -> None:
    status, content_type, body = metrics.answer("format=text")
    assert status == 200 and content_type.startswith("text/plain") and b"http_requests_in_flight" in body


def test_business_helpers_are_idempotent() -> None:
    registry = CollectorRegistry()
    leads = sdk_metrics.counter("leads_created_total", "Leads created", ["source"], registry=registry)
    assert sdk_metrics.counter("leads_created_total", "Leads created", ["source"], registry=registry) is leads
    assert isinstance(leads, Counter)
    leads.labels(source="web").inc(3)
    queue = sdk_metrics.gauge("queue_depth", "Jobs waiting", registry=registry)
    assert sdk_metrics.gauge("queue_depth", registry=registry) is queue and isinstance(queue, Gauge)
    queue.set(7)
    amount = sdk_metrics.histogram("payment_amount_dollars", "Payment amounts", buckets=(10, 100, 1000),
                                   registry=registry)
    assert sdk_metrics.histogram("payment_amount_dollars", registry=registry) is amount
    assert isinstance(amount, Histogram)
    amount.observe(50)
    with pytest.raises(ValueError, match="already exists as a Counter"):
        sdk_metrics.gauge("leads_created_total", registry=registry)
    parsed = samples(sdk_metrics.RequestMetrics(SDKConfig(), registry).prometheus_text()[0].decode())
    assert value(parsed, "leads_created_total", source="web") == 3
    assert value(parsed, "queue_depth") == 7
    assert value(parsed, "payment_amount_dollars_bucket", le="100.0") == 1


def test_helpers_find_metrics_the_app_defined_itself() -> None:
    registry = CollectorRegistry()
    own = Counter("signups_total", "Sign-ups", registry=registry)
    assert sdk_metrics.counter("signups_total", registry=registry) is own
    assert sdk_metrics.counter("signups", registry=registry) is own
    # Two RequestMetrics on one registry share the series instead of raising "Duplicated timeseries".
    first = RequestMetrics(SDKConfig(), registry)
    second = RequestMetrics(SDKConfig(), registry)
    assert first.requests is second.requests


def test_helpers_default_to_the_global_registry() -> None:
    from prometheus_client import REGISTRY, generate_latest

    metric = sdk_metrics.counter("stackwatch_test_global_total", "test")
    metric.inc()
    assert b"stackwatch_test_global_total 1.0" in generate_latest(REGISTRY)


def test_multiprocess_mode_aggregates_forked_processes(tmp_path: Path) -> None:
    """Two forked children record; the parent's /metrics shows both (prometheus-client's
    MultiProcessCollector over PROMETHEUS_MULTIPROC_DIR)."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from stackwatch.sdk._config import SDKConfig
        from stackwatch.sdk.metrics import RequestMetrics
        metrics = RequestMetrics(SDKConfig())
        pids = []
        for n in (3, 4):
            pid = os.fork()
            if pid == 0:
                for _ in range(n):
                    metrics.record("GET", "/api/leads/{id}", 200, 0.01)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        status, ctype, body = metrics.answer("")
        summary = metrics.summary()
        print(json.dumps({"text": body.decode(), "total": summary["application"]["requests"]["total"],
                          "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))}))
        """
    )
    mp_dir = tmp_path / "prom"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    parsed = samples(out["text"])
    assert value(parsed, "http_requests_total", method="GET", route="/api/leads/{id}", status_class="2xx") == 7
    assert out["total"] == 7
    assert mp_dir.is_dir() and any(name.startswith("counter_") for name in out["files"])
