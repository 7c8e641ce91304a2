"""SQLAlchemy models of the relational state: projects, tokens, users, sessions, saved searches.

The same models run on SQLite (the default, a file under ``data_dir``) and on PostgreSQL, so
only portable types are used: strings, integers, booleans, ``JSON`` and :class:`UTCDateTime`.
Alembic owns the schema (``migrations/``); a test checks that these models and the migrations
describe the same tables, so change both together.

Secrets are never stored in clear: tokens are stored as their SHA-256 (they are random and
high-entropy, so a fast hash cannot be brute-forced and lets a request be verified with one
indexed lookup) and passwords as argon2id (they are chosen by people, so the hash must be slow).
The one exception is :attr:`IngestToken.public_key`, explained there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "DEFAULT_RETENTION",
    "ROLES",
    "ApiToken",
    "Base",
    "IngestToken",
    "LoginSession",
    "Project",
    "RuleAlertState",
    "RuleGroupEval",
    "RuleGroupRecord",
    "SavedSearch",
    "UTCDateTime",
    "User",
    "utcnow",
]

ROLES: Final[tuple[str, ...]] = ("viewer", "editor", "admin")
"""User and token roles, weakest first: each role may do everything the ones before it may."""

DEFAULT_RETENTION: Final[Mapping[str, Mapping[str, int]]] = MappingProxyType(
    {
        log_type: MappingProxyType({"hot_days": hot, "warm_days": warm, "cold_days": cold})
        for log_type, (hot, warm, cold) in {
            "application": (7, 30, 365),
            "web": (3, 15, 90),
            "database": (7, 30, 180),
            "security": (30, 90, 730),
            "system": (7, 30, 90),
        }.items()
    }
)
"""Retention per log type, as total-age thresholds in days.

A record is hot (fast local storage) until ``hot_days`` old, warm until ``warm_days``, cold
until ``cold_days``, then deleted. Projects override any of these in :attr:`Project.retention`;
security logs are kept longest because audits ask for them long after the fact. Read-only: use
``AuthService.get_retention`` for a project's merged values.
"""

# Explicit constraint names make migrations portable: PostgreSQL and SQLite name unnamed
# constraints differently, and Alembic can only drop or compare a constraint it can name.
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_ROLE_CHECK = "role IN ('viewer', 'editor', 'admin')"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime, the only kind the models store."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC ``datetime`` on every backend.

    SQLite has no time zone type: SQLAlchemy stores the wall-clock text and gives back naive
    datetimes, which then cannot be compared with aware ones. This type converts to UTC on the
    way in (dropping the zone only for SQLite, where all values are UTC by construction) and
    marks values as UTC on the way out, so code never sees a naive datetime.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the meta store only takes aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base whose metadata carries the naming convention and type map."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Project(Base):
    """A tenant: telemetry, tokens, rules and saved searches belong to one project."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Only the overrides are stored (``{"web": {"hot_days": 1}}``), not the merged table, so
    # a project that did not override a value follows later changes of DEFAULT_RETENTION.
    retention: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IngestToken(Base):
    """A token that lets a client write telemetry into one project."""

    __tablename__ = "ingest_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # The token in clear, set only on the one token per project that is its Sentry DSN key.
    # A DSN (https://KEY@host/PROJECT) is pasted into application config and shipped in
    # browser bundles; Sentry itself treats its public key as non-secret and shows it in the
    # UI. Keeping it lets the UI show the DSN at any time. All other tokens exist only as
    # hashes; verification always goes through token_hash, never through this column.
    public_key: Mapped[str | None] = mapped_column(String(256), unique=True, default=None)


