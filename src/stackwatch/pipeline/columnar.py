"""The pipeline on columns: a batch of raw events straight to the storage block.

:meth:`Pipeline.process <stackwatch.pipeline.pipeline.Pipeline.process>` builds one dict per
event and :func:`~stackwatch.model.logs_arrow.records_to_arrow` then takes them apart again into
columns; at ingest rates that Python-per-event work is the bottleneck (design principle 6).
:func:`process_to_arrow` returns the same table, computed per column wherever events allow:

1. **parse**: one regex pass over all bodies joined finds the few events a format could match
   (:meth:`Parser.candidates`); only those go through the parse stage.
2. **normalize**: events are grouped by key tuple and shape into :class:`Block` s
   (:func:`~stackwatch.pipeline.normalize.normalize_rows`); events it does not model exactly
   take the per-event stages (normalize, redact, enrich), like ``process`` does.
3. **redact**: credential-named attributes are masked per key; the text rules run only on the
   strings the redactor's RE2 gate flags, in one scan per column of the whole batch.
4. **enrich**: service maps, user agents and IPs are looked up once per distinct value.
5. **build**: each column is converted to Arrow once for the whole batch (blocks in turn,
   then the per-event records), map columns from flat key/value lists and per-row counts,
   and one ``take`` restores the batch's order. Work that has a fixed cost per call (numpy
   timestamp parsing, Arrow conversions, RE2 scans) is done once per batch, not per block,
   so that batches with many small shapes stay fast.

Every step is checked against ``records_to_arrow(process(...))`` by property tests. When a
block step meets something only the record path handles exactly (an exception a stage would
have caught and marked on the record), the whole batch takes the record path from step 2 on.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa

from stackwatch.model.logs import LogRecord, float64_array
from stackwatch.model.logs_arrow import records_to_arrow
from stackwatch.pipeline.enrich import Enricher
from stackwatch.pipeline.normalize import (
    _BLOCK_TEXT,
    MIN_BLOCK,
    Block,
    Normalizer,
    _template,
    group_by_keys,
    normalize_rows,
    resolve_timestamps,
)
from stackwatch.pipeline.parse import Parser
from stackwatch.pipeline.redact import RedactStage
from stackwatch.pipeline.stage import BatchContext

__all__ = ["process_to_arrow"]

_TS: Final = pa.timestamp("ns", tz="UTC")
_TEXT_COLUMNS: Final = _BLOCK_TEXT  # one string per event, as the normalizer's blocks hold them
_BOOL_TEXT: Final = {True: "true", False: "false"}


def process_to_arrow(
    parser: Parser,
    normalizer: Normalizer,
    redact: RedactStage,
    enricher: Enricher,
    raw_events: list[dict[str, Any]],
    context: BatchContext,
) -> pa.Table:
    """Run the default stages over ``raw_events`` and return the storage block (see module doc)."""
    events = list(raw_events)
    groups = group_by_keys(events)
    candidates = parser.candidates(events, groups)
    if candidates:
        for i, event in zip(candidates, parser([events[i] for i in candidates], context), strict=True):
            events[i] = event
        groups = _regroup(events, groups, candidates)
    template = _template(context.project, context.observed_ns, context.defaults)
    blocks: list[Block] = []
    slow: list[int] = []
    for keys, indices in groups.items():
        if keys and len(indices) >= MIN_BLOCK:
            blocks.extend(normalize_rows([events[i] for i in indices], indices, template, slow))
        else:
            slow.extend(indices)
    blocks, failed = resolve_timestamps(blocks, context.observed_ns)
    slow.extend(failed)
    try:
        parts = [piece for block in blocks for piece in _redact_and_enrich(block, redact, enricher)]
        records = [normalizer.normalize_event(events[i], template, context) for i in slow]
        enricher(redact(records, context), context)
        table = _build(parts, records, context, redact)
    except _RecordPath:
        return records_to_arrow(enricher(redact(normalizer(events, context), context), context))
    positions = np.fromiter(
        itertools.chain(itertools.chain.from_iterable(b.positions for b in parts), slow),
        dtype=np.int64,
        count=table.num_rows,
    )
    if not np.array_equal(positions, np.arange(table.num_rows)):
        inverse = np.empty_like(positions)
        inverse[positions] = np.arange(table.num_rows)
        table = table.take(pa.array(inverse))
    return table


class _RecordPath(Exception):
    """A block step met a case only the per-record stages handle exactly."""


def _regroup(
    events: list[Any], groups: dict[tuple[str, ...], list[int]], moved: list[int]
) -> dict[tuple[str, ...], list[int]]:
    """Groups after parsing replaced the events at ``moved`` (their keys changed)."""
    moved_set = set(moved)
    out: dict[tuple[str, ...], list[int]] = {}
    for keys, indices in groups.items():
        kept = [i for i in indices if i not in moved_set] if not moved_set.isdisjoint(indices) else indices
        if kept:
            out[keys] = kept
    for keys, indices in group_by_keys([events[i] for i in moved]).items():
        out.setdefault(keys, []).extend(moved[i] for i in indices)
    return out


def _redact_and_enrich(block: Block, redact: RedactStage, enricher: Enricher) -> list[Block]:
    """Mask and mark a block's attributes, then enrich it (see RedactStage.redact_block).

    Enrichment reads user agents and IPs as the record path does, after redaction, so those
    columns take the text rules here rather than when the batch is built.
    """
    read = enricher.read_attributes
    out: list[Block] = []
    try:
        for part in redact.redact_block(block):
            early = [key for key in read if key in part.pending_text]
            for key in early:
                column, cls = part.attributes[key]
                part.attributes[key] = (redact.redact_strings(list(column)), cls)
            if early:
                part.pending_text = part.pending_text.difference(early)
            out.extend(enricher.enrich_block(part))
    except Exception as exc:  # the record path marks what raised on the record itself
        raise _RecordPath from exc
    return out


def _build(
    blocks: list[Block], records: list[LogRecord], context: BatchContext, redact: RedactStage
) -> pa.Table:
    """The table of the blocks' rows, then the records', with the columns of records_to_arrow.

    Each column is one Python list for the whole batch, converted once; text the redact step
    left pending takes the rules here, one gate scan per column.
    """
    n = sum(len(b) for b in blocks) + len(records)
    timestamps = [b.timestamp for b in blocks]
    timestamps.append([r["timestamp"] for r in records])
    columns: dict[str, pa.Array] = {
        "timestamp": pa.concat_arrays([pa.array(t, pa.int64()) for t in timestamps]).cast(_TS),
        "observed_timestamp": pa.repeat(pa.scalar(context.observed_ns, _TS), n),
        "severity_number": pa.array(_joined(blocks, records, "severity_number"), pa.uint8()),
        "project": pa.repeat(pa.scalar(context.project, pa.string()), n),
        "severity_text": _strings(_joined(blocks, records, "severity_text")),
    }
    for name in _TEXT_COLUMNS:
        columns[name] = _strings(_joined(blocks, records, name))
    pending = np.zeros(n, dtype=bool)
    start = 0
    for block in blocks:
        pending[start : start + len(block)] = block.pending_message
        start += len(block)
    try:
        columns["message"] = redact.redact_array(columns["message"], pending)
        columns.update(_maps(blocks, records, redact))
    except Exception as exc:
        raise _RecordPath from exc
    schema = _schema()
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _strings(column: list[str]) -> pa.Array:
    """A string array; a column of one repeated object (a default) is converted once."""
    first = column[0] if column else None
    # Identity, not equality, on the last value: only columns of one object are worth
    # counting; distinct equal strings would be compared one by one.
    if first is not None and column[-1] is first and column.count(first) == len(column):
        return pa.repeat(pa.scalar(first, pa.string()), len(column))
    return pa.array(column, pa.string())


@functools.cache
def _schema() -> pa.Schema:
    """The storage block's schema, as records_to_arrow defines it (one source of truth)."""
    return records_to_arrow([]).schema


