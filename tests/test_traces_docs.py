"""The examples of docs/traces.md run against a real server, so the documentation cannot rot."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess

DOC = Path(__file__).resolve().parent.parent / "docs" / "traces.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def localize(code: str, server: ServerProcess) -> str:
    return (code.replace("http://127.0.0.1:8040", server.url).replace("<ingest token>", INGEST_TOKEN)
            .replace("$INGEST_TOKEN", INGEST_TOKEN).replace("$STACKWATCH_TOKEN", ADMIN_TOKEN))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("traces-docs") / "data").start()
    yield srv
    srv.stop()


def wait_json(server: ServerProcess, path: str, ready: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while True:
            r = c.get(path)
            if r.status_code == 200 and ready(r.json()):
                return r.json()
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)


def test_python_sdk_example(server: ServerProcess) -> None:
    (code,) = blocks("python")
    # In a process of its own: the example installs the global tracer provider, which
    # OpenTelemetry lets a process do only once (another test may already have done it here).
    # The provider flushes its batch at exit.
    import sys

    result = subprocess.run([sys.executable, "-c", localize(code, server)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    found = wait_json(server, "/api/v1/traces?service=checkout&operation=charge%20card", lambda d: d["traces"])
    [summary] = found["traces"]
    data = wait_json(server, f"/api/v1/traces/{summary['trace_id']}", lambda d: d["spans"])
    assert data["spans"][0]["attributes"] == {"payment.provider": "stripe"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_examples(server: ServerProcess) -> None:
    shell = blocks("sh")
    send = next(b for b in shell if "/v1/traces" in b and "resourceSpans" in b)
    r = subprocess.run(["bash", "-c", localize(send, server)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "{}", r.stdout + r.stderr
    fetch = next(b for b in shell if "/api/v1/traces/5b8e" in b)
    wait_json(server, "/api/v1/traces/5b8efff798038103d269b633813fc60c", lambda d: d["spans"])
    r = subprocess.run(["bash", "-c", localize(fetch, server)], capture_output=True, text=True)
    [span] = orjson.loads(r.stdout)["spans"]
    assert (span["name"], span["status"], span["status_message"]) == ("nightly backup", "error", "disk full")
    assert span["duration_ms"] == pytest.approx(2000.0)
    search = next(b for b in shell if "--data-urlencode service=shell" in b)
    r = subprocess.run(["bash", "-c", localize(search, server)], capture_output=True, text=True)
    assert [t["trace_id"] for t in orjson.loads(r.stdout)["traces"]] == ["5b8efff798038103d269b633813fc60c"]


def test_documented_promql_queries_parse_and_run(server: ServerProcess) -> None:
    (promql,) = blocks("promql")
    queries = [q.strip() for q in re.split(r"^#.*$", promql, flags=re.M) if q.strip()]
    assert len(queries) == 3
    with server.client() as c:
        for query in queries:
            r = c.get("/api/v1/query", params={"query": " ".join(query.split())})
            assert r.status_code == 200, (query, r.text)
