"""The web middleware's cheap request spans, the SDK's batching span processor and the
provider's processor list (stackwatch.sdk._request_span, _span_batch, tracing._span_processors).

All in-process, on providers of their own (never the global one): a request span must be, for
exporters and user code, the very span ``Tracer.start_span`` would have made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from stackwatch.sdk import tracing
from stackwatch.sdk._request_span import RequestSpan, RequestSpanStarter
from stackwatch.sdk._span_batch import SpanBatcher

ATTRIBUTES = {"http.request.method": "GET", "url.path": "/api/leads/42", "url.scheme": "http",
              "user_agent.original": "curl/8.5"}


class Traced:
    """A provider of its own with the SDK's processor list and an in-memory exporter."""

    def __init__(self, **provider_kwargs: Any) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "crm"}),
                                       active_span_processor=tracing._span_processors(), **provider_kwargs)
        self.memory = InMemorySpanExporter()
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("stackwatch.sdk.web", "1.0")
        starter = RequestSpanStarter.for_tracer(self.tracer)
        assert starter is not None
        self.starter = starter

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.memory.get_finished_spans()


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.provider.shutdown()


def _encoded(span: ReadableSpan) -> Any:
    """The span as the OTLP exporter sends it, minus what differs between any two spans."""
    message = encode_spans([span])
    proto = message.resource_spans[0].scope_spans[0].spans[0]
    for field in ("trace_id", "span_id", "parent_span_id", "start_time_unix_nano", "end_time_unix_nano"):
        proto.ClearField(field)
    resource = message.resource_spans[0].resource
    scope = message.resource_spans[0].scope_spans[0].scope
    return proto.SerializeToString(deterministic=True), resource, scope


def test_request_span_is_what_the_sdk_tracer_makes(traced: Traced) -> None:
    ours = traced.starter.start_span("GET", attributes=dict(ATTRIBUTES))
    assert isinstance(ours, Span) and isinstance(ours, RequestSpan)
    ours.finish_request("GET", "/api/leads/{id}", 200)

    theirs = traced.tracer.start_span("GET", kind=SpanKind.SERVER, attributes=dict(ATTRIBUTES))
    theirs.update_name("GET /api/leads/{id}")
    theirs.set_attribute("http.route", "/api/leads/{id}")
    theirs.set_attribute("http.response.status_code", 200)
    theirs.end()

    a, b = traced.finished()
    assert _encoded(a) == _encoded(b)
    assert a.name == "GET /api/leads/{id}" and a.kind is SpanKind.SERVER
    assert dict(a.attributes or {}) == {**ATTRIBUTES, "http.route": "/api/leads/{id}", "http.response.status_code": 200}
    assert a.context.trace_flags == b.context.trace_flags and a.context.trace_flags.sampled
    assert a.context.is_valid and not a.context.is_remote and a.parent is None
    assert a.start_time is not None and a.end_time is not None and a.start_time <= a.end_time
    assert a.resource.attributes["service.name"] == "crm"
    assert a.instrumentation_scope is not None and a.instrumentation_scope.name == "stackwatch.sdk.web"
    assert a.dropped_attributes == a.dropped_events == a.dropped_links == 0


def test_server_error_unknown_route_and_a_status_the_app_set(traced: Traced) -> None:
    failed = traced.starter.start_span("POST", attributes=dict(ATTRIBUTES))
    failed.finish_request("POST", None, 503)
    kept = traced.starter.start_span("GET", attributes=dict(ATTRIBUTES))
    kept.set_status(StatusCode.OK)
    kept.finish_request("GET", "/health", 500)
    first, second = traced.finished()
    assert first.name == "POST" and "http.route" not in (first.attributes or {})
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None and first.attributes["http.response.status_code"] == 503
    assert second.status.status_code is StatusCode.OK  # set by the app: the SDK does not override OK


