"""End to end through a real server process: alerts posted over the Alertmanager v2 API (by
httpx as Prometheus would, and by a real Prometheus evaluating a rule) are grouped, sent once to a
webhook receiver on loopback, silenced, inhibited, muted by a maintenance window, and resolved.

The server runs on the wall clock, so the routes use short timings (group_wait 1s); the same
behaviour with hours-long timings is covered in-process with the manual clock (test_alerting_dispatcher).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from alerting_receivers import Recorder

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")
AMTOOL = shutil.which("amtool")
DOC = Path(__file__).resolve().parents[2] / "docs" / "alerting-notifications.md"


@pytest.fixture(scope="module")
def hook() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hook: Recorder) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("alerting-e2e")
    config = {"alerting": {
        "route": {"receiver": "ops", "group_by": ["alertname", "service"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "ops", "webhook_configs": [{"url": hook.url + "/ops"}]}],
        "inhibit_rules": [{"source_matchers": ["severity=P1", "component=database"],
                           "target_matchers": ['severity=~"P3|low"'], "equal": ["service"]}],
    }}
    path = work / "stackwatch.yml"
    path.write_text(yaml.safe_dump(config))
    srv = ServerProcess(work / "data", config=path, env={"STACKWATCH_PIPELINE_WORKERS": "0"}).start()
    yield srv
    srv.stop()


def post(server: ServerProcess, *alerts: dict[str, Any], token: str = ADMIN_TOKEN) -> httpx.Response:
    return httpx.post(server.url + "/api/v2/alerts", json=list(alerts), timeout=10,
                      headers={"Authorization": f"Bearer {token}"})


def alert(name: str, ends_in: float = 600, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": f"{name} is bad"},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(seconds=ends_in)).isoformat(),
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up"}


def sent(hook: Recorder, name: str) -> list[dict[str, Any]]:
    return [b for b in hook.bodies() if b["groupLabels"].get("alertname") == name]


def wait_sent(hook: Recorder, name: str, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sent(hook, name)
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{name}: {len(sent(hook, name))} notifications, wanted {n}: {hook.bodies()}")


def test_grouped_once_no_repeat_then_resolved(server: ServerProcess, hook: Recorder) -> None:
    a, b = alert("ApiErrors", service="api", instance="a"), alert("ApiErrors", service="api", instance="b")
    assert post(server, a, b).status_code == 200
    (first,) = wait_sent(hook, "ApiErrors", 1)
    assert [x["labels"]["instance"] for x in first["alerts"]] == ["a", "b"]
    assert first["version"] == "4" and first["receiver"] == "ops"
    for _ in range(6):  # re-sent like Prometheus does each evaluation: no new page
        post(server, a, b)
        time.sleep(0.5)
    assert len(sent(hook, "ApiErrors")) == 1
    with server.client() as c:
        (group,) = [g for g in c.get("/api/v2/alerts/groups").json() if g["labels"].get("alertname") == "ApiErrors"]
        assert group["receiver"] == {"name": "ops"} and len(group["alerts"]) == 2
    a["endsAt"] = b["endsAt"] = datetime.now(UTC).isoformat()
    post(server, a, b)
    _, resolved = wait_sent(hook, "ApiErrors", 2)
    assert resolved["status"] == "resolved"
    # The delivery is recorded once the receiver's answer is back, a moment after it got the request.
    wanted = {("firing", "success"), ("resolved", "success")}
    deadline = time.monotonic() + 10
    with server.client() as c:
        while True:
            log = c.get("/api/v1/notifications", params={"receiver": "ops"}).json()["notifications"]
            got = {(n["notification_status"], n["status"]) for n in log if "ApiErrors" in n["group_key"]}
            if got == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert got == wanted


def test_silence_over_the_api_mutes_until_expired(server: ServerProcess, hook: Recorder) -> None:
    now = datetime.now(UTC)
    with server.client() as c:
        r = c.post("/api/v2/silences", json={
            "matchers": [{"name": "alertname", "value": "Flappy", "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "ops@example.com", "comment": "known issue"})
        assert r.status_code == 200, r.text
        sid = r.json()["silenceID"]
        post(server, alert("Flappy", service="web"))
        time.sleep(2.5)
        assert sent(hook, "Flappy") == []
        (shown,) = c.get("/api/v2/alerts", params={"filter": 'alertname="Flappy"'}).json()
        assert shown["status"]["state"] == "suppressed" and shown["status"]["silencedBy"] == [sid]
        assert c.get(f"/api/v2/silence/{sid}").json()["status"]["state"] == "active"
        assert [s["id"] for s in c.get("/api/v2/silences").json()] == [sid]
        assert c.delete(f"/api/v2/silence/{sid}").status_code == 200
        assert c.get(f"/api/v2/silence/{sid}").json()["status"]["state"] == "expired"
    post(server, alert("Flappy", service="web"))
    wait_sent(hook, "Flappy", 1)


def test_inhibition_and_maintenance_window(server: ServerProcess, hook: Recorder) -> None:
    post(server, alert("PgDown", service="db", severity="P1", component="database"),
         alert("SlowQueries", service="db", severity="P3", component="database"),
         alert("SlowQueries", service="reports", severity="P3", component="database"))
    wait_sent(hook, "PgDown", 1)
    (slow,) = wait_sent(hook, "SlowQueries", 1)
    assert slow["groupLabels"]["service"] == "reports"  # the db one is explained by PgDown
    now = datetime.now(UTC)
    with server.client() as c:
        r = c.post("/api/v1/maintenance", json={
            "name": "cache upgrade", "matchers": ['service="cache"'], "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(), "comment": "planned"})
        assert r.status_code == 201, r.text
        window = r.json()
        assert window["state"] == "active" and window["created_by"]
        post(server, alert("CacheEvictions", service="cache", severity="P3"),
             alert("CacheDown", service="cache", severity="P0"))
        wait_sent(hook, "CacheDown", 1)
        time.sleep(1.5)
        assert sent(hook, "CacheEvictions") == []
        (muted,) = c.get("/api/v2/alerts", params={"filter": 'alertname="CacheEvictions"'}).json()
        assert muted["status"]["mutedBy"] == [window["id"]]
        assert [w["id"] for w in c.get("/api/v1/maintenance").json()["windows"]] == [window["id"]]
        assert c.delete(f"/api/v1/maintenance/{window['id']}").status_code == 204
        assert c.get(f"/api/v1/maintenance/{window['id']}").status_code == 404


def test_api_refuses_bad_input_and_missing_credentials(server: ServerProcess) -> None:
    assert httpx.post(server.url + "/api/v2/alerts", json=[alert("X")]).status_code == 401
    # The ingest token is the public key of the project's Sentry DSN: it must not page anyone.
    r = post(server, alert("FromTheBrowser"), token=INGEST_TOKEN)
    assert r.status_code == 401 and "editor role" in r.json()["error"]
    assert httpx.get(server.url + "/api/v2/alerts").status_code == 401
    r = post(server, {"labels": {}})
    assert r.status_code == 400 and "labels must be a non-empty object" in r.json()["error"]
    r = post(server, {"labels": {"bad-name": "x"}})
    assert r.status_code == 400 and "invalid label name" in r.json()["error"]
    r = post(server, {"labels": {"a": "b"}, "startsAt": "yesterday"})
    assert r.status_code == 400 and "RFC 3339" in r.json()["error"]
    with server.client() as c:
        r = c.post("/api/v2/silences", json={"matchers": [{"name": "a", "value": ".*", "isRegex": True}],
                                            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
                                            "createdBy": "x"})
        assert r.status_code == 400 and "matches every alert" in r.json()["error"]
        assert c.get("/api/v2/silence/nope").status_code == 404
        r = c.post("/api/v1/maintenance", json={"name": "x", "pass_severity": "P9", "recurrence": {}})
        assert r.status_code == 400 and "unknown severity" in r.json()["error"]
        r = c.get("/api/v2/alerts", params={"filter": 'a=~"("'})
        assert r.status_code == 400
        status = c.get("/api/v2/status").json()
        assert status["cluster"]["status"] == "disabled" and "webhook_configs" in status["config"]["original"]
        assert "<secret>" in status["config"]["original"]  # webhook URLs carry secrets
        assert c.get("/api/v1/alerting/routes/test", params={"labels": 'alertname="x"'}).json()["receivers"] == ["ops"]
        levels = c.get("/api/v1/alerting/severities").json()["severities"]
        assert [(x["code"], x["name"], x["ack_within_s"]) for x in levels][:2] == [("P0", "critical", 300.0),
                                                                                   ("P1", "high", 900.0)]


def _doc_prometheus_alerting() -> str:
    (block,) = re.findall(r"```yaml\n(alerting:\n  alertmanagers:.*?)```", DOC.read_text(), flags=re.S)
    return block


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (scripts/system-deps.sh)")
def test_a_real_prometheus_sends_its_alerts_to_us(server: ServerProcess, hook: Recorder,
                                                  tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "demo", "rules": [{
        "alert": "PrometheusSaysHi", "expr": "vector(42)", "labels": {"severity": "P2", "service": "prom"},
        "annotations": {"summary": "value is {{ $value }}"}}]}]}))
    host = server.url.removeprefix("http://")
    alerting = yaml.safe_load(_doc_prometheus_alerting().replace("stackwatch.example.com:8040", host)
                              .replace("<API token with the editor role>", ADMIN_TOKEN).replace("scheme: https", "scheme: http"))
    config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(rules)], **alerting}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                             # its first send can come before it has discovered us (then it is
                             # dropped); re-send each second instead of each minute
                             "--rules.alert.resend-delay=1s"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            (msg,) = wait_sent(hook, "PrometheusSaysHi", 1, timeout=45)
        except AssertionError:
            raise AssertionError((tmp_path / "prometheus.log").read_text()) from None
        (a,) = msg["alerts"]
        assert a["labels"] == {"alertname": "PrometheusSaysHi", "severity": "P2", "service": "prom"}
        assert a["annotations"] == {"summary": "value is 42"}
        assert a["generatorURL"].startswith("http://") and "/graph?g0.expr=vector" in a["generatorURL"]
        with server.client() as c:
            (shown,) = c.get("/api/v2/alerts", params={"filter": 'alertname="PrometheusSaysHi"'}).json()
        assert shown["status"]["state"] == "active" and shown["receivers"] == [{"name": "ops"}]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_documented_maintenance_example(server: ServerProcess) -> None:
    (body,) = re.findall(r"-d '(\{.*?\})'", DOC.read_text(), flags=re.S)
    with server.client() as c:
        r = c.post("/api/v1/maintenance", content=body)
        assert r.status_code == 201, r.text
        window = r.json()
        assert window["recurrence"][0]["location"] == "Europe/Paris" and window["pass_severity"] == "P1"
        assert c.delete(f"/api/v1/maintenance/{window['id']}").status_code == 204


def test_admin_token_may_post_alerts_too(server: ServerProcess, hook: Recorder) -> None:
    assert post(server, alert("ByAdmin", service="x"), token=ADMIN_TOKEN).status_code == 200
    wait_sent(hook, "ByAdmin", 1)


def test_alerts_page_and_the_silence_link_of_notifications(server: ServerProcess, hook: Recorder) -> None:
    post(server, alert("UiShown", service="ui", severity="P2"))
    wait_sent(hook, "UiShown", 1)
    origin = {"Origin": server.url}
    with httpx.Client(base_url=server.url, timeout=10) as browser:
        assert browser.get("/alerts").status_code == 303  # to the login page
        r = browser.post("/login", data={"token": ADMIN_TOKEN, "next": "/alerts"}, headers=origin)
        assert r.status_code == 303
        page = browser.get("/alerts").text
        assert "UiShown" in page and "service=ui" in page
        # the link a Slack message carries for this alert's group
        link = '/alerts/silences/new?filter=' + urllib.parse.quote('{alertname="UiShown", service="ui"}')
        form = browser.get(link)
        assert form.status_code == 200 and 'value="{alertname=&#34;UiShown&#34;, service=&#34;ui&#34;}"' in form.text
        r = browser.post("/alerts/silences", data={"matchers": '{alertname="UiShown", service="ui"}',
                                                   "duration": "1h", "comment": "from the UI"}, headers=origin)
        assert r.status_code == 303
        bad = browser.post("/alerts/silences", data={"matchers": "oops", "duration": "1h"}, headers=origin)
        assert bad.status_code == 400 and "expected one of" in bad.text
        cross = browser.post("/alerts/silences", data={"matchers": 'a="b"'}, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
    with server.client() as c:
        (s,) = [s for s in c.get("/api/v2/silences").json() if s["comment"] == "from the UI"]
        assert s["createdBy"] == "admin@localhost" and s["status"]["state"] == "active"
        (shown,) = c.get("/api/v2/alerts", params={"filter": 'alertname="UiShown"'}).json()
        assert shown["status"]["silencedBy"] == [s["id"]]
        c.delete(f"/api/v2/silence/{s['id']}")


@pytest.mark.skipif(AMTOOL is None, reason="amtool is not installed (prometheus-alertmanager; scripts/system-deps.sh)")
def test_amtool_manages_silences_and_reads_alerts_through_our_api(server: ServerProcess, tmp_path: Path) -> None:
    http_config = tmp_path / "http.yml"
    http_config.write_text(yaml.safe_dump({"authorization": {"credentials": ADMIN_TOKEN}}))

    def amtool(*args: str) -> str:
        assert AMTOOL is not None
        out = subprocess.run([AMTOOL, f"--alertmanager.url={server.url}", f"--http.config.file={http_config}", *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    post(server, alert("AmtoolSees", service="cli", severity="P3"))
    sid = amtool("silence", "add", "alertname=AmtoolSees", 'service=~"cli|api"', "--comment=via amtool",
                 "--author=amtool@example.com", "--duration=30m").strip()
    with server.client() as c:
        s = c.get(f"/api/v2/silence/{sid}").json()
    assert s["createdBy"] == "amtool@example.com" and s["comment"] == "via amtool"
    assert {(m["name"], m["value"], m["isRegex"]) for m in s["matchers"]} == {
        ("alertname", "AmtoolSees", False), ("service", "cli|api", True)}
    listed = yaml.safe_load(amtool("silence", "query", "-o", "json"))
    assert sid in [x["id"] for x in listed]
    alerts = yaml.safe_load(amtool("alert", "query", "-o", "json", "--silenced", "alertname=AmtoolSees"))
    assert [a["labels"]["alertname"] for a in alerts] == ["AmtoolSees"]
    assert alerts[0]["status"]["silencedBy"] == [sid]
    amtool("silence", "expire", sid)
    with server.client() as c:
        assert c.get(f"/api/v2/silence/{sid}").json()["status"]["state"] == "expired"
    assert "route:" in amtool("config", "show")


def test_a_restart_neither_pages_again_nor_forgets_silences(server: ServerProcess, hook: Recorder) -> None:
    # Last in the module: it restarts the shared server.
    a = alert("Persistent", service="api")
    post(server, a)
    wait_sent(hook, "Persistent", 1)
    now = datetime.now(UTC)
    with server.client() as c:
        sid = c.post("/api/v2/silences", json={
            "matchers": [{"name": "alertname", "value": "Quiet", "isRegex": False}],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "ops@example.com", "comment": "across restarts"}).json()["silenceID"]
    server.stop()
    server.start()
    for _ in range(4):  # Prometheus re-sends the same firing alert (same startsAt) after our restart
        assert post(server, a, alert("Quiet", service="api")).status_code == 200
        time.sleep(0.5)
    time.sleep(1.5)
    assert len(sent(hook, "Persistent")) == 1
    assert sent(hook, "Quiet") == []
    with server.client() as c:
        assert c.get(f"/api/v2/silence/{sid}").json()["status"]["state"] == "active"
