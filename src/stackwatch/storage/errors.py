"""Error events and issues: the errors sink of the batcher, and what the issues API reads.

Events (scrubbed, one row each, the whole event kept as compressed JSON) go to ClickHouse's
``error_events``; issues (counters, status, assignee) live in the meta store, because people
change them and the list sorts and filters on them.

Exactly once under WAL replay: a block's issue updates and the record of its dedup token
(:class:`~stackwatch.storage.meta.models.ErrorBatch`) commit in one transaction, so a replayed
block finds its token and changes no counter; its event rows go to ClickHouse with the same
token, which stores a repeated block once. An event id already stored (an SDK retrying a send
whose answer it lost) is dropped before either step, so it is counted once too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import orjson
import pyarrow as pa
from sqlalchemy import delete, func, or_, select

from stackwatch.errors import BadRequest, ConfigError, NotFound
from stackwatch.ingest.sentry import Outcomes
from stackwatch.model import errors as model
from stackwatch.redaction import REDACTED, Redactor
from stackwatch.storage.executor import Executor
from stackwatch.storage.meta.db import MetaStore
from stackwatch.storage.meta.models import (
    ISSUE_STATUSES,
    ErrorBatch,
    ErrorIssue,
    ErrorIssueActivity,
    ErrorIssueUser,
    ErrorRelease,
)
from stackwatch.storage.schema import ERROR_EVENTS, ERROR_TABLES, Table, render_ddl

__all__ = ["ErrorStore", "ProcessedEvent", "process_event", "scrub_event"]

log = logging.getLogger("stackwatch.errors")

#: Parts of an event that hold no user data, only SDK and package names and versions; the
#: text rules would only mangle package names that contain a credential word (google-auth).
_UNSCRUBBED: Final = frozenset(
    {"modules", "sdk", "debug_meta", "event_id", "timestamp", "start_timestamp", "fingerprint", "platform",
     "level", "release", "environment", "type"}
)  # fmt: skip
_SORTS: Final = {"last_seen": ErrorIssue.last_seen, "count": ErrorIssue.count, "first_seen": ErrorIssue.first_seen}
#: How long processed-block tokens are kept: only the block pending at a crash is ever replayed.
_BATCH_TOKEN_TTL: Final = timedelta(days=2)
_TS = pa.timestamp("ms", tz="UTC")


# -- scrubbing -------------------------------------------------------------------------------


_ID, _SENSITIVE = 1, 2


class _Walker:
    """:meth:`Redactor.redact_mapping` over a whole event, with each key classified once.

    A Sentry event holds a few hundred values under a few dozen distinct keys (every frame
    has ``filename``, ``lineno``, ``vars``...); classifying the key anew for each value was
    most of the cost of scrubbing. Same decisions as the redactor's own walk: an id key keeps
    its scalar, a credential-named key loses its value, every other string takes the text rules.
    """

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.kinds: dict[Any, int] = {}

    def _kind(self, key: Any) -> int:
        kind = self.kinds.get(key)
        if kind is None:
            text = str(key)
            kind = (_ID if self.redactor._is_id_key(text) else 0) | (
                _SENSITIVE if self.redactor.is_sensitive_key(text) else 0
            )
            if len(self.kinds) < 10_000:
                self.kinds[key] = kind
        return kind

    def value(self, key: Any, value: Any) -> Any:
        kind = self._kind(key)
        if kind:
            if kind & _ID and not isinstance(value, Mapping | list | tuple):
                return value
            if kind & _SENSITIVE:
                if value is None or value.__class__ is bool:
                    return value
                if isinstance(value, str) and self.redactor._is_allowed(value):
                    return value
                return REDACTED
        return self.any(value)

    def any(self, value: Any) -> Any:
        cls = value.__class__
        if cls is str:
            return self.redactor.redact_text(value)
        if cls is dict or isinstance(value, Mapping):
            return {k: self.value(k, v) for k, v in value.items()}
        if cls is list or cls is tuple:
            return [self.any(v) for v in value]
        return value

    def mapping(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        return {k: self.value(k, v) for k, v in data.items()}


def _scrub_query_string(value: Any, redactor: Redactor, walker: _Walker) -> Any:
    if isinstance(value, str):
        pairs = parse_qsl(value, keep_blank_values=True)
        if not pairs:
            return redactor.redact_text(value)
        cleaned = [(k, REDACTED if redactor.is_sensitive_key(k) else redactor.redact_text(v)) for k, v in pairs]
        return urlencode(cleaned, safe="[]")
    if isinstance(value, list):  # [[key, value], ...]
        out = []
        for pair in value:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                key = str(pair[0])
                out.append([key, REDACTED if redactor.is_sensitive_key(key) else walker.any(pair[1])])
            else:
                out.append(walker.any(pair))
        return out
    return walker.any(value)


def _scrub_request(request: Mapping[str, Any], redactor: Redactor, walker: _Walker) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in request.items():
        if key == "cookies":
            # Cookies are session credentials more often than not, whatever their name: keep
            # the names (useful to debug with), never the values.
            if isinstance(value, Mapping):
                out[key] = {k: REDACTED for k in value}
            elif value:
                out[key] = REDACTED
            else:
                out[key] = value
        elif key == "query_string":
            out[key] = _scrub_query_string(value, redactor, walker)
        elif key == "url" and isinstance(value, str) and "?" in value:
            base, _, query = value.partition("?")
            out[key] = redactor.redact_text(base) + "?" + str(_scrub_query_string(query, redactor, walker))
        else:
            out[key] = walker.value(key, value)
    return out


def scrub_event(event: Mapping[str, Any], redactor: Redactor, walker: _Walker | None = None) -> dict[str, Any]:
    """A copy of a Sentry event with secrets and PII masked by the pipeline's redaction rules.

    Request headers, cookies (values always), query strings, bodies, frame local variables,
    ``extra``, ``contexts``, ``tags``, breadcrumbs, messages and exception values all pass
    through :class:`~stackwatch.redaction.Redactor`: credential-named keys (``Authorization``,
    ``password``, ``api_key``) lose their values, and tokens, e-mails and card numbers in
    text are masked. SDK metadata (versions, package lists) is kept as sent.
    """
    walker = walker or _Walker(redactor)
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key in _UNSCRUBBED or not redactor.enabled:
            out[key] = value
        elif key == "request" and isinstance(value, Mapping):
            out[key] = _scrub_request(value, redactor, walker)
        elif key == "user" and isinstance(value, Mapping):
            # ip_address and ids identify a user for counting; they are kept like log ids.
            out[key] = walker.mapping(value)
        elif isinstance(value, dict | list | str):
            out[key] = walker.value(key, value)
        else:
            out[key] = value
    return out


# -- one event, processed -------------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _tags(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.items()
    elif isinstance(value, list):
        items = [p for p in value if isinstance(p, list | tuple) and len(p) == 2]
    else:
        return {}
    return {str(k)[:200]: ("" if v is None else str(v))[:1000] for k, v in items}


def _text(value: Any, limit: int = 10_000) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


@dataclass
class ProcessedEvent:
    """One event ready to store: scrubbed, grouped, with the columns the table holds."""

    project: str
    event_id: str
    fingerprint: str
    grouping: str
    timestamp: float
    received: float
    level: str
    title: str
    culprit: str
    message: str
    exception_type: str
    exception_value: str
    release: str
    environment: str
    platform: str
    transaction: str
    user_id: str
    user_ip: str
    user_email_hash: str
    user_key: str
    trace_id: str
    span_id: str
    tags: dict[str, str]
    payload: dict[str, Any]
    attachments: list[dict[str, Any]]
    issue_type: str
    details: dict[str, Any]
    issue_id: int = 0


def process_event(
    project: str, event: Mapping[str, Any], received: float, redactor: Redactor,
    attachments: list[dict[str, Any]] | None = None, walker: _Walker | None = None,
) -> ProcessedEvent:
    """Scrub, group and flatten one event (see :func:`scrub_event` and :mod:`stackwatch.model.errors`)."""
    raw_user = event.get("user") if isinstance(event.get("user"), Mapping) else {}
    assert isinstance(raw_user, Mapping)
    email = _text(raw_user.get("email")).strip().lower()
    identity = next(
        (f"{kind}:{_text(raw_user.get(kind))}" for kind in ("id", "email", "username", "ip_address")
         if raw_user.get(kind) not in (None, "")),
        "",
    )
    scrubbed = scrub_event(event, redactor, walker)
    scrubbed["event_id"] = model.event_id(event.get("event_id"))
    grouping = model.group(scrubbed)
    exc = model.main_exception(scrubbed)
    level = model.normalize_level(scrubbed.get("level"), "error" if exc is not None else "info")
    scrubbed["level"] = level
    timestamp = model.event_timestamp(scrubbed, received)
    contexts = scrubbed.get("contexts") if isinstance(scrubbed.get("contexts"), Mapping) else {}
    assert isinstance(contexts, Mapping)
    trace = contexts.get("trace") if isinstance(contexts.get("trace"), Mapping) else {}
    assert isinstance(trace, Mapping)
    user = scrubbed.get("user") if isinstance(scrubbed.get("user"), Mapping) else {}
    assert isinstance(user, Mapping)
    frames = model._frames(exc) if exc is not None else []
    top = model._grouping_frames(frames)[-1] if frames else {}
    details = {
        "type": _text(exc.get("type")) if exc is not None else "",
        "value": _text(exc.get("value"), 1000) if exc is not None else "",
        "filename": _text(top.get("filename")),
        "function": _text(top.get("function")),
        "grouping": grouping.variant,
    }
    return ProcessedEvent(
        project=project,
        event_id=scrubbed["event_id"],
        fingerprint=grouping.hash,
        grouping=grouping.variant,
        timestamp=timestamp,
        received=received,
        level=level,
        title=model.title(scrubbed),
        culprit=model.culprit(scrubbed),
        message=_text(model.formatted_message(scrubbed)),
        exception_type=details["type"],
        exception_value=details["value"],
        release=_text(scrubbed.get("release"), 250),
        environment=_text(scrubbed.get("environment"), 64),
        platform=_text(scrubbed.get("platform"), 64),
        transaction=_text(scrubbed.get("transaction"), 500),
        user_id=_text(user.get("id"), 200),
        user_ip=_text(user.get("ip_address"), 64),
        user_email_hash=_hash(email) if email else "",
        user_key=_hash(identity) if identity else "",
        trace_id=_text(trace.get("trace_id"), 64).lower(),
        span_id=_text(trace.get("span_id"), 32).lower(),
        tags=_tags(scrubbed.get("tags")),
        payload=scrubbed,
        attachments=attachments or [],
        issue_type="error" if exc is not None else "default",
        details=details,
    )


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# -- the store ---------------------------------------------------------------------------------



def _check_issue_id(issue_id: int) -> None:
    """Ids are 64-bit: a larger number is no issue, not a database error (SQLite raised an
    OverflowError, a 500)."""
    if not 0 < issue_id < 2**63:
        raise NotFound(f"issue {issue_id} not found")

class ErrorStore:
    """Error events in ClickHouse, issues in the meta store; the errors sink and its readers.

    ``project_ids`` maps project slugs to meta-store ids (the WAL names projects by slug).
    """

    def __init__(
        self,
        executor: Executor,
        meta: MetaStore,
        redactor: Redactor,
        project_ids: Callable[[], Mapping[str, int]],
        *,
        outcomes: Outcomes | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retention_days: int = 90,
    ) -> None:
        if retention_days < 1:
            raise ConfigError(f"setting 'errors_retention_days': must be at least 1, got {retention_days}")
        self.retention_days = retention_days
        self.ex = executor
        self.db = executor.database
        self.meta = meta
        self.redactor = redactor
        self._project_ids = project_ids
        self.outcomes = outcomes or Outcomes()
        self._now = now
        self._lock = threading.Lock()
        self._walker = _Walker(redactor)

    def tables(self) -> tuple[Table, ...]:
        """The declared tables with the configured retention as their TTL."""
        ttl = f"toDateTime(timestamp) + toIntervalDay({self.retention_days})"
        return tuple(dataclasses.replace(t, ttl=ttl) for t in ERROR_TABLES)

    def ensure_schema(self) -> None:
        """Create the tables; if they exist with another retention, change their TTL to it."""
        for table in self.tables():
            for stmt in render_ddl(table, self.db, self.ex.cluster, self.ex.table_settings):
                self.ex.command(stmt)
            local = f"{table.name}_local" if self.ex.cluster else table.name
            rows = self.ex.rows(
                "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": self.db, "t": local},
            )
            if rows and f"toIntervalDay({self.retention_days})" not in rows[0]["engine_full"]:
                on_cluster = f" ON CLUSTER `{self.ex.cluster}`" if self.ex.cluster else ""
                self.ex.command(f"ALTER TABLE `{self.db}`.`{local}`{on_cluster} MODIFY TTL {table.ttl}")

    # -- the sink ------------------------------------------------------------------------------

    def store_entries(self, entries: Sequence[Any], token: str) -> int:
        """The batcher's sink for ``errors`` WAL entries (each event a ``{"event", "received",
        "attachments"}`` record)."""
        processed: list[ProcessedEvent] = []
        for entry in entries:
            body = entry.body()
            for record in body["e"]:
                try:
                    processed.append(
                        process_event(entry.project, record["event"], float(record["received"]), self.redactor,
                                      record.get("attachments"), self._walker)
                    )
                except Exception:  # one odd event must not block the WAL: count it and go on
                    log.exception("dropping an error event that could not be processed")
                    self.outcomes.add("error", "invalid")
        return self.store(processed, token)

    def store(self, events: list[ProcessedEvent], token: str) -> int:
        """Count ``events`` into their issues and store them; a repeated ``token`` counts nothing.

        Three steps, each safe to repeat: find or create the issues (so rows can name them),
        insert the rows (ClickHouse drops a repeated token), then count them into the issues
        (skipped when the token was counted before). Rows land before counts, so an issue
        that shows a count also shows its events.
        """
        with self._lock:
            events = self._drop_duplicates(events, token)
            if not events:
                return 0
            events = self._assign_issues(events)
            self._insert(events, token)
            self._count_block(events, token)
            self.outcomes.add("error", "accepted", len(events))
            return len(events)

    def _drop_duplicates(self, events: list[ProcessedEvent], token: str) -> list[ProcessedEvent]:
        """Events whose id is not stored yet by another block (an SDK resending an event whose
        answer it lost must not count twice; a replayed block must still find its own)."""
        seen: set[tuple[str, str]] = set()
        unique = []
        for ev in events:
            key = (ev.project, ev.event_id)
            if key not in seen:
                seen.add(key)
                unique.append(ev)
        rows = self.ex.rows(
            f"SELECT project, toString(event_id) AS event_id FROM `{self.db}`.`error_events` "
            "WHERE project IN {projects:Array(String)} AND event_id IN {ids:Array(String)} AND batch != {token:String}",
            {"projects": sorted({e.project for e in unique}), "ids": sorted({e.event_id for e in unique}),
             "token": token},
        )
        stored = {(r["project"], r["event_id"]) for r in rows}
        if stored:
            self.outcomes.add("error", "duplicate", sum(1 for e in unique if (e.project, e.event_id) in stored))
        return [e for e in unique if (e.project, e.event_id) not in stored]

    def _by_project(self, events: list[ProcessedEvent]) -> dict[int, list[ProcessedEvent]]:
        project_ids = self._project_ids()
        out: dict[int, list[ProcessedEvent]] = {}
        for ev in events:
            project_id = project_ids.get(ev.project)
            if project_id is None:
                log.error("error event for unknown project %r dropped", ev.project)
                self.outcomes.add("error", "unknown_project")
                continue
            out.setdefault(project_id, []).append(ev)
        return out

    def _assign_issues(self, events: list[ProcessedEvent]) -> list[ProcessedEvent]:
        """Set each event's ``issue_id``, creating issues (with no count yet) for new fingerprints;
        returns the events of known projects."""
        kept: list[ProcessedEvent] = []
        with self.meta.session() as s:
            for project_id, evs in self._by_project(events).items():
                fingerprints = sorted({e.fingerprint for e in evs})
                issues = {
                    i.fingerprint: i.id
                    for i in s.scalars(
                        select(ErrorIssue).where(
                            ErrorIssue.project_id == project_id, ErrorIssue.fingerprint.in_(fingerprints)
                        )
                    )
                }
                for ev in sorted(evs, key=lambda e: e.timestamp):
                    if ev.fingerprint not in issues:
                        issue = ErrorIssue(
                            project_id=project_id, fingerprint=ev.fingerprint, title=ev.title[:500],
                            culprit=ev.culprit[:500], level=ev.level, type=ev.issue_type, details=ev.details,
                            status="unresolved", regressed=False, times_regressed=0, first_seen=_dt(ev.timestamp),
                            last_seen=_dt(ev.timestamp), count=0, user_count=0, environments=[],
                            last_event_id=ev.event_id,
                        )
                        s.add(issue)
                        s.flush()
                        s.add(ErrorIssueActivity(issue_id=issue.id, kind="first_seen", at=self._now(),
                                                 data={"event_id": ev.event_id, "release": ev.release}))
                        issues[ev.fingerprint] = issue.id
                    ev.issue_id = issues[ev.fingerprint]
                    kept.append(ev)
        return kept

    def _count_block(self, events: list[ProcessedEvent], token: str) -> None:
        """Count a block's events into their issues, once per ``token``, in one transaction."""
        now = self._now()
        with self.meta.session() as s:
            if s.get(ErrorBatch, token) is not None:
                return  # a replayed block: counted before the crash
            s.add(ErrorBatch(token=token, processed_at=now))
            s.execute(delete(ErrorBatch).where(ErrorBatch.processed_at < now - _BATCH_TOKEN_TTL))
            for project_id, evs in self._by_project(events).items():
                releases = self._note_releases(s, project_id, evs)
                groups: dict[int, list[ProcessedEvent]] = {}
                for ev in sorted(evs, key=lambda e: e.timestamp):
                    groups.setdefault(ev.issue_id, []).append(ev)
                issues = s.scalars(select(ErrorIssue).where(ErrorIssue.id.in_(sorted(groups))).with_for_update())
                for issue in issues:
                    self._count(s, issue, groups[issue.id], releases)

    def _note_releases(self, s: Any, project_id: int, events: list[ProcessedEvent]) -> dict[str, datetime]:
        """Record releases seen for the first time; return first-seen times of the block's releases."""
        names = sorted({e.release for e in events if e.release})
        if not names:
            return {}
        known = {
            r.version: r.first_seen
            for r in s.scalars(
                select(ErrorRelease).where(ErrorRelease.project_id == project_id, ErrorRelease.version.in_(names))
            )
        }
        for name in names:
            if name not in known:
                first = min(e.received for e in events if e.release == name)
                known[name] = _dt(first)
                s.add(ErrorRelease(project_id=project_id, version=name, first_seen=known[name]))
        s.flush()
        return known

    def _release_first_seen(self, s: Any, project_id: int, version: str) -> datetime | None:
        return s.scalar(
            select(ErrorRelease.first_seen).where(ErrorRelease.project_id == project_id, ErrorRelease.version == version)
        )

    def _count(self, s: Any, issue: ErrorIssue, events: list[ProcessedEvent], releases: Mapping[str, datetime]) -> None:
        for ev in events:
            if self._regresses(s, issue, ev, releases):
                issue.status = "unresolved"
                issue.regressed = True
                issue.times_regressed += 1
                issue.resolved_at = None
                issue.resolved_in_release = None
                s.add(ErrorIssueActivity(issue_id=issue.id, kind="regression", at=self._now(),
                                         data={"event_id": ev.event_id, "release": ev.release}))
        latest = events[-1]
        issue.count += len(events)
        first_ts = _dt(events[0].timestamp)
        if first_ts < issue.first_seen:
            issue.first_seen = first_ts
        last_ts = _dt(latest.timestamp)
        if last_ts >= issue.last_seen:
            issue.last_seen = last_ts
            issue.last_event_id = latest.event_id
            issue.level = latest.level
            issue.title = latest.title[:500]
            issue.culprit = latest.culprit[:500]
        with_release = [e.release for e in events if e.release]
        if with_release:
            issue.last_release = with_release[-1]
            if not issue.first_release:
                issue.first_release = with_release[0]
        envs = list(issue.environments or [])
        for ev in events:
            if ev.environment and ev.environment not in envs:
                envs.append(ev.environment)
        if envs != issue.environments:
            issue.environments = envs
        keys = {e.user_key for e in events if e.user_key}
        if keys:
            known = set(
                s.scalars(
                    select(ErrorIssueUser.user_key).where(
                        ErrorIssueUser.issue_id == issue.id, ErrorIssueUser.user_key.in_(sorted(keys))
                    )
                )
            )
            new = sorted(keys - known)
            for key in new:
                s.add(ErrorIssueUser(issue_id=issue.id, user_key=key))
            issue.user_count += len(new)

    def _regresses(self, s: Any, issue: ErrorIssue, ev: ProcessedEvent, releases: Mapping[str, datetime]) -> bool:
        if issue.status == "resolved":
            return True
        if issue.status != "resolved_in_next_release" or not ev.release:
            return False
        if not issue.resolved_in_release:
            return True
        if ev.release == issue.resolved_in_release:
            return False
        resolved_first = self._release_first_seen(s, issue.project_id, issue.resolved_in_release)
        event_first = releases.get(ev.release) or self._release_first_seen(s, issue.project_id, ev.release)
        if resolved_first is None or event_first is None:
            return True
        return event_first > resolved_first

    def _insert(self, events: list[ProcessedEvent], token: str) -> None:
        if not events:
            return
        columns: dict[str, Any] = {
            "project": pa.array([e.project for e in events], pa.string()),
            "issue_id": pa.array([e.issue_id for e in events], pa.uint64()),
            "timestamp": pa.array([round(e.timestamp * 1000) for e in events], pa.int64()).cast(_TS),
            "received": pa.array([round(e.received * 1000) for e in events], pa.int64()).cast(_TS),
        }
        for name in ("event_id", "fingerprint", "level", "title", "culprit", "message", "exception_type",
                     "exception_value", "release", "environment", "platform", "transaction", "user_id", "user_ip",
                     "user_email_hash", "user_key", "trace_id", "span_id"):
            columns[name] = pa.array([getattr(e, name) for e in events], pa.string())
        columns["tags"] = pa.array([list(e.tags.items()) for e in events], pa.map_(pa.string(), pa.string()))
        columns["payload"] = pa.array([orjson.dumps(e.payload, default=str).decode() for e in events], pa.string())
        columns["attachments"] = pa.array(
            [orjson.dumps(e.attachments).decode() if e.attachments else "" for e in events], pa.string()
        )
        columns["batch"] = pa.array([token] * len(events), pa.string())
        self.ex.insert_arrow(ERROR_EVENTS.name, pa.table(columns), dedup_token=token)

    # -- reading: issues ---------------------------------------------------------------------------

    def _issue_ids_with(self, project: str, column: str, value: str) -> list[int]:
        rows = self.ex.rows(
            f"SELECT DISTINCT issue_id FROM `{self.db}`.`error_events` "
            f"WHERE project = {{project:String}} AND `{column}` = {{value:String}}",
            {"project": project, "value": value},
        )
        return [int(r["issue_id"]) for r in rows]

    def list_issues(
        self,
        project_id: int,
        project: str,
        *,
        status: str | None = None,
        level: str | None = None,
        release: str | None = None,
        environment: str | None = None,
        query: str | None = None,
        assignee: str | None = None,
        sort: str = "last_seen",
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of a project's issues, filtered and sorted; ``next_offset`` when there is more."""
        if sort not in _SORTS:
            raise BadRequest(f"sort must be one of {', '.join(_SORTS)}; got {sort!r}")
        if status and status not in ISSUE_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(ISSUE_STATUSES)}; got {status!r}")
        if level and level not in model.LEVELS:
            raise BadRequest(f"level must be one of {', '.join(model.LEVELS)}; got {level!r}")
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000")
        if offset < 0:
            raise BadRequest("offset must not be negative")
        # An issue is created just before its first events are counted: hide it until they are.
        cond = [ErrorIssue.project_id == project_id, ErrorIssue.count > 0]
        if status:
            cond.append(ErrorIssue.status == status)
        if level:
            cond.append(ErrorIssue.level == level)
        if assignee:
            cond.append(ErrorIssue.assignee == assignee)
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            cond.append(
                or_(ErrorIssue.title.ilike(pattern, escape="\\"), ErrorIssue.culprit.ilike(pattern, escape="\\"))
            )
        for column, value in (("release", release), ("environment", environment)):
            if value:
                cond.append(ErrorIssue.id.in_(self._issue_ids_with(project, column, value)))
        order = _SORTS[sort]
        with self.meta.session() as s:
            total = s.scalar(select(func.count()).select_from(ErrorIssue).where(*cond)) or 0
            rows = list(
                s.scalars(select(ErrorIssue).where(*cond).order_by(order.desc(), ErrorIssue.id.desc())
                          .limit(limit).offset(offset))
            )
        return {
            "total": total,
            "issues": [issue_json(i, project) for i in rows],
            "next_offset": offset + limit if offset + limit < total else None,
        }

    def get_issue(self, issue_id: int) -> ErrorIssue:
        _check_issue_id(issue_id)
        with self.meta.session() as s:
            issue = s.get(ErrorIssue, issue_id)
            if issue is None:
                raise NotFound(f"issue {issue_id} not found")
            return issue

    def activity(self, issue_id: int) -> list[dict[str, Any]]:
        with self.meta.session() as s:
            rows = s.scalars(
                select(ErrorIssueActivity).where(ErrorIssueActivity.issue_id == issue_id)
                .order_by(ErrorIssueActivity.at.desc(), ErrorIssueActivity.id.desc()).limit(100)
            )
            return [{"kind": a.kind, "at": _iso(a.at), "actor": a.actor, "data": a.data} for a in rows]

    def update_issue(
        self, issue_id: int, *, status: str | None = None, assignee: str | object | None = ..., actor: str | None = None
    ) -> ErrorIssue:
        """Change an issue's status and/or assignee (``assignee=None`` unassigns)."""
        if status is not None and status not in ISSUE_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(ISSUE_STATUSES)}; got {status!r}")
        _check_issue_id(issue_id)
        now = self._now()
        with self.meta.session() as s:
            issue = s.get(ErrorIssue, issue_id, with_for_update=True)
            if issue is None:
                raise NotFound(f"issue {issue_id} not found")
            if status is not None and status != issue.status:
                data: dict[str, Any] = {"from": issue.status}
                issue.status = status
                if status in ("resolved", "resolved_in_next_release"):
                    issue.resolved_at = now
                    issue.regressed = False
                    if status == "resolved_in_next_release":
                        newest = s.scalar(
                            select(ErrorRelease.version).where(ErrorRelease.project_id == issue.project_id)
                            .order_by(ErrorRelease.first_seen.desc(), ErrorRelease.id.desc()).limit(1)
                        )
                        issue.resolved_in_release = newest or issue.last_release
                        data["release"] = issue.resolved_in_release
                else:
                    issue.resolved_at = None
                    issue.resolved_in_release = None
                    if status == "unresolved":
                        issue.regressed = False
                s.add(ErrorIssueActivity(issue_id=issue.id, kind=status, at=now, actor=actor, data=data))
            if assignee is not ...:
                value = assignee if isinstance(assignee, str) and assignee.strip() else None
                if value != issue.assignee:
                    issue.assignee = value
                    s.add(ErrorIssueActivity(issue_id=issue.id, kind="assigned" if value else "unassigned",
                                             at=now, actor=actor, data={"assignee": value}))
            return issue

    # -- reading: events ---------------------------------------------------------------------------

    _SUMMARY = (
        "toString(event_id) AS event_id, issue_id, toUnixTimestamp64Milli(timestamp) AS ts_ms, level, title, "
        "culprit, message, release, environment, user_id, trace_id, span_id, tags"
    )

    @staticmethod
    def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "event_id": row["event_id"],
            "issue_id": int(row["issue_id"]),
            "timestamp": _iso(datetime.fromtimestamp(int(row["ts_ms"]) / 1000, tz=UTC)),
            "level": row["level"],
            "title": row["title"],
            "culprit": row["culprit"],
            "message": row["message"],
            "release": row["release"],
            "environment": row["environment"],
            "user_id": row["user_id"],
            "trace_id": row["trace_id"],
            "span_id": row["span_id"],
            "tags": dict(row["tags"]),
        }

    def events(self, project: str, issue_id: int, *, limit: int = 50, before_ms: int | None = None) -> list[dict[str, Any]]:
        """An issue's events, newest first; ``before_ms`` pages back in time."""
        params: dict[str, Any] = {"project": project, "issue": issue_id, "limit": limit}
        where = "project = {project:String} AND issue_id = {issue:UInt64}"
        if before_ms is not None:
            where += " AND timestamp < fromUnixTimestamp64Milli({before:Int64}, 'UTC')"
            params["before"] = before_ms
        rows = self.ex.rows(
            f"SELECT {self._SUMMARY} FROM `{self.db}`.`error_events` WHERE {where} "
            "ORDER BY timestamp DESC LIMIT {limit:UInt32}",
            params,
        )
        return [self._summary(r) for r in rows]

    def event(self, project: str, issue_id: int, event_id: str | None = None) -> dict[str, Any] | None:
        """One event of an issue in full (the latest when ``event_id`` is None)."""
        params: dict[str, Any] = {"project": project, "issue": issue_id}
        where = "project = {project:String} AND issue_id = {issue:UInt64}"
        if event_id is not None:
            where += " AND event_id = {event_id:String}"
            params["event_id"] = event_id.replace("-", "").lower()[:32]
        rows = self.ex.rows(
            f"SELECT {self._SUMMARY}, payload, attachments FROM `{self.db}`.`error_events` WHERE {where} "
            "ORDER BY timestamp DESC LIMIT 1",
            params,
        )
        if not rows:
            return None
        row = rows[0]
        summary = self._summary(row)
        return event_detail(summary, orjson.loads(row["payload"]),
                            orjson.loads(row["attachments"]) if row["attachments"] else [])

    def attachment(self, project: str, issue_id: int, event_id: str, index: int) -> dict[str, Any]:
        rows = self.ex.rows(
            f"SELECT attachments FROM `{self.db}`.`error_events` WHERE project = {{project:String}} "
            "AND issue_id = {issue:UInt64} AND event_id = {event_id:String} LIMIT 1",
            {"project": project, "issue": issue_id, "event_id": event_id.replace("-", "").lower()[:32]},
        )
        items = orjson.loads(rows[0]["attachments"]) if rows and rows[0]["attachments"] else []
        if not 0 <= index < len(items):
            raise NotFound(f"event {event_id} has no attachment {index}")
        return items[index]  # type: ignore[no-any-return]

    def hourly_counts(self, project: str, issue_id: int, hours: int, now: float | None = None) -> list[dict[str, Any]]:
        """Events per hour over the last ``hours`` hours, oldest first, zeros included (a sparkline)."""
        if not 1 <= hours <= 24 * 90:
            raise BadRequest("hours must be between 1 and 2160")
        end = int((now if now is not None else time.time()) // 3600 * 3600)
        start = end - (hours - 1) * 3600
        rows = self.ex.rows(
            f"SELECT toUnixTimestamp(toStartOfHour(timestamp)) AS h, count() AS c FROM `{self.db}`.`error_events` "
            "WHERE project = {project:String} AND issue_id = {issue:UInt64} "
            "AND timestamp >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') GROUP BY h ORDER BY h",
            {"project": project, "issue": issue_id, "start": start * 1000},
        )
        counts = {int(r["h"]): int(r["c"]) for r in rows}
        return [
            {"time": _iso(datetime.fromtimestamp(t, tz=UTC)), "count": counts.get(t, 0)}
            for t in range(start, end + 1, 3600)
        ]

    def hourly_counts_many(
        self, project: str, issue_ids: Sequence[int], hours: int, now: float | None = None
    ) -> dict[int, list[int]]:
        """:meth:`hourly_counts` for several issues in one query (the issue list's sparklines)."""
        end = int((now if now is not None else time.time()) // 3600 * 3600)
        start = end - (hours - 1) * 3600
        rows = self.ex.rows(
            f"SELECT issue_id, toUnixTimestamp(toStartOfHour(timestamp)) AS h, count() AS c "
            f"FROM `{self.db}`.`error_events` WHERE project = {{project:String}} "
            "AND issue_id IN {ids:Array(UInt64)} AND timestamp >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
            "GROUP BY issue_id, h",
            {"project": project, "ids": list(issue_ids), "start": start * 1000},
        )
        out = {int(i): [0] * hours for i in issue_ids}
        for r in rows:
            slot = (int(r["h"]) - start) // 3600
            if 0 <= slot < hours and int(r["issue_id"]) in out:
                out[int(r["issue_id"])][slot] = int(r["c"])
        return out

    def tag_values(self, project: str, issue_id: int, limit: int = 10) -> dict[str, list[dict[str, Any]]]:
        """The most frequent values of each tag among an issue's events (the tag summary)."""
        rows = self.ex.rows(
            f"SELECT kv.1 AS key, kv.2 AS value, count() AS c FROM `{self.db}`.`error_events` "
            "ARRAY JOIN CAST(tags, 'Array(Tuple(String, String))') AS kv "
            "WHERE project = {project:String} AND issue_id = {issue:UInt64} "
            "GROUP BY key, value ORDER BY key, c DESC",
            {"project": project, "issue": issue_id},
        )
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            values = out.setdefault(r["key"], [])
            if len(values) < limit:
                values.append({"value": r["value"], "count": int(r["c"])})
        return out

    def events_for_trace(self, project: str, trace_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Error events of one trace, oldest first (the trace view's "errors")."""
        rows = self.ex.rows(
            f"SELECT {self._SUMMARY} FROM `{self.db}`.`error_events` "
            "WHERE project = {project:String} AND trace_id = {trace:String} ORDER BY timestamp LIMIT {limit:UInt32}",
            {"project": project, "trace": trace_id.lower(), "limit": limit},
        )
        return [self._summary(r) for r in rows]


def issue_json(issue: ErrorIssue, project: str) -> dict[str, Any]:
    """An issue as the API shows it."""
    return {
        "id": issue.id,
        "project": project,
        "title": issue.title,
        "culprit": issue.culprit,
        "level": issue.level,
        "type": issue.type,
        "metadata": issue.details,
        "status": issue.status,
        "assignee": issue.assignee,
        "regressed": issue.regressed,
        "times_regressed": issue.times_regressed,
        "count": issue.count,
        "user_count": issue.user_count,
        "first_seen": _iso(issue.first_seen),
        "last_seen": _iso(issue.last_seen),
        "release": issue.last_release,
        "first_release": issue.first_release,
        "last_release": issue.last_release,
        "environments": issue.environments or [],
        "resolved_at": _iso(issue.resolved_at),
        "resolved_in_release": issue.resolved_in_release,
        "last_event_id": issue.last_event_id,
        "fingerprint": issue.fingerprint,
    }


def _str_list(value: Any) -> list[str]:
    return [v if isinstance(v, str) else str(v) for v in value] if isinstance(value, list) else []


def _exception_entries(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for exc in model.exceptions(payload):
        stack = exc.get("stacktrace") if isinstance(exc.get("stacktrace"), Mapping) else {}
        assert isinstance(stack, Mapping)
        frames = [f for f in stack.get("frames") or [] if isinstance(f, Mapping)]
        out.append({
            "type": exc.get("type"),
            "value": exc.get("value"),
            "module": exc.get("module"),
            "mechanism": exc.get("mechanism"),
            # Most recent call first, as people read a stack trace in an issue page.
            "frames": [
                {
                    "filename": f.get("filename"), "abs_path": f.get("abs_path"), "module": f.get("module"),
                    "function": f.get("function"), "lineno": f.get("lineno"), "colno": f.get("colno"),
                    "in_app": f.get("in_app"),
                    "context_line": None if f.get("context_line") is None else str(f.get("context_line")),
                    # Shapes are checked here because any sender can write anything in them.
                    "pre_context": _str_list(f.get("pre_context")), "post_context": _str_list(f.get("post_context")),
                    "vars": dict(f["vars"]) if isinstance(f.get("vars"), Mapping) else {},
                }
                for f in reversed(frames)
            ],
        })
    return out


def event_detail(summary: dict[str, Any], payload: Mapping[str, Any], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    """One event in full: the summary, the parts an issue page shows, and the whole scrubbed event."""
    crumbs = payload.get("breadcrumbs")
    if isinstance(crumbs, Mapping):
        crumbs = crumbs.get("values")
    return {
        **summary,
        "platform": payload.get("platform"),
        "transaction": payload.get("transaction"),
        "exception": list(reversed(_exception_entries(payload))),  # the main exception first
        "breadcrumbs": [c for c in crumbs if isinstance(c, Mapping)] if isinstance(crumbs, list) else [],
        "contexts": payload.get("contexts") or {},
        "request": payload.get("request") or {},
        "user": payload.get("user") or {},
        "extra": payload.get("extra") or {},
        "sdk": payload.get("sdk") or {},
        "fingerprint": payload.get("fingerprint"),
        "attachments": [
            {"index": i, "filename": a.get("filename"), "content_type": a.get("content_type"), "size": a.get("size")}
            for i, a in enumerate(attachments)
        ],
        "event": payload,
    }
