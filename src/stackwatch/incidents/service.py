"""Incidents: opened from alert groups or by hand, acknowledged, resolved, with a timeline.

The alert dispatcher calls :meth:`IncidentService.on_group_event` for every alert group it
notifies. A firing group of an incident severity (P0-P2 by default) opens an incident, or
updates the open one for the same group key, so replays and restarts never open a second
incident for one group. Every alert firing or resolving, every notification, acknowledgement,
status update, severity change, escalation and resolution is a timeline entry; the
post-mortem draft and the weekly review are built from them.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from stackwatch.errors import BadRequest, NotFound
from stackwatch.incidents.directory import Conflict, Directory, iso
from stackwatch.incidents.hours import WorkingHours
from stackwatch.incidents.postmortem import draft_postmortem
from stackwatch.incidents.severity import (
    SLA,
    label_severity,
    normalize_severity,
    parse_severity,
    rank,
    severity_pages,
    without_level,
)
from stackwatch.model.alerts import Alert
from stackwatch.storage.meta.db import MetaStore
from stackwatch.storage.meta.models import (
    TIMELINE_KINDS,
    AlertOccurrence,
    EscalationPolicy,
    Incident,
    TimelineEntry,
)

__all__ = ["SYSTEM", "GroupEventLike", "IncidentConfig", "IncidentService"]

log = logging.getLogger("stackwatch.incidents")

SYSTEM = "stackwatch"
"""The ``who`` of steps the server takes itself (auto-resolution, escalation)."""


class GroupEventLike(Protocol):
    """The dispatcher's ``AlertGroupEvent`` (contract 4), as far as incidents read it."""

    group_key: str
    receiver: str
    labels: dict[str, str]
    alerts: list[Alert]
    status: str
    at: datetime


def _duration_s(value: Any, where: str) -> float:
    from stackwatch.query.timerange import parse_duration

    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_duration(str(value)) / 1e9
    except BadRequest:
        from stackwatch.errors import ConfigError

        raise ConfigError(f"incidents.{where}: expected a duration such as 30s, 15m or 24h, got {value!r}") from None


@dataclass(frozen=True)
class IncidentConfig:
    """The ``incidents:`` section of the server config (all optional)."""

    #: Severities whose firing alert groups open an incident.
    open_severities: frozenset[str] = frozenset({"P0", "P1", "P2"})
    #: Severity of an alert that carries no (known) ``severity`` label.
    default_severity: str = "P3"
    #: Resolve the incident when its alert group resolves.
    auto_resolve: bool = True
    #: How long a signed acknowledge link stays valid.
    ack_link_ttl_s: float = 24 * 3600
    #: How often the escalation engine looks for pages that are due.
    escalation_tick_s: float = 5.0
    #: Escalation policy by receiver name (the route the alert group took).
    policies_by_receiver: dict[str, str] = field(default_factory=dict)
    #: Receiver name → URL, for paging without the alert dispatcher (see sender.WebhookSender).
    webhooks: dict[str, str] = field(default_factory=dict)
    #: Days alert occurrences that opened no incident are kept for the weekly review.
    alert_history_days: int = 90
    #: When incidents of severities that do not page at night (P2-P4) may page; None: always.
    working_hours: WorkingHours | None = field(default_factory=WorkingHours)

    @classmethod
    def from_dict(cls, raw: Any) -> IncidentConfig:
        from stackwatch.errors import ConfigError

        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError("incidents: expected a mapping")
        known = {"open_severities", "default_severity", "auto_resolve", "ack_link_ttl", "escalation_tick",
                 "escalation_policies_by_receiver", "webhooks", "alert_history_days", "working_hours"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"incidents: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        kwargs: dict[str, Any] = {}
        if "open_severities" in raw:
            values = raw["open_severities"]
            if not isinstance(values, list) or not all(normalize_severity(v) for v in values):
                raise ConfigError(f"incidents.open_severities: expected a list of P0-P4, got {values!r}")
            kwargs["open_severities"] = frozenset(normalize_severity(v) for v in values)
        if "default_severity" in raw:
            sev = normalize_severity(raw["default_severity"])
            if sev is None:
                raise ConfigError(f"incidents.default_severity: expected P0-P4, got {raw['default_severity']!r}")
            kwargs["default_severity"] = sev
        if "alert_history_days" in raw:
            days = raw["alert_history_days"]
            if not isinstance(days, int) or isinstance(days, bool) or days < 1:
                raise ConfigError(f"incidents.alert_history_days: expected a whole number of days >= 1, got {days!r}")
            kwargs["alert_history_days"] = days
        if "auto_resolve" in raw:
            kwargs["auto_resolve"] = bool(raw["auto_resolve"])
        if "working_hours" in raw:
            kwargs["working_hours"] = WorkingHours.from_config(raw["working_hours"])
        if "ack_link_ttl" in raw:
            kwargs["ack_link_ttl_s"] = _duration_s(raw["ack_link_ttl"], "ack_link_ttl")
        if "escalation_tick" in raw:
            kwargs["escalation_tick_s"] = max(0.05, _duration_s(raw["escalation_tick"], "escalation_tick"))
        for key, attr in (("escalation_policies_by_receiver", "policies_by_receiver"), ("webhooks", "webhooks")):
            if key in raw:
                value = raw[key]
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    raise ConfigError(f"incidents.{key}: expected a mapping of names to strings")
                kwargs[attr] = {str(k): v for k, v in value.items()}
        return cls(**kwargs)


def _service_of(labels: dict[str, str]) -> str:
    for key in ("service", "job", "component", "app"):
        if labels.get(key):
            return str(labels[key])
    return ""


def _alert_json(alert: Alert, at: datetime) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "starts_at": iso(alert.starts_at),
        "ends_at": iso(alert.ends_at) if alert.resolved(at) else None,
        "status": alert.status(at),
        "value": alert.value,
        "generator_url": alert.generator_url,
    }


