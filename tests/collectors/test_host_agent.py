"""Host metrics under node_exporter's names, the disk buffer, and the agent against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess, free_port
from stackwatch.collectors import host
from stackwatch.collectors.agent import Agent, load_agent_config
from stackwatch.collectors.buffer import DiskQueue
from stackwatch.errors import ConfigError
from stackwatch.ingest.prom_remote import decode_write_request, decompress

# -- host collector


def _by_name(samples: list[host.Sample]) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in samples:
        out.setdefault(name, []).append((labels, value))
    return out


def test_host_samples_use_node_exporter_names_and_agree_with_proc() -> None:
    got = _by_name(host.collect())
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert got["node_memory_MemTotal_bytes"] == [({}, float(int(meminfo["MemTotal"].split()[0]) * 1024))]
    modes = {labels["mode"] for labels, _ in got["node_cpu_seconds_total"]}
    assert {"user", "system", "idle", "iowait"} <= modes
    assert len({labels["cpu"] for labels, _ in got["node_cpu_seconds_total"]}) == os.cpu_count()
    (root,) = [(labels, v) for labels, v in got["node_filesystem_size_bytes"] if labels["mountpoint"] == "/"]
    st = os.statvfs("/")
    assert root[1] == st.f_blocks * st.f_frsize and root[0]["fstype"]
    assert got["node_load1"][0][1] == pytest.approx(os.getloadavg()[0], abs=2)
    assert abs(got["node_time_seconds"][0][1] - time.time()) < 5
    assert "lo" in {labels["device"] for labels, _ in got["node_network_receive_bytes_total"]}
    assert all(v == 1.0 for _, v in got["node_scrape_collector_success"])
    assert set(got) - {"node_scrape_collector_success"} <= set(host.HELP)


def test_a_failing_collector_is_reported_and_the_rest_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Iterator[host.Sample]:
        raise OSError("no such file")
        yield  # pragma: no cover

    monkeypatch.setitem(host.COLLECTORS, "filefd", broken)
    got = _by_name(host.collect())
    assert ({"collector": "filefd"}, 0.0) in got["node_scrape_collector_success"]
    assert "node_filefd_allocated" not in got and "node_load1" in got


# -- disk buffer


def test_queue_keeps_order_across_reopen_and_segments(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path, segment_bytes=64)
    for i in range(10):
        q.append(f"record-{i}".encode() * 3)
    assert q.peek() == b"record-0" * 3
    q.ack()
    q.close()
    q = DiskQueue(tmp_path, segment_bytes=64)
    seen = []
    while (item := q.peek()) is not None:
        seen.append(item)
        q.ack()
    assert seen == [f"record-{i}".encode() * 3 for i in range(1, 10)]
    assert len(list(tmp_path.glob("*.seg"))) == 1  # consumed segments are deleted


def test_a_torn_tail_is_cut_and_earlier_records_survive(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path)
    q.append(b"one")
    q.append(b"two")
    q.close()
    (seg,) = tmp_path.glob("*.seg")
    with seg.open("ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")  # a crash in the middle of a third append
    q = DiskQueue(tmp_path)
    q.append(b"three")
    items = []
    while (item := q.peek()) is not None:
        items.append(item)
        q.ack()
    assert items == [b"one", b"two", b"three"]


def test_over_the_bound_the_oldest_go_first_and_are_counted(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path, max_bytes=300, segment_bytes=100)
    for i in range(20):
        q.append(bytes([i]) * 40)
    assert q.dropped_records > 0
    assert q.size_bytes <= 300 + 100
    first = q.peek()
    assert first is not None and first[0] == q.dropped_records  # the newest survive, in order


# -- agent


def test_agent_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server URL is required"):
        load_agent_config(None, token="t")
    with pytest.raises(ConfigError, match="unknown collector"):
        load_agent_config(None, server_url="http://x", token="t", collectors=["gpu"])
    bad = tmp_path / "agent.yml"
    bad.write_text("server_url: http://x\ntoken: t\nintervall: 5s\n")
    with pytest.raises(ConfigError, match=r"unknown key.*intervall"):
        load_agent_config(bad)


def test_host_request_is_a_valid_remote_write_with_job_and_instance(tmp_path: Path) -> None:
    cfg = load_agent_config(None, server_url="http://x", token="t", buffer_dir=str(tmp_path), instance="db-1",
                            labels={"dc": "ams"})
    agent = Agent(cfg)
    req = decode_write_request(decompress(agent.host_request(now=1_700_000_000), 64 << 20))
    load = [dict(ts.labels) for ts in req.timeseries if dict(ts.labels)["__name__"] == "node_load1"]
    assert load == [{"__name__": "node_load1", "job": "node", "instance": "db-1", "dc": "ams"}]
    assert {ts.timestamps[0] for ts in req.timeseries} == {1_700_000_000_000}
    assert any(m.metric_family_name == "node_cpu_seconds_total" and m.type == "counter" for m in req.metadata)


def _query(url: str, q: str) -> list[dict[str, Any]]:
    r = httpx.get(url + "/api/v1/query", params={"query": q}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                  timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def test_agent_buffers_through_an_outage_and_delivers_with_original_timestamps(tmp_path: Path) -> None:
    """The agent starts while the server is down, buffers on disk, and everything arrives later."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN}
    cmd = [sys.executable, "-m", "stackwatch.cli", "agent", "--server", url, "--interval", "1s",
           "--buffer-dir", str(tmp_path / "buffer"), "--instance", "web-7"]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    srv = ServerProcess(tmp_path / "data")
    srv.port, srv.url = port, url
    try:
        started = time.time()
        time.sleep(3.5)  # ~3 collections while nothing listens
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        assert list((tmp_path / "buffer").glob("*.seg"))
        server_up_at = time.time()
        srv.start()
        deadline = time.monotonic() + 30
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = _query(url, 'count_over_time(node_load1{instance="web-7",job="node"}[1m])')
            if result and float(result[0]["value"][1]) >= 5:
                break
            time.sleep(0.5)
        assert result and float(result[0]["value"][1]) >= 5, result
        # Samples from before the server was up kept their collection time.
        oldest = _query(url, 'min_over_time(timestamp(node_load1{instance="web-7"})[1m:1s])')
        assert oldest and started - 1 < float(oldest[0]["value"][1]) < server_up_at
        cpu = _query(url, 'sum by (mode) (rate(node_cpu_seconds_total{instance="web-7"}[30s]))')
        assert {r["metric"]["mode"] for r in cpu} >= {"user", "idle"}
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
        srv.stop()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
