"""Pipeline.process_to_arrow: the storage block, computed per column, is exactly the table
``records_to_arrow(process(...))`` builds from records (columns, types, values, row order,
the order of map entries), on property-generated and on realistic batches."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_mmdb import write_mmdb

import stackwatch.pipeline.normalize as normalize_module
from stackwatch.model.logs_arrow import records_to_arrow
from stackwatch.pipeline import BatchContext, Normalizer, Parser, Pipeline, PipelineConfig
from stackwatch.pipeline.normalize import (
    MAX_TIMESTAMP_NS,
    MIN_TIMESTAMP_NS,
    _iso_to_ns,
    _timestamp_column,
    normalize,
    parse_timestamp,
)
from stackwatch.pipeline.redact import RedactStage

OBSERVED = 1_795_000_000_000_000_000  # 2026-11-18

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
SECRETS = [
    "john.doe@example.com",
    "card 4242 4242 4242 4242",
    "password=hunter2",
    "Authorization: Bearer abcdef123456",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "call +14155552671",
    "postgres://app:s3cret@db:5432/x",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    "pa\u017f\u017fword=x",
]
TEXT_LINES = [
    '203.0.113.7 - - [10/Oct/2025:13:55:36 +0000] "GET /api/leads?token=abc123 HTTP/1.1" 500 12 "-" "curl/8.4.0" 0.250',
    f'81.2.69.160 - bob [10/Oct/2025:13:55:37 +0000] "POST /login HTTP/2.0" 200 5120 "https://x.io/" "{CHROME}"',
    "<38>Oct 11 22:14:15 bastion sshd[812]: Failed password for root from 198.51.100.4",
    '<165>1 2025-10-11T22:14:15.003Z web-1 nginx 42 ID47 [ex@32473 iut="3"] started',
    "Oct 11 22:14:15 web-2 cron[77]: job done",
    '{"level": "warn", "msg": "disk 91% full", "host": "db-1", "ts": 1759752000.25}',
    '{"no_message_here": 1}',
    "{not json",
    '  \t{"message": "indented json", "lvl": "error"}',
    "plain text line with nothing to parse",
    "New lead created for jane@x.io",
    "2025-10-06 12:00:00 job finished",
    "",
]


_PIPELINES: dict[int, tuple[Pipeline, Pipeline]] = {}


def tables(
    config: PipelineConfig | None, events: list[Any], defaults: dict[str, Any] | None = None
) -> tuple[pa.Table | type, pa.Table | type]:
    """(process_to_arrow, records_to_arrow(process)) on copies of the same events, each
    through its own pipeline (so no cache is shared between the two paths). Where the record
    path raises (records_to_arrow refuses ints that float64 cannot hold exactly, timestamps
    beyond int64), process_to_arrow must raise too: each is then its exception's class."""
    if id(config) not in _PIPELINES:
        _PIPELINES[id(config)] = (Pipeline(config), Pipeline(config))
    columnar, records = _PIPELINES[id(config)]
    out: list[pa.Table | type] = []
    for run in (
        lambda: columnar.process_to_arrow(
            copy.deepcopy(events), project="proj", observed_ns=OBSERVED, defaults=defaults
        ),
        lambda: records_to_arrow(
            records.process(copy.deepcopy(events), project="proj", observed_ns=OBSERVED, defaults=defaults)
        ),
    ):
        try:
            out.append(run())
        except (pa.ArrowInvalid, OverflowError) as exc:
            out.append(type(exc))
    return out[0], out[1]


