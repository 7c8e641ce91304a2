"""Plugging the rule manager into the server's runtime.

Kept here rather than in ``server/runtime.py`` so the runtime only calls :func:`open_rules` and
``stop()``. Alerts go to ``rt.dispatcher.put_alerts`` (looked up at each hand-over, so a
dispatcher attached later is used too); error rules read the errors store through
:class:`ErrorStoreSource`; SIGHUP asks for a reload when the server runs in the main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime
from typing import Any

from sqlalchemy import select

from stackwatch.errors import ConfigError
from stackwatch.model.alerts import Alert

from ._duration import parse_duration
from .manager import RuleManager
from .sources import StoreSources

__all__ = ["ErrorStoreSource", "open_rules"]

log = logging.getLogger("stackwatch.rules")


class ErrorStoreSource:
    """:class:`~stackwatch.rules.sources.ErrorSource` over the errors store: issues from the meta
    store (first seen, regression activity), event counts from the ``error_events`` table.

    Ignored issues are left out of every answer: "ignore" is what the on-call presses to stop a
    noisy error from paging (Sentry's archived issues alert no more); their events are still
    stored and counted on the issue.
    """

    def __init__(self, store: Any, meta: Any) -> None:
        self.store = store
        self.meta = meta

    def _project_id(self, project: str) -> int | None:
        from stackwatch.storage.meta.models import Project

        with self.meta.session() as s:
            return s.scalar(select(Project.id).where(Project.slug == project))

    @staticmethod
    def _issue(i: Any, **extra: Any) -> dict[str, Any]:
        return {"issue_id": i.id, "title": i.title, "level": i.level, "culprit": i.culprit, **extra}

    def new_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        from stackwatch.storage.meta.models import ErrorIssue

        pid = self._project_id(project)
        if pid is None:
            return []
        with self.meta.session() as s:
            rows = s.scalars(select(ErrorIssue).where(ErrorIssue.project_id == pid, ErrorIssue.first_seen > since,
                                                      ErrorIssue.first_seen <= until,
                                                      ErrorIssue.status != "ignored")).all()
        return [self._issue(i) for i in rows]

    def regressed_issues(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        from stackwatch.storage.meta.models import ErrorIssue, ErrorIssueActivity

        pid = self._project_id(project)
        if pid is None:
            return []
        with self.meta.session() as s:
            # IN (subquery) rather than JOIN + DISTINCT: PostgreSQL cannot compare the JSON columns.
            regressed = select(ErrorIssueActivity.issue_id).where(
                ErrorIssueActivity.kind == "regression", ErrorIssueActivity.at > since, ErrorIssueActivity.at <= until)
            rows = s.scalars(select(ErrorIssue).where(ErrorIssue.project_id == pid, ErrorIssue.id.in_(regressed),
                                                      ErrorIssue.status != "ignored")).all()
        return [self._issue(i) for i in rows]

    def issue_event_counts(self, project: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        from stackwatch.storage.meta.models import ErrorIssue

        rows = self.store.ex.rows(
            f"SELECT issue_id, count() AS c FROM `{self.store.db}`.`error_events` WHERE project = {{p:String}} "
            "AND timestamp > fromUnixTimestamp64Milli({s:Int64}, 'UTC') "
            "AND timestamp <= fromUnixTimestamp64Milli({e:Int64}, 'UTC') GROUP BY issue_id",
            {"p": project, "s": int(since.timestamp() * 1000), "e": int(until.timestamp() * 1000)},
        )
        counts = {int(r["issue_id"]): int(r["c"]) for r in rows}
        if not counts:
            return []
        with self.meta.session() as s:
            issues = s.scalars(select(ErrorIssue).where(ErrorIssue.id.in_(list(counts)),
                                                        ErrorIssue.status != "ignored")).all()
        return [self._issue(i, count=counts[i.id]) for i in issues]


def open_rules(rt: Any, *, start: bool = True) -> RuleManager:
    """Build, load and (by default) start the rule manager of a runtime."""
    settings = rt.settings
    # Settings objects built by hand (tests, embedders) may predate the rule settings.
    setting = lambda name, default: getattr(settings, name, default) or default  # noqa: E731
    try:
        interval_ms = parse_duration(setting("evaluation_interval", "1m"))
    except ValueError as exc:
        raise ConfigError(f"setting 'evaluation_interval': {exc}") from None
    errors = ErrorStoreSource(rt.errors, rt.meta) if getattr(rt, "errors", None) is not None else None
    max_samples = int(setting("query_max_samples", 50_000_000))
    sources = StoreSources(rt.metrics, rt.logs, errors, max_samples=max_samples)

    def notify(alerts: list[Alert]) -> None:
        dispatcher = getattr(rt, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.put_alerts(alerts)

    manager = RuleManager(
        sources,
        notify=notify,
        evaluation_interval_ms=interval_ms,
        rule_files=[g.strip() for g in str(setting("rule_files", "")).split(",") if g.strip()],
        meta=rt.meta,
        external_url=str(setting("url", "")),
        timeout_s=float(setting("query_timeout_s", 30.0)),
        max_samples=max_samples,
    )
    for e in manager.reload():
        log.error("rules: %s", e)
    if start:
        manager.start()
        if threading.current_thread() is threading.main_thread():
            try:
                signal.signal(signal.SIGHUP, lambda *_: manager.request_reload())
            except (ValueError, OSError, AttributeError):  # no SIGHUP on this platform
                pass
    return manager
