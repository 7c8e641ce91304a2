"""Span-derived RED series: cumulative counters and histograms, as the spanmetrics connector makes."""

from __future__ import annotations

import itertools
from typing import Any

from stackwatch.ingest.spanmetrics import DEFAULT_BUCKETS, SpanMetrics
from stackwatch.model.spans import make_span
from stackwatch.storage.metrics import MetricBatch

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """Captures what SpanMetrics writes: {(metric, labels...): [(t, value), ...]} per token."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]] = {}

    def __call__(self, batches: list[tuple[str, MetricBatch]], token: str) -> None:
        self.tokens.append(token)
        for project, batch in batches:
            for i, t, v in zip(batch.series, batch.timestamps, batch.values, strict=True):
                ref = batch.refs[i]
                self.samples.setdefault((ref.name, (("project", project), *ref.labels)), []).append((t, v))

    def last(self, name: str, **labels: str) -> float:
        want = {"project": "default", **labels}
        hits = [v for (n, ls), v in self.samples.items() if n == name and all(dict(ls).get(k) == x for k, x in want.items())]
        assert len(hits) == 1, (name, labels, hits)
        return hits[0][-1][1]


_IDS = itertools.count(1)


def spans(service: str, name: str, *durations_ms: float, status: str = "ok", kind: str = "server") -> list[dict[str, Any]]:
    """Spans of one trace, each with a span id of its own (as real ones have)."""
    return [
        make_span("ab" * 16, f"{next(_IDS):016x}", name, 10**18, 10**18 + int(d * MS), service=service, kind=kind,
                  status_code=status)
        for d in durations_ms
    ]


def test_counts_sums_and_cumulative_buckets() -> None:
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock)
    red.observe([("default", spans("api", "GET /", 1, 3, 120, 20_000) + spans("api", "GET /", 7, status="error"))],
                "spans-1-1")
    labels = {"service": "api", "span_name": "GET /", "span_kind": "SPAN_KIND_SERVER", "status_code": "STATUS_CODE_OK"}
    assert sink.last("traces_spanmetrics_calls_total", **labels) == 4
    assert sink.last("traces_spanmetrics_duration_seconds_count", **labels) == 4
    assert abs(sink.last("traces_spanmetrics_duration_seconds_sum", **labels) - 20.124) < 1e-9
    assert sink.last("traces_spanmetrics_duration_seconds_bucket", **labels, le="0.002") == 1
    assert sink.last("traces_spanmetrics_duration_seconds_bucket", **labels, le="0.004") == 2
    assert sink.last("traces_spanmetrics_duration_seconds_bucket", **labels, le="0.2") == 3
    assert sink.last("traces_spanmetrics_duration_seconds_bucket", **labels, le="15.0") == 3
    assert sink.last("traces_spanmetrics_duration_seconds_bucket", **labels, le="+Inf") == 4
    errors = {**labels, "status_code": "STATUS_CODE_ERROR"}
    assert sink.last("traces_spanmetrics_calls_total", **errors) == 1
    buckets = [k for k in sink.samples if k[0] == "traces_spanmetrics_duration_seconds_bucket" and
               dict(k[1])["status_code"] == "STATUS_CODE_OK"]
    assert len(buckets) == len(DEFAULT_BUCKETS) + 1
    assert sink.tokens == ["spans-1-1-red"]


def test_a_new_series_starts_with_a_zero_so_rate_sees_its_first_calls() -> None:
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock)
    red.observe([("default", spans("api", "GET /", 5))], "t1")
    clock.now += 10
    red.observe([("default", spans("api", "GET /", 5, 5))], "t2")
    [series] = [v for (n, _), v in sink.samples.items() if n == "traces_spanmetrics_calls_total"]
    t0 = 1_767_225_600 * 1000
    assert series == [(t0 - 1, 0.0), (t0, 1.0), (t0 + 10_000, 3.0)]


def test_a_retried_block_is_not_counted_twice() -> None:
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock)
    red.observe([("default", spans("api", "GET /", 5))], "spans-4-9")
    red.observe([("default", spans("api", "GET /", 5))], "spans-4-9")
    assert sink.last("traces_spanmetrics_calls_total", service="api") == 1


def test_a_resent_span_is_counted_once() -> None:
    """An exporter that timed out sends the same spans again in a new request (a new block):
    storage shows each span once, and so must the call counts."""
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock, recent_spans=4)
    sent = spans("api", "GET /", 5, 6)
    red.observe([("default", sent)], "spans-1-1")
    red.observe([("default", sent + spans("api", "GET /", 7))], "spans-2-1")
    labels = {"service": "api", "span_name": "GET /", "span_kind": "SPAN_KIND_SERVER", "status_code": "STATUS_CODE_OK"}
    assert sink.last("traces_spanmetrics_calls_total", **labels) == 3
    # The same ids in another project, or another trace, are other spans.
    red.observe([("other", sent)], "spans-3-1")
    assert sink.last("traces_spanmetrics_calls_total", project="other", **labels) == 2
    elsewhere = [{**s, "trace_id": "cd" * 16} for s in sent]
    red.observe([("default", elsewhere)], "spans-4-1")
    assert sink.last("traces_spanmetrics_calls_total", **labels) == 5
    # Memory stays bounded: ids older than two generations of ``recent_spans`` are forgotten.
    red.observe([("default", spans("api", "GET /", *[1] * 8))], "spans-5-1")
    red.observe([("default", sent)], "spans-6-1")
    assert sink.last("traces_spanmetrics_calls_total", **labels) == 15


def test_flush_writes_live_series_like_a_scrape() -> None:
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock)
    red.observe([("default", spans("api", "GET /", 5)), ("shop", spans("web", "GET /cart", 9))], "t1")
    clock.now += 15
    red.flush()
    calls = {dict(ls)["project"]: v for (n, ls), v in sink.samples.items() if n == "traces_spanmetrics_calls_total"}
    assert calls["default"][-1] == (int(clock.now * 1000), 1.0)
    assert calls["shop"][-1] == (int(clock.now * 1000), 1.0)
    assert sink.tokens[-1].startswith("red-flush-")
    clock.now += 7200  # an hour without spans: no longer written
    before = len(sink.tokens)
    red.flush()
    assert len(sink.tokens) == before


def test_span_names_beyond_the_series_limit_are_pooled() -> None:
    sink, clock = Sink(), Clock()
    red = SpanMetrics(sink, clock=clock, max_series=2)
    red.observe([("default", spans("api", "GET /a", 1) + spans("api", "GET /b", 1) + spans("api", "GET /c", 1)
                  + spans("api", "GET /d", 1))], "t")
    names = {dict(ls)["span_name"] for (n, ls) in sink.samples if n == "traces_spanmetrics_calls_total"}
    assert names == {"GET /a", "GET /b", "__other__"}
    assert sink.last("traces_spanmetrics_calls_total", span_name="__other__") == 2


def test_periodic_flush_thread_starts_and_stops() -> None:
    sink = Sink()
    red = SpanMetrics(sink)
    red.observe([("default", spans("api", "GET /", 5))], "t1")
    red.start(0.05)
    try:
        import time

        deadline = time.monotonic() + 5
        while not any(t.startswith("red-flush-") for t in sink.tokens) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        red.stop()
    assert any(t.startswith("red-flush-") for t in sink.tokens)
