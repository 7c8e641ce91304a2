"""What every notifier shares: the message it is given, how it fails, and its HTTP client.

A notifier is one small module with one coroutine, ``notify(integration, message) -> status``;
it raises :class:`NotifyError` saying whether trying again could help (a 5xx, a timeout, a
refused connection) or not (a 4xx: the request itself is wrong and will stay wrong).
"""

from __future__ import annotations

import asyncio
import html
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from stackwatch.alerting.config import Integration
from stackwatch.alerting.events import AlertGroupEvent

__all__ = ["AlertList", "Message", "NotifyError", "close_clients", "escape_data", "post_json", "render"]


class NotifyError(Exception):
    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class AlertList(list[dict[str, Any]]):
    """``.Alerts`` in templates: a list with ``.Firing`` and ``.Resolved`` as in Alertmanager."""

    def Firing(self) -> AlertList:  # the name templates use
        return AlertList(a for a in self if a["Status"] == "firing")

    def Resolved(self) -> AlertList:
        return AlertList(a for a in self if a["Status"] == "resolved")


@dataclass
class Message:
    """One notification for one receiver: the group, its template data, the webhook payload."""

    event: AlertGroupEvent
    #: Alertmanager's template data (Receiver, Status, Alerts, GroupLabels, CommonLabels, ...).
    data: dict[str, Any]
    external_url: str
    #: Extra fields from the caller (escalation: {"action": "acknowledge", "note": ...}).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.data["Status"])


def escape_data(value: Any) -> Any:
    """The template data with every string HTML-escaped, for HTML bodies."""
    if isinstance(value, AlertList):
        return AlertList(escape_data(v) for v in value)
    if isinstance(value, Mapping):
        return {k: escape_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_data(v) for v in value]
    if isinstance(value, str):
        return html.escape(value)
    return value


def render(integration: Integration, key: str, message: Message, default: str = "", *, escape: bool = False) -> str:
    """The receiver's template for ``key`` rendered with the message's data, or ``default``."""
    template = integration.templates.get(key)
    if template is None:
        return default
    return template.render(escape_data(message.data) if escape else message.data)


_CLIENTS: dict[tuple[int, str], httpx.AsyncClient] = {}


def _client_for(integration: Integration) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    """A pooled client for this notifier's transport settings, and its per-request arguments.

    Clients are shared per event loop and per (timeout, TLS, proxy, redirects) so a burst of
    notifications reuses connections instead of building a TLS context per request.
    """
    http = integration.params.get("http_config") or {}
    timeout = float(integration.params.get("timeout") or 10.0)
    tls = http.get("tls_config") or {}
    verify: Any = True
    if tls.get("insecure_skip_verify"):
        verify = False
    elif tls.get("ca_file"):
        verify = ssl.create_default_context(cafile=str(tls["ca_file"]))
    follow = bool(http.get("follow_redirects", True))
    proxy = str(http["proxy_url"]) if http.get("proxy_url") else None
    key = (id(asyncio.get_running_loop()),
           repr((timeout, tls.get("insecure_skip_verify"), tls.get("ca_file"), follow, proxy)))
    client = _CLIENTS.get(key)
    if client is None:
        client = httpx.AsyncClient(timeout=timeout, verify=verify, follow_redirects=follow, proxy=proxy,
                                   limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
        _CLIENTS[key] = client
    request: dict[str, Any] = {"headers": {"User-Agent": "Stackwatch-Alerting"}}
    basic = http.get("basic_auth")
    if basic:
        request["auth"] = httpx.BasicAuth(str(basic.get("username", "")), str(basic.get("password", "")))
    if http.get("bearer_token"):
        request["headers"]["Authorization"] = f"Bearer {http['bearer_token']}"
    auth = http.get("authorization")
    if auth:
        request["headers"]["Authorization"] = f"{auth.get('type', 'Bearer')} {auth.get('credentials', '')}"
    return client, request


async def close_clients() -> None:
    """Close the pooled clients of the running loop (the dispatcher calls it when it stops)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _CLIENTS if k[0] == loop_id]:
        await _CLIENTS.pop(key).aclose()


async def post_json(integration: Integration, url: str, payload: Any, *, ok: tuple[int, ...] = ()) -> int:
    """POST ``payload`` as JSON; return the status, or raise :class:`NotifyError` classified."""
    client, request = _client_for(integration)
    try:
        response = await client.post(url, json=payload, **request)
    except httpx.TimeoutException as exc:
        raise NotifyError(f"timeout posting to {_safe(url)}: {type(exc).__name__}", retryable=True) from None
    except httpx.HTTPError as exc:
        raise NotifyError(f"cannot post to {_safe(url)}: {exc}", retryable=True) from None
    code = response.status_code
    if (ok and code in ok) or (not ok and 200 <= code < 300):
        return code
    body = response.text[:300]
    retryable = code >= 500 or code == 429
    raise NotifyError(f"{_safe(url)} answered {code}: {body}", retryable=retryable, status_code=code)


def _safe(url: str) -> str:
    """The URL without its path and query: webhook URLs carry their secret in the path."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}"
