"""Notifiers: one module per kind of receiver, each with ``notify(integration, message) -> status``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers import apprise, email, msteams, pagerduty, slack, webhook
from stackwatch.alerting.notifiers.base import AlertList, Message, NotifyError

__all__ = ["NOTIFIERS", "AlertList", "Message", "NotifyError", "notifier_for"]

NotifyFunc = Callable[[Integration, Message], Awaitable[int]]

NOTIFIERS: dict[str, NotifyFunc] = {
    "webhook": webhook.notify,
    "slack": slack.notify,
    "email": email.notify,
    "pagerduty": pagerduty.notify,
    "msteams": msteams.notify,
    "apprise": apprise.notify,
}


def notifier_for(kind: str) -> NotifyFunc:
    return NOTIFIERS[kind]
