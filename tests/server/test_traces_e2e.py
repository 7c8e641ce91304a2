"""Traces end to end: the real OpenTelemetry SDK exports to a real server over OTLP/HTTP.

Two services (``frontend`` calling ``checkout``) each have their own TracerProvider, resource
and exporter, exactly as two processes would; the trace context crosses from one to the other
the way a propagated ``traceparent`` header carries it. Log lines emitted through the SDK's
logging bridge inside the spans carry the trace id and must come back joined in the trace.
Then: search, span-derived RED metrics through the real PromQL endpoint, the service map,
OTLP/JSON with gzip and partial success, and the 4xx answers.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from serverproc import INGEST_TOKEN, ServerProcess

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "otlp"
MS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A 1 s flush makes the RED series as dense as a 1 s scrape, so rate() has samples soon.
    env = {"STACKWATCH_TRACES_SPANMETRICS_FLUSH_S": "1", "STACKWATCH_BATCH_MAX_DELAY_MS": "100"}
    srv = ServerProcess(tmp_path_factory.mktemp("traces") / "data", env=env).start()
    yield srv
    srv.stop()


def provider(srv: ServerProcess, service: str) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    exporter = OTLPSpanExporter(
        endpoint=srv.url + "/v1/traces", headers={"Authorization": f"Bearer {INGEST_TOKEN}"}
    )
    tp.add_span_processor(BatchSpanProcessor(exporter))
    return tp


def wait_for(fetch: Any, ready: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = fetch()
        if ready(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout}s: {value!r}")


@pytest.fixture(scope="module")
def checkout_trace(server: ServerProcess) -> dict[str, Any]:
    """Send one two-service trace and two log lines inside it; returns ids and timings."""
    frontend = provider(server, "frontend")
    checkout = provider(server, "checkout")
    log_provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    log_provider.add_log_record_processor(
        SimpleLogRecordProcessor(
            OTLPLogExporter(endpoint=server.url + "/v1/logs", headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        )
    )
    logger = logging.getLogger("checkout.payments.e2e")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = LoggingHandler(level=logging.INFO, logger_provider=log_provider)
    logger.addHandler(handler)

    t0 = time.time_ns() - 2_000 * MS
    ft = frontend.get_tracer("frontend.web", "1.2.0")
    ct = checkout.get_tracer("checkout.api")
    root = ft.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=t0,
                         attributes={"http.route": "/checkout", "http.status_code": 200, "user.vip": True})
    root_ctx = trace.set_span_in_context(root)
    call = ft.start_span("POST checkout/pay", kind=SpanKind.CLIENT, context=root_ctx, start_time=t0 + 10 * MS)
    # What a propagated traceparent header gives the checkout service: the caller's span.
    remote_ctx = trace.set_span_in_context(call)
    pay = ct.start_span("POST /pay", kind=SpanKind.SERVER, context=remote_ctx, start_time=t0 + 12 * MS,
                        attributes={"http.route": "/pay", "payment.amount": 42.5})
    pay_ctx = trace.set_span_in_context(pay)
    db = ct.start_span("SELECT orders", kind=SpanKind.CLIENT, context=pay_ctx, start_time=t0 + 15 * MS,
                       attributes={"db.system": "postgresql", "db.statement": "SELECT * FROM orders WHERE id = $1"})
    db.end(end_time=t0 + 25 * MS)
    stripe = ct.start_span("stripe charge", kind=SpanKind.CLIENT, context=pay_ctx, start_time=t0 + 30 * MS,
                           attributes={"peer.service": "stripe", "http.status_code": 402})
    stripe.add_event("retry", {"attempt": 2}, timestamp=t0 + 60 * MS)
    stripe.set_status(Status(StatusCode.ERROR, "card declined"))
    with trace.use_span(stripe, end_on_exit=False):
        logger.warning("card declined by stripe for order %s", 1234)
    stripe.end(end_time=t0 + 180 * MS)
    with trace.use_span(pay, end_on_exit=False):
        logger.info("payment failed, order kept pending")
    pay.set_status(Status(StatusCode.ERROR))
    pay.end(end_time=t0 + 190 * MS)
    call.end(end_time=t0 + 195 * MS)
    root.end(end_time=t0 + 200 * MS)
    for tp in (frontend, checkout):
        assert tp.force_flush(10_000)
        tp.shutdown()
    logger.removeHandler(handler)
    log_provider.shutdown()
    ids = {
        name: format(span.get_span_context().span_id, "016x")
        for name, span in (("root", root), ("call", call), ("pay", pay), ("db", db), ("stripe", stripe))
    }
    return {"trace_id": format(root.get_span_context().trace_id, "032x"), "ids": ids, "t0": t0}


def get_trace(server: ServerProcess, trace_id: str) -> dict[str, Any]:
    with server.client() as c:
        def fetch() -> Any:
            r = c.get(f"/api/v1/traces/{trace_id}")
            return r.json() if r.status_code == 200 else {"spans": [], "logs": []}

        return wait_for(fetch, lambda d: len(d["spans"]) == 5 and len(d["logs"]) == 2)  # type: ignore[no-any-return]


def test_trace_joins_spans_of_two_services_and_their_logs(server: ServerProcess, checkout_trace: dict[str, Any]) -> None:
    data = get_trace(server, checkout_trace["trace_id"])
    assert set(data) >= {"spans", "logs", "errors"}
    ids = checkout_trace["ids"]
    spans = data["spans"]
    # Waterfall order: depth-first, children by start time.
    assert [s["span_id"] for s in spans] == [ids["root"], ids["call"], ids["pay"], ids["db"], ids["stripe"]]
    assert [s["depth"] for s in spans] == [0, 1, 2, 3, 3]
    by_id = {s["span_id"]: s for s in spans}
    root, pay, db, stripe = by_id[ids["root"]], by_id[ids["pay"]], by_id[ids["db"]], by_id[ids["stripe"]]
    assert root["parent_span_id"] == "" and root["service"] == "frontend" and root["name"] == "GET /checkout"
    assert root["kind"] == "server" and root["duration_ms"] == pytest.approx(200.0)
    assert root["attributes"] == {"http.route": "/checkout", "http.status_code": 200, "user.vip": True}
    assert root["resource"]["service.name"] == "frontend"
    assert root["scope_name"] == "frontend.web" and root["scope_version"] == "1.2.0"
    assert pay["parent_span_id"] == ids["call"] and pay["service"] == "checkout"
    assert pay["offset_ms"] == pytest.approx(12.0) and pay["status"] == "error"
    assert pay["attributes"]["payment.amount"] == 42.5
    assert db["offset_ms"] == pytest.approx(15.0) and db["duration_ms"] == pytest.approx(10.0)
    assert stripe["status"] == "error" and stripe["status_message"] == "card declined"
    assert stripe["events"][0]["name"] == "retry" and stripe["events"][0]["attributes"] == {"attempt": 2}
    assert stripe["events"][0]["offset_ms"] == pytest.approx(60.0)
    assert stripe["start"].endswith("Z")
    # The slow dependency: stripe holds 150 of the 200 ms by itself.
    assert stripe["self_time_ms"] == pytest.approx(150.0)
    assert pay["self_time_ms"] == pytest.approx(178.0 - 10.0 - 150.0)
    top = data["trace"]["breakdown"][0]
    assert (top["service"], top["name"]) == ("checkout", "stripe charge")
    assert top["share"] == pytest.approx(0.75)
    assert data["trace"]["span_count"] == 5 and data["trace"]["error_count"] == 2
    assert data["trace"]["services"] == ["checkout", "frontend"]
    # Both log lines, oldest first, with the span they were logged in.
    messages = [(h["message"], h["span_id"]) for h in data["logs"]]
    assert messages == [
        ("card declined by stripe for order 1234", ids["stripe"]),
        ("payment failed, order kept pending", ids["pay"]),
    ]
    assert all(h["trace_id"] == checkout_trace["trace_id"] for h in data["logs"])
    assert data["errors"] == []


def test_trace_id_is_accepted_as_users_paste_it(server: ServerProcess, checkout_trace: dict[str, Any]) -> None:
    get_trace(server, checkout_trace["trace_id"])
    tid = checkout_trace["trace_id"].upper()
    with server.client() as c:
        r = c.get(f"/api/v1/traces/{tid[:8]}-{tid[8:12]}-{tid[12:16]}-{tid[16:20]}-{tid[20:]}")
    assert r.status_code == 200 and len(r.json()["spans"]) == 5


def test_search_by_service_operation_duration_status_and_attributes(
    server: ServerProcess, checkout_trace: dict[str, Any]
) -> None:
    get_trace(server, checkout_trace["trace_id"])
    tid = checkout_trace["trace_id"]

    def found(**params: str) -> list[str]:
        with server.client() as c:
            r = c.get("/api/v1/traces", params={"start": "-1h", **params})
        assert r.status_code == 200, r.text
        return [t["trace_id"] for t in r.json()["traces"]]

    assert tid in found()
    assert tid in found(service="checkout", status="error")
    assert tid in found(operation="stripe charge", min_duration="100ms")
    assert tid not in found(operation="stripe charge", min_duration="151")  # bare number: ms
    assert tid in found(q="http.status_code>=400 peer.service=stripe")
    assert tid in found(q='db.statement="SELECT * FROM orders WHERE id = $1"')
    assert tid in found(q="user.vip=true")
    assert tid in found(q="declined")  # a word of a status message
    assert tid not in found(q="http.status_code>=500")
    assert tid not in found(service="frontend", status="error")
    with server.client() as c:
        summary = next(t for t in c.get("/api/v1/traces", params={"service": "checkout"}).json()["traces"]
                       if t["trace_id"] == tid)
    assert summary["root_service"] == "frontend" and summary["root_name"] == "GET /checkout"
    assert summary["span_count"] == 5 and summary["error_count"] == 2
    assert summary["duration_ms"] == pytest.approx(200.0)


def test_service_map_has_the_cross_service_edge(server: ServerProcess, checkout_trace: dict[str, Any]) -> None:
    get_trace(server, checkout_trace["trace_id"])
    with server.client() as c:
        r = c.get("/api/v1/services/map", params={"start": "-1h"})
    assert r.status_code == 200
    data = r.json()
    edges = {(e["source"], e["target"]): e for e in data["edges"]}
    edge = edges[("frontend", "checkout")]
    assert edge["calls"] >= 1 and edge["errors"] >= 1
    assert edge["p50_ms"] == pytest.approx(178.0) and edge["p95_ms"] == pytest.approx(178.0)
    nodes = {n["service"]: n for n in data["nodes"]}
    assert nodes["frontend"]["calls"] >= 1 and nodes["checkout"]["calls"] >= 1


def promql(server: ServerProcess, query: str) -> list[dict[str, Any]]:
    with server.client() as c:
        r = c.get("/api/v1/query", params={"query": query})
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def test_red_metrics_from_spans_answer_promql(server: ServerProcess, checkout_trace: dict[str, Any]) -> None:
    get_trace(server, checkout_trace["trace_id"])
    calls = wait_for(
        lambda: promql(server, 'traces_spanmetrics_calls_total{service="checkout", span_name="stripe charge"}'),
        lambda result: len(result) == 1,
    )
    assert calls[0]["metric"]["span_kind"] == "SPAN_KIND_CLIENT"
    assert calls[0]["metric"]["status_code"] == "STATUS_CODE_ERROR"
    assert float(calls[0]["value"][1]) == 1.0
    # rate() and histogram_quantile() work over them like over any scraped series.
    errors = promql(server, 'sum by (service) (increase(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR"}[5m]))')
    by_service = {r["metric"]["service"]: float(r["value"][1]) for r in errors}
    assert by_service["checkout"] > 0 and "frontend" not in by_service
    p95 = promql(server, 'histogram_quantile(0.95, sum by (le) (rate(traces_spanmetrics_duration_seconds_bucket{span_name="stripe charge"}[5m])))')
    assert 0.1 < float(p95[0]["value"][1]) <= 0.2  # 150 ms falls in the (0.1, 0.2] bucket
    count = promql(server, 'traces_spanmetrics_duration_seconds_count{span_name="GET /checkout"}')
    assert float(count[0]["value"][1]) == 1.0
    total = promql(server, 'traces_spanmetrics_duration_seconds_sum{span_name="GET /checkout"}')
    assert float(total[0]["value"][1]) == pytest.approx(0.2)


def otlp_json_example(trace_id: str) -> dict[str, Any]:
    """The specification's example trace, moved to now and given a trace id of its own."""
    doc = orjson.loads((TESTDATA / "trace.json").read_bytes())
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    now = time.time_ns()
    span["traceId"] = trace_id
    span["startTimeUnixNano"] = str(now - 50 * MS)
    span["endTimeUnixNano"] = str(now)
    return doc


