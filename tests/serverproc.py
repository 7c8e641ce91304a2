"""A real Stackwatch server in a subprocess, on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN = "swa_test_admin_token_0123456789"
INGEST_TOKEN = "swi_test_ingest_token_0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = {
            **os.environ,
            "STACKWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
            "STACKWATCH_INGEST_TOKEN": INGEST_TOKEN,
            **self.extra_env,
        }
        cmd = [sys.executable, "-m", "stackwatch.cli", "server", "--data-dir", str(self.data_dir),
               "--port", str(self.port)]
        if self.config:
            cmd += ["--config", str(self.config)]
        self.log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a power cut or the OOM killer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "log_file"):
            self.log_file.close()

    def client(self, token: str = ADMIN_TOKEN, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)

    def ingest_client(self, **kw: Any) -> httpx.Client:
        return self.client(INGEST_TOKEN, **kw)

    def wait_for_count(self, q: str, expected: int, *, timeout: float = 15.0, start: str = "-30d") -> int:
        """Poll search until ``expected`` lines match (ingest is asynchronous after the ack)."""
        deadline = time.monotonic() + timeout
        total = -1
        with self.client() as c:
            while time.monotonic() < deadline:
                r = c.get("/api/v1/logs/search", params={"q": q, "start": start, "end": "+1h", "limit": 1})
                r.raise_for_status()
                total = r.json()["total"]
                if total >= expected:
                    return int(total)
                time.sleep(0.1)
        return total


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