def _alert_from_json(data: dict[str, Any]) -> Alert:
    def dt(v: str | None) -> datetime | None:
        return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None

    return Alert(
        labels=dict(data.get("labels", {})),
        annotations=dict(data.get("annotations", {})),
        starts_at=dt(data.get("starts_at")) or datetime.now(UTC),
        ends_at=dt(data.get("ends_at")),
        generator_url=data.get("generator_url") or "",
        value=data.get("value"),
    )


#: The episode part of a correlation key (the dispatcher's ``labels#<16 hex>``); group keys
#: (``{}:{alertname="..."}``) never end so and never start without ``{``.
_EPISODE = re.compile(r"[0-9a-f]{16}")


def _describe(alert: Alert) -> str:
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    detail = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in ("alertname", "severity"))
    text = alert.name or "alert"
    if detail:
        text += f" {{{detail}}}"
    if summary:
        text += f": {summary}"
    if alert.value is not None:
        text += f" (value {alert.value:g})"
    return text


class IncidentService:
    """The incident lifecycle over the meta store. Thread-safe: one lock orders all writes."""

    def __init__(
        self,
        meta: MetaStore,
        *,
        clock: Callable[[], datetime] | None = None,
        config: IncidentConfig | None = None,
        base_url: str = "",
    ) -> None:
        self.meta = meta
        self.clock = clock or (lambda: datetime.now(UTC))
        self.config = config or IncidentConfig()
        self.base_url = base_url.rstrip("/")
        self.directory = Directory(meta, self.clock)
        self._lock = threading.RLock()
        #: Called after an incident opens, so the escalation engine pages without waiting a tick.
        self.on_opened: list[Callable[[int], None]] = []
        #: Called when an escalation became due outside the engine's schedule (see _unhold).
        self.on_due: list[Callable[[], None]] = []
        #: Called with (incident id, "acknowledge" | "resolve") after either happened, so pagers
        #: that track incidents themselves (PagerDuty) can be told.
        self.on_state_change: list[Callable[[int, str], None]] = []
        self._queue: queue.Queue[GroupEventLike | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # -- JSON ----------------------------------------------------------------------------------

    def url_of(self, number: int) -> str:
        return f"{self.base_url}/api/v1/incidents/{number}" if self.base_url else f"/api/v1/incidents/{number}"

    def _json(self, s: Session, inc: Incident) -> dict[str, Any]:
        policy = s.get(EscalationPolicy, inc.escalation_policy_id) if inc.escalation_policy_id else None
        alerts = sorted(inc.alerts.values(), key=lambda a: (a.get("starts_at") or "", a.get("fingerprint")))
        return {
            "number": inc.number,
            "title": inc.title,
            "summary": inc.summary,
            "severity": inc.severity,
            "status": inc.status,
            "service": inc.service,
            "group_key": inc.group_key,
            "receiver": inc.receiver,
            "labels": inc.labels,
            "assignee": inc.assignee,
            "opened_at": iso(inc.opened_at),
            "opened_by": inc.opened_by,
            "acked_at": iso(inc.acked_at),
            "acked_by": inc.acked_by,
            "resolved_at": iso(inc.resolved_at),
            "resolved_by": inc.resolved_by,
            "tta_seconds": (inc.acked_at - inc.opened_at).total_seconds() if inc.acked_at else None,
            "ttr_seconds": (inc.resolved_at - inc.opened_at).total_seconds() if inc.resolved_at else None,
            "sla": SLA[inc.severity],
            "escalation": {
                "policy": policy.name if policy else None,
                "level": inc.esc_level,
                "cycle": inc.esc_cycle,
                "next_at": iso(inc.esc_next_at),
            },
            "alerts": alerts,
            "has_postmortem": inc.postmortem is not None,
            "url": self.url_of(inc.number),
        }

    @staticmethod
    def _entry_json(e: TimelineEntry) -> dict[str, Any]:
        return {"id": e.id, "at": iso(e.at), "kind": e.kind, "who": e.who, "message": e.message, "payload": e.payload}

    # -- lookups -------------------------------------------------------------------------------

    @staticmethod
    def _incident(s: Session, number: int) -> Incident:
        inc = s.scalar(sa.select(Incident).where(Incident.number == number))
        if inc is None:
            raise NotFound(f"no incident #{number}")
        return inc

    @staticmethod
    def _timeline(s: Session, incident_id: int) -> list[TimelineEntry]:
        return list(s.scalars(sa.select(TimelineEntry).where(TimelineEntry.incident_id == incident_id)
                              .order_by(TimelineEntry.at, TimelineEntry.id)))

    def get(self, number: int) -> dict[str, Any]:
        """The incident with its timeline, oldest entry first."""
        with self.meta.session() as s:
            inc = self._incident(s, number)
            return {**self._json(s, inc), "timeline": [self._entry_json(e) for e in self._timeline(s, inc.id)]}

    def incident_id(self, number: int) -> int:
        with self.meta.session() as s:
            return self._incident(s, number).id

    def get_by_id(self, incident_id: int) -> dict[str, Any]:
        with self.meta.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                raise NotFound(f"no incident with id {incident_id}")
            return self._json(s, inc)

    def list(
        self,
        *,
        status: Iterable[str] = (),
        severity: Iterable[str] = (),
        service: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; each filter narrows (several statuses or severities: any of them)."""
        statuses = [str(x) for x in status]
        for st in statuses:
            if st not in ("triggered", "acknowledged", "resolved", "open"):
                raise BadRequest(f"status: unknown status {st!r}: use triggered, acknowledged, resolved or open")
        q = sa.select(Incident)
        if statuses:
            wanted = set(statuses) - {"open"} | ({"triggered", "acknowledged"} if "open" in statuses else set())
            q = q.where(Incident.status.in_(sorted(wanted)))
        severities = [parse_severity(x) for x in severity]
        if severities:
            q = q.where(Incident.severity.in_(severities))
        if service:
            q = q.where(Incident.service == service)
        if since:
            q = q.where(Incident.opened_at >= since)
        if until:
            q = q.where(Incident.opened_at < until)
        with self.meta.session() as s:
            rows = s.scalars(q.order_by(Incident.number.desc()).limit(limit)).all()
            return [self._json(s, r) for r in rows]

    # -- timeline ------------------------------------------------------------------------------

    @staticmethod
    def _add(s: Session, inc: Incident, kind: str, who: str, message: str, at: datetime,
             payload: dict[str, Any] | None = None) -> None:
        assert kind in TIMELINE_KINDS, kind
        s.add(TimelineEntry(incident_id=inc.id, at=at, kind=kind, who=who, message=message, payload=payload or {}))
        inc.updated_at = at

    def add_timeline(self, incident_id: int, kind: str, who: str, message: str,
                     payload: dict[str, Any] | None = None, at: datetime | None = None) -> None:
        """Append an entry (for the escalation engine's pages and their delivery results)."""
        with self._lock, self.meta.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is not None:
                self._add(s, inc, kind, who, message, at or self.clock(), payload)

    # -- opening -------------------------------------------------------------------------------

    def _policy_for(self, s: Session, receiver: str, labels: dict[str, str], name: str | None = None) -> int | None:
        wanted = name or self.config.policies_by_receiver.get(receiver) or labels.get("escalation_policy")
        if wanted:
            found = s.scalar(sa.select(EscalationPolicy.id).where(EscalationPolicy.name == wanted))
            if found is None:
                if name:
                    raise BadRequest(f"escalation_policy: no escalation policy {name!r}")
                log.warning("escalation policy %r (for receiver %r) does not exist; using the default", wanted, receiver)
            else:
                return int(found)
        default = s.scalar(sa.select(EscalationPolicy.id).where(EscalationPolicy.is_default.is_(True)))
        return int(default) if default is not None else None

    def _new_incident(self, s: Session, *, title: str, severity: str, service: str, at: datetime, by: str,
                      summary: str = "", group_key: str | None = None, receiver: str = "",
                      labels: dict[str, str] | None = None, assignee: str = "", policy_id: int | None = None
                      ) -> Incident:
        number = (s.scalar(sa.select(sa.func.max(Incident.number))) or 0) + 1
        inc = Incident(number=number, title=title[:500], summary=summary, severity=severity, status="triggered",
                       service=service, group_key=group_key, receiver=receiver, labels=labels or {}, alerts={},
                       assignee=assignee, opened_at=at, opened_by=by, escalation_policy_id=policy_id,
                       esc_level=0, esc_cycle=0, esc_next_at=at if policy_id else None, updated_at=at)
        s.add(inc)
        s.flush()
        return inc

    def create(self, *, title: str, severity: str, by: str, service: str = "", summary: str = "",
               assignee: str = "", escalation_policy: str | None = None,
               labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Open an incident by hand (a customer report, a problem no alert caught)."""
        title = (title or "").strip()
        if not title:
            raise BadRequest("title: required")
        sev = parse_severity(severity)
        now = self.clock()
        with self._lock, self.meta.session() as s:
            policy_id = self._policy_for(s, "", labels or {}, escalation_policy)
            inc = self._new_incident(s, title=title, severity=sev, service=service, at=now, by=by, summary=summary,
                                     labels=labels, assignee=assignee, policy_id=policy_id)
            self._add(s, inc, "opened", by, f"Opened by hand: {title}", now, {"severity": sev})
            out = self._json(s, inc)
        self._notify_opened(out["number"])
        return out

    def _notify_state(self, incident_id: int, action: str) -> None:
        for callback in self.on_state_change:
            try:
                callback(incident_id, action)
            except Exception:
                log.exception("incident state hook failed")

    def _notifications(self, incident_id: int) -> list[dict[str, Any]]:
        """The payloads of an incident's ``notification`` timeline entries, oldest first."""
        with self.meta.session() as s:
            rows = s.scalars(sa.select(TimelineEntry).where(TimelineEntry.incident_id == incident_id,
                                                            TimelineEntry.kind == "notification")
                             .order_by(TimelineEntry.at, TimelineEntry.id))
            return [dict(e.payload) for e in rows]

    def paged_receivers(self, incident_id: int) -> list[str]:
        """Receivers escalation paged for this incident, in first-paged order."""
        out: list[str] = []
        for payload in self._notifications(incident_id):
            receiver = payload.get("receiver")
            if payload.get("level") and receiver and receiver not in out:
                out.append(receiver)
        return out

    def notified_groups(self, incident_id: int) -> list[tuple[str, str]]:
        """(receiver, group key) of the alert groups routes notified for this incident.

        With correlation, one incident holds several groups, each notified under its own key
        (a PagerDuty route's dedup key); an acknowledge or resolve must reach each of them.
        """
        out: list[tuple[str, str]] = []
        for payload in self._notifications(incident_id):
            pair = (payload.get("receiver"), payload.get("group_key"))
            if pair[0] and pair[1] and not payload.get("level") and pair not in out:
                out.append(pair)  # type: ignore[arg-type]
        return out

    def _notify_opened(self, number: int) -> None:
        for callback in self.on_opened:
            try:
                callback(number)
            except Exception:
                log.exception("incident-opened hook failed")

    def on_group_event(self, event: GroupEventLike) -> None:
        """The dispatcher's group listener: returns at once and never raises into the dispatcher.

        The dispatcher calls listeners on its timer thread, before it hands the group to its
        notifiers; database work there would delay every notification. Once :meth:`start` ran,
        events go to a queue that one worker drains in order; before, they are handled inline.
        """
        if self._worker is not None:
            self._queue.put(event)
            return
        self._handle_safely(event)

    def _handle_safely(self, event: GroupEventLike) -> None:
        try:
            self.handle_group_event(event)
        except Exception:
            log.exception("incidents: could not record alert group %r", getattr(event, "group_key", "?"))
            return
        recorded = getattr(event, "recorded", None)
        if recorded is not None:
            try:
                recorded()  # the dispatcher persists that incidents know: a restart does not repeat it
            except Exception:
                log.exception("incidents: could not confirm alert group %r", getattr(event, "group_key", "?"))

    def start(self) -> None:
        """Handle listener events on a worker thread from now on."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._drain_forever, name="stackwatch-incidents", daemon=True)
            self._worker.start()

    def _drain_forever(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self._handle_safely(event)
            finally:
                self._queue.task_done()

    def wait_idle(self) -> None:
        """Block until every queued group event has been recorded."""
        self._queue.join()

    def stop(self, timeout: float = 10.0) -> None:
        """Record what is queued, then stop the worker."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    def _severity_of(self, alerts: list[Alert], labels: dict[str, str]) -> str:
        found = [label_severity(a.labels) for a in alerts]
        known = [x for x in found if x]
        if known:
            return min(known, key=rank)
        return label_severity(labels) or self.config.default_severity

    def handle_group_event(self, event: GroupEventLike) -> int | None:
        """Record the group's alerts; open or update its incident. Returns the incident number."""
        at = event.at if event.at.tzinfo else event.at.replace(tzinfo=UTC)
        alerts = list(event.alerts)
        firing = [a for a in alerts if not a.resolved(at)]
        # Alerts the dispatcher correlated across groups (shared labels within a window) carry one
        # correlation key: they make one incident rather than one per group.
        key = getattr(event, "correlation_key", "") or event.group_key
        opened: int | None = None
        with self._lock, self.meta.session() as s:
            occurrences = self._record_occurrences(s, event, alerts, at)
            inc = self._open_incident_for(s, key, firing)
            if inc is None:
                severity = self._severity_of(firing, event.labels)
                if not firing or severity not in self.config.open_severities:
                    return None
                first = sorted(firing, key=lambda a: (rank(self._severity_of([a], {})), a.starts_at))[0]
                names = sorted({a.name for a in firing if a.name})
                title = first.annotations.get("summary") or first.name or "alert group"
                if len(names) > 1:
                    title = f"{title} (+{len(names) - 1} more alert{'s' if len(names) > 2 else ''})"
                labels = {**event.labels}
                inc = self._new_incident(
                    s, title=title, severity=severity, service=_service_of({**first.labels, **labels}), at=at,
                    by=SYSTEM, summary=first.annotations.get("description", ""), group_key=key,
                    receiver=event.receiver, labels=labels,
                    policy_id=self._policy_for(s, event.receiver, {**first.labels, **labels}),
                )
                self._add(s, inc, "opened", SYSTEM, f"Opened from alert group {event.group_key} ({severity})", at,
                          {"group_key": event.group_key, "receiver": event.receiver})
                opened = inc.number
            due = self._update_from_alerts(s, inc, alerts, at, occurrences)
            firing_count = sum(1 for a in alerts if not a.resolved(at))
            self._add(s, inc, "notification", event.receiver or SYSTEM,
                      f"Alert group notified to {event.receiver or 'the default receiver'}: "
                      f"{firing_count} firing, {len(alerts) - firing_count} resolved",
                      at, {"receiver": event.receiver, "status": event.status, "group_key": event.group_key,
                           "firing": firing_count, "resolved": len(alerts) - firing_count})
            still_firing = [a for a in inc.alerts.values() if a.get("status") == "firing"]
            resolved_now = inc.status != "resolved" and not still_firing and self.config.auto_resolve
            if resolved_now:
                self._resolve(s, inc, SYSTEM, "All alerts resolved", at)
            number, incident_id = inc.number, inc.id
        if opened is not None:
            self._notify_opened(opened)
        if due:
            self._wake_escalation()
        if resolved_now:
            self._notify_state(incident_id, "resolve")
        return number

    def _open_incident_for(self, s: Session, group_key: str, firing: list[Alert]) -> Incident | None:
        open_q = sa.select(Incident).where(Incident.status != "resolved")
        inc = s.scalar(open_q.where(Incident.group_key == group_key).order_by(Incident.number.desc()))
        if inc is not None or not firing:
            return inc
        labels, sep, episode = group_key.rpartition("#")
        if sep and not labels.startswith("{") and _EPISODE.fullmatch(episode):
            # A correlation key (``service=ship#<episode>``): the dispatcher keeps its episodes
            # in memory, so after a restart the same service starts a new one. An incident still
            # open for those correlation labels is that episode's: join it, do not page again.
            prefix = labels.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "#%"
            inc = s.scalar(open_q.where(Incident.group_key.like(prefix, escape="\\"))
                           .order_by(Incident.number.desc()))
            if inc is not None:
                return inc
        # Another route notifying the same alerts (``continue: true``) joins the incident they
        # opened. The same alert, that is, whatever its level: a threshold rule's warning that
        # turns critical changes its severity label, so its fingerprint, and the critical
        # route's group would otherwise open a second incident for one problem, and page again.
        wanted = {a.fingerprint for a in firing}
        same = {without_level(a.labels) for a in firing}
        for candidate in s.scalars(open_q.where(Incident.group_key.is_not(None)).order_by(Incident.number.desc())):
            if wanted & set(candidate.alerts) or any(
                    without_level(known.get("labels") or {}) in same for known in candidate.alerts.values()):
                return candidate
        return None

    @staticmethod
    def _record_occurrences(s: Session, event: GroupEventLike, alerts: list[Alert],
                            at: datetime) -> dict[str, AlertOccurrence]:
        out = {}
        # One query per 500 alerts rather than one per alert: big groups arrive on every repeat.
        known: dict[tuple[str, datetime], AlertOccurrence] = {}
        for i in range(0, len(alerts), 500):
            chunk = alerts[i:i + 500]
            rows = s.scalars(sa.select(AlertOccurrence).where(
                AlertOccurrence.fingerprint.in_({a.fingerprint for a in chunk}),
                AlertOccurrence.starts_at.in_({a.starts_at for a in chunk})))
            known.update({(o.fingerprint, o.starts_at.astimezone(UTC)): o for o in rows})
        for alert in alerts:
            occ = known.get((alert.fingerprint, alert.starts_at.astimezone(UTC)))
            if occ is None:
                occ = AlertOccurrence(
                    fingerprint=alert.fingerprint, alertname=alert.name[:200], labels=dict(alert.labels),
                    severity=label_severity(alert.labels) or label_severity(event.labels) or "P4",
                    group_key=event.group_key[:1000], receiver=event.receiver[:200], starts_at=alert.starts_at,
                )
                s.add(occ)
            if alert.resolved(at) and occ.ends_at is None:
                occ.ends_at = alert.ends_at
            out[alert.fingerprint] = occ
        s.flush()
        return out

    def _update_from_alerts(self, s: Session, inc: Incident, alerts: list[Alert], at: datetime,
                            occurrences: dict[str, AlertOccurrence]) -> bool:
        """Record the alerts on the incident; True when a raised severity made its held
        escalation due (see :meth:`_unhold`)."""
        due = False
        known = dict(inc.alerts)
        for alert in alerts:
            before = known.get(alert.fingerprint)
            now = _alert_json(alert, at)
            occurrences[alert.fingerprint].incident_id = inc.id
            same_run = before is not None and before.get("starts_at") == now["starts_at"]
            if now["status"] == "firing" and not (same_run and before and before.get("status") == "firing"):
                self._add(s, inc, "alert_firing", SYSTEM, _describe(alert), at,
                          {"fingerprint": alert.fingerprint, "labels": now["labels"], "value": alert.value,
                           "starts_at": now["starts_at"]})
                sev = label_severity(alert.labels)
                if sev and rank(sev) < rank(inc.severity) and inc.status != "resolved":
                    self._add(s, inc, "severity_changed", SYSTEM,
                              f"Severity raised from {inc.severity} to {sev} by {alert.name}", at,
                              {"from": inc.severity, "to": sev})
                    inc.severity = sev
                    due = self._unhold(inc, at) or due
            elif now["status"] == "resolved" and (before is None or before.get("status") == "firing"):
                self._add(s, inc, "alert_resolved", SYSTEM, _describe(alert), at,
                          {"fingerprint": alert.fingerprint, "ends_at": now["ends_at"], "starts_at": now["starts_at"]})
            known[alert.fingerprint] = now
        inc.alerts = known
        return due

    # -- lifecycle -----------------------------------------------------------------------------

    def acknowledge(self, number: int, by: str, message: str = "", via: str = "api") -> dict[str, Any]:
        """triggered → acknowledged; stops escalation. Already acknowledged or resolved: 409."""
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            if inc.status == "acknowledged":
                raise Conflict(f"incident #{number} is already acknowledged (by {inc.acked_by} at {iso(inc.acked_at)})")
            if inc.status == "resolved":
                raise Conflict(f"incident #{number} is already resolved")
            inc.status, inc.acked_at, inc.acked_by, inc.esc_next_at = "acknowledged", now, by, None
            if not inc.assignee:
                inc.assignee = by
            self._add(s, inc, "acknowledged", by, message or f"Acknowledged via {via}", now, {"via": via})
            out, incident_id = self._json(s, inc), inc.id
        self._notify_state(incident_id, "acknowledge")
        return out

    def _resolve(self, s: Session, inc: Incident, by: str, message: str, at: datetime) -> None:
        inc.status, inc.resolved_at, inc.resolved_by, inc.esc_next_at = "resolved", at, by, None
        self._add(s, inc, "resolved", by, message or "Resolved", at)
        s.flush()
        if inc.postmortem is None:
            incident = self._json(s, inc)
            timeline = [self._entry_json(e) for e in self._timeline(s, inc.id)]
            inc.postmortem = draft_postmortem(incident, timeline)
            inc.postmortem_updated_at, inc.postmortem_updated_by = at, SYSTEM

    def resolve(self, number: int, by: str, message: str = "") -> dict[str, Any]:
        """→ resolved (from triggered or acknowledged) and a post-mortem draft is written."""
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            if inc.status == "resolved":
                raise Conflict(f"incident #{number} is already resolved (by {inc.resolved_by} at {iso(inc.resolved_at)})")
            self._resolve(s, inc, by, message, now)
            out, incident_id = self._json(s, inc), inc.id
        self._notify_state(incident_id, "resolve")
        return out

    def _note(self, number: int, kind: str, by: str, message: str) -> dict[str, Any]:
        if not (message or "").strip():
            raise BadRequest("message: required")
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            self._add(s, inc, kind, by, message.strip(), now)
            return self._json(s, inc)

    def status_update(self, number: int, by: str, message: str) -> dict[str, Any]:
        """A progress note for stakeholders ("rolled back, error rate dropping")."""
        return self._note(number, "status_update", by, message)

    def comment(self, number: int, by: str, message: str) -> dict[str, Any]:
        return self._note(number, "comment", by, message)

    def change_severity(self, number: int, severity: str, by: str, reason: str = "") -> dict[str, Any]:
        """Triage: upgrade or downgrade (the guide's step 2)."""
        sev = parse_severity(severity)
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            if inc.severity == sev:
                raise Conflict(f"incident #{number} is already {sev}")
            old, inc.severity = inc.severity, sev
            text = f"Severity changed from {old} to {sev}" + (f": {reason}" if reason else "")
            self._add(s, inc, "severity_changed", by, text, now, {"from": old, "to": sev})
            due = self._unhold(inc, now)
            out = self._json(s, inc)
        if due:
            self._wake_escalation()
        return out

    @staticmethod
    def _unhold(inc: Incident, at: datetime) -> bool:
        """A held incident (a P2-P4 waiting for working hours) that becomes P0/P1 pages now.

        Its first level is due at once; True tells the caller to wake the escalation engine
        after the commit (:meth:`_wake_escalation`). An incident already paging keeps its schedule.
        """
        if (inc.status == "triggered" and severity_pages(inc.severity) and inc.escalation_policy_id
                and inc.esc_level == 0 and inc.esc_cycle == 0
                and inc.esc_next_at is not None and inc.esc_next_at > at):
            inc.esc_next_at = at
            return True
        return False

    def _wake_escalation(self) -> None:
        for callback in self.on_due:
            try:
                callback()
            except Exception:
                log.exception("escalation-due hook failed")

    def update(self, number: int, by: str, *, title: str | None = None, assignee: str | None = None,
               service: str | None = None, summary: str | None = None) -> dict[str, Any]:
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            changes = []
            for attr, value in (("title", title), ("assignee", assignee), ("service", service), ("summary", summary)):
                if value is not None and getattr(inc, attr) != value:
                    setattr(inc, attr, value)
                    changes.append(f"{attr} → {value!r}")
            if changes:
                self._add(s, inc, "comment", by, "Changed " + ", ".join(changes), now)
            return self._json(s, inc)

    # -- post-mortem ---------------------------------------------------------------------------

    def postmortem(self, number: int) -> dict[str, Any]:
        """The stored post-mortem, or (before resolution) a preview draft that is not stored."""
        with self.meta.session() as s:
            inc = self._incident(s, number)
            if inc.postmortem is not None:
                return {"number": number, "markdown": inc.postmortem, "stored": True,
                        "updated_at": iso(inc.postmortem_updated_at), "updated_by": inc.postmortem_updated_by}
            incident = self._json(s, inc)
            timeline = [self._entry_json(e) for e in self._timeline(s, inc.id)]
            return {"number": number, "markdown": draft_postmortem(incident, timeline), "stored": False,
                    "updated_at": None, "updated_by": None}

    def set_postmortem(self, number: int, markdown: str, by: str) -> dict[str, Any]:
        if not isinstance(markdown, str) or not markdown.strip():
            raise BadRequest("markdown: required (the post-mortem text)")
        if len(markdown) > 1_000_000:
            raise BadRequest("markdown: longer than 1,000,000 characters")
        now = self.clock()
        with self._lock, self.meta.session() as s:
            inc = self._incident(s, number)
            inc.postmortem, inc.postmortem_updated_at, inc.postmortem_updated_by = markdown, now, by
            inc.updated_at = now
        return self.postmortem(number)

    def prune_alert_history(self, now: datetime | None = None) -> int:
        """Forget alert occurrences older than ``alert_history_days`` that opened no incident.

        Every notified alert is recorded for the weekly review; without pruning, a noisy rule
        would grow the table forever. Occurrences tied to an incident stay with it.
        """
        cutoff = (now or self.clock()) - timedelta(days=self.config.alert_history_days)
        with self._lock, self.meta.session() as s:
            result = s.execute(sa.delete(AlertOccurrence).where(AlertOccurrence.starts_at < cutoff,
                                                                AlertOccurrence.incident_id.is_(None)))
            return int(result.rowcount or 0)

    # -- escalation support --------------------------------------------------------------------

    def due_for_escalation(self, now: datetime) -> list[int]:
        with self.meta.session() as s:
            return list(s.scalars(sa.select(Incident.id).where(Incident.status == "triggered",
                                                               Incident.esc_next_at.is_not(None),
                                                               Incident.esc_next_at <= now)
                                  .order_by(Incident.esc_next_at)))

    def claim_escalation_step(self, incident_id: int, now: datetime) -> dict[str, Any] | None:
        """Take the due escalation level of an incident and move its state to the next one.

        The state is advanced before anything is sent, in one transaction: after a crash or a
        restart the engine continues with the next level instead of paging the same one again.
        Returns the level to page (targets, level and cycle numbers) or None if nothing is due.
        """
        with self._lock, self.meta.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None or inc.status != "triggered" or inc.esc_next_at is None or inc.esc_next_at > now:
                return None
            policy = s.get(EscalationPolicy, inc.escalation_policy_id) if inc.escalation_policy_id else None
            if policy is None or not policy.levels:
                inc.esc_next_at = None
                return None
            hours = self.config.working_hours
            if hours is not None and not severity_pages(inc.severity) and not hours.contains(now):
                # Not at night for this severity: the escalation starts with working hours.
                inc.esc_next_at = hours.next_start(now)
                return {"incident_id": inc.id, "held_until": iso(inc.esc_next_at), "severity": inc.severity,
                        "hours": hours.describe()}
            index = min(inc.esc_level, len(policy.levels) - 1)
            level = policy.levels[index]
            step = {"incident_id": inc.id, "number": inc.number, "level": index + 1, "cycle": inc.esc_cycle + 1,
                    "targets": level["targets"], "policy": policy.name, "levels": len(policy.levels)}
            wait = timedelta(minutes=float(level.get("delay_minutes", 0)))
            if index + 1 < len(policy.levels):
                inc.esc_level, inc.esc_next_at = index + 1, now + wait
            elif inc.esc_cycle < policy.repeat:
                inc.esc_level, inc.esc_cycle, inc.esc_next_at = 0, inc.esc_cycle + 1, now + wait
            else:
                inc.esc_level, inc.esc_next_at = index + 1, None
            step["next_at"] = iso(inc.esc_next_at)
            step["incident"] = self._json(s, inc)
            return step

    def alerts_of(self, incident_id: int) -> list[Alert]:
        with self.meta.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                return []
            return [_alert_from_json(a) for a in inc.alerts.values()]

