"""Elasticsearch ``_bulk`` decoding, ES-shaped responses, the shipper handshake, and rsyslog."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.errors import BadRequest
from stackwatch.ingest._body import read_body
from stackwatch.ingest.esbulk import (
    ES_VERSION,
    PRODUCT_HEADERS,
    BulkItem,
    build_bulk_response,
    build_document_response,
    decode_bulk,
    decode_document,
    error_response,
    handshake,
    license_info,
    root_info,
    xpack_info,
)

FILEBEAT_DOC = {
    "@timestamp": "2024-05-01T12:00:00.123Z",
    "message": "Failed password for invalid user admin from 203.0.113.9 port 52144 ssh2",
    "log": {"level": "warning", "file": {"path": "/var/log/auth.log"}, "offset": 1234},
    "host": {"name": "web-1", "hostname": "web-1", "os": {"family": "debian"}},
    "agent": {"type": "filebeat", "version": "8.11.0"},
    "ecs": {"version": "8.0.0"},
    "input": {"type": "filestream"},
}


def ndjson(*values: Any) -> bytes:
    return b"".join(orjson.dumps(value) + b"\n" for value in values)


# --------------------------------------------------------------------------- decoding


def test_filebeat_create_into_a_data_stream() -> None:
    second = {**FILEBEAT_DOC, "message": "Accepted publickey for deploy"}
    body = ndjson(
        {"create": {"_index": "filebeat-8.11.0"}},
        FILEBEAT_DOC,
        {"create": {"_index": "filebeat-8.11.0"}},
        second,
    )
    request = decode_bulk(body, None)
    assert [item.action for item in request.items] == ["create", "create"]
    assert [item.line for item in request.items] == [1, 3]
    assert not request.errors
    first_event, second_event = request.events
    # The source is kept as sent (nested ECS objects and all), plus the index under "es.index".
    assert first_event == {**FILEBEAT_DOC, "es.index": "filebeat-8.11.0"}
    assert second_event["message"] == "Accepted publickey for deploy"


def test_rsyslog_bulk_output_as_rsyslog_really_sends_it() -> None:
    # Captured from rsyslogd 8.2302 omelasticsearch (bulkmode="on", jsonf template): note the
    # space after "_index":, the legacy "_type", and the blank line ending the request.
    body = (
        b'{"index":{"_index": "rsyslog-test","_type":"events"}}\n'
        b'{"@timestamp":"2024-05-01T12:10:57.945339+00:00", "host":"vm", "severity":"err", '
        b'"facility":"auth", "tag":"sshd[812]:", "message":"quote \\" and \\\\ backslash"}\n\n'
    )
    [item] = decode_bulk(body).items
    assert item.action == "index" and item.index == "rsyslog-test" and item.error is None
    assert item.source == {
        "@timestamp": "2024-05-01T12:10:57.945339+00:00",
        "host": "vm",
        "severity": "err",
        "facility": "auth",
        "tag": "sshd[812]:",
        "message": 'quote " and \\ backslash',
        "es.index": "rsyslog-test",
    }


def test_default_index_from_the_url_and_ids() -> None:
    body = ndjson({"index": {"_id": "abc"}}, {"m": 1}, {"index": {"_index": "other", "_id": 7}}, {"m": 2})
    first, second = decode_bulk(body, "vector-2024.05.01").items
    assert (first.index, first.id) == ("vector-2024.05.01", "abc")
    assert (second.index, second.id) == ("other", "7")


def test_bad_items_are_reported_and_good_ones_kept() -> None:
    body = (
        ndjson({"index": {"_index": "logs"}}, {"message": "one"})
        + b'{"index":{"_index":"logs"}}\n{"message": "broken\n'
        + ndjson({"create": {"_index": "logs"}}, ["not", "an", "object"])
        + ndjson({"index": {}}, {"message": "no index anywhere"})
        + ndjson({"upsert_all": {"_index": "logs"}}, {"message": "unknown action"})
        + ndjson({"index": {"_index": "logs"}}, {"message": "five"})
    )
    request = decode_bulk(body, None)
    errors = [(item.action, item.status, item.error_type) for item in request.items if item.error]
    assert errors == [
        ("index", 400, "mapper_parsing_exception"),
        ("create", 400, "mapper_parsing_exception"),
        ("index", 400, "action_request_validation_exception"),
        ("upsert_all", 400, "illegal_argument_exception"),
    ]
    assert [event["message"] for event in request.events] == ["one", "five"]
    broken = request.items[1]
    assert broken.error is not None and broken.error.startswith("line 4: failed to parse: ")
    assert request.items[3].error == "line 7: Validation Failed: 1: index is missing;"
    assert request.items[4].error == "line 9: Unknown action [upsert_all]"


def test_a_broken_action_line_does_not_swallow_the_next_action() -> None:
    body = b'{"index": nope}\n' + ndjson({"index": {"_index": "a"}}, {"n": 1})
    bad, good = decode_bulk(body).items
    assert bad.error is not None and bad.error.startswith("line 1: invalid action line")
    assert good.source == {"n": 1, "es.index": "a"}


def test_a_broken_action_line_takes_its_source_line_with_it() -> None:
    body = b'{"index": nope}\n{"n": 0}\n' + ndjson({"index": {"_index": "a"}}, {"n": 1})
    bad, good = decode_bulk(body).items
    assert bad.error is not None and good.source == {"n": 1, "es.index": "a"}


def test_missing_source_line_and_missing_final_newline() -> None:
    body = ndjson({"index": {"_index": "a"}}, {"n": 1}) + b'{"index":{"_index":"a"}}'
    good, missing = decode_bulk(body).items
    assert good.error is None
    assert missing.error == "line 3: Validation Failed: 1: source is missing;"
    assert missing.error_type == "action_request_validation_exception"
    [only] = decode_bulk(b'{"create":{"_index":"a"}}\n{"n":1}').items
    assert only.source == {"n": 1, "es.index": "a"}


def test_crlf_and_blank_lines_are_tolerated() -> None:
    body = b'\r\n{"index":{"_index":"a"}}\r\n\r\n{"n":1}\r\n\r\n'
    [item] = decode_bulk(body).items
    assert item.source == {"n": 1, "es.index": "a"}
    assert item.line == 2
    # Without blank lines the fast path takes CRLF bodies as they are.
    first, second = decode_bulk(
        b'{"index":{"_index":"a"}}\r\n{"n":1}\r\n{"index":{"_index":"b"}}\r\n{"n":2}\r\n'
    ).items
    assert (first.index, second.index, second.line) == ("a", "b", 3)
    assert second.source == {"n": 2, "es.index": "b"}


def test_delete_and_update() -> None:
    body = ndjson(
        {"delete": {"_index": "a", "_id": "1"}},
        {"update": {"_index": "a", "_id": "2"}},
        {"doc": {"message": "upserted"}, "doc_as_upsert": True},
        {"update": {"_index": "a", "_id": "3"}},
        {"doc": {"message": "patch"}},
        {"update": {"_index": "a", "_id": "4"}},
        {"script": {"source": "ctx._source.n++"}, "upsert": {"message": "fresh", "n": 1}},
    )
    delete, upsert, patch, scripted = decode_bulk(body).items
    assert (delete.status, delete.error, delete.source) == (404, None, None)
    assert upsert.source == {"message": "upserted", "es.index": "a"}
    assert (patch.status, patch.error_type) == (404, "document_missing_exception")
    assert scripted.source == {"message": "fresh", "n": 1, "es.index": "a"}


@pytest.mark.parametrize("body", [b"", b"\n\n", b"  \r\n"])
def test_an_empty_bulk_is_a_request_error(body: bytes) -> None:
    with pytest.raises(BadRequest, match="no requests added"):
        decode_bulk(body)


# --------------------------------------------------------------------------- responses


def test_response_has_the_exact_es_shape() -> None:
    body = (
        ndjson({"create": {"_index": "logs-app-default"}}, {"message": "ok"})
        + b'{"index":{"_index":"logs","_id":"x1"}}\n{bad json}\n'
        + ndjson({"delete": {"_index": "logs", "_id": "gone"}})
    )
    response = build_bulk_response(decode_bulk(body), took_ms=12)
    assert response["took"] == 12
    assert response["errors"] is True
    created, failed, deleted = response["items"]
    generated_id = created["create"].pop("_id")
    assert isinstance(generated_id, str) and len(generated_id) == 20
    assert created == {
        "create": {
            "_index": "logs-app-default",
            "_version": 1,
            "result": "created",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": 0,
            "_primary_term": 1,
            "status": 201,
        }
    }
    assert failed["index"]["_index"] == "logs" and failed["index"]["_id"] == "x1"
    assert failed["index"]["status"] == 400
    assert failed["index"]["error"]["type"] == "mapper_parsing_exception"
    assert failed["index"]["error"]["reason"].startswith("line 4: failed to parse")
    assert deleted["delete"]["result"] == "not_found" and deleted["delete"]["status"] == 404
    orjson.dumps(response)  # serialisable as is


def test_all_good_means_errors_false_and_unique_ids() -> None:
    body = ndjson(*[part for n in range(50) for part in ({"create": {"_index": "a"}}, {"n": n})])
    response = build_bulk_response(decode_bulk(body).items, took_ms=1)
    assert response["errors"] is False
    ids = {item["create"]["_id"] for item in response["items"]}
    assert len(ids) == 50


def test_single_document_requests() -> None:
    item = decode_document(b'{"msgnum":"00000001"}', "system", None)
    assert item.source == {"msgnum": "00000001", "es.index": "system"}
    response = build_document_response(item)
    assert response["result"] == "created" and response["_index"] == "system" and len(response["_id"]) == 20
    with pytest.raises(BadRequest, match="failed to parse"):
        decode_document(b"{nope", "system")
    with pytest.raises(BadRequest, match="must be a JSON object"):
        decode_document(b"[1]", "system")


def test_error_response_shape() -> None:
    assert error_response(400, "parse_exception", "request body is required") == {
        "error": {
            "root_cause": [{"type": "parse_exception", "reason": "request body is required"}],
            "type": "parse_exception",
            "reason": "request body is required",
        },
        "status": 400,
    }


# --------------------------------------------------------------------------- handshake


def test_root_info_is_what_filebeat_and_vector_parse() -> None:
    info = root_info("prod-logs")
    assert info["version"]["number"] == ES_VERSION == "8.11.0"
    assert int(info["version"]["number"].split(".")[0]) == 8  # Vector keeps the major only
    assert info["version"]["build_flavor"] == "default"
    assert info["version"]["lucene_version"]
    assert info["cluster_name"] == "prod-logs"
    assert info["tagline"] == "You Know, for Search"
    assert PRODUCT_HEADERS == {"X-Elastic-Product": "Elasticsearch"}


def test_license_and_xpack() -> None:
    license_ = license_info()["license"]
    assert (license_["type"], license_["status"]) == ("basic", "active")
    assert license_["uid"]
    xpack = xpack_info()
    assert xpack["features"]["ilm"] == {"available": True, "enabled": True}
    assert xpack["license"]["mode"] == "basic"


@pytest.mark.parametrize(
    ("method", "path", "status", "check"),
    [
        ("GET", "/", 200, lambda body: body["version"]["number"] == ES_VERSION),
        ("HEAD", "/", 200, lambda body: body is None),
        ("GET", "/_license", 200, lambda body: body["license"]["status"] == "active"),
        ("GET", "/_xpack", 200, lambda body: "features" in body),
        ("GET", "/_cluster/health", 200, lambda body: body["status"] == "green"),
        ("HEAD", "/_cat/health", 200, lambda body: body is None),
        ("GET", "/_cat/templates/filebeat-8.11.0", 200, lambda body: "filebeat-8.11.0" in body),
        ("HEAD", "/_template/filebeat-6.8.0", 200, lambda body: body is None),
        ("PUT", "/_index_template/filebeat-8.11.0", 200, lambda body: body == {"acknowledged": True}),
        ("PUT", "/_template/rsyslog", 200, lambda body: body == {"acknowledged": True}),
        ("PUT", "/_ilm/policy/filebeat", 200, lambda body: body == {"acknowledged": True}),
        ("GET", "/_ilm/policy/filebeat", 200, lambda body: "filebeat" in body),
        ("GET", "/_component_template/logs-mappings", 200, lambda body: body["component_templates"]),
        ("GET", "/_index_template/logs", 200, lambda body: body["index_templates"][0]["name"] == "logs"),
        ("PUT", "/_data_stream/logs-app-default", 200, lambda body: body == {"acknowledged": True}),
        (
            "GET",
            "/_data_stream/logs-app-default",
            200,
            lambda body: body["data_streams"][0]["name"] == "logs-app-default",
        ),
    ],
)
def test_handshake_paths(method: str, path: str, status: int, check: Any) -> None:
    answer = handshake(method, path)
    assert answer is not None
    assert answer.status == status
    assert check(answer.body)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/_bulk"), ("POST", "/logs/_bulk"), ("GET", "/logs/_search"), ("DELETE", "/logs")],
)
def test_handshake_leaves_other_paths_alone(method: str, path: str) -> None:
    assert handshake(method, path) is None


# --------------------------------------------------------------------------- fuzzing

json_scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
line = (
    st.builds(
        lambda action, params: orjson.dumps({action: params}),
        st.sampled_from(["index", "create", "update", "delete", "bogus"]),
        st.dictionaries(st.sampled_from(["_index", "_id", "_type"]), json_value, max_size=3) | json_value,
    )
    | json_value.map(orjson.dumps)
    | st.binary(max_size=20)
)


def check_bulk(body: bytes, default_index: str | None) -> None:
    try:
        request = decode_bulk(body, default_index)
    except BadRequest as exc:
        assert exc.message
        return
    response = build_bulk_response(request, took_ms=3)
    assert len(response["items"]) == len(request.items)
    assert response["errors"] == any(item.error for item in request.items)
    orjson.dumps(response)
    for event in request.events:
        assert type(event) is dict and isinstance(event["es.index"], str)


@given(body=st.binary(max_size=512), default_index=st.none() | st.just("logs"))
@settings(max_examples=200, deadline=None)
def test_fuzz_arbitrary_bytes(body: bytes, default_index: str | None) -> None:
    check_bulk(body, default_index)


@given(
    lines=st.lists(line, max_size=12), default_index=st.none() | st.just("logs"), final_newline=st.booleans()
)
@settings(max_examples=200, deadline=None)
def test_fuzz_structured_lines(lines: list[bytes], default_index: str | None, final_newline: bool) -> None:
    body = b"\n".join(lines) + (b"\n" if final_newline else b"")
    check_bulk(body, default_index)


@given(
    sources=st.lists(st.dictionaries(st.text(max_size=8), json_value, max_size=4), min_size=1, max_size=10)
)
@settings(max_examples=200, deadline=None)
def test_fuzz_good_bodies_round_trip(sources: list[dict[str, Any]]) -> None:
    body = ndjson(*[part for source in sources for part in ({"create": {"_index": "idx"}}, source)])
    request = decode_bulk(body)
    assert request.events == [{**source, "es.index": "idx"} for source in sources]


# --------------------------------------------------------------------------- rsyslog, for real


class _EsStandIn(http.server.BaseHTTPRequestHandler):
    """Just enough of an ES endpoint, built from this module, for a real shipper to talk to."""

    events: list[dict[str, Any]]
    requests: list[tuple[str, str]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self.server.requests.append((self.command, path))  # type: ignore[attr-defined]
        status, body = 404, error_response(404, "index_not_found_exception", "no such index")
        answer = handshake(self.command, path)
        if answer is not None:
            status, body = answer.status, answer.body
        elif path.endswith("/_bulk"):
            index = path[: -len("/_bulk")].strip("/") or None
            request = decode_bulk(read_body(raw, self.headers.get("Content-Encoding"), 10 << 20), index)
            self.server.events.extend(request.events)  # type: ignore[attr-defined]
            status, body = 200, build_bulk_response(request, took_ms=1)
        payload = b"" if body is None else (body.encode() if isinstance(body, str) else orjson.dumps(body))
        self.send_response(status)
        for name, value in PRODUCT_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def es_stand_in() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EsStandIn)
    server.events = []  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    shutil.which("rsyslogd") is None or shutil.which("logger") is None, reason="needs rsyslogd and logger"
)
def test_rsyslog_omelasticsearch_ships_to_us(
    es_stand_in: http.server.ThreadingHTTPServer, tmp_path: Path
) -> None:
    if (
        not list(Path("/usr/lib").glob("*/rsyslog/omelasticsearch.so"))
        and not Path("/usr/lib/rsyslog/omelasticsearch.so").exists()
    ):
        pytest.skip("rsyslog's omelasticsearch module is not installed")
    tcp_port = free_port()
    es_port = es_stand_in.server_address[1]
    config = tmp_path / "rsyslog.conf"
    config.write_text(
        f"""
