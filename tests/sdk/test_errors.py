"""Error capture: sentry_sdk with the Stackwatch DSN, envelopes recorded by a stand-in receiver.

The server's Sentry endpoints come with issue 5, so a receiver plays the server here and the
envelopes it records are decoded and checked. Each scenario runs in a subprocess: sentry_sdk's
client and its integrations are process-global.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from telemetry_receiver import TelemetryReceiver

from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.errors import make_event_redactor, setup_errors

pytest.importorskip("sentry_sdk")

ROOT = Path(__file__).resolve().parents[2]


def run_script(body: str, tmp_path: Path) -> dict:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def events(receiver: TelemetryReceiver, kind: str = "event") -> list[tuple[dict, dict]]:
    return [(header, payload) for header, item, payload in receiver.envelope_items() if item.get("type") == kind]


def test_capture_exception_reaches_the_dsn_with_release_environment_and_redaction(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        out = run_script(
            f"""
import json
import sentry_sdk
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.errors import setup_errors

config = SDKConfig(service="payments", environment="production", version="4.1.0",
                   server_url={receiver.url!r}, token="swi_ingest_abc", project_id=7)
ok = setup_errors(config)
client = sentry_sdk.get_client()
again = setup_errors(config)

def charge(customer_email, card):
    api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    password = "hunter2"
    raise ValueError(f"Payment processing failed for {{customer_email}} with card {{card}}")

try:
    charge("john.doe@example.com", "4242 4242 4242 4242")
except ValueError:
    event_id = sentry_sdk.capture_exception()
sentry_sdk.flush(5)
print(json.dumps({{"ok": ok, "again": again, "same_client": sentry_sdk.get_client() is client,
                  "event_id": event_id, "rate": client.options["traces_sample_rate"]}}))
""",
            tmp_path,
        )
        assert receiver.wait_for(lambda: len(events(receiver)) >= 1)
        received = receiver.requests
        found = events(receiver)
    assert out["ok"] and out["again"] and out["same_client"]
    assert out["rate"] == 0.1  # production default for transactions
    paths = {r.path.split("?")[0] for r in received}
    assert paths == {"/api/7/envelope/"}
    auth = received[0].headers.get("x-sentry-auth", "")
    assert "sentry_key=swi_ingest_abc" in auth
    header, event = found[0]
    assert event["event_id"] == out["event_id"] == header["event_id"]
    assert event["release"] == "4.1.0"
    assert event["environment"] == "production"
    assert event["tags"]["service"] == "payments"
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "ValueError"
    assert "Payment processing failed" in exc["value"]
    assert "john.doe@example.com" not in exc["value"] and "j***@example.com" in exc["value"]
    assert "4242 4242 4242 4242" not in exc["value"] and "**** **** **** 4242" in exc["value"]
    frame_vars = exc["stacktrace"]["frames"][-1]["vars"]
    text = json.dumps(event)
    assert "sk_live_4eC39HqLyjWDarjtT1zdp7dc" not in text
    assert "hunter2" not in text
    assert "john.doe@example.com" not in text
    assert frame_vars["customer_email"].strip("'") == "j***@example.com"


def test_with_opentelemetry_tracing_errors_join_the_requests_trace(tmp_path: Path) -> None:
    """The SDK traces requests with OpenTelemetry: an error captured inside a span carries that
    span's trace and span ids (so the trace view shows it), and Sentry makes no transactions of
    its own (they were second, differently named traces of the same requests)."""
    with TelemetryReceiver() as receiver:
        out = run_script(
            f"""
import json
import sentry_sdk
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.errors import setup_errors

trace.set_tracer_provider(TracerProvider())
config = SDKConfig(service="crm", environment="production", server_url={receiver.url!r}, token="swi_t", project_id=1)
setup_errors(config, otel_tracing=True)
with trace.get_tracer("app").start_as_current_span("GET /crash") as span:
    try:
        raise RuntimeError("sdk test crash")
    except RuntimeError:
        sentry_sdk.capture_exception()
    ids = span.get_span_context()
