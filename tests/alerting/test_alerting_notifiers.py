"""Each notifier against a real receiver on loopback: HTTP recorders, an aiosmtpd SMTP server with
STARTTLS and AUTH, and apprise posting to a recorder through its json:// scheme."""

from __future__ import annotations

import email
import ssl
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message as MimeMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from alerting_receivers import ManualClock, Recorder, self_signed_cert

from serverproc import free_port
from stackwatch.alerting.config import parse_alerting_config
from stackwatch.alerting.dispatcher import Dispatcher
from stackwatch.alerting.notifiers.pagerduty import dedup_key
from stackwatch.model.alerts import Alert


def run_group(cfg: dict[str, Any], clock: ManualClock, alerts: list[Alert], *, resolve: bool = False) -> Dispatcher:
    """Put ``alerts``, flush once (and, with ``resolve``, resolve them and flush again)."""
    d = Dispatcher(parse_alerting_config(cfg), clock=clock, retry_base=0.01, external_url="https://sw.example.com")
    d.start(ticker=False)
    d.put_alerts(alerts)
    clock.advance(31)
    d.run_due()
    assert d.wait_idle(15)
    if resolve:
        d.put_alerts([Alert(a.labels, a.annotations, starts_at=a.starts_at, ends_at=clock.now) for a in alerts])
        clock.advance(300)
        d.run_due()
        assert d.wait_idle(15)
    d.stop()
    return d


def db_alert(clock: ManualClock, **labels: str) -> Alert:
    return Alert({"alertname": "PostgresReplicationLag", "severity": "P1", "service": "db", **labels},
                 {"summary": "Replica lag is 42s", "description": "replica-2 is behind the primary",
                  "runbook_url": "https://runbooks.example.com/pg-lag"},
                 starts_at=clock.now, ends_at=clock.now + timedelta(minutes=10),
                 generator_url="https://sw.example.com/alerts/rules/pg-lag", value=42.25)


def test_slack_block_kit_message_with_severity_value_runbook_and_silence_link(
        clock: ManualClock, recorder: Recorder) -> None:
    cfg = {"route": {"receiver": "slack"}, "receivers": [{"name": "slack", "slack_configs": [
        {"api_url": recorder.url + "/services/T/B/X", "channel": "#ops", "send_resolved": True}]}]}
    d = run_group(cfg, clock, [db_alert(clock)], resolve=True)
    firing_msg, resolved_msg = recorder.bodies()
    assert firing_msg["channel"] == "#ops"
    assert firing_msg["blocks"][0] == {"type": "header", "text": {"type": "plain_text",
                                                                  "text": "[FIRING:1] PostgresReplicationLag (P1)"}}
    section = firing_msg["blocks"][1]["text"]["text"]
    assert "*Severity:* P1" in section and "*Value:* 42.25" in section
    assert "<https://runbooks.example.com/pg-lag|Runbook>" in section
    buttons = {b["text"]["text"]: b["url"] for b in firing_msg["blocks"][-1]["elements"]}
    assert buttons["Runbook"] == "https://runbooks.example.com/pg-lag"
    assert buttons["Silence"].startswith("https://sw.example.com/alerts/silences/new?filter=")
    assert buttons["View alert"] == "https://sw.example.com/alerts/rules/pg-lag"
    assert resolved_msg["blocks"][0]["text"]["text"] == "[RESOLVED] PostgresReplicationLag (P1)"
    assert [r["status"] for r in d.deliveries()] == ["success", "success"]


def test_slack_title_and_text_templates_override_the_defaults(clock: ManualClock, recorder: Recorder) -> None:
    cfg = {"route": {"receiver": "slack", "group_by": ["service"]}, "receivers": [{"name": "slack", "slack_configs": [{
        "api_url": recorder.url,
        "title": "{{ .GroupLabels.service | toUpper }} has {{ .Alerts.Firing | len }} problem(s)",
        "text": "{{ range .Alerts }}• {{ .Annotations.summary }} ({{ .Labels.instance }})\n{{ end }}"}]}]}
    run_group(cfg, clock, [db_alert(clock, instance="pg-1"), db_alert(clock, instance="pg-2")])
    (msg,) = recorder.bodies()
    assert msg["blocks"][0]["text"]["text"] == "DB has 2 problem(s)"
    assert msg["blocks"][1]["text"]["text"] == "• Replica lag is 42s (pg-1)\n• Replica lag is 42s (pg-2)\n"


