"""Tracing: spans exported over OTLP/HTTP to a stand-in receiver, decoded with opentelemetry-proto.

Each scenario runs in a subprocess of its own: an OpenTelemetry global provider can be set once
per process, and instrumentations patch libraries globally, so isolating them keeps the rest of
the test session untouched. The server has no /v1/traces yet (issue 5); the receiver stands in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from telemetry_receiver import TelemetryReceiver

from serverproc import free_port
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk.tracing import setup_tracing

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("flask")

ROOT = Path(__file__).resolve().parents[2]


def run_script(body: str, tmp_path: Path, *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    full_env.pop("OTEL_TRACES_EXPORTER", None)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)


FLASK_APP = """
import json, logging, sys
import flask
from opentelemetry import trace
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
app = flask.Flask("leads")
seen = {}

@app.get("/api/leads/<int:lead_id>")
def lead(lead_id):
    ctx = trace.get_current_span().get_span_context()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    factory_record = logging.getLogRecordFactory()("x", logging.INFO, __file__, 1, "m", None, None)
    seen["trace_id"] = format(ctx.trace_id, "032x")
    seen["log_trace_id"] = getattr(factory_record, "otelTraceID", None)
    return {"lead": lead_id, "valid": ctx.is_valid}


def traced(app):
    # As init(app) does: the SDK's web middleware opens each request's server span.
    from stackwatch.sdk.health import HealthRegistry
    from stackwatch.sdk.integrations import instrument_app
    from stackwatch.sdk.metrics import RequestMetrics

    assert tracing.instrument_app_tracing(app)
    config = SDKConfig(service="leads-api")
    instrument_app(app, config, HealthRegistry(), RequestMetrics(config, registry=None))
    return True
"""


def test_spans_reach_the_server_with_resource_and_token(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        result = run_script(
            FLASK_APP
            + f"""
config = SDKConfig(service="leads-api", environment="staging", version="2.3.1",
                   server_url={receiver.url!r}, token="swi_tok_123", tags={{"team": "growth"}})
provider = tracing.setup_tracing(config)
assert traced(app)
assert tracing.setup_tracing(config) is provider  # idempotent
with app.test_client() as client:
    response = client.get("/api/leads/42")
assert response.status_code == 200 and response.get_json()["valid"]
assert tracing.force_flush(5000)
print(json.dumps({{**seen, "stats": tracing.export_stats.__dict__}}))
""",
            tmp_path,
            env={"OTEL_PYTHON_LOG_CORRELATION": "true"},
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert receiver.wait_for(lambda: len(receiver.spans()) >= 1)
        spans = receiver.spans()
    server_spans = [s for s in spans if s["name"] == "GET /api/leads/{lead_id}"]
    assert len(server_spans) == 1, spans
    span = server_spans[0]
    assert span["trace_id"] == out["trace_id"]
    # With OpenTelemetry's log-correlation switch on, LogRecords carry the trace id too.
    assert out["log_trace_id"] == out["trace_id"]
    assert span["attributes"]["http.route"] == "/api/leads/{lead_id}"
    assert span["resource"]["service.name"] == "leads-api"
    assert span["resource"]["service.version"] == "2.3.1"
    assert span["resource"]["deployment.environment"] == "staging"
    assert span["resource"]["host.name"]
    assert span["resource"]["team"] == "growth"
    assert span["authorization"] == "Bearer swi_tok_123"
    assert out["stats"]["exported"] >= 1 and out["stats"]["failed"] == 0
    assert "Failed to export" not in result.stderr


def test_a_server_without_traces_endpoint_is_quiet_and_harmless(tmp_path: Path) -> None:
    """The current server answers 404 on /v1/traces: one INFO line, one request, the app unharmed."""
    with TelemetryReceiver(statuses={"/v1/traces": 404}) as receiver:
        result = run_script(
            FLASK_APP
            + f"""
config = SDKConfig(service="leads-api", server_url={receiver.url!r}, token="t")
tracing.setup_tracing(config)
traced(app)
codes = []
with app.test_client() as client:
    for _ in range(5):
        codes.append(client.get("/api/leads/1").status_code)
        tracing.force_flush(5000)
