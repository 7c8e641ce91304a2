"""The scraper against real exporters: prometheus_client's HTTP server on loopback.

A capturing sink stands in for storage here (the end-to-end test in
tests/server/test_scrape_e2e.py goes through the real server and PromQL).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from serverproc import free_port
from stackwatch.collectors.scrape import Scraper, discover, load_scrape_configs
from stackwatch.errors import ConfigError
from stackwatch.query.promql import is_stale_nan
from stackwatch.storage.metrics import MetricBatch

T0 = 1_700_000_000.0

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


class Sink:
    def __init__(self) -> None:
        self.samples: list[tuple[str, dict[str, str], int, float]] = []

    async def __call__(self, project: str, batch: MetricBatch) -> None:
        for i, ts, value in zip(batch.series, batch.timestamps, batch.values, strict=True):
            ref = batch.refs[i]
            self.samples.append((project, {"__name__": ref.name, **dict(ref.labels)}, ts, value))

    def values(self, name: str, ts: int | None = None) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for _, lab, t, v in self.samples if lab["__name__"] == name and (ts is None or t == ts)]

    def stale(self, ts: int) -> set[str]:
        import numpy as np

        return {lab["__name__"] for _, lab, t, v in self.samples
                if t == ts and is_stale_nan(np.array([v]))[0]}


@pytest.fixture()
def exporter() -> Iterator[tuple[int, CollectorRegistry, Gauge]]:
    registry = CollectorRegistry()
    Counter("jobs_done", "Jobs done.", ["queue"], registry=registry).labels("mail").inc(7)
    gauge = Gauge("queue_depth", "Queue depth.", ["queue", "instance"], registry=registry)
    gauge.labels("mail", "worker-1").set(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, registry, gauge
    server.shutdown()
    thread.join(timeout=5)


def _config(port: int, **extra: Any) -> dict[str, Any]:
    job = {"job_name": "worker", "scrape_interval": "5s",
           "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"env": "test"}}], **extra}
    return {"scrape_configs": [job]}


async def _scrape(config: dict[str, Any], sink: Sink, at: float = T0) -> Any:
    (cfg,) = load_scrape_configs(config)
    (target,), _ = discover(cfg)
    scraper = Scraper([cfg], sink, clock=lambda: at)
    try:
        return target, await scraper.scrape_target(target), scraper
    finally:
        await scraper.stop()


async def test_samples_get_job_instance_and_report_series(exporter: Any) -> None:
    port, _, _ = exporter
    sink = Sink()
    _, status, _ = await _scrape(_config(port), sink)
    assert status.health == "up" and status.last_error == ""
    instance = f"127.0.0.1:{port}"
    (labels, value), = sink.values("jobs_done_total")
    assert value == 7.0
    assert labels == {"__name__": "jobs_done_total", "queue": "mail", "job": "worker", "instance": instance,
                      "env": "test"}
    # The exposition's own "instance" loses to the target's and is kept as exported_instance.
    (labels, value), = sink.values("queue_depth")
    assert labels["instance"] == instance and labels["exported_instance"] == "worker-1" and value == 3
    up = sink.values("up")
    assert up == [({"__name__": "up", "job": "worker", "instance": instance, "env": "test"}, 1.0)]
    scraped = sink.values("scrape_samples_scraped")[0][1]
    assert scraped == sink.values("scrape_samples_post_metric_relabeling")[0][1] > 2
    assert sink.values("scrape_series_added")[0][1] == scraped
    assert all(ts == int(T0 * 1000) for _, _, ts, _ in sink.samples)
    assert {p for p, *_ in sink.samples} == {"default"}


async def test_honor_labels_keeps_the_exposition_labels(exporter: Any) -> None:
    port, _, _ = exporter
    sink = Sink()
    await _scrape(_config(port, honor_labels=True), sink)
    (labels, _), = sink.values("queue_depth")
    assert labels["instance"] == "worker-1" and "exported_instance" not in labels


async def test_metric_relabel_drops_and_renames(exporter: Any) -> None:
    port, _, _ = exporter
    sink = Sink()
    rules = [
        {"source_labels": ["__name__"], "regex": ".*_created", "action": "drop"},
        {"source_labels": ["__name__"], "regex": "queue_depth", "target_label": "__name__",
         "replacement": "worker_queue_depth"},
    ]
    await _scrape(_config(port, metric_relabel_configs=rules, project="ops"), sink)
    names = {lab["__name__"] for _, lab, _, _ in sink.samples}
    assert "worker_queue_depth" in names and "queue_depth" not in names
    assert not any(n.endswith("_created") for n in names)
    post = sink.values("scrape_samples_post_metric_relabeling")[0][1]
    assert post < sink.values("scrape_samples_scraped")[0][1]
    assert {p for p, *_ in sink.samples} == {"ops"}


async def test_sample_limit_fails_the_scrape(exporter: Any) -> None:
    port, _, _ = exporter
    sink = Sink()
    _, status, _ = await _scrape(_config(port, sample_limit=2), sink)
    assert status.health == "down" and "sample_limit exceeded" in status.last_error
    assert sink.values("up")[0][1] == 0.0
    assert sink.values("jobs_done_total") == []


async def test_disappearing_series_get_stale_markers(exporter: Any) -> None:
    port, _, gauge = exporter
    (cfg,) = load_scrape_configs(_config(port))
    (target,), _ = discover(cfg)
    now = [T0]
    sink = Sink()
    scraper = Scraper([cfg], sink, clock=lambda: now[0])
    await scraper.scrape_target(target)
    gauge.remove("mail", "worker-1")
    now[0] += 5
    await scraper.scrape_target(target)
    t1 = int(now[0] * 1000)
    assert sink.stale(t1) == {"queue_depth"}
    assert sink.values("scrape_series_added", t1)[0][1] == 0
    gauge.labels("mail", "worker-2").set(1)
    now[0] += 5
    await scraper.scrape_target(target)
    assert sink.values("scrape_series_added", int(now[0] * 1000))[0][1] == 1
    await scraper.stop()


async def test_a_target_that_goes_down_marks_its_series_stale(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    Gauge("temperature", "T.", registry=registry).set(21)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    (cfg,) = load_scrape_configs({"scrape_configs": [{"job_name": "w",
                                                      "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]})
    (target,), _ = discover(cfg)
    now = [T0]
    sink = Sink()
    scraper = Scraper([cfg], sink, clock=lambda: now[0])
    await scraper.scrape_target(target)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    now[0] += 5
    status = await scraper.scrape_target(target)
    t1 = int(now[0] * 1000)
    assert status.health == "down" and "ConnectError" in status.last_error
    assert sink.stale(t1) == {"temperature"}
    assert sink.values("up", t1)[0][1] == 0.0
    # The server log says it once, not at every interval of an outage.
    assert [r.levelname for r in caplog.records if "failed" in r.getMessage()] == ["WARNING"]
    caplog.clear()
    with caplog.at_level("DEBUG", logger="stackwatch"):
        for _ in range(3):
            now[0] += 5
            await scraper.scrape_target(target)
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    caplog.clear()
    status.health = "up"  # as after a good scrape: the next failure is news again
    with caplog.at_level("INFO", logger="stackwatch"):
        now[0] += 5
        await scraper.scrape_target(target)
    assert [r.levelname for r in caplog.records if "failed" in r.getMessage()] == ["WARNING"]
    await scraper.stop()


async def test_a_removed_target_goes_stale_with_its_report_series(exporter: Any, tmp_path: Path) -> None:
    port, _, _ = exporter
    sd = tmp_path / "targets.json"
    sd.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
    (cfg,) = load_scrape_configs({"scrape_configs": [{"job_name": "w", "scrape_interval": "1h",
                                                      "file_sd_configs": [{"files": [str(sd)]}]}]})
    now = [T0]
    sink = Sink()
    scraper = Scraper([cfg], sink, clock=lambda: now[0])
    await scraper.sync_targets()
    (status,) = scraper.status.values()
    await scraper.scrape_target(status.target)
    sd.write_text("[]")
    now[0] += 5
    await scraper.sync_targets()
    t1 = int(now[0] * 1000)
    assert scraper.status == {}
    assert {"jobs_done_total", "queue_depth", "up", "scrape_duration_seconds"} <= sink.stale(t1)
    await scraper.stop()


class _AuthHandler(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        expected = "Basic " + base64.b64encode(b"scraper:s3cret").decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        body = b"# TYPE app_up gauge\napp_up 1\napp_ts 5 1700000000123\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def auth_target() -> Iterator[int]:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _AuthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


async def test_basic_auth_params_path_and_explicit_timestamps(auth_target: int, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    sink = Sink()
    config = _config(auth_target, metrics_path="/probe", params={"module": ["http_2xx"]},
                     basic_auth={"username": "scraper", "password_file": str(secret)})
    _, status, _ = await _scrape(config, sink)
    assert status.health == "up", status.last_error
    seen = _AuthHandler.seen[-1]
    assert seen["path"] == "/probe?module=http_2xx"
    assert "openmetrics" in seen["accept"] and seen["x-prometheus-scrape-timeout-seconds"] == "5"
    assert sink.values("app_up")[0][1] == 1.0
    assert [ts for _, lab, ts, _ in sink.samples if lab["__name__"] == "app_ts"] == [1700000000123]

    bad = _config(auth_target, basic_auth={"username": "scraper", "password": "wrong"})
    sink2 = Sink()
    _, status, _ = await _scrape(bad, sink2)
    assert status.health == "down" and "401" in status.last_error


def test_file_sd_targets_are_discovered_and_relabelled(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"targets": ["h1:9100", "h2:9100"], "labels": {"dc": "ams"}}]))
    (tmp_path / "b.yml").write_text("- targets: ['h3:9100']\n  labels: {dc: fra}\n")
    (tmp_path / "broken.json").write_text("{nope")
    raw = {"scrape_configs": [{
        "job_name": "node",
        "file_sd_configs": [{"files": ["*.json", "*.yml"]}],
        "relabel_configs": [
            {"source_labels": ["dc"], "regex": "fra", "action": "drop"},
            {"source_labels": ["__address__"], "regex": "([^:]+):.*", "target_label": "host"},
        ],
    }]}
    (cfg,) = load_scrape_configs(raw, base_dir=tmp_path)
    targets, dropped = discover(cfg)
    assert sorted(dict(t.labels)["host"] for t in targets) == ["h1", "h2"]
    assert {t.url for t in targets} == {"http://h1:9100/metrics", "http://h2:9100/metrics"}
    assert dict(targets[0].labels) == {"job": "node", "instance": targets[0].instance, "dc": "ams",
                                       "host": dict(targets[0].labels)["host"]}
    assert [d["__address__"] for d in dropped] == ["h3:9100"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"scrape_configs": [{"static_configs": []}]}, "job_name is required"),
        ({"scrape_configs": [{"job_name": "a"}, {"job_name": "a"}]}, "used twice"),
        ({"scrape_configs": [{"job_name": "a", "scrape_interval": "5s", "scrape_timeout": "10s"}]},
         "at most scrape_interval"),
        ({"scrape_configs": [{"job_name": "a", "scrape_interval": "often"}]}, "scrape_configs[a].scrape_interval"),
        ({"scrape_configs": [{"job_name": "a", "kubernetes_sd_configs": []}]}, "not supported"),
        ({"scrape_configs": [{"job_name": "a", "scheme": "ftp"}]}, "http or https"),
        ({"scrape_configs": [{"job_name": "a", "targets": ["x"]}]}, "unknown key 'targets'"),
        ({"scrape_configs": [{"job_name": "a", "relabel_configs": [{"action": "nope"}]}]},
         "scrape_configs[a].relabel_configs[0]"),
        ({"scrape_configs": [{"job_name": "a", "basic_auth": {"username": "u"}, "bearer_token": "t"}]},
         "mutually exclusive"),
    ],
)
def test_config_errors_name_the_job_and_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scrape_configs(config)
    assert message in info.value.message


def test_a_prometheus_yml_with_tuning_keys_loads() -> None:
    raw = {"global": {"scrape_interval": "15s", "external_labels": {"cluster": "eu"}},
           "scrape_configs": [{"job_name": "a", "scrape_protocols": ["OpenMetricsText1.0.0"], "enable_http2": False,
                               "static_configs": [{"targets": ["x:1"]}]}]}
    (cfg,) = load_scrape_configs(raw)
    assert cfg.interval_s == 15 and cfg.timeout_s == 10 and cfg.external_labels == (("cluster", "eu"),)


def test_the_documented_scrape_configs_load() -> None:
    import re

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)]
    (raw,) = [b for b in blocks if "scrape_configs" in b]
    configs = load_scrape_configs(raw)
    assert [c.job_name for c in configs] == ["web", "node"]
    targets, _ = discover(configs[0])
    assert {dict(t.labels)["instance"] for t in targets} == {"10.0.0.5:8000", "10.0.0.6:8000"}
