"""The server's components, wired once: storage, meta store, auth, pipeline, WAL, batcher.

Routes receive this object (``request.app.state.rt``) instead of reaching for globals, so a test
can build a runtime over a temporary directory and drive the real app.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackwatch.auth import AuthService
from stackwatch.errors import ConfigError
from stackwatch.ingest._body import gc_paused
from stackwatch.ingest._prom_sql import SqlLineReader
from stackwatch.ingest.batcher import Batcher, Entry, Staged
from stackwatch.ingest.prom_text import LineReader
from stackwatch.ingest.spanmetrics import SpanMetrics
from stackwatch.ingest.wal import WAL
from stackwatch.ingest.workers import BlockBuilder
from stackwatch.pipeline.pipeline import PipelineConfig
from stackwatch.redaction import Redactor
from stackwatch.storage.errors import ErrorStore
from stackwatch.storage.executor import ChdbExecutor, Executor, open_executor
from stackwatch.storage.logs import LogStore
from stackwatch.storage.meta.db import MetaStore
from stackwatch.storage.metrics import MetricStore
from stackwatch.storage.retention import RetentionManager, TierPolicy
from stackwatch.storage.traces import TraceStore

__all__ = ["Runtime"]

log = logging.getLogger("stackwatch.server")


def _pipeline_config(settings: Any) -> dict[str, Any]:
    raw: dict[str, Any] = dict(settings.extra.get("pipeline") or {})
    if settings.pipeline_file:
        try:
            loaded = yaml.safe_load(Path(settings.pipeline_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"setting 'pipeline_file': cannot read {settings.pipeline_file!r}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"setting 'pipeline_file': {settings.pipeline_file!r} must hold a mapping")
        raw.update(loaded.get("pipeline", loaded))
    try:
        PipelineConfig.from_dict(raw)  # validate now: a bad pipeline stops start-up
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pipeline configuration: {exc}") from None
    return raw


@dataclass
class Runtime:
    settings: Any
    executor: Executor
    logs: LogStore
    meta: MetaStore
    auth: AuthService
    blocks: BlockBuilder
    wal: WAL
    batcher: Batcher
    retention: RetentionManager
    started_at: float = field(default_factory=time.time)
    bootstrap: Any = None
    metrics: MetricStore | None = None
    errors: ErrorStore | None = None
    traces: TraceStore | None = None
    spanmetrics: SpanMetrics | None = None
    #: Alert routing, grouping, muting and notifications (stackwatch.alerting.dispatcher.Dispatcher).
    dispatcher: Any = None
    #: Reads large import bodies in the embedded engine, outside the GIL
    #: (stackwatch.ingest._prom_sql); None on a ClickHouse server, which is not sent bodies to parse.
    import_reader: LineReader | None = None
    #: Alerting and recording rules (stackwatch.rules.RuleManager).
    rules: Any = None
    #: Incidents, on-call and escalation (stackwatch.incidents: IncidentService, EscalationEngine).
    incidents: Any = None
    escalation: Any = None
    _closed: bool = field(default=False, init=False, repr=False)

    @classmethod
    def open(cls, settings: Any) -> Runtime:
        data = settings.data_path
        data.mkdir(parents=True, exist_ok=True)
        executor = open_executor(data, settings.clickhouse_url, settings.clickhouse_cluster)
        logs = LogStore(executor, cold_dir=data / "cold" / "logs")
        logs.ensure_schema()
        metrics = MetricStore(
            executor, max_series_per_project=settings.metrics_max_series, query_pushdown=settings.query_pushdown
        )
        metrics.ensure_schema()
        meta = MetaStore(settings.meta_url)
        meta.migrate()
        auth = AuthService(meta, api_token_cache_ttl=settings.api_token_cache_s)

        def policies() -> dict[str, dict[str, TierPolicy]]:
            return {
                p.slug: {t: TierPolicy(**tiers) for t, tiers in auth.get_retention(p.id).items()}
                for p in auth.list_projects()
            }

        def metrics_retention(now_ns: int) -> None:
            days = {
                p.slug: auth.metrics_retention_days(p.id, settings.metrics_retention_days)
                for p in auth.list_projects()
            }
            done = metrics.apply_retention(days, now_ns // 1_000_000)
            if any(done.values()):
                log.info("metrics retention: %s", done)

        retention = RetentionManager(executor, data / "cold" / "logs", policies, also=[metrics_retention])
        logs.hot_horizon = retention.hot_horizon_ns
        retention.hot_horizon_ns()  # read from the store now: histograms ask for it on the event loop
        bootstrap = auth.bootstrap(settings.admin_token or None, settings.ingest_token or None)
        workers = settings.pipeline_workers if settings.pipeline_workers >= 0 else (os.cpu_count() or 1)
        blocks = BlockBuilder(_pipeline_config(settings), workers)
        wal = WAL(data / "wal", segment_bytes=settings.wal_segment_bytes, fsync=settings.wal_fsync)

        # Logs in two steps: the pipeline builds the next block while the previous one is inserted.
        store_logs = Staged(
            lambda entries: blocks.build([e.payload for e in entries], [e.count for e in entries]),
            lambda block, token: logs.insert_block(block, dedup_token=token),
        )

        # Traces: spans to their tables, and the RED series derived from them to the metrics.
        traces = TraceStore(executor, retention_days=settings.traces_retention_days)
        traces.ensure_schema()
        spanmetrics = SpanMetrics(
            lambda batches, token: metrics.store_events([(p, b.events()) for p, b in batches], token)
        )

        def store_spans(entries: list[Entry], token: str) -> None:
            with gc_paused():  # a block's JSON is 100k+ small dicts with no cycles: 2-3x faster
                batches = [(e.project, e.body()["e"]) for e in entries]
            traces.insert(batches, dedup_token=token)
            spanmetrics.observe(batches, token)

        # Errors (Sentry protocol): scrubbed with the log pipeline's redaction rules.
        errors = ErrorStore(
            executor,
            meta,
            Redactor(PipelineConfig.from_dict(_pipeline_config(settings)).redact),
            lambda: {p.slug: p.id for p in auth.list_projects()},
            retention_days=settings.errors_retention_days,
        )
        errors.ensure_schema()

        batcher = Batcher(
            wal,
            data / "wal" / "checkpoint.json",
            {"logs": store_logs, "metrics": metrics.store_entries, "errors": errors.store_entries, "spans": store_spans},
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            buffer_bytes=settings.ingest_buffer_bytes,
            backlog_s=settings.ingest_backlog_s,
            wait_s=settings.ingest_wait_s,
        )
        batcher.recover()
        batcher.start()
        retention.start(settings.retention_interval_s)
        spanmetrics.start(settings.traces_spanmetrics_flush_s)
        from stackwatch.alerting.dispatcher import open_dispatcher

        dispatcher = open_dispatcher(settings, meta)
        rt = cls(settings, executor, logs, meta, auth, blocks, wal, batcher, retention, bootstrap=bootstrap,
                 metrics=metrics, traces=traces, spanmetrics=spanmetrics, errors=errors,
                 dispatcher=dispatcher,
                 import_reader=SqlLineReader(executor) if isinstance(executor, ChdbExecutor) else None)
        from stackwatch.rules.wiring import open_rules

        rt.rules = open_rules(rt)
        from stackwatch.incidents.wiring import attach_incidents

        attach_incidents(rt)  # after the dispatcher: it hooks into its group listeners
        return rt

    def close(self) -> None:
        """Flush what was acknowledged, stop the threads and worker processes, close the stores.

        Idempotent: the server's shutdown closes the runtime, and the CLI closes it again in
        case start-up failed before the server ever ran.
        """
        if self._closed:
            return
        self._closed = True
        if self.escalation is not None:
            self.escalation.stop()
        if self.rules is not None:
            self.rules.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.retention.stop()
        if self.spanmetrics is not None:
            self.spanmetrics.stop()
        self.batcher.flush(timeout=30)
        self.batcher.stop()
        self.wal.close()
        self.blocks.close()
        self.executor.close()
        self.meta.close()
