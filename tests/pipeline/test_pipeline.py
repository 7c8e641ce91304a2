"""The whole pipeline: config loading, stage order, one record per event, guide formats."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_mmdb import write_mmdb

import stackwatch.pipeline as pipeline_package
from stackwatch.errors import ConfigError
from stackwatch.model.logs import LOG_FIELDS
from stackwatch.pipeline import ERROR_ATTRIBUTE, BatchContext, Pipeline, PipelineConfig
from stackwatch.redaction import REDACTED

OBSERVED = 1_760_000_000_000_000_000


def run(
    events: list[dict[str, Any]], config: PipelineConfig | None = None, **defaults: Any
) -> list[dict[str, Any]]:
    return Pipeline(config).process(events, project="plumberleads", observed_ns=OBSERVED, defaults=defaults)


def test_guide_one_json_line_end_to_end() -> None:
    """The PlumberLeads JsonFormatter output, with PII in it, as the file tailer would send it."""
    line = json.dumps(
        {
            "timestamp": "2025-10-06T14:00:00.123456+02:00",
            "level": "WARN",
            "service": "plumberleads-api",
            "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
            "source": "/app/payments/views.py:88",
            "message": "Payment retry for john.doe@example.com using card 4242 4242 4242 4242",
            "context": {
                "ip_address": "81.2.69.160",
                "duration": 734,
                "user_id": 12345,
                "customer": {"phone": "+14155552671", "iban": "DE89 3704 0044 0532 0130 00"},
                "stripe_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                "password": "hunter2",
            },
        }
    )
    [record] = run([{"line": line}], host="web-1")
    assert set(record) == set(LOG_FIELDS)
    assert (
        record["timestamp"]
        == int(datetime(2025, 10, 6, 12, 0, 0, tzinfo=UTC).timestamp()) * 10**9 + 123_456_000
    )
    assert record["observed_timestamp"] == OBSERVED
    assert record["project"] == "plumberleads"
    assert record["service"] == "plumberleads-api"
    assert (record["severity_text"], record["severity_number"]) == ("WARN", 13)
    assert record["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record["source"] == "/app/payments/views.py:88"
    assert record["host"] == "web-1"
    assert record["log_type"] == "application"
    assert record["message"] == "Payment retry for j***@example.com using card **** **** **** 4242"
    assert record["attributes"] == {
        "context.ip_address": "81.2.69.160",
        "context.duration": 734,
        "context.user_id": 12345,
        "context.customer.phone": "+*******2671",
        "context.customer.iban": "DE** **** **** **** **30 00",
        "context.stripe_key": f"sk_live_{REDACTED}",
        "context.password": REDACTED,
    }


def test_mixed_batch_keeps_order_and_count() -> None:
    events = [
        {
            "message": '{"level": "INFO", "logger": "deal_scout.api", "message": "Email sent successfully", "request_id": "req_123abc", "user_id": "user_456", "duration_ms": 245}'
        },
        {
            "line": '203.0.113.7 - - [10/Oct/2025:13:55:36 +0000] "GET /api/leads?token=abc123 HTTP/1.1" 500 12 "-" "curl/8.4.0" 0.250'
        },
        {"message": "<38>Oct 11 22:14:15 bastion sshd[812]: Failed password for root from 198.51.100.4"},
        {"msg": "plain text, nothing to parse"},
        {
            "timestamp": OBSERVED - 5,
            "severity_number": 17,
            "message": "otlp",
            "attributes": {"k": "v"},
            "resource": {"service.name": "checkout"},
        },
    ]
    records = run(events)
    assert [r["message"][:12] for r in records] == [
        "Email sent s",
        "203.0.113.7 ",
        "Failed passw",
        "plain text, ",
        "otlp",
    ]
    app, web, auth, plain, otlp = records
    assert app["trace_id"] == "req_123abc" and app["attributes"] == {
        "user_id": "user_456",
        "duration_ms": 245,
    }
    assert web["log_type"] == "web" and web["severity_text"] == "ERROR"
    assert web["attributes"]["http.query"] == f"token={REDACTED}"
    assert web["attributes"]["user_agent.browser"] == "curl"
    assert auth["log_type"] == "security" and auth["service"] == "sshd" and auth["host"] == "bastion"
    assert plain["timestamp"] == OBSERVED and plain["log_type"] == "application"
    assert otlp["service"] == "checkout" and otlp["timestamp"] == OBSERVED - 5


def test_config_from_yaml_with_every_section(tmp_path: Path) -> None:
    db = write_mmdb(
        tmp_path / "geo.mmdb",
        {"81.2.69.0/24": {"country": {"iso_code": "GB"}, "city": {"names": {"en": "London"}}}},
    )
    text = f"""
parse:
  json: true
  access_log: true
  syslog: false
  regex:
    - pattern: '^(?P<ts>\\S+) (?P<level>[A-Z]+) (?P<msg>.*)$'
      log_type: database
redact:
  rules: [email, key_value]
  allow: ['ops@example\\.com']
  extra_sensitive_keys: [ssn]
