"""A stand-in HTTP receiver for the SDK's outgoing telemetry, for tests.

It records every request (path, headers, body) and answers each path with a chosen status, so a
test can see exactly what the SDK sent: OTLP/HTTP traces (decoded with opentelemetry-proto),
Sentry envelopes, NDJSON log pushes. Used where the real server has no endpoint yet.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def decoded_body(self) -> bytes:
        encoding = self.headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            return gzip.decompress(self.body)
        if encoding == "deflate":
            return zlib.decompress(self.body)
        if encoding == "br":
            import brotli  # type: ignore[import-not-found]

            return bytes(brotli.decompress(self.body))
        return self.body


class TelemetryReceiver:
    """``with TelemetryReceiver() as r: ... r.url ... r.spans()``."""

    def __init__(self, statuses: dict[str, int] | None = None) -> None:
        self.requests: list[Received] = []
        self.statuses = dict(statuses or {})
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with receiver._cond:
                    receiver.requests.append(
                        Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver._cond.notify_all()
                status = receiver.statuses.get(path, 200)
                payload = b"{}" if status < 400 else b'{"detail": "Not Found"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> TelemetryReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def on(self, path: str) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        return True

    # -- decoders ---------------------------------------------------------------------------------

    def spans(self) -> list[dict[str, Any]]:
        """Every span received on /v1/traces, flattened with its resource attributes."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out = []
        for received in self.on("/v1/traces"):
            request = ExportTraceServiceRequest()
            request.ParseFromString(received.decoded_body())
            for resource_spans in request.resource_spans:
                resource = {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        out.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "attributes": {kv.key: _any_value(kv.value) for kv in span.attributes},
                                "resource": resource,
                                "scope": scope_spans.scope.name,
                                "authorization": received.headers.get("authorization"),
                            }
                        )
        return out

    def envelope_items(self) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
        """Sentry envelopes: (envelope header, item header, item payload parsed as JSON when it is)."""
        items = []
        for received in self.requests:
            if not received.path.split("?", 1)[0].endswith("/envelope/"):
                continue
            lines = received.decoded_body().split(b"\n")
            header = json.loads(lines[0])
            i = 1
            while i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                item_header = json.loads(lines[i])
                payload_line = lines[i + 1] if i + 1 < len(lines) else b""
                try:
                    payload: Any = json.loads(payload_line)
                except ValueError:
                    payload = payload_line
                items.append((header, item_header, payload))
                i += 2
        return items

    def ndjson_events(self, path: str = "/api/v1/logs") -> list[dict[str, Any]]:
        events = []
        for received in self.on(path):
            for line in received.decoded_body().splitlines():
                if line.strip():
                    events.append(json.loads(line))
        return events


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
