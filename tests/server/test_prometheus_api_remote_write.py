"""A real Prometheus (the Debian package) scrapes a prometheus_client app and remote-writes to Stackwatch.

The series it sends (the app's metrics plus Prometheus's own ``up`` and scrape metrics) must be
queryable through Stackwatch's ``/api/v1/query`` with the labels Prometheus itself reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port

PROMETHEUS = shutil.which("prometheus")

# A skip fails under CI (tests/conftest.py), so a missing install step cannot go unnoticed.
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install -y prometheus; scripts/system-deps.sh)"
)


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    """A tiny instrumented app: prometheus_client's own HTTP server in this process."""
    registry = CollectorRegistry()
    requests = Counter("shop_requests", "Requests served.", ["route", "code"], registry=registry)
    inflight = Gauge("shop_inflight_requests", "Requests in flight.", registry=registry)
    latency = Histogram("shop_request_duration_seconds", "Latency.", ["route"], registry=registry,
                        buckets=(0.05, 0.1, 0.5))
    requests.labels("/checkout", "200").inc(41)
    requests.labels("/checkout", "500").inc(2)
    inflight.set(3)
    for v in (0.01, 0.07, 0.2, 0.9):
        latency.labels("/checkout").observe(v)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def stackwatch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("rw") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, stackwatch: ServerProcess, app_port: int) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: shop
    static_configs:
      - targets: ["127.0.0.1:{app_port}"]
"""
    )
    # The remote_write section is docs/metrics.md's own example, localized; only the queue is
    # made eager so the test does not wait for Prometheus's default 5 s batches.
    remote = yaml.safe_load(_doc_remote_write().replace("http://127.0.0.1:8040", stackwatch.url)
                            .replace("<ingest token>", INGEST_TOKEN))
    remote["remote_write"][0]["queue_config"] = {"batch_send_deadline": "1s", "min_backoff": "100ms",
                                                 "max_backoff": "1s"}
    remote["remote_write"][0]["metadata_config"] = {"send_interval": "1s"}
    with config.open("a") as f:
        yaml.safe_dump(remote, f)
    log = (work / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _doc_remote_write() -> str:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    (block,) = re.findall(r"```yaml\n(remote_write:.*?)```", doc, flags=re.S)
    return block


def _query(base: str, query: str, **kw: Any) -> list[dict[str, Any]]:
    r = httpx.get(base + "/api/v1/query", params={"query": query}, timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def _wait(base: str, query: str, n: int, timeout: float = 45.0, **kw: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = _query(base, query, **kw)
        if len(result) >= n:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{query}: {result}")


def test_prometheus_remote_writes_into_stackwatch(stackwatch: ServerProcess, prometheus: str) -> None:
    auth = {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}}
    ours = _wait(stackwatch.url, 'up{job="shop"}', 1, **auth)
    theirs = _wait(prometheus, 'up{job="shop"}', 1)
    assert ours[0]["metric"] == theirs[0]["metric"]
    assert ours[0]["value"][1] == "1"

    requests = _wait(stackwatch.url, 'shop_requests_total{job="shop"}', 2, **auth)
    assert {r["metric"]["code"]: r["value"][1] for r in requests} == {"200": "41", "500": "2"}
    buckets = _wait(stackwatch.url, 'shop_request_duration_seconds_bucket{route="/checkout"}', 4, **auth)
    assert {b["metric"]["le"]: b["value"][1] for b in buckets} == {"0.05": "1", "0.1": "2", "0.5": "3", "+Inf": "4"}
    (p50,) = _query(stackwatch.url, "histogram_quantile(0.5, shop_request_duration_seconds_bucket)", **auth)
    assert float(p50["value"][1]) == pytest.approx(0.1)
    # Prometheus's own scrape metrics come along, and metadata is sent too.
    _wait(stackwatch.url, 'scrape_samples_scraped{job="shop"}', 1, **auth)
    deadline = time.monotonic() + 30
    meta: dict[str, Any] = {}
    while time.monotonic() < deadline and "shop_requests" not in meta:
        meta = httpx.get(stackwatch.url + "/api/v1/metadata", timeout=10, **auth).json()["data"]
        time.sleep(0.5)
    assert meta["shop_requests"] == [{"type": "counter", "help": "Requests served.", "unit": ""}]


def test_a_range_query_agrees_with_prometheus(stackwatch: ServerProcess, prometheus: str) -> None:
    """Both stores hold the same scrapes: the same range query gives the same points once both caught up."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + 30
    while True:
        end = time.time() - 5  # leave remote write time to deliver
        params = {"query": 'sum(shop_inflight_requests{job="shop"})', "start": end - 10, "end": end, "step": "1"}
        ours = httpx.get(stackwatch.url + "/api/v1/query_range", params=params, headers=auth, timeout=10).json()
        theirs = httpx.get(prometheus + "/api/v1/query_range", params=params, timeout=10).json()
        if (ours["data"] == theirs["data"] and ours["data"]["result"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ours["data"] == theirs["data"]
    assert ours["data"]["result"][0]["values"][-1][1] == "3"
