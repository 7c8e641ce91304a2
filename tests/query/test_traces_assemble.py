"""A trace's spans as the waterfall shows them: tree order, depth, offsets, self time, breakdown."""

from __future__ import annotations

from stackwatch.model.spans import make_span
from stackwatch.query.traces import _covered, assemble_trace

T = "ab" * 16
MS = 1_000_000
T0 = 1_767_225_600 * 10**9


def span(sid: str, parent: str, name: str, start_ms: float, end_ms: float, service: str = "api", **kw: object) -> dict:
    return make_span(T, sid * 16, name, T0 + int(start_ms * MS), T0 + int(end_ms * MS),
                     parent_span_id=parent * 16 if parent else "", service=service, **kw)  # type: ignore[arg-type]


def test_guide_enrichment_trace_finds_the_slow_dependency() -> None:
    """The guide's example: a request enqueues a Celery job whose Apollo call is the bottleneck."""
    rows = [
        span("6", "4", "NeverBounce: verify_emails", 1060, 1660, "worker"),
        span("1", "", "POST /api/applications", 0, 250),
        span("2", "1", "INSERT INTO applications", 10, 15),
        span("3", "1", "enrich_application.delay()", 20, 21),
        span("4", "3", "enrich_application", 250, 1700, "worker"),
        span("5", "4", "Apollo API: search_people", 255, 1055, "worker"),
        span("7", "4", "INSERT INTO contacts", 1665, 1675, "worker"),
    ]
    spans, summary = assemble_trace(T, rows)
    assert [(s["name"], s["depth"]) for s in spans] == [
        ("POST /api/applications", 0),
        ("INSERT INTO applications", 1),
        ("enrich_application.delay()", 1),
        ("enrich_application", 2),
        ("Apollo API: search_people", 3),
        ("NeverBounce: verify_emails", 3),
        ("INSERT INTO contacts", 3),
    ]
    by_name = {s["name"]: s for s in spans}
    assert by_name["enrich_application"]["offset_ms"] == 250.0
    assert by_name["enrich_application"]["duration_ms"] == 1450.0
    # The task waits on its three calls: 1450 - (800 + 600 + 10) ms of its own.
    assert by_name["enrich_application"]["self_time_ms"] == 40.0
    # A child that runs after its parent ended (a queued job) takes none of the parent's time.
    assert by_name["enrich_application.delay()"]["self_time_ms"] == 1.0
    assert by_name["POST /api/applications"]["self_time_ms"] == 250.0 - 5.0 - 1.0
    top = summary["breakdown"][0]
    assert (top["service"], top["name"]) == ("worker", "Apollo API: search_people")
    assert top["share"] == round(800 / 1700, 4)
    assert summary["duration_ms"] == 1700.0 and summary["span_count"] == 7
    assert summary["root_name"] == "POST /api/applications" and summary["services"] == ["api", "worker"]
    assert summary["start"] == "2026-01-01T00:00:00.000000000Z"


def test_orphans_cycles_and_errors() -> None:
    rows = [
        span("1", "", "root", 0, 100),
        span("2", "9", "lost parent", 50, 60, status_code="error"),
        span("3", "4", "cycle a", 10, 20),
        span("4", "3", "cycle b", 10, 20),
        span("5", "5", "own parent", 30, 40),
    ]
    spans, summary = assemble_trace(T, rows)
    assert sorted(s["name"] for s in spans) == sorted(r["name"] for r in rows)  # nothing lost, nothing twice
    lost = next(s for s in spans if s["name"] == "lost parent")
    assert lost["orphan"] is True and lost["depth"] == 0
    assert spans[0]["name"] == "root" and spans[0]["orphan"] is False
    assert summary["error_count"] == 1


def test_covered_merges_overlapping_children() -> None:
    assert _covered([(0, 10), (5, 15), (20, 30)], 0, 100) == 25
    assert _covered([(-10, 5), (95, 200)], 0, 100) == 10
    assert _covered([], 0, 100) == 0
    assert _covered([(50, 40)], 0, 100) == 0


def test_empty_trace() -> None:
    assert assemble_trace(T, []) == ([], {})


def test_deep_trace_does_not_exhaust_the_stack() -> None:
    rows = [make_span(T, f"{i + 1:016x}", f"f{i}", T0 + i, T0 + 10_000 - i,
                      parent_span_id=f"{i:016x}" if i else "") for i in range(5000)]
    spans, _ = assemble_trace(T, rows)
    assert spans[-1]["depth"] == 4999
