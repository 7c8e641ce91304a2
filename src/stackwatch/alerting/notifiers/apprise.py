"""The long tail of services (Telegram, Discord, Pushover, Matrix, ntfy, ...) through apprise URLs."""

from __future__ import annotations

import asyncio

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, NotifyError, render
from stackwatch.alerting.notifiers.email import _text
from stackwatch.alerting.notifiers.slack import DEFAULT_TITLE

__all__ = ["notify"]


def _send(urls: list[str], title: str, body: str) -> None:
    import apprise  # imported here: it loads ~100 plugins, which only a receiver that uses it should pay

    ap = apprise.Apprise()
    for url in urls:
        if not ap.add(url):
            raise NotifyError(f"apprise does not understand the URL scheme of {url.split('://')[0]!r}",
                              retryable=False)
    if not ap.notify(body=body, title=title):
        raise NotifyError("apprise could not deliver to every URL (see the server log)", retryable=True)


async def notify(integration: Integration, message: Message) -> int:
    title = render(integration, "title", message, DEFAULT_TITLE.render(message.data))
    body = render(integration, "body", message, _text(message))
    await asyncio.to_thread(_send, list(integration.params["urls"]), title, body)
    return 200