sentry_sdk.flush(5)
print(json.dumps({{"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x"),
                  "rate": sentry_sdk.get_client().options["traces_sample_rate"]}}))
""",
            tmp_path,
        )
        assert receiver.wait_for(lambda: len(events(receiver)) >= 1)
        (_, event), = events(receiver)
    assert out["rate"] is None
    assert event["contexts"]["trace"]["trace_id"] == out["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == out["span_id"]


def test_an_app_that_already_initialised_sentry_keeps_its_client(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        host = receiver.url.split("://", 1)[1]
        out = run_script(
            f"""
import json
import sentry_sdk
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.errors import setup_errors

sentry_sdk.init(dsn="http://theirkey@{host}/99", release="their-release")
theirs = sentry_sdk.get_client()
ok = setup_errors(SDKConfig(service="s", version="1.0", server_url={receiver.url!r}, token="ours"))
sentry_sdk.capture_message("hello from the app")
sentry_sdk.flush(5)
print(json.dumps({{"ok": ok, "kept": sentry_sdk.get_client() is theirs}}))
""",
            tmp_path,
        )
        assert receiver.wait_for(lambda: len(events(receiver)) >= 1)
        paths = {r.path.split("?")[0] for r in receiver.requests}
        found = events(receiver)
    assert out == {"ok": True, "kept": True}
    assert paths == {"/api/99/envelope/"}
    assert found[0][1]["release"] == "their-release"


def test_flask_errors_and_transactions_are_sent(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    with TelemetryReceiver() as receiver:
        run_script(
            f"""
import json
import flask
import sentry_sdk
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.errors import setup_errors

assert setup_errors(SDKConfig(service="leads", environment="development", version="9.9.9",
                              server_url={receiver.url!r}, token="tok"))
app = flask.Flask("leads")

@app.get("/boom")
def boom():
    token = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
    raise RuntimeError("database exploded")

with app.test_client() as client:
    status = client.get("/boom?email=jane@example.org").status_code
sentry_sdk.flush(5)
print(json.dumps({{"status": status}}))
""",
            tmp_path,
        )
        assert receiver.wait_for(lambda: len(events(receiver)) >= 1 and len(events(receiver, "transaction")) >= 1)
        errors = events(receiver)
        transactions = events(receiver, "transaction")
    event = errors[0][1]
    assert event["exception"]["values"][-1]["value"] == "database exploded"
    assert event["release"] == "9.9.9" and event["environment"] == "development"
    assert event["transaction"] == "boom"
    text = json.dumps(event)
    assert "ghp_16C7e42F292c6912E7710c838347Ae178B4a" not in text
    assert "jane@example.org" not in text
    assert transactions[0][1]["transaction"] == "boom"  # development: every transaction sampled


def test_off_or_without_a_dsn_nothing_is_initialised() -> None:
    assert setup_errors(SDKConfig(errors=False, server_url="http://x", token="t")) is False
    import sentry_sdk

    if not sentry_sdk.get_client().is_active():
        assert setup_errors(SDKConfig(server_url=None, token=None)) is False
        assert setup_errors(SDKConfig(server_url="http://127.0.0.1:1", token=None)) is False
        assert not sentry_sdk.get_client().is_active()


def test_redactor_leaves_identifiers_and_package_versions_alone() -> None:
    before_send = make_event_redactor()
    event = {
        "event_id": "0123456789abcdef0123456789abcdef",
        "modules": {"google-auth": "2.29.0", "sentry-sdk": "2.0.0"},
        "contexts": {"trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}},
        "extra": {"user_id": 12345, "db_password": "s3cret", "note": "call +14155552671"},
        "message": "Bearer abcdefghijklmnop1234567890",
    }
    out = before_send(event, {})
    assert out is not None
    assert out["modules"] == event["modules"]
    assert out["contexts"] == event["contexts"]
    assert out["extra"]["user_id"] == 12345
    assert out["extra"]["db_password"] == "[REDACTED]"
    assert "4155552671" not in out["extra"]["note"]
    assert out["message"] == "Bearer [REDACTED]"
    assert make_event_redactor(enabled=False)(event, {}) is event
