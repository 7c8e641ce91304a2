"""Number formatting the way Prometheus (Go's ``strconv``) prints it.

Clients compare strings: the HTTP API sends sample values as strings, and
``count_values`` puts a formatted value into a label, so "shortest round-trip
digits in Go's layout" matters, not just the numeric value.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np


def _shortest(x: float) -> str:
    return repr(float(x))  # Python's repr is the shortest round-trip form, like Go's -1 precision


def format_go_f(x: float) -> str:
    """``strconv.FormatFloat(x, 'f', -1, 64)``: plain decimal, never an exponent."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    s = format(Decimal(_shortest(x)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def format_go_e(x: float) -> str:
    """``strconv.FormatFloat(x, 'e', -1, 64)``: shortest digits, exponent with >= 2 digits."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    mant, _, exp = f"{Decimal(_shortest(x)):e}".partition("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    sign = "-" if exp.startswith("-") else "+"
    digits = exp.lstrip("+-").lstrip("0") or "0"
    return f"{mant}e{sign}{digits.zfill(2)}"


def format_go_v(x: float) -> str:
    """``fmt.Sprintf("%v", x)`` for a float64 (``'g'`` with the exponent cut-offs Go uses)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    exp = math.floor(math.log10(abs(x)))
    if exp < -4 or exp >= 21:
        return format_go_e(x)
    return format_go_f(x)


def format_sample_value(x: float) -> str:
    """A sample value as the Prometheus HTTP API renders it (``"NaN"``, ``"+Inf"``, ``"0.25"``)."""
    r = repr(x)
    if "e" not in r and "n" not in r:  # plain decimal already (not inf/nan): Go's 'f' digits
        return r[:-2] if r.endswith(".0") else r
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    a = abs(x)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        return format_go_e(x)
    return format_go_f(x)


def format_timestamps(ms: np.ndarray) -> list[float | int]:
    """:func:`format_timestamp` of a whole array (range-query results have thousands)."""
    if ms.size and not (ms % 1000).any():
        return (ms // 1000).tolist()  # type: ignore[no-any-return]
    return [format_timestamp(int(t)) for t in ms.tolist()]


def format_timestamp(ms: int) -> float | int:
    """A timestamp as the HTTP API renders it: seconds, with millisecond fraction."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000