def _canonical(value: Any) -> Any:
    """NaN made comparable (Arrow's equals, like ==, finds NaN unequal to itself)."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_canonical(v) for v in value)
    return value


def assert_same(fast: pa.Table | type, slow: pa.Table | type) -> None:
    if not isinstance(slow, pa.Table) or not isinstance(fast, pa.Table):
        assert fast == slow
        return
    assert fast.schema == slow.schema
    assert fast.num_rows == slow.num_rows
    for name in slow.column_names:
        if fast.column(name).equals(slow.column(name)):
            continue
        a, b = _canonical(fast.column(name).to_pylist()), _canonical(slow.column(name).to_pylist())
        if a != b:
            row = next(i for i in range(len(a)) if a[i] != b[i])
            raise AssertionError(f"column {name}, row {row}: {a[row]!r} != {b[row]!r}")


# ---------------------------------------------------------------- generated batches

ALIAS_KEYS = [
    "timestamp", "@timestamp", "ts", "time", "level", "lvl", "levelname", "levelno", "severity_number",
    "message", "msg", "log", "body", "service", "app", "trace_id", "traceId", "request_id", "span_id",
    "source", "pathname", "module", "lineno", "line", "logger", "name", "funcName", "host", "hostname",
    "type", "log_type",
]  # fmt: skip
ATTRIBUTE_KEYS = [
    "user_id", "duration", "http.method", "http.status_code", "http.user_agent", "client.ip", "password",
    "api_key", "note", "email", "ok", "count", "session_id", "token_count", "context.path",
]  # fmt: skip
KINDS = ["str", "text", "secret", "int", "bigint", "float", "bool", "none", "ts", "level", "id", "logtype", "dict", "list", "long", "agent", "ip"]  # fmt: skip
INNER_KEYS = ["method", "path", "ip", "level", "n", "amount", "user_agent", "password", "service.name"]


def values_of(kind: str) -> st.SearchStrategy[Any]:
    return {
        "str": st.sampled_from(["GET", "POST", "/api/leads", "default", "primary", "x", ""]),
        "text": st.text(max_size=20),
        "secret": st.sampled_from(SECRETS) | st.text(alphabet="0123456789 -+()@.:=abcKSk\u017f", max_size=25),
        "int": st.integers(-5, 100_000),
        "bigint": st.integers(-(2**70), 2**70)
        # card numbers logged as numbers (masked), and card-length numbers that are not cards
        | st.sampled_from([4242424242424242, 4111111111111111, 5555555555554444, 4242424242424241, 10**15]),
        "float": st.floats(allow_nan=True, allow_infinity=False, width=64),
        "bool": st.booleans(),
        "none": st.none(),
        "ts": st.sampled_from(
            [
                "2026-11-22T00:00:04.135Z",
                "2026-11-22T00:00:05.1Z",
                "2026-02-30T00:00:00Z",
                "2026-11-22 01:02:03,250",
                "2026-11-22T00:00:04+02:00",
                "2026-11-22T00:00:04.123456-0130",
                "1759752000",
                "22/Nov/2026:10:00:00 +0000",
                "Nov 22 10:00:00",
                "nope",
                "0001-01-01T00:00:00Z",
            ]
        )
        | st.integers(1_700_000_000, 1_800_000_000_000)
        | st.floats(1.7e9, 1.8e9),
        "level": st.sampled_from(["INFO", "warn", "ERROR", "odd", "CRITICAL"])
        | st.sampled_from([10, 30, 50]),
        "id": st.sampled_from(
            [
                "b840d5d2ecb4",
                "4BF92F3577B34DA6",
                "req_123abc",
                "unknown",
                "000",
                " x ",
                "-",
                "ab\ncd",
                "    unknown    ",
                "a59900e7e1ca\u2003",
                "0000000000000",
            ]
        ),
        "logtype": st.sampled_from(["web", "system", "security", "click"]),
        "dict": st.fixed_dictionaries({k: st.sampled_from(["a", 1, 2.5, True]) for k in ("m", "n")}),
        "list": st.lists(st.integers(0, 3), max_size=2),
        "long": st.sampled_from(["a" * 1030, "b" * 70_000, "c" * 17_000]),
        "agent": st.sampled_from([CHROME, IPHONE, "curl/8.4.0", "", "Mozilla/5.0 bob@example.com"]),
        "ip": st.sampled_from(["81.2.69.160", "203.0.113.7", "not-an-ip", ""]),
    }[kind]


@st.composite
def shaped_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Rows of one shape: same keys in the same order, values of one kind per key (sometimes
    two kinds, so that blocks split), maybe a nested object whose keys vary a little."""
    keys = draw(
        st.lists(
            st.sampled_from(ALIAS_KEYS + ATTRIBUTE_KEYS) | st.text(max_size=8),
            min_size=1,
            max_size=7,
            unique=True,
        )
    )
    kinds = {key: draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=2)) for key in keys}
    nested_key = draw(st.none() | st.sampled_from(["context", "request", "log", "service", "", "resource"]))
    inner = draw(st.lists(st.sampled_from(INNER_KEYS), min_size=0, max_size=4, unique=True))
    inner_kinds = {
        key: draw(st.sampled_from(["str", "int", "float", "secret", "agent", "ip", "dict", "none", "bigint"]))
        for key in inner
    }
    count = draw(st.integers(1, 24))
    rows = []
    for _ in range(count):
        row = {key: draw(values_of(draw(st.sampled_from(kinds[key])))) for key in keys}
        if nested_key is not None:
            shown = inner if draw(st.integers(0, 4)) else inner[::-1]  # now and then another order
            row[nested_key] = {key: draw(values_of(inner_kinds[key])) for key in shown}
        rows.append(row)
    return rows


