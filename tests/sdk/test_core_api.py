"""The SDK's public API: init(), add_check(), business_event(), shutdown(), import isolation, docs."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

import stackwatch.sdk
from serverproc import free_port
from stackwatch.sdk import _client
from stackwatch.sdk._config import ENV_VARS
from stackwatch.sdk.testing import capture_logs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_sdk() -> Iterator[None]:
    stackwatch.sdk.shutdown()
    yield
    stackwatch.sdk.shutdown()


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call_wsgi(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, dict(headers)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_stackwatch", False)]


# --------------------------------------------------------------------------- public surface


def test_public_surface_is_pinned() -> None:
    assert sorted(stackwatch.sdk.__all__) == [
        "LogContext",
        "SDKConfig",
        "TRACE",
        "add_check",
        "business_event",
        "flush",
        "init",
        "log_api_call",
        "log_business_event",
        "log_database_query",
        "log_external_service_call",
        "metrics",
        "shutdown",
    ]
    for name in stackwatch.sdk.__all__:
        assert getattr(stackwatch.sdk, name) is not None
    from stackwatch.sdk import metrics

    assert stackwatch.sdk.metrics is metrics
    assert callable(metrics.counter) and callable(metrics.gauge) and callable(metrics.histogram)
    with pytest.raises(AttributeError):
        stackwatch.sdk.nope  # noqa: B018


BANNED = (
    "stackwatch.server",
    "stackwatch.storage",
    "stackwatch.ingest",
    "stackwatch.pipeline",
    "stackwatch.query",
    "flask",
    "django",
    "fastapi",
    "starlette",
    "celery",
    "sentry_sdk",
    "opentelemetry.sdk",
    "prometheus_client",
    "sqlalchemy",
    "httpx",
)


def imported_after(code: str) -> list[str]:
    script = textwrap.dedent(
        f"""
        import json, sys
        {textwrap.indent(textwrap.dedent(code), "        ").strip()}
        print(json.dumps(sorted(sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def banned_in(modules: list[str], banned: tuple[str, ...] = BANNED) -> list[str]:
    return [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]


def test_importing_the_sdk_imports_no_server_code_and_no_heavy_dependency() -> None:
    modules = imported_after(
        """
        import stackwatch.sdk
        from stackwatch.sdk import LogContext, add_check, business_event, log_api_call
        from stackwatch.sdk.testing import capture_logs
        import stackwatch.sdk.logging
        add_check("before-init", lambda: True)
        with LogContext(a=1):
            pass
        """
    )
    assert banned_in(modules) == []
    assert "stackwatch.sdk" in modules


def test_init_pulls_in_only_what_it_needs_and_never_server_code() -> None:
    modules = imported_after(
        """
        import stackwatch.sdk
        stackwatch.sdk.init(service="iso", tracing=False, errors=False)
        """
    )
    server_code = tuple(b for b in BANNED if b.startswith("stackwatch."))
    assert banned_in(modules, server_code) == []
    assert (
        banned_in(modules, ("flask", "django", "fastapi", "celery", "sentry_sdk", "opentelemetry.sdk")) == []
    )
    assert "prometheus_client" in modules  # /metrics needs it once init() runs

    modules = imported_after(
        """
        import stackwatch.sdk
        stackwatch.sdk.init(service="iso", server_url="http://127.0.0.1:9", token="t")
        """
    )
    assert banned_in(modules, server_code) == []


# --------------------------------------------------------------------------- init


def test_init_is_idempotent_and_never_instruments_twice(capsys) -> None:
    app = stackwatch.sdk.init(hello_app, service="idem", environment="production", version="3.1.0")
    client = _client.current()
    assert client is not None
    assert stackwatch.sdk.init(hello_app, service="idem", environment="production", version="3.1.0") is app
    assert stackwatch.sdk.init(app, service="idem", environment="production", version="3.1.0") is app
    assert stackwatch.sdk.init(service="idem", environment="production", version="3.1.0") is None
    assert _client.current() is client
    assert len(ours()) == 1
    status, _, body = call_wsgi(app, "/")
    assert status.startswith("200") and body == b"hello"
    status, _, body = call_wsgi(app, "/health")
    assert status.startswith("200")
    health = json.loads(body)
    assert health["service"] == "idem" and health["version"] == "3.1.0"
    logging.getLogger("app").warning("one line")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [e["message"] for e in lines if e["logger"] == "app"] == ["one line"]


def test_second_init_with_other_settings_keeps_the_first(capsys) -> None:
    stackwatch.sdk.init(service="first", environment="production")
    with capture_logs(logger="stackwatch.sdk") as events:
        stackwatch.sdk.init(service="second", environment="production")
    client = _client.current()
    assert client is not None and client.config.service == "first"
    assert any("already called" in e["message"] for e in events)


def test_shutdown_then_init_starts_over() -> None:
    stackwatch.sdk.init(service="one", environment="production")
    stackwatch.sdk.shutdown()
    assert _client.current() is None and ours() == []
    stackwatch.sdk.init(service="two", environment="production")
    client = _client.current()
    assert client is not None and client.config.service == "two"
    assert client.health is not None and client.metrics is not None
    with capture_logs() as events:
        logging.getLogger("x").warning("m")
    assert events[0]["service"] == "two"


def test_a_bad_keyword_raises_and_nothing_else_does(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bogus"):
        stackwatch.sdk.init(service="x", bogus=1)
    assert _client.current() is None
    with pytest.raises(TypeError):
        stackwatch.sdk.init(42, service="x")  # not an app
    stackwatch.sdk.shutdown()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    started = time.monotonic()
    app = stackwatch.sdk.init(
        hello_app,
        service="robust",
        environment="production",
        log_dir=str(not_a_dir),  # cannot hold log files
        server_url=f"http://127.0.0.1:{free_port()}",  # nobody listens
        token="swi_x",
    )
    assert time.monotonic() - started < 5
    status, _, body = call_wsgi(app, "/")
    assert status.startswith("200") and body == b"hello"
    logging.getLogger("app").error("still logging")
    t = time.monotonic()
    stackwatch.sdk.shutdown(timeout=1)
    assert time.monotonic() - t < 4


def test_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("STACKWATCH_SERVICE", "from-env")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("STACKWATCH_ENVIRONMENT", "staging")
    stackwatch.sdk.init(tracing=False, errors=False)
    client = _client.current()
    assert client is not None
    assert client.config.service == "from-env" and client.config.environment == "staging"
    assert logging.getLogger().level == logging.DEBUG


def test_add_check_before_and_after_init() -> None:
    stackwatch.sdk.add_check("early", lambda: True)
    with pytest.raises(ValueError):
        stackwatch.sdk.add_check("bad", lambda: True, timeout=0)
    app = stackwatch.sdk.init(hello_app, service="checks", environment="production", health_cache_seconds=0)
    stackwatch.sdk.add_check("late", lambda: False, required=False)
    status, _, body = call_wsgi(app, "/health/ready")
    ready = json.loads(body)
    assert status.startswith("200")
    assert set(ready["checks"]) == {"early", "late"}
    assert ready["checks"]["early"]["status"] == "healthy"
    assert ready["status"] == "degraded"  # an optional check can only degrade
    stackwatch.sdk.add_check("db", lambda: False)
    status, _, body = call_wsgi(app, "/health/ready")
    assert status.startswith("503") and json.loads(body)["status"] == "unhealthy"


def test_business_event_logs_and_counts() -> None:
    from prometheus_client import REGISTRY

    stackwatch.sdk.init(service="biz", environment="production")

    def count() -> float:
        return REGISTRY.get_sample_value("business_events_total", {"event": "lead_created"}) or 0.0

    before = count()
    with capture_logs() as events, stackwatch.sdk.LogContext(request_id="req-b"):
        stackwatch.sdk.business_event("lead_created", lead_id=42, source="website", email="ann@example.com")
        stackwatch.sdk.business_event("lead_created", lead_id=43)
    assert count() == before + 2
    first = events[0]
    assert first["message"] == "Business event: lead_created"
    assert first["level"] == "INFO" and first["request_id"] == "req-b"
    assert first["logger"] == "stackwatch.business"
    assert first["source"].startswith(f"{__file__}:")
    assert first["context"] == {
        "event": "lead_created",
        "lead_id": 42,
        "source": "website",
        "email": "a***@example.com",
    }


def test_business_event_works_before_init() -> None:
    with capture_logs() as events:
        stackwatch.sdk.business_event("signup", plan="pro")
    assert events[0]["context"] == {"event": "signup", "plan": "pro"}


def test_flush_without_a_server() -> None:
    assert stackwatch.sdk.flush() is True
    stackwatch.sdk.init(service="f", environment="production")
    assert stackwatch.sdk.flush(timeout=1) is True


def test_failures_are_recorded_and_logged_not_raised(monkeypatch) -> None:
    import stackwatch.sdk.metrics as metrics_module

    def broken(config: Any) -> Any:
        raise RuntimeError("metrics backend exploded")

    monkeypatch.setattr(metrics_module, "RequestMetrics", broken)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("stackwatch.sdk").addHandler(handler)
    try:
        stackwatch.sdk.init(service="partial", environment="production", tracing=False, errors=False)
    finally:
        logging.getLogger("stackwatch.sdk").removeHandler(handler)
    client = _client.current()
    assert client is not None and client.metrics is None
    assert "metrics backend exploded" in client.failures["request metrics"]
    assert "request metrics set-up failed" in stream.getvalue()
    assert client.health is not None


# --------------------------------------------------------------------------- docs


def test_docs_settings_table_matches_env_vars() -> None:
    text = (ROOT / "docs" / "sdk.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == set(ENV_VARS), documented ^ set(ENV_VARS)
    for var, (name, _doc) in ENV_VARS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{var}` |"))
        assert f"`{name}`" in row, var
    for heading in (
        "## Health probes",
        "## Request metrics",
        "## Tracing",
        "## Errors",
        "## Database",
        "## Celery",
        "## Examples and demo",
    ):
        assert heading in text