def _user_code(span: Any, tracer: Any) -> int:
    """What app code does with the current span; returns the id its child's parent has."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        current = trace.get_current_span()
        assert current is span
        current.set_attribute("lead.id", 42)
        current.set_attribute("bad", object())  # the SDK's validation decides what becomes of it
        current.set_attributes({"plan": "pro"})
        current.add_event("cache miss", {"key": "lead:42"})
        current.record_exception(ValueError("amount exceeds the card limit"))
        current.add_link(SpanContext(0x1, 0x2, False, TraceFlags(1)))
        with tracer.start_as_current_span("load lead") as child:
            return int(child.parent.span_id)
    finally:
        otel_context.detach(token)


def test_children_user_attributes_events_and_links_as_on_an_sdk_span(traced: Traced) -> None:
    span = traced.starter.start_span("GET", attributes=dict(ATTRIBUTES))
    assert _user_code(span, traced.tracer) == span.get_span_context().span_id
    span.finish_request("GET", "/api/leads/{id}", 200)
    span.set_attribute("after", "end")  # ignored: the span has ended
    span.finish_request("GET", "/other", 201)  # ignored too

    theirs = traced.tracer.start_span("GET", kind=SpanKind.SERVER, attributes=dict(ATTRIBUTES))
    assert _user_code(theirs, traced.tracer) == theirs.get_span_context().span_id
    theirs.update_name("GET /api/leads/{id}")
    theirs.set_attribute("http.route", "/api/leads/{id}")
    theirs.set_attribute("http.response.status_code", 200)
    theirs.end()

    _child, ours, _child2, reference = traced.finished()
    assert ours.name == reference.name == "GET /api/leads/{id}"
    assert dict(ours.attributes or {}) == dict(reference.attributes or {})
    assert (ours.attributes or {})["lead.id"] == 42 and "after" not in (ours.attributes or {})
    assert [(e.name, dict(e.attributes or {})) for e in ours.events] == [
        (e.name, dict(e.attributes or {})) for e in reference.events]
    assert [e.name for e in ours.events] == ["cache miss", "exception"]
    assert [link.context.span_id for link in ours.links] == [link.context.span_id for link in reference.links] == [2]
    # Another request span's event list is its own.
    other = traced.starter.start_span("GET", attributes=dict(ATTRIBUTES))
    other.finish_request("GET", "/x", 200)
    assert traced.finished()[-1].events == () and traced.finished()[-1].links == ()


def test_caller_trace_is_continued_and_an_unsampled_caller_is_respected(traced: Traced) -> None:
    sampled = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1))
    parent = trace.set_span_in_context(NonRecordingSpan(sampled))
    span = traced.starter.start_span("GET", context=parent, attributes=dict(ATTRIBUTES))
    span.finish_request("GET", "/api/leads/{id}", 200)
    (finished,) = traced.finished()
    assert finished.context.trace_id == sampled.trace_id
    assert finished.parent is not None and finished.parent.span_id == sampled.span_id and finished.parent.is_remote

    unsampled = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0))
    quiet = traced.starter.start_span("GET", context=trace.set_span_in_context(NonRecordingSpan(unsampled)),
                                      attributes=dict(ATTRIBUTES))
    assert not quiet.is_recording() and not quiet.get_span_context().trace_flags.sampled
    assert quiet.get_span_context().trace_id == unsampled.trace_id
    assert quiet.get_span_context().span_id != unsampled.span_id
    # What the SDK tracer does with the same parent.
    theirs = traced.tracer.start_span("GET", context=trace.set_span_in_context(NonRecordingSpan(unsampled)))
    assert type(quiet) is type(theirs) and quiet.get_span_context().trace_flags == theirs.get_span_context().trace_flags
    assert len(traced.finished()) == 1


def test_other_samplers_and_tracers_keep_the_general_path() -> None:
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    assert RequestSpanStarter.for_tracer(provider.get_tracer("x")) is None
    assert RequestSpanStarter.for_tracer(trace.NoOpTracer()) is None
    assert RequestSpanStarter.for_tracer(TracerProvider().get_tracer("x")) is not None


def test_processor_list_calls_only_active_hooks_and_follows_replacement() -> None:
    calls: list[str] = []

    class Recording(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            calls.append("start")

        def _on_ending(self, span: Any) -> None:
            calls.append("ending")

        def on_end(self, span: ReadableSpan) -> None:
            calls.append("end")

    processors = tracing._span_processors()
    provider = TracerProvider(active_span_processor=processors)
    exported: list[str] = []

    class Collect(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exported.extend(s.name for s in spans)
            return SpanExportResult.SUCCESS

    fork_safe = tracing._ForkSafeSpanProcessor(tracing._NoopSpanProcessor)
    provider.add_span_processor(fork_safe)  # type: ignore[arg-type]
    provider.add_span_processor(Recording())
    assert len(processors._starts) == 1 and len(processors._ends) == 1  # the no-op one is skipped
    starter = RequestSpanStarter.for_tracer(provider.get_tracer("web"))
    assert starter is not None
    starter.start_span("GET", attributes={}).finish_request("GET", "/a", 200)
    assert calls == ["start", "ending", "end"]
    fork_safe.replace(lambda: SpanBatcher(Collect()))  # e.g. a server configured later
    assert len(processors._ends) == 2
    starter.start_span("GET", attributes={}).finish_request("GET", "/b", 200)
    assert provider.force_flush(5000)
    assert exported == ["GET /b"]
    provider.shutdown()


class CountingExporter(SpanExporter):
    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[int] = []
        self.names: list[str] = []
        self.fail_first = fail_first
        self.shut = False
        self.released = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("exporter bug")
        self.batches.append(len(spans))
        self.names.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True


def _ended_spans(provider: TracerProvider, count: int, prefix: str = "s") -> None:
    tracer = provider.get_tracer("t")
    for i in range(count):
        tracer.start_span(f"{prefix}{i}").end()


def test_batcher_exports_full_batches_from_its_thread_and_the_rest_on_flush() -> None:
    exporter = CountingExporter()
    batcher = SpanBatcher(exporter, max_queue_size=100, max_batch_size=10, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(batcher)  # type: ignore[arg-type]
    _ended_spans(provider, 25)
    deadline = time.monotonic() + 5
    while sum(exporter.batches) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exporter.batches[:2] == [10, 10]  # woken by full batches, not by the 60 s timer
    assert batcher.force_flush(5000)
    assert exporter.names == [f"s{i}" for i in range(25)] and batcher.dropped == 0
    provider.shutdown()
    assert exporter.shut


def test_batcher_timer_unsampled_spans_overflow_and_exporter_failures(caplog: pytest.LogCaptureFixture) -> None:
    exporter = CountingExporter(fail_first=True)
    batcher = SpanBatcher(exporter, max_queue_size=5, max_batch_size=5, schedule_delay_millis=50)
    provider = TracerProvider()
    provider.add_span_processor(batcher)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="stackwatch.sdk.tracing"):
        batcher._export_lock.acquire()  # hold the export thread back: the queue fills up
        try:
            _ended_spans(provider, 9, "over")
        finally:
            batcher._export_lock.release()
        assert batcher.dropped == 4
        assert sum("queue full" in r.getMessage() for r in caplog.records) == 1  # once, not per span
        assert batcher.force_flush(5000)  # the first export raises: logged, the thread lives on
        assert any("span export failed" in r.getMessage() for r in caplog.records)
    unsampled = NonRecordingSpan(SpanContext(1, 2, False, TraceFlags(0)))
    batcher.on_end(unsampled)  # type: ignore[arg-type]
    _ended_spans(provider, 2, "timer")
    deadline = time.monotonic() + 5
    while exporter.names[-2:] != ["timer0", "timer1"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exporter.names[-2:] == ["timer0", "timer1"]  # exported by the schedule delay alone
    provider.shutdown()
    batcher.on_end(unsampled)  # type: ignore[arg-type]  # after shutdown: ignored, no error


def test_add_span_exporter_needs_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_state", None)
    assert tracing.add_span_exporter(CountingExporter()) is False


def test_a_batcher_copied_into_a_forked_child_drops_the_parents_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = CountingExporter()
    batcher = SpanBatcher(exporter, max_queue_size=100, max_batch_size=50, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(batcher)  # type: ignore[arg-type]
    _ended_spans(provider, 3)
    real_pid = batcher._pid
    monkeypatch.setattr(batcher, "_pid", real_pid + 1)  # as seen from a child: another process's copy
    batcher.shutdown(0)
    assert exporter.names == [] and exporter.shut  # the parent exports those; the child's copy closes
    monkeypatch.setattr(batcher, "_pid", real_pid)


def test_spans_of_many_threads_at_once_keep_their_own_data(traced: Traced) -> None:
    """Request spans of one tracer share a lock (fewer objects for the garbage collector to
    track while they wait for export): spans started, changed and ended from many threads at
    once must still each keep exactly their own name, attributes, events and status."""
    threads, per_thread = 8, 300
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                span = traced.starter.start_span("GET", attributes={**ATTRIBUTES, "url.path": f"/t{n}/{i}"})
                span.set_attribute("app.thread", n)
                span.add_event("step", {"i": i})
                if i % 3 == 0:
                    span.record_exception(ValueError(f"{n}-{i}"))
                span.finish_request("GET", f"/t{n}/{{i}}", 500 if i % 3 == 0 else 200)
                span.set_attribute("after.end", True)  # refused: the span has ended
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in workers), "a span operation blocked"
    assert not failures
    spans = traced.finished()
    assert len(spans) == threads * per_thread
    for span in spans:
        thread_part, index_part = str(span.attributes["url.path"]).split("/")[1:]
        n, i = int(thread_part[1:]), int(index_part)
        assert span.name == f"GET /t{n}/{{i}}"
        assert span.attributes["app.thread"] == n and "after.end" not in span.attributes
        assert span.events[0].name == "step" and span.events[0].attributes["i"] == i
        error = i % 3 == 0
        assert span.attributes["http.response.status_code"] == (500 if error else 200)
        assert (span.status.status_code is StatusCode.ERROR) == error
        assert (len(span.events) == 2 and span.events[1].attributes["exception.message"] == f"{n}-{i}") == error
