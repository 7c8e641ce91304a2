"""Real receivers on loopback for the alerting tests: an HTTP server that records what it is sent
(optionally failing its first N requests), an SMTP server (aiosmtpd) with STARTTLS and AUTH, and a
clock the tests move by hand."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class ManualClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class Recorder:
    """An HTTP receiver on 127.0.0.1 that records every POST (path, headers, JSON body).

    ``fail_first`` requests are answered with ``fail_status`` before it starts answering 200,
    the shape of a receiver that is down for a while and then recovers.
    """

    def __init__(self, fail_first: int = 0, fail_status: int = 503, ok_status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.ok_status = ok_status
        self._cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with recorder._cond:
                    recorder.attempts += 1
                    failing = recorder.attempts <= recorder.fail_first
                    if not failing:
                        recorder.requests.append({
                            "path": self.path, "headers": dict(self.headers),
                            "body": json.loads(raw) if raw else None,
                        })
                    recorder._cond.notify_all()
                status = recorder.fail_status if failing else recorder.ok_status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status":"ok"}' if not failing else b'{"error":"down"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def bodies(self, path: str | None = None) -> list[Any]:
        with self._cond:
            return [r["body"] for r in self.requests if path is None or r["path"] == path]

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([r for r in self.requests if path is None or r["path"] == path]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.bodies(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
