"""Prometheus durations (``1h30m``, ``5m``, ``90s``, ``1d``) as integer milliseconds, and back.

Rule files, unit-test files and the API all speak this notation, so one parser serves them all
and its error messages are the same wherever a bad duration appears.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNIT_MS = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000,
            "s": 1000, "ms": 1}
_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")


def parse_duration(text: object) -> int:
    """Milliseconds of a Prometheus duration; ``ValueError`` naming the text when it is not one.

    Units must come largest first and at most once each (``1h30m``, not ``30m1h``), as in
    Prometheus's ``model.ParseDuration``; a bare ``0`` is allowed.
    """
    s = str(text).strip()
    if s == "0":
        return 0
    pos, total, last = 0, 0, -1
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        rank = _ORDER.index(m.group(2))
        if rank <= last:
            raise ValueError(f'not a valid duration string: "{s}"')
        last = rank
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f'not a valid duration string: "{s}"')
    return total


def format_duration(ms: int) -> str:
    """The shortest Prometheus spelling of ``ms`` (``3600000`` -> ``1h``), ``0s`` for zero."""
    if ms == 0:
        return "0s"
    out = []
    rest = int(ms)
    for unit in _ORDER:
        size = _UNIT_MS[unit]
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