enrich:
  service_map:
    - match_host: '^db-'
      service: postgres
  user_agent: false
  geoip_db: {db}
"""
    config = PipelineConfig.from_dict(yaml.safe_load(text))
    assert config.parse.syslog is False and len(config.parse.regex) == 1
    assert config.redact.rules == frozenset({"email", "key_value"})
    assert config.enrich.geoip_db == str(db)
    records = run(
        [
            {
                "line": "2025-10-06T12:00:00Z ERROR deadlock by bob@example.com, ops@example.com ssn=123 card 4242 4242 4242 4242",
                "host": "db-1",
            },
            {"line": '81.2.69.160 - - [10/Oct/2025:13:55:36 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.4.0"'},
        ],
        config,
    )
    db_record, web = records
    assert db_record["log_type"] == "database" and db_record["service"] == "postgres"
    assert db_record["severity_text"] == "ERROR"
    assert (
        db_record["message"]
        == f"deadlock by b***@example.com, ops@example.com ssn={REDACTED} card 4242 4242 4242 4242"
    )
    assert web["attributes"]["geo.city"] == "London"
    assert "user_agent.browser" not in web["attributes"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"pars": {}}, "unknown section"),
        ({"parse": []}, "pipeline.parse: expected a mapping"),
        ({"parse": {"regex": [{"pattern": "("}]}}, "pipeline.parse: pattern"),
        ({"redact": {"rules": ["nope"]}}, "pipeline.redact: unknown redaction rule"),
        ({"enrich": {"service_map": [{"service": "x"}]}}, "pipeline.enrich"),
        ([], "expected a mapping"),
    ],
)
def test_bad_config_names_the_key(data: Any, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        PipelineConfig.from_dict(data)


def test_unopenable_geoip_db_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.mmdb").write_bytes(b"not a database")
    config = PipelineConfig.from_dict({"enrich": {"geoip_db": str(tmp_path / "bad.mmdb")}})
    with pytest.raises(ConfigError, match="geoip_db"):
        Pipeline(config)


def test_defaults_are_all_on_except_geoip() -> None:
    config = PipelineConfig.from_dict({})
    assert (config.parse.json, config.parse.access_log, config.parse.syslog) == (True, True, True)
    assert config.redact.enabled and config.redact.rules is None
    assert config.enrich.user_agent and config.enrich.geoip_db is None
    assert [type(s).__name__ for s in Pipeline().stages] == [
        "Parser",
        "Normalizer",
        "RedactStage",
        "Enricher",
    ]


def test_a_failing_stage_marks_the_event_and_later_stages_still_run() -> None:
    def exploding_on_second(batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        for i, record in enumerate(batch):
            if i == 1:
                record["attributes"][ERROR_ATTRIBUTE] = "custom: failed"
        return batch

    default = Pipeline()
    stages = [*default.stages[:2], exploding_on_second, *default.stages[2:]]
    records = Pipeline(stages=stages).process(
        [{"msg": "a"}, {"msg": "b to x@y.io"}], project="p", observed_ns=OBSERVED
    )
    assert records[1]["attributes"][ERROR_ATTRIBUTE] == "custom: failed"
    assert records[1]["message"] == "b to x***@y.io"  # redaction still ran after it


def test_redaction_failure_fails_closed() -> None:
    pipe = Pipeline()
    redact_stage = pipe.stages[2]

    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("regex engine on fire")

    redact_stage.redactor.redact_record_inplace = broken  # type: ignore[attr-defined]
    [record] = pipe.process([{"msg": "secret stuff", "note": "card 4242"}], project="p", observed_ns=OBSERVED)
    assert record["message"] == REDACTED and record["attributes"]["note"] == REDACTED
    assert "redact: RuntimeError" in record["attributes"][ERROR_ATTRIBUTE]


def test_public_surface() -> None:
    assert set(pipeline_package.__all__) == {
        "ERROR_ATTRIBUTE", "BatchContext", "EnrichConfig", "Enricher", "Normalizer", "ParseConfig", "Parser",
        "Pipeline", "PipelineConfig", "RedactStage", "RegexRule", "ServiceMapRule", "Stage", "mark_error",
        "parse_access_log_line", "parse_syslog", "parse_timestamp",
    }  # fmt: skip


raw_events = st.lists(
    st.one_of(
        st.fixed_dictionaries({"message": st.text(max_size=120)}),
        st.fixed_dictionaries(
            {"line": st.sampled_from(['{"a": 1}', "{bad", "<13>Oct 11 22:14:15 h a: b", "x"])}
        ),
        st.dictionaries(
            st.sampled_from(["msg", "level", "ts", "context", "trace_id", "host"]),
            st.text(max_size=20) | st.integers(),
            max_size=5,
        ),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(raw_events)
def test_never_drops_an_event(events: list[dict[str, Any]]) -> None:
    records = Pipeline().process([dict(e) for e in events], project="p", observed_ns=OBSERVED)
    assert len(records) == len(events)
    for record in records:
        assert set(record) == set(LOG_FIELDS)
