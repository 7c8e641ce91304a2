"""FastAPI / Starlette / plain ASGI integration, driven through Starlette's TestClient."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException, WebSocket
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from web_helpers import TRACE_ID, TRACEPARENT, Web, make_web

from stackwatch.sdk.integrations import instrument_app
from stackwatch.sdk.integrations.asgi import StackwatchASGIMiddleware
from stackwatch.sdk.logging import get_context


class PaymentDeclined(Exception):
    pass


background_contexts: list[dict[str, Any]] = []


def crm_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/api/leads")

    @router.get("/{lead_id}")
    async def get_lead(lead_id: int) -> dict[str, Any]:
        if lead_id == 404:
            raise HTTPException(404)
        return {"id": lead_id, "context": get_context()}

    @router.get("/{lead_id}/sync")
    def get_lead_sync(lead_id: int) -> dict[str, Any]:
        return {"id": lead_id, "context": get_context()}

    app.include_router(router)

    @app.get("/api/slow")
    async def slow() -> str:
        await asyncio.sleep(0.12)
        return "done"

    @app.get("/api/pay")
    async def pay() -> None:
        raise PaymentDeclined("card declined")

    @app.get("/api/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            yield b"a"
            yield b"b"

        return StreamingResponse(chunks())

    @app.post("/api/signup")
    async def signup(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(lambda: background_contexts.append(get_context()))
        return {"ok": True}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return app


@pytest.fixture
def web() -> Web:
    return make_web(slow_request_seconds=0.1)


@pytest.fixture
def client(web: Web) -> Any:
    app = instrument_app(crm_app(), *web.deps)
    with TestClient(app, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
        yield client


def test_instrumented_in_place_once(web: Web) -> None:
    app = crm_app()
    assert instrument_app(app, *web.deps) is app
    assert instrument_app(app, *web.deps) is app
    assert [m.cls for m in app.user_middleware].count(StackwatchASGIMiddleware) == 1
    paths = [getattr(r, "path", None) for r in app.router.routes]
    assert paths.count("/health/ready") == 1
    assert "/health" not in TestClient(app).get("/openapi.json").json()["paths"]


def test_probes(client: TestClient, web: Web) -> None:
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["service"] == "crm" and body["version"] == "1.4.2"
    assert set(client.get("/health/live").json()) == {"status", "timestamp"}
    web.health.add_check("database", lambda: True)
    web.health.add_check("cache", lambda: False, required=False)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    web.health.add_check("database", lambda: 1 / 0)
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.json()["status"] == "unhealthy"
    for path, code in (("/health", 200), ("/health/live", 200), ("/health/ready", 503), ("/metrics", 200)):
        response = client.head(path)
        assert response.status_code == code and response.content == b"", path


def test_slow_check_does_not_block_the_event_loop(client: TestClient, web: Web) -> None:
    release = threading.Event()
    web.health.add_check("database", lambda: release.wait(10), timeout=0.5)
    results: dict[str, Any] = {}

    def probe() -> None:
        results["ready"] = client.get("/health/ready")

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert client.get("/api/leads/1").status_code == 200  # served while the check hangs
    assert time.monotonic() - started < 0.3
    thread.join(5)
    release.set()
    assert results["ready"].status_code == 503
    assert "timed out" in results["ready"].json()["checks"]["database"]["message"]


def test_metrics_use_route_templates(client: TestClient, web: Web) -> None:
    for lead_id in (1, 2):
        client.get(f"/api/leads/{lead_id}")
    client.get("/api/leads/3/sync")
    client.get("/api/leads/404")
    client.get("/api/leads/abc")  # validation error: matched route, 422
    client.get("/nope/123")
    client.post("/api/leads/1")  # 405: the route matched partially
    assert web.requests(route="/api/leads/{lead_id}", status_class="2xx") == 2
    assert web.requests(route="/api/leads/{lead_id}", status_class="4xx") == 3
    assert web.requests(route="/api/leads/{lead_id}/sync") == 1
    assert web.requests(route="<unmatched>") == 1
    client.get("/metrics")
    client.get("/health")
    assert web.requests() == 7


def test_exception_is_recorded_and_reraised(web: Web) -> None:
    app = instrument_app(crm_app(), *web.deps)
    with pytest.raises(PaymentDeclined, match="card declined"), TestClient(app) as strict:  # type: ignore[arg-type]
        strict.get("/api/pay")
    assert web.requests(route="/api/pay", status_class="5xx") == 1
    with TestClient(app, raise_server_exceptions=False) as lenient:  # type: ignore[arg-type]
        assert lenient.get("/api/pay").status_code == 500
    assert web.samples()[("http_request_errors_total", (("method", "GET"), ("route", "/api/pay")))] == 2
    assert web.samples()[("http_requests_in_flight", ())] == 0


def test_json_summary(client: TestClient) -> None:
    client.get("/api/leads/1")
    client.get("/api/leads/2")
    summary = client.get("/metrics?format=json").json()
    assert summary["application"]["requests"]["total"] == 2
    assert summary["endpoints"]["/api/leads/{lead_id}"]["requests"] == 2
    assert summary["application"]["response_times"]["p99"] > 0


def test_headers_and_log_context(client: TestClient) -> None:
    response = client.get("/api/leads/1", headers={"x-request-id": "req-42", "traceparent": TRACEPARENT})
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["x-response-time"].endswith("ms")
    assert response.json()["context"] == {"request_id": "req-42", "trace_id": TRACE_ID}
    response = client.get("/api/leads/1/sync")  # sync endpoints run in a thread: context copied
    assert response.json()["context"]["request_id"] == response.headers["x-request-id"]
    assert len(response.headers["x-request-id"]) == 32


def test_background_tasks_keep_the_request_id(client: TestClient) -> None:
    background_contexts.clear()
    response = client.post("/api/signup")
    assert background_contexts == [{"request_id": response.headers["x-request-id"]}]


def test_slow_request_warning(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stackwatch.sdk.requests"):
        client.get("/api/slow")
        client.get("/api/leads/1")
    slow = [r.getMessage() for r in caplog.records if r.name == "stackwatch.sdk.requests"]
    assert len(slow) == 1 and slow[0].startswith("Slow request detected: /api/slow took 0.1")


def test_streaming_and_websocket_pass_through(client: TestClient, web: Web) -> None:
    assert client.get("/api/stream").content == b"ab"
    assert web.requests(route="/api/stream") == 1
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
    assert web.requests() == 1  # the websocket is not an HTTP request


def test_starlette_app_with_mount(web: Web) -> None:
    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params["item_id"]))

    app = Starlette(routes=[Mount("/v1", routes=[Route("/items/{item_id:int}", item)])])
    assert instrument_app(app, *web.deps) is app
    with TestClient(app) as client:
        assert client.get("/v1/items/5").text == "5"
        assert client.get("/health/live").status_code == 200
    assert web.routes() == {"/v1/items/{item_id}"}


def test_plain_asgi_callable_is_wrapped(web: Web) -> None:
    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status = 404 if scope["path"].startswith("/missing") else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"raw"})

    wrapped = instrument_app(raw_app, *web.deps)
    assert isinstance(wrapped, StackwatchASGIMiddleware)
    client = TestClient(wrapped)  # type: ignore[arg-type]
    assert client.get("/users/42/orders/7").text == "raw"
    assert client.get("/missing/1").status_code == 404
    assert client.get("/health").json()["service"] == "crm"  # served by the middleware
    assert client.head("/health/ready").content == b""
    assert client.get("/metrics?format=json").json()["application"]["requests"]["total"] == 2
    assert web.routes() == {"/users/{id}/orders/{id}", "<unmatched>"}


def test_sdk_failure_never_breaks_the_app(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("metrics backend exploded")

    web.metrics.record = broken  # type: ignore[method-assign]
    app = instrument_app(crm_app(), *web.deps)
    with caplog.at_level(logging.DEBUG, logger="stackwatch.sdk.web"), TestClient(app) as client:  # type: ignore[arg-type]
        for _ in range(3):
            response = client.get("/api/leads/5")
            assert response.status_code == 200 and response.json()["id"] == 5
    assert any("failed" in r.getMessage() for r in caplog.records if r.name == "stackwatch.sdk.web")
    assert get_context() == {}


def test_app_exception_on_a_probe_path_runs_the_app_once(web: Web) -> None:
    calls: list[str] = []

    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["method"])
        raise PaymentDeclined("POST /health is the app's business")

    client = TestClient(instrument_app(raw_app, *web.deps))  # type: ignore[arg-type]
    with pytest.raises(PaymentDeclined):
        client.post("/health")
    assert calls == ["POST"]


def test_an_unhandled_exception_is_logged_with_its_traceback_and_request_id(web: Web) -> None:
    # Starlette re-raises it to the server, whose own logger (uvicorn's) is outside the JSON logs:
    # the middleware logs it where the app's logs go, inside the request's log context.
    seen: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record, get_context()))

    handler = Capture()
    logger = logging.getLogger("stackwatch.sdk.errors")
    logger.addHandler(handler)
    try:
        app = instrument_app(crm_app(), *web.deps)
        with TestClient(app, raise_server_exceptions=False) as client:  # type: ignore[arg-type]
            assert client.get("/api/pay", headers={"x-request-id": "req-boom"}).status_code == 500
            assert client.get("/api/leads/1").status_code == 200
    finally:
        logger.removeHandler(handler)
    ((record, context),) = seen
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "Unhandled exception in GET /api/pay: PaymentDeclined: card declined"
    assert record.exc_info is not None and record.exc_info[0] is PaymentDeclined
    assert context["request_id"] == "req-boom"
