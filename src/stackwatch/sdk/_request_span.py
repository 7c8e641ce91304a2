"""The web middleware's server spans: OpenTelemetry SDK spans, started and ended cheaply.

``Tracer.start_span`` serves every kind of caller: it consults the sampler, validates each
attribute, builds the span through three constructors (and a ``BoundedAttributes``, two
``BoundedList``, a ``SpanContext``), and ``Span.end`` hands the processors a ``ReadableSpan``
copy. For the one span a web request gets, measured in ``bench/sdk_web_overhead.py``, that was
about 30 us per request: more than the rest of the middleware together. Most of the work is
known in advance for a request span:

- the attributes are strings the middleware has just read, so there is nothing to clean;
- with the default parent-based always-on sampler the decision follows from the parent's
  flags (an unsampled caller gets a non-recording span, exactly as from the SDK);
- the fields every span shares (resource, limits, processor, scope, ...) are copied from a
  template span that the SDK's own constructor made once;
- events and links lists are allocated on first use only (most request spans have none);
- at the end the processors get the span itself: once ended, every mutator of an SDK span
  refuses to change it, so the ``ReadableSpan`` copy protected nothing;
- the spans of one tracer share one (reentrant) lock instead of a lock each: the lock guards a
  few field writes, and a finished span waits in the export queue for its batch, long enough
  for the garbage collector to move it to its oldest generation, where every object it holds
  that the collector tracks (a lock is one) adds to the full collections that follow
  (measured through Flask's test client: 2 tracked objects per span instead of 3, collection
  3.1 instead of 5.5 us a request).

The span is an instance of a subclass of the SDK's ``Span``, so processors, exporters and user
code (``trace.get_current_span().set_attribute(...)``, child spans of other instrumentations,
``traceparent`` propagation) see an ordinary SDK span. Anything unusual (another tracer class, a
non-default sampler or id generator, the SDK's self-metrics, attribute length limits, an SDK
whose span has other fields than the ones copied here) makes :meth:`RequestSpanStarter.for_tracer`
return None, and the middleware uses the tracer's general path.

This module imports the OpenTelemetry SDK: it is imported only once tracing is set up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span, Tracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)

__all__ = ["RequestSpan", "RequestSpanStarter"]

logger = logging.getLogger("opentelemetry.sdk.trace")  # the SDK's warnings come from there too

#: The fields an SDK span holds in the versions this was built against. A span with other
#: fields (a newer SDK) turns the fast path off rather than share a mutable field between spans.
_SPAN_FIELDS = frozenset({
    "_name", "_context", "_kind", "_instrumentation_info", "_instrumentation_scope", "_parent",
    "_start_time", "_end_time", "_attributes", "_events", "_links", "_resource", "_status",
    "_sampler", "_trace_config", "_record_exception", "_set_status_on_exception", "_span_processor",
    "_limits", "_lock", "_record_end_metrics",
})

#: Shared stand-in for a span's events and links until it gets its first one (never appended to).
_NO_ITEMS = BoundedList(0)
#: The fields a request span sets for itself; the others are its class's (see for_tracer).
_PER_SPAN_FIELDS = ("_name", "_context", "_parent", "_start_time", "_attributes")
_ERROR = Status(StatusCode.ERROR)
_UNSET = StatusCode.UNSET
_ROUTE = "http.route"
_STATUS_CODE = "http.response.status_code"

_new_object = object.__new__
_new_tuple = tuple.__new__
_time_ns = time.time_ns
_bits = random.getrandbits


class RequestSpan(Span):
    """An SDK ``Span`` that keeps the middleware's attributes in a plain dict until someone else
    sets one (then it becomes the SDK's validating ``BoundedAttributes``), allocates its event
    and link lists on first use, ends in one lock acquisition (:meth:`finish_request`) and hands
    the processors itself at the end. Fewer objects per span also means less for the garbage
    collector: spans wait in the export queue long enough to be promoted."""

    def _bounded_attributes(self) -> Any:
        """The attributes as ``BoundedAttributes`` (converted once, under the span's lock)."""
        attributes = self._attributes
        if type(attributes) is dict:
            with self._lock:
                attributes = self._attributes
                if type(attributes) is dict:
                    bounded = BoundedAttributes(self._limits.max_span_attributes, None, immutable=False,
                                                max_value_len=self._limits.max_span_attribute_length)
                    if self._limits.max_span_attributes is None or len(attributes) <= bounded.maxlen:
                        bounded._dict = attributes  # written by the middleware: already clean
                    else:
                        bounded._set_items(attributes)
                    attributes = self._attributes = bounded
        return attributes

    def set_attribute(self, key: str, value: Any) -> None:
        self._bounded_attributes()
        super().set_attribute(key, value)

    def set_attributes(self, attributes: Any) -> None:
        self._bounded_attributes()
        super().set_attributes(attributes)

    def _add_event(self, event: Any) -> None:
        if self._events is _NO_ITEMS:
            with self._lock:
                if self._events is _NO_ITEMS:
                    self._events = self._new_events()
        super()._add_event(event)

    def _add_link(self, link: Any) -> None:
        if self._links is _NO_ITEMS:
            with self._lock:
                if self._links is _NO_ITEMS:
                    self._links = BoundedList(self._limits.max_links)
        super()._add_link(link)

    def finish_request(self, method: str, route: str | None, status_code: int) -> None:
        """Rename to ``METHOD route`` and set ``http.route`` (when the route is known), set
        ``http.response.status_code``, mark a 5xx as an error (unless the app set the status
        to OK) and end the span."""
        if self._end_time is not None:
            logger.warning("Calling end() on an ended span.")
            return
        if type(self._attributes) is not dict:
            # The app added attributes: BoundedAttributes applies its limits to ours too.
            if route is not None:
                self.set_attribute(_ROUTE, route)
            self.set_attribute(_STATUS_CODE, status_code)
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            if route is not None:
                self._name = f"{method} {route}"
            values = self._attributes
            if type(values) is dict:  # else set above
                if route is not None:
                    values.pop(_ROUTE, None)
                    values[_ROUTE] = route
                values.pop(_STATUS_CODE, None)
                values[_STATUS_CODE] = status_code
            if status_code >= 500 and self._status.status_code is _UNSET:  # OK, or an error that says what
                self._status = _ERROR
            self._end_time = _time_ns()
            if type(values) is not dict:
                values._immutable = True
        processor = self._span_processor
        endings = getattr(processor, "_endings", None)
        if endings is None:
            processor._on_ending(self)
            processor.on_end(self)
            return
        # The SDK's processor list (tracing._span_processors): its hooks, without its calls.
        for hook in endings:
            hook(self)
        for hook in processor._ends:
            hook(self)

    def end(self, end_time: int | None = None) -> None:
        """As the SDK's ``Span.end``, except that the processors get the span itself."""
        with self._lock:
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else _time_ns()
            if type(self._attributes) is not dict:
                self._attributes._immutable = True
        processor = self._span_processor
        processor._on_ending(self)
        processor.on_end(self)


class RequestSpanStarter:
    """Starts request spans for one SDK tracer (see the module docstring); build it with
    :meth:`for_tracer`. ``start_span`` has the tracer's signature for the arguments the
    middleware uses; :meth:`start_server_span` skips the parent lookup the caller already did."""

    def __init__(self, tracer: Tracer, span_class: type[RequestSpan]) -> None:
        self.tracer = tracer
        self._span_class = span_class
        self._max_attributes = tracer._span_limits.max_span_attributes
        self._processor = tracer.span_processor
        self._config = tracer._tracer_config
        self._root_flags = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
        self._sampled_flags = TraceFlags(TraceFlags.SAMPLED)

    @classmethod
    def for_tracer(cls, tracer: Any) -> RequestSpanStarter | None:
        """A starter for ``tracer``, or None when its spans need the general path."""
        sampler = getattr(tracer, "sampler", None)
        if (
            type(tracer) is not Tracer
            or type(sampler) is not ParentBased
            or (sampler._root, sampler._remote_parent_sampled, sampler._remote_parent_not_sampled,
                sampler._local_parent_sampled, sampler._local_parent_not_sampled)
            != (ALWAYS_ON, ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF)
            or type(tracer.id_generator) is not RandomIdGenerator
            or not isinstance(tracer._tracer_metrics, NoOpTracerMetrics)
            or tracer._span_limits.max_span_attribute_length is not None
        ):
            return None
        model = RequestSpan(
            name="model", context=INVALID_SPAN_CONTEXT, parent=None, sampler=sampler,
            resource=tracer.resource, attributes=None, span_processor=tracer.span_processor,
            kind=SpanKind.SERVER, instrumentation_info=tracer.instrumentation_info,
            limits=tracer._span_limits, instrumentation_scope=tracer._instrumentation_scope,
            record_end_metrics=None,
        )
        fields = dict(vars(model))
        if set(fields) != _SPAN_FIELDS:
            return None
        # What every request span of this tracer shares becomes a class attribute of a
        # subclass made for the tracer: a span then stores only its own five fields. The SDK
        # only ever reads these (or assigns them, which creates the span's own attribute).
        for per_span in _PER_SPAN_FIELDS:
            del fields[per_span]
        fields["_events"] = fields["_links"] = _NO_ITEMS
        # One lock for all of them (see the module docstring); reentrant, so no code path can
        # deadlock on it by taking it for two spans, or twice for one.
        fields["_lock"] = threading.RLock()
        fields["__slots__"] = ()
        span_class = type("RequestSpan", (RequestSpan,), fields)
        starter = cls(tracer, span_class)
        # SpanContext is built as the tuple its constructor makes; check the layout once.
        probe = starter._span_context(0x1234, 0x5678, starter._root_flags, None)
        if probe != SpanContext(0x1234, 0x5678, False, starter._root_flags, None) or not probe.is_valid:
            return None
        return starter

    @staticmethod
    def _span_context(trace_id: int, span_id: int, flags: TraceFlags, trace_state: Any) -> SpanContext:
        return _new_tuple(SpanContext, (trace_id, span_id, False, flags,  # type: ignore[no-any-return]
                                        DEFAULT_TRACE_STATE if trace_state is None else trace_state, True))

    def start_span(self, name: str, context: Any = None, kind: Any = SpanKind.SERVER,
                   attributes: dict[str, str] | None = None) -> Any:
        """A started SERVER span (``kind`` is accepted for the tracer's signature), child of
        the span in ``context`` (default: the current one) when it is valid."""
        return self.start_server_span(name, get_current_span(context).get_span_context(), context, attributes)

    def start_server_span(self, name: str, parent: SpanContext | None, context: Any,
                          attributes: dict[str, str] | None) -> Any:
        """As :meth:`start_span` with the parent's span context already looked up.

        ``attributes`` must be a fresh dict of str values: the span keeps it as it is.
        """
        if not self._config.is_enabled:
            return self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = _bits(128) or _bits(128) or 1
            flags, trace_state = self._root_flags, None
        else:
            trace_id, trace_state = parent.trace_id, parent.trace_state
            parent_flags = parent.trace_flags
            if not parent_flags.sampled:
                # Parent-based sampling: the children of an unsampled span are not recorded.
                return NonRecordingSpan(self._non_recording_context(trace_id, parent_flags, trace_state))
            flags = self._root_flags if parent_flags.random_trace_id else self._sampled_flags
        if attributes is None:
            attributes = {}
        elif self._max_attributes is not None and len(attributes) > self._max_attributes:
            attributes = dict(list(attributes.items())[-self._max_attributes:])
        span = _new_object(self._span_class)
        span._name = name
        span._context = self._span_context(trace_id, _bits(64) or 1, flags, trace_state)
        span._parent = parent
        span._start_time = _time_ns()
        span._attributes = attributes
        processor = self._processor
        starts = getattr(processor, "_starts", None)
        if starts is None:
            processor.on_start(span, parent_context=context)
        else:  # the SDK's processor list: usually no processor wants on_start
            for hook in starts:
                hook(span, parent_context=context)
        return span

    @staticmethod
    def _non_recording_context(trace_id: int, parent_flags: TraceFlags, trace_state: Any) -> SpanContext:
        flags = TraceFlags(parent_flags & TraceFlags.RANDOM_TRACE_ID)
        return SpanContext(trace_id, _bits(64) or 1, False, flags, trace_state)
