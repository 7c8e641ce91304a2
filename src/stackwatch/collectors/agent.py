"""The host agent: node_exporter-style host metrics and local scrape targets, remote-written to
a Stackwatch server through a disk buffer.

``stackwatch agent --server URL --token TOKEN`` on each host replaces node_exporter + a
Prometheus that scrapes it: every ``interval`` it reads the host (``collectors.host``) and
scrapes the local exporters in ``scrape_configs`` (a Postgres, Redis or app ``/metrics``), encodes
the samples as a Prometheus remote-write request, appends it to the disk queue and a sender
drains the queue in order. While the server is unreachable the queue grows (bounded, oldest
dropped first with a counted warning) and it is sent when the server is back, with the
samples' original timestamps, so a network blip leaves no hole in the graphs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from stackwatch import __version__
from stackwatch.collectors import host
from stackwatch.collectors.buffer import DiskQueue
from stackwatch.collectors.scrape import ScrapeConfig, Scraper, load_scrape_configs
from stackwatch.errors import BadRequest, ConfigError
from stackwatch.ingest.prom_remote import MetricMetadata, TimeSeries, compress, encode_write_request
from stackwatch.query.timerange import parse_duration
from stackwatch.storage.metrics import MetricBatch

__all__ = ["Agent", "AgentConfig", "load_agent_config"]

log = logging.getLogger("stackwatch.agent")

_KEYS = {"server_url", "token", "interval", "job", "instance", "labels", "buffer_dir", "buffer_max_bytes",
         "collectors", "global", "scrape_configs", "timeout"}


@dataclass
class AgentConfig:
    server_url: str
    token: str
    interval_s: float = 15.0
    job: str = "node"
    instance: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    buffer_dir: Path = Path("./agent-buffer")
    buffer_max_bytes: int = 256 << 20
    collectors: list[str] | None = None
    scrape_configs: list[ScrapeConfig] = field(default_factory=list)
    timeout_s: float = 10.0


def load_agent_config(path: Path | None, **overrides: Any) -> AgentConfig:
    """Agent settings from an optional YAML file, then explicit overrides (CLI flags)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"agent config {str(path)!r}: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"agent config {str(path)!r}: expected a mapping")
        unknown = set(loaded) - _KEYS
        if unknown:
            raise ConfigError(f"agent config: unknown key(s) {', '.join(sorted(unknown))}")
        raw.update(loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if not raw.get("server_url"):
        raise ConfigError("agent: the server URL is required (--server or server_url)")
    if not raw.get("token"):
        raise ConfigError("agent: an ingest token is required (--token, STACKWATCH_INGEST_TOKEN or token)")
    try:
        interval = parse_duration(str(raw.get("interval", "15s"))) / 1e9
        timeout = parse_duration(str(raw.get("timeout", "10s"))) / 1e9
    except BadRequest as exc:
        raise ConfigError(f"agent: {exc.message}") from None
    if interval <= 0:
        raise ConfigError("agent: interval must be positive")
    collectors = raw.get("collectors")
    if collectors is not None:
        unknown = set(collectors) - set(host.COLLECTORS)
        if unknown:
            raise ConfigError(f"agent: unknown collector(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(host.COLLECTORS)}")
    scrape = load_scrape_configs({"global": raw.get("global") or {}, "scrape_configs": raw.get("scrape_configs")})
    return AgentConfig(
        server_url=str(raw["server_url"]).rstrip("/"),
        token=str(raw["token"]),
        interval_s=interval,
        job=str(raw.get("job", "node")),
        instance=str(raw.get("instance") or socket.gethostname()),
        labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        buffer_dir=Path(raw.get("buffer_dir", "./agent-buffer")),
        buffer_max_bytes=int(raw.get("buffer_max_bytes", 256 << 20)),
        collectors=list(collectors) if collectors is not None else None,
        scrape_configs=scrape,
        timeout_s=timeout,
    )


def encode_batch(batch: MetricBatch) -> bytes:
    """A scraped :class:`MetricBatch` as a compressed remote-write request."""
    series: dict[int, TimeSeries] = {}
    for i, ts, value in zip(batch.series, batch.timestamps, batch.values, strict=True):
        s = series.get(i)
        if s is None:
            ref = batch.refs[i]
            s = series[i] = TimeSeries([("__name__", ref.name), *ref.labels])
        s.timestamps.append(ts)
        s.values.append(value)
    metadata = [MetricMetadata(t, name, h, u) for name, (t, h, u) in batch.metadata.items()]
    return compress(encode_write_request(series.values(), metadata))


class Agent:
    def __init__(self, config: AgentConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.queue = DiskQueue(config.buffer_dir, max_bytes=config.buffer_max_bytes)
        self.sent_requests = 0
        self.failed_requests = 0
        self.refused_requests = 0
        self._transport = transport
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    # -- collecting

    def host_request(self, now: float | None = None) -> bytes:
        """One remote-write request with the host's samples and the agent's own counters."""
        now = time.time() if now is None else now
        ts = int(now * 1000)
        base = [("job", self.config.job), ("instance", self.config.instance), *self.config.labels.items()]
        samples = host.collect(self.config.collectors)
        samples += [
            ("stackwatch_agent_buffer_bytes", {}, float(self.queue.size_bytes)),
            ("stackwatch_agent_dropped_requests_total", {}, float(self.queue.dropped_records)),
            ("stackwatch_agent_sent_requests_total", {}, float(self.sent_requests)),
            ("stackwatch_agent_failed_requests_total", {}, float(self.failed_requests)),
            ("stackwatch_agent_refused_requests_total", {}, float(self.refused_requests)),
            ("stackwatch_agent_build_info", {"version": __version__}, 1.0),
            ("up", {}, 1.0),
        ]
        series = [TimeSeries([("__name__", name), *base, *labels.items()], [ts], [value])
                  for name, labels, value in samples]
        metadata = [MetricMetadata(kind, name, text) for name, (kind, text) in host.HELP.items()]
        return compress(encode_write_request(series, metadata))

    def enqueue(self, payload: bytes) -> None:
        self.queue.append(payload)
        self._wake.set()

    async def _scraped(self, project: str, batch: MetricBatch) -> None:
        # Local exporters' samples ride the same queue; the project is the token's, not the job's.
        self.enqueue(encode_batch(batch))

    # -- sending

    async def _send_one(self, client: httpx.AsyncClient, payload: bytes) -> bool:
        """Send the oldest record; True when it left the queue (delivered or refused for good)."""
        try:
            response = await client.post(
                self.config.server_url + "/api/v1/write",
                content=payload,
                headers={
                    "Content-Type": "application/x-protobuf",
                    "Content-Encoding": "snappy",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                    "Authorization": f"Bearer {self.config.token}",
                },
            )
        except httpx.HTTPError as exc:
            self.failed_requests += 1
            log.info("server unreachable (%s); %d bytes buffered", type(exc).__name__, self.queue.size_bytes)
            return False
        if response.status_code < 300:
            self.sent_requests += 1
            return True
        if response.status_code in (401, 403):
            self.failed_requests += 1
            log.error("server refused the token (%d): fix the agent's token; keeping the data", response.status_code)
            return False
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            # A request the server will never take (a bad series): drop it, as Prometheus does.
            self.refused_requests += 1
            log.warning("server refused a request for good: %d %s", response.status_code, response.text[:200])
            return True
        self.failed_requests += 1
        return False

    async def _sender(self) -> None:
        backoff = 0.5
        async with httpx.AsyncClient(timeout=self.config.timeout_s, transport=self._transport) as client:
            while not self._stop.is_set():
                payload = self.queue.peek()
                if payload is None:
                    self._wake.clear()
                    waiter = asyncio.ensure_future(self._wake.wait())
                    stopper = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stopper.cancel()
                    continue
                if await self._send_one(client, payload):
                    self.queue.ack()
                    backoff = 0.5
                    continue
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 30.0)

    async def _collector(self) -> None:
        interval = self.config.interval_s
        next_at = time.time()
        while not self._stop.is_set():
            try:
                payload = await asyncio.to_thread(self.host_request)
                self.enqueue(payload)
            except Exception:
                log.exception("collecting host metrics failed")
            next_at += interval
            delay = next_at - time.time()
            if delay < 0:
                next_at = time.time()
                delay = 0
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def run(self) -> None:
        """Collect, scrape and send until :meth:`stop`; then flush what can be sent quickly."""
        scraper = Scraper(self.config.scrape_configs, self._scraped) if self.config.scrape_configs else None
        if scraper is not None:
            await scraper.start()
        tasks = [asyncio.create_task(self._collector()), asyncio.create_task(self._sender())]
        try:
            await self._stop.wait()
        finally:
            if scraper is not None:
                await scraper.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.queue.close()

    def stop(self) -> None:
        self._stop.set()
