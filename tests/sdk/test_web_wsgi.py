"""Plain WSGI middleware (werkzeug's test client drives it) and the instrument_app dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from web_helpers import Web, make_web
from werkzeug.test import Client

from stackwatch.sdk.integrations import active_instrumentation, instrument_app
from stackwatch.sdk.integrations._web import collapse_path, rule_to_template
from stackwatch.sdk.integrations.asgi import StackwatchASGIMiddleware
from stackwatch.sdk.integrations.wsgi import StackwatchWSGIMiddleware
from stackwatch.sdk.logging import get_context


class Boom(Exception):
    pass


def raw_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise Boom("app failure")
    if path.startswith("/missing"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    body = json.dumps(get_context()).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def lazy_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """Calls start_response only when the server iterates the body (legal WSGI)."""
    start_response("201 Created", [("Content-Type", "text/plain")])
    yield b"lazy"


@pytest.fixture
def web() -> Web:
    return make_web()


def test_wsgi_app_is_wrapped_and_instrumented(web: Web) -> None:
    app = instrument_app(raw_app, *web.deps)
    assert isinstance(app, StackwatchWSGIMiddleware)
    assert instrument_app(app, *web.deps) is app  # never wrapped twice
    client = Client(app)
    response = client.get("/users/42/orders/9f1c2a3b-1d2e-4f50-8a6b-0c1d2e3f4a5b", headers={"X-Request-ID": "r1"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "r1"
    assert json.loads(response.data) == {"request_id": "r1"}
    assert response.headers["X-Response-Time"].endswith("ms")
    client.get("/missing/scanner.php")
    with pytest.raises(Boom, match="app failure"):
        client.get("/boom")
    assert web.routes() == {"/users/{id}/orders/{id}", "<unmatched>", "/boom"}
    assert web.requests(route="/boom", status_class="5xx") == 1
    assert get_context() == {}


def test_wsgi_probes_served_by_the_middleware(web: Web) -> None:
    web.health.add_check("database", lambda: False)
    client = Client(instrument_app(raw_app, *web.deps))
    assert json.loads(client.get("/health").data)["service"] == "crm"
    response = client.get("/health/ready")
    assert response.status_code == 503 and json.loads(response.data)["status"] == "unhealthy"
    response = client.head("/health/live")
    assert response.status_code == 200 and response.data == b""
    assert b"http_requests_in_flight" in client.get("/metrics").data
    assert client.post("/health").status_code == 200  # not GET/HEAD: left to the app


def test_lazy_start_response_recorded_on_close(web: Web) -> None:
    client = Client(instrument_app(lazy_app, *web.deps))
    response = client.get("/items/12")
    assert response.status_code == 201 and response.data == b"lazy"
    assert "X-Request-ID" in response.headers
    assert web.requests() == 0  # the body is still open
    response.close()  # what a WSGI server does after sending the body
    assert web.requests(route="/items/{id}", status_class="2xx") == 1


def test_dispatcher_kinds(web: Web) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    assert instrument_app(None, *web.deps) is None
    assert active_instrumentation().health is web.health  # Django's middleware finds them

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        pass

    class AsgiClass:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            pass

    assert isinstance(instrument_app(asgi_app, *web.deps), StackwatchASGIMiddleware)
    assert isinstance(instrument_app(AsgiClass(), *web.deps), StackwatchASGIMiddleware)
    assert isinstance(instrument_app(raw_app, *web.deps), StackwatchWSGIMiddleware)
    handler = WSGIHandler.__new__(WSGIHandler)  # a Django handler: left as it is
    assert instrument_app(handler, *web.deps) is handler
    with pytest.raises(TypeError):
        instrument_app(42, *web.deps)


@pytest.mark.parametrize(
    ("rule", "template"),
    [
        ("/api/leads/<int:lead_id>", "/api/leads/{lead_id}"),
        ("/files/<path:rest>", "/files/{rest}"),
        ("/c/<string(length=2):code>", "/c/{code}"),
        ("/plain/<name>", "/plain/{name}"),
        ("api/leads/<int:lead_id>/", "/api/leads/{lead_id}/"),
        (r"^archive/(?P<year>[0-9]{4})/(?P<slug>[\w-]+)/$", "/archive/{year}/{slug}/"),
    ],
)
def test_rule_to_template(rule: str, template: str) -> None:
    assert rule_to_template(rule) == template


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/users/42", "/users/{id}"),
        ("/users/42/orders/7", "/users/{id}/orders/{id}"),
        ("/o/9f1c2a3b-1d2e-4f50-8a6b-0c1d2e3f4a5b", "/o/{id}"),
        ("/t/0123456789abcdef0123", "/t/{id}"),
        ("/s/AbCdEfGhIjKlMnOpQrSt12", "/s/{id}"),
        ("/api/v2/leads", "/api/v2/leads"),
        ("/health-check/summary", "/health-check/summary"),
        ("/", "/"),
    ],
)
def test_collapse_path(path: str, template: str) -> None:
    assert collapse_path(path) == template


def test_importing_integrations_imports_no_framework() -> None:
    code = (
        "import sys, stackwatch.sdk.integrations, stackwatch.sdk.integrations.wsgi, "
        "stackwatch.sdk.integrations.asgi, stackwatch.sdk.health, stackwatch.sdk.metrics\n"
        "bad = [m for m in ('flask', 'django', 'starlette', 'fastapi', 'sqlalchemy', 'redis', 'psutil', "
        "'stackwatch.server', 'stackwatch.storage', 'stackwatch.ingest', 'stackwatch.pipeline', "
        "'stackwatch.query') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_app_exception_on_a_probe_path_runs_the_app_once(web: Web) -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["REQUEST_METHOD"])
        raise Boom("POST /health is the app's business")

    client = Client(instrument_app(app, *web.deps))
    with pytest.raises(Boom):
        client.post("/health")
    assert calls == ["POST"]


def test_an_exception_escaping_a_wsgi_app_is_logged_in_the_request_context(web: Web) -> None:
    import logging

    seen: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record, get_context()))

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError("customer")

    handler = Capture()
    logger = logging.getLogger("stackwatch.sdk.errors")
    logger.addHandler(handler)
    try:
        client = Client(instrument_app(broken, *web.deps))
        with pytest.raises(KeyError):
            client.get("/api/orders/7", headers={"X-Request-ID": "req-wsgi"})
    finally:
        logger.removeHandler(handler)
    ((record, context),) = seen
    assert record.getMessage() == "Unhandled exception in GET /api/orders/7: KeyError: 'customer'"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert context["request_id"] == "req-wsgi"
    assert web.requests(status_class="5xx") == 1


def test_database_queries_are_counted_per_web_request(web: Web, tmp_path: Any) -> None:
    """The web middleware brackets each request for the SQLAlchemy integration: queries per
    request are observed and an N+1 inside one request is warned about."""
    import logging

    import sqlalchemy

    from stackwatch.sdk.integrations.sqlalchemy import instrument_engine

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    instrument_engine(engine, web.config, web.metrics)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE leads (id INTEGER PRIMARY KEY)"))

    def listing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with engine.connect() as conn:
            for i in range(web.config.n_plus_one_threshold + 2):
                conn.execute(sqlalchemy.text("SELECT id FROM leads WHERE id = :i"), {"i": i})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    warnings: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record)

    handler = Capture()
    logging.getLogger("stackwatch.sdk.db").addHandler(handler)
    try:
        client = Client(instrument_app(listing, *web.deps))
        for _ in range(2):
            assert client.get("/api/leads").status_code == 200
    finally:
        logging.getLogger("stackwatch.sdk.db").removeHandler(handler)
    n_plus_one = [r for r in warnings if r.getMessage().startswith("N+1 query detected")]
    assert len(n_plus_one) == 2  # once per request, not once per process
    samples = web.samples()
    assert samples[("db_queries_per_request_count", ())] == 2
    assert samples[("db_queries_per_request_sum", ())] == 2 * (web.config.n_plus_one_threshold + 2)
