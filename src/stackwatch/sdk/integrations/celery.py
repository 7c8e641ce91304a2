"""Celery: task counts, durations, failures, retries, queue wait and depth, beat heartbeats.

``instrument_celery(app, config)`` connects to Celery's signals, in whichever process imports
the app (the web app that sends tasks, the worker, beat), so call it next to where the Celery
app is created. Series:

- ``celery_tasks_total{task,state}`` (state: ``success``, ``failure``, ``retry``, ...) and
  ``celery_task_duration_seconds{task}`` (time in the task body);
- ``celery_task_failures_total{task,exception}`` and ``celery_task_retries_total{task}``;
- ``celery_task_queue_wait_seconds{task}``: from publish (a ``stackwatch_sent_at`` header
  added when the message is sent) to the start of the run, not counting a requested ETA or
  countdown;
- ``celery_queue_length{queue}``: ready messages per queue for Redis brokers (``LLEN`` of
  the queue key and its priority keys), sampled by the worker every ``queue_depth_interval``
  seconds;
- ``celery_beat_last_run_timestamp_seconds{task}``: when a task sent by beat last finished
  successfully (a heartbeat: alert when ``time() - it`` exceeds the schedule), and
  ``celery_beat_last_sent_timestamp_seconds{task}`` in the beat process.

Each task run also binds ``task_id``/``task`` into the log context and counts its queries
(N+1 warnings, see :mod:`.sqlalchemy`). Traces: with tracing set up, the
``opentelemetry-instrumentation-celery`` package (enabled by
:func:`stackwatch.sdk.tracing.setup_tracing`) carries the sender's trace context in the
message, so the task's span continues the request's trace.

The prefork pool runs tasks in child processes: set ``PROMETHEUS_MULTIPROC_DIR`` for the
worker (as for gunicorn) so the series of all children are collected together, and pass
``metrics_port`` to serve them from the worker's main process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = ["instrument_celery", "queue_lengths"]

logger = logging.getLogger("stackwatch.sdk.celery")

SENT_AT_HEADER = "stackwatch_sent_at"
_BEAT_HEADER = "celery_beat_task"  # set by celery.beat.Scheduler.apply_async on every beat send
TASK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
_DEFAULT_SEP = "\x06\x16"


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from stackwatch.sdk import metrics

        kw: dict[str, Any] = {"registry": registry}
        self.tasks = metrics.counter("celery_tasks_total", "Celery task runs by final state.", ("task", "state"), **kw)
        self.duration = metrics.histogram("celery_task_duration_seconds", "Celery task run time in seconds.",
                                          ("task",), buckets=TASK_BUCKETS, **kw)
        self.failures = metrics.counter("celery_task_failures_total", "Celery task failures by exception type.",
                                        ("task", "exception"), **kw)
        self.retries = metrics.counter("celery_task_retries_total", "Celery task retries.", ("task",), **kw)
        self.wait = metrics.histogram("celery_task_queue_wait_seconds",
                                      "Seconds from publish to the start of the run (ETA excluded).",
                                      ("task",), buckets=WAIT_BUCKETS, **kw)
        self.queue_length = metrics.gauge("celery_queue_length", "Messages waiting in a broker queue.",
                                          ("queue",), multiprocess_mode="mostrecent", **kw)
        self.beat_last_run = metrics.gauge("celery_beat_last_run_timestamp_seconds",
                                           "Unix time a beat-scheduled task last succeeded.", ("task",),
                                           multiprocess_mode="max", **kw)
        self.beat_last_sent = metrics.gauge("celery_beat_last_sent_timestamp_seconds",
                                            "Unix time beat last sent a periodic task.", ("task",),
                                            multiprocess_mode="max", **kw)


class _TaskRun:
    __slots__ = ("log_token", "query_token", "start")

    def __init__(self, start: float, log_token: Any, query_token: Any) -> None:
        self.start = start
        self.log_token = log_token
        self.query_token = query_token


class CeleryInstrumentation:
    """The signal handlers for one Celery app (kept alive by the app's registry below)."""

    def __init__(self, app: Any, config: SDKConfig, registry: Any, queues: Iterable[str] | None,
                 queue_depth_interval: float, metrics_port: int | None) -> None:
        self.app = app
        self.config = config
        self.metrics = _Metrics(registry)
        self.registry = registry
        self.queues = list(queues) if queues is not None else None
        self.queue_depth_interval = queue_depth_interval
        self.metrics_port = metrics_port
        self._runs: dict[str, _TaskRun] = {}
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    # -- publishing (web app, beat) -------------------------------------------------------------

    def before_publish(self, sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        try:
            if headers is None:
                return
            headers.setdefault(SENT_AT_HEADER, time.time())
            if headers.get(_BEAT_HEADER):
                task = str(headers.get("task") or sender)
                self.metrics.beat_last_sent.labels(task).set(time.time())
        except Exception:
            logger.debug("celery publish instrumentation failed", exc_info=True)

    # -- running (worker) --------------------------------------------------------------------------

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        try:
            now = time.time()
            name = _task_name(task)
            request = getattr(task, "request", None)
            sent_at = _header(request, SENT_AT_HEADER)
            if sent_at is not None:
                start_after = float(sent_at)
                eta = _eta_timestamp(getattr(request, "eta", None))
                if eta is not None:
                    start_after = max(start_after, eta)
                self.metrics.wait.labels(name).observe(max(now - start_after, 0.0))
            log_token = query_token = None
            try:
                from stackwatch.sdk.logging import LogContext

                log_token = LogContext.bind(task_id=task_id, task=name)
            except Exception:
                pass
            try:
                from stackwatch.sdk.integrations.sqlalchemy import begin_request

                query_token = begin_request()
            except Exception:
                pass
            if task_id is not None:
                self._runs[task_id] = _TaskRun(time.perf_counter(), log_token, query_token)
        except Exception:
            logger.debug("celery prerun instrumentation failed", exc_info=True)

    def postrun(self, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
        try:
            name = _task_name(task)
            run = self._runs.pop(task_id, None) if task_id is not None else None
            if run is not None:
                self.metrics.duration.labels(name).observe(time.perf_counter() - run.start)
            self.metrics.tasks.labels(name, (state or "unknown").lower()).inc()
            if state == "SUCCESS" and _header(getattr(task, "request", None), _BEAT_HEADER):
                self.metrics.beat_last_run.labels(name).set(time.time())
                logger.info("Periodic task completed: %s", name, extra={"task": name, "heartbeat": True})
            if run is not None:
                self._release(run)
        except Exception:
            logger.debug("celery postrun instrumentation failed", exc_info=True)

    @staticmethod
    def _release(run: _TaskRun) -> None:
        if run.query_token is not None:
            from stackwatch.sdk.integrations.sqlalchemy import end_request

            end_request(run.query_token)
        if run.log_token is not None:
            from stackwatch.sdk.logging import LogContext

            try:
                LogContext.reset(run.log_token)
            except (ValueError, RuntimeError):
                pass

    def failure(self, sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        try:
            self.metrics.failures.labels(_task_name(sender), type(exception).__name__ if exception else "unknown").inc()
        except Exception:
            logger.debug("celery failure instrumentation failed", exc_info=True)

    def retry(self, sender: Any = None, **_: Any) -> None:
        try:
            self.metrics.retries.labels(_task_name(sender)).inc()
        except Exception:
            logger.debug("celery retry instrumentation failed", exc_info=True)

    # -- worker main process ------------------------------------------------------------------------

    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        if self.metrics_port is not None:
            self._serve_metrics(self.metrics_port)
        if self.queue_depth_interval > 0 and _redis_url(self.app) is not None:
            self.start_sampler()

    def worker_shutdown(self, **_: Any) -> None:
        self._stop.set()

    def start_sampler(self) -> None:
        if self._sampler is not None and self._sampler.is_alive():
            return
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample_loop, name="stackwatch-celery-queues", daemon=True)
        self._sampler.start()

    def _sample_loop(self) -> None:
        client = None
        while not self._stop.is_set():
            try:
                if client is None:
                    import redis

                    client = redis.Redis.from_url(_redis_url(self.app), socket_timeout=5, socket_connect_timeout=5)
                self.sample(client)
            except Exception as exc:
                client = None
                logger.debug("queue depth sampling failed: %r", exc)
            self._stop.wait(self.queue_depth_interval)

    def sample(self, client: Any) -> dict[str, int]:
        lengths = queue_lengths(self.app, client, self.queues)
        for queue, length in lengths.items():
            self.metrics.queue_length.labels(queue).set(length)
        return lengths

    def _serve_metrics(self, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server

            from stackwatch.sdk.metrics import multiprocess_dir

            registry = self.registry
            if multiprocess_dir():
                from prometheus_client import multiprocess

                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)
            start_http_server(port, addr="0.0.0.0", registry=registry)
            logger.info("Celery worker metrics on port %d", port)
        except Exception:
            logger.warning("could not serve Celery worker metrics on port %d", port, exc_info=True)


def _task_name(task: Any) -> str:
    return str(getattr(task, "name", None) or task or "unknown")


def _header(request: Any, name: str) -> Any:
    """A custom message header: Celery copies protocol-2 headers onto the request."""
    if request is None:
        return None
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(name) if isinstance(headers, dict) else None
    return value


def _eta_timestamp(eta: Any) -> float | None:
    if eta is None:
        return None
    try:
        if isinstance(eta, str):
            from datetime import datetime

            eta = datetime.fromisoformat(eta)
        return float(eta.timestamp())
    except Exception:
        return None


def _redis_url(app: Any) -> str | None:
    url = app.conf.broker_read_url or app.conf.broker_url
    if isinstance(url, list | tuple):
        url = url[0] if url else None
    if not isinstance(url, str):
        return None
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


def queue_lengths(app: Any, client: Any, queues: Iterable[str] | None = None) -> dict[str, int]:
    """Ready messages per queue in a Redis broker: LLEN of each queue's list and priority lists.

    Kombu keeps one Redis list per queue and priority step (``celery``, ``celery\\x06\\x163``,
    ...), under ``global_keyprefix`` when one is configured. ``queues`` defaults to the app's
    configured queues plus its default queue.
    """
    options = app.conf.broker_transport_options or {}
    sep = options.get("sep", _DEFAULT_SEP)
    steps = options.get("priority_steps", _DEFAULT_PRIORITY_STEPS)
    prefix = options.get("global_keyprefix", "")
    if queues is None:
        names = list(getattr(app.amqp, "queues", {}) or {}) or []
        default = app.conf.task_default_queue
        queues = [*names, default] if default not in names else names
    names = list(dict.fromkeys(queues))
    pipe = client.pipeline(transaction=False)
    keys_per_queue = []
    for queue in names:
        keys = [f"{prefix}{queue}" if not step else f"{prefix}{queue}{sep}{step}" for step in steps]
        keys_per_queue.append(len(keys))
        for key in keys:
            pipe.llen(key)
    sizes = pipe.execute()
    out: dict[str, int] = {}
    i = 0
    for queue, count in zip(names, keys_per_queue, strict=True):
        out[queue] = int(sum(s for s in sizes[i:i + count] if isinstance(s, int)))
        i += count
    return out


_instrumented: dict[int, CeleryInstrumentation] = {}


def instrument_celery(celery_app: Any, config: SDKConfig | None = None, *, metrics: Any = None, queues: Iterable[str] | None = None,
                      queue_depth_interval: float = 15.0, metrics_port: int | None = None) -> Any:
    """Instrument ``celery_app`` through Celery's signals; return the instrumentation.

    ``config`` defaults to ``stackwatch.sdk.init()``'s settings (else ``STACKWATCH_*``).
    ``metrics``: a :class:`~stackwatch.sdk.metrics.RequestMetrics` or prometheus-client
    registry (default: init()'s, else the global registry). ``queues``: the queues whose depth is sampled
    (default: the app's). ``metrics_port``: serve ``/metrics`` from the worker's main process.
    Idempotent per app; never raises for an SDK-internal failure (it is logged).
    """
    existing = _instrumented.get(id(celery_app))
    if existing is not None and existing.app is celery_app:
        return existing
    try:
        from celery import signals

        from stackwatch.sdk.integrations.sqlalchemy import current_settings

        config, metrics = current_settings(config, metrics)
        registry = getattr(metrics, "registry", metrics)
        inst = CeleryInstrumentation(celery_app, config, registry, queues, queue_depth_interval, metrics_port)
        # weak=False: the handlers are bound methods of an object nothing else may hold.
        # Task signals fire for every app in the process; one app per process is the norm.
        signals.before_task_publish.connect(inst.before_publish, weak=False)
        signals.task_prerun.connect(inst.prerun, weak=False)
        signals.task_postrun.connect(inst.postrun, weak=False)
        signals.task_failure.connect(inst.failure, weak=False)
        signals.task_retry.connect(inst.retry, weak=False)
        signals.worker_ready.connect(inst.worker_ready, weak=False)
        signals.worker_shutdown.connect(inst.worker_shutdown, weak=False)
        _instrumented[id(celery_app)] = inst
        return inst
    except Exception:
        logger.warning("could not instrument Celery; tasks run unmeasured", exc_info=True)
        return None
