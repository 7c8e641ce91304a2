"""The common log model: what every decoder produces and what the logs table stores.

A *raw event* is whatever a decoder read off the wire: a ``dict`` whose keys may be in any
client's vocabulary (``msg``, ``lvl``, ``@timestamp``...). The pipeline's normalize stage turns
it into a *log record*: a ``dict`` with exactly the keys of :data:`LOG_FIELDS`, typed as
described there. Keeping both as plain dicts (instead of classes) keeps decoding cheap; the
writer turns a list of records into columns once per block.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "LOG_FIELDS",
    "LOG_TYPES",
    "SEVERITIES",
    "LogRecord",
    "float64_array",
    "severity_from_number",
    "severity_from_text",
]

LogRecord = dict[str, Any]

#: Canonical log record fields and their Python types.
#: ``attributes`` is flat (nested keys joined with dots) and holds str/int/float/bool values;
#: ``resource`` is flat str -> str (OTel resource attributes such as ``host.name``).
LOG_FIELDS: Final[dict[str, type]] = {
    "timestamp": int,  # ns since the epoch, UTC
    "observed_timestamp": int,  # ns since the epoch, UTC, when Stackwatch received it
    "project": str,
    "service": str,
    "severity_text": str,  # one of SEVERITIES' names
    "severity_number": int,  # OTel severity number 1..24 (0 = unspecified)
    "message": str,
    "trace_id": str,  # lowercase hex, "" when absent
    "span_id": str,  # lowercase hex, "" when absent
    "source": str,  # "path/to/file.py:42"
    "logger": str,
    "function": str,
    "host": str,
    "log_type": str,  # one of LOG_TYPES
    "attributes": dict,
    "resource": dict,
}

#: Log types drive retention tiers (see storage.retention).
LOG_TYPES: Final[tuple[str, ...]] = ("application", "web", "database", "security", "system")

#: Severity names and the OTel severity number of each name's first step
#: (https://opentelemetry.io/docs/specs/otel/logs/data-model/#field-severitynumber).
SEVERITIES: Final[dict[str, int]] = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "WARN": 13,
    "ERROR": 17,
    "FATAL": 21,
}

_ALIASES: Final[dict[str, str]] = {
    "TRACE": "TRACE",
    "FINEST": "TRACE",
    "FINER": "TRACE",
    "DEBUG": "DEBUG",
    "FINE": "DEBUG",
    "DBG": "DEBUG",
    "D": "DEBUG",
    "INFO": "INFO",
    "INFORMATION": "INFO",
    "INFORMATIONAL": "INFO",
    "NOTICE": "INFO",
    "LOG": "INFO",
    "I": "INFO",
    "WARN": "WARN",
    "WARNING": "WARN",
    "W": "WARN",
    "ERROR": "ERROR",
    "ERR": "ERROR",
    "E": "ERROR",
    "SEVERE": "ERROR",
    "FATAL": "FATAL",
    "CRITICAL": "FATAL",
    "CRIT": "FATAL",
    "ALERT": "FATAL",
    "EMERG": "FATAL",
    "EMERGENCY": "FATAL",
    "PANIC": "FATAL",
    "F": "FATAL",
}


def float64_array(values: list[Any]) -> Any:
    """Numbers as a float64 Arrow array, as the numeric attribute map stores them.

    Arrow refuses to convert an int above 2**53 to float64 (it would lose precision), which
    would fail a whole block over one 19-digit id; such ints are converted by Python instead,
    rounded like every JSON parser rounds them.
    """
    import pyarrow as pa

    try:
        return pa.array(values, pa.float64())
    except (pa.ArrowInvalid, OverflowError):
        return pa.array([float(v) for v in values], pa.float64())


def severity_from_text(text: str | None) -> tuple[str, int]:
    """Map any level spelling (``warning``, ``CRITICAL``, ``err``, ``Warn``) to the model.

    Unknown or empty text maps to INFO: a line with an odd level is still a line to keep.
    """
    if not text:
        return "INFO", SEVERITIES["INFO"]
    name = _ALIASES.get(str(text).strip().upper())
    if name is None:
        return "INFO", SEVERITIES["INFO"]
    return name, SEVERITIES[name]


def severity_from_number(number: int) -> tuple[str, int]:
    """Map an OTel severity number (1..24) to its name; 0 or out of range is INFO."""
    if not 1 <= number <= 24:
        return "INFO", SEVERITIES["INFO"]
    name = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")[(number - 1) // 4]
    return name, number