def _joined(blocks: Sequence[Block], records: Sequence[LogRecord], name: str) -> list[Any]:
    """One field of every row, blocks first (in order), then the per-event records."""
    out: list[Any] = []
    if name == "severity_text" or name == "severity_number":
        for block in blocks:
            out.extend(getattr(block, name))
    else:
        for block in blocks:
            out.extend(block.text[name])
    out.extend(r[name] for r in records)
    return out


def _maps(blocks: Sequence[Block], records: Sequence[LogRecord], redact: RedactStage) -> dict[str, pa.Array]:
    """The three map columns, from flat key/value lists and per-row counts.

    A block's rows share their keys, so its flat values are its columns interleaved
    (``chain(zip(*columns))``) and its keys the ids of its key list, tiled: the key column is
    taken from the few distinct keys, not converted string by string. Strings still pending
    the text rules are flagged, and redacted in one pass over the flat values.
    """
    s_ids: dict[str, int] = {}
    n_ids: dict[str, int] = {}
    s_keys: list[int] = []  # key ids, one per flat value
    n_keys: list[int] = []
    s_vals: list[str] = []
    n_vals: list[Any] = []
    s_pending: list[bool] = []
    s_counts: list[int] = []
    n_counts: list[int] = []
    sizes: list[int] = []
    for block in blocks:
        size = len(block)
        strings: list[tuple[str, Sequence[Any], bool]] = []
        numbers: list[tuple[str, Sequence[Any]]] = []
        for key, (column, cls) in block.attributes.items():
            if cls is str:
                strings.append((key, column, key in block.pending_text))
            elif cls is bool:
                strings.append((key, list(map(_BOOL_TEXT.__getitem__, column)), False))
            else:
                numbers.append((key, column))
        if strings:
            s_keys.extend([s_ids.setdefault(key, len(s_ids)) for key, _, _ in strings] * size)
            s_vals.extend(itertools.chain.from_iterable(zip(*[c for _, c, _ in strings], strict=True)))
            s_pending.extend([p for _, _, p in strings] * size)
        if numbers:
            n_keys.extend([n_ids.setdefault(key, len(n_ids)) for key, _ in numbers] * size)
            n_vals.extend(itertools.chain.from_iterable(zip(*[c for _, c in numbers], strict=True)))
        sizes.append(size)
        s_counts.append(len(strings))
        n_counts.append(len(numbers))
    r_keys: list[str] = []
    r_vals: list[str] = []
    tail_s: list[int] = []
    tail_n: list[int] = []
    tail_r: list[int] = []
    s_id, n_id = s_ids.setdefault, n_ids.setdefault
    for r in records:
        s_before, n_before = len(s_keys), len(n_keys)
        for key, value in r["attributes"].items():
            kind = type(value)
            if kind is str:
                s_keys.append(s_id(key, len(s_ids)))
                s_vals.append(value)
            elif kind is int or kind is float:
                n_keys.append(n_id(key, len(n_ids)))
                n_vals.append(value)
            elif kind is bool:
                s_keys.append(s_id(key, len(s_ids)))
                s_vals.append("true" if value else "false")
            elif value is not None:
                s_keys.append(s_id(key, len(s_ids)))
                s_vals.append(str(value))
        tail_s.append(len(s_keys) - s_before)
        tail_n.append(len(n_keys) - n_before)
        resource = r["resource"]
        if resource:
            r_keys.extend(resource.keys())
            r_vals.extend(resource.values())
        tail_r.append(len(resource) if resource else 0)
    s_pending.extend([False] * (len(s_vals) - len(s_pending)))  # records are redacted already
    values = redact.redact_array(pa.array(s_vals, pa.string()), np.array(s_pending, dtype=bool))

    def counts(per_block: list[int], tail: list[int]) -> np.ndarray:
        return np.concatenate(
            [np.repeat(np.asarray(per_block, dtype=np.int64), sizes), np.asarray(tail, dtype=np.int64)]
        )

    def keys(ids: dict[str, int], flat: list[int]) -> pa.Array:
        return pa.array(list(ids), pa.string()).take(pa.array(flat, pa.int32()))

    return {
        "attributes_string": _map(counts(s_counts, tail_s), keys(s_ids, s_keys), values),
        "attributes_number": _map(
            counts(n_counts, tail_n), keys(n_ids, n_keys), float64_array(n_vals)
        ),
        "resource": _map(
            counts([0] * len(sizes), tail_r), pa.array(r_keys, pa.string()), pa.array(r_vals, pa.string())
        ),
    }


def _map(counts: np.ndarray, keys: pa.Array, values: pa.Array) -> pa.Array:
    """A map array from each row's number of entries and the flat keys and values."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values)
