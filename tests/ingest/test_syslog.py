"""Syslog TCP framing, and the listener driven by real clients on loopback (parsing: tests/pipeline/test_syslog_parse.py)."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackwatch.ingest.syslog import SyslogServer, _Framer

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def ns(text: str) -> int:
    stamp = datetime.fromisoformat(text)
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


# --------------------------------------------------------------------------- framing


def test_framer_octet_counting_across_chunks_and_mixed_with_newlines() -> None:
    first = b"<13>1 - - a - - - one"
    second = b"<13>two"
    stream = str(len(first)).encode() + b" " + first + second + b"\n" + b"<13>three\x00"
    framer = _Framer(1024)
    frames = [frame for byte in range(len(stream)) for frame in framer.feed(stream[byte : byte + 1])]
    assert frames == [first, second, b"<13>three"]


def test_framer_lf_and_crlf_and_remainder() -> None:
    framer = _Framer(1024)
    assert framer.feed(b"<13>a\r\n<13>b\n<13>c") == [b"<13>a\r", b"<13>b"]
    assert framer.remainder() == b"<13>c"


def test_framer_cuts_oversized_frames_and_resynchronises() -> None:
    framer = _Framer(10)
    assert framer.feed(b"<13>" + b"x" * 30) == [b"<13>xxxxxx"]
    assert framer.feed(b"yyy\n<13>ok\n") == [b"<13>ok"]
    counted = _Framer(10)
    assert counted.feed(b"40 <13>" + b"z" * 20) == [b"<13>zzzzzz"]
    assert counted.feed(b"z" * 16 + b"<13>next\n") == [b"<13>next"]


def test_framer_digits_that_are_not_a_length_prefix() -> None:
    framer = _Framer(1024)
    assert framer.feed(b"2024-05-01 plain line\n12 not counted\n") == [
        b"2024-05-01 plain line",
        b"12 not counted",
    ]


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=40), max_size=10),
    cut=st.integers(1, 50),
    octets=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_fuzz_framer_reassembles_any_chunking(payloads: list[bytes], cut: int, octets: bool) -> None:
    if octets:  # octet counting carries any bytes, newlines included
        messages = [b"<13>" + payload for payload in payloads]
        stream = b"".join(str(len(m)).encode() + b" " + m for m in messages)
    else:
        messages = [b"<13>" + payload.replace(b"\n", b"").replace(b"\x00", b"") for payload in payloads]
        stream = b"".join(m + b"\n" for m in messages)
    framer = _Framer(1024)
    frames: list[bytes] = []
    for start in range(0, len(stream), cut):
        frames.extend(framer.feed(stream[start : start + cut]))
    assert framer.remainder() == b""
    assert frames == messages


@given(data=st.binary(max_size=300), cut=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_fuzz_framer_arbitrary_bytes(data: bytes, cut: int) -> None:
    framer = _Framer(64)
    for start in range(0, len(data), cut):
        for frame in framer.feed(data[start : start + cut]):
            assert len(frame) <= 64
    assert len(framer.remainder()) <= len(data)


# --------------------------------------------------------------------------- the server


class Collector:
    """A sink that records batches and lets a test wait for a number of events."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, events: list[dict[str, Any]]) -> None:
        self.batches.append(events)
        self.arrived.set()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for batch in self.batches for event in batch]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_server(test: Any, **options: Any) -> Any:
    sink = Collector()
    server = SyslogServer("127.0.0.1", 0, 0, sink, **{"max_batch": 50, "max_delay": 0.05, **options})
    await server.start()
    try:
        return await test(server, sink)
    finally:
        await server.stop()


def _emit_with_syslog_handler(port: int, socktype: socket.SocketKind, records: list[tuple[int, str]]) -> None:
    handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port), socktype=socktype)
    handler.ident = "shop: "
    logger = logging.Logger("stdlib-client")
    logger.addHandler(handler)
    try:
        for level, text in records:
            logger.log(level, text)
    finally:
        handler.close()


