"""A bounded on-disk queue: what the agent sends survives a server outage and an agent restart.

Records (one compressed remote-write request each) are appended to segment files as
``length | crc32 | payload`` frames and fsync'd; a cursor file remembers how far the sender got.
A crash can leave a torn frame at the end of the last segment: it is cut off on open, so
everything acknowledged to the collector before the crash is still there and nothing half
written is ever sent. When the queue outgrows ``max_bytes`` the *oldest* segments go first
(the newest data matters most after an outage) and the loss is counted, never silent.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from pathlib import Path

__all__ = ["DiskQueue"]

log = logging.getLogger("stackwatch.agent")

_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_CURSOR = struct.Struct("<QQ")  # segment number, offset in it


class DiskQueue:
    def __init__(self, directory: Path, *, max_bytes: int = 256 << 20, segment_bytes: int = 4 << 20,
                 fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped_records = 0
        self._lock = threading.Lock()
        self._segments = sorted(int(p.stem) for p in self.dir.glob("*.seg"))
        self._read_seg, self._read_off = self._load_cursor()
        if self._segments:
            self._repair(self._segments[-1])
        else:
            self._segments = [max(self._read_seg, 1)]
            self._path(self._segments[0]).touch()
        if self._read_seg not in self._segments:
            self._read_seg, self._read_off = self._segments[0], 0
        for seg in [s for s in self._segments if s < self._read_seg]:  # consumed before a crash
            self._segments.remove(seg)
            self._path(seg).unlink(missing_ok=True)
        self._write = self._path(self._segments[-1]).open("ab")

    # -- files

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:016d}.seg"

    def _load_cursor(self) -> tuple[int, int]:
        try:
            data = (self.dir / "cursor").read_bytes()
            seg, off = _CURSOR.unpack(data[: _CURSOR.size])
            return int(seg), int(off)
        except (OSError, struct.error):
            return (self._segments[0] if self._segments else 1), 0

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_bytes(_CURSOR.pack(self._read_seg, self._read_off))
        os.replace(tmp, self.dir / "cursor")

    def _repair(self, seg: int) -> None:
        """Cut a torn or corrupt tail off the last segment (a crash mid-append)."""
        path = self._path(seg)
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[pos + _HEADER.size : end]) != crc:
                break
            pos = end
        if pos != len(data):
            log.warning("buffer segment %s: cut %d bytes of a torn write", path.name, len(data) - pos)
            with path.open("r+b") as f:
                f.truncate(pos)

    # -- queue

    @property
    def size_bytes(self) -> int:
        total = 0
        for seg in self._segments:
            try:
                total += self._path(seg).stat().st_size
            except OSError:
                pass
        return total - (self._read_off if self._segments and self._read_seg == self._segments[0] else 0)

    def append(self, payload: bytes) -> None:
        """Add one record durably (fsync'd before returning, unless ``fsync=False``)."""
        with self._lock:
            frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
            if self._write.tell() and self._write.tell() + len(frame) > self.segment_bytes:
                self._roll()
            self._write.write(frame)
            self._write.flush()
            if self.fsync:
                os.fsync(self._write.fileno())
            self._enforce_bound()

    def _roll(self) -> None:
        self._write.close()
        seg = self._segments[-1] + 1
        self._segments.append(seg)
        self._write = self._path(seg).open("ab")

    def _enforce_bound(self) -> None:
        while len(self._segments) > 1 and self.size_bytes > self.max_bytes:
            oldest = self._segments.pop(0)
            lost = self._count(oldest, self._read_off if oldest == self._read_seg else 0)
            self.dropped_records += lost
            self._path(oldest).unlink(missing_ok=True)
            if self._read_seg <= oldest:
                self._read_seg, self._read_off = self._segments[0], 0
                self._save_cursor()
            log.warning("buffer over %d bytes: dropped the oldest %d request(s)", self.max_bytes, lost)

    def _count(self, seg: int, start: int) -> int:
        data = self._path(seg).read_bytes()
        n, pos = 0, start
        while pos + _HEADER.size <= len(data):
            length, _ = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size + length
            n += 1
        return n

    def peek(self) -> bytes | None:
        """The oldest unsent record, or None when the queue is empty."""
        with self._lock:
            while True:
                path = self._path(self._read_seg)
                try:
                    with path.open("rb") as f:
                        f.seek(self._read_off)
                        header = f.read(_HEADER.size)
                        if len(header) == _HEADER.size:
                            length, crc = _HEADER.unpack(header)
                            payload = f.read(length)
                            if len(payload) == length and zlib.crc32(payload) == crc:
                                return payload
                except FileNotFoundError:
                    pass
                if self._read_seg == self._segments[-1]:
                    return None
                self._advance_segment()

    def ack(self) -> None:
        """Drop the record :meth:`peek` returned: it was delivered (or refused for good)."""
        with self._lock:
            with self._path(self._read_seg).open("rb") as f:
                f.seek(self._read_off)
                header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, _ = _HEADER.unpack(header)
            self._read_off += _HEADER.size + length
            self._save_cursor()

    def _advance_segment(self) -> None:
        done = self._segments.pop(0)
        self._path(done).unlink(missing_ok=True)
        self._read_seg, self._read_off = self._segments[0], 0
        self._save_cursor()

    def close(self) -> None:
        with self._lock:
            self._write.close()
