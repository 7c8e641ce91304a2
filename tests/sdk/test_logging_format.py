"""The SDK's log lines, parsed back: JSON fields, console format, TRACE, LogContext, files, redaction."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stackwatch.sdk._config import SDKConfig, resolve_config
from stackwatch.sdk.logging import (
    TRACE,
    EventBuilder,
    LogContext,
    configure_logging,
    current_setup,
    log_api_call,
    log_business_event,
    log_database_query,
    log_external_service_call,
    structlog_processor,
    unconfigure_logging,
)
from stackwatch.sdk.testing import capture_logs

JSON_KEYS = {
    "timestamp",
    "level",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "source",
    "logger",
    "function",
    "message",
    "context",
}
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CONSOLE_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \[(?P<level>[A-Z]+)\] (?P<logger>[\w.]+): (?P<message>.*?)"
    r"(?: \| (?P<tail>.*))?$"
)
THIS_FILE = str(Path(__file__))


@pytest.fixture
def configure() -> Iterator[Callable[..., SDKConfig]]:
    """Configure the SDK's logging with settings for one test; undone afterwards."""

    def _configure(**settings: Any) -> SDKConfig:
        settings.setdefault("service", "crm")
        settings.setdefault("environment", "production")
        config = resolve_config(env={}, **settings)
        configure_logging(config)
        return config

    yield _configure
    unconfigure_logging()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def here() -> int:
    """The caller's line number (to check ``source``)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


# --------------------------------------------------------------------------- JSON


def test_json_line_has_exactly_the_documented_fields(configure, capsys) -> None:
    configure(log_level="INFO")
    log = logging.getLogger("app.routes.leads")
    before = time.time()
    with LogContext(request_id="req-42", method="POST", path="/api/leads"):
        line = here() + 1
        log.info("Lead created for %s", "acme", extra={"lead_id": 7, "source_channel": "website"})
    after = time.time()
    [event] = json_lines(capsys.readouterr().out)
    assert set(event) == JSON_KEYS
    assert ISO_MS_Z.match(event["timestamp"])
    stamp = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.002 <= stamp <= after + 0.002
    assert event["level"] == "INFO"
    assert event["service"] == "crm"
    assert event["trace_id"] is None and event["span_id"] is None
    assert event["request_id"] == "req-42"
    assert event["source"] == f"{THIS_FILE}:{line}"
    assert event["logger"] == "app.routes.leads"
    assert event["function"] == "test_json_line_has_exactly_the_documented_fields"
    assert event["message"] == "Lead created for acme"
    assert event["context"] == {
        "method": "POST",
        "path": "/api/leads",
        "lead_id": 7,
        "source_channel": "website",
    }


def test_exception_carries_type_message_and_stack(configure, capsys) -> None:
    configure()
    log = logging.getLogger("app.payments")

    def charge() -> None:
        raise ValueError("card declined")

    try:
        charge()
    except ValueError:
        log.exception("Payment failed", extra={"amount": 49.0})
    [event] = json_lines(capsys.readouterr().out)
    assert set(event) == JSON_KEYS | {"exception"}
    assert event["level"] == "ERROR"
    assert event["context"] == {"amount": 49.0}
    exc = event["exception"]
    assert exc["type"] == "ValueError"
    assert exc["message"] == "card declined"
    assert exc["stack"].startswith("Traceback (most recent call last):")
    assert "in charge" in exc["stack"] and exc["stack"].rstrip().endswith("ValueError: card declined")


def test_non_builtin_exception_type_is_qualified(configure, capsys) -> None:
    configure()
    try:
        json.loads("{")
    except json.JSONDecodeError:
        logging.getLogger("x").error("bad", exc_info=True)
    [event] = [e for e in json_lines(capsys.readouterr().out) if e["logger"] == "x"]
    assert event["exception"]["type"] == "json.decoder.JSONDecodeError"


def test_unserializable_extra_and_broken_arguments_never_lose_the_line(configure, capsys) -> None:
    configure()

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    log = logging.getLogger("x")
    log.info("object %s", object(), extra={"when": datetime(2025, 10, 6, tzinfo=UTC), "obj": {1, 2}})
    [first] = json_lines(capsys.readouterr().out)
    assert first["context"]["when"].startswith("2025-10-06T00:00:00")
    assert first["context"]["obj"] in ("{1, 2}", [1, 2])
    # (built directly: pytest's own capture handler would raise on this record first)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "broken %s", (Broken(),), None)
    second = EventBuilder(SDKConfig()).build(record)
    assert second["message"] == "broken %s"
    assert "format_error" in second["context"]


def test_trace_and_span_ids_come_from_the_active_opentelemetry_span(configure, capsys) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    configure()
    tracer = TracerProvider().get_tracer("test")
    log = logging.getLogger("app")
    with tracer.start_as_current_span("request") as span:
        log.info("inside")
        ctx = span.get_span_context()
    log.info("outside")
    inside, outside = json_lines(capsys.readouterr().out)
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert outside["trace_id"] is None and outside["span_id"] is None


def test_level_filtering_and_log_level_names(configure, capsys) -> None:
    configure(log_level="warning")
    log = logging.getLogger("app")
    log.info("hidden")
    log.warning("shown")
    assert [e["message"] for e in json_lines(capsys.readouterr().out)] == ["shown"]


# --------------------------------------------------------------------------- TRACE


def test_trace_level(configure, capsys) -> None:
    configure(log_level="TRACE")
    log = logging.getLogger("app.deep")
    line = here() + 1
    log.trace("state %s", {"step": 3})  # type: ignore[attr-defined]
    logging.LoggerAdapter(log, {}).trace("via adapter")  # type: ignore[attr-defined]
    log.log(TRACE, "via log()")
    events = json_lines(capsys.readouterr().out)
    assert [e["level"] for e in events] == ["TRACE"] * 3
    assert events[0]["message"] == "state {'step': 3}"
    assert events[0]["source"] == f"{THIS_FILE}:{line}"
    assert events[0]["function"] == "test_trace_level"
    assert events[1]["function"] == "test_trace_level"
    assert logging.getLevelName(TRACE) == "TRACE"


def test_trace_is_filtered_out_at_debug(configure, capsys) -> None:
    configure(log_level="DEBUG")
    log = logging.getLogger("app")
    log.trace("no")  # type: ignore[attr-defined]
    log.debug("yes")
    assert [e["level"] for e in json_lines(capsys.readouterr().out)] == ["DEBUG"]


# --------------------------------------------------------------------------- console


def test_console_format_in_development(configure, capsys, monkeypatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    configure(environment="development")
    log = logging.getLogger("app.routes.leads")
    with LogContext(method="POST", path="/api/leads"):
        log.info("Lead created successfully")
        log.warning("Slow lead import", extra={"rows": 120})
    try:
        raise KeyError("lead")
    except KeyError:
        log.exception("lookup failed")
    lines = capsys.readouterr().out.splitlines()
    first = CONSOLE_LINE.match(lines[0])
    assert first, lines[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "app.routes.leads"
    assert first["message"] == "Lead created successfully"
    assert first["tail"] == "POST /api/leads"
    stamp = datetime.strptime(first["time"], "%Y-%m-%d %H:%M:%S")
    assert abs(stamp.timestamp() - time.time()) < 5  # local time, like asctime
    second = CONSOLE_LINE.match(lines[1])
    assert second and second["level"] == "WARNING" and second["tail"] == "POST /api/leads | rows=120"
    third = CONSOLE_LINE.match(lines[2])
    assert third and third["level"] == "ERROR" and third["tail"] is None
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'lead'"


def test_console_colors_only_when_asked(configure, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    configure(environment="development")
    logging.getLogger("app").error("red")
    out = capsys.readouterr().out
    assert "\x1b[31m[ERROR]\x1b[0m app: red" in out


def test_console_lines_are_redacted_too(configure, capsys) -> None:
    configure(environment="development")
    logging.getLogger("app").info("login john.doe@example.com", extra={"password": "hunter2"})
    out = capsys.readouterr().out
    assert "john.doe@example.com" not in out and "hunter2" not in out
    assert "j***@example.com" in out and "password=[REDACTED]" in out


# --------------------------------------------------------------------------- LogContext


def test_log_context_nests_and_restores() -> None:
    log = logging.getLogger("ctx")
    with capture_logs() as events:
        with LogContext(log, customer_id="12345", operation="create_lead"):  # the guide's form
            log.info("outer")
            with LogContext(operation="score", step=2):
                log.info("inner")
            log.info("outer again")
        log.info("none")
    assert [e["context"] for e in events] == [
        {"customer_id": "12345", "operation": "create_lead"},
        {"customer_id": "12345", "operation": "score", "step": 2},
        {"customer_id": "12345", "operation": "create_lead"},
        {},
    ]
    assert LogContext.get() == {}


def test_log_context_rejects_positional_fields() -> None:
    with pytest.raises(TypeError):
        LogContext({"customer_id": 1})  # type: ignore[arg-type]


def test_extra_fields_win_over_bound_ones() -> None:
    with capture_logs() as events, LogContext(source_channel="web"):
        logging.getLogger("x").info("m", extra={"source_channel": "api"})
    assert events[0]["context"] == {"source_channel": "api"}


def test_log_context_as_decorator_sync_and_async() -> None:
    log = logging.getLogger("ctx")

    @LogContext(job="import")
    def run(n: int) -> int:
        log.info("sync %d", n)
        return n * 2

    @LogContext(job="async-import")
    async def arun(n: int) -> int:
        await asyncio.sleep(0)
        log.info("async %d", n)
        return n * 3

    with capture_logs(logger="ctx") as events:
        assert run(2) == 4
        assert asyncio.run(arun(2)) == 6
        log.info("after")
    assert [e["context"] for e in events] == [{"job": "import"}, {"job": "async-import"}, {}]
    assert run.__name__ == "run" and arun.__name__ == "arun"


def test_log_context_bind_and_reset_for_a_request() -> None:
    with capture_logs() as events:
        token = LogContext.bind(request_id="r-1", user_id=5)
        logging.getLogger("x").info("in request")
        LogContext.reset(token)
        logging.getLogger("x").info("after request")
    assert events[0]["request_id"] == "r-1" and events[0]["context"] == {"user_id": 5}
    assert events[1]["request_id"] is None and events[1]["context"] == {}


def test_log_context_is_per_thread() -> None:
    """Concurrent threads each see only their own fields, even through one shared instance."""
    log = logging.getLogger("threads")
    barrier = threading.Barrier(8)
    shared = LogContext(tenant="shared")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with LogContext(worker=n):
                barrier.wait(timeout=5)
                log.info("w%d", n)
                with shared:
                    barrier.wait(timeout=5)
                    log.info("s%d", n)
                barrier.wait(timeout=5)
                log.info("e%d", n)
        except BaseException as exc:
            errors.append(exc)

    with capture_logs() as events:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        log.info("main")
    assert not errors
    by_message = {e["message"]: e["context"] for e in events}
    for n in range(8):
        assert by_message[f"w{n}"] == {"worker": n}
        assert by_message[f"s{n}"] == {"worker": n, "tenant": "shared"}
        assert by_message[f"e{n}"] == {"worker": n}
    assert by_message["main"] == {}


def test_log_context_reaches_a_thread_only_through_copy_context() -> None:
    log = logging.getLogger("threads")
    with capture_logs() as events, LogContext(request_id="r-9"):
        plain = threading.Thread(target=lambda: log.info("plain"))
        plain.start()
        plain.join()
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(lambda: log.info("copied"),))
        copied.start()
        copied.join()
    ids = {e["message"]: e["request_id"] for e in events}
    assert ids == {"plain": None, "copied": "r-9"}


def test_log_context_per_asyncio_task() -> None:
    log = logging.getLogger("tasks")

    async def handle(n: int) -> None:
        with LogContext(request_id=f"req-{n}"):
            await asyncio.sleep(0.01 * (5 - n))  # interleave
            log.info("handled %d", n)
            await asyncio.sleep(0)
            log.info("done %d", n)

    async def main() -> None:
        with LogContext(server="api"):
            await asyncio.gather(*(handle(n) for n in range(5)))
            log.info("all")

    with capture_logs(logger="tasks") as events:
        asyncio.run(main())
    for event in events:
        if event["message"] == "all":
            assert event["request_id"] is None and event["context"] == {"server": "api"}
        else:
            n = int(event["message"].split()[-1])
            assert event["request_id"] == f"req-{n}"
            assert event["context"] == {"server": "api"}
    assert len(events) == 11


# --------------------------------------------------------------------------- files


def test_rotating_files_and_errors_log(configure, tmp_path, capsys) -> None:
    configure(log_dir=str(tmp_path / "logs"), log_max_bytes=4000, log_backup_count=3, log_level="DEBUG")
    log = logging.getLogger("app.files")
    for i in range(200):
        log.info("line %03d %s", i, "x" * 40)
        if i % 50 == 0:
            log.error("failure %d", i)
            log.critical("critical %d", i)
        log.warning("warned %d", i) if i % 70 == 0 else None
    setup = current_setup()
    assert setup is not None
    setup.flush()
    logs = tmp_path / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert names == [
        "application.log",
        "application.log.1",
        "application.log.2",
        "application.log.3",
        "errors.log",
    ]
    for path in logs.iterdir():
        assert path.stat().st_size <= 4000
        for event in json_lines(path.read_text()):
            assert set(event) == JSON_KEYS
    newest = json_lines((logs / "application.log").read_text())
    assert newest[-1]["message"].startswith("line 199")
    errors = json_lines((logs / "errors.log").read_text())
    assert [e["level"] for e in errors] == ["ERROR", "CRITICAL"] * 4
    assert [e["message"] for e in errors][:2] == ["failure 0", "critical 0"]
    capsys.readouterr()


def test_defaults_are_10_mb_times_10() -> None:
    config = SDKConfig()
    assert config.log_max_bytes == 10 * 1024 * 1024 and config.log_backup_count == 10


def test_log_dir_from_the_guides_variables(tmp_path) -> None:
    config = resolve_config(env={"LOG_DIR": str(tmp_path / "a"), "LOG_LEVEL": "DEBUG"})
    assert config.log_dir == str(tmp_path / "a") and config.log_level == "DEBUG"


# --------------------------------------------------------------------------- redaction

SECRETS = {
    "email": "john.doe@example.com",
    "card": "4242 4242 4242 4242",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "github": "ghp_1234567890abcdefghijABCDEFGHIJ123456",
    "db_url_password": "s3cr3t-pw",
    "iban": "DE89 3704 0044 0532 0130 00",
}


def test_redaction_in_message_context_and_exception(configure, capsys, tmp_path) -> None:
    configure(log_dir=str(tmp_path))
    log = logging.getLogger("app.secrets")
    log.info(
        "user %s paid with %s, auth Bearer %s",
        SECRETS["email"],
        SECRETS["card"],
        SECRETS["jwt"],
    )
    log.warning(
        "config loaded",
        extra={
            "aws": f"aws_access_key={SECRETS['aws']}",
            "stripe": {"secret_key": SECRETS["stripe"]},
            "db": {"url": f"postgres://app:{SECRETS['db_url_password']}@db:5432/crm"},
            "notes": [f"token {SECRETS['github']}", f"iban {SECRETS['iban']}"],
            "password": "hunter2",
            "user_id": 12345,
        },
    )
    try:
        raise ConnectionError(f"auth failed for {SECRETS['email']} with key {SECRETS['stripe']}")
    except ConnectionError:
        log.exception("upstream error")
    setup = current_setup()
    assert setup is not None
    setup.flush()
    out = capsys.readouterr().out
    for where in (out, (tmp_path / "application.log").read_text(), (tmp_path / "errors.log").read_text()):
        for kind, secret in SECRETS.items():
            assert secret not in where, kind
        assert "hunter2" not in where
    first, second, third = json_lines(out)
    assert (
        first["message"] == "user j***@example.com paid with **** **** **** 4242, auth Bearer [REDACTED_JWT]"
    )
    ctx = second["context"]
    assert ctx["password"] == "[REDACTED]"
    assert ctx["user_id"] == 12345  # ids stay: they are what logs are correlated by
    assert ctx["stripe"]["secret_key"] == "[REDACTED]"
    assert ctx["db"]["url"] == "postgres://app:***@db:5432/crm"
    assert ctx["notes"][0] == "token ghp_[REDACTED]"
    exc = third["exception"]
    assert "j***@example.com" in exc["message"] and "sk_live_[REDACTED]" in exc["message"]
    assert "sk_live_[REDACTED]" in exc["stack"]


def test_request_id_with_a_secret_is_redacted(configure, capsys) -> None:
    configure()
    with LogContext(request_id=SECRETS["email"]):
        logging.getLogger("x").info("m")
    [event] = json_lines(capsys.readouterr().out)
    assert event["request_id"] == "j***@example.com"


def test_redaction_can_be_turned_off(configure, capsys) -> None:
    configure(redact=False)
    logging.getLogger("x").info("mail %s", SECRETS["email"], extra={"password": "hunter2"})
    [event] = json_lines(capsys.readouterr().out)
    assert event["message"] == f"mail {SECRETS['email']}" and event["context"]["password"] == "hunter2"


# --------------------------------------------------------------------------- idempotence


def test_configure_twice_installs_handlers_once(configure, capsys) -> None:
    config = configure()
    setup = current_setup()
    configure_logging(config)
    assert current_setup() is setup
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_stackwatch", False)]
    assert len(ours) == 1
    logging.getLogger("x").info("once")
    assert len(json_lines(capsys.readouterr().out)) == 1


def test_reconfigure_replaces_only_the_sdks_handlers(configure, capsys) -> None:
    mine = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(mine)
    try:
        configure(service="a")
        configure(service="b")
        ours = [h for h in root.handlers if getattr(h, "_stackwatch", False)]
        assert len(ours) == 1 and mine in root.handlers
        logging.getLogger("x").warning("m")
        [event] = json_lines(capsys.readouterr().out)
        assert event["service"] == "b"
        assert mine.stream.getvalue() == "m\n"  # type: ignore[attr-defined]
    finally:
        root.removeHandler(mine)


def test_unconfigure_restores_the_root_level(configure) -> None:
    root = logging.getLogger()
    before = root.level
    configure(log_level="DEBUG")
    assert root.level == logging.DEBUG
    unconfigure_logging()
    assert root.level == before
    assert not [h for h in root.handlers if getattr(h, "_stackwatch", False)]


# --------------------------------------------------------------------------- helpers


def test_the_guides_log_helpers(configure, capsys) -> None:
    configure(log_level="DEBUG")
    line = here() + 1
    log_api_call("/api/leads", "POST", 201, 145.5)
    log_api_call("/api/leads/7", "GET", 404, 3.2)
    log_api_call("/api/payments", "POST", 502, 900.0, provider="stripe")
    log_database_query("SELECT * FROM leads WHERE status = 'new'", 25.3, 150)
    log_database_query("SELECT * FROM users WHERE email = 'ann@example.com'", 750.0, 1)
    log_external_service_call("twilio", "send_sms", True, 234.5)
    log_external_service_call("stripe", "charge", False, 1200.0, error="timeout")
    log_business_event("lead_created", 42, {"source": "website", "score": 85})
    events = json_lines(capsys.readouterr().out)
    assert [e["level"] for e in events] == [
        "INFO",
        "WARNING",
        "ERROR",
        "DEBUG",
        "WARNING",
        "INFO",
        "WARNING",
        "INFO",
    ]
    assert all(e["source"].startswith(f"{THIS_FILE}:") for e in events)
    assert events[0]["source"] == f"{THIS_FILE}:{line}"
    assert all(e["function"] == "test_the_guides_log_helpers" for e in events)
    assert events[0]["context"] == {
        "endpoint": "/api/leads",
        "method": "POST",
        "status_code": 201,
        "duration_ms": 145.5,
        "log_type": "web",
    }
    assert events[2]["context"]["provider"] == "stripe"
    assert events[3]["context"] == {
        "query": "SELECT * FROM leads WHERE status = 'new'",
        "duration_ms": 25.3,
        "rows": 150,
        "log_type": "database",
    }
    assert events[4]["message"].startswith("Slow query") and events[4]["context"]["slow"] is True
    assert "ann@example.com" not in events[4]["context"]["query"]
    assert events[5]["context"] == {
        "external_service": "twilio",
        "operation": "send_sms",
        "success": True,
        "duration_ms": 234.5,
    }
    assert events[6]["context"]["error"] == "timeout"
    assert events[7]["message"] == "Business event: lead_created"
    assert events[7]["context"] == {
        "event": "lead_created",
        "entity_id": 42,
        "source": "website",
        "score": 85,
    }


# --------------------------------------------------------------------------- structlog


def test_structlog_processor_adds_the_fields_and_redacts(configure) -> None:
    import structlog
    from opentelemetry.sdk.trace import TracerProvider

    configure(service="billing")
    out = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog_processor,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        tracer = TracerProvider().get_tracer("t")
        with LogContext(request_id="req-7", tenant="acme"), tracer.start_as_current_span("s") as span:
            log.info("invoice sent to ann@example.com", card="4242 4242 4242 4242", api_key="k-123")
            ids = span.get_span_context()
        log.warning("no span")
    finally:
        structlog.reset_defaults()
    first, second = json_lines(out.getvalue())
    assert ISO_MS_Z.match(first["timestamp"])
    assert first["level"] == "info" or first["level"] == "INFO"
    assert first["service"] == "billing"
    assert first["request_id"] == "req-7" and first["tenant"] == "acme"
    assert first["trace_id"] == f"{ids.trace_id:032x}" and first["span_id"] == f"{ids.span_id:016x}"
    assert first["event"] == "invoice sent to a***@example.com"
    assert first["card"] == "**** **** **** 4242" and first["api_key"] == "[REDACTED]"
    assert second["trace_id"] is None and second["request_id"] is None and second["service"] == "billing"


def test_structlog_processor_alone_sets_the_level_from_the_method() -> None:
    event = structlog_processor(None, "warn", {"event": "x"})
    assert event["level"] == "WARNING" and event["service"] == "app" and ISO_MS_Z.match(event["timestamp"])


# --------------------------------------------------------------------------- capture_logs


def test_capture_logs_before_init_uses_defaults() -> None:
    with capture_logs() as events:
        logging.getLogger("some.lib").debug("debug %s", SECRETS["email"])
    assert len(events) == 1
    assert events[0]["service"] == "app"
    assert events[0]["level"] == "DEBUG"
    assert events[0]["message"] == "debug j***@example.com"


def test_capture_logs_restores_the_level_and_can_target_a_logger() -> None:
    root = logging.getLogger()
    before = root.level
    with capture_logs(level="INFO", logger="app.only") as events:
        logging.getLogger("app.only.child").info("kept")
        logging.getLogger("app.only").debug("too low")
        logging.getLogger("elsewhere").warning("other logger")
    assert [e["message"] for e in events] == ["kept"]
    assert root.level == before and logging.getLogger("app.only").level == logging.NOTSET


# --------------------------------------------------------------------------- speed (not timed here)


def test_json_formatter_matches_python_json_logger_on_the_benchmark_records(configure) -> None:
    """The records of the speed comparison (docs/sdk.md) format to the same data as
    python-json-logger's; the timing itself is in the report, not asserted in CI."""
    from pythonjsonlogger.json import JsonFormatter as PjlFormatter

    from stackwatch.sdk.logging import JsonFormatter

    ours = JsonFormatter(EventBuilder(SDKConfig(service="bench")))
    theirs = PjlFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    records = []
    for i in range(50):
        record = logging.LogRecord("app.bench", logging.INFO, __file__, 10, "request %s done", (i,), None)
        record.__dict__.update({"status": 200, "duration_ms": 12.5, "path": f"/api/leads/{i}"})
        records.append(record)
    for record in records:
        mine, other = json.loads(ours.format(record)), json.loads(theirs.format(record))
        assert mine["message"] == other["message"]
        assert mine["context"] == {k: other[k] for k in ("status", "duration_ms", "path")}
