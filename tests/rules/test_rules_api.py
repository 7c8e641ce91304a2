"""The rules API against a real server: Prometheus's /api/v1/rules and /api/v1/alerts, rule groups
kept in the database, reloads (HTTP and SIGHUP), series written, the dispatcher fed, restarts."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess

RULES = """
groups:
  - name: api
    interval: 1s
    rules:
      - alert: ApiDown
        expr: up{job="api"} == 0
        for: 2s
        labels: {severity: critical}
        annotations: {summary: "{{ $labels.instance }} is down"}
      - record: job:up:sum
        expr: sum by (job) (up)
"""
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _wait(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("rules-api")
    (root / "rules.d").mkdir()
    (root / "rules.d" / "api.yml").write_text(RULES)
    (root / "config.yml").write_text("rule_files: ['rules.d/*.yml']\nevaluation_interval: 1s\n")
    srv = ServerProcess(root / "data", config=root / "config.yml").start()
    now = int(time.time() * 1000)
    body = "".join(
        f'up{{job="api",instance="{inst}"}} {v} {now - 1000 * i}\n' for inst, v in (("a", 0), ("b", 1))
        for i in range(3, -1, -1)
    )
    r = httpx.post(srv.url + "/api/v1/import/prometheus", content=body,
                   headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 204, r.text
    try:
        yield srv
    finally:
        srv.stop()


def _alerts(srv: ServerProcess) -> list[dict[str, Any]]:
    r = httpx.get(srv.url + "/api/v1/alerts", headers=AUTH)
    assert r.status_code == 200
    return r.json()["data"]["alerts"]  # type: ignore[no-any-return]


def _firing(srv: ServerProcess) -> list[dict[str, Any]]:
    return [a for a in _alerts(srv) if a["state"] == "firing"]


def test_an_alert_goes_pending_then_firing_in_prometheus_shape(server: ServerProcess) -> None:
    [alert] = _wait(lambda: _firing(server))
    assert alert["labels"] == {"alertname": "ApiDown", "instance": "a", "job": "api", "severity": "critical"}
    assert alert["annotations"] == {"summary": "a is down"}
    assert alert["value"] == "0" and alert["activeAt"].endswith("Z")
    rules = httpx.get(server.url + "/api/v1/rules", headers=AUTH).json()
    assert rules["status"] == "success"
    [group] = [g for g in rules["data"]["groups"] if g["name"] == "api"]
    assert group["file"].endswith("rules.d/api.yml") and group["interval"] == 1.0
    alerting, recording = group["rules"]
    assert {k: alerting[k] for k in ("name", "query", "duration", "health", "type", "state")} == {
        "name": "ApiDown", "query": 'up{job="api"} == 0', "duration": 2.0, "health": "ok", "type": "alerting",
        "state": "firing"}
    assert alerting["alerts"][0]["labels"]["instance"] == "a"
    assert {k: recording[k] for k in ("name", "type", "health")} == {
        "name": "job:up:sum", "type": "recording", "health": "ok"}


def test_rules_filters_and_bad_parameters(server: ServerProcess) -> None:
    get = lambda **p: httpx.get(server.url + "/api/v1/rules", params=p, headers=AUTH)  # noqa: E731
    only_alerts = get(type="alert").json()["data"]["groups"]
    assert [r["type"] for g in only_alerts for r in g["rules"]] == ["alerting"]
    assert get(**{"rule_group[]": "nope"}).json()["data"]["groups"] == []
    assert get(project="other").json()["data"]["groups"] == []
    bad = get(type="bogus")
    assert bad.status_code == 400 and bad.json()["errorType"] == "bad_data"
    assert httpx.get(server.url + "/api/v1/rules").status_code == 401


def test_alerts_and_recordings_are_written_as_series(server: ServerProcess) -> None:
    def query(q: str) -> list[dict[str, Any]]:
        r = httpx.get(server.url + "/api/v1/query", params={"query": q}, headers=AUTH)
        return r.json()["data"]["result"]  # type: ignore[no-any-return]

    firing = _wait(lambda: query('ALERTS{alertstate="firing"}'))
    assert firing[0]["metric"]["alertname"] == "ApiDown"
    assert _wait(lambda: query("ALERTS_FOR_STATE"))
    [recorded] = _wait(lambda: query("job:up:sum"))
    assert recorded["metric"] == {"__name__": "job:up:sum", "job": "api"} and recorded["value"][1] == "1"


def test_firing_alerts_reach_the_dispatcher(server: ServerProcess) -> None:
    def received() -> list[dict[str, Any]]:
        r = httpx.get(server.url + "/api/v2/alerts", headers=AUTH)
        return [a for a in r.json() if a["labels"].get("alertname") == "ApiDown"]

    [alert] = _wait(received)
    assert alert["labels"]["instance"] == "a" and alert["generatorURL"].startswith(server.url + "/graph?g0.expr=")


def test_rule_groups_in_the_database(server: ServerProcess) -> None:
    base = server.url + "/api/v1/rules/groups"
    group = {"name": "checkout", "interval": "1s",
             "rules": [{"alert": "AlwaysOn", "expr": "vector(1)", "labels": {"severity": "info"}}]}
    r = httpx.post(base, json=group, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "checkout" and r.json()["spec"]["rules"][0]["alert"] == "AlwaysOn"
    assert httpx.post(base, json=group, headers=AUTH).status_code == 409
    clash = httpx.post(base, json={"name": "api", "rules": []}, headers=AUTH)
    assert clash.status_code == 409 and "files win" in clash.json()["error"]
    bad = httpx.post(base, json={"name": "x", "rules": [{"alert": "X", "expr": "sum("}]}, headers=AUTH)
    assert bad.status_code == 400 and "could not parse expression" in bad.json()["error"]
    assert httpx.post(base, content=b"name: [", headers={**AUTH, "Content-Type": "application/yaml"}
                      ).status_code == 400
    assert httpx.post(base, json=group).status_code == 401
    _wait(lambda: any(a["labels"]["alertname"] == "AlwaysOn" for a in _firing(server)))
    listed = httpx.get(base, headers=AUTH).json()["groups"]
    assert [(g["name"], g["shadowed"]) for g in listed] == [("checkout", False)]
    yaml_body = "name: checkout\nrules:\n  - alert: Renamed\n    expr: vector(2)\n"
    r = httpx.put(base + "/checkout", content=yaml_body, headers={**AUTH, "Content-Type": "application/yaml"})
    assert r.status_code == 200 and r.json()["spec"]["rules"][0]["alert"] == "Renamed"
    assert httpx.put(base + "/nope", content="name: nope\nrules: []\n", headers=AUTH).status_code == 404
    _wait(lambda: any(a["labels"]["alertname"] == "Renamed" for a in _firing(server)))
    assert httpx.delete(base + "/checkout", headers=AUTH).status_code == 204
    assert httpx.get(base + "/checkout", headers=AUTH).status_code == 404
    assert not any(a["labels"]["alertname"] == "Renamed" for a in _alerts(server))


def test_reload_over_http_and_on_sighup(server: ServerProcess) -> None:
    rules_dir = server.data_dir.parent / "rules.d"
    (rules_dir / "extra.yml").write_text("groups: [{name: extra, rules: [{record: two, expr: vector(2)}]}]")
    r = httpx.post(server.url + "/-/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["groups"] == 2

    def names() -> set[str]:
        return {g["name"] for g in httpx.get(server.url + "/api/v1/rules", headers=AUTH).json()["data"]["groups"]}

    assert names() == {"api", "extra"}
    (rules_dir / "broken.yml").write_text("groups:\n  - name: broken\n    rules:\n      - alert: B\n        expr: up ==\n")
    r = httpx.post(server.url + "/-/reload", headers=AUTH)
    assert r.status_code == 400 and "broken.yml:5:" in r.json()["error"]
    assert names() == {"api", "extra"}
    (rules_dir / "broken.yml").unlink()
    (rules_dir / "extra.yml").unlink()
    (rules_dir / "hup.yml").write_text("groups: [{name: hup, rules: [{record: three, expr: vector(3)}]}]")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    _wait(lambda: names() == {"api", "hup"})


def test_a_restart_keeps_the_firing_alert(server: ServerProcess) -> None:
    [before] = [a for a in _wait(lambda: _firing(server)) if a["labels"]["alertname"] == "ApiDown"]
    server.kill()
    server.start()
    # Known at once, from the meta store, and still the same alert (same activeAt).
    [after] = [a for a in _firing(server) if a["labels"]["alertname"] == "ApiDown"]
    assert after["activeAt"] == before["activeAt"]
