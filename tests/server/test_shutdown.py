"""The real server stopped the way systemd, Docker and Ctrl-C stop it, or killed: nothing outlives it.

The log pipeline runs in worker processes (a forkserver and its workers). If the server's
shutdown does not stop them, they stay behind after every restart, each holding its memory;
a killed server (SIGKILL, the OOM killer) runs no shutdown at all, so the workers watch it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from serverproc import ServerProcess


def _lines(n: int) -> bytes:
    return b"".join(
        b'{"timestamp":"2026-01-01T00:00:%02d.%03dZ","level":"INFO","service":"api","message":"shutdown line %d"}\n'
        % (i % 60, i % 1000, i)
        for i in range(n)
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_server_stops_its_pipeline_workers(tmp_path: Path, sig: signal.Signals) -> None:
    server = ServerProcess(tmp_path / "data", env={"STACKWATCH_PIPELINE_WORKERS": "2"}).start()
    children: list[psutil.Process] = []
    try:
        with server.ingest_client() as c:
            # Over 2,000 lines in a block: built by the worker processes, which start on demand.
            r = c.post("/api/v1/logs", content=_lines(5000), headers={"Content-Type": "application/x-ndjson"})
            assert r.status_code == 200, r.text
        assert server.wait_for_count('message:"shutdown line"', 5000, start="2025-12-31T00:00:00Z") == 5000
        assert server.proc is not None
        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert children, "the pipeline workers did not start: nothing to check"
        server.proc.send_signal(sig)
        server.proc.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"left running after the server stopped: {[p.cmdline()[:3] for p in alive]}"
    finally:
        server.stop()
        for p in children:  # left behind by a failing run: not the next test's problem
            if p.is_running():
                p.kill()