class User(Base):
    """A person who logs in to the UI or owns API tokens."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_ROLE_CHECK, name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-cased so that logins and uniqueness ignore case the same way on both backends.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled: Mapped[bool] = mapped_column(default=False)


class ApiToken(Base):
    """A bearer token for the HTTP API acting as its user, with at most the user's role."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_ROLE_CHECK, name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class LoginSession(Base):
    """A browser login. ``id`` is the SHA-256 of the cookie value, so a leaked table logs no one in."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class SavedSearch(Base):
    """A named log query with its time range, shared within a project."""

    __tablename__ = "saved_searches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    # The author; kept as NULL when the user is deleted so the team keeps the search.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    query: Mapped[str] = mapped_column(Text)
    time_range: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Incidents and on-call (migration 0005) -------------------------------------------------
# Incidents open from alert groups or by hand; their timeline, the alert occurrences the weekly
# review counts, on-call schedules with overrides, contact profiles and escalation policies.

INCIDENT_SEVERITIES: Final[tuple[str, ...]] = ("P0", "P1", "P2", "P3", "P4")
INCIDENT_STATUSES: Final[tuple[str, ...]] = ("triggered", "acknowledged", "resolved")
TIMELINE_KINDS: Final[tuple[str, ...]] = (
    "alert_firing",
    "alert_resolved",
    "notification",
    "acknowledged",
    "status_update",
    "severity_changed",
    "escalated",
    "resolved",
    "comment",
    "opened",
    "escalation_held",
)


class EscalationPolicy(Base):
    """Who is paged, in which order and after how long, while an incident stays unacknowledged.

    ``levels`` is a list of ``{"targets": [...], "delay_minutes": N}``; a target names a schedule
    layer (``{"schedule": "ops", "layer": "primary"}``), a user (``{"user": "ann@x"}``) or a
    receiver (``{"receiver": "cto-phone"}``). ``repeat`` is how many more times the whole list
    runs after the first pass.
    """

    __tablename__ = "escalation_policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    levels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Incident(Base):
    """Something that needs a person: triggered → acknowledged → resolved, with a timeline.

    ``group_key`` ties an incident to the alert group that opened it, so a repeated or replayed
    group event (after a restart) updates the open incident instead of opening a second one.
    ``alerts`` maps fingerprint → the alert as last seen; ``esc_*`` is the escalation state,
    kept here so a restart resumes paging where it stopped instead of paging again.
    """

    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint("severity IN ('P0', 'P1', 'P2', 'P3', 'P4')", name="severity"),
        CheckConstraint("status IN ('triggered', 'acknowledged', 'resolved')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    severity: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16), default="triggered", index=True)
    service: Mapped[str] = mapped_column(String(200), default="", index=True)
    group_key: Mapped[str | None] = mapped_column(String(1000), default=None, index=True)
    receiver: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    alerts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    assignee: Mapped[str] = mapped_column(String(320), default="")
    opened_at: Mapped[datetime] = mapped_column(index=True)
    opened_by: Mapped[str] = mapped_column(String(320), default="")
    acked_at: Mapped[datetime | None] = mapped_column(default=None)
    acked_by: Mapped[str | None] = mapped_column(String(320), default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(320), default=None)
    escalation_policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("escalation_policies.id", ondelete="SET NULL"), default=None
    )
    esc_level: Mapped[int] = mapped_column(Integer, default=0)
    esc_cycle: Mapped[int] = mapped_column(Integer, default=0)
    esc_next_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    postmortem: Mapped[str | None] = mapped_column(Text, default=None)
    postmortem_updated_at: Mapped[datetime | None] = mapped_column(default=None)
    postmortem_updated_by: Mapped[str | None] = mapped_column(String(320), default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TimelineEntry(Base):
    """One step in an incident's life: an alert, a page, an acknowledgement, a note."""

    __tablename__ = "incident_timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    who: Mapped[str] = mapped_column(String(320), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AlertOccurrence(Base):
    """One firing of one alert (fingerprint + start), whether or not it opened an incident.

    The weekly review counts these: noisy alerts, alerts nobody acted on, flapping rules.
    """

    __tablename__ = "alert_occurrences"
    __table_args__ = (UniqueConstraint("fingerprint", "starts_at", name="uq_alert_occurrences_fingerprint_starts_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32))
    alertname: Mapped[str] = mapped_column(String(200), index=True)
    severity: Mapped[str] = mapped_column(String(2))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    group_key: Mapped[str] = mapped_column(String(1000), default="")
    receiver: Mapped[str] = mapped_column(String(200), default="")
    starts_at: Mapped[datetime] = mapped_column(index=True)
    ends_at: Mapped[datetime | None] = mapped_column(default=None)
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="SET NULL"), default=None, index=True
    )