def test_otlp_json_with_gzip_and_partial_success(server: ServerProcess) -> None:
    trace_id = "5B8EFFF798038103D269B633813FC60D"
    doc = otlp_json_example(trace_id)
    good = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"].append({**good, "spanId": "00000000000000"})
    with server.ingest_client() as c:
        r = c.post("/v1/traces", content=gzip.compress(orjson.dumps(doc)),
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "spanId" in partial["errorMessage"]
    with server.client() as c:
        data = wait_for(lambda: c.get(f"/api/v1/traces/{trace_id.lower()}").json(), lambda d: "spans" in d)
    [span] = data["spans"]
    assert span["name"] == "I'm a server span" and span["service"] == "my.service"
    # The parent never arrived: shown as a root, marked as an orphan.
    assert span["orphan"] is True and span["depth"] == 0 and span["parent_span_id"] == "eee19b7ec3c1b173"
    assert span["attributes"] == {"my.scope.attribute": "some scope attribute", "my.span.attr": "some value"}


def test_a_trace_with_more_log_lines_than_shown_says_so(server: ServerProcess) -> None:
    from stackwatch.server.api.traces import MAX_TRACE_LOGS

    trace_id = "7a1f0c2b9d3e4f5a6b7c8d9e0f1a2b3c"
    doc = otlp_json_example(trace_id)
    start = int(doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"])
    n = MAX_TRACE_LOGS + 5
    lines = b"".join(orjson.dumps({"timestamp": start + i * 10_000, "trace_id": trace_id, "service": "bulk",
                                   "message": f"step {i}"}) + b"\n" for i in range(n))
    with server.ingest_client() as c:
        assert c.post("/v1/traces", json=doc).status_code == 200
        assert c.post("/api/v1/logs", content=lines).status_code in (200, 202)
    with server.client() as c:
        data = wait_for(lambda: c.get(f"/api/v1/traces/{trace_id}").json(), lambda d: d.get("logs_total") == n)
    logs = data["logs"]
    assert len(logs) == MAX_TRACE_LOGS and data["logs_total"] == n
    assert logs[-1]["message"] == f"step {n - 1}" and logs[0]["message"] == "step 5"  # the newest, oldest first
    assert data["logs_window"]["start"] < logs[0]["timestamp"] < data["logs_window"]["end"]


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/v1/traces/0123", {}, 400, "invalid trace id"),
        ("/api/v1/traces/" + "ab" * 16, {}, 404, "not found"),
        ("/api/v1/traces", {"limit": "0"}, 400, "limit"),
        ("/api/v1/traces", {"status": "broken"}, 400, "status must be one of"),
        ("/api/v1/traces", {"min_duration": "fast"}, 400, "invalid duration"),
        ("/api/v1/traces", {"q": 'http.route="/x'}, 400, "invalid q"),
        ("/api/v1/traces", {"q": "http.status_code>abc"}, 400, "needs a number"),
        ("/api/v1/traces", {"start": "yesterday"}, 400, "invalid time"),
        ("/api/v1/services/map", {"start": "now", "end": "-1h"}, 400, "start must be before end"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    server: ServerProcess, path: str, params: dict[str, str], status: int, message: str
) -> None:
    with server.client() as c:
        r = c.get(path, params=params)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_ingest_and_reads_need_their_tokens(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/v1/traces", content=b"", headers={"Content-Type": "application/x-protobuf"}).status_code == 401
        assert c.get("/api/v1/traces").status_code == 401
        assert c.get("/api/v1/services/map").status_code == 401
    with server.ingest_client() as c:
        # An ingest token does not read.
        assert c.get("/api/v1/traces").status_code == 401
        r = c.post("/v1/traces", content=b"\xff\xff", headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 400 and "invalid OTLP protobuf" in r.json()["error"]
        r = c.post("/v1/traces", content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415


def test_an_error_sent_with_sentry_sdk_inside_the_trace_is_joined(
    server: ServerProcess, checkout_trace: dict[str, Any]
) -> None:
    """The checkout service also reports errors with sentry_sdk; the propagated trace context
    (``sentry-trace``, as a Sentry-instrumented service receives it next to ``traceparent``)
    puts the error event in the same trace."""
    import sentry_sdk

    get_trace(server, checkout_trace["trace_id"])
    with server.client() as c:
        projects = c.get("/api/v1/projects").json()["projects"]
    dsn = next(p for p in projects if p["slug"] == "default")["dsn"]
    sentry_sdk.init(dsn=dsn, default_integrations=False, traces_sample_rate=None)
    try:
        with sentry_sdk.isolation_scope():
            sentry_sdk.continue_trace({"sentry-trace": f"{checkout_trace['trace_id']}-{checkout_trace['ids']['stripe']}-1"})
            try:
                raise RuntimeError("stripe said card_declined")
            except RuntimeError as exc:
                sentry_sdk.capture_exception(exc)
        sentry_sdk.flush(10)
    finally:
        sentry_sdk.get_client().close()
    with server.client() as c:
        data = wait_for(lambda: c.get(f"/api/v1/traces/{checkout_trace['trace_id']}").json(), lambda d: d["errors"])
    [error] = data["errors"]
    assert "stripe said card_declined" in error["title"] + error["message"]
    assert error["level"] == "error" and error["issue_id"]