@st.composite
def batches(draw: st.DrawFn) -> list[Any]:
    events: list[Any] = []
    for rows in draw(st.lists(shaped_rows(), min_size=1, max_size=4)):
        events.extend(rows)
    events.extend({"message": line} for line in draw(st.lists(st.sampled_from(TEXT_LINES), max_size=12)))
    events.extend(
        {"line": line, "host": "web-3"} for line in draw(st.lists(st.sampled_from(TEXT_LINES), max_size=3))
    )
    canonical = {
        "timestamp": OBSERVED - 5,
        "message": "otlp",
        "attributes": {"k": "v", "n": 2},
        "resource": {"service.name": "checkout"},
    }
    events.extend([canonical] * draw(st.integers(0, 2)))
    # OTLP records of lines a shipper tailed: parsed when they carry no severity.
    for line in draw(st.lists(st.sampled_from(TEXT_LINES), max_size=3)):
        shipped = {**canonical, "message": line, "severity_number": draw(st.sampled_from([0, 9])), "trace_id": ""}
        shipped["severity_text"] = "INFO" if shipped["severity_number"] else ""
        events.append(shipped)
    return draw(st.permutations(events))


CONFIGS = {
    "default": PipelineConfig(),
    "tuned": PipelineConfig.from_dict(
        {
            "parse": {
                "regex": [{"pattern": r"^(?P<ts>\S+) (?P<level>[A-Z]+) (?P<msg>.*)$", "log_type": "database"}]
            },
            "redact": {
                "allow": [r".*@example\.com", "4242 4242 4242 4242", "7"],
                "extra_sensitive_keys": ["ssn", "user_id"],
                "safe_keys": ["api_key"],
            },
            "enrich": {
                "service_map": [
                    {"match_host": "^web-", "service": "nginx"},
                    {"match_source": "base", "service": "worker", "override": True},
                ]
            },
        }
    ),
    "deny": PipelineConfig.from_dict(
        {
            "redact": {"deny": [r"ord_\w+", "lead"], "rules": ["email", "key_value"]},
            "enrich": {"user_agent": False},
        }
    ),
    "no-redaction": PipelineConfig.from_dict(
        {"redact": {"enabled": False}, "parse": {"json": False, "syslog": False}}
    ),
}
DEFAULTS = [None, {"service": "svc"}, {"host": "h1", "log_type": "web"}, {"log_type": "bogus", "service": ""}]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(batches(), st.sampled_from(sorted(CONFIGS)), st.sampled_from(DEFAULTS), st.sampled_from([8, 2048]))
def test_process_to_arrow_equals_records_to_arrow_of_process(
    events: list[Any], config: str, defaults: dict[str, Any] | None, chunk: int
) -> None:
    saved = normalize_module._CHUNK_ROWS
    normalize_module._CHUNK_ROWS = chunk  # small pieces exercise the chunking on small batches
    try:
        assert_same(*tables(CONFIGS[config], events, defaults))
    finally:
        normalize_module._CHUNK_ROWS = saved


