"""RED metrics derived from spans, as the OpenTelemetry Collector's spanmetrics connector makes them.

Every stored span counts once in

* ``traces_spanmetrics_calls_total{service, span_name, span_kind, status_code}`` (a counter), and
* ``traces_spanmetrics_duration_seconds_bucket{..., le}`` with ``_sum`` and ``_count``
  (a cumulative histogram of the span's duration),

so request rate, error ratio and latency percentiles per service and operation are PromQL away,
and alert rules can use them like any scraped series::

    sum by (service) (rate(traces_spanmetrics_calls_total{status_code="error"}[5m]))
      / sum by (service) (rate(traces_spanmetrics_calls_total[5m]))
    histogram_quantile(0.95, sum by (le, service) (rate(traces_spanmetrics_duration_seconds_bucket[5m])))

The counters are cumulative per server process, exactly like an exporter's: they start at zero
when the process starts (a zero sample is written when a series first appears, so the first
increase is not lost to ``rate()``), and PromQL treats a restart as a counter reset. Like a
scraped exporter, every known series is also written every ``flush_interval_s`` while it keeps
changing or not, so ``rate()`` sees regular samples; a series with no span for an hour stops
being written (its last value stays, as a stale target's would until staleness).

A span counts once however often it arrives: a sender that re-sends a request after a timeout
is not a second call (spans are recognised by project, trace id and span id among the last
few hundred thousand).

Cardinality is bounded: a span name is a dimension, and instrumentations that name spans after
raw URLs would make a series per URL. Past ``max_series`` per project, new combinations are
counted under ``span_name="__other__"``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from stackwatch.model.spans import Span
from stackwatch.storage.metrics import MetricBatch

__all__ = ["DEFAULT_BUCKETS", "SpanMetrics"]

log = logging.getLogger("stackwatch.ingest")

#: Bucket bounds in seconds: the spanmetrics connector's defaults (2 ms ... 15 s).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
)

CALLS = "traces_spanmetrics_calls_total"
DURATION = "traces_spanmetrics_duration_seconds"
_IDLE_S = 3600.0
_OTHER = "__other__"


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Series:
    """One (service, span name, kind, status) combination: its cumulative state."""

    __slots__ = ("buckets", "calls", "created", "labels", "total_s", "touched")

    def __init__(self, labels: list[tuple[str, str]], n_buckets: int, now: float) -> None:
        self.labels = labels
        self.calls = 0
        self.total_s = 0.0
        self.buckets = [0] * (n_buckets + 1)  # per bucket (not cumulative); last is +Inf
        self.created = True
        self.touched = now


class SpanMetrics:
    """Aggregates spans into cumulative RED series and writes them through ``write``.

    ``write(project_batches, token)`` stores ``[(project, MetricBatch)]``; the runtime passes
    the metric store's writer. ``clock`` returns seconds since the epoch (tests drive it).
    """

    def __init__(
        self,
        write: Callable[[list[tuple[str, MetricBatch]], str], Any],
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_series: int = 10_000,
        recent_spans: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.write = write
        #: Hashes of the spans counted lately, in two generations of up to ``recent_spans``
        #: each (about 30 MB at the default): an exporter that timed out sends a request
        #: again seconds later, and storage shows its spans once (by trace and span id), so the
        #: counts must too. Hashes, not ids: Python's string hash is salted per process, so
        #: nobody can make two spans collide on purpose.
        self.recent_spans = recent_spans
        self._seen: set[int] = set()
        self._seen_before: set[int] = set()
        self.bounds = sorted(buckets)
        self.max_series = max_series
        self.clock = clock
        self._series: dict[str, dict[tuple[str, str, str, str], _Series]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushes = 0
        self._counted: deque[str] = deque(maxlen=64)

    def observe(self, batches: Sequence[tuple[str, Sequence[Span]]], token: str) -> None:
        """Count the spans of one stored block and write the series they changed.

        ``token`` is the block's deduplication token: a replayed block writes nothing twice.
        """
        now = self.clock()
        changed: dict[str, dict[int, _Series]] = {}
        with self._lock:
            if token in self._counted:
                return  # a block retried after its metrics write failed: counted already
            self._counted.append(token)
            for project, spans in batches:
                table = self._series.setdefault(project, {})
                touched = changed.setdefault(project, {})
                seen, before = self._seen, self._seen_before
                for span in spans:
                    ident = hash((project, span["trace_id"], span["span_id"]))
                    if ident in seen or ident in before:
                        continue
                    seen.add(ident)
                    if len(seen) >= self.recent_spans:
                        self._seen_before, self._seen = seen, set()
                        seen, before = self._seen, self._seen_before
                    key = (span["service"], span["name"], span["kind"], span["status_code"])
                    series = table.get(key)
                    if series is None:
                        if len(table) >= self.max_series:
                            key = (key[0], _OTHER, key[2], key[3])
                            series = table.get(key)
                        if series is None:
                            labels = [
                                ("service", key[0]),
                                ("span_name", key[1]),
                                ("span_kind", "SPAN_KIND_" + key[2].upper()),
                                ("status_code", "STATUS_CODE_" + key[3].upper()),
                            ]
                            series = table[key] = _Series(labels, len(self.bounds), now)
                    seconds = max(0, span["end_ns"] - span["start_ns"]) / 1e9
                    series.calls += 1
                    series.total_s += seconds
                    series.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
                    series.touched = now
                    touched[id(series)] = series
            out = [
                (project, self._batch(list(series.values()), now)) for project, series in changed.items() if series
            ]
        if out:
            self.write(out, f"{token}-red")

    def flush(self) -> None:
        """Write every series that changed within the last hour at the current time."""
        now = self.clock()
        with self._lock:
            self._flushes += 1
            out = []
            for project, table in self._series.items():
                live = [s for s in table.values() if now - s.touched < _IDLE_S]
                if live:
                    out.append((project, self._batch(live, now)))
        if out:
            # Flushes are not in the WAL: a unique token, as nothing replays them.
            self.write(out, f"red-flush-{int(now * 1000)}-{self._flushes}")

    def _batch(self, series_list: Sequence[_Series], now: float) -> MetricBatch:
        batch = MetricBatch()
        ts = int(now * 1000)
        for s in series_list:
            stamps = [ts]
            if s.created:
                # The series did not exist before: a zero just before its first value is what
                # a scrape would have seen, and lets rate() count the first calls.
                stamps = [ts - 1, ts]
                s.created = False
            for t in stamps:
                zero = t != ts
                batch.add([("__name__", CALLS), *s.labels], t, 0.0 if zero else float(s.calls))
                batch.add([("__name__", DURATION + "_count"), *s.labels], t, 0.0 if zero else float(s.calls))
                batch.add([("__name__", DURATION + "_sum"), *s.labels], t, 0.0 if zero else s.total_s)
                cumulative = 0
                for bound, n in zip([*self.bounds, float("inf")], s.buckets, strict=True):
                    cumulative += n
                    batch.add(
                        [("__name__", DURATION + "_bucket"), *s.labels, ("le", _le(bound))],
                        t,
                        0.0 if zero else float(cumulative),
                    )
        batch.add_metadata(CALLS, "counter", "Spans counted, by service, span name, kind and status.")
        batch.add_metadata(DURATION, "histogram", "Span durations, by service, span name, kind and status.", "seconds")
        return batch

    # -- periodic flush ----------------------------------------------------------------------

    def start(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.flush()
                except Exception:  # storage down: the next flush writes the same values
                    log.exception("span metrics flush failed")

        self._thread = threading.Thread(target=run, name="spanmetrics-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
