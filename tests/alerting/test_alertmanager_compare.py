"""Side by side with the real Alertmanager (Debian's prometheus-alertmanager) on the same configuration:
``amtool`` must agree with our routing tree on which receivers a label set reaches, accept the
configurations we accept, and a running Alertmanager must send the same webhook notifications
(group keys, group and common labels, alert order, statuses) for the same alerts."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from alerting_receivers import ManualClock, Recorder

from serverproc import free_port
from stackwatch.alerting.config import AlertingConfigError, parse_alerting_config
from stackwatch.alerting.dispatcher import Dispatcher
from stackwatch.alerting.routing import build_routes
from stackwatch.model.alerts import Alert

AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager")
pytestmark = pytest.mark.skipif(
    AMTOOL is None or ALERTMANAGER is None,
    reason="prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager; scripts/system-deps.sh)",
)

ROUTES = """
route:
  receiver: default
  group_by: [alertname, cluster]
  routes:
    - matchers: ['severity=~"critical|P0"']
      receiver: pager
      continue: true
    - matchers: [team="db"]
      receiver: db
      routes:
        - matchers: ['env!~"prod.*"']
          receiver: db-nonprod
        - match_re: {service: "pg|mysql"}
          receiver: db-sql
    - match: {team: web}
      receiver: web
      continue: true
    - matchers: ['{team="web", severity!="info"}']
      receiver: web-loud
    - matchers: [region=""]
      receiver: no-region
receivers:
  - name: default
  - name: pager
  - name: db
  - name: db-nonprod
  - name: db-sql
  - name: web
  - name: web-loud
  - name: no-region
