"""Puts incidents on a server runtime: the service, the escalation engine, the alert hook.

Kept here rather than in ``server/runtime.py`` so the runtime needs one call: the incident
feature decides how it is built from the settings and which sender pages people (the alert
dispatcher when the server has one, else the ``incidents.webhooks`` of the config).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stackwatch.incidents.escalation import EscalationEngine
from stackwatch.incidents.links import LinkSigner, load_or_create_secret
from stackwatch.incidents.sender import PageSender, WebhookSender
from stackwatch.incidents.service import IncidentConfig, IncidentService

__all__ = ["CombinedSender", "attach_incidents"]

log = logging.getLogger("stackwatch.incidents")


class CombinedSender:
    """Pages a receiver through the config's webhooks when it names one, else the dispatcher."""

    def __init__(self, webhooks: WebhookSender | None, dispatcher: Any) -> None:
        self.webhooks = webhooks
        self.dispatcher = dispatcher

    def send_to_receiver(self, receiver_name: str, event: Any, extra: dict[str, Any]) -> Sequence[Any]:
        if self.webhooks is not None and (receiver_name in self.webhooks.urls or self.dispatcher is None):
            return self.webhooks.send_to_receiver(receiver_name, event, extra)
        if self.dispatcher is None:
            raise RuntimeError(f"no receiver {receiver_name!r}: no alert dispatcher and no incidents.webhooks entry")
        return list(self.dispatcher.send_to_receiver(receiver_name, event, extra))


def attach_incidents(rt: Any) -> None:
    """Build the incident service and escalation engine for ``rt``, hook them up, start paging.

    Sets ``rt.incidents`` and ``rt.escalation``. Call after ``rt.dispatcher`` (if any) exists.
    """
    settings = rt.settings
    config = IncidentConfig.from_dict(settings.extra.get("incidents"))
    secret = settings.secret_key.encode() if settings.secret_key else load_or_create_secret(
        settings.data_path / "secret_key")
    signer = LinkSigner(secret, config.ack_link_ttl_s)
    service = IncidentService(rt.meta, config=config, base_url=settings.url)
    dispatcher = getattr(rt, "dispatcher", None)
    if dispatcher is not None and not hasattr(dispatcher, "send_to_receiver"):
        dispatcher = None
    sender: PageSender | None = None
    if dispatcher is not None or config.webhooks:
        sender = CombinedSender(WebhookSender(config.webhooks) if config.webhooks else None, dispatcher)

        def receiver_names() -> set[str]:
            names = set(config.webhooks)
            alerting = getattr(dispatcher, "config", None)
            names.update(getattr(alerting, "receivers", {}) or {})
            return names

        service.directory.receiver_names = receiver_names
    listeners = getattr(getattr(rt, "dispatcher", None), "group_listeners", None)
    if listeners is not None:
        listeners.append(service.on_group_event)
    else:
        log.info("incidents: no alert dispatcher on this server; incidents open by hand only")
    engine = EscalationEngine(service, sender, signer, tick_s=config.escalation_tick_s, base_url=settings.url)
    rt.incidents = service
    rt.escalation = engine
    service.start()  # listener events on a worker: the dispatcher's timer thread must not wait for SQL
    engine.start()