def test_geoip_and_user_agents(tmp_path: Path) -> None:
    db = write_mmdb(
        tmp_path / "geo.mmdb",
        {
            "81.2.69.0/24": {
                "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
                "city": {"names": {"en": "London"}},
            }
        },
    )
    config = PipelineConfig.from_dict({"enrich": {"geoip_db": str(db)}})
    rng = random.Random(3)
    events = [
        {
            "level": "INFO",
            "message": f"request {i}",
            "http.user_agent": rng.choice(
                [CHROME, IPHONE, "curl/8.4.0", "", "Mozilla/5.0 (compatible; x@y.io)"]
            ),
            "client.ip": rng.choice(["81.2.69.160", "203.0.113.7", "nope"]),
            **({"geo.city": "Paris"} if i % 3 == 0 else {}),
        }
        for i in range(120)
    ]
    fast, slow = tables(config, events)
    assert_same(fast, slow)
    assert isinstance(fast, pa.Table) and "London" in str(fast.column("attributes_string").to_pylist())


# ---------------------------------------------------------------- a realistic mixed batch

SERVICES = ["api", "worker", "payment", "db", "auth", "notifications"]


def guide_event(rng: random.Random, i: int, placeholders: bool = True) -> dict[str, Any]:
    """An event as the guide's JsonFormatter writes it (the shape of bench/gen_logs.py)."""
    kind = rng.randrange(8)
    contexts = [
        {
            "method": "GET",
            "path": f"/api/invoices/{rng.randrange(99999)}",
            "status": 200,
            "duration": round(rng.random() * 900, 1),
            "user_id": rng.randrange(10**5),
        },
        {
            "task": "refresh_dashboard_cache",
            "task_id": f"{rng.randrange(16**12):012x}",
            "runtime_s": round(rng.random(), 3),
            "queue": "default",
        },
        {
            "order_id": f"ord_{rng.randrange(16**10):010x}",
            "amount": round(rng.random() * 500, 2),
            "currency": "USD",
            "provider": "stripe",
        },
        {"active": rng.randrange(20), "idle": rng.randrange(10), "pool": "primary"},
        {
            "user_id": rng.randrange(10**5),
            "ip_address": f"81.2.69.{rng.randrange(255)}",
            "method": "password",
        },
        {"table": "payments", "rows": rng.randrange(999), "duration": round(rng.random() * 9, 1)},
        {"table": "payments", "duration": round(rng.random() * 9, 1), "rows": rng.randrange(999)},
        {"template": "dashboard.html", "duration": 12.5, "password_length": 12, "db_password": "hunter2"},
    ]
    messages = [
        "GET /api/invoices/20010 200 in 53ms",
        "Task refresh_dashboard_cache[p3tdaa5s1t4m] succeeded in 0.377s",
        f"Payment processed for order ord_kzfausk3s3: {rng.randrange(500)}.00 USD",
        "Connection pool stats: 14 active, 2 idle",
        f"Failed login attempt for {rng.choice(['sam.muller', 'emma', 'wei.müller'])}@gmail.com (attempt 4 of 5)",
        "SELECT on payments returned 414 rows in 2.2ms",
        "Template rendered: dashboard.html token=abc123",
        "Card 4242 4242 4242 4242 declined, call +14155552671",
    ]
    second = i * 1.7
    return {
        "timestamp": f"2026-11-22T{int(second // 3600) % 24:02d}:{int(second // 60) % 60:02d}:{int(second) % 60:02d}.{i % 1000:03d}Z",
        "level": rng.choice(["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]),
        "service": SERVICES[kind % len(SERVICES)],
        "trace_id": f"{rng.randrange(16**12):012x}" if i % 50 or not placeholders else "unknown",
        "source": rng.choice(["app/tasks/base.py:66", "app/payments/charge.py:77", "app/db/pool.py:54"]),
        "message": messages[kind],
        "context": contexts[kind],
    }


def realistic_batch(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.7:
            events.append(guide_event(rng, i))
        elif roll < 0.85:
            ip = f"203.0.113.{rng.randrange(255)}"
            path = rng.choice(["/api/leads", "/login?token=abc123", "/static/app.js", "/"])
            agent = rng.choice([CHROME, IPHONE, "curl/8.4.0", "-"])
            status = rng.choice([200, 200, 301, 404, 500])
            events.append(
                {
                    "message": f'{ip} - - [22/Nov/2026:10:00:{i % 60:02d} +0000] "GET {path} HTTP/1.1" {status} {rng.randrange(9999)} "-" "{agent}" 0.0{rng.randrange(99)}'
                }
            )
        elif roll < 0.95:
            events.append({"message": rng.choice(TEXT_LINES)})
        elif roll < 0.98:
            events.append(
                {
                    "msg": "structlog event",
                    "event": "user_login",
                    "user": {"email": "a@b.co", "id": 7},
                    "lvl": "info",
                    "time": 1795000000.5,
                }
            )
        else:
            events.append(
                {
                    "timestamp": OBSERVED - i,
                    "severity_number": 17,
                    "message": "otlp",
                    "attributes": {"http.method": "GET"},
                    "resource": {"service.name": "checkout", "host.name": "h"},
                }
            )
    return [json.loads(json.dumps(e)) for e in events]  # as a decoder hands them over


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_realistic_mixed_batch(config: str) -> None:
    fast, slow = tables(CONFIGS[config], realistic_batch(6000), {"host": "web-1"})
    assert_same(fast, slow)
    assert isinstance(fast, pa.Table) and fast.num_rows == 6000


def test_uniform_guide_batch_is_built_from_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common case takes the columnar path end to end: no event is normalized alone."""
    events = [guide_event(random.Random(i), i, placeholders=False) for i in range(800)]
    expected = records_to_arrow(
        Pipeline().process(copy.deepcopy(events), project="proj", observed_ns=OBSERVED)
    )

    def no_per_event(*args: Any) -> None:
        raise AssertionError("per-event path used")

    pipe = Pipeline()
    monkeypatch.setattr(normalize_module, "_normalize", no_per_event)
    assert_same(pipe.process_to_arrow(events, project="proj", observed_ns=OBSERVED), expected)


# ---------------------------------------------------------------- the record path and odd cases


def test_custom_stages_take_the_record_path() -> None:
    default = Pipeline()
    custom = Pipeline(stages=default.stages[:2])
    events = realistic_batch(200)
    fast = custom.process_to_arrow(copy.deepcopy(events), project="proj", observed_ns=OBSERVED)
    assert_same(
        fast, records_to_arrow(custom.process(copy.deepcopy(events), project="proj", observed_ns=OBSERVED))
    )


def test_a_failing_enrichment_takes_the_record_path_and_is_marked() -> None:
    def run(pipe: Pipeline, events: list[dict[str, Any]], arrow: bool) -> pa.Table:
        enricher = pipe.stages[3]
        original = enricher._user_agent  # type: ignore[attr-defined]

        def flaky(agent: str) -> Any:
            if "iPhone" in agent:
                raise RuntimeError("parser on fire")
            return original(agent)

        enricher._user_agent = flaky  # type: ignore[attr-defined]
        if arrow:
            return pipe.process_to_arrow(events, project="proj", observed_ns=OBSERVED)
        return records_to_arrow(pipe.process(events, project="proj", observed_ns=OBSERVED))

    events = [{"message": f"hit {i}", "http.user_agent": IPHONE if i % 7 == 0 else CHROME} for i in range(40)]
    fast = run(Pipeline(), copy.deepcopy(events), True)
    assert_same(fast, run(Pipeline(), copy.deepcopy(events), False))
    assert "enrich: RuntimeError: parser on fire" in str(fast.column("attributes_string").to_pylist())


def test_a_timestamp_the_event_path_chokes_on_is_marked_like_it_does() -> None:
    events = [
        {"timestamp": "2025-10-06T12:00:00+\u00b2\u00b2:00", "message": f"m{i}", "level": "INFO"}
        for i in range(10)
    ]
    fast, slow = tables(None, events)
    assert_same(fast, slow)
    assert isinstance(fast, pa.Table) and "normalize: ValueError" in str(fast.column("attributes_string")[0])


def test_empty_batch_and_out_of_range_timestamps() -> None:
    assert_same(*tables(None, []))
    # A time storage cannot hold is the arrival time on both paths (it once made both raise,
    # and the block's insert fail for ever).
    huge = [{"message": "far future", "ts": 99_999_999_999_999_999_999} for _ in range(10)]
    assert_same(*tables(None, huge))
    built = Pipeline().process_to_arrow(copy.deepcopy(huge), project="p", observed_ns=OBSERVED)
    assert built.column("timestamp").cast(pa.int64()).to_pylist() == [OBSERVED] * 10


# ---------------------------------------------------------------- the column-wise pieces

uniform_keys = st.lists(
    st.sampled_from(ALIAS_KEYS + ATTRIBUTE_KEYS + ["context"]), min_size=1, max_size=7, unique=True
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_block_records_match_event_records_in_attribute_order(data: st.DataObject) -> None:
    """Normalizer (blocks) == normalize per event, comparing attribute order too."""
    keys = data.draw(uniform_keys)
    kinds = {key: data.draw(st.sampled_from(KINDS)) for key in keys}
    rows = [
        {key: data.draw(values_of(kinds[key])) for key in keys} for _ in range(data.draw(st.integers(8, 20)))
    ]
    ctx = BatchContext("proj", OBSERVED, {"host": "h"})
    got = Normalizer()(copy.deepcopy(rows), ctx)
    want = [
        normalize(raw, project="proj", observed_ns=OBSERVED, defaults={"host": "h"})
        for raw in copy.deepcopy(rows)
    ]
    assert got == want
    assert [list(r["attributes"].items()) for r in got] == [list(r["attributes"].items()) for r in want]


digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def iso_strings(draw: st.DrawFn) -> str:
    year = draw(st.integers(1, 9999))
    text = f"{year:04d}-{draw(st.integers(0, 13)):02d}-{draw(st.integers(0, 32)):02d}"
    text += (
        draw(st.sampled_from("Tt X"))
        + f"{draw(st.integers(0, 25)):02d}:{draw(st.integers(0, 61)):02d}:{draw(st.integers(0, 61)):02d}"
    )
    if draw(st.booleans()):
        text += draw(st.sampled_from(".,")) + draw(st.text(alphabet="0123456789", min_size=1, max_size=11))
    text += draw(
        st.sampled_from(["", "Z", "z", "+02:00", "-05:30", "+0200", "-0000", "+02", " UTC", "+99:99"])
    )
    return text


@settings(max_examples=300, deadline=None)
@given(st.lists(iso_strings(), min_size=1, max_size=6), st.integers(1, 40))
def test_vectorized_iso_timestamps_match_the_event_path(values: list[str], repeat: int) -> None:
    column = tuple(values[i % len(values)] for i in range(len(values) * repeat))
    parsed, failed = _timestamp_column(column, str, OBSERVED)
    parsed = parsed.tolist() if isinstance(parsed, np.ndarray) else list(parsed)
    for i, value in enumerate(column):
        expected = _iso_to_ns(value)
        if expected is None or not MIN_TIMESTAMP_NS <= expected <= MAX_TIMESTAMP_NS:
            expected = parse_timestamp(value, OBSERVED)
        if expected is None:
            assert i in failed
        else:
            assert i not in failed and parsed[i] == expected, value


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(TEXT_LINES)
        | st.text(max_size=40)
        | st.sampled_from(
            [
                "\u2003{}",
                " <1>x",
                "Jan  1 00:00:00 h a: b",
                "\u0661\u0662\u0663\u0664-\u0660\u0661-\u0660\u0661T",
            ]
        ),
        max_size=12,
    )
)
def test_parser_candidates_hold_every_event_it_would_change(texts: list[str]) -> None:
    parser = Parser()
    events: list[Any] = (
        [{"message": t} for t in texts] + [{"msg": t, "n": 1} for t in texts] + [{"message": 5}, "not a dict"]
    )
    groups = normalize_module.group_by_keys(events)
    found = set(parser.candidates(events, groups))
    for i, event in enumerate(events):
        if i in found:
            continue
        assert parser([copy.deepcopy(event)], BatchContext("p", OBSERVED, {})) == [event], event


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SECRETS) | st.text(max_size=30), max_size=10), st.integers(0, 3))
def test_redact_array_is_redact_text_on_each_string(values: list[str], offset: int) -> None:
    stage = RedactStage()
    array = pa.array(["pad"] * offset + values, pa.string()).slice(offset)
    redacted = stage.redact_array(array).to_pylist()
    assert redacted == [stage.redactor.redact_text(v) for v in values]