class OncallSchedule(Base):
    """A rotation of people, per layer (primary, secondary...), in one time zone.

    ``layers`` is a list of ``{"name", "rotation": "daily"|"weekly", "handoff_time": "09:00",
    "handoff_day": "monday", "start": "2025-01-06", "participants": [...]}``.
    """

    __tablename__ = "oncall_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    layers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OncallOverride(Base):
    """Someone else takes a layer of a schedule for a while (holiday swap, sick day)."""

    __tablename__ = "oncall_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("oncall_schedules.id", ondelete="CASCADE"), index=True)
    layer: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(320))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OncallProfile(Base):
    """How to reach a person who is on call: the receivers (webhook, e-mail...) that page them."""

    __tablename__ = "oncall_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    receivers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- alerting: silences, maintenance windows, notification log, deliveries (migration 0004) ----


class AlertSilence(Base):
    """A silence (Alertmanager's model): alerts matching ``matchers`` are not notified while active.

    Expiring a silence sets ``ends_at`` to the moment it was expired; rows are kept for the API's
    history and pruned by the dispatcher some days after they ended.
    """

    __tablename__ = "alert_silences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Alertmanager v2 shape: ``[{"name", "value", "isRegex", "isEqual"}]``.
    matchers: Mapped[list[Any]] = mapped_column(JSON)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime] = mapped_column(index=True)
    created_by: Mapped[str] = mapped_column(String(320))
    comment: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MaintenanceWindow(Base):
    """A planned window that mutes alerts below a severity: one-off (starts/ends) or recurring.

    Recurring windows are Alertmanager time intervals (``times``, ``weekdays``, ..., ``location``),
    optionally bounded by ``starts_at``/``ends_at``.
    """

    __tablename__ = "alert_maintenance_windows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    matchers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    starts_at: Mapped[datetime | None] = mapped_column(default=None)
    ends_at: Mapped[datetime | None] = mapped_column(default=None)
    recurrence: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    #: Alerts at least this severe still notify during the window (P0 by default).
    pass_severity: Mapped[str] = mapped_column(String(8), default="P0")
    created_by: Mapped[str] = mapped_column(String(320), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertNotificationLog(Base):
    """What was last sent for one group to one notifier, so a restart does not page again.

    ``id`` is the SHA-256 of ``group key, receiver, notifier``; the fingerprints of the alerts
    that were firing and resolved in that notification decide whether the next flush is news.
    """

    __tablename__ = "alert_notification_log"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_key: Mapped[str] = mapped_column(Text)
    receiver: Mapped[str] = mapped_column(String(200))
    integration: Mapped[str] = mapped_column(String(64))
    firing: Mapped[list[Any]] = mapped_column(JSON, default=list)
    resolved: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sent_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AlertDelivery(Base):
    """One notification attempt chain (with its retries) and how it ended, for the API."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    receiver: Mapped[str] = mapped_column(String(200))
    integration: Mapped[str] = mapped_column(String(64))
    group_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    notification_status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    alerts: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(Text, default="")


# -- errors: issues grouped from Sentry-protocol events (migration 0002) ---------------------

ISSUE_STATUSES: Final[tuple[str, ...]] = ("unresolved", "resolved", "resolved_in_next_release", "ignored")
"""Issue states. ``resolved_in_next_release`` stays resolved for events of the release it was
resolved in (and older ones) and regresses only on an event from a newer release."""

_ISSUE_STATUS_CHECK = "status IN ('unresolved', 'resolved', 'resolved_in_next_release', 'ignored')"


class ErrorIssue(Base):
    """Events of one project that share a grouping fingerprint, with their counters and triage state.

    The event rows themselves are in ClickHouse (``error_events``); this row is what the issue
    list sorts and filters, and what people change (status, assignee).
    """

    __tablename__ = "error_issues"
    __table_args__ = (
        UniqueConstraint("project_id", "fingerprint", name="uq_error_issues_project_id"),
        CheckConstraint(_ISSUE_STATUS_CHECK, name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(500))
    culprit: Mapped[str] = mapped_column(String(500), default="")
    level: Mapped[str] = mapped_column(String(16))
    #: ``error`` (an exception) or ``default`` (a message), as Sentry names them.
    type: Mapped[str] = mapped_column(String(16))
    #: Exception type/value, filename and function of the first event, for the list view.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32), default="unresolved", index=True)
    assignee: Mapped[str | None] = mapped_column(String(320), default=None)
    regressed: Mapped[bool] = mapped_column(default=False)
    times_regressed: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    user_count: Mapped[int] = mapped_column(Integer, default=0)
    first_release: Mapped[str | None] = mapped_column(String(250), default=None)
    last_release: Mapped[str | None] = mapped_column(String(250), default=None)
    environments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    #: For ``resolved_in_next_release``: the newest release known when it was resolved.
    resolved_in_release: Mapped[str | None] = mapped_column(String(250), default=None)
    last_event_id: Mapped[str] = mapped_column(String(32), default="")


class ErrorIssueUser(Base):
    """One distinct user an issue has affected (a hash of their id, e-mail, name or IP).

    Kept per issue so that ``user_count`` grows only on a user not seen before, batch by batch,
    without scanning the issue's events again.
    """

    __tablename__ = "error_issue_users"

    issue_id: Mapped[int] = mapped_column(ForeignKey("error_issues.id", ondelete="CASCADE"), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(64), primary_key=True)


class ErrorIssueActivity(Base):
    """What happened to an issue: first seen, resolved, regression, ignored, assigned..."""

    __tablename__ = "error_issue_activity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("error_issues.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(320), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ErrorRelease(Base):
    """A release seen in a project's events; ``first_seen`` orders releases ("newer than")."""

    __tablename__ = "error_releases"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_error_releases_project_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(250))
    first_seen: Mapped[datetime]


