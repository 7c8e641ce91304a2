"""Escalation: page level after level until someone acknowledges.

For an incident that is still ``triggered`` the engine pages level 1 of its policy (usually
the primary on-call), waits that level's ``delay_minutes``, pages level 2 (the secondary),
then the next (the CTO), and runs the list again ``repeat`` more times. Acknowledging stops
it: the state the engine reads is the incident's, in the meta store, so an acknowledgement
through the API, the CLI or a signed link is seen at the next tick, and a restart resumes
instead of re-paging.

Pages go through a :class:`~stackwatch.incidents.sender.PageSender` (the alert dispatcher's
``send_to_receiver``), one per contact receiver of the person on call, and carry a signed
acknowledge link. The clock is injectable, so tests drive minutes of escalation in
milliseconds by calling :meth:`EscalationEngine.tick` with the time they want.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from stackwatch.errors import StackwatchError
from stackwatch.incidents.links import LinkSigner
from stackwatch.incidents.sender import PageSender, delivered, delivery_json, make_group_event
from stackwatch.incidents.service import SYSTEM, IncidentService
from stackwatch.model.alerts import Alert

__all__ = ["EscalationEngine"]

log = logging.getLogger("stackwatch.incidents.escalation")


class EscalationEngine:
    def __init__(
        self,
        service: IncidentService,
        sender: PageSender | None,
        signer: LinkSigner | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        tick_s: float = 5.0,
        base_url: str = "",
    ) -> None:
        self.service = service
        self.sender = sender
        self.signer = signer
        self.clock = clock or service.clock
        self.tick_s = tick_s
        self.base_url = base_url.rstrip("/")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        service.on_opened.append(lambda _number: self.wake())
        service.on_due.append(self.wake)
        service.on_state_change.append(self._state_changed)

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stackwatch-escalation", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop paging, and the service's listener worker (queued alert groups are recorded first)."""
        self.service.stop()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        """Run a tick now (an incident just opened: page level 1 without waiting)."""
        self._wake.set()

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stop.is_set():
            try:
                self.tick()
                if time.monotonic() - last_prune > 3600:  # housekeeping rides on the same thread
                    last_prune = time.monotonic()
                    self.service.prune_alert_history()
            except Exception:
                log.exception("escalation tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def tick(self, now: datetime | None = None) -> int:
        """Page every escalation level that is due at ``now``; returns how many levels were paged."""
        with self._tick_lock:
            now = now or self.clock()
            paged = 0
            for incident_id in self.service.due_for_escalation(now):
                step = self.service.claim_escalation_step(incident_id, now)
                if step is not None and "held_until" in step:
                    self.service.add_timeline(
                        incident_id, "escalation_held", SYSTEM,
                        f"{step['severity']} does not page outside working hours ({step['hours']}): "
                        f"escalation starts {step['held_until']}", {"until": step["held_until"]}, now)
                elif step is not None:
                    self._page(step, now)
                    paged += 1
            return paged

    # -- one level -----------------------------------------------------------------------------

    def ack_url(self, incident_id: int, user: str, now: datetime) -> str | None:
        if self.signer is None:
            return None
        return f"{self.base_url}/ack/{self.signer.sign(incident_id, user, now.timestamp())}"

    def _recipients(self, targets: list[dict[str, Any]], now: datetime) -> tuple[list[tuple[str, str, str]], list[str]]:
        """(user, receiver, why) triples for the targets, and problems worth a timeline note."""
        out: list[tuple[str, str, str]] = []
        problems: list[str] = []
        directory = self.service.directory
        for target in targets:
            if "receiver" in target:
                out.append(("", target["receiver"], f"receiver {target['receiver']}"))
                continue
            if "schedule" in target:
                try:
                    user = directory.on_call_user(target["schedule"], target.get("layer", "primary"), now)
                except StackwatchError as exc:
                    problems.append(f"schedule {target['schedule']!r}: {exc.message}")
                    continue
                if not user:
                    problems.append(f"nobody is on call for {target['schedule']}/{target.get('layer', 'primary')}")
                    continue
                why = f"{target.get('layer', 'primary')} on-call of {target['schedule']}"
            else:
                user, why = target["user"], "named in the policy"
            receivers = directory.receivers_of(user)
            if not receivers:
                problems.append(f"{user} ({why}) has no contact receivers in their on-call profile")
            out.extend((user, r, f"{user}, {why}") for r in receivers)
        return out, problems

    def _alerts(self, step: dict[str, Any], now: datetime) -> list[Alert]:
        alerts = [a for a in self.service.alerts_of(step["incident_id"]) if not a.resolved(now)]
        if alerts:
            return alerts
        inc = step["incident"]
        # An incident opened by hand has no alerts; receivers expect at least one, so say what it is.
        return [Alert(labels={"alertname": "Incident", "incident": str(inc["number"]), "severity": inc["severity"],
                              **({"service": inc["service"]} if inc["service"] else {})},
                      annotations={"summary": inc["title"], "description": inc.get("summary", "")},
                      starts_at=datetime.fromisoformat(inc["opened_at"].replace("Z", "+00:00")),
                      # "View alert" shows the incident: there is no alert to show.
                      generator_url=inc["url"])]

    def _page(self, step: dict[str, Any], now: datetime) -> None:
        inc = step["incident"]
        recipients, problems = self._recipients(step["targets"], now)
        deliveries: list[dict[str, Any]] = []
        alerts = self._alerts(step, now)
        for user, receiver, why in recipients:
            ack_url = self.ack_url(step["incident_id"], user, now)
            extra = {
                "incident": {k: inc[k] for k in ("number", "title", "severity", "status", "service", "url")},
                "ackURL": ack_url,
                "escalation": {"policy": step["policy"], "level": step["level"], "cycle": step["cycle"],
                               "user": user},
            }
            # The link also rides in the annotations: every receiver format (webhook JSON, Slack,
            # e-mail templates) shows annotations, not every one shows the caller's extra fields.
            notes = {"ack_url": ack_url or "", "incident_url": inc["url"],
                     "escalation": f"level {step['level']} of {step['policy']!r}"}
            paged = [Alert(labels=dict(a.labels), annotations={**a.annotations, **notes}, starts_at=a.starts_at,
                           ends_at=a.ends_at, generator_url=a.generator_url, value=a.value) for a in alerts]
            event = make_group_event(inc["group_key"] or f"incident/{inc['number']}", receiver, dict(inc["labels"]),
                                     paged, "firing", now)
            try:
                if self.sender is None:
                    raise RuntimeError("no notification sender is configured")
                results = list(self.sender.send_to_receiver(receiver, event, extra))
                ok = bool(results) and all(delivered(r) for r in results)
                detail = [delivery_json(r) for r in results]
            except Exception as exc:  # a failing receiver must not stop the other pages
                log.warning("page to %s for incident #%s failed: %s", receiver, inc["number"], exc)
                ok, detail = False, [{"error": f"{type(exc).__name__}: {exc}"}]
            deliveries.append({"user": user, "receiver": receiver, "ok": ok, "results": detail})
            self.service.add_timeline(
                step["incident_id"], "notification", SYSTEM,
                f"Paged {why} via {receiver}" + ("" if ok else " (delivery failed)"),
                {"receiver": receiver, "user": user, "ok": ok, "results": detail, "level": step["level"]}, now,
            )
        who = ", ".join(sorted({d["user"] or d["receiver"] for d in deliveries})) or "nobody"
        message = (f"Escalation level {step['level']}/{step['levels']} of policy {step['policy']!r}"
                   f" (pass {step['cycle']}): paged {who}")
        if problems:
            message += "; " + "; ".join(problems)
        self.service.add_timeline(step["incident_id"], "escalated", SYSTEM, message,
                                  {"level": step["level"], "cycle": step["cycle"], "policy": step["policy"],
                                   "deliveries": deliveries, "problems": problems, "next_at": step["next_at"]}, now)

    # -- acknowledgements and resolutions to pagers that track incidents ----------------------

    def _tracks_incidents(self, receiver: str) -> bool:
        """True for receivers whose every notifier is PagerDuty: they keep paging on their own
        until told, and an acknowledge/resolve event is what they expect. Other receivers (chat,
        e-mail, webhooks, SMS gateways) would read another message as another page."""
        dispatcher = getattr(self.sender, "dispatcher", self.sender)
        receivers = getattr(getattr(dispatcher, "config", None), "receivers", None)
        found = receivers.get(receiver) if isinstance(receivers, dict) else None
        integrations = getattr(found, "integrations", ())
        return bool(integrations) and all(getattr(i, "kind", "") == "pagerduty" for i in integrations)

    def _state_changed(self, incident_id: int, action: str) -> None:
        if self.sender is None:
            return
        targets = [r for r in self.service.paged_receivers(incident_id) if self._tracks_incidents(r)]
        groups = [(r, key) for r, key in self.service.notified_groups(incident_id) if self._tracks_incidents(r)]
        if targets or groups:
            threading.Thread(target=self.send_action, args=(incident_id, action, targets, groups), daemon=True,
                             name="stackwatch-incident-action").start()

    def send_action(self, incident_id: int, action: str, receivers: list[str],
                    groups: list[tuple[str, str]] | None = None) -> None:
        """Tell ``receivers`` the incident was acknowledged or resolved (same dedup key as the
        pages), and each route receiver of ``groups`` under the key it was notified with: with
        correlation, a PagerDuty route's incident (its group's key) is not the page's (the
        incident's key), and acknowledging only one left the other escalating in PagerDuty."""
        now = self.clock()
        inc = self.service.get_by_id(incident_id)
        alerts = self.service.alerts_of(incident_id) or []
        own_key = inc["group_key"] or f"incident/{inc['number']}"
        sends = [(r, own_key) for r in receivers]
        sends += [pair for pair in groups or [] if pair not in sends]
        for receiver, key in sends:
            event = make_group_event(key, receiver, dict(inc["labels"]),
                                     alerts, "resolved" if action == "resolve" else "firing", now)
            try:
                results = list(self.sender.send_to_receiver(receiver, event, {"action": action})) if self.sender else []
                ok, detail = bool(results) and all(delivered(r) for r in results), [delivery_json(r) for r in results]
            except Exception as exc:
                ok, detail = False, [{"error": f"{type(exc).__name__}: {exc}"}]
            self.service.add_timeline(incident_id, "notification", SYSTEM,
                                      f"Sent {action} to {receiver}" + ("" if ok else " (delivery failed)"),
                                      {"receiver": receiver, "action": action, "ok": ok, "results": detail}, now)
