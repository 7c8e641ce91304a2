"""Text exposition parsing: the OpenMetrics conformance cases, and the classic Prometheus format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stackwatch.ingest.prom_text import (
    TextParseError,
    parse_openmetrics,
    parse_prometheus_text,
    text_to_batch,
)

# The OpenMetrics parser conformance cases live in shared/ beside the repository (read in place,
# never copied): each case names its input and whether it must parse.
CASES = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "openmetrics" / "parsers"

#: Cases whose verdict we knowingly differ on, with the reason. Empty: all cases agree.
KNOWN_GAPS: dict[str, str] = {}


def _cases() -> list[str]:
    return sorted(p.name for p in CASES.iterdir()) if CASES.is_dir() else []


@pytest.mark.skipif(not CASES.is_dir(), reason="shared/testdata/openmetrics is not beside the repository")
@pytest.mark.parametrize("case", _cases())
def test_openmetrics_conformance(case: str) -> None:
    spec = json.loads((CASES / case / "test.json").read_text())
    assert spec["type"] == "text"
    data = (CASES / case / spec["file"]).read_bytes()
    try:
        parse_openmetrics(data)
        parsed = True
    except TextParseError:
        parsed = False
    if case in KNOWN_GAPS:
        pytest.xfail(KNOWN_GAPS[case])
    assert parsed == spec["shouldParse"]


def test_openmetrics_families_types_units_and_seconds() -> None:
    text = (
        "# TYPE cc_seconds counter\n# UNIT cc_seconds seconds\n# HELP cc_seconds A \\\"counter\\\"\\n.\n"
        'cc_seconds_total{a="x\\ny"} 1.5 1700000000.25 # {trace_id="abc"} 0.5\n'
        "cc_seconds_created 1700000000\n"
        "# TYPE h histogram\n"
        'h_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 3\nh_count 3\nh_sum 0.7\n'
        "# EOF\n"
    )
    counter, hist = parse_openmetrics(text)
    assert (counter.name, counter.type, counter.unit, counter.help) == ("cc_seconds", "counter", "seconds",
                                                                        'A "counter"\n.')
    assert counter.samples[0].labels == [("a", "x\ny")]
    assert counter.samples[0].timestamp == 1700000000.25
    assert [s.name for s in hist.samples] == ["h_bucket", "h_bucket", "h_count", "h_sum"]
    with pytest.raises(TextParseError, match="line 2: counter values must be non-negative"):
        parse_openmetrics("# TYPE a counter\na_total -1\n# EOF\n")


def test_classic_format_is_lenient_and_uses_milliseconds() -> None:
    text = (
        "# a free comment\n"
        "# HELP http_requests_total Requests\\nserved.\n"
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="post",code="200",} 1027 1395066363000\n'
        "http_requests_total { code = \"400\" }\t3   1395066363000\n"
        "\n"
        "# TYPE legacy untyped\n"
        "legacy NaN\n"
        'msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458255915e9\n'
    )
    families = parse_prometheus_text(text)
    req = families[0]
    assert (req.type, req.help) == ("counter", "Requests\nserved.")
    assert [s.labels for s in req.samples] == [[("method", "post"), ("code", "200")], [("code", "400")]]
    assert [s.timestamp for s in req.samples] == [1395066363000, 1395066363000]
    assert families[1].type == "unknown" and math.isnan(families[1].samples[0].value)
    assert families[2].samples[0].labels == [("path", "C:\\DIR\\FILE.TXT"), ("error", 'Cannot find file:\n"FILE.TXT"')]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a{b=1} 1\n", "double quotes"),
        ('a{b="1"} one\n', "invalid value"),
        ("a 1 1.5\n", "milliseconds as an integer"),
        ("a 1 99999999999999999999\n", "out of range"),  # was a 500 (OverflowError)
        ('a{b="1"} 1 -99999999999999999999\n', "out of range"),
        ('a{b="1" 1\n', "unterminated label set"),
        ("0a 1\n", "invalid metric name"),
        ("# TYPE a flux\n", "invalid metric type"),
        ("a\n", "expected a value"),
    ],
)
def test_classic_format_errors_name_the_line(text: str, reason: str) -> None:
    with pytest.raises(TextParseError, match=f"line 1: .*{reason}"):
        text_to_batch(text.encode(), "text/plain", 0)


def test_text_to_batch_classic_and_openmetrics() -> None:
    body = (
        "# TYPE up gauge\n"
        'up{job="a"} 1 1000\nup{job="a"} 0 2000\nup{job="b"} 1\n'
    )
    batch = text_to_batch(body.encode(), "text/plain; version=0.0.4", now_ms=99_000)
    assert [(batch.refs[s].labels, t, v) for s, t, v in zip(batch.series, batch.timestamps, batch.values,
                                                             strict=True)] == [
        ((("job", "a"),), 1000, 1.0), ((("job", "a"),), 2000, 0.0), ((("job", "b"),), 99_000, 1.0)
    ]
    assert batch.metadata == {"up": ("gauge", "", "")}
    with pytest.raises(TextParseError, match="line 2: unexpected '-'"):
        text_to_batch(b"up 1\nbad-name 1 1000\n", "text/plain", 0)  # one bad line refuses the request
    om = text_to_batch(b"# TYPE g gauge\ng 2 1.5\n# EOF\n", "application/openmetrics-text; version=1.0.0", 0)
    assert om.timestamps == [1500] and om.values == [2.0]