def test_pagerduty_trigger_then_resolve_share_a_stable_dedup_key(clock: ManualClock, recorder: Recorder) -> None:
    cfg = {"route": {"receiver": "pd", "group_by": ["alertname"]}, "receivers": [{"name": "pd", "pagerduty_configs": [
        {"routing_key": "0123456789abcdef0123456789abcdef", "url": recorder.url + "/v2/enqueue",
         "details": {"team": "{{ .CommonLabels.service }}"}}]}]}
    recorder.ok_status = 202
    run_group(cfg, clock, [db_alert(clock)], resolve=True)
    trigger, resolve = recorder.bodies()
    key = dedup_key('{}:{alertname="PostgresReplicationLag"}')
    assert trigger["dedup_key"] == resolve["dedup_key"] == key
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["payload"]["severity"] == "error"  # P1
    assert trigger["payload"]["summary"] == "[FIRING:1] PostgresReplicationLag (P1)"
    assert trigger["payload"]["custom_details"]["team"] == "db"
    assert trigger["links"] == [{"href": "https://runbooks.example.com/pg-lag", "text": "Runbook"}]
    assert set(resolve) == {"routing_key", "dedup_key", "event_action"}


@pytest.mark.parametrize("card", ["messagecard", "adaptive"])
def test_microsoft_teams_cards(clock: ManualClock, recorder: Recorder, card: str) -> None:
    cfg = {"route": {"receiver": "teams"}, "receivers": [{"name": "teams", "msteams_configs": [
        {"webhook_url": recorder.url + "/webhookb2/x", "card": card}]}]}
    run_group(cfg, clock, [db_alert(clock)])
    (msg,) = recorder.bodies()
    if card == "messagecard":
        assert msg["@type"] == "MessageCard" and msg["title"] == "[FIRING:1] PostgresReplicationLag (P1)"
        assert "Replica lag is 42s (value 42.25)" in msg["text"]
        assert {a["name"] for a in msg["potentialAction"]} == {"Runbook", "Silence", "View alert"}
    else:
        content = msg["attachments"][0]["content"]
        assert content["type"] == "AdaptiveCard"
        assert content["body"][0]["text"] == "[FIRING:1] PostgresReplicationLag (P1)"
        assert {"title": "service", "value": "db"} in content["body"][2]["facts"]


def test_apprise_delivers_through_its_json_scheme(clock: ManualClock, recorder: Recorder) -> None:
    port = recorder.url.rsplit(":", 1)[1]
    cfg = {"route": {"receiver": "tail"}, "receivers": [{"name": "tail", "apprise_configs": [
        {"urls": [f"json://127.0.0.1:{port}/apprise"], "title": "{{ .CommonLabels.alertname }}"}]}]}
    d = run_group(cfg, clock, [db_alert(clock)])
    (msg,) = recorder.bodies()
    assert msg["title"] == "PostgresReplicationLag"
    assert "Replica lag is 42s" in msg["message"]
    assert d.deliveries()[0]["status"] == "success"


def test_apprise_refuses_an_unknown_scheme_without_retrying(clock: ManualClock) -> None:
    cfg = {"route": {"receiver": "tail"}, "receivers": [{"name": "tail", "apprise_configs": [
        {"urls": ["nosuchservice://x"]}]}]}
    d = run_group(cfg, clock, [db_alert(clock)])
    (result,) = d.deliveries()
    assert result["status"] == "failed" and result["attempts"] == 1 and "nosuchservice" in result["error"]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], MimeMessage]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[int, _Inbox, Path]]:
    """aiosmtpd with STARTTLS required before AUTH, accepting one user."""
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = _Inbox()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alerts" and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            auth_required=True, authenticator=authenticate, server_hostname="localhost")
    controller.start()
    try:
        yield port, inbox, cert
    finally:
        controller.stop()


