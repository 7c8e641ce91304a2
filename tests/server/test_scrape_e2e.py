"""Stackwatch and a real Prometheus (the Debian package) scrape the same targets with the same
``scrape_configs``: the targets' labels, health, dropped targets and the stored series must agree.

This is the conformance test of relabeling and target labels; tests/collectors/ has the cases.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from serverproc import ADMIN_TOKEN, ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install -y prometheus; scripts/system-deps.sh)"
)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def exporter() -> Iterator[int]:
    registry = CollectorRegistry()
    Counter("jobs_done", "Jobs done.", ["queue"], registry=registry).labels("mail").inc(7)
    Gauge("queue_depth", "Queue depth.", ["queue", "instance"], registry=registry).labels("mail", "w-1").set(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def scrape_config(exporter: int) -> dict[str, Any]:
    dead = free_port()
    return yaml.safe_load(
        f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: app
    static_configs:
      - targets: ["127.0.0.1:{exporter}"]
        labels: {{env: prod, team: Core}}
      - targets: ["127.0.0.1:{dead}"]
        labels: {{env: staging, team: Core}}
      - targets: ["127.0.0.1:1"]
        labels: {{env: dev}}
    relabel_configs:
      - {{source_labels: [env], regex: dev, action: drop}}
      - {{source_labels: [__address__], regex: '([^:]+):(\\d+)', target_label: port, replacement: '$2'}}
      - {{source_labels: [team], target_label: team, action: lowercase}}
      - {{source_labels: [__address__], modulus: 7, target_label: shard, action: hashmod}}
      - {{regex: 'env', action: labelmap, replacement: 'environment'}}
      - {{regex: 'env', action: labeldrop}}
      - {{source_labels: [environment], regex: '(.+)', target_label: 'stage_$1', replacement: 'yes'}}
    metric_relabel_configs:
      - {{source_labels: [__name__], regex: '.*_created', action: drop}}
  - job_name: honor
    honor_labels: true
    metrics_path: /metrics
    params: {{format: [prometheus]}}
    static_configs: [{{targets: ["127.0.0.1:{exporter}"]}}]
    metric_relabel_configs:
      - {{source_labels: [__name__], regex: 'queue_depth', action: keep}}
"""
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(log.read_text())


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, scrape_config: dict[str, Any]) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config))
    port = free_port()
    log_path = work / "prometheus.log"
    assert PROMETHEUS is not None
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def stackwatch(tmp_path_factory: pytest.TempPathFactory, scrape_config: dict[str, Any]) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("sw-scrape")
    config = work / "stackwatch.yml"
    # The same prometheus.yml, given to Stackwatch as its scrape_config_file.
    (work / "prometheus.yml").write_text(yaml.safe_dump(scrape_config))
    config.write_text(yaml.safe_dump({"scrape_config_file": str(work / "prometheus.yml")}))
    srv = ServerProcess(work / "data", config=config).start()
    yield srv
    srv.stop()


def _targets(base: str, **kw: Any) -> dict[str, Any]:
    r = httpx.get(base + "/api/v1/targets", timeout=5, **kw)
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def _settled(base: str, **kw: Any) -> dict[str, Any]:
    """Targets once every one has been scraped at least once."""
    deadline = time.monotonic() + 30
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = _targets(base, **kw)
        active = data["activeTargets"]
        if len(active) == 3 and all(t["health"] != "unknown" for t in active):
            return data
        time.sleep(0.3)
    raise AssertionError(data)


def _query(base: str, q: str, **kw: Any) -> list[dict[str, Any]]:
    r = httpx.get(base + "/api/v1/query", params={"query": q}, timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def _series(base: str, q: str, **kw: Any) -> dict[frozenset[tuple[str, str]], str]:
    return {frozenset(s["metric"].items()): s["value"][1] for s in _query(base, q, **kw)}


def test_targets_agree_with_prometheus(prometheus: str, stackwatch: ServerProcess) -> None:
    theirs = _settled(prometheus)
    ours = _settled(stackwatch.url, headers=AUTH)

    def active(data: dict[str, Any]) -> set[tuple[str, frozenset[tuple[str, str]], str, str]]:
        return {(t["scrapePool"], frozenset(t["labels"].items()), t["health"], t["scrapeUrl"])
                for t in data["activeTargets"]}

    assert active(ours) == active(theirs)
    assert sorted(d["discoveredLabels"]["__address__"] for d in ours["droppedTargets"]) == sorted(
        d["discoveredLabels"]["__address__"] for d in theirs["droppedTargets"]
    )


def test_stored_series_agree_with_prometheus(prometheus: str, stackwatch: ServerProcess) -> None:
    _settled(prometheus)
    _settled(stackwatch.url, headers=AUTH)
    queries = ["up", "jobs_done_total", "queue_depth", "jobs_done_created", "scrape_samples_scraped > 0",
               "scrape_samples_post_metric_relabeling"]
    time.sleep(2.5)  # a couple more scrapes, so both hold the series of every job
    for q in queries:
        theirs = _series(prometheus, q)
        deadline = time.monotonic() + 15
        ours = _series(stackwatch.url, q, headers=AUTH)
        while set(ours) != set(theirs) and time.monotonic() < deadline:
            time.sleep(0.5)
            ours = _series(stackwatch.url, q, headers=AUTH)
        assert set(ours) == set(theirs), q
        if q in ("up", "jobs_done_total", "queue_depth", "scrape_samples_post_metric_relabeling"):
            assert ours == theirs, q
