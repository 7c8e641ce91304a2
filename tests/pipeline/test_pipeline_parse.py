"""Parse stage: JSON lines, access logs, syslog, configured regexes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.pipeline.parse import (
    ParseConfig,
    Parser,
    RegexRule,
    parse_access_log_line,
)
from stackwatch.pipeline.stage import ERROR_ATTRIBUTE, BatchContext

CTX = BatchContext("proj", 1_700_000_000_000_000_000, {})
GUIDE_1 = {
    "timestamp": "2025-10-06T12:00:00.123Z",
    "level": "ERROR",
    "service": "auth",
    "trace_id": "abc123def456",
    "source": "auth/login.py:88",
    "message": "Failed login attempt",
    "context": {"ip_address": "81.2.69.160", "attempts": 3},
}


def test_json_line_replaces_the_body() -> None:
    out = Parser().parse_event({"message": json.dumps(GUIDE_1)})
    assert out == GUIDE_1


def test_json_body_merges_over_the_shipper_envelope() -> None:
    raw = {"log": '  {"msg": "hi", "stream": "inner"}\n', "stream": "stdout", "time": "2025-10-06T12:00:00Z"}
    assert Parser().parse_event(raw) == {"msg": "hi", "stream": "inner", "time": "2025-10-06T12:00:00Z"}


def test_json_without_message_keeps_the_line_as_message() -> None:
    line = '{"event_name": "signup", "user_id": 7}'
    assert Parser().parse_event({"line": line}) == {"event_name": "signup", "user_id": 7, "message": line}


@pytest.mark.parametrize("line", ["{not json", "{}garbage", '["a"]', "{"])
def test_broken_json_stays_text(line: str) -> None:
    assert Parser().parse_event({"message": line}) == {"message": line}


def test_canonical_records_with_a_severity_are_not_reparsed() -> None:
    record = {"message": '{"a": 1}', "attributes": {}, "severity_number": 9, "severity_text": "INFO"}
    assert Parser().parse_event(record) is record


def test_a_shipped_line_in_a_canonical_record_is_parsed_around_its_attributes() -> None:
    """The Collector's filelog receiver: the line as body, no severity, file attributes."""
    record = {
        "timestamp": 1_700_000_000_000_000_000,
        "severity_number": 0,
        "severity_text": "",
        "message": json.dumps(GUIDE_1),
        "trace_id": "",
        "span_id": "",
        "attributes": {"log.file.name": "app.log"},
        "resource": {"host.name": "web-1"},
    }
    out = Parser().parse_event(record)
    assert out == {**GUIDE_1, "attributes": {"log.file.name": "app.log"}, "resource": {"host.name": "web-1"}}
    # A line no format reads stays the record as it came.
    plain = {**record, "message": "just words"}
    assert Parser().parse_event(plain) is plain


NGINX = (
    '203.0.113.7 - alice [10/Oct/2025:13:55:36 +0200] "GET /api/leads?page=2 HTTP/1.1" 503 1234 '
    '"https://ref.example/" "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0" 0.123'
)


def test_nginx_combined_with_request_time() -> None:
    event = parse_access_log_line(NGINX)
    assert event == {
        "message": NGINX,
        "timestamp": "10/Oct/2025:13:55:36 +0200",
        "level": "ERROR",
        "log_type": "web",
        "client.ip": "203.0.113.7",
        "user.name": "alice",
        "http.method": "GET",
        "http.path": "/api/leads",
        "http.query": "page=2",
        "http.protocol": "HTTP/1.1",
        "http.status_code": 503,
        "http.response_size": 1234,
        "http.referer": "https://ref.example/",
        "http.user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        "http.request_time": 0.123,
    }


@pytest.mark.parametrize(
    ("line", "level", "extra"),
    [
        (
            '::1 - - [10/Oct/2025:13:55:36 +0000] "POST /login HTTP/2.0" 401 -',
            "WARN",
            {"http.response_size": 0},
        ),
        ('10.0.0.1 - - [10/Oct/2025:13:55:36 +0000] "GET / HTTP/1.0" 200 5 "-" "-"', "INFO", {}),
        (
            '10.0.0.1 - - [10/Oct/2025:13:55:36 +0000] "\\x16\\x03\\x01" 400 157 "-" "-" rt=0.001',
            "WARN",
            {"http.request_time": 0.001},
        ),
    ],
)
def test_access_log_variants(line: str, level: str, extra: dict[str, object]) -> None:
    event = parse_access_log_line(line)
    assert event is not None
    assert event["level"] == level
    assert "http.referer" not in event and "http.user_agent" not in event and "user.name" not in event
    for key, value in extra.items():
        assert event[key] == value