"""

LABEL_SETS = [
    {"alertname": "A", "region": "eu"},
    {"alertname": "A"},
    {"severity": "critical", "team": "db", "env": "prod", "region": "eu"},
    {"severity": "P0", "team": "db", "env": "staging", "region": "eu"},
    {"team": "db", "env": "prod", "service": "pg", "region": "us"},
    {"team": "db", "env": "prod", "service": "pgx", "region": "us"},
    {"team": "db", "env": "production", "service": "mysql", "region": "us"},
    {"team": "web", "severity": "warning", "region": "eu"},
    {"team": "web", "severity": "info", "region": "eu"},
    {"team": "web", "severity": "critical"},
    {"severity": "criticalish", "region": "x"},
]


def amtool_routes(config: Path, labels: dict[str, str]) -> list[str]:
    assert AMTOOL is not None
    out = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={config}",
                          *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",")


def test_amtool_and_our_routing_tree_agree(tmp_path: Path) -> None:
    config = tmp_path / "am.yml"
    config.write_text(ROUTES)
    root = build_routes(parse_alerting_config(yaml.safe_load(ROUTES)).route)
    for labels in LABEL_SETS:
        ours = [r.config.receiver for r in root.match(labels)]
        assert ours == amtool_routes(config, labels), labels


@pytest.mark.parametrize("bad", [
    {"route": {"receiver": "missing"}, "receivers": [{"name": "a"}]},
    {"route": {"receiver": "a", "routes": [{"matchers": ['x=~"("']}]}, "receivers": [{"name": "a"}]},
    {"route": {"receiver": "a", "group_wait": "soon"}, "receivers": [{"name": "a"}]},
    {"route": {"receiver": "a", "group_by": ["...", "x"]}, "receivers": [{"name": "a"}]},
    {"route": {"receiver": "a"}, "receivers": [{"name": "a"}, {"name": "a"}]},
    {"route": {"receiver": "a", "routes": [{"mute_time_intervals": ["nope"]}]}, "receivers": [{"name": "a"}]},
])
def test_configurations_alertmanager_refuses_we_refuse_too(tmp_path: Path, bad: dict[str, Any]) -> None:
    config = tmp_path / "am.yml"
    config.write_text(yaml.safe_dump(bad))
    assert AMTOOL is not None
    assert subprocess.run([AMTOOL, "check-config", str(config)], capture_output=True).returncode != 0
    with pytest.raises(AlertingConfigError):
        parse_alerting_config(bad)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Recorder, dict[str, Any]]]:
    hook = Recorder()
    work = tmp_path_factory.mktemp("alertmanager")
    config = {
        "route": {"receiver": "hook", "group_by": ["alertname", "cluster"], "group_wait": "2s",
                  "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"matchers": ['severity="critical"'], "receiver": "hook", "group_by": ["cluster"]}]},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url + "/hook"}]}],
        "inhibit_rules": [{"source_matchers": ["severity=critical"], "target_matchers": ["severity=warning"],
                           "equal": ["cluster"]}],
    }
    (work / "am.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "am.log").open("wb")
    assert ALERTMANAGER is not None
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={work / 'am.yml'}", f"--storage.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                             f"--web.external-url=http://127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "am.log").read_text()
            time.sleep(0.2)
        yield url, hook, config
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        hook.close()


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "externalURL"}
    out["alerts"] = [{k: v for k, v in a.items() if k != "fingerprint"} for a in body["alerts"]]
    return out


def test_the_same_alerts_give_the_same_notifications(alertmanager: tuple[str, Recorder, dict[str, Any]]) -> None:
    url, theirs, config = alertmanager
    # A fresh start: an alert older than group_wait is flushed on arrival, and Alertmanager's
    # inhibitor (fed asynchronously) could then miss the source alert that arrived with it.
    start = datetime.now(UTC).replace(microsecond=0)
    ends = start + timedelta(hours=1)

    def posted(name: str, **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name},
                "startsAt": start.isoformat().replace("+00:00", "Z"), "endsAt": ends.isoformat().replace("+00:00", "Z"),
                "generatorURL": "http://prometheus:9090/graph"}

    alerts = [posted("HighLatency", cluster="eu", instance="b", severity="warning"),
              posted("HighLatency", cluster="us", instance="b", severity="warning"),
              posted("HighLatency", cluster="us", instance="a", severity="warning"),
              posted("NodeDown", cluster="eu", instance="c", severity="critical", job="node"),
              posted("DiskFull", cluster="ap", instance="d", job="node")]
    assert httpx.post(url + "/api/v2/alerts", json=alerts, timeout=10).status_code == 200

    ours = Recorder()
    try:
        cfg = yaml.safe_load(yaml.safe_dump(config).replace(theirs.url, ours.url))
        clock = ManualClock(start)
        d = Dispatcher(parse_alerting_config(cfg), clock=clock)
        d.start(ticker=False)
        d.put_alerts([Alert(a["labels"], a["annotations"], starts_at=start, ends_at=ends,
                            generator_url=a["generatorURL"]) for a in alerts])
        clock.advance(2.5)
        d.run_due()
        assert d.wait_idle(10)
        # NodeDown (critical, eu) inhibits HighLatency in eu: 3 groups on both sides
        expected = sorted((_comparable(b) for b in ours.bodies()), key=lambda b: b["groupKey"])
        assert len(expected) == 3
        theirs.wait_for(3, timeout=20)
        time.sleep(2)  # nothing more may come
        got = sorted((_comparable(b) for b in theirs.bodies()), key=lambda b: b["groupKey"])
        assert got == expected

        # one of the two us alerts resolves: both send the group again with it resolved
        resolved_at = datetime.now(UTC).replace(microsecond=0)
        gone = dict(alerts[2], endsAt=resolved_at.isoformat().replace("+00:00", "Z"))
        assert httpx.post(url + "/api/v2/alerts", json=[gone], timeout=10).status_code == 200
        d.put_alerts([Alert(gone["labels"], gone["annotations"], starts_at=start, ends_at=resolved_at,
                            generator_url=gone["generatorURL"])])
        clock.now = max(clock.now, resolved_at)
        clock.advance(1.5)
        d.run_due()
        assert d.wait_idle(10)
        d.stop()
        (mine,) = [_comparable(b) for b in ours.bodies()[3:]]
        theirs.wait_for(4, timeout=20)
        (theirs_last,) = [_comparable(b) for b in theirs.bodies()[3:]]
        assert theirs_last == mine
        assert [a["status"] for a in mine["alerts"]] == ["resolved", "firing"]
    finally:
        ours.close()
