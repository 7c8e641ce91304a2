"""Pre-fork servers for real: gunicorn (sync workers, Flask), gunicorn with uvicorn workers and
``uvicorn --workers 2`` (FastAPI), each with PROMETHEUS_MULTIPROC_DIR.

Requests are sent until both workers have answered (each answer names its pid); then one
``/metrics`` scrape, answered by whichever worker, must count every request of both.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from web_helpers import free_port, parse

pytestmark = pytest.mark.timeout(120)

FLASK_APP = textwrap.dedent(
    """
    import os, time
    from flask import Flask
    import stackwatch.sdk

    app = Flask(__name__)

    @app.get("/api/work/<int:job_id>")
    def work(job_id):
        time.sleep(0.15)
        return {"pid": os.getpid(), "job": job_id}

    app = stackwatch.sdk.init(app, service="prefork-flask", environment="test", version="1",
                              tracing=False, errors=False, log_format="json")
    """
)

FASTAPI_APP = textwrap.dedent(
    """
    import asyncio, os
    from fastapi import FastAPI
    import stackwatch.sdk

    app = FastAPI()

    @app.get("/api/work/{job_id}")
    async def work(job_id: int):
        await asyncio.sleep(0.15)
        return {"pid": os.getpid(), "job": job_id}

    app = stackwatch.sdk.init(app, service="prefork-fastapi", environment="test", version="1",
                              tracing=False, errors=False, log_format="json")
    """
)

GUNICORN_CONF = "from stackwatch.sdk.metrics import gunicorn_child_exit as child_exit\n"


def uvicorn_worker_class() -> str:
    # uvicorn.workers is deprecated in favour of the uvicorn-worker package (same class).
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    return "uvicorn.workers.UvicornWorker"


class Server:
    def __init__(self, cmd: list[str], cwd: Path, port: int, mp_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"server-{port}.log"
        self.log = self.log_path.open("wb")
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "PYTHONPATH": str(cwd)}
        env.pop("STACKWATCH_URL", None)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "flask_app.py").write_text(FLASK_APP)
    (tmp_path / "fastapi_app.py").write_text(FASTAPI_APP)
    (tmp_path / "gunicorn_conf.py").write_text(GUNICORN_CONF)
    (tmp_path / "prom").mkdir()
    return tmp_path


@pytest.fixture
def serve(workdir: Path) -> Iterator[object]:
    servers: list[Server] = []

    def start(*args: str) -> Server:
        port = free_port()
        cmd = [arg.replace("{port}", str(port)) for arg in args]
        server = Server(cmd, workdir, port, workdir / "prom")
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def drive_until_both_workers_answered(server: Server) -> tuple[int, set[int]]:
    """Concurrent requests on fresh connections until two pids have answered; returns
    (requests sent, pids seen)."""
    sent = 0
    pids: set[int] = set()

    def one(job: int) -> int:
        response = httpx.get(f"{server.url}/api/work/{job}", timeout=10, headers={"Connection": "close"})
        assert response.status_code == 200
        return int(response.json()["pid"])

    with ThreadPoolExecutor(8) as pool:
        for _batch in range(15):
            pids.update(pool.map(one, range(sent, sent + 8)))
            sent += 8
            if len(pids) >= 2:
                break
    return sent, pids


def check_aggregated(server: Server, sent: int, pids: set[int]) -> None:
    assert len(pids) == 2, f"only {pids} answered {sent} requests:\n{server.output()}"
    for _attempt in range(3):  # the scrape itself may land on either worker: ask a few times
        samples = parse(httpx.get(server.url + "/metrics", timeout=10).text)
        total = sum(value for (name, labels), value in samples.items()
                    if name == "http_requests_total" and dict(labels)["route"] == "/api/work/{job_id}")
        assert total == sent, server.output()
        count = sum(value for (name, labels), value in samples.items()
                    if name == "http_request_duration_seconds_count")
        assert count == sent
        assert samples[("http_requests_in_flight", ())] == 0
    summary = httpx.get(server.url + "/metrics?format=json", timeout=10).json()
    assert summary["application"]["requests"]["total"] == sent
    assert summary["endpoints"]["/api/work/{job_id}"]["requests"] == sent
    assert summary["endpoints"]["/api/work/{job_id}"]["avg_response_time"] >= 0.15
    ready = httpx.get(server.url + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "healthy"
    assert httpx.head(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("preload", [False, True], ids=["app-per-worker", "preload"])
def test_gunicorn_sync_workers_flask(serve: object, workdir: Path, preload: bool) -> None:
    """With --preload, init() runs in the master before the fork; the counts must still be the
    workers' own (prometheus-client re-opens its files per pid) and add up."""
    extra = ["--preload"] if preload else []
    server = serve(sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}",  # type: ignore[operator]
                   "-c", "gunicorn_conf.py", *extra, "flask_app:app")
    sent, pids = drive_until_both_workers_answered(server)
    check_aggregated(server, sent, pids)
    files = os.listdir(workdir / "prom")
    counter_pids = {name.removesuffix(".db").split("_")[-1] for name in files if name.startswith("counter_")}
    assert {str(pid) for pid in pids} <= counter_pids  # one file per worker that counted


def test_gunicorn_uvicorn_workers_fastapi(serve: object) -> None:
    server = serve(sys.executable, "-m", "gunicorn", "-w", "2", "-k", uvicorn_worker_class(),  # type: ignore[operator]
                   "-b", "127.0.0.1:{port}", "-c", "gunicorn_conf.py", "fastapi_app:app")
    sent, pids = drive_until_both_workers_answered(server)
    check_aggregated(server, sent, pids)


def test_uvicorn_workers_fastapi(serve: object) -> None:
    server = serve(sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",  # type: ignore[operator]
                   "--port", "{port}", "--log-level", "warning", "fastapi_app:app")
    sent, pids = drive_until_both_workers_answered(server)
    check_aggregated(server, sent, pids)