def test_the_events_own_time_and_level_are_not_pushed_out_by_its_line() -> None:
    """An app's structured record whose message is a request line (werkzeug's, through the SDK):
    the line's time that does not parse (local, no zone) leaves the record's time, and the
    level the status implies does not replace the level the record states. Without them, the
    line's own time and the status's level are used, as before."""
    werkzeug = '127.0.0.1 - - [24/Nov/2026 05:10:00] "GET /x HTTP/1.1" 500 -'
    out = Parser().parse_event({"timestamp": "2026-11-24T05:24:58.000Z", "level": "INFO", "message": werkzeug})
    assert (out["timestamp"], out["level"], out["http.status_code"]) == ("2026-11-24T05:24:58.000Z", "INFO", 500)
    nginx = '10.0.0.1 - - [24/Nov/2026:05:10:00 +0000] "GET /y HTTP/1.1" 502 12'
    out = Parser().parse_event({"@timestamp": "2026-11-24T05:24:58Z", "message": nginx})
    assert (out["timestamp"], out["level"]) == ("24/Nov/2026:05:10:00 +0000", "ERROR")  # the line's own time
    out = Parser().parse_event({"@timestamp": "2026-11-24T05:24:58Z", "log.level": "info", "message": werkzeug})
    assert "timestamp" not in out and out["@timestamp"] == "2026-11-24T05:24:58Z" and "level" not in out
    assert Parser().parse_event({"message": werkzeug})["level"] == "ERROR"  # nothing stated: the status says


def test_unparseable_request_line_is_kept_raw() -> None:
    event = parse_access_log_line('1.2.3.4 - - [10/Oct/2025:13:55:36 +0000] "\\x16\\x03" 400 0')
    assert event is not None and event["http.request"] == "\\x16\\x03" and "http.method" not in event


def test_syslog_lines_are_parsed_by_the_shared_syslog_parser() -> None:
    line = "<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick on /dev/pts/8"
    out = Parser().parse_event({"message": line, "file": "/var/log/auth.log"})
    assert out["message"] == "'su root' failed for lonvick on /dev/pts/8"
    assert out["file"] == "/var/log/auth.log"
    assert (out["host"], out["service"], out["process.pid"]) == ("mymachine", "su", 230)
    assert (out["severity_text"], out["log_type"], out["syslog.facility"]) == ("FATAL", "security", "auth")
    assert Parser().parse_event({"message": "<11>not syslog"}) == {"message": "<11>not syslog"}


def test_syslog_records_normalize_with_the_otel_severity() -> None:
    from stackwatch.pipeline.normalize import normalize

    raw = Parser().parse_event({"message": "<165>1 2003-10-11T22:14:15.003Z m evntslog 8 ID47 [ex@1 q=\"v\"] event"})
    record = normalize(raw, project="p", observed_ns=1, defaults={})
    assert (record["severity_text"], record["severity_number"]) == ("INFO", 10)
    assert record["timestamp"] == 1065910455003000000
    assert record["attributes"]["process.pid"] == 8 and record["attributes"]["syslog.sd.ex@1.q"] == "v"


def test_syslog_carrying_json_is_parsed_further() -> None:
    out = Parser().parse_event({"message": '<14>Oct 11 22:14:15 api-1 app[7]: {"msg": "paid", "amount": 5}'})
    assert out["msg"] == "paid" and out["amount"] == 5 and out["host"] == "api-1" and out["service"] == "app"


def test_configured_regex_with_dotted_groups_and_numbers() -> None:
    rule = RegexRule.from_dict(
        {
            "pattern": r"^(?P<ts>\S+ \S+) \[(?P<level>\w+)\] (?P<logger>[\w.]+): (?P<msg>.*?) \| (?P<http__method>\w+) (?P<http__path>\S+) (?P<duration_ms>[\d.]+)ms (?P<zip>\d+)$",
            "log_type": "application",
        }
    )
    parser = Parser(ParseConfig(regex=(rule,)))
    line = "2025-10-06 12:00:00 [INFO] app.routes.leads: Lead created successfully | POST /api/leads 12.5ms 02134"
    assert parser.parse_event({"line": line}) == {
        "ts": "2025-10-06 12:00:00",
        "level": "INFO",
        "logger": "app.routes.leads",
        "msg": "Lead created successfully",
        "http.method": "POST",
        "http.path": "/api/leads",
        "duration_ms": 12.5,
        "zip": "02134",  # a leading zero: not a number
        "log_type": "application",
    }


def test_disabled_formats_pass_lines_through() -> None:
    parser = Parser(ParseConfig(json=False, access_log=False, syslog=False))
    for line in ('{"a": 1}', NGINX, "<13>Oct 11 22:14:15 h app: x"):
        assert parser.parse_event({"message": line}) == {"message": line}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"jsn": True}, "unknown parse setting"),
        ({"json": "yes"}, "must be true or false"),
        ({"regex": [{"pattern": "("}]}, "not a valid regex"),
        ({"regex": [{"pattern": "abc"}]}, "no named groups"),
        ({"regex": [{"pattern": "(?P<a>x)", "log_type": "weird"}]}, "log_type"),
        ({"regex": "(?P<a>x)"}, "list of rules"),
    ],
)
def test_parse_config_errors(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ParseConfig.from_dict(data)


def test_stage_marks_an_event_it_cannot_parse_and_keeps_it() -> None:
    class Exploding(Parser):
        def _parse_text(self, text: str) -> tuple[dict[str, object] | None, str]:
            raise RuntimeError("boom")

    batch = [{"message": "a"}, {"message": '{"b": 1}'}]
    out = Exploding()(batch, CTX)
    assert len(out) == 2
    assert out[0]["message"] == "a" and "RuntimeError: boom" in out[0][ERROR_ATTRIBUTE]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    out = Parser().parse_event({"message": text})
    assert isinstance(out, dict)
