"""Reports readiness results (one per dependency) to the Stackwatch server.

When a server is configured, every ``/health/ready`` run hands its results to
:meth:`DependencyReporter.report`. The server has no dedicated endpoint yet, so each result is
sent as one NDJSON log event to ``/api/v1/logs`` with ``log_type`` ``system``, the message
``dependency <name> <status>`` and the attributes ``dependency.name``, ``dependency.status``,
``dependency.latency_ms`` (plus ``dependency.required`` and ``dependency.message``): enough
for the server to turn them into monitors and status-page components later, and searchable
today (``log_type:system AND dependency.status:unhealthy``).

``report`` never blocks the probe: it stores the latest results and wakes a daemon thread,
which sends at most once every ``interval`` seconds (probes every few seconds would otherwise
become a log stream of their own); results that arrive in between replace the pending ones.
Sending uses the standard library (no HTTP client import in the app) with a short timeout;
a failed send is dropped quietly (the next report carries the current state anyway).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from stackwatch.sdk._config import SDKConfig

__all__ = ["DependencyReporter"]

logger = logging.getLogger("stackwatch.sdk.dependencies")

_LEVELS = {"healthy": "INFO", "degraded": "WARN", "unhealthy": "ERROR"}


def _timestamp() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _field(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


class DependencyReporter:
    """Posts readiness results to ``{server_url}/api/v1/logs`` as ``system`` log events."""

    def __init__(self, config: SDKConfig, *, interval: float = 30.0, timeout: float = 5.0) -> None:
        self.config = config
        self.interval = interval
        self.timeout = timeout
        self.url = config.server_url.rstrip("/") + "/api/v1/logs" if config.server_url else None
        self.host = socket.gethostname()
        #: Counters for tests and self-monitoring.
        self.sent = 0
        self.failed = 0
        self._pending: dict[str, Any] | None = None
        self._last_sent = float("-inf")
        self._closed = False
        self._reset_thread_state()

    def _reset_thread_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- public -------------------------------------------------------------------------------

    def report(self, results: Mapping[str, Any]) -> None:
        """Hand over readiness results; returns at once.

        ``results`` maps check name -> result (a ``CheckResult`` or a dict with ``status``,
        ``message``, ``latency_ms``, ``required``), or is a whole readiness body with a
        ``checks`` mapping.
        """
        if self.url is None or self._closed:
            return
        try:
            checks = results.get("checks") if isinstance(results.get("checks"), Mapping) else results
            if self._pid != os.getpid():
                self._reset_thread_state()  # forked: the parent's thread does not exist here
            with self._lock:
                self._pending = dict(checks)  # type: ignore[arg-type]
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="stackwatch-dependencies", daemon=True)
                    self._thread.start()
            self._wake.set()
        except Exception:
            logger.debug("dependency report failed", exc_info=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Send pending results now (ignoring the interval); True when nothing is left."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending:
            return self._send(pending, timeout if timeout is not None else self.timeout)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending (bounded by ``timeout``) and stop the thread."""
        self._closed = True
        self.flush(timeout)
        self._wake.set()

    def events(self, checks: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The log events one readiness run becomes (one per dependency)."""
        events = []
        timestamp = _timestamp()
        for name, result in checks.items():
            status = str(_field(result, "status", "unknown"))
            latency = _field(result, "latency_ms")
            event: dict[str, Any] = {
                "timestamp": timestamp,
                "level": _LEVELS.get(status, "WARN"),
                "service": self.config.service,
                "host": self.host,
                "log_type": "system",
                "logger": logger.name,
                "message": f"dependency {name} {status}",
                "dependency.name": str(name),
                "dependency.status": status,
                "dependency.latency_ms": round(float(latency), 2) if latency is not None else None,
                "dependency.required": bool(_field(result, "required", True)),
                "dependency.message": str(_field(result, "message", "") or ""),
                "environment": self.config.environment,
                "version": self.config.version,
            }
            events.append(event)
        return events

    # -- background -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            wait = self._last_sent + self.interval - time.monotonic()
            if wait > 0:
                # Rate limit: later reports during the wait only replace the pending results.
                time.sleep(wait)
            with self._lock:
                pending, self._pending = self._pending, None
            if pending:
                self._send(pending, self.timeout)

    def _send(self, checks: Mapping[str, Any], timeout: float) -> bool:
        self._last_sent = time.monotonic()
        try:
            body = "".join(json.dumps(e, default=str) + "\n" for e in self.events(checks)).encode()
            headers = {"Content-Type": "application/x-ndjson"}
            if self.config.token:
                headers["Authorization"] = f"Bearer {self.config.token}"
            request = urllib.request.Request(self.url or "", data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            self.sent += 1
            return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failed += 1
            logger.debug("dependency report to %s failed: %r", self.url, exc)
            return False