global(workDirectory="{tmp_path}")
module(load="imtcp")
module(load="omelasticsearch")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="ship")
template(name="ecs" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="program" name="programname" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
ruleset(name="ship") {{
  action(type="omelasticsearch" server="127.0.0.1" serverport="{es_port}" template="ecs"
         searchIndex="rsyslog-test" bulkmode="on" action.resumeRetryCount="-1")
}}
"""
    )
    rsyslogd = subprocess.Popen(
        ["rsyslogd", "-n", "-f", str(config), "-iNONE"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_port(tcp_port, rsyslogd)
        for priority, text in [
            ("user.notice", "hello from logger"),
            ("auth.err", 'quote " and \\ backslash'),
        ]:
            subprocess.run(
                [
                    "logger",
                    "--server",
                    "127.0.0.1",
                    "--port",
                    str(tcp_port),
                    "--tcp",
                    "-t",
                    "sshd",
                    "-p",
                    priority,
                    text,
                ],
                check=True,
            )
        deadline = time.monotonic() + 15
        while len(es_stand_in.events) < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
    finally:
        rsyslogd.terminate()
        output = rsyslogd.communicate(timeout=10)[0]
    events = sorted(es_stand_in.events, key=lambda event: event["message"])  # type: ignore[attr-defined]
    assert len(events) == 2, output.decode(errors="replace")
    assert events[0]["message"] == "hello from logger"
    assert events[0]["severity"] == "notice" and events[0]["program"] == "sshd"
    assert events[1]["message"] == 'quote " and \\ backslash'
    assert events[1]["facility"] == "auth" and events[1]["severity"] == "err"
    assert all(event["es.index"] == "rsyslog-test" for event in events)
    assert ("POST", "/_bulk") in es_stand_in.requests  # type: ignore[attr-defined]


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rsyslogd exited: {process.communicate()[0].decode(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"rsyslogd did not listen on {port}")


def test_bulk_item_defaults() -> None:
    item = BulkItem("index", "a", None, {"x": 1})
    assert item.is_event and item.status == 201 and item.error is None