class ErrorBatch(Base):
    """A WAL block whose events were already counted into issues: replaying it counts nothing again."""

    __tablename__ = "error_batches"

    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# -- rules: rule groups kept in the database, alert state of the evaluator (migration 0003) ---


class RuleGroupRecord(Base):
    """A rule group created through the API (files hold the others; a file wins on a name clash).

    ``spec`` is the group exactly as a rule file would hold it (name, interval, rules...), so the
    same validation and evaluation serve both origins.
    """

    __tablename__ = "rule_groups"
    __table_args__ = (UniqueConstraint("project", "name", name="uq_rule_groups_project"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuleAlertState(Base):
    """One active alert of one rule (pending, firing, or resolved and still being re-sent).

    Saved after each evaluation that changed it, so a restart resumes every alert where it was:
    a firing alert keeps its ``fired_at`` (the receiver sees the same alert, not a new page).
    """

    __tablename__ = "rule_alert_states"
    __table_args__ = (UniqueConstraint("group_key", "rule_index", "fingerprint", name="uq_rule_alert_states_group_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_key: Mapped[str] = mapped_column(String(600), index=True)
    rule_index: Mapped[int] = mapped_column(Integer)
    rule_name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(32))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    active_at: Mapped[datetime] = mapped_column()
    fired_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    last_sent_at: Mapped[datetime | None] = mapped_column(default=None)
    keep_firing_since: Mapped[datetime | None] = mapped_column(default=None)
    sent_labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    hold_ms: Mapped[int | None] = mapped_column(Integer, default=None)


class RuleGroupEval(Base):
    """When a group was last evaluated: after a restart, the downtime is measured from here."""

    __tablename__ = "rule_group_evals"

    group_key: Mapped[str] = mapped_column(String(600), primary_key=True)
    last_eval_at: Mapped[datetime] = mapped_column()
