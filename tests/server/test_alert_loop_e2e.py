"""The whole alerting loop on one real server, from metrics to post-mortem.

Generated samples cross a rule's threshold → the alert goes pending, then firing after ``for``
→ one grouped notification reaches a real webhook receiver → no repeat before
``repeat_interval`` → an incident opens and escalates from the primary to the secondary on-call
because nobody acknowledges → a maintenance window mutes a P3 alert that fires meanwhile →
the samples fall back → a resolved notification → the incident resolves with a post-mortem
whose timeline holds every step. Each piece has its own tests (tests/rules, tests/alerting,
tests/incidents); this one checks that they are wired together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port, wait_for

RULES = """
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: CheckoutErrorRate
        expr: checkout_error_ratio > 0.05
        for: 2s
        labels: {severity: critical, service: checkout}
        annotations:
          summary: "checkout errors at {{ $value | humanizePercentage }}"
          runbook_url: https://runbooks.example.com/checkout
      - alert: SlowQueries
        expr: db_slow_queries > 10
        for: 1s
        labels: {severity: low, service: db}
        annotations: {summary: "{{ $value }} slow queries"}
"""


class Recorder:
    """A webhook receiver on loopback that records each request with its arrival time."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], float]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append((self.path, json.loads(body or b"{}"), time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[dict[str, Any], float]]:
        return [(body, t) for p, body, t in list(self.requests) if p == path]

    def close(self) -> None:
        self._server.shutdown()




@pytest.fixture(scope="module")
def receiver() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Recorder) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("loop")
    (base / "rules.yml").write_text(RULES)
    (base / "stackwatch.yml").write_text(f"""
rule_files: [rules.yml]
evaluation_interval: 1s
alerting:
  route:
    receiver: team
    group_by: [alertname]
    group_wait: 200ms
    group_interval: 1s
    repeat_interval: 1h
  receivers:
    - name: team
      webhook_configs: [{{url: "{receiver.url}/team", send_resolved: true}}]
    - name: ann-pager
      webhook_configs: [{{url: "{receiver.url}/ann"}}]
    - name: cat-pager
      webhook_configs: [{{url: "{receiver.url}/cat"}}]
incidents:
  escalation_tick: 0.2s
""")
    srv = ServerProcess(base / "data", config=base / "stackwatch.yml").start()
    yield srv
    srv.stop()


def push(server: ServerProcess, name: str, value: float) -> float:
    """One sample now; the rules see it at their next evaluation. Returns when it was taken."""
    now = time.time()
    r = httpx.post(server.url + "/api/v1/import/prometheus", content=f"{name} {value} {int(now * 1000)}\n",
                   headers={"Authorization": f"Bearer {INGEST_TOKEN}"}, timeout=10)
    assert r.status_code == 204, r.text
    return now


def alert_states(server: ServerProcess) -> dict[str, str]:
    r = httpx.get(server.url + "/api/v1/alerts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {a["labels"]["alertname"]: a["state"] for a in r.json()["data"]["alerts"]}


def team_notifications(receiver: Recorder, alertname: str) -> list[tuple[str, float]]:
    return [(body["status"], t) for body, t in receiver.at("/team")
            if body.get("commonLabels", {}).get("alertname") == alertname]


def test_metrics_to_page_to_post_mortem(server: ServerProcess, receiver: Recorder) -> None:
    with server.client() as c:
        assert c.post("/api/v1/oncall/schedules", json={"name": "ops", "timezone": "UTC", "layers": [
            {"name": "primary", "participants": ["ann"]}, {"name": "secondary", "participants": ["cat"]}]}
        ).status_code == 201
        for user in ("ann", "cat"):
            assert c.put(f"/api/v1/oncall/profiles/{user}", json={"receivers": [f"{user}-pager"]}).status_code == 200
        assert c.post("/api/v1/escalation-policies", json={"name": "default", "default": True, "levels": [
            {"targets": [{"schedule": "ops", "layer": "primary"}], "delay_minutes": 0.04},
            {"targets": [{"schedule": "ops", "layer": "secondary"}], "delay_minutes": 10}]}).status_code == 201

    push(server, "checkout_error_ratio", 0.01)
    push(server, "db_slow_queries", 0)
    time.sleep(2.5)
    assert alert_states(server) == {}, "below the thresholds nothing is pending"

    crossed = push(server, "checkout_error_ratio", 0.2)
    wait_for("pending", lambda: alert_states(server).get("CheckoutErrorRate") == "pending")
    wait_for("firing after `for`", lambda: alert_states(server).get("CheckoutErrorRate") == "firing")
    (status, arrived), = wait_for("the grouped notification", lambda: team_notifications(receiver, "CheckoutErrorRate"))
    assert status == "firing"
    body = next(b for b, _ in receiver.at("/team") if b["commonLabels"]["alertname"] == "CheckoutErrorRate")
    alert = body["alerts"][0]
    assert alert["labels"]["severity"] == "critical" and alert["annotations"]["summary"] == "checkout errors at 20%"
    # Not before `for` has passed; how soon after is measured by bench/alert_delay_bench.py, not here.
    delay = arrived - crossed
    assert delay >= 2, delay

    # Nobody acknowledges: the incident opened from the group pages the primary, then the secondary.
    with server.client() as c:
        incident = wait_for("an incident", lambda: c.get("/api/v1/incidents").json()["incidents"])[0]
    assert (incident["status"], incident["severity"]) == ("triggered", "P0")
    wait_for("the primary's page", lambda: receiver.at("/ann"))
    wait_for("the secondary's page", lambda: receiver.at("/cat"))

    # A maintenance window now: the P3 alert that fires meanwhile is held back, the P0 was not.
    with server.client() as c:
        r = c.post("/api/v1/maintenance", json={"name": "db work", "starts_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5)), "ends_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)), "pass_severity": "P0"})
        assert r.status_code == 201, r.text
    push(server, "db_slow_queries", 50)
    wait_for("the P3 alert firing", lambda: alert_states(server).get("SlowQueries") == "firing")
    time.sleep(2.5)  # more than group_wait + an evaluation: it would have been sent by now
    assert team_notifications(receiver, "SlowQueries") == []
    # And still a single notification for the P0: repeat_interval is an hour.
    assert [s for s, _ in team_notifications(receiver, "CheckoutErrorRate")] == ["firing"]

    push(server, "checkout_error_ratio", 0.0)
    wait_for("the resolved notification",
             lambda: [s for s, _ in team_notifications(receiver, "CheckoutErrorRate")] == ["firing", "resolved"])
    with server.client() as c:
        number = incident["number"]
        resolved = wait_for("the incident to resolve",
                            lambda: (i := c.get(f"/api/v1/incidents/{number}").json())["status"] == "resolved" and i)
        markdown = c.get(f"/api/v1/incidents/{number}/postmortem").json()["markdown"]
    kinds = [e["kind"] for e in resolved["timeline"]]
    assert kinds.index("alert_firing") < kinds.index("escalated") < kinds.index("alert_resolved") < kinds.index(
        "resolved")
    assert [e["payload"]["level"] for e in resolved["timeline"] if e["kind"] == "escalated"] == [1, 2]
    assert "CheckoutErrorRate" in markdown and "Escalated" in markdown and "Alert resolved" in markdown
    print(f"threshold crossing -> webhook: {delay:.2f} s")
