"""E-mail over SMTP: STARTTLS (required by default) or implicit TLS on port 465, optional AUTH,
a multipart message with a plain-text and an HTML part.

smtplib is blocking, so the exchange runs in a worker thread; refused connections, timeouts and
4xx SMTP replies are retryable, 5xx replies (bad recipient, auth refused) are not.
"""

from __future__ import annotations

import asyncio
import html
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from stackwatch.alerting.config import Integration
from stackwatch.alerting.notifiers.base import Message, NotifyError, render
from stackwatch.alerting.notifiers.slack import DEFAULT_TITLE

__all__ = ["build", "notify"]


#: A page (an incident's escalation) carries these annotations: the one-click acknowledge link
#: must be in the e-mail, or someone paged by e-mail cannot stop the escalation from it.
_PAGE_LINKS = (("Acknowledge", "ack_url"), ("Incident", "incident_url"))


def _text(message: Message) -> str:
    d = message.data
    lines = [DEFAULT_TITLE.render(d), ""]
    for a in d["Alerts"]:
        lines.append(f"[{a['Status'].upper()}] {a['Labels'].get('alertname', '')}")
        for key in ("summary", "description"):
            if a["Annotations"].get(key):
                lines.append(f"  {key}: {a['Annotations'][key]}")
        for name, key in (*_PAGE_LINKS, ("Escalation", "escalation")):
            if a["Annotations"].get(key):
                lines.append(f"  {name.lower()}: {a['Annotations'][key]}")
        if a.get("Value") not in (None, ""):
            lines.append(f"  value: {a['Value']}")
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(a["Labels"].items())))
        lines.append(f"  started: {a['StartsAt']}")
        for name, key in (("runbook", "RunbookURL"), ("alert", "AlertURL"), ("silence", "SilenceURL")):
            if a.get(key):
                lines.append(f"  {name}: {a[key]}")
        lines.append("")
    return "\n".join(lines)


def _html(message: Message) -> str:
    d = message.data
    e = html.escape
    color = "#d62728" if d["Status"] == "firing" else "#2ca02c"
    rows = []
    for a in d["Alerts"]:
        ann = a["Annotations"]
        page = [f'<a href="{e(ann[k])}"><b>{n}</b></a>' for n, k in _PAGE_LINKS if ann.get(k)]
        links = " | ".join(page + [f'<a href="{e(a[k])}">{n}</a>' for n, k in (("Runbook", "RunbookURL"),
                                   ("Alert", "AlertURL"), ("Silence", "SilenceURL")) if a.get(k)])
        value = f"<br>Value: <b>{e(str(a['Value']))}</b>" if a.get("Value") not in (None, "") else ""
        if ann.get("escalation"):
            value += f"<br>Page: {e(ann['escalation'])}"
        labels = ", ".join(f"{e(k)}={e(v)}" for k, v in sorted(a["Labels"].items()))
        rows.append(
            f"<tr><td style='padding:8px;border-bottom:1px solid #ddd'><b>{e(a['Status'].upper())}</b> "
            f"{e(ann.get('summary') or a['Labels'].get('alertname', ''))}"
            f"<br>{e(ann.get('description', ''))}{value}<br><small>{labels}</small><br>{links}</td></tr>"
        )
    return (
        "<!DOCTYPE html><html><body style='font-family:sans-serif'>"
        f"<h2 style='color:{color}'>{e(DEFAULT_TITLE.render(d))}</h2>"
        f"<table style='border-collapse:collapse;width:100%'>{''.join(rows)}</table>"
        f"<p><small>Sent by <a href='{e(d['ExternalURL'])}'>Stackwatch</a></small></p></body></html>"
    )


def build(integration: Integration, message: Message) -> EmailMessage:
    p = integration.params
    msg = EmailMessage()
    headers: dict[str, str] = {
        "Subject": DEFAULT_TITLE.render(message.data),
        "To": render(integration, "to", message, str(p["to"])),
        "From": render(integration, "from", message, str(p["from"])),
    }
    for key in p.get("headers", {}):
        headers[key.title() if key.lower() in ("subject", "to", "from") else key] = render(
            integration, f"headers.{key}", message)
    for key, value in headers.items():
        msg[key] = value.replace("\n", " ")
    msg["Date"] = formatdate(localtime=False)
    msg["Message-Id"] = make_msgid(domain="stackwatch")
    msg.set_content(render(integration, "text", message, _text(message)))
    msg.add_alternative(render(integration, "html", message, _html(message), escape=True), subtype="html")
    return msg


def _tls_context(p: dict[str, Any]) -> ssl.SSLContext:
    tls = p.get("tls_config") or {}
    ctx = ssl.create_default_context(cafile=tls.get("ca_file") or None)
    if tls.get("insecure_skip_verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _send(integration: Integration, msg: EmailMessage) -> int:
    p = integration.params
    host, _, port_text = str(p["smarthost"]).rpartition(":")
    port = int(port_text)
    timeout = float(p.get("timeout") or 15.0)
    server_name = (p.get("tls_config") or {}).get("server_name") or host
    try:
        if port == 465:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, local_hostname=p.get("hello") or None,
                                                  timeout=timeout, context=_tls_context(p))
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=p.get("hello") or None, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if port != 465:
                if smtp.has_extn("starttls"):
                    smtp._host = server_name  # type: ignore[attr-defined]  # SNI/hostname check name
                    smtp.starttls(context=_tls_context(p))
                    smtp.ehlo()
                elif p.get("require_tls", True):
                    raise NotifyError(f"{host}:{port} does not offer STARTTLS and require_tls is true",
                                      retryable=False)
            if p.get("auth_username"):
                smtp.login(str(p["auth_username"]), str(p.get("auth_password") or ""))
            refused = smtp.send_message(msg)
            if refused:
                raise NotifyError(f"recipients refused: {sorted(refused)}", retryable=False)
        return 250
    except NotifyError:
        raise
    except smtplib.SMTPResponseException as exc:
        retryable = 400 <= exc.smtp_code < 500
        raise NotifyError(f"SMTP {host}:{port} answered {exc.smtp_code}: {exc.smtp_error!r}",
                          retryable=retryable, status_code=exc.smtp_code) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotifyError(f"recipients refused: {sorted(exc.recipients)}", retryable=False) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(f"SMTP {host}:{port}: {exc}", retryable=True) from None


async def notify(integration: Integration, message: Message) -> int:
    msg = build(integration, message)
    return await asyncio.to_thread(_send, integration, msg)