print(json.dumps({{"codes": codes, "stats": tracing.export_stats.__dict__}}))
""",
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        requests_seen = len(receiver.on("/v1/traces"))
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["codes"] == [200] * 5
    # The first batch learns the endpoint is missing; later batches are dropped without a request.
    assert requests_seen == 1
    assert out["stats"]["failed"] == 1 and out["stats"]["dropped_while_paused"] == 4
    assert out["stats"]["last_status"] == 404
    lines = [line for line in result.stderr.splitlines() if "trace export" in line or "export" in line.lower()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("INFO stackwatch.sdk.tracing") and "does not accept traces (HTTP 404)" in lines[0]


def test_an_unreachable_server_costs_one_warning(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_script(
        FLASK_APP
        + f"""
tracing.setup_tracing(SDKConfig(service="s", server_url={dead!r}, token="t"))
traced(app)
with app.test_client() as client:
    for _ in range(3):
        assert client.get("/api/leads/1").status_code == 200
        tracing.force_flush(5000)
print(json.dumps(tracing.export_stats.__dict__))
""",
        tmp_path,
        env={"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1"},  # OpenTelemetry's own knob bounds the retries
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["failed"] == 1 and stats["dropped_while_paused"] == 2
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert len(warnings) == 1 and "trace export to" in warnings[0], result.stderr


def test_without_a_server_spans_have_ids_and_nothing_is_exported(tmp_path: Path) -> None:
    result = run_script(
        FLASK_APP
        + """
provider = tracing.setup_tracing(SDKConfig(service="s"))
traced(app)
with app.test_client() as client:
    body = client.get("/api/leads/7").get_json()
print(json.dumps({"valid": body["valid"], "inner": type(tracing._state.processor.inner).__name__,
                  "provider": type(provider).__name__, "log_trace_id": seen["log_trace_id"]}))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # No record-factory injection by default: the SDK's own formatters add the span ids.
    assert out == {"valid": True, "inner": "_NoopSpanProcessor", "provider": "TracerProvider", "log_trace_id": None}


def test_console_exporter_prints_spans(tmp_path: Path) -> None:
    script = tmp_path / "c.py"
    script.write_text(textwrap.dedent(FLASK_APP + """
tracing.setup_tracing(SDKConfig(service="console-svc"))
traced(app)
with app.test_client() as client:
    client.get("/api/leads/7")
tracing.force_flush(5000)
"""))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OTEL_TRACES_EXPORTER": "console"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert '"name": "GET /api/leads/{lead_id}"' in result.stdout
    assert '"service.name": "console-svc"' in result.stdout


def test_the_apps_own_provider_is_kept(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        result = run_script(
            f"""
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing

mine = InMemorySpanExporter()
theirs = TracerProvider()
theirs.add_span_processor(SimpleSpanProcessor(mine))
trace.set_tracer_provider(theirs)
provider = tracing.setup_tracing(SDKConfig(service="s", server_url={receiver.url!r}, token="t"))
with trace.get_tracer("app").start_as_current_span("checkout"):
    pass
tracing.force_flush(5000)
print(json.dumps({{"same": provider is theirs, "mine": [s.name for s in mine.get_finished_spans()]}}))
""",
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: any(s["name"] == "checkout" for s in receiver.spans()))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "mine": ["checkout"]}


def test_tracing_off_installs_nothing() -> None:
    assert setup_tracing(SDKConfig(tracing=False)) is None


