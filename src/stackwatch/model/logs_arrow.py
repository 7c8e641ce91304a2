"""The log model's columnar form: a block of records as one Arrow table, the unit that is stored.

It belongs to the model, not to storage or the pipeline: the pipeline produces blocks in this
form (its columnar path is property-tested against :func:`records_to_arrow`), and the store
inserts them. Columns: the scalar fields of :data:`~stackwatch.model.logs.LOG_FIELDS`, the
attributes split by value type into ``attributes_string`` and ``attributes_number`` maps (so
numeric comparisons need no casts in SQL), and ``resource``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from stackwatch.model.logs import LogRecord, float64_array

__all__ = ["records_to_arrow"]

_TS = pa.timestamp("ns", tz="UTC")

_STRING_COLUMNS = (
    "project",
    "service",
    "severity_text",
    "message",
    "trace_id",
    "span_id",
    "source",
    "logger",
    "function",
    "host",
    "log_type",
)


def _map_array(offsets: list[int], keys: list[str], values: list[Any], value_type: pa.DataType) -> pa.Array:
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), pa.array(values, value_type)
    )


def records_to_arrow(records: Sequence[LogRecord]) -> pa.Table:
    """Turn normalized records into one columnar block, the unit the store inserts.

    Map columns are built from flat key/value lists and offsets in one pass over the
    records: converting per-row lists of pairs costs several times more.
    """
    columns: dict[str, pa.Array] = {
        "timestamp": pa.array([r["timestamp"] for r in records], pa.int64()).cast(_TS),
        "observed_timestamp": pa.array([r["observed_timestamp"] for r in records], pa.int64()).cast(_TS),
        "severity_number": pa.array([r["severity_number"] for r in records], pa.uint8()),
    }
    for name in _STRING_COLUMNS:
        columns[name] = pa.array([r[name] for r in records], pa.string())
    s_off, s_keys, s_vals = [0], [], []
    n_off, n_keys, n_vals = [0], [], []
    r_off, r_keys, r_vals = [0], [], []
    s_key, s_val, n_key, n_val = s_keys.append, s_vals.append, n_keys.append, n_vals.append
    for r in records:
        for key, value in r["attributes"].items():
            kind = type(value)
            if kind is str:
                s_key(key)
                s_val(value)
            elif kind is int or kind is float:
                n_key(key)
                n_val(value)
            elif kind is bool:
                s_key(key)
                s_val("true" if value else "false")
            elif value is not None:
                s_key(key)
                s_val(str(value))
        s_off.append(len(s_keys))
        n_off.append(len(n_keys))
        resource = r["resource"]
        if resource:
            r_keys.extend(resource.keys())
            r_vals.extend(resource.values())
        r_off.append(len(r_keys))
    columns["attributes_string"] = _map_array(s_off, s_keys, s_vals, pa.string())
    columns["attributes_number"] = pa.MapArray.from_arrays(
        pa.array(n_off, pa.int32()), pa.array(n_keys, pa.string()), float64_array(n_vals)
    )
    columns["resource"] = _map_array(r_off, r_keys, r_vals, pa.string())
    return pa.table(columns)
