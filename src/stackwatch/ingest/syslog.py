"""The syslog listener: RFC 5424 and RFC 3164 messages over UDP and TCP.

Each message is parsed by :func:`stackwatch.pipeline.syslog.parse_syslog` (the one syslog
parser, shared with the pipeline's parse stage; its docstring lists the fields). Syslog gives
no way to tell a sender its message was bad, so nothing is rejected: a line without a valid
PRI becomes ``{"message": line, "log_type": "system"}``, and RFC 3164 parsing takes whatever
parts it recognises.

:class:`SyslogServer` listens on UDP (one message per datagram, RFC 5426) and TCP, where each
frame is either octet-counted (``123 <34>1 ...``, RFC 6587 3.4.1) or ends with LF or NUL
(RFC 6587 3.4.2; NUL because Python's ``SysLogHandler`` terminates TCP messages with it and
sends no newline). It batches messages and awaits the sink once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from stackwatch.pipeline.syslog import parse_syslog

__all__ = ["SyslogServer", "parse_syslog"]

_log = logging.getLogger(__name__)

Sink = Callable[[list[dict[str, Any]]], Awaitable[None]]

_DELIMITERS: Final = b"\n\x00"


class _Framer:
    """Split a TCP byte stream into messages, octet-counted or LF/NUL-terminated, per frame.

    A frame longer than ``max_bytes`` is cut to ``max_bytes`` and the rest skipped, so one
    sender cannot make us buffer without bound.
    """

    __slots__ = ("_buffer", "_discard_line", "_max_bytes", "_skip")

    def __init__(self, max_bytes: int) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self._skip = 0  # bytes of an oversized octet-counted frame still to drop
        self._discard_line = False  # dropping the tail of an oversized LF-terminated frame

    def feed(self, data: bytes) -> list[bytes]:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        if self._discard_line:
            end = _find_delimiter(data, 0, len(data))
            if end == -1:
                return []
            data = data[end + 1 :]
            self._discard_line = False
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        position = self._split(buffer, frames)
        del buffer[:position]
        return frames

    def _split(self, buffer: bytearray, frames: list[bytes]) -> int:
        size = len(buffer)
        position = 0
        limit = self._max_bytes
        while position < size:
            first = buffer[position]
            if first in b"\n\r\x00 \t":  # stray delimiters between frames
                position += 1
                continue
            if 0x31 <= first <= 0x39:  # MSG-LEN starts with NONZERO-DIGIT
                counted = self._octet_counted(buffer, position, frames)
                if counted is None:
                    return position  # the length prefix or the frame is incomplete
                if counted >= 0:
                    position = counted
                    continue
            end = _find_delimiter(buffer, position, size)
            if end == -1:
                if size - position > limit:
                    frames.append(bytes(buffer[position : position + limit]))
                    self._discard_line = True
                    return size
                return position
            frames.append(bytes(buffer[position:end]))
            position = end + 1
        return position

    def _octet_counted(self, buffer: bytearray, position: int, frames: list[bytes]) -> int | None:
        """Read an octet-counted frame at ``position``.

        Returns the offset after it, ``None`` to wait for more data, or -1 when the bytes are
        not a length prefix after all (then the frame is LF/NUL-terminated).
        """
        size = len(buffer)
        space = buffer.find(b" ", position, min(size, position + 11))
        if space == -1:
            if size - position < 11 and buffer[position:size].isdigit():
                return None
            return -1
        digits = buffer[position:space]
        if not digits.isdigit() or buffer[space + 1 : space + 2] not in (b"<", b""):
            return -1
        start = space + 1
        end = start + int(digits)
        if end <= size:
            frames.append(bytes(buffer[start:end]))
            return end
        if int(digits) > self._max_bytes and size - start >= self._max_bytes:
            frames.append(bytes(buffer[start : start + self._max_bytes]))
            self._skip = end - size
            return size
        return None

    def remainder(self) -> bytes:
        """Whatever is left when the connection ends: a final message without a terminator."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest.strip(b"\r\n\x00 \t")


