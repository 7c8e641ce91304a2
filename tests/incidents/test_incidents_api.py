"""The incident, on-call, escalation-policy and report APIs, and signed links, on the real app.

The app is ``create_app`` with a runtime holding a real AuthService, IncidentService and
escalation engine over one SQLite meta store; pages go to a recording HTTP receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import Clock, Receiver
from stackwatch.auth import AuthService
from stackwatch.incidents.escalation import EscalationEngine
from stackwatch.incidents.links import LinkSigner
from stackwatch.incidents.sender import WebhookSender
from stackwatch.incidents.service import IncidentService
from stackwatch.server.app import create_app
from stackwatch.storage.meta import MetaStore

SECRET = b"api-test-secret-0123456789abcdef"


@pytest.fixture
def meta_url(tmp_path: Path) -> str:
    """SQLite only here: the service tests already cover both backends."""
    return f"sqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture
def env(meta: MetaStore, service: IncidentService, clock: Clock, receiver: Receiver) -> Iterator[SimpleNamespace]:
    auth = AuthService(meta)
    auth.bootstrap()
    editor = auth.create_user("ann@example.com", "correct horse battery", "editor")
    viewer = auth.create_user("vic@example.com", "correct horse battery", "viewer")
    engine = EscalationEngine(service, WebhookSender({"ann-hook": receiver.url + "/ann"}), LinkSigner(SECRET),
                              clock=clock, base_url="http://testserver")
    runtime = SimpleNamespace(auth=auth, settings=SimpleNamespace(), incidents=service, escalation=engine)
    client = TestClient(create_app(None, runtime=runtime))  # type: ignore[arg-type]
    yield SimpleNamespace(
        client=client, engine=engine, clock=clock, receiver=receiver, service=service,
        ed={"Authorization": "Bearer " + auth.create_api_token(editor.id, "t", "editor").token},
        ro={"Authorization": "Bearer " + auth.create_api_token(viewer.id, "t", "viewer").token},
    )


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def error(resp: Any, status: int, text: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["status"] == "error" and text in resp.json()["error"], resp.text


SCHEDULE = {"name": "ops", "timezone": "Europe/Berlin", "layers": [
    {"name": "primary", "participants": ["ann", "bob"], "rotation": "weekly", "handoff_time": "09:00",
     "start": "2025-11-10"},
    {"name": "secondary", "participants": ["cat"], "rotation": "daily"},
]}


def test_schedules_profiles_policies_and_who_is_on_call(env: SimpleNamespace) -> None:
    c, ed, ro = env.client, env.ed, env.ro
    error(c.post("/api/v1/oncall/schedules", json=SCHEDULE, headers=ro), 403, "")
    created = ok(c.post("/api/v1/oncall/schedules", json=SCHEDULE, headers=ed), 201)
    assert created["layers"][0]["handoff_day"] == "monday" and created["overrides"] == []
    error(c.post("/api/v1/oncall/schedules", json=SCHEDULE, headers=ed), 409, "already exists")
    error(c.post("/api/v1/oncall/schedules", json={**SCHEDULE, "name": "x", "timezone": "Moon/Base"}, headers=ed),
          400, "unknown time zone")
    bad = {**SCHEDULE, "name": "y", "layers": [{"participants": ["a"], "handoff_time": "9am"}]}
    error(c.post("/api/v1/oncall/schedules", json=bad, headers=ed), 400, "layers[0].handoff_time")
    # Monday 17 Nov 2025 09:00 CET = 08:00 UTC: bob's week starts (ann had 10-17 Nov).
    who = ok(c.get("/api/v1/oncall/who", params={"at": "2025-11-17T07:59:00Z", "schedule": "ops"}, headers=ro))
    assert [(w["layer"], w["user"]) for w in who["oncall"]] == [("primary", "ann"), ("secondary", "cat")]
    who = ok(c.get("/api/v1/oncall/who", params={"at": "2025-11-17T08:00:00Z", "layer": "primary"}, headers=ro))
    assert [(w["schedule"], w["user"], w["shift_end"]) for w in who["oncall"]] == [
        ("ops", "bob", "2025-11-24T08:00:00Z")]
    override = ok(c.post("/api/v1/oncall/schedules/ops/overrides", headers=ed, json={
        "layer": "primary", "user": "dan", "start": "2025-11-18T00:00:00Z", "end": "2025-11-19T00:00:00Z",
        "reason": "bob at a wedding"}), 201)
    who = ok(c.get("/api/v1/oncall/who", params={"at": "2025-11-18T12:00:00Z", "schedule": "ops",
                                                 "layer": "primary"}, headers=ro))
    assert (who["oncall"][0]["user"], who["oncall"][0]["source"]) == ("dan", "override")
    error(c.post("/api/v1/oncall/schedules/ops/overrides", headers=ed, json={
        "layer": "tertiary", "user": "x", "start": "2025-11-18T00:00:00Z", "end": "2025-11-19T00:00:00Z"}),
        400, "no layer 'tertiary'")
    error(c.post("/api/v1/oncall/schedules/ops/overrides", headers=ed, json={
        "user": "x", "start": "2025-11-19T00:00:00Z", "end": "2025-11-18T00:00:00Z"}), 400, "after start")
    ok(c.delete(f"/api/v1/oncall/schedules/ops/overrides/{override['id']}", headers=ed), 204)
    error(c.get("/api/v1/oncall/who", params={"at": "yesterday-ish"}, headers=ro), 400, "at:")
    error(c.get("/api/v1/oncall/who", params={"schedule": "nope"}, headers=ro), 404, "no on-call schedule")
    updated = ok(c.put("/api/v1/oncall/schedules/ops", headers=ed, json={**SCHEDULE, "timezone": "UTC"}))
    assert updated["timezone"] == "UTC"
    assert [s["name"] for s in ok(c.get("/api/v1/oncall/schedules", headers=ro))["schedules"]] == ["ops"]

    ok(c.put("/api/v1/oncall/profiles/ann", headers=ed, json={"name": "Ann", "receivers": ["ann-hook"]}))
    error(c.put("/api/v1/oncall/profiles/bob", headers=ed, json={"receivers": "bob-hook"}), 400, "receivers")
    assert ok(c.get("/api/v1/oncall/profiles/ann", headers=ro))["receivers"] == ["ann-hook"]

    policy = {"name": "default", "default": True, "repeat": 2, "levels": [
        {"targets": [{"schedule": "ops", "layer": "primary"}], "delay_minutes": 5},
        {"targets": [{"schedule": "ops", "layer": "secondary"}], "delay_minutes": 10},
        {"targets": [{"user": "cto@example.com"}, {"receiver": "exec-phone"}], "delay_minutes": 15}]}
    # Every target must exist: a policy that pages nobody is refused when written, not found at night.
    env.service.directory.receiver_names = lambda: {"ann-hook", "exec-phone"}
    error(c.post("/api/v1/escalation-policies", headers=ed, json=policy), 400,
          "levels[2].targets[0].user: 'cto@example.com' has no on-call profile")
    error(c.put("/api/v1/oncall/profiles/cto@example.com", headers=ed, json={"receivers": ["typo-pager"]}), 400,
          "no receiver 'typo-pager'")
    ok(c.put("/api/v1/oncall/profiles/cto@example.com", headers=ed, json={"receivers": ["exec-phone"]}))
    for target, text in (({"schedule": "nosuch"}, "no on-call schedule 'nosuch'"),
                         ({"schedule": "ops", "layer": "tertiary"}, "has no layer 'tertiary'"),
                         ({"receiver": "nosuch-recv"}, "no receiver 'nosuch-recv'")):
        error(c.post("/api/v1/escalation-policies", headers=ed, json={"name": "bad", "levels": [
            {"targets": [target]}]}), 400, text)
    created = ok(c.post("/api/v1/escalation-policies", headers=ed, json=policy), 201)
    assert created["levels"][0]["targets"] == [{"schedule": "ops", "layer": "primary"}] and created["default"]
    # What a policy uses cannot be taken from under it.
    error(c.delete("/api/v1/oncall/schedules/ops", headers=ed), 409, "used by escalation policy 'default'")
    error(c.put("/api/v1/oncall/schedules/ops", headers=ed, json={**SCHEDULE, "name": "ops2"}), 409, "used by")
    error(c.put("/api/v1/oncall/schedules/ops", headers=ed, json={**SCHEDULE, "layers": SCHEDULE["layers"][:1]}),
          409, "layer 'secondary' of 'ops' is used by")
    error(c.delete("/api/v1/oncall/profiles/cto@example.com", headers=ed), 409, "used by escalation policy")
    # Through a schedule too: ann is on the primary layer the policy pages.
    error(c.delete("/api/v1/oncall/profiles/ann", headers=ed), 409,
          "the on-call profile of 'ann' (on layer 'primary' of schedule 'ops') is used by escalation policy")
    error(c.put("/api/v1/oncall/profiles/ann", headers=ed, json={"receivers": []}), 400, "at least one")
    error(c.put("/api/v1/escalation-policies/default", headers=ed, json={"levels": [
        {"targets": [{"schedule": "gone"}]}]}), 400, "no on-call schedule 'gone'")
    error(c.post("/api/v1/escalation-policies", headers=ed, json={**policy, "name": "b", "levels": [
        {"targets": [{"schedule": "ops", "user": "x"}]}]}), 400, "exactly one of")
    error(c.post("/api/v1/escalation-policies", headers=ed, json={**policy, "name": "b", "repeat": -1}), 400,
          "repeat")
    error(c.post("/api/v1/escalation-policies", headers=ed, json={**policy, "name": "b", "levels": [
        {"targets": [{"user": "x"}], "delay_minutes": "soon"}]}), 400, "delay_minutes")
    ok(c.put("/api/v1/escalation-policies/default", headers=ed, json={"repeat": 0}))
    assert ok(c.get(f"/api/v1/escalation-policies/{created['id']}", headers=ro))["repeat"] == 0
    ok(c.delete("/api/v1/escalation-policies/default", headers=ed), 204)
    assert ok(c.get("/api/v1/escalation-policies", headers=ro)) == {"escalation_policies": []}
    ok(c.delete("/api/v1/oncall/schedules/ops", headers=ed), 204)
    error(c.get("/api/v1/oncall/schedules/ops", headers=ro), 404, "no on-call schedule")


def test_incident_lifecycle_over_http(env: SimpleNamespace) -> None:
    c, ed, ro, clock = env.client, env.ed, env.ro, env.clock
    error(c.get("/api/v1/incidents"), 401, "missing API token")
    error(c.post("/api/v1/incidents", headers=ro, json={"title": "x"}), 403, "")
    error(c.post("/api/v1/incidents", headers=ed, json={"title": "x", "severity": "urgent"}), 400,
          "unknown severity")
    error(c.post("/api/v1/incidents", headers=ed, json={"title": "x", "colour": "red"}), 400, "colour")
    inc = ok(c.post("/api/v1/incidents", headers=ed, json={"title": "Checkout 500s", "severity": "P1",
                                                           "service": "checkout"}), 201)
    assert (inc["number"], inc["status"], inc["opened_by"]) == (1, "triggered", "ann@example.com")
    ok(c.post("/api/v1/incidents", headers=ed, json={"title": "Slow reports", "severity": "low"}), 201)
    listed = ok(c.get("/api/v1/incidents", params={"status": "open", "severity": "P1,P2"}, headers=ro))
    assert [i["number"] for i in listed["incidents"]] == [1]
    error(c.get("/api/v1/incidents", params={"since": "-3 fortnights"}, headers=ro), 400, "since")
    clock.advance(minutes=3)
    acked = ok(c.post("/api/v1/incidents/1/acknowledge", headers=ed, json={"message": "on it"}))
    assert (acked["status"], acked["acked_by"], acked["tta_seconds"]) == ("acknowledged", "ann@example.com", 180)
    error(c.post("/api/v1/incidents/1/acknowledge", headers=ed), 409, "already acknowledged")
    ok(c.post("/api/v1/incidents/1/status-updates", headers=ed, json={"message": "rolling back 1.42"}))
    error(c.post("/api/v1/incidents/1/status-updates", headers=ed, json={"message": ""}), 400, "message")
    ok(c.post("/api/v1/incidents/1/severity", headers=ed, json={"severity": "critical", "reason": "all users"}))
    ok(c.patch("/api/v1/incidents/1", headers=ed, json={"assignee": "bob@example.com"}))
    clock.advance(minutes=12)
    done = ok(c.post("/api/v1/incidents/1/resolve", headers=ed, json={"message": "rolled back to 1.41"}))
    assert (done["status"], done["severity"], done["ttr_seconds"], done["assignee"]) == (
        "resolved", "P0", 900, "bob@example.com")
    error(c.post("/api/v1/incidents/1/resolve", headers=ed), 409, "already resolved")
    detail = ok(c.get("/api/v1/incidents/1", headers=ro))
    assert [e["kind"] for e in detail["timeline"]] == ["opened", "acknowledged", "status_update",
                                                       "severity_changed", "comment", "resolved"]
    pm = ok(c.get("/api/v1/incidents/1/postmortem", headers=ro))
    assert pm["stored"] and "| Status update | ann@example.com | rolling back 1.42 |" in pm["markdown"]
    assert "rolled back to 1.41" in pm["markdown"] and "**Duration**: 15 min" in pm["markdown"]
    edited = pm["markdown"].replace("_Technical explanation", "A bad migration in 1.42. _Technical explanation")
    ok(c.put("/api/v1/incidents/1/postmortem", content=edited.encode(),
             headers={**ed, "Content-Type": "text/markdown; charset=utf-8"}))
    again = ok(c.get("/api/v1/incidents/1/postmortem", headers=ro))
    assert "A bad migration in 1.42." in again["markdown"] and again["updated_by"] == "ann@example.com"
    ok(c.put("/api/v1/incidents/1/postmortem", headers=ed, json={"markdown": "# Short\n"}))
    assert ok(c.get("/api/v1/incidents/1/postmortem", headers=ro))["markdown"] == "# Short\n"
    error(c.put("/api/v1/incidents/1/postmortem", headers=ed, json={"md": "x"}), 400, "markdown")
    error(c.put("/api/v1/incidents/1/postmortem", headers=ro, json={"markdown": "x"}), 403, "")
    error(c.get("/api/v1/incidents/99", headers=ro), 404, "no incident #99")
    error(c.get("/api/v1/incidents/abc", headers=ro), 400, "number")

    figures = ok(c.get("/api/v1/reports/mtta-mttr", params={"start": "-1d"}, headers=ro))
    assert figures["by_severity"]["P0"]["mttr"]["mean_seconds"] == 900
    assert figures["by_service"]["checkout"]["mtta"]["mean_seconds"] == 180
    error(c.get("/api/v1/reports/mtta-mttr", params={"start": "+1d"}, headers=ro), 400, "before end")
    review = ok(c.get("/api/v1/reports/weekly-review", headers=ro))
    assert review["incidents_opened"] == 2 and review["missed_incidents"] == []
    error(c.get("/api/v1/reports/weekly-review", params={"days": 0}, headers=ro), 400, "days")


def test_signed_link_acknowledges_without_login(env: SimpleNamespace) -> None:
    c, ed, service, clock = env.client, env.ed, env.service, env.clock
    service.directory.put_profile("ann", {"receivers": ["ann-hook"]})
    service.directory.create_policy({"name": "p", "default": True, "levels": [
        {"targets": [{"user": "ann"}], "delay_minutes": 5}], "repeat": 3})
    ok(c.post("/api/v1/incidents", headers=ed, json={"title": "DB <down>", "severity": "P0"}), 201)
    assert env.engine.tick() == 1
    body = env.receiver.requests[0][1]
    link = body["ackURL"]
    assert body["alerts"][0]["annotations"]["ack_url"] == link
    path = link.removeprefix("http://testserver")
    page = c.get(path)  # a mail scanner or chat preview following the link must not acknowledge
    assert page.status_code == 200 and 'method="post"' in page.text and "DB &lt;down&gt;" in page.text
    assert service.get(1)["status"] == "triggered"
    done = c.post(path)
    assert done.status_code == 200 and "Acknowledged by ann" in done.text
    inc = service.get(1)
    assert (inc["status"], inc["acked_by"], inc["timeline"][-1]["payload"]) == ("acknowledged", "ann",
                                                                                {"via": "signed link"})
    assert c.post(path).status_code == 409
    assert "Already acknowledged by ann" in c.get(path).text
    clock.advance(minutes=30)
    assert env.engine.tick() == 0 and len(env.receiver.requests) == 1  # acknowledged: no more pages
    # Tampered, foreign and expired links are refused with a page saying why.
    body_part, mac = path.rsplit("/", 1)[1].split(".")
    assert c.get(f"/ack/{body_part}.{mac[:-2]}AA").status_code == 400
    other = LinkSigner(b"some-other-server-secret-0123456").sign(1, "mallory", clock().timestamp())
    assert "not valid" in c.post(f"/ack/{other}").text
    expired = env.engine.signer.sign(1, "ann", clock().timestamp() - 2 * env.engine.signer.ttl_s)
    refused = c.get(f"/ack/{expired}")
    assert refused.status_code == 400 and "expired" in refused.text
    assert c.get("/ack/garbage").status_code == 400
    # An editor can mint a link to post somewhere (e.g. the incident channel).
    ok(c.post("/api/v1/incidents", headers=ed, json={"title": "Second", "severity": "P2"}), 201)
    minted = ok(c.post("/api/v1/incidents/2/ack-link", headers=ed))
    assert minted["url"].startswith("http://testserver/ack/")
    assert c.post(minted["url"].removeprefix("http://testserver")).status_code == 200
    assert service.get(2)["acked_by"] == "ann@example.com"
    assert timedelta(seconds=minted["expires_in_seconds"]) == timedelta(hours=24)


ODD_TIMES = ["1e20", "inf", "nan", "-1e20", "+99999999d", "-3000y", "9999-12-31T23:59:59Z",
             "0001-01-01T00:00:00Z", "2025-13-01", "", "now", "1700000000", "-90m"]


def test_odd_times_are_a_4xx_or_work(env: SimpleNamespace) -> None:
    env.service.directory.create_schedule(SCHEDULE)
    for at in ODD_TIMES:
        r = env.client.get("/api/v1/oncall/who", params={"at": at}, headers=env.ro)
        assert r.status_code in (200, 400), (at, r.text)
        if at in ("", "now", "1700000000", "-90m"):
            assert r.status_code == 200, (at, r.text)
        for path, param in (("/api/v1/reports/mtta-mttr", "start"), ("/api/v1/incidents", "since"),
                            ("/api/v1/reports/weekly-review", "end")):
            r = env.client.get(path, params={param: at}, headers=env.ro)
            assert r.status_code in (200, 400), (at, path, r.text)
