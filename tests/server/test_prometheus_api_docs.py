"""The examples in docs/metrics.md run against a real server (the remote_write block is run by
test_prometheus_api_remote_write.py with a real Prometheus)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def localize(code: str, server: ServerProcess) -> str:
    return (code.replace("http://127.0.0.1:8040", server.url).replace("<ingest token>", INGEST_TOKEN)
            .replace("$INGEST_TOKEN", INGEST_TOKEN).replace("$STACKWATCH_TOKEN", ADMIN_TOKEN)
            .replace("$ADMIN_TOKEN", ADMIN_TOKEN))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("mdocs") / "data").start()
    yield srv
    srv.stop()


def wait_query(server: ServerProcess, query: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    with server.client() as c:
        while time.monotonic() < deadline:
            result = c.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
            if result:
                return result  # type: ignore[no-any-return]
            time.sleep(0.2)
    raise AssertionError(f"no result for {query}")


def test_prometheus_client_push_example(server: ServerProcess) -> None:
    code = next(b for b in blocks("python") if "generate_latest" in b)
    exec(compile(localize(code, server), "docs/metrics.md", "exec"), {})
    (series,) = wait_query(server, "signups_total")
    assert series["metric"]["plan"] == "pro" and series["value"][1] == "3"


def test_opentelemetry_example(server: ServerProcess) -> None:
    code = next(b for b in blocks("python") if "OTLPMetricExporter" in b)
    namespace: dict[str, Any] = {}
    exec(compile(localize(code, server), "docs/metrics.md", "exec"), namespace)
    provider = namespace["provider"]
    try:
        assert provider.force_flush(timeout_millis=10_000)
    finally:
        provider.shutdown()
    (series,) = wait_query(server, 'orders_total{job="checkout", instance="web-1", plan="pro"}')
    assert series["value"][1] == "1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_backfill_and_query_examples(server: ServerProcess) -> None:
    backfill, query, _retention = blocks("sh")
    r = subprocess.run(["bash", "-c", localize(backfill, server)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr  # 204: no body
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run(["bash", "-c", localize(query, server)], capture_output=True, text=True)
        body = json.loads(r.stdout)
        if body["data"]["result"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["data"]["result"] == [{"metric": {"queue": "mail"}, "values": [[1767225600, "10"], [1767225660, "25"]]}]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_metrics_retention_example(server: ServerProcess) -> None:
    *_, retention = blocks("sh")
    r = subprocess.run(["bash", "-c", localize(retention, server)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["retention"]["metrics"] == {"days": 400}
    with server.client() as c:
        assert c.get("/api/v1/projects/default/retention").json()["retention"]["metrics"] == {"days": 400}
