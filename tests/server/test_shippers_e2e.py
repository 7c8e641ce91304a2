"""Real clients ship logs to the real server: OpenTelemetry's Python SDK, rsyslog, and the
Elasticsearch handshake and bulk calls that Filebeat/Vector make."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serverproc import INGEST_TOKEN, ServerProcess, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("shippers") / "data").start()
    yield srv
    srv.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_opentelemetry_sdk_logging_handler(server: ServerProcess) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({"service.name": "checkout", "host.name": "web-7"})
    provider = LoggerProvider(resource=resource)
    exporter = OTLPLogExporter(endpoint=f"{server.url}/v1/logs",
                               headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger = logging.getLogger("checkout.payments")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    tracer = TracerProvider(resource=resource).get_tracer("test")
    try:
        with tracer.start_as_current_span("charge") as span:
            logger.error("Payment processing failed", extra={"error_code": "card_declined", "amount": 42.5})
            trace_id = format(span.get_span_context().trace_id, "032x")
        logger.info("otel plain line")
        provider.force_flush()
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    assert server.wait_for_count("service:checkout", 2) == 2
    with server.client() as c:
        hits = c.get("/api/v1/logs/search", params={
            "q": 'service:checkout AND level:ERROR AND error_code:card_declined',
            "start": "-1h"}).json()["hits"]
        assert len(hits) == 1
        hit = hits[0]
        assert hit["message"] == "Payment processing failed"
        assert hit["trace_id"] == trace_id
        assert hit["host"] == "web-7"
        assert hit["logger"] == "checkout.payments"
        assert hit["attributes"]["amount"] == 42.5
        assert hit["source"].endswith(".py:" + hit["source"].rsplit(":", 1)[1])
        by_trace = c.get("/api/v1/logs/search", params={"q": f'trace_id:"{trace_id}"', "start": "-1h"}).json()
        assert by_trace["total"] == 1


def test_collector_filelog_lines_are_parsed(server: ServerProcess) -> None:
    """The OpenTelemetry Collector's filelog receiver, without parsing operators, sends each
    line of a file as a string body with no severity: the line's own fields must be read."""
    now = time.time_ns()
    lines = [
        json.dumps({
            "timestamp": "2025-10-06T12:00:00.123Z", "level": "ERROR", "service": "payment",
            "trace_id": "f1e2d3c4b5a6", "message": "Payment processing failed",
            "context": {"error_code": "card_declined", "amount": 42.5},
        }),
        '203.0.113.9 - - [06/Oct/2025:12:00:01 +0000] "POST /api/pay HTTP/1.1" 502 17 "-" "curl/8.5"',
    ]
    records = [{
        "observedTimeUnixNano": str(now),
        "body": {"stringValue": line},
        "attributes": [{"key": "log.file.name", "value": {"stringValue": "app.log"}}],
    } for line in lines]
    body = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "web-2"}}]},
        "scopeLogs": [{"scope": {}, "logRecords": records}],
    }]}
    with server.client() as c:
        r = c.post("/v1/logs", json=body, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert r.status_code == 200, r.text
    query = 'service:payment AND level:ERROR AND message:"Payment processing failed" AND context.error_code:*'
    assert server.wait_for_count(query, 1, start="2025-10-06T00:00:00Z") == 1
    assert server.wait_for_count("http.status_code:502 AND log_type:web", 1, start="2025-10-06T00:00:00Z") == 1
    with server.client() as c:
        hit = c.get("/api/v1/logs/search", params={"q": query, "start": "2025-10-06T00:00:00Z"}).json()["hits"][0]
    assert hit["timestamp"].startswith("2025-10-06T12:00:00.123")
    assert hit["trace_id"] == "f1e2d3c4b5a6"
    assert hit["host"] == "web-2"
    assert hit["attributes"]["log.file.name"] == "app.log"
    assert hit["attributes"]["context.amount"] == 42.5


def test_elasticsearch_handshake_and_bulk_with_a_bad_item(server: ServerProcess) -> None:
    auth = {"Authorization": basic("filebeat", INGEST_TOKEN)}
    with httpx.Client(base_url=server.url, headers=auth) as c:
        root = c.get("/", headers={"Accept": "application/json"})
        assert root.status_code == 200
        assert root.json()["version"]["number"].startswith("8.")
        assert root.headers["X-Elastic-Product"] == "Elasticsearch"
        assert c.get("/_license").json()["license"]["status"] == "active"
        assert c.put("/_index_template/filebeat-8.11.0", json={"index_patterns": ["x"]}).json() == {
            "acknowledged": True}
        body = (
            b'{"create":{"_index":"filebeat-8.11.0"}}\n'
            b'{"@timestamp":"2026-01-01T10:00:00.000Z","message":"es line one","log":{"level":"error"},'
            b'"host":{"name":"web-3"},"service":{"name":"nginx"},"marker":"es-1"}\n'
            b'{"create":{"_index":"filebeat-8.11.0"}}\n'
            b'{"message": not json}\n'
            b'{"index":{"_index":"filebeat-8.11.0"}}\n'
            b'{"@timestamp":"2026-01-01T10:00:01Z","message":"es line two","marker":"es-2"}\n'
        )
        r = c.post("/_bulk", content=body, headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200
        out = r.json()
        assert out["errors"] is True
        statuses = [next(iter(item.values()))["status"] for item in out["items"]]
        assert statuses == [201, 400, 201]
        bad = c.post("/_bulk", content=body, headers={"Authorization": basic("filebeat", "wrong-token-123456")})
        assert bad.status_code == 401
        assert bad.json()["error"]["type"] == "security_exception"
    assert server.wait_for_count("marker:es-*", 2, start="2025-12-31T00:00:00Z") == 2
    with server.client() as c:
        hit = c.get("/api/v1/logs/search", params={"q": "marker:es-1", "start": "2025-12-31T00:00:00Z"}).json()
        h = hit["hits"][0]
        assert (h["message"], h["level"], h["host"], h["timestamp"]) == (
            "es line one", "ERROR", "web-3", "2026-01-01T10:00:00.000000000Z")


@pytest.mark.skipif(shutil.which("rsyslogd") is None, reason="rsyslog is installed by scripts/system-deps.sh")
def test_rsyslog_omelasticsearch_ships_to_bulk(server: ServerProcess, tmp_path: Path) -> None:
    tcp_port = free_port()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{tmp_path}")
module(load="imtcp")
module(load="omelasticsearch")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}")
template(name="swjson" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="service" name="programname" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
action(type="omelasticsearch" server="127.0.0.1" serverport="{server.port}" usehttps="off"
       searchIndex="syslog" template="swjson" bulkmode="on" uid="rsyslog" pwd="{INGEST_TOKEN}"
       errorfile="{tmp_path}/es-errors.json" queue.type="linkedlist" queue.dequeueBatchSize="100"
       action.resumeRetryCount="-1")
""")
    check = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslog.pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", tcp_port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with sock:
            for i in range(5):
                sock.sendall(f"<11>1 2026-01-01T12:00:0{i}Z db-1 postgres 99 - - rsyslog line {i}\n".encode())
        assert server.wait_for_count('message:"rsyslog line"', 5, start="2025-12-31T00:00:00Z", timeout=30) == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with server.client() as c:
        hits = c.get("/api/v1/logs/search", params={"q": 'message:"rsyslog line 3"',
                                                    "start": "2025-12-31T00:00:00Z"}).json()["hits"]
    assert len(hits) == 1
    assert (hits[0]["service"], hits[0]["host"], hits[0]["level"]) == ("postgres", "db-1", "ERROR")
    assert hits[0]["timestamp"] == "2026-01-01T12:00:03.000000000Z"


def test_syslog_listener_when_enabled(tmp_path: Path) -> None:
    import logging.handlers

    port = free_port()
    srv = ServerProcess(tmp_path / "data", env={
        "STACKWATCH_SYSLOG_ENABLED": "true", "STACKWATCH_SYSLOG_TCP_PORT": str(port),
        "STACKWATCH_SYSLOG_UDP_PORT": str(port)}).start()
    try:
        handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port))  # UDP, as apps default to
        handler.ident = "billing: "
        logger = logging.getLogger("syslog-e2e")
        logger.addHandler(handler)
        try:
            logger.warning("disk almost full on /var")
        finally:
            logger.removeHandler(handler)
            handler.close()
        assert srv.wait_for_count('message:"disk almost full"', 1) == 1
        with srv.client() as c:
            hit = c.get("/api/v1/logs/search", params={"q": 'message:"disk almost full"', "start": "-1h"}).json()
        h = hit["hits"][0]
        assert (h["level"], h["service"], h["log_type"]) == ("WARN", "billing", "system")
    finally:
        srv.stop()
