"""End to end on a real server: an alert posted to the Alertmanager API opens an incident,
escalation pages the primary then the secondary through the dispatcher's real webhook
receivers, a signed link acknowledges and stops it, a restart does not duplicate the incident,
the resolved alert resolves it with a post-mortem, and the CLI reads and acts on it all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import Receiver
from serverproc import ADMIN_TOKEN, ServerProcess, wait_for
from stackwatch.cli import app as cli_app


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("incidents")
    config = base / "stackwatch.yaml"
    config.write_text(f"""
alerting:
  route:
    receiver: team
    group_by: [alertname]
    group_wait: 1s
    group_interval: 1s
    repeat_interval: 1h
  receivers:
    - name: team
      webhook_configs: [{{url: "{receiver.url}/team"}}]
    - name: ann-pager
      webhook_configs: [{{url: "{receiver.url}/ann"}}]
    - name: cat-pager
      webhook_configs: [{{url: "{receiver.url}/cat"}}]
    - name: cto-pager
      webhook_configs: [{{url: "{receiver.url}/cto"}}]
    - name: pd-pager
      pagerduty_configs: [{{routing_key: "R0UT1NGKEY", url: "{receiver.url}/pd"}}]
incidents:
  escalation_tick: 0.2s
""")
    srv = ServerProcess(base / "data", config=config, env={"STACKWATCH_PIPELINE_WORKERS": "0"}).start()
    yield srv
    srv.stop()


def post_alert(server: ServerProcess, starts: str, ends: str | None = None) -> None:
    alert: dict[str, Any] = {"labels": {"alertname": "APIDown", "severity": "critical", "service": "api"},
                             "annotations": {"summary": "API is down", "runbook_url": "https://runbooks/api"},
                             "startsAt": starts}
    if ends:
        alert["endsAt"] = ends
    with server.client() as c:
        r = c.post("/api/v2/alerts", json=[alert])
        assert r.status_code == 200, r.text


def test_alert_to_incident_escalation_ack_restart_resolution(server: ServerProcess, receiver: Receiver,
                                                             tmp_path: Path) -> None:
    with server.client() as c:
        assert c.post("/api/v1/oncall/schedules", json={"name": "ops", "timezone": "Europe/Berlin", "layers": [
            {"name": "primary", "participants": ["ann"]}, {"name": "secondary", "participants": ["cat"]}]}
        ).status_code == 201
        for user in ("ann", "cat"):
            assert c.put(f"/api/v1/oncall/profiles/{user}", json={"receivers": [f"{user}-pager"]}).status_code == 200
        assert c.post("/api/v1/escalation-policies", json={"name": "default", "default": True, "levels": [
            {"targets": [{"schedule": "ops", "layer": "primary"}, {"receiver": "pd-pager"}], "delay_minutes": 0.04},
            {"targets": [{"schedule": "ops", "layer": "secondary"}], "delay_minutes": 0.1},
            {"targets": [{"receiver": "cto-pager"}], "delay_minutes": 10}]}).status_code == 201

    starts = datetime.now(UTC).isoformat()
    post_alert(server, starts)
    # The dispatcher notifies the routed receiver, and the incident opens from that group.
    wait_for("the group notification", lambda: "/team" in receiver.paths())
    with server.client() as c:
        incident = wait_for("incident #1", lambda: c.get("/api/v1/incidents").json()["incidents"])[0]
    assert (incident["number"], incident["severity"], incident["status"], incident["service"]) == (
        1, "P0", "triggered", "api")
    # Not acknowledged: the primary is paged, then ~2.4 s later the secondary.
    wait_for("the primary's page", lambda: "/ann" in receiver.paths())
    wait_for("the secondary's page", lambda: "/cat" in receiver.paths())
    page = next(body for path, body in receiver.requests if path == "/ann")
    assert page["alerts"][0]["labels"]["alertname"] == "APIDown"
    link = page["alerts"][0]["annotations"]["ack_url"]
    assert link.startswith(server.url + "/ack/")
    assert page["ackURL"] == link and page["incident"]["number"] == 1  # also as fields of the webhook body
    assert page["escalation"]["level"] == 1 and page["escalation"]["user"] == "ann"
    confirm = httpx.get(link)  # no credentials: the link is the capability
    assert confirm.status_code == 200 and "Acknowledge" in confirm.text
    # PagerDuty keeps paging until told: it gets an acknowledge event with the page's dedup key.
    pd = [body for path, body in receiver.requests if path == "/pd"]
    assert [b["event_action"] for b in pd] == ["trigger"]
    assert httpx.post(link).status_code == 200
    wait_for("PagerDuty acknowledge", lambda: len([p for p in receiver.paths() if p == "/pd"]) == 2)
    acked = [body for path, body in receiver.requests if path == "/pd"][1]
    assert (acked["event_action"], acked["dedup_key"]) == ("acknowledge", pd[0]["dedup_key"])
    time.sleep(6.5)  # level 3 was due 6 s after the secondary's page
    assert "/cto" not in receiver.paths()
    assert receiver.paths().count("/ann") == 1 and receiver.paths().count("/cat") == 1
    with server.client() as c:
        inc = c.get("/api/v1/incidents/1").json()
    assert (inc["status"], inc["acked_by"]) == ("acknowledged", "ann")
    assert [e["payload"]["level"] for e in inc["timeline"] if e["kind"] == "escalated"] == [1, 2]

    # A restart with the alert still firing: the same incident, no second one.
    server.stop()
    server.start()
    post_alert(server, starts)
    time.sleep(2.5)
    with server.client() as c:
        assert [i["number"] for i in c.get("/api/v1/incidents", params={"status": "open"}).json()["incidents"]] == [1]

    post_alert(server, starts, ends=datetime.now(UTC).isoformat())
    with server.client() as c:
        resolved = wait_for("auto-resolution", lambda: (r := c.get("/api/v1/incidents/1").json())["status"]
                            == "resolved" and r)
        pm = c.get("/api/v1/incidents/1/postmortem").json()
    assert resolved["resolved_by"] == "stackwatch"
    wait_for("PagerDuty resolve", lambda: [b.get("event_action") for p, b in receiver.requests if p == "/pd"]
             == ["trigger", "acknowledge", "resolve"])
    assert receiver.paths().count("/ann") == 1  # webhooks and chat get no extra messages
    kinds = [e["kind"] for e in resolved["timeline"]]
    assert kinds.count("opened") == 1 and kinds.count("alert_firing") == 1
    assert kinds.index("escalated") < kinds.index("acknowledged") < kinds.index("alert_resolved") < kinds.index(
        "resolved")
    events = [line.split(" | ")[1] for line in pm["markdown"].splitlines() if line.startswith("| 20")]
    assert events[:2] == ["Incident opened", "Alert firing"] and events[-1] == "Resolved"
    assert {"Escalated", "Acknowledged", "Alert resolved"} <= set(events)
    assert "`APIDown` (service=api, severity=critical)" in pm["markdown"]

    # The CLI, through the HTTP API.
    runner = CliRunner()
    common = ["--url", server.url, "--token", ADMIN_TOKEN]
    out = runner.invoke(cli_app, ["incidents", "list", "--status", "all", *common])
    assert out.exit_code == 0 and "API is down" in out.output and "resolved" in out.output, out.output
    out = runner.invoke(cli_app, ["oncall", "now", "--schedule", "ops", *common])
    assert out.exit_code == 0 and "ops/primary: ann" in out.output and "ops/secondary: cat" in out.output
    out = runner.invoke(cli_app, ["oncall", "now", "--at", "+8h", "--layer", "primary", "--json", *common])
    assert out.exit_code == 0 and '"user": "ann"' in out.output, out.output
    out = runner.invoke(cli_app, ["incidents", "show", "1", *common])
    assert out.exit_code == 0 and "acknowledged" in out.output and "escalated" in out.output, out.output
    out = runner.invoke(cli_app, ["incidents", "show", "999", *common])
    assert out.exit_code == 1 and "no incident #999" in out.output
    out = runner.invoke(cli_app, ["incidents", "create", "Customers cannot log in", "--severity", "high", *common])
    assert out.exit_code == 0 and "incident #2 opened (P1)" in out.output, out.output
    out = runner.invoke(cli_app, ["incidents", "ack", "2", "--message", "looking", *common])
    assert out.exit_code == 0 and "acknowledged" in out.output, out.output
    out = runner.invoke(cli_app, ["incidents", "ack", "2", *common])
    assert out.exit_code == 1 and "409" in out.output
    out = runner.invoke(cli_app, ["incidents", "resolve", "2", "--message", "SSO fixed", *common])
    assert out.exit_code == 0 and "resolved" in out.output
    with server.client() as c:
        review = c.get("/api/v1/reports/weekly-review").json()
    # Group notifications and pages, from the dispatcher's delivery log.
    assert review["notifications"]["sent"] >= 4 and review["notifications"]["failed"] == 0
    out = runner.invoke(cli_app, ["incidents", "review", *common])
    assert out.exit_code == 0 and "APIDown" in out.output, out.output
    out = runner.invoke(cli_app, ["incidents", "mtta", "--json", *common])
    assert out.exit_code == 0 and '"P0"' in out.output


DOC = Path(__file__).resolve().parents[2] / "docs" / "incidents.md"


def test_documented_curl_lifecycle_runs(server: ServerProcess) -> None:
    import re
    import shutil
    import subprocess

    assert shutil.which("curl"), "curl is needed to run the documented examples"
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    lifecycle = next(b for b in blocks if "/acknowledge" in b)
    commands = [c for c in lifecycle.replace("\\\n", " ").splitlines() if c.strip()]
    env = {"STACKWATCH_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"}

    def run(command: str) -> str:
        out = subprocess.run(["bash", "-c", command.replace("http://127.0.0.1:8040", server.url)], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    import json

    created = json.loads(run(commands[0]))
    number = created["number"]
    assert created["title"] == "Customers report failed payments" and created["severity"] == "P1"
    outputs = [json.loads(run(c.replace("/incidents/1/", f"/incidents/{number}/"))) for c in commands[1:]]
    assert outputs[0]["status"] == "acknowledged" and outputs[2]["status"] == "resolved"
    assert "PSP recovered; failed payments retried" in outputs[3]["markdown"]
    assert "PSP outage confirmed; retries queued" in outputs[3]["markdown"]