def _find_delimiter(data: bytes | bytearray, start: int, end: int) -> int:
    newline = data.find(b"\n", start, end)
    # Search for NUL only up to the newline, so scanning stays linear in the line length.
    nul = data.find(b"\x00", start, newline if newline != -1 else end)
    return nul if nul != -1 else newline


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, server: SyslogServer) -> None:
        self._server = server
        self._framer = _Framer(server.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else None
        self._server._connections.add(self)
        if self._server._paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        frames = self._framer.feed(data)
        if frames:
            self._server._add(frames, self._peer)

    def eof_received(self) -> bool:
        self.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()
        self._server._connections.discard(self)

    def flush(self) -> None:
        rest = self._framer.remainder()
        if rest:
            self._server._add([rest], self._peer)

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        self.flush()
        if self._transport is not None:
            self._transport.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SyslogServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = data[: self._server.max_message_bytes].rstrip(b"\r\n\x00")
        if message:
            self._server._add([message], str(addr[0]) if addr else None, droppable=True)

    def error_received(self, exc: Exception) -> None:  # pragma: no cover - OS-level ICMP errors
        _log.debug("syslog UDP socket error: %s", exc)


class SyslogServer:
    """Receive syslog over TCP and/or UDP and hand parsed events to ``sink`` in batches.

    A batch is sent when it holds ``max_batch`` messages or ``max_delay`` seconds after its
    first message arrived, whichever comes first; ``sink`` is awaited once per batch, never
    concurrently. When the sink falls behind, TCP connections stop being read (the senders'
    buffers fill and they slow down); UDP cannot push back, so datagrams beyond
    ``max_pending`` are dropped and counted in :attr:`dropped`. A sink that raises is logged
    and counted in :attr:`sink_failures`: syslog has no way to report the failure upstream.
    Pass port 0 to bind an ephemeral port; :attr:`tcp_port`/:attr:`udp_port` give the real one.
    """

    def __init__(
        self,
        host: str,
        tcp_port: int | None,
        udp_port: int | None,
        sink: Sink,
        *,
        max_batch: int = 1000,
        max_delay: float = 0.1,
        max_message_bytes: int = 64 * 1024,
        max_pending: int | None = None,
    ) -> None:
        if tcp_port is None and udp_port is None:
            raise ValueError("SyslogServer needs a TCP port, a UDP port or both")
        self.host = host
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.max_message_bytes = max_message_bytes
        self.dropped = 0
        self.sink_failures = 0
        self._sink = sink
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_pending = max_pending if max_pending is not None else 50 * max_batch
        self._high_water = min(10 * max_batch, self._max_pending)
        self._low_water = 2 * max_batch
        self._pending: list[tuple[bytes, str | None]] = []
        self._connections: set[_TcpProtocol] = set()
        self._paused = False
        self._tcp_server: asyncio.Server | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def pending_messages(self) -> int:
        """Messages received and not yet handed to the sink."""
        return len(self._pending)

    async def start(self) -> None:
        """Bind the listeners and start the batching task."""
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._flusher = asyncio.create_task(self._run(), name="syslog-flusher")
        if self.tcp_port is not None:
            self._tcp_server = await loop.create_server(lambda: _TcpProtocol(self), self.host, self.tcp_port)
            self.tcp_port = self._tcp_server.sockets[0].getsockname()[1]
        if self.udp_port is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.udp_port)
            )
            self._udp_transport = transport
            self.udp_port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        """Stop listening, close connections, and deliver every message already received."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        if self._udp_transport is not None:
            self._udp_transport.close()
        for connection in list(self._connections):
            connection.close()
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None
        self._udp_transport = None
        self._stopping = True
        self._has_data.set()
        self._full.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None

    def _add(self, frames: list[bytes], peer: str | None, droppable: bool = False) -> None:
        if droppable and len(self._pending) >= self._max_pending:
            self.dropped += len(frames)
            if self.dropped == len(frames) or self.dropped % 10_000 < len(frames):
                _log.warning("syslog sink is behind; %d UDP messages dropped so far", self.dropped)
            return
        self._pending.extend([(frame, peer) for frame in frames])
        self._has_data.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()
        if not self._paused and len(self._pending) >= self._high_water:
            self._paused = True
            for connection in self._connections:
                connection.pause()

    async def _run(self) -> None:
        while True:
            await self._has_data.wait()
            if not self._pending:
                if self._stopping:
                    return
                self._has_data.clear()
                continue
            if not self._stopping and len(self._pending) < self._max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), self._max_delay)
                except TimeoutError:
                    pass
            await self._flush_once()

    async def _flush_once(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        if len(self._pending) < self._max_batch and not self._stopping:
            self._full.clear()
        if self._paused and len(self._pending) <= self._low_water:
            self._paused = False
            for connection in self._connections:
                connection.resume()
        events = [parse_syslog(frame.decode("utf-8", "replace"), peer=peer) for frame, peer in batch]
        try:
            await self._sink(events)
        except Exception:
            self.sink_failures += 1
            _log.exception("syslog sink failed; %d messages lost", len(events))