def mail_config(port: int, cert: Path, **email: Any) -> dict[str, Any]:
    """One e-mail receiver on the test's STARTTLS server, with authentication."""
    return {
        "global": {"smtp_smarthost": f"127.0.0.1:{port}", "smtp_from": "alerts@example.com",
                   "smtp_auth_username": "alerts", "smtp_auth_password": "s3cret"},
        "route": {"receiver": "mail"},
        "receivers": [{"name": "mail", "email_configs": [{
            "to": "oncall@example.com", "tls_config": {"ca_file": str(cert), "server_name": "localhost"},
            **email}]}],
    }


def test_email_over_starttls_with_auth_has_text_and_html_parts(
        clock: ManualClock, smtp_server: tuple[int, _Inbox, Path]) -> None:
    port, inbox, cert = smtp_server
    cfg = mail_config(port, cert, send_resolved=True, headers={
        "Subject": "[{{ .Status }}] {{ .CommonLabels.alertname }} <{{ .CommonLabels.service }}>"})
    d = run_group(cfg, clock, [db_alert(clock)], resolve=True)
    assert [r["status"] for r in d.deliveries()] == ["success", "success"]
    (sender, rcpts, first), (_, _, second) = inbox.messages
    assert sender == "alerts@example.com" and rcpts == ["oncall@example.com"]
    assert first["Subject"] == "[firing] PostgresReplicationLag <db>"
    assert second["Subject"] == "[resolved] PostgresReplicationLag <db>"
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in first.walk()
             if not p.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}
    assert "runbook: https://runbooks.example.com/pg-lag" in parts["text/plain"]
    assert "value: 42.25" in parts["text/plain"]
    assert '<a href="https://runbooks.example.com/pg-lag">Runbook</a>' in parts["text/html"]


def test_an_email_page_carries_the_acknowledge_link(
        clock: ManualClock, smtp_server: tuple[int, _Inbox, Path]) -> None:
    """An incident's page by e-mail: the one-click acknowledge link, the incident and the
    escalation step are in both parts (they were only in webhook pages)."""
    port, inbox, cert = smtp_server
    cfg = mail_config(port, cert)
    paged = db_alert(clock)
    paged.annotations.update(ack_url="https://sw.example.com/incidents/ack?t=abc&u=ann",
                             incident_url="https://sw.example.com/api/v1/incidents/7",
                             escalation="level 1 of 'default'")
    run_group(cfg, clock, [paged])
    (_, _, first), = inbox.messages
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in first.walk()
             if not p.is_multipart()}
    assert "acknowledge: https://sw.example.com/incidents/ack?t=abc&u=ann" in parts["text/plain"]
    assert "escalation: level 1 of 'default'" in parts["text/plain"]
    assert '<a href="https://sw.example.com/incidents/ack?t=abc&amp;u=ann"><b>Acknowledge</b></a>' in parts["text/html"]
    assert "Page: level 1 of &#x27;default&#x27;" in parts["text/html"]


def test_email_to_a_refused_recipient_fails_without_retrying(
        clock: ManualClock, smtp_server: tuple[int, _Inbox, Path]) -> None:
    port, inbox, _cert = smtp_server
    cfg = {"route": {"receiver": "mail"}, "receivers": [{"name": "mail", "email_configs": [{
        "to": "nobody@example.com", "from": "a@example.com", "smarthost": f"127.0.0.1:{port}",
        "auth_username": "alerts", "auth_password": "s3cret", "tls_config": {"insecure_skip_verify": True}}]}]}
    d = run_group(cfg, clock, [db_alert(clock)])
    (result,) = d.deliveries()
    assert result["status"] == "failed" and result["attempts"] == 1
    assert "nobody@example.com" in result["error"]
    assert inbox.messages == []


def test_webhook_max_alerts_truncates_and_basic_auth_is_sent(clock: ManualClock, recorder: Recorder) -> None:
    cfg = {"route": {"receiver": "hook", "group_by": ["alertname"]}, "receivers": [{"name": "hook", "webhook_configs": [
        {"url": recorder.url, "max_alerts": 2, "http_config": {"basic_auth": {"username": "u", "password": "p"}}}]}]}
    run_group(cfg, clock, [db_alert(clock, instance=f"pg-{i}") for i in range(5)])
    (msg,) = recorder.bodies()
    assert len(msg["alerts"]) == 2 and msg["truncatedAlerts"] == 3
    assert recorder.requests[0]["headers"]["Authorization"] == "Basic dTpw"
