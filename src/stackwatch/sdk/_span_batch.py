"""The span processor that batches finished spans for an exporter (the server's, or one added
with :func:`stackwatch.sdk.tracing.add_span_exporter`).

It does what OpenTelemetry's ``BatchSpanProcessor`` does, with less work on the request's
thread: ``on_end`` appends the span to a deque and, once per full batch, sets an event; a
daemon thread exports batches when one is full or every ``schedule_delay`` otherwise.
``BatchSpanProcessor`` also checks the process id, its shutdown flag and its self-metrics on
every span, and logs one warning *per dropped span* when the queue is full (which, under the
very load that fills the queue, makes it worse); here a full queue drops the new span, counts
it (:attr:`SpanBatcher.dropped`) and logs once per overflow.

Settings follow OpenTelemetry's variables: ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048),
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512), ``OTEL_BSP_SCHEDULE_DELAY`` (5000 ms).
Fork safety is the caller's (:class:`stackwatch.sdk.tracing._ForkSafeSpanProcessor` builds a
new batcher in each child); a batcher copied into a child never exports the parent's spans.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any

__all__ = ["SpanBatcher"]

logger = logging.getLogger("stackwatch.sdk.tracing")


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        logger.warning("%s is not an integer; using %d", name, default)
        return default
    return value if value > 0 else default


class SpanBatcher:
    """A span processor: sampled finished spans are queued and exported in batches by a thread."""

    #: Hooks that do nothing here (the provider's processor list skips them).
    passive_hooks = frozenset({"on_start", "_on_ending"})

    def __init__(self, exporter: Any, *, max_queue_size: int | None = None, max_batch_size: int | None = None,
                 schedule_delay_millis: int | None = None) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.max_batch_size = min(max_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
                                  self.max_queue_size)
        self.schedule_delay = (schedule_delay_millis or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000)) / 1000
        #: Spans dropped because the queue was full (the exporter could not keep up).
        self.dropped = 0
        self._overflowing = False
        self._queue: collections.deque[Any] = collections.deque()
        self._wakeup = threading.Event()
        self._export_lock = threading.Lock()
        self._shutdown = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="stackwatch-span-export", daemon=True)
        self._thread.start()

    # -- span processor interface -----------------------------------------------------------

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        context = getattr(span, "_context", None)  # an SDK span's own field; else ask it
        if context is None:
            context = span.get_span_context()
        if not context[3] & 1 or self._shutdown:  # context[3]: its trace flags; 1: SAMPLED
            return
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                logger.warning("span export queue full (%d spans): new spans are dropped until the exporter "
                               "catches up", self.max_queue_size)
            return
        queue.append(span)
        # The queue grows one span at a time, so it passes through exactly one batch size on its
        # way up: one wake-up per batch, not one check of the event per span.
        if len(queue) == self.max_batch_size:
            self._wakeup.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every queued span now (in the calling thread); False if that took too long.

        In a forked child (this object copied from the parent, whose thread it does not have)
        the queued spans are the parent's, which the parent exports: they are dropped here.
        """
        if os.getpid() != self._pid:
            self._queue.clear()
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._export_lock.acquire(timeout=max(timeout_millis / 1000, 0)):
            return False
        try:
            while self._queue:
                if time.monotonic() > deadline:
                    return False
                self._export_batch()
        finally:
            self._export_lock.release()
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> None:
        """Stop the thread, export what is queued, shut the exporter down."""
        if self._shutdown:
            return
        self._shutdown = True
        self._wakeup.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_millis / 1000)
        self.force_flush(timeout_millis)
        try:
            self.exporter.shutdown()
        except Exception:
            logger.debug("span exporter shutdown failed", exc_info=True)

    # -- the export thread --------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while not self._shutdown:
            woken = self._wakeup.wait(self.schedule_delay)
            # Cleared before draining: a batch that fills up while this one exports wakes us again.
            self._wakeup.clear()
            if self._shutdown:
                break
            with self._export_lock:
                if woken:
                    while len(queue) >= self.max_batch_size:
                        self._export_batch()
                else:
                    while queue:
                        self._export_batch()

    def _export_batch(self) -> None:
        """Export up to one batch from the queue (oldest first); the caller holds the lock."""
        from opentelemetry import context

        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
        if not batch:
            return
        # The exporter's own HTTP request must not be traced (it would feed the queue it drains).
        token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self.exporter.export(batch)
        except Exception:
            logger.warning("span export failed", exc_info=True)
        finally:
            context.detach(token)
        if self._overflowing and len(queue) < self.max_queue_size // 2:
            self._overflowing = False