GUNICORN_APP = """
import os
import flask
from opentelemetry import trace
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing

app = flask.Flask("forked")

@app.get("/work/<int:n>")
def work(n):
    ctx = trace.get_current_span().get_span_context()
    return {"pid": os.getpid(), "trace_id": format(ctx.trace_id, "032x")}

# As stackwatch.sdk.init(app) does: set up after the app exists, in the master (--preload).
config = SDKConfig(service="forked-api", server_url=os.environ["RECEIVER_URL"], token="t")
tracing.setup_tracing(config)
from prometheus_client import CollectorRegistry
from stackwatch.sdk.health import HealthRegistry
from stackwatch.sdk.integrations import instrument_app
from stackwatch.sdk.metrics import RequestMetrics
assert tracing.instrument_app_tracing(app)
instrument_app(app, config, HealthRegistry(config), RequestMetrics(config, CollectorRegistry()))
# A span made in the master before forking: it must not be exported twice by the children.
with trace.get_tracer("boot").start_as_current_span("master-boot"):
    pass
# Exported now, so the exporter's HTTP session holds a keep-alive connection when gunicorn forks.
tracing.force_flush(5000)
"""


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "import-in-worker"])
def test_gunicorn_workers_each_export_their_spans(tmp_path: Path, preload: bool) -> None:
    pytest.importorskip("gunicorn")
    (tmp_path / "forkapp.py").write_text(textwrap.dedent(GUNICORN_APP))
    port = free_port()
    with TelemetryReceiver() as receiver:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{tmp_path}", "RECEIVER_URL": receiver.url,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
        if preload:
            cmd.append("--preload")
        proc = subprocess.Popen([*cmd, "forkapp:app"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            by_pid: dict[int, set[str]] = {}
            deadline = time.monotonic() + 30
            n = 0
            while time.monotonic() < deadline and (len(by_pid) < 2 or sum(map(len, by_pid.values())) < 6):
                n += 1
                try:
                    # A new connection each time, so the kernel spreads them over both workers.
                    body = httpx.get(f"http://127.0.0.1:{port}/work/{n}", timeout=5,
                                     headers={"Connection": "close"}).json()
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                by_pid.setdefault(body["pid"], set()).add(body["trace_id"])
            assert len(by_pid) == 2, f"requests only reached {list(by_pid)}"
            wanted = set().union(*by_pid.values())
            assert receiver.wait_for(lambda: wanted <= {s["trace_id"] for s in receiver.spans()}, timeout=15)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                output = proc.communicate(timeout=20)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                proc.kill()
                output = proc.communicate()[0].decode(errors="replace")
        spans = receiver.spans()
    exported = {s["trace_id"] for s in spans}
    for pid, trace_ids in by_pid.items():
        assert trace_ids <= exported, f"worker {pid} spans missing"
    # Each request's server span was exported exactly once.
    request_spans = [s for s in spans if s["name"] == "GET /work/<int:n>"]
    assert len(request_spans) == len({s["span_id"] for s in request_spans})
    boots = [s for s in spans if s["name"] == "master-boot"]
    assert len(boots) == len({b["span_id"] for b in boots}), "a queued span was exported twice"
    if preload:
        assert len(boots) <= 1, "the master's queued span was exported again by a forked child"
    assert "Traceback" not in output, output


def test_libraries_imported_later_are_instrumented_and_unused_ones_never_imported(tmp_path: Path) -> None:
    """A Flask app does not pay for importing FastAPI, Django or Celery; httpx imported after
    set-up still propagates ``traceparent`` to the service it calls."""
    with TelemetryReceiver() as receiver:
        result = run_script(
            f"""
import json, sys
from opentelemetry import trace
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing

tracing.setup_tracing(SDKConfig(service="caller"))
imported = sorted(m for m in ("fastapi", "django", "celery", "httpx", "redis") if m in sys.modules)
import httpx  # after set-up: instrumented on import
with trace.get_tracer("app").start_as_current_span("checkout") as span:
    trace_id = format(span.get_span_context().trace_id, "032x")
    httpx.get({receiver.url!r} + "/downstream")
print(json.dumps({{"imported": imported, "trace_id": trace_id}}))
""",
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        downstream = receiver.on("/downstream")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    traceparent = downstream[0].headers["traceparent"]
    assert traceparent.split("-")[1] == out["trace_id"]


def test_shutdown_then_setup_exports_again(tmp_path: Path) -> None:
    with TelemetryReceiver() as receiver:
        result = run_script(
            f"""
import json
from opentelemetry import trace
from stackwatch.sdk._config import SDKConfig
from stackwatch.sdk import tracing

config = SDKConfig(service="restarted", server_url={receiver.url!r}, token="t")
provider = tracing.setup_tracing(config)
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("before"):
    pass
tracing.shutdown_tracing(5000)
with tracer.start_as_current_span("while-stopped"):
    pass
tracing.force_flush(5000)
again = tracing.setup_tracing(config)
with tracer.start_as_current_span("after"):
    pass
tracing.force_flush(5000)
print(json.dumps({{"same": again is provider}}))
""",
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        names = [s["name"] for s in receiver.spans()]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True}
    assert names == ["before", "after"]


def test_fastapi_requests_get_one_server_span_that_continues_the_callers_trace(tmp_path: Path) -> None:
    """One server span per request (FastAPI opens its own natively; the SDK's middleware then
    adds none): the caller's traceparent is its parent, the route template names it, a 500 marks
    it as an error with the exception recorded, and the app's own spans belong to it."""
    result = run_script(
        """
import json
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import stackwatch.sdk as sdk

app = FastAPI()

@app.get("/api/leads/{lead_id}")
async def lead(lead_id: int):
    with trace.get_tracer("app").start_as_current_span("load lead"):
        return {"id": lead_id}

@app.post("/api/payments")
async def pay():
    raise RuntimeError("card declined")

sdk.init(app, service="crm", environment="test", version="1")
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
with TestClient(app, raise_server_exceptions=False) as client:
    assert client.get("/api/leads/7", headers={"traceparent": parent}).status_code == 200
    assert client.post("/api/payments").status_code == 500
out = []
for s in memory.get_finished_spans():
    out.append({"name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"),
                "parent": format(s.parent.span_id, "016x") if s.parent else None,
                "span_id": format(s.context.span_id, "016x"),
                "attributes": dict(s.attributes or {}), "status": s.status.status_code.name,
                "events": [e.name for e in s.events]})
print(json.dumps(out))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    finished = json.loads(result.stdout.strip().splitlines()[-1])
    # FastAPI adds spans of its own (fastapi.endpoint...) under whatever span is current.
    assert sorted(s["name"] for s in finished if s["kind"] == "SERVER") == [
        "GET /api/leads/{lead_id}", "POST /api/payments"]
    spans = {s["name"]: s for s in finished}
    server = spans["GET /api/leads/{lead_id}"]
    assert {s["trace_id"] for s in finished if s["name"] == "load lead"} == {server["trace_id"]}
    assert server["kind"] == "SERVER" and server["parent"] == "b7ad6b7169203331"
    assert server["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert server["attributes"]["http.route"] == "/api/leads/{lead_id}"
    assert server["attributes"]["http.response.status_code"] == 200
    assert spans["load lead"]["parent"] in {s["span_id"] for s in finished if s["trace_id"] == server["trace_id"]}
    failed = spans["POST /api/payments"]
    assert failed["status"] == "ERROR" and "exception" in failed["events"]
    assert failed["attributes"]["http.response.status_code"] == 500


def test_add_span_exporter_gets_every_request_span_of_a_flask_app(tmp_path: Path) -> None:
    """docs/sdk.md's add_span_exporter, end to end: init(app) as users call it, a second exporter,
    requests with and without a caller's traceparent, flush(); the spans carry what the docs say."""
    result = run_script(
        """
import json
import flask
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import stackwatch.sdk
from stackwatch.sdk.tracing import add_span_exporter

app = flask.Flask("leads")

@app.get("/api/leads/<int:lead_id>")
def lead(lead_id):
    trace.get_current_span().set_attribute("lead.id", lead_id)
    with trace.get_tracer("app").start_as_current_span("load lead"):
        return {"id": lead_id}

@app.post("/api/payments")
def pay():
    return {"error": "declined"}, 502

app = stackwatch.sdk.init(app, service="crm", environment="test", version="1")
memory = InMemorySpanExporter()
assert add_span_exporter(memory)
client = app.test_client()
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
for i in range(300):
    assert client.get(f"/api/leads/{i}", headers={"traceparent": parent} if i == 0 else {}).status_code == 200
assert client.post("/api/payments", headers={"User-Agent": "curl/8.5"}).status_code == 502
assert stackwatch.sdk.flush(5.0)
out = [{"name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"),
        "parent": format(s.parent.span_id, "016x") if s.parent else None,
        "span_id": format(s.context.span_id, "016x"), "attributes": dict(s.attributes or {}),
        "status": s.status.status_code.name, "service": s.resource.attributes["service.name"]}
       for s in memory.get_finished_spans()]
print(json.dumps(out))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    spans = json.loads(result.stdout.strip().splitlines()[-1])
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert len(servers) == 301 and len(spans) == 601  # every request span and each GET's child: none dropped
    first = next(s for s in servers if s["attributes"]["lead.id"] == 0)
    assert first["name"] == "GET /api/leads/{lead_id}" and first["service"] == "crm"
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and first["parent"] == "b7ad6b7169203331"
    assert first["attributes"] == {
        "http.request.method": "GET", "url.path": "/api/leads/0", "url.scheme": "http",
        "user_agent.original": first["attributes"]["user_agent.original"], "lead.id": 0,
        "http.route": "/api/leads/{lead_id}", "http.response.status_code": 200}
    child = next(s for s in spans if s["name"] == "load lead" and s["trace_id"] == first["trace_id"])
    assert child["parent"] == first["span_id"]
    assert len({s["trace_id"] for s in servers}) == 301  # a new trace for each request without a traceparent
    failed = next(s for s in servers if s["name"] == "POST /api/payments")
    assert failed["status"] == "ERROR" and failed["attributes"]["http.response.status_code"] == 502
    assert failed["attributes"]["user_agent.original"] == "curl/8.5"


def test_the_slow_request_warning_carries_its_requests_trace(tmp_path: Path) -> None:
    """The warning is the line an on-call opens the slow trace from: it is logged while the
    request's span is still current (it was logged after, with no trace id)."""
    result = run_script(
        FLASK_APP.replace('SDKConfig(service="leads-api")', 'SDKConfig(service="leads-api", slow_request_seconds=0.05)')
        + """
import time

class SpanAtEmit(logging.Handler):
    def emit(self, record):
        ctx = trace.get_current_span().get_span_context()
        seen["warning_trace_id"] = format(ctx.trace_id, "032x") if ctx.is_valid else None

@app.get("/slow")
def slow():
    seen["trace_id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
    time.sleep(0.1)
    return "ok"

logging.getLogger("stackwatch.sdk.requests").addHandler(SpanAtEmit())
tracing.setup_tracing(SDKConfig(service="s"))
traced(app)
with app.test_client() as client:
    assert client.get("/slow").status_code == 200
print(json.dumps(seen))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["warning_trace_id"] == out["trace_id"]


def test_readiness_checks_make_no_traces_and_no_query_metrics(tmp_path: Path) -> None:
    """A probe's database check is the probe's work: a `SELECT 1` every 10 s must not become a
    root trace each time (filling trace search, skewing the service's latency), nor count in
    the app's query metrics. The app's own queries still do both."""
    result = run_script(
        f"""
import json
import flask
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text
import stackwatch.sdk as sdk
from stackwatch.sdk.integrations.sqlalchemy import instrument_engine

app = flask.Flask("probe")
engine = create_engine("sqlite:///{tmp_path / 'app.db'}")

@app.get("/items")
def items():
    with engine.connect() as c:
        return str(c.execute(text("SELECT 41 + 1")).scalar())

app = sdk.init(app, service="probe-app", environment="test", version="1", health_cache_seconds=0)
instrument_engine(engine)
sdk.add_check("database", engine)
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
client = app.test_client()
for _ in range(3):
    assert client.get("/health/ready").status_code == 200
probe_spans = [s.name for s in memory.get_finished_spans()]
assert client.get("/items").data == b"42"
metrics = client.get("/metrics").data.decode()
print(json.dumps({{"probe": probe_spans, "all": [s.name for s in memory.get_finished_spans()],
                   "selects": [l for l in metrics.splitlines() if l.startswith("db_queries_total")]}}))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["probe"] == []
    assert any("SELECT" in name for name in out["all"]), out["all"]  # the app's query is traced
    assert out["selects"] == ['db_queries_total{operation="SELECT"} 1.0'], out["selects"]


def test_a_streamed_flask_response_is_one_request_to_its_last_chunk(tmp_path: Path) -> None:
    """A CSV export streamed by a real WSGI server (werkzeug's): the request's span and metrics
    cover the whole stream, lines logged while it streams carry its trace, and an exception
    half-way through the stream is the request's error. An exception Flask turns into its 500
    page is on the request's span too."""
    result = run_script(
        """
import json, logging, threading, time
import flask, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.serving import make_server
import stackwatch.sdk
from stackwatch.sdk.logging import get_context
from stackwatch.sdk.tracing import add_span_exporter

app = flask.Flask("exports")
log = logging.getLogger("exports")
seen = []

class Capture(logging.Handler):
    def emit(self, record):
        span = trace.get_current_span().get_span_context()
        seen.append({"message": record.getMessage(), "request_id": get_context().get("request_id"),
                     "trace_id": format(span.trace_id, "032x") if span.is_valid else None})

log.addHandler(Capture())
log.setLevel(logging.INFO)

@app.get("/export")
def export():
    def rows():
        for i in range(3):
            time.sleep(0.1)
            log.info("row %d", i)
            yield f"row {i}\\n"
    return flask.Response(rows(), mimetype="text/csv")

@app.get("/crash")
def crash():
    raise ValueError("bad lead 7")  # Flask answers its 500 page itself

@app.get("/export-broken")
def broken():
    def rows():
        yield "row 0\\n"
        raise RuntimeError("export broke mid-stream")
    return flask.Response(rows(), mimetype="text/csv")

app = stackwatch.sdk.init(app, service="exports", environment="test", version="1")
memory = InMemorySpanExporter()
assert add_span_exporter(memory)
server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"
with httpx.Client() as client:
    assert client.get(url + "/export").text == "row 0\\nrow 1\\nrow 2\\n"
    assert client.get(url + "/crash").status_code == 500
    try:
        client.get(url + "/export-broken")
    except httpx.HTTPError:
        pass  # the server cuts the connection: the body was incomplete
    metrics = client.get(url + "/metrics").text
server.shutdown()
assert stackwatch.sdk.flush(5.0)
spans = {s.name: {"ms": (s.end_time - s.start_time) / 1e6, "trace_id": format(s.context.trace_id, "032x"),
                  "status": s.status.status_code.name, "events": [e.name for e in s.events],
                  "description": s.status.description}
         for s in memory.get_finished_spans()}
print(json.dumps({"spans": spans, "logs": seen,
                  "metrics": [l for l in metrics.splitlines() if l.startswith("http_requests_total")
                              or l.startswith("http_request_duration_seconds_sum")]}))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    export, broken = out["spans"]["GET /export"], out["spans"]["GET /export-broken"]
    assert export["ms"] >= 300 and export["status"] == "UNSET"
    rows = [line for line in out["logs"] if line["message"].startswith("row")]
    assert len(rows) == 3 and {line["trace_id"] for line in rows} == {export["trace_id"]}
    assert all(line["request_id"] for line in rows)
    assert broken["status"] == "ERROR" and "exception" in broken["events"]
    crash = out["spans"]["GET /crash"]  # handled by Flask, still on the span: what failed, not only that
    assert crash["status"] == "ERROR" and crash["events"] == ["exception"]
    assert crash["description"] == "ValueError: bad lead 7"
    series = {line.split(" ")[0]: float(line.split(" ")[1]) for line in out["metrics"]}
    assert series['http_requests_total{method="GET",route="/export-broken",status_class="5xx"}'] == 1
    assert series['http_requests_total{method="GET",route="/export",status_class="2xx"}'] == 1
    assert series['http_request_duration_seconds_sum{method="GET",route="/export"}'] >= 0.3
