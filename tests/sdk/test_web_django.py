"""Django integration: StackwatchMiddleware in MIDDLEWARE, sync (Client) and async (AsyncClient)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="stackwatch-tests",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["stackwatch.sdk.integrations.django.StackwatchMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import include, path, re_path
from web_helpers import TRACE_ID, TRACEPARENT, Web, make_web

from stackwatch.sdk import _client
from stackwatch.sdk.integrations import instrument_app
from stackwatch.sdk.logging import get_context


class PaymentDeclined(Exception):
    pass


def get_lead(request: HttpRequest, lead_id: int) -> HttpResponse:
    if lead_id == 404:
        raise Http404
    return JsonResponse({"id": lead_id, "context": get_context()})


def archive(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


def slow(request: HttpRequest) -> HttpResponse:
    time.sleep(0.12)
    return HttpResponse("done")


def pay(request: HttpRequest) -> HttpResponse:
    raise PaymentDeclined("card declined")


async def async_lead(request: HttpRequest, lead_id: int) -> HttpResponse:
    await asyncio.sleep(0)
    return JsonResponse({"id": lead_id, "context": get_context()})


api_patterns = [
    path("leads/<int:lead_id>", get_lead),
    path("async/<int:lead_id>", async_lead),
    path("slow", slow),
    path("pay", pay),
]
urlpatterns = [
    path("api/", include(api_patterns)),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", archive),
]


@pytest.fixture
def web() -> Iterator[Web]:
    if _client.current() is not None:  # another test left init() in place: start clean
        import stackwatch.sdk

        stackwatch.sdk.shutdown()
    web = make_web(slow_request_seconds=0.1)
    assert instrument_app(None, *web.deps) is None  # what init() does in a Django process
    yield web


def test_probes(web: Web) -> None:
    client = Client()
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["service"] == "crm"
    assert set(client.get("/health/live").json()) == {"status", "timestamp"}
    web.health.add_check("database", lambda: True)
    web.health.add_check("cache", lambda: False, required=False)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    web.health.add_check("database", lambda: 1 / 0)
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    for probe, code in (("/health", 200), ("/health/live", 200), ("/health/ready", 503), ("/metrics", 200)):
        response = client.head(probe)
        assert response.status_code == code and response.content == b"", probe


def test_slow_check_times_out(web: Web) -> None:
    web.health.add_check("database", lambda: time.sleep(3), timeout=0.2)
    started = time.monotonic()
    response = Client().get("/health/ready")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503 and "timed out" in response.json()["checks"]["database"]["message"]


def test_metrics_use_route_templates(web: Web) -> None:
    client = Client(raise_request_exception=False)
    for lead_id in (1, 2, 404):
        client.get(f"/api/leads/{lead_id}")
    client.get("/archive/2024/")
    client.get("/api/leads/abc")
    client.get("/wp-admin/")
    assert client.get("/api/pay").status_code == 500
    assert web.requests(route="/api/leads/{lead_id}", status_class="2xx") == 2
    assert web.requests(route="/api/leads/{lead_id}", status_class="4xx") == 1
    assert web.requests(route="/archive/{year}/") == 1
    assert web.requests(route="<unmatched>") == 2
    assert web.requests(route="/api/pay", status_class="5xx") == 1
    client.get("/metrics")
    assert web.requests() == 7
    summary = client.get("/metrics?format=json").json()
    assert summary["application"]["requests"] == {"total": 7, "errors": 1, "error_rate": round(1 / 7, 6)}
    assert summary["endpoints"]["/api/leads/{lead_id}"]["requests"] == 3


def test_view_exception_reaches_the_test_client(web: Web) -> None:
    with pytest.raises(PaymentDeclined):
        Client().get("/api/pay")
    assert web.requests(route="/api/pay", status_class="5xx") == 1


def test_headers_and_log_context(web: Web) -> None:
    client = Client()
    response = client.get("/api/leads/1", headers={"X-Request-ID": "req-7", "traceparent": TRACEPARENT})
    assert response["X-Request-ID"] == "req-7"
    assert response["X-Response-Time"].endswith("ms")
    assert response.json()["context"] == {"request_id": "req-7", "trace_id": TRACE_ID}
    response = client.get("/api/leads/1")
    assert len(response["X-Request-ID"]) == 32
    assert get_context() == {}


def test_slow_request_warning(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stackwatch.sdk.requests"):
        Client().get("/api/slow")
    slow_lines = [r.getMessage() for r in caplog.records if r.name == "stackwatch.sdk.requests"]
    assert len(slow_lines) == 1 and slow_lines[0].startswith("Slow request detected: /api/slow took 0.1")


def test_async_middleware(web: Web) -> None:
    async def scenario() -> list[Any]:
        client = AsyncClient()
        web.health.add_check("database", lambda: time.sleep(2), timeout=0.2)
        return [
            await client.get("/api/async/3", headers={"X-Request-ID": "async-1"}),
            await client.get("/health/ready"),
            await client.head("/health/live"),
            await client.get("/api/leads/4"),
        ]

    lead, ready, live, sync_lead = asyncio.run(scenario())
    assert lead.status_code == 200 and lead["X-Request-ID"] == "async-1"
    assert lead.json()["context"]["request_id"] == "async-1"
    assert ready.status_code == 503
    assert live.status_code == 200 and live.content == b""
    assert sync_lead.status_code == 200
    assert web.requests(route="/api/async/{lead_id}") == 1
    assert web.requests(route="/api/leads/{lead_id}") == 1


def test_middleware_is_async_capable() -> None:
    from stackwatch.sdk.integrations.django import StackwatchMiddleware

    assert StackwatchMiddleware.sync_capable and StackwatchMiddleware.async_capable
    assert sys.modules[__name__].urlpatterns  # this module is the URLconf


def test_init_without_an_app_drives_the_middleware(web: Web) -> None:
    """What docs/sdk.md tells Django users: init() with no app, the middleware in MIDDLEWARE."""
    import stackwatch.sdk

    stackwatch.sdk.init(service="django-crm", environment="test", version="9.9",
                        tracing=False, errors=False)
    try:
        stackwatch.sdk.add_check("database", lambda: False)
        client = Client()
        assert client.get("/health").json()["service"] == "django-crm"
        response = client.get("/health/ready")
        assert response.status_code == 503 and response.json()["checks"]["database"]["status"] == "unhealthy"
        client.get("/api/leads/8")
        text = client.get("/metrics").content.decode()
        assert 'http_requests_total{method="GET",route="/api/leads/{lead_id}",status_class="2xx"}' in text
        assert web.requests() == 0  # the init() client's metrics were used, not the fixture's
    finally:
        stackwatch.sdk.shutdown()
