"""Ships log events to the Stackwatch server in the background.

:class:`LogShipper` is a ``logging.Handler``: ``emit()`` only appends the record's event (the
dict built by :class:`stackwatch.sdk.logging.EventBuilder`, already redacted) to a bounded
in-memory buffer and returns; a daemon thread sends batches as NDJSON to
``{server_url}/api/v1/logs`` with the ingest token. The app thread never waits on the network.

Failure policy (the server acknowledges only durable data and answers 429 when it is behind):

* connection errors, 5xx and 429 are retried with exponential backoff (0.5 s doubling to 30 s,
  with jitter), honouring ``Retry-After``; the batch goes back to the front of the buffer;
* other 4xx (bad token, malformed body) cannot succeed on retry: the batch is dropped and
  counted, with one line on stderr;
* past ``buffer_size`` records the *oldest* are dropped and counted; one warning goes to stderr
  per episode (from the first drop to the next successful send), never into logging itself,
  which would feed the buffer that is overflowing.

Pre-fork servers (gunicorn, ``uvicorn --workers``) fork after ``init()``: a thread does not
survive ``fork()``, and the parent's buffered events are the parent's to send. So each shipper
re-creates its lock, buffer and connection in the child (``os.register_at_fork``) and starts its
thread on the child's first record.

The HTTP client is ``http.client`` from the standard library, with one kept-alive connection:
an app that imports the SDK should not pay for importing an HTTP client library.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

try:
    import orjson

    def _encode(event: Mapping[str, Any]) -> bytes:
        return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)

except ImportError:  # pragma: no cover
    import json

    def _encode(event: Mapping[str, Any]) -> bytes:
        return json.dumps(event, default=str, separators=(",", ":")).encode()


__all__ = ["LogShipper"]

#: Log types the server files into retention tiers; a helper's ``context.log_type`` is lifted.
_LOG_TYPES: Final = frozenset({"application", "web", "database", "security", "system"})
_GZIP_ABOVE: Final = 16 * 1024

_live_shippers: weakref.WeakSet[LogShipper] = weakref.WeakSet()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    for shipper in list(_live_shippers):
        shipper._reinit_after_fork()


def _warn(text: str) -> None:
    """Tell the operator on stderr; never through logging (that would feed the shipper)."""
    try:
        sys.stderr.write(f"stackwatch: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


class LogShipper(logging.Handler):
    """Batches log events in memory and POSTs them as NDJSON from a background thread.

    ``build_event(record) -> dict`` makes the event for a record (shared with the other
    handlers). ``resource`` (service name, version, environment) is attached to every event sent.
    """

    def __init__(
        self,
        server_url: str,
        token: str | None,
        *,
        build_event: Callable[[logging.LogRecord], Mapping[str, Any]],
        buffer_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        timeout: float = 5.0,
        max_backoff: float = 30.0,
        resource: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        parts = urlsplit(server_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server_url must be an http(s) URL, not {server_url!r}")
        self.url = f"{server_url.rstrip('/')}/api/v1/logs"
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = f"{parts.path}/api/v1/logs"
        self._headers = {"Content-Type": "application/x-ndjson", "User-Agent": "stackwatch-sdk"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._build_event = build_event
        self.buffer_size = max(1, int(buffer_size))
        self.batch_size = max(1, int(batch_size))
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._resource = {**(resource or {}), "host.name": socket.gethostname()}
        self._host_name = self._resource["host.name"]
        self._init_state()
        global _fork_hook_installed
        _live_shippers.add(self)
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True

    # ------------------------------------------------------------------ state

    def _init_state(self) -> None:
        """Fresh lock, buffer, counters and no thread: at start and in a forked child."""
        self._cv = threading.Condition(threading.Lock())
        self._buffer: deque[Mapping[str, Any]] = deque()
        self._thread: threading.Thread | None = None
        self._worker_ident: int | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._stopping = False
        self._closed = False
        self._in_flight = 0
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_ok = True
        self._filled_at = 0.0  # when the buffer last became non-empty (monotonic)
        self._dropping = False  # inside a drop episode (one warning each)
        self._failing = False  # inside an outage (one warning each)
        self._episode_drops = 0
        self.sent = 0
        self.dropped = 0
        self.rejected = 0
        self.failures = 0

    def _reinit_after_fork(self) -> None:
        # The parent's thread does not exist here and its lock may have been held at fork time.
        self._init_state()

    def stats(self) -> dict[str, int]:
        """Counters for tests and health pages: sent, dropped (buffer full), rejected (4xx),
        failures (attempts that will be retried), buffered."""
        with self._cv:
            return {
                "sent": self.sent,
                "dropped": self.dropped,
                "rejected": self.rejected,
                "failures": self.failures,
                "buffered": len(self._buffer) + self._in_flight,
            }

    # ------------------------------------------------------------------ app side

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed or threading.get_ident() == self._worker_ident:
            return  # never ship what the shipper's own thread logs (a library's, say)
        try:
            event = self._build_event(record)
        except Exception:
            self.handleError(record)
            return
        warn = False
        with self._cv:
            buffer = self._buffer
            if len(buffer) + self._in_flight >= self.buffer_size and buffer:
                buffer.popleft()
                warn = self._count_drop(1)
            buffer.append(event)
            if self._thread is None:
                self._start()
            n = len(buffer)
            if n == 1:  # the batch timer starts; the idle worker waits for this
                self._filled_at = time.monotonic()
                self._cv.notify_all()
            elif n >= self.batch_size:
                self._cv.notify_all()
        if warn:
            self._warn_dropping()

    def _count_drop(self, n: int) -> bool:
        """Count ``n`` dropped records (lock held); True when this starts a drop episode."""
        self.dropped += n
        self._episode_drops += n
        if self._dropping:
            return False
        self._dropping = True
        return True

    def _warn_dropping(self) -> None:
        _warn(
            f"log buffer full ({self.buffer_size} records) while {self.url} is unreachable: "
            "dropping the oldest records until it is back"
        )

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="stackwatch-log-shipper", daemon=True)
        self._thread = thread
        thread.start()

    def flush(self, timeout: float | None = 5.0) -> bool:  # type: ignore[override]
        """Send everything buffered now; wait at most ``timeout`` seconds.

        True when the buffer was delivered; False on timeout or when the server could not be
        reached (one attempt is made at once, skipping any backoff wait; the records stay
        buffered for the next try).
        """
        timeout = 5.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cv:
            if not self._buffer and not self._in_flight:
                return True
            if self._thread is None or not self._thread.is_alive():
                if self._closed:
                    return False
                self._start()
            self._flush_requested += 1
            target = self._flush_requested
            self._cv.notify_all()
            while self._flush_done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return self._flush_ok

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded by ``timeout``), stop the thread and close the connection."""
        if not self._closed:
            try:
                self.flush(timeout=timeout)
            finally:
                with self._cv:
                    self._closed = True
                    self._stopping = True
                    self._cv.notify_all()
                    thread = self._thread
                if thread is not None and thread is not threading.current_thread():
                    thread.join(timeout=1.0)
                self._close_conn()
                _live_shippers.discard(self)
        super().close()

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        while not self._stopping:
            try:
                self._loop()
            except Exception as exc:  # a bug here must cost the logs, never the app
                _warn(f"log shipper error: {exc!r}")
                time.sleep(1.0)

    def _loop(self) -> None:
        backoff = 0.0
        retry_at = 0.0
        cv = self._cv
        while True:
            with cv:
                while True:
                    if self._stopping:
                        return
                    flushing = self._flush_requested > self._flush_done
                    if flushing:
                        break  # a flush tries at once, even during a backoff wait
                    now = time.monotonic()
                    buffered = len(self._buffer)
                    if retry_at > now:
                        cv.wait(retry_at - now)
                        continue
                    if buffered and (
                        backoff or buffered >= self.batch_size or now - self._filled_at >= self.flush_interval
                    ):
                        break
                    cv.wait(self.flush_interval - (now - self._filled_at) if buffered else None)
                target = self._flush_requested
                batch = self._take()
            if not batch:
                self._finish_flush(target, True)
                continue
            ok, retry_after = self._send_batch(batch)
            if ok:
                backoff = retry_at = 0.0
                continue
            backoff = min(self.max_backoff, backoff * 2 if backoff else 0.5)
            delay = retry_after if retry_after is not None else backoff * random.uniform(0.75, 1.25)
            retry_at = time.monotonic() + delay
            if flushing:
                self._finish_flush(target, False)

    def _take(self) -> list[Mapping[str, Any]]:
        """Pop up to one batch (lock held); those records count as in flight until resolved."""
        buffer = self._buffer
        n = min(len(buffer), self.batch_size)
        batch = [buffer.popleft() for _ in range(n)]
        self._in_flight = n
        self._filled_at = time.monotonic()  # what is left waits at most one more interval
        return batch

    def _finish_flush(self, target: int, ok: bool) -> None:
        with self._cv:
            if target > self._flush_done:
                self._flush_done = target
                self._flush_ok = ok
            self._cv.notify_all()

    def _send_batch(self, batch: list[Mapping[str, Any]]) -> tuple[bool, float | None]:
        """POST one batch; on a retryable failure put it back at the front of the buffer."""
        try:
            body = self._serialize(batch)
        except Exception as exc:  # should not happen (default=str); never kill the thread
            _warn(f"cannot encode {len(batch)} log records: {exc!r}")
            with self._cv:
                self._in_flight = 0
                self.rejected += len(batch)
            return True, None
        status, retry_after, reason = self._post(body)
        warn_drop = was_failing = first_failure = False
        recovered_drops = 0
        with self._cv:
            self._in_flight = 0
            if status is not None and 200 <= status < 300:
                self.sent += len(batch)
                if self._dropping or self._failing:
                    recovered_drops = self._episode_drops
                    was_failing = self._failing
                    self._dropping = self._failing = False
                    self._episode_drops = 0
                ok = True
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                self.rejected += len(batch)
                ok = True  # resolved: retrying cannot help
            else:
                self.failures += 1
                first_failure = not self._failing
                self._failing = True
                room = self.buffer_size - len(self._buffer)
                if len(batch) > room:
                    lost = len(batch) - max(room, 0)
                    batch = batch[lost:]
                    warn_drop = self._count_drop(lost)
                self._buffer.extendleft(reversed(batch))
                ok = False
        if ok and status is not None and 400 <= status < 500:
            _warn(f"{self.url} refused {len(batch)} log records: HTTP {status} {reason}")
        elif ok and (recovered_drops or was_failing):
            lost_text = f"; {recovered_drops} records were dropped meanwhile" if recovered_drops else ""
            _warn(f"log shipping to {self.url} recovered{lost_text}")
        elif not ok and first_failure:
            _warn(
                f"cannot ship logs to {self.url} ({reason}); retrying with backoff, "
                f"buffering up to {self.buffer_size} records"
            )
        if warn_drop:
            self._warn_dropping()
        return ok, retry_after

    def _serialize(self, batch: list[Mapping[str, Any]]) -> bytes:
        resource = dict(self._resource, **{"process.pid": str(os.getpid())})
        lines = []
        for event in batch:
            # None fields say nothing; the server drops them anyway. Helpers' context.log_type
            # picks the server's retention tier, which is a top-level field.
            out = {k: v for k, v in event.items() if v is not None}
            context = out.get("context")
            if context and context.get("log_type") in _LOG_TYPES:
                out["log_type"] = context["log_type"]
            out["host"] = self._host_name
            out["resource"] = resource
            lines.append(_encode(out))
        return b"\n".join(lines) + b"\n"

    def _post(self, body: bytes) -> tuple[int | None, float | None, str]:
        """(status or None on a connection error, Retry-After seconds, reason)."""
        headers = dict(self._headers)
        if len(body) > _GZIP_ABOVE:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        for attempt in (1, 2):
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = self._connect()
                conn.request("POST", self._path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                retry_after = _retry_after(response.getheader("Retry-After"))
                if response.will_close:
                    self._close_conn()
                reason = response.reason
                if 400 <= response.status < 500:
                    reason = f"{reason}: {data[:200].decode(errors='replace')}"
                return response.status, retry_after, reason
            except (OSError, http.client.HTTPException) as exc:
                self._close_conn()
                # A kept-alive connection the server closed while idle fails once; reconnect.
                if (
                    attempt == 1
                    and conn is not None
                    and isinstance(
                        exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                    )
                ):
                    continue
                return None, None, f"{type(exc).__name__}: {exc}"
        return None, None, "unreachable"  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at 5 minutes."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 300.0)
