"""A minimal MaxMind DB writer for tests, following the published format spec
(https://maxmind.github.io/MaxMind-DB/): a binary search tree over the address bits,
a 16-byte separator, a data section, then the metadata map after a marker."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _control(kind: int, size: int) -> bytes:
    if size < 29:
        first, extra = size, b""
    elif size < 285:
        first, extra = 29, bytes([size - 29])
    elif size < 65_821:
        first, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        first, extra = 31, (size - 65_821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | first]) + extra
    return bytes([first, kind - 7]) + extra  # extended type


def _uint(kind: int, value: int) -> bytes:
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return _control(kind, len(payload)) + payload


class U16(int):
    """An int the encoder writes as uint16 (metadata fields require it)."""


class U64(int):
    """An int the encoder writes as uint64."""


def encode(value: Any) -> bytes:
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, U16):
        return _uint(5, value)
    if isinstance(value, U64):
        return _uint(9, value)
    if isinstance(value, int):
        return _uint(6, value)  # uint32
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {value!r}")


def write_mmdb(path: Path, networks: dict[str, dict[str, Any]]) -> Path:
    """Write an IPv4 database mapping each CIDR network to its record."""
    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    data = b""
    for cidr, record in networks.items():
        network = ipaddress.IPv4Network(cidr)
        offset = len(data)
        data += encode(record)
        address, length = int(network.network_address), network.prefixlen
        node = 0
        for depth in range(length):
            bit = (address >> (31 - depth)) & 1
            if depth == length - 1:
                nodes[node][bit] = ("data", offset)
                break
            child = nodes[node][bit]
            if child is None or child[0] != "node":
                nodes.append([None, None])
                child = ("node", len(nodes) - 1)
                nodes[node][bit] = child
            node = child[1]
    count = len(nodes)

    def record_value(entry: tuple[str, int] | None) -> int:
        if entry is None:
            return count
        kind, value = entry
        return value if kind == "node" else count + 16 + value

    tree = b"".join(
        record_value(left).to_bytes(3, "big") + record_value(right).to_bytes(3, "big")
        for left, right in nodes
    )
    metadata = {
        "node_count": count,
        "record_size": U16(24),
        "ip_version": U16(4),
        "database_type": "Stackwatch-Test-City",
        "languages": ["en"],
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(1_700_000_000),
        "description": {"en": "test database"},
    }
    path.write_bytes(tree + b"\x00" * 16 + data + _METADATA_MARKER + encode(metadata))
    return path
