"""The syslog parser shared by the listener and the parse stage: RFC 5424, RFC 3164 and what
real senders actually send."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.pipeline.syslog import match_syslog, parse_syslog

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def ns(text: str) -> int:
    stamp = datetime.fromisoformat(text)
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


# --------------------------------------------------------------------------- RFC 5424


def test_rfc5424_example_1() -> None:
    line = "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \ufeff'su root' failed for lonvick on /dev/pts/8"
    assert parse_syslog(line) == {
        "severity_text": "FATAL",
        "severity_number": 22,
        "log_type": "security",
        "timestamp": ns("2003-10-11T22:14:15.003+00:00"),
        "host": "mymachine.example.com",
        "service": "su",
        "message": "'su root' failed for lonvick on /dev/pts/8",
        "syslog.facility": "auth",
        "syslog.severity": "crit",
        "syslog.msgid": "ID47",
    }


def test_rfc5424_example_2_with_offset_and_microseconds() -> None:
    event = parse_syslog(
        "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."
    )
    assert event["timestamp"] == ns("2003-08-24T12:14:15.000003+00:00")
    assert event["host"] == "192.0.2.1" and event["service"] == "myproc"
    assert event["process.pid"] == 8710
    assert event["syslog.facility"] == "local4"
    assert event["severity_text"] == "INFO" and event["syslog.severity"] == "notice"
    assert event["message"] == "%% It's time to make the do-nuts."
    assert event["log_type"] == "system"


def test_rfc5424_structured_data() -> None:
    line = (
        '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
        'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] An application event log entry...'
    )
    event = parse_syslog(line)
    assert event["message"] == "An application event log entry..."
    assert {k: v for k, v in event.items() if k.startswith("syslog.")} == {
        "syslog.facility": "local4",
        "syslog.severity": "notice",
        "syslog.msgid": "ID47",
        "syslog.sd.exampleSDID@32473.iut": "3",
        "syslog.sd.exampleSDID@32473.eventSource": "Application",
        "syslog.sd.exampleSDID@32473.eventID": "1011",
        "syslog.sd.examplePriority@32473.class": "high",
    }


def test_rfc5424_structured_data_escapes_and_no_message() -> None:
    line = r'<13>1 - - app - - [meta path="C:\\temp\\x" quote="say \"hi\"" bracket="[a\]" odd="\n"]'
    event = parse_syslog(line)
    assert event["message"] == ""
    assert "timestamp" not in event and "host" not in event
    attributes = event
    assert attributes["syslog.sd.meta.path"] == "C:\\temp\\x"
    assert attributes["syslog.sd.meta.quote"] == 'say "hi"'
    assert attributes["syslog.sd.meta.bracket"] == "[a]"
    assert attributes["syslog.sd.meta.odd"] == "\\n", "other backslashes are kept as sent (RFC 5424 6.3.3)"


def test_rfc5424_element_without_params_and_nil_fields() -> None:
    event = parse_syslog("<14>1 2024-05-01T10:00:00+02:00 - - - - [timeQuality] message")
    assert event["timestamp"] == ns("2024-05-01T08:00:00+00:00")
    assert event["message"] == "message"
    assert set(event) == {
        "severity_text",
        "severity_number",
        "log_type",
        "syslog.facility",
        "syslog.severity",
        "timestamp",
        "message",
    }


@pytest.mark.parametrize(
    "line",
    [
        "<14>1 2024-13-45T99:00:00Z host app - - - impossible date",
        '<14>1 2024-05-01T10:00:00Z host app - - [unterminated x="1" message',
        "<14>1 2024-05-01T10:00:00Z host",
    ],
)
def test_rfc5424_lookalikes_still_become_events(line: str) -> None:
    event = parse_syslog(line)
    assert event["severity_text"] == "INFO"
    assert event["message"]
    assert event["log_type"] == "system"


# --------------------------------------------------------------------------- RFC 3164 and friends


def test_rfc3164_example() -> None:
    event = parse_syslog(
        "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8", now=NOW
    )
    assert event["timestamp"] == ns("2023-10-11T22:14:15+00:00"), "October is in the past on 1 May 2024"
    assert event["host"] == "mymachine" and event["service"] == "su"
    assert event["message"] == "'su root' failed for lonvick on /dev/pts/8"
    assert event["severity_text"] == "FATAL" and event["log_type"] == "security"


def test_rfc3164_with_pid_single_digit_day_and_this_year() -> None:
    event = parse_syslog("<38>Apr  3 08:01:02 web-1 sshd[4242]: Accepted publickey for deploy", now=NOW)
    assert event["timestamp"] == ns("2024-04-03T08:01:02+00:00")
    assert event["service"] == "sshd" and event["process.pid"] == 4242
    assert event["host"] == "web-1" and event["message"] == "Accepted publickey for deploy"


def test_rfc3164_december_message_read_in_january_is_last_year() -> None:
    january = datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    event = parse_syslog("<13>Dec 31 23:59:59 host app: late", now=january)
    assert event["timestamp"] == ns("2024-12-31T23:59:59+00:00")


def test_rfc3164_without_hostname_and_with_rfc3339_time() -> None:
    event = parse_syslog("<13>Feb  5 17:32:18 cron[12]: job done", now=NOW)
    assert "host" not in event and event["service"] == "cron"
    event = parse_syslog("<13>2024-05-01T11:00:00.250+00:00 db-2 postgres[99]: checkpoint complete")
    assert event["timestamp"] == ns("2024-05-01T11:00:00.250+00:00")
    assert event["host"] == "db-2" and event["service"] == "postgres"


def test_python_syslog_handler_format() -> None:
    # SysLogHandler sends "<PRI>" + ident + the formatted record + NUL, nothing else.
    event = parse_syslog("<11>myapp: disk almost full\x00", peer="10.0.0.5")
    assert event["service"] == "myapp" and event["message"] == "disk almost full"
    assert event["severity_text"] == "ERROR" and event["severity_number"] == 17
    assert event["host"] == "10.0.0.5", "with no HOSTNAME in the message, the sender's address"
    assert "timestamp" not in event


@pytest.mark.parametrize("line", ["no priority at all", "<>1 x", "<192>too big", "<abc>x", ""])
def test_malformed_lines_are_kept_as_messages(line: str) -> None:
    assert parse_syslog(line) == {"message": line, "log_type": "system"}


@pytest.mark.parametrize(
    ("severity", "name", "number", "keyword"),
    [
        (0, "FATAL", 24, "emerg"),
        (1, "FATAL", 23, "alert"),
        (2, "FATAL", 22, "crit"),
        (3, "ERROR", 17, "err"),
        (4, "WARN", 13, "warning"),
        (5, "INFO", 10, "notice"),
        (6, "INFO", 9, "info"),
        (7, "DEBUG", 5, "debug"),
    ],
)
def test_every_severity(severity: int, name: str, number: int, keyword: str) -> None:
    event = parse_syslog(f"<{16 * 8 + severity}>msg")  # local0
    assert (event["severity_text"], event["severity_number"]) == (name, number)
    assert (event["syslog.facility"], event["syslog.severity"]) == ("local0", keyword)


@given(
    line=st.text(max_size=200)
    | st.builds(lambda pri, rest: f"<{pri}>{rest}", st.integers(0, 300), st.text(max_size=120))
)
@settings(max_examples=200, deadline=None)
def test_fuzz_parse_never_raises(line: str) -> None:
    event = parse_syslog(line, now=NOW)
    assert isinstance(event["message"], str)
    assert event["log_type"] in ("system", "security")


def test_a_non_numeric_procid_is_kept_as_text() -> None:
    event = parse_syslog("<14>1 2024-05-01T10:00:00Z host app worker-3 - - started")
    assert event["syslog.procid"] == "worker-3" and "process.pid" not in event


@pytest.mark.parametrize(
    ("line", "host", "service", "message"),
    [
        ("<13>Oct  1 02:03:04 cron: job done", None, "cron", "job done"),
        ("Oct 11 22:14:15 web-1 sshd[99]: Accepted publickey for bob", "web-1", "sshd", "Accepted publickey for bob"),
        ("<14>2025-10-06T12:00:00.123+02:00 api-1 app[7]: started", "api-1", "app", "started"),
        ("<14>Oct 11 22:14:15 web-1 plain text without tag", "web-1", None, "plain text without tag"),
        ("<34>1 2003-10-11T22:14:15.003Z mymachine su - ID47 - hi", "mymachine", "su", "hi"),
    ],
)
def test_match_recognises_syslog_lines(line: str, host: str | None, service: str | None, message: str) -> None:
    event = match_syslog(line, now=NOW)
    assert event is not None
    assert (event.get("host"), event.get("service"), event["message"]) == (host, service, message)
    assert event == parse_syslog(line, now=NOW), "strict and lenient agree on real syslog"


@pytest.mark.parametrize(
    "line",
    ["<11>garbage", "hello", "<11>myapp: no timestamp", "2024-05-01 is a date", "Octopus 11 22:14:15 x"],
)
def test_match_refuses_lines_that_are_not_clearly_syslog(line: str) -> None:
    # The parse stage sees every kind of line: only a 5424 header or a 3164 timestamp makes syslog.
    assert match_syslog(line, now=NOW) is None


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_match_never_raises_and_agrees_with_lenient_parsing(line: str) -> None:
    event = match_syslog(line, now=NOW)
    if event is not None:
        assert event == parse_syslog(line, now=NOW)
