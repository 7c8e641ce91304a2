"""The dispatcher: alerts in; routed, grouped, muted, deduplicated notifications out.

It follows Alertmanager's model in three separate steps:

* **routing** (:mod:`.routing`): each alert goes to the routes its labels match, and into the
  aggregation group of that route named by its ``group_by`` label values;
* **timing**: a new group waits ``group_wait`` so that alerts firing together go out together,
  then is looked at every ``group_interval``; a group whose content did not change is sent again
  only after ``repeat_interval``;
* **muting and delivery**: at each flush, alerts muted by a silence, an inhibition rule or a
  maintenance window are left out; route time intervals mute the whole group; each notifier of
  the receiver is compared with the notification log (persisted, so a restart does not page
  again) and, if there is news, runs as its own task with retries, so one failing receiver never
  holds back another.

Time comes from an injectable ``clock``; timers are plain deadlines checked by :meth:`run_due`,
which a background thread calls a few times a second and tests call directly after moving their
clock, so hours of alerting behaviour run in milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stackwatch.alerting.config import AlertingConfig, Integration, Receiver
from stackwatch.alerting.events import AlertGroupEvent, DeliveryResult
from stackwatch.alerting.matchers import Matcher, equality_filter, matches_all
from stackwatch.alerting.notifiers import AlertList, Message, NotifyError, notifier_for
from stackwatch.alerting.routing import Route, build_routes
from stackwatch.alerting.severity import severity_of
from stackwatch.alerting.silences import MaintenanceWindowSpec, Silence, matchers_from_json, matchers_to_json
from stackwatch.errors import BadRequest, NotFound
from stackwatch.model.alerts import Alert

__all__ = ["Clock", "Dispatcher", "open_dispatcher"]

log = logging.getLogger("stackwatch.alerting")

Clock = Callable[[], datetime]
GroupListener = Callable[[AlertGroupEvent], None]

#: Resolved alerts stay visible in the API this long after they resolved.
RESOLVED_RETENTION = timedelta(minutes=15)
#: Notification log entries outlive the last notification by this long (Alertmanager: 5 days).
NFLOG_RETENTION = timedelta(days=5)
#: Delivery results kept in the database.
DELIVERIES_KEPT = 10_000
_ZERO_TIME = "0001-01-01T00:00:00Z"
_LISTENERS = "__listeners__"


def _utc_clock() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str:
    return dt.isoformat().replace("+00:00", "Z") if dt else _ZERO_TIME


def _fmt_value(v: float | None) -> str:
    if v is None:
        return ""
    return format(v, ".6g")


@dataclass
class _Group:
    route: Route
    labels: dict[str, str]
    key: str
    alerts: dict[str, Alert] = field(default_factory=dict)
    #: When each alert was last put (a resolved alert re-put after a flush must not be dropped).
    updated: dict[str, datetime] = field(default_factory=dict)
    next_flush: datetime | None = None
    flushed: bool = False


@dataclass
class _NflogEntry:
    firing: frozenset[str]
    resolved: frozenset[str]
    sent_at: datetime


@dataclass
class _StoredAlert:
    alert: Alert
    updated_at: datetime


class Dispatcher:
    """Alertmanager's dispatcher for one server. See the module docstring for the model.

    ``meta`` (a migrated :class:`~stackwatch.storage.meta.db.MetaStore`) persists silences,
    maintenance windows, the notification log and delivery results; without it they live in
    memory (tests, ``stackwatch rules test``). ``clock`` returns an aware UTC datetime.
    ``retry_base`` is the first retry delay; each retry doubles it up to ``retry_max``.
    """

    def __init__(
        self,
        config: AlertingConfig | None = None,
        meta: Any = None,
        *,
        clock: Clock | None = None,
        external_url: str = "http://127.0.0.1:8040",
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        max_attempts: int = 8,
        tick_interval: float = 0.25,
        max_concurrent: int = 32,
    ) -> None:
        self.config = config or AlertingConfig.default()
        self.meta = meta
        self.clock: Clock = clock or _utc_clock
        self.external_url = external_url.rstrip("/")
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.tick_interval = tick_interval
        #: Called with every :class:`AlertGroupEvent` the dispatcher decides to notify.
        self.group_listeners: list[GroupListener] = []
        self._lock = threading.RLock()
        self._root: Route = build_routes(self.config.route)
        self._alerts: dict[str, _StoredAlert] = {}
        self._groups: dict[tuple[str, str], _Group] = {}  # (route id, group key)
        self._silences: dict[str, Silence] = {}
        self._windows: dict[str, MaintenanceWindowSpec] = {}
        self._nflog: dict[str, _NflogEntry] = {}
        self._episodes: dict[str, tuple[str, datetime]] = {}
        self._deliveries: deque[DeliveryResult] = deque(maxlen=1000)
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._loaded = False
        self._version = 0  # bumped when alerts or configuration change (inhibition cache key)
        self._inhibit_cache: tuple[tuple[datetime, int], list[dict[tuple[str, ...], set[str]]]] | None = None
        self._next_gc: datetime | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.max_concurrent = max_concurrent
        #: Where the configuration came from (the ``alerting:`` value): :meth:`reload` reads it again.
        self.source: Any = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, ticker: bool = True) -> None:
        """Load persisted state, start the delivery loop and (unless ``ticker=False``) the timer thread."""
        self.load()
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever, name="alerting-delivery",
                                                 daemon=True)
            self._loop_thread.start()
        if ticker and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick_forever, name="alerting-timers", daemon=True)
            self._ticker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the timers; wait up to ``timeout`` for deliveries in flight, then stop the loop."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        self.wait_idle(timeout)
        if self._loop is not None:
            from stackwatch.alerting.notifiers.base import close_clients

            try:
                asyncio.run_coroutine_threadsafe(close_clients(), self._loop).result(timeout=5)
            except Exception:
                log.debug("alerting: closing HTTP clients failed", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            self._loop.close()
            self._loop = None
            self._loop_thread = None

    def _tick_forever(self) -> None:
        while not self._stop.wait(self.tick_interval):
            try:
                self.run_due()
            except Exception:  # the timer thread must survive a bug in one flush
                log.exception("alerting: flushing alert groups failed")

    def load(self) -> None:
        """Read silences, maintenance windows and the notification log from the meta store."""
        if self._loaded or self.meta is None:
            self._loaded = True
            return
        from stackwatch.storage.meta.models import AlertNotificationLog, AlertSilence, MaintenanceWindow

        now = self.clock()
        with self.meta.session() as s:
            for row in s.query(AlertSilence).all():
                self._silences[row.id] = Silence(row.id, matchers_from_json(row.matchers), row.starts_at, row.ends_at,
                                                 row.created_by, row.comment, row.updated_at)
            for mw in s.query(MaintenanceWindow).all():
                self._windows[mw.id] = MaintenanceWindowSpec(
                    mw.id, mw.name, matchers_from_json(mw.matchers), mw.starts_at, mw.ends_at, mw.recurrence,
                    mw.pass_severity, mw.created_by, mw.comment)
            for entry in s.query(AlertNotificationLog).filter(AlertNotificationLog.expires_at > now).all():
                self._nflog[entry.id] = _NflogEntry(frozenset(entry.firing), frozenset(entry.resolved), entry.sent_at)
        self._loaded = True

    def apply_config(self, config: AlertingConfig) -> None:
        """Switch to a new configuration (reload): routes are rebuilt and alerts regrouped."""
        with self._lock:
            self._version += 1
            self.config = config
            self._root = build_routes(config.route)
            old = self._groups
            self._groups = {}
            now = self.clock()
            for stored in self._alerts.values():
                self._route_alert(stored.alert, now)
            for key, group in self._groups.items():
                if key in old:  # keep the timers of groups that survive the reload
                    group.next_flush, group.flushed = old[key].next_flush, old[key].flushed

    def reload(self) -> None:
        """Read the configuration again from where it came from (a file path is re-read) and
        apply it; a bad configuration raises :class:`ConfigError` and the running one stays."""
        from stackwatch.alerting.config import load_alerting_config

        self.apply_config(load_alerting_config(self.source))

    # -- alerts in -----------------------------------------------------------------------------

    def put_alerts(self, alerts: Sequence[Alert]) -> None:
        """Take alerts from the rule evaluator or ``POST /api/v2/alerts``; thread-safe, returns at once.

        An alert without ``ends_at`` gets ``now + resolve_timeout`` (it resolves unless re-sent);
        a re-sent alert keeps the earliest ``starts_at`` of its firing episode.
        """
        now = self.clock()
        timeout = self.config.global_.resolve_timeout
        with self._lock:
            self._version += 1
            for incoming in alerts:
                alert = Alert(dict(incoming.labels), dict(incoming.annotations), incoming.starts_at,
                              incoming.ends_at, incoming.generator_url, incoming.value)
                if alert.starts_at.tzinfo is None:
                    alert.starts_at = alert.starts_at.replace(tzinfo=UTC)
                if alert.ends_at is not None and alert.ends_at.tzinfo is None:
                    alert.ends_at = alert.ends_at.replace(tzinfo=UTC)
                if alert.ends_at is None:
                    alert.ends_at = now + timeout
                fp = alert.fingerprint
                old = self._alerts.get(fp)
                if old is not None and old.alert.ends_at is not None and alert.starts_at <= old.alert.ends_at \
                        and old.alert.starts_at < alert.starts_at:
                    alert.starts_at = old.alert.starts_at  # same episode: keep when it began
                self._alerts[fp] = _StoredAlert(alert, now)
                self._route_alert(alert, now)

    def _route_alert(self, alert: Alert, now: datetime) -> None:
        for route in self._root.match(alert.labels):
            labels = route.group_labels(alert.labels)
            key = route.group_key(labels)
            gid = (route.id, key)
            group = self._groups.get(gid)
            if group is None:
                group = _Group(route, labels, key, next_flush=now + route.config.group_wait)
                self._groups[gid] = group
            fp = alert.fingerprint
            group.alerts[fp] = alert
            group.updated[fp] = now
            # An alert that has been firing longer than group_wait (e.g. re-sent after our restart)
            # need not wait again: Alertmanager flushes such a new group at once.
            if not group.flushed and alert.starts_at + route.config.group_wait < now:
                group.next_flush = now

    # -- timers ---------------------------------------------------------------------------------

    def run_due(self, now: datetime | None = None) -> int:
        """Flush every group whose timer is due; return how many were flushed.

        The background thread calls this every ``tick_interval``; tests call it after moving the
        clock. Deliveries are started, not awaited (see :meth:`wait_idle`).
        """
        now = now or self.clock()
        work: list[tuple[AlertGroupEvent | None, list[tuple[Receiver, Integration, Message, str, list[str],
                                                            list[str]]]]] = []
        flushed = 0
        with self._lock:
            for gid, group in list(self._groups.items()):
                if group.next_flush is None or group.next_flush > now:
                    continue
                flushed += 1
                work.append(self._flush(group, now))
                group.flushed = True
                group.next_flush = now + group.route.config.group_interval
                if not group.alerts:
                    del self._groups[gid]
            self._gc(now)
        for event, deliveries in work:
            if event is not None:
                for listener in list(self.group_listeners):
                    try:
                        listener(event)
                    except Exception:
                        log.exception("alerting: group listener %r failed", listener)
            for receiver, integration, message, nkey, firing, resolved in deliveries:
                self._submit(self._deliver(receiver, integration, message, nkey, firing, resolved))
        return flushed

    def _gc(self, now: datetime) -> None:
        if self._next_gc is not None and now < self._next_gc:
            return
        self._next_gc = now + timedelta(seconds=10)
        self._version += 1
        for fp, stored in list(self._alerts.items()):
            ends = stored.alert.ends_at
            if ends is not None and ends + RESOLVED_RETENTION < now and not any(
                    fp in g.alerts for g in self._groups.values()):
                del self._alerts[fp]
        for key, (_episode, last) in list(self._episodes.items()):
            if last + self.config.correlation.window < now:
                del self._episodes[key]

    def _flush(self, group: _Group, now: datetime) -> tuple[AlertGroupEvent | None, list[Any]]:
        route_cfg = group.route.config
        snapshot = dict(group.alerts)
        snapshot_updated = dict(group.updated)
        try:
            if any(any(i.contains(now) for i in self.config.time_intervals[name])
                   for name in route_cfg.mute_time_intervals):
                return None, []
            if route_cfg.active_time_intervals and not any(
                    any(i.contains(now) for i in self.config.time_intervals[name])
                    for name in route_cfg.active_time_intervals):
                return None, []
            kept = sorted(((fp, a) for fp, a in snapshot.items() if not self._muted_by(a, now, fp)),
                          key=lambda item: _alert_order(item[1]))
            if not kept:
                return None, []
            alerts = [a for _, a in kept]
            firing = [fp for fp, a in kept if not a.resolved(now)]
            resolved = [fp for fp, a in kept if a.resolved(now)]
            receiver = self.config.receivers[route_cfg.receiver]
            repeat = route_cfg.repeat_interval
            event: AlertGroupEvent | None = None
            lkey = self._nflog_key(group.key, receiver.name, _LISTENERS)
            if self._needs_update(self._nflog.get(lkey), firing, resolved, True, repeat, now):
                entry = (lkey, group.key, receiver.name, _LISTENERS, firing, resolved, now)
                event = AlertGroupEvent(
                    group_key=group.key, receiver=receiver.name, labels=dict(group.labels), alerts=list(alerts),
                    status="firing" if firing else "resolved", at=now,
                    correlation_key=self._correlate(group, alerts, now), route=route_cfg.path,
                    recorded=lambda: self._persist_sent(*entry))
                # In memory now; persisted only once a listener has recorded the event (see
                # AlertGroupEvent.recorded): a restart then neither loses it nor repeats it.
                self._log_sent(lkey, group.key, receiver.name, _LISTENERS, firing, resolved, now, persist=False)
            deliveries = []
            for integration in receiver.integrations:
                nkey = self._nflog_key(group.key, receiver.name, integration.name)
                if not self._needs_update(self._nflog.get(nkey), firing, resolved, integration.send_resolved,
                                          repeat, now):
                    continue
                chosen = alerts if integration.send_resolved else [a for a in alerts if not a.resolved(now)]
                if not chosen:  # all resolved and this notifier does not want to hear it: just log it
                    self._log_sent(nkey, group.key, receiver.name, integration.name, [], resolved, now)
                    continue
                message = self._message(receiver.name, group, chosen, now, event)
                deliveries.append((receiver, integration, message, nkey, firing, resolved))
            return event, deliveries
        finally:
            # Resolved alerts leave the group once a flush has seen them, unless re-put since.
            for fp, alert in snapshot.items():
                if alert.resolved(now) and group.updated.get(fp) == snapshot_updated.get(fp):
                    group.alerts.pop(fp, None)
                    group.updated.pop(fp, None)

    @staticmethod
    def _needs_update(entry: _NflogEntry | None, firing: list[str], resolved: list[str], send_resolved: bool,
                      repeat: timedelta, now: datetime) -> bool:
        """Alertmanager's dedup rule: is this flush news for a notifier that last sent ``entry``?"""
        if entry is None:
            return bool(firing)
        if not set(firing) <= entry.firing:
            return True
        if not firing:
            return bool(entry.firing)  # everything resolved: tell them once
        if send_resolved and not set(resolved) <= entry.resolved:
            return True
        return entry.sent_at + repeat <= now

    @staticmethod
    def _nflog_key(group_key: str, receiver: str, integration: str) -> str:
        return hashlib.sha256(f"{group_key}\x00{receiver}\x00{integration}".encode()).hexdigest()

    def _log_sent(self, nkey: str, group_key: str, receiver: str, integration: str, firing: list[str],
                  resolved: list[str], now: datetime, *, persist: bool = True) -> None:
        self._nflog[nkey] = _NflogEntry(frozenset(firing), frozenset(resolved), now)
        if persist:
            self._persist_sent(nkey, group_key, receiver, integration, firing, resolved, now)

    def _persist_sent(self, nkey: str, group_key: str, receiver: str, integration: str, firing: list[str],
                      resolved: list[str], now: datetime) -> None:
        if self.meta is not None:
            from stackwatch.storage.meta.models import AlertNotificationLog

            try:
                with self.meta.session() as s:
                    s.merge(AlertNotificationLog(id=nkey, group_key=group_key, receiver=receiver,
                                                 integration=integration, firing=sorted(firing),
                                                 resolved=sorted(resolved), sent_at=now,
                                                 expires_at=now + NFLOG_RETENTION))
            except Exception:
                log.exception("alerting: cannot persist the notification log")

    def _correlate(self, group: _Group, alerts: list[Alert], now: datetime) -> str:
        names = self.config.correlation.labels
        if not names:
            return group.key
        common = _common_labels([a.labels for a in alerts])
        if not all(common.get(n) for n in names):
            return group.key
        key = ",".join(f"{n}={common[n]}" for n in names)
        episode, last = self._episodes.get(key, ("", now))
        if not episode or last + self.config.correlation.window < now:
            episode = hashlib.sha256(f"{key}@{now.isoformat()}".encode()).hexdigest()[:16]
            episode = f"{key}#{episode}"
        self._episodes[key] = (episode, now)
        return episode

    # -- muting ----------------------------------------------------------------------------------

    def _muted_by(self, alert: Alert, now: datetime, fp: str | None = None) -> dict[str, list[str]]:
        """Why an alert is muted (empty when it is not): silence ids, inhibiting alerts, windows."""
        labels = alert.labels
        out: dict[str, list[str]] = {}
        silenced = [s.id for s in self._silences.values() if s.mutes(labels, now)]
        if silenced:
            out["silencedBy"] = silenced
        inhibited = self._inhibited_by(alert, now, fp)
        if inhibited:
            out["inhibitedBy"] = inhibited
        windows = [w.id for w in self._windows.values() if w.mutes(labels, now)]
        if windows:
            out["mutedBy"] = windows
        return out

    def _inhibition_index(self, now: datetime) -> list[dict[tuple[str, ...], set[str]]]:
        """Per inhibit rule: the firing source alerts, keyed by their values of the ``equal`` labels.

        Built once per flush round (and per API listing) so muting N alerts costs N lookups, not
        N x alerts.
        """
        if self._inhibit_cache is not None and self._inhibit_cache[0] == (now, self._version):
            return self._inhibit_cache[1]
        index: list[dict[tuple[str, ...], set[str]]] = []
        for rule in self.config.inhibit_rules:
            sources: dict[tuple[str, ...], set[str]] = {}
            for fp, stored in self._alerts.items():
                src = stored.alert
                if not src.resolved(now) and matches_all(rule.source_matchers, src.labels):
                    sources.setdefault(tuple(src.labels.get(n, "") for n in rule.equal), set()).add(fp)
            index.append(sources)
        self._inhibit_cache = ((now, self._version), index)
        return index

    def _inhibited_by(self, alert: Alert, now: datetime, fp: str | None = None) -> list[str]:
        out: set[str] = set()
        if not self.config.inhibit_rules:
            return []
        me = fp or alert.fingerprint
        index = self._inhibition_index(now)
        for rule, sources in zip(self.config.inhibit_rules, index, strict=True):
            if not sources or not matches_all(rule.target_matchers, alert.labels):
                continue
            found = sources.get(tuple(alert.labels.get(n, "") for n in rule.equal), set())
            out.update(found)
        out.discard(me)  # an alert never inhibits itself
        return sorted(out)

    # -- messages -------------------------------------------------------------------------------

    def _silence_url(self, labels: dict[str, str]) -> str:
        return f"{self.external_url}/alerts/silences/new?" + urllib.parse.urlencode({"filter": equality_filter(labels)})

    def _alert_url(self, alert: Alert) -> str:
        if alert.generator_url:
            return alert.generator_url
        return f"{self.external_url}/api/v2/alerts?" + urllib.parse.urlencode(
            {"filter": f'alertname="{alert.name}"'})

    def _alert_data(self, a: Alert, now: datetime) -> dict[str, Any]:
        status = a.status(now)
        level = severity_of(a.labels)
        return {
            "Status": status,
            "Labels": dict(a.labels),
            "Annotations": dict(a.annotations),
            "StartsAt": _iso(a.starts_at),
            "EndsAt": _iso(a.ends_at) if status == "resolved" else _ZERO_TIME,
            "GeneratorURL": a.generator_url,
            "Fingerprint": a.fingerprint,
            "Value": _fmt_value(a.value),
            "Severity": level.code if level else a.labels.get("severity", ""),
            "RunbookURL": a.annotations.get("runbook_url") or a.annotations.get("runbook", ""),
            "AlertURL": self._alert_url(a),
            "SilenceURL": self._silence_url(a.labels),
        }

    def _message(self, receiver: str, group: _Group, alerts: list[Alert], now: datetime,
                 event: AlertGroupEvent | None, extra: dict[str, Any] | None = None) -> Message:
        data = {
            "Receiver": receiver,
            "Status": "firing" if any(not a.resolved(now) for a in alerts) else "resolved",
            "Alerts": AlertList(self._alert_data(a, now) for a in alerts),
            "GroupLabels": dict(group.labels),
            "CommonLabels": _common_labels([a.labels for a in alerts]),
            "CommonAnnotations": _common_labels([a.annotations for a in alerts]),
            "ExternalURL": self.external_url,
            "GroupKey": group.key,
            "SilenceURL": self._silence_url(dict(group.labels) or _common_labels([a.labels for a in alerts])),
        }
        if event is None:
            event = AlertGroupEvent(group.key, receiver, dict(group.labels), list(alerts), data["Status"], now,
                                    group.key, group.route.config.path)
        return Message(event, data, self.external_url, dict(extra or {}))

    # -- delivery -------------------------------------------------------------------------------

    def _submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        if self._loop is None:
            self.start(ticker=False)
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is in flight (tests); True if that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            concurrent.futures.wait(pending, timeout=left)

    def _slots(self) -> asyncio.Semaphore:
        """At most ``max_concurrent`` notifications in flight: a burst of groups queues, it does
        not open a thousand connections at once (the semaphore belongs to the delivery loop)."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        return self._semaphore

    async def _deliver(self, receiver: Receiver, integration: Integration, message: Message, nkey: str | None,
                       firing: list[str], resolved: list[str]) -> DeliveryResult:
        notify = notifier_for(integration.kind)
        attempts = 0
        delay = self.retry_base
        error = ""
        code: int | None = None
        ok = False
        while True:
            attempts += 1
            try:
                async with self._slots():
                    code = await notify(integration, message)
                ok = True
                break
            except NotifyError as exc:
                error, code = str(exc), exc.status_code
                if not exc.retryable or attempts >= self.max_attempts:
                    break
                log.info("alerting: %s/%s attempt %d failed, retrying in %.1fs: %s", receiver.name,
                         integration.name, attempts, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
            except Exception as exc:  # a bug in a notifier must not kill the delivery loop
                log.exception("alerting: %s/%s failed", receiver.name, integration.name)
                error = f"{type(exc).__name__}: {exc}"
                break
        now = self.clock()
        result = DeliveryResult(receiver.name, integration.name, message.data["GroupKey"],
                                "success" if ok else "failed", attempts, now, "" if ok else error, code,
                                len(message.data["Alerts"]), message.status, dict(message.extra))
        if ok and nkey is not None:
            with self._lock:
                self._log_sent(nkey, message.data["GroupKey"], receiver.name, integration.name, firing, resolved,
                               message.event.at)
        if not ok:
            log.warning("alerting: notifying %s/%s failed after %d attempt(s): %s", receiver.name,
                        integration.name, attempts, error)
        self._record(result)
        return result

    def _record(self, result: DeliveryResult) -> None:
        self._deliveries.append(result)
        if self.meta is None:
            return
        from stackwatch.storage.meta.models import AlertDelivery

        try:
            with self.meta.session() as s:
                s.add(AlertDelivery(at=result.at, receiver=result.receiver, integration=result.integration,
                                    group_key=result.group_key, status=result.status,
                                    notification_status=result.notification_status, attempts=result.attempts,
                                    alerts=result.alerts, status_code=result.status_code, error=result.error[:2000]))
                newest = s.query(AlertDelivery.id).order_by(AlertDelivery.id.desc()).offset(DELIVERIES_KEPT).first()
                if newest is not None:
                    s.query(AlertDelivery).filter(AlertDelivery.id <= newest[0]).delete()
        except Exception:
            log.exception("alerting: cannot record a delivery result")

    def send_to_receiver(self, receiver_name: str, event: AlertGroupEvent,
                         extra: dict[str, Any] | None = None) -> list[DeliveryResult]:
        """Send ``event`` to every notifier of a receiver now, bypassing grouping and dedup.

        For escalation and acknowledgements (``extra={"action": "acknowledge"}`` makes PagerDuty
        acknowledge). Blocks until every notifier finished (retries included); from async code
        use :meth:`asend_to_receiver`.
        """
        if self._loop is not None and threading.current_thread() is self._loop_thread:
            raise RuntimeError("send_to_receiver blocks; from the delivery loop use asend_to_receiver")
        futures = self._start_send(receiver_name, event, extra)
        return [f.result() for f in futures]

    async def asend_to_receiver(self, receiver_name: str, event: AlertGroupEvent,
                                extra: dict[str, Any] | None = None) -> list[DeliveryResult]:
        futures = self._start_send(receiver_name, event, extra)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def _start_send(self, receiver_name: str, event: AlertGroupEvent,
                    extra: dict[str, Any] | None) -> list[concurrent.futures.Future[Any]]:
        receiver = self.config.receivers.get(receiver_name)
        if receiver is None:
            raise NotFound(f"no receiver {receiver_name!r} in the alerting configuration")
        route = self._root
        group = _Group(route, dict(event.labels), event.group_key)
        message = self._message(receiver.name, group, list(event.alerts), event.at, event, extra)
        if event.status == "resolved":
            message.data["Status"] = "resolved"
        return [self._submit(self._deliver(receiver, integration, message, None, [], []))
                for integration in receiver.integrations]

    def deliveries(self, limit: int = 100, receiver: str | None = None, status: str | None = None
                   ) -> list[dict[str, Any]]:
        """The newest delivery results, newest first (from the meta store when there is one)."""
        if self.meta is None:
            rows = [r.to_json() for r in reversed(self._deliveries)]
        else:
            from stackwatch.storage.meta.models import AlertDelivery

            with self.meta.session() as s:
                q = s.query(AlertDelivery)
                if receiver:
                    q = q.filter(AlertDelivery.receiver == receiver)
                if status:
                    q = q.filter(AlertDelivery.status == status)
                rows = [{"id": d.id, "receiver": d.receiver, "integration": d.integration, "group_key": d.group_key,
                         "status": d.status, "attempts": d.attempts, "at": d.at.isoformat(), "error": d.error,
                         "status_code": d.status_code, "alerts": d.alerts,
                         "notification_status": d.notification_status}
                        for d in q.order_by(AlertDelivery.id.desc()).limit(limit).all()]
            return rows
        if receiver:
            rows = [r for r in rows if r["receiver"] == receiver]
        if status:
            rows = [r for r in rows if r["status"] == status]
        return rows[:limit]

    # -- queries (API) ----------------------------------------------------------------------------

    def _gettable(self, stored: _StoredAlert, now: datetime) -> dict[str, Any]:
        a = stored.alert
        muted = self._muted_by(a, now, a.fingerprint)
        state = "suppressed" if muted else "active"
        out = a.to_json()
        out["updatedAt"] = _iso(stored.updated_at)
        out["receivers"] = [{"name": r.config.receiver} for r in self._root.match(a.labels)]
        out["status"] = {"state": state, "silencedBy": muted.get("silencedBy", []),
                         "inhibitedBy": muted.get("inhibitedBy", []), "mutedBy": muted.get("mutedBy", [])}
        return out

    def list_alerts(self, matchers: Iterable[Matcher] = (), *, active: bool = True, silenced: bool = True,
                    inhibited: bool = True, muted: bool = True, receiver: str | None = None,
                    include_resolved: bool = False) -> list[dict[str, Any]]:
        """Alerts as ``GET /api/v2/alerts`` shows them (firing only unless ``include_resolved``)."""
        now = self.clock()
        matchers = list(matchers)
        out = []
        with self._lock:
            for stored in self._alerts.values():
                a = stored.alert
                if (a.resolved(now) and not include_resolved) or not matches_all(matchers, a.labels):
                    continue
                g = self._gettable(stored, now)
                st = g["status"]
                if not active and st["state"] == "active":
                    continue
                if not silenced and st["silencedBy"]:
                    continue
                if not inhibited and st["inhibitedBy"]:
                    continue
                if not muted and st["mutedBy"]:
                    continue
                if receiver and not any(r["name"] == receiver for r in g["receivers"]):
                    continue
                out.append(g)
        out.sort(key=lambda g: (g["labels"].get("alertname", ""), g["fingerprint"]))
        return out

    def list_groups(self, matchers: Iterable[Matcher] = ()) -> list[dict[str, Any]]:
        now = self.clock()
        matchers = list(matchers)
        out = []
        with self._lock:
            for group in self._groups.values():
                alerts = [self._gettable(self._alerts[fp], now) for fp, a in group.alerts.items()
                          if fp in self._alerts and not a.resolved(now) and matches_all(matchers, a.labels)]
                if not alerts:
                    continue
                out.append({"labels": dict(group.labels), "receiver": {"name": group.route.config.receiver},
                            "alerts": alerts, "groupKey": group.key})
        out.sort(key=lambda g: g["groupKey"])
        return out

    def routes_for(self, labels: dict[str, str]) -> list[str]:
        """Receivers a label set is routed to (like ``amtool config routes test``)."""
        return [r.config.receiver for r in self._root.match(labels)]

    # -- silences ---------------------------------------------------------------------------------

    def list_silences(self, matchers: Iterable[Matcher] = ()) -> list[dict[str, Any]]:
        now = self.clock()
        wanted = list(matchers)
        with self._lock:
            items = list(self._silences.values())
        out = []
        for s in items:
            labels = {m.name: m.value for m in s.matchers if m.op == "="}
            if wanted and not matches_all(wanted, labels):
                continue
            out.append(s.to_json(now))
        order = {"active": 0, "pending": 1, "expired": 2}
        out.sort(key=lambda j: (order[j["status"]["state"]], j["endsAt"]))
        return out

    def get_silence(self, silence_id: str) -> dict[str, Any]:
        with self._lock:
            s = self._silences.get(silence_id)
        if s is None:
            raise NotFound(f"no silence {silence_id!r}")
        return s.to_json(self.clock())

    def put_silence(self, spec: dict[str, Any], author: str = "") -> str:
        """Create or update a silence from its Alertmanager v2 JSON; return its id.

        Updating an active or pending silence changes it in place; updating an expired one
        creates a new silence, as Alertmanager does.
        """
        if not isinstance(spec, dict):
            raise BadRequest("silence: expected a JSON object")
        try:
            matchers = matchers_from_json(spec.get("matchers"))
            if not matchers:
                raise ValueError("matchers: at least one matcher is required")
            if all(m.matches({}) for m in matchers):
                raise ValueError("matchers: at least one matcher must not match the empty string "
                                 "(a silence that matches every alert is refused)")
            starts = _parse_time(spec.get("startsAt"), "startsAt")
            ends = _parse_time(spec.get("endsAt"), "endsAt")
        except ValueError as exc:
            raise BadRequest(f"silence: {exc}") from None
        if ends <= starts:
            raise BadRequest("silence: endsAt must be after startsAt")
        now = self.clock()
        if ends <= now:
            raise BadRequest("silence: endsAt is in the past")
        created_by = str(spec.get("createdBy") or author or "")
        if not created_by:
            raise BadRequest("silence: createdBy is required")
        comment = str(spec.get("comment") or "")
        with self._lock:
            sid = str(spec.get("id") or "")
            existing = self._silences.get(sid) if sid else None
            if sid and existing is None:
                raise NotFound(f"no silence {sid!r} to update")
            if existing is not None and existing.state(now) == "expired":
                sid = ""
            if not sid:
                sid = str(uuid.uuid4())
                if starts < now:
                    starts = now
            silence = Silence(sid, matchers, starts, ends, created_by, comment, now)
            self._silences[sid] = silence
        self._persist_silence(silence)
        return sid

    def expire_silence(self, silence_id: str) -> None:
        now = self.clock()
        with self._lock:
            s = self._silences.get(silence_id)
            if s is None:
                raise NotFound(f"no silence {silence_id!r}")
            if s.state(now) == "expired":
                raise BadRequest(f"silence {silence_id!r} is already expired")
            if s.starts_at > now:
                s.starts_at = now
            s.ends_at = now
            s.updated_at = now
        self._persist_silence(s)

    def _persist_silence(self, s: Silence) -> None:
        if self.meta is None:
            return
        from stackwatch.storage.meta.models import AlertSilence

        with self.meta.session() as session:
            session.merge(AlertSilence(id=s.id, matchers=matchers_to_json(s.matchers), starts_at=s.starts_at,
                                       ends_at=s.ends_at, created_by=s.created_by, comment=s.comment,
                                       updated_at=s.updated_at))

    # -- maintenance windows ----------------------------------------------------------------------

    def list_maintenance(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            items = list(self._windows.values())
        return sorted((w.to_json(now) for w in items), key=lambda j: (j["starts_at"] or "", j["name"]))

    def get_maintenance(self, window_id: str) -> dict[str, Any]:
        with self._lock:
            w = self._windows.get(window_id)
        if w is None:
            raise NotFound(f"no maintenance window {window_id!r}")
        return w.to_json(self.clock())

    def put_maintenance(self, spec: dict[str, Any], author: str = "", window_id: str | None = None) -> dict[str, Any]:
        """Create (no ``window_id``) or replace a maintenance window from its JSON."""
        if not isinstance(spec, dict):
            raise BadRequest("maintenance window: expected a JSON object")
        with self._lock:
            if window_id is not None and window_id not in self._windows:
                raise NotFound(f"no maintenance window {window_id!r}")
        try:
            name = str(spec.get("name") or "")
            if not name:
                raise ValueError("name is required")
            raw_matchers = spec.get("matchers") or []
            if isinstance(raw_matchers, str):
                from stackwatch.alerting.matchers import parse_matchers

                matchers = parse_matchers(raw_matchers)
            elif raw_matchers and all(isinstance(m, str) for m in raw_matchers):
                from stackwatch.alerting.matchers import parse_matchers

                matchers = [m for text in raw_matchers for m in parse_matchers(text)]
            else:
                matchers = matchers_from_json(raw_matchers)
            starts = _parse_time(spec["starts_at"], "starts_at") if spec.get("starts_at") else None
            ends = _parse_time(spec["ends_at"], "ends_at") if spec.get("ends_at") else None
            recurrence = spec.get("recurrence")
            if recurrence is not None and not isinstance(recurrence, list):
                recurrence = [recurrence]
            window = MaintenanceWindowSpec(
                window_id or str(uuid.uuid4()), name, matchers, starts, ends, recurrence,
                str(spec.get("pass_severity") or "P0"), str(spec.get("created_by") or author or ""),
                str(spec.get("comment") or ""))
        except (ValueError, KeyError) as exc:
            raise BadRequest(f"maintenance window: {exc}") from None
        with self._lock:
            self._windows[window.id] = window
        if self.meta is not None:
            from stackwatch.storage.meta.models import MaintenanceWindow

            now = self.clock()
            with self.meta.session() as s:
                row = s.get(MaintenanceWindow, window.id)
                if row is None:
                    row = MaintenanceWindow(id=window.id, created_at=now)
                    s.add(row)
                row.name, row.matchers = window.name, matchers_to_json(window.matchers)
                row.starts_at, row.ends_at, row.recurrence = window.starts_at, window.ends_at, window.recurrence
                row.pass_severity, row.created_by, row.comment = window.pass_severity, window.created_by, window.comment
                row.updated_at = now
        return window.to_json(self.clock())

    def delete_maintenance(self, window_id: str) -> None:
        with self._lock:
            if self._windows.pop(window_id, None) is None:
                raise NotFound(f"no maintenance window {window_id!r}")
        if self.meta is not None:
            from stackwatch.storage.meta.models import MaintenanceWindow

            with self.meta.session() as s:
                row = s.get(MaintenanceWindow, window_id)
                if row is not None:
                    s.delete(row)


def _alert_order(a: Alert) -> tuple[str, str, list[tuple[str, str]]]:
    # Alertmanager's order within a notification: by job, then instance, then the whole label set.
    return a.labels.get("job", ""), a.labels.get("instance", ""), sorted(a.labels.items())


def _common_labels(sets: list[dict[str, str]]) -> dict[str, str]:
    if not sets:
        return {}
    common = dict(sets[0])
    for labels in sets[1:]:
        for k in list(common):
            if labels.get(k) != common[k]:
                del common[k]
    return common


def _parse_time(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is required (RFC 3339)")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes up to 9 fractional digits; Python takes 6.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tail = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tail}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an RFC 3339 time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


parse_time = _parse_time


def open_dispatcher(settings: Any, meta: Any, *, start: bool = True) -> Dispatcher:
    """The server's dispatcher: configuration from ``alerting:`` (inline or a file path) or
    ``alerting_file``, state in the meta store, links pointing at ``public_url``."""
    from stackwatch.alerting.config import load_alerting_config

    value = settings.extra.get("alerting") if settings.extra else None
    if not value and getattr(settings, "alerting_file", ""):
        value = settings.alerting_file
    dispatcher = Dispatcher(load_alerting_config(value), meta, external_url=settings.url)
    dispatcher.source = value
    if start:
        dispatcher.start()
    return dispatcher
