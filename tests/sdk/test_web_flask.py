"""Flask integration, driven through Flask's test client."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, jsonify
from web_helpers import TRACE_ID, TRACEPARENT, Web, make_web

from stackwatch.sdk.integrations import instrument_app
from stackwatch.sdk.logging import get_context


class PaymentDeclined(Exception):
    pass


def crm_app() -> Flask:
    app = Flask("crm")
    leads = Blueprint("leads", __name__, url_prefix="/api/leads")

    @leads.get("/<int:lead_id>")
    def get_lead(lead_id: int) -> Any:
        if lead_id == 404:
            abort(404)
        return {"id": lead_id, "context": get_context()}

    @leads.post("/")
    def create_lead() -> Any:
        return {"created": True}, 201

    app.register_blueprint(leads)

    @app.get("/api/slow")
    def slow() -> Any:
        time.sleep(0.12)
        return "done"

    @app.get("/api/pay")
    def pay() -> Any:
        raise PaymentDeclined("card declined")

    @app.get("/api/stream")
    def stream() -> Any:
        def chunks() -> Any:
            yield "a"
            yield "b"

        return app.response_class(chunks())

    return app


@pytest.fixture
def web() -> Web:
    return make_web(slow_request_seconds=0.1)


@pytest.fixture
def client(web: Web) -> Any:
    app = instrument_app(crm_app(), *web.deps)
    return app.test_client()  # type: ignore[attr-defined]


def test_instrumented_in_place(web: Web) -> None:
    app = crm_app()
    wsgi_app = app.wsgi_app
    assert instrument_app(app, *web.deps) is app
    assert app.wsgi_app is not wsgi_app
    wrapped = app.wsgi_app
    assert instrument_app(app, *web.deps) is app and app.wsgi_app is wrapped  # never twice
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/health", "/health/live", "/health/ready", "/metrics"} <= rules


def test_health_probes(client: Any, web: Web) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json["status"] == "healthy" and response.json["service"] == "crm"
    assert response.json["version"] == "1.4.2"
    response = client.get("/health/live")
    assert response.status_code == 200 and set(response.json) == {"status", "timestamp"}
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json["checks"] == {}


def test_readiness_passing_failing_optional_and_slow(client: Any, web: Web) -> None:
    web.health.add_check("database", lambda: "Database connection successful")
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json["status"] == "healthy"
    assert response.json["checks"]["database"]["message"] == "Database connection successful"

    web.health.add_check("sendgrid", lambda: False, required=False)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json["status"] == "degraded"

    web.health.add_check("database", lambda: 1 / 0)
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.json["status"] == "unhealthy"
    assert response.json["checks"]["database"]["message"] == "ZeroDivisionError: division by zero"

    release = threading.Event()
    web.health.add_check("database", lambda: release.wait(10), timeout=0.2)
    started = time.monotonic()
    response = client.get("/health/ready")
    release.set()
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503 and "timed out" in response.json["checks"]["database"]["message"]


def test_head_on_every_probe_path(client: Any, web: Web) -> None:
    web.health.add_check("database", lambda: False)
    for path, code in (("/health", 200), ("/health/live", 200), ("/health/ready", 503), ("/metrics", 200)):
        response = client.head(path)
        assert response.status_code == code, path
        assert response.data == b""


def test_readiness_is_cached(web: Web) -> None:
    cached = make_web(health_cache_seconds=30)
    calls: list[int] = []
    cached.health.add_check("database", lambda: calls.append(1))
    client = instrument_app(crm_app(), *cached.deps).test_client()  # type: ignore[attr-defined]
    for _ in range(5):
        assert client.get("/health/ready").status_code == 200
    assert calls == [1]


def test_metrics_use_route_templates(client: Any, web: Web) -> None:
    for lead_id in (1, 2, 3):
        assert client.get(f"/api/leads/{lead_id}").status_code == 200
    assert client.get("/api/leads/404").status_code == 404
    assert client.post("/api/leads/").status_code == 201
    assert client.get("/wp-login.php").status_code == 404
    assert client.get("/api/leads/not-a-number").status_code == 404
    assert web.routes() == {"/api/leads/{lead_id}", "/api/leads/", "<unmatched>"}
    assert web.requests(route="/api/leads/{lead_id}", status_class="2xx") == 3
    assert web.requests(route="/api/leads/{lead_id}", status_class="4xx") == 1
    assert web.requests(method="POST", route="/api/leads/", status_class="2xx") == 1
    assert web.requests(route="<unmatched>") == 2
    client.get("/health")
    client.get("/metrics")
    assert web.requests() == 7  # probes and scrapes are not counted


def test_metrics_endpoint_text_and_json(client: Any, web: Web) -> None:
    client.get("/api/leads/1")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert 'http_requests_total{method="GET",route="/api/leads/{lead_id}",status_class="2xx"} 1.0' in response.text
    response = client.get("/metrics?format=json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    summary = response.json
    assert summary["application"]["requests"]["total"] == 1
    assert summary["endpoints"]["/api/leads/{lead_id}"]["requests"] == 1
    assert {"cpu", "memory", "disk"} <= set(summary["system"])


def test_exception_is_recorded_and_reraised_untouched(web: Web) -> None:
    app = instrument_app(crm_app(), *web.deps)
    app.testing = True  # Flask propagates view exceptions in testing mode
    with pytest.raises(PaymentDeclined, match="card declined"):
        app.test_client().get("/api/pay")
    assert web.requests(route="/api/pay", status_class="5xx") == 1
    app.testing = False
    response = app.test_client().get("/api/pay")
    assert response.status_code == 500
    samples = web.samples()
    assert samples[("http_request_errors_total", (("method", "GET"), ("route", "/api/pay")))] == 2
    assert samples[("http_requests_in_flight", ())] == 0


def test_request_id_and_response_time_headers(client: Any) -> None:
    response = client.get("/api/leads/1")
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert response.headers["X-Response-Time"].endswith("ms")
    assert float(response.headers["X-Response-Time"][:-2]) >= 0
    assert response.json["context"]["request_id"] == generated  # bound for the view's logs
    response = client.get("/api/leads/1", headers={"X-Request-ID": "req-abc-123"})
    assert response.headers["X-Request-ID"] == "req-abc-123"
    assert response.json["context"]["request_id"] == "req-abc-123"
    response = client.get("/api/leads/1", headers={"X-Request-ID": "bad id\" INFO forged"})
    assert response.headers["X-Request-ID"] != "bad id\" INFO forged"
    assert get_context() == {}  # nothing leaks out of the request


def test_traceparent_reaches_the_log_context(client: Any) -> None:
    response = client.get("/api/leads/1", headers={"traceparent": TRACEPARENT})
    assert response.json["context"]["trace_id"] == TRACE_ID
    response = client.get("/api/leads/1", headers={"traceparent": "garbage"})
    assert "trace_id" not in response.json["context"]


def test_slow_request_warning(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stackwatch.sdk.requests"):
        client.get("/api/slow", headers={"X-Request-ID": "slow-1"})
        client.get("/api/leads/1")
    slow = [r for r in caplog.records if r.name == "stackwatch.sdk.requests"]
    assert len(slow) == 1
    message = slow[0].getMessage()
    assert message.startswith("Slow request detected: /api/slow took 0.1") and message.endswith("s")
    assert slow[0].route == "/api/slow" and slow[0].duration_ms >= 100  # type: ignore[attr-defined]


def test_streaming_response(client: Any, web: Web) -> None:
    response = client.get("/api/stream")
    assert response.data == b"ab"
    assert web.requests(route="/api/stream") == 0  # still streaming: the server has not closed it
    response.close()  # what a WSGI server does after the last chunk
    assert web.requests(route="/api/stream") == 1


def test_app_routes_win_over_sdk_probes(web: Web) -> None:
    app = crm_app()

    @app.get("/health")
    def own_health() -> Any:
        return jsonify(mine=True)

    client = instrument_app(app, *web.deps).test_client()  # type: ignore[attr-defined]
    assert client.get("/health").json == {"mine": True}
    assert client.get("/health/live").json["status"] == "healthy"


def test_configurable_paths() -> None:
    web = make_web(health_path="/healthz", live_path="/livez", ready_path="/readyz", metrics_path="/_metrics")
    client = instrument_app(crm_app(), *web.deps).test_client()  # type: ignore[attr-defined]
    assert client.get("/healthz").json["service"] == "crm"
    assert client.head("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert b"http_requests_in_flight" in client.get("/_metrics").data
    assert client.get("/health").status_code == 404


def test_sdk_failure_never_breaks_the_app(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("metrics backend exploded")

    web.metrics.record = broken  # type: ignore[method-assign]
    client = instrument_app(crm_app(), *web.deps).test_client()  # type: ignore[attr-defined]
    with caplog.at_level(logging.DEBUG, logger="stackwatch.sdk.web"):
        for _ in range(3):
            response = client.get("/api/leads/5")
            assert response.status_code == 200 and response.json["id"] == 5
    assert any("failed" in r.getMessage() for r in caplog.records if r.name == "stackwatch.sdk.web")


def test_probe_added_after_first_request_is_served_by_middleware(web: Web) -> None:
    app = crm_app()
    app.test_client().get("/api/leads/1")  # Flask now refuses new routes
    client = instrument_app(app, *web.deps).test_client()  # type: ignore[attr-defined]
    assert client.get("/health/ready").status_code == 200
    assert json.loads(client.get("/health").data)["service"] == "crm"
    client.get("/api/leads/7")
    assert web.requests(route="/api/leads/{lead_id}") == 1