@pytest.mark.parametrize("socktype", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_stdlib_syslog_handler_over_udp_and_tcp(socktype: socket.SocketKind) -> None:
    async def scenario(server: SyslogServer, sink: Collector) -> list[dict[str, Any]]:
        port = server.udp_port if socktype == socket.SOCK_DGRAM else server.tcp_port
        assert port
        records = [
            (logging.ERROR, "payment failed"),
            (logging.WARNING, "slow query"),
            (logging.INFO, "ünïcode ok"),
        ]
        await asyncio.to_thread(_emit_with_syslog_handler, port, socktype, records)
        return await sink.wait_for(3)

    events = _run(_with_server(scenario))
    assert [(e["message"], e["severity_text"], e["service"]) for e in events] == [
        ("payment failed", "ERROR", "shop"),
        ("slow query", "WARN", "shop"),
        ("ünïcode ok", "INFO", "shop"),
    ]
    assert all(e["host"] == "127.0.0.1" and e["syslog.facility"] == "user" for e in events)


def test_hand_written_rfc5424_lines_over_tcp_with_both_framings() -> None:
    lines = [
        b'<165>1 2003-10-11T22:14:15.003Z mymachine evntslog - ID47 [exampleSDID@32473 iut="3"] counted',
        b"<13>1 2024-05-01T12:00:00Z web-1 api 77 REQ - newline framed",
    ]

    async def scenario(server: SyslogServer, sink: Collector) -> list[dict[str, Any]]:
        _, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(str(len(lines[0])).encode() + b" " + lines[0])
        writer.write(lines[1] + b"\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return await sink.wait_for(2)

    counted, framed = _run(_with_server(scenario))
    assert counted["message"] == "counted" and counted["syslog.sd.exampleSDID@32473.iut"] == "3"
    assert framed["message"] == "newline framed" and framed["service"] == "api" and framed["host"] == "web-1"
    assert framed["syslog.msgid"] == "REQ" and framed["process.pid"] == 77


@pytest.mark.skipif(shutil.which("logger") is None, reason="util-linux logger is not installed")
@pytest.mark.parametrize(
    "transport", [["--tcp"], ["--tcp", "--octet-count"], ["--udp"]], ids=["tcp", "tcp-octet-count", "udp"]
)
def test_util_linux_logger(transport: list[str]) -> None:
    async def scenario(server: SyslogServer, sink: Collector) -> list[dict[str, Any]]:
        port = server.udp_port if "--udp" in transport else server.tcp_port
        process = await asyncio.create_subprocess_exec(
            "logger", "--server", "127.0.0.1", "--port", str(port), *transport, "--rfc5424",
            "-t", "billing", "-p", "local3.warning", "--msgid", "INV42",
            "--sd-id", "order@32473", "--sd-param", 'id="9001"', "invoice overdue",
        )  # fmt: skip
        assert await process.wait() == 0
        return await sink.wait_for(1)

    [event] = _run(_with_server(scenario))
    assert event["message"] == "invoice overdue"
    assert event["service"] == "billing"
    assert event["severity_text"] == "WARN"
    assert event["syslog.facility"] == "local3"
    assert event["syslog.msgid"] == "INV42"
    assert event["syslog.sd.order@32473.id"] == "9001"
    assert event["syslog.sd.timeQuality.tzKnown"] == "1"
    assert abs(event["timestamp"] / 1e9 - datetime.now(UTC).timestamp()) < 60


@pytest.mark.skipif(
    shutil.which("rsyslogd") is None or shutil.which("logger") is None, reason="needs rsyslogd"
)
def test_rsyslog_forwarding_with_octet_counted_rfc5424(tmp_path: Path) -> None:
    async def scenario(server: SyslogServer, sink: Collector) -> list[dict[str, Any]]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            input_port = probe.getsockname()[1]
        config = tmp_path / "rsyslog.conf"
        config.write_text(
            f"""
global(workDirectory="{tmp_path}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input_port}" ruleset="fwd")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{server.tcp_port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"""
        )
        rsyslogd = await asyncio.create_subprocess_exec(
            "rsyslogd",
            "-n",
            "-f",
            str(config),
            "-iNONE",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", input_port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
            logger = await asyncio.create_subprocess_exec(
                "logger", "--server", "127.0.0.1", "--port", str(input_port), "--tcp",
                "-t", "cron", "-p", "authpriv.notice", "session opened for user root",
            )  # fmt: skip
            assert await logger.wait() == 0
            return await sink.wait_for(1, timeout=15)
        finally:
            rsyslogd.terminate()
            await rsyslogd.wait()

    [event] = _run(_with_server(scenario))
    assert event["service"] == "cron"
    assert event["log_type"] == "security"
    assert event["syslog.facility"] == "authpriv"
    assert event["message"] == "session opened for user root"
    assert "timestamp" in event and event["host"]


def test_batches_respect_max_batch_and_the_delay_flushes_the_rest() -> None:
    async def scenario(server: SyslogServer, sink: Collector) -> list[list[dict[str, Any]]]:
        _, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(b"".join(f"<14>app: line {n}\n".encode() for n in range(12)))
        await writer.drain()
        await sink.wait_for(12)
        writer.close()
        return sink.batches

    batches = _run(_with_server(scenario, max_batch=5, max_delay=0.2))
    assert [len(batch) for batch in batches] == [5, 5, 2]
    assert [e["message"] for batch in batches for e in batch] == [f"line {n}" for n in range(12)]


def test_stop_delivers_what_was_received() -> None:
    async def scenario() -> list[dict[str, Any]]:
        sink = Collector()
        server = SyslogServer("127.0.0.1", 0, None, sink, max_batch=1000, max_delay=60)
        await server.start()
        _, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(b"<14>first\n<14>second without newline")
        await writer.drain()
        async with asyncio.timeout(5):
            while server.pending_messages < 1:
                await asyncio.sleep(0.01)
        await server.stop()
        writer.close()
        return sink.events

    events = _run(scenario())
    assert [event["message"] for event in events] == ["first", "second without newline"]


def test_a_failing_sink_is_counted_and_the_server_keeps_going() -> None:
    calls: list[int] = []

    async def flaky(events: list[dict[str, Any]]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise RuntimeError("storage hiccup")

    async def scenario() -> SyslogServer:
        server = SyslogServer("127.0.0.1", None, 0, flaky, max_batch=10, max_delay=0.02)
        await server.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"<14>lost", ("127.0.0.1", server.udp_port))
            async with asyncio.timeout(5):
                while not calls:
                    await asyncio.sleep(0.01)
            client.sendto(b"<14>kept", ("127.0.0.1", server.udp_port))
            async with asyncio.timeout(5):
                while len(calls) < 2:
                    await asyncio.sleep(0.01)
        await server.stop()
        return server

    server = _run(scenario())
    assert server.sink_failures == 1
    assert calls == [1, 1]


def test_udp_overflow_is_dropped_and_counted_while_tcp_is_paused() -> None:
    release = asyncio.Event()
    received: list[str] = []

    async def slow(events: list[dict[str, Any]]) -> None:
        await release.wait()
        received.extend(event["message"] for event in events)

    async def scenario() -> SyslogServer:
        server = SyslogServer("127.0.0.1", None, 0, slow, max_batch=2, max_delay=0.01, max_pending=4)
        await server.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for n in range(20):
                client.sendto(f"<14>m{n}".encode(), ("127.0.0.1", server.udp_port))
            async with asyncio.timeout(5):
                while server.dropped + server.pending_messages < 18:  # one batch of 2 is at the sink
                    await asyncio.sleep(0.01)
        release.set()
        await server.stop()
        return server

    server = _run(scenario())
    assert server.dropped > 0
    assert len(received) + server.dropped == 20


def test_server_needs_a_port() -> None:
    async def sink(events: list[dict[str, Any]]) -> None:
        pass

    with pytest.raises(ValueError, match="needs a TCP port"):
        SyslogServer("127.0.0.1", None, None, sink)
