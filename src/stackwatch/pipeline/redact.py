"""Redact: the pipeline stage around :class:`stackwatch.redaction.Redactor`.

The rules live in :mod:`stackwatch.redaction` because the in-app SDK applies the same ones
before logs leave the app; the server applies them again because not every sender uses the
SDK (shippers, syslog, OTLP from other languages).

Besides the per-record stage, this module redacts columns for
:meth:`~stackwatch.pipeline.pipeline.Pipeline.process_to_arrow`: credential-named attributes
are masked per key (a block shares its keys), and the text rules run only on the strings that
the redactor's RE2 gate flags in one scan over a whole Arrow string array, since most log text
holds no secret and the rules cost microseconds per string.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import re2

from stackwatch.pipeline.normalize import Block
from stackwatch.pipeline.stage import BatchContext, mark_error
from stackwatch.redaction import REDACTED, RedactionConfig, Redactor

__all__ = ["RedactStage"]

_NO_GATE: Any = object()  # a deny pattern: every string is a candidate


def _holds_card_length_int(column: list[Any]) -> bool:
    """Whether an int column holds a number long enough to be a card's (13 digits or more)."""
    try:
        return max(column, default=0) >= 1_000_000_000_000  # a C loop: most columns hold no None
    except TypeError:  # None among the ints
        return any(v is not None and v >= 1_000_000_000_000 for v in column)


class RedactStage:
    """Redacts each record's message and attributes in place.

    Fails closed: if redaction raises on a record, its message and string attributes are
    replaced by ``[REDACTED]`` rather than stored as they came, since storing a secret cannot
    be undone and a lost debug line can.
    """

    name = "redact"

    def __init__(self, config: RedactionConfig | Redactor | None = None) -> None:
        self.redactor = config if isinstance(config, Redactor) else Redactor(config)
        self._gate: Any = None

    def __call__(self, batch: list[dict[str, Any]], context: BatchContext) -> list[dict[str, Any]]:
        if not self.redactor.enabled:
            return batch
        redact = self.redactor.redact_record_inplace
        for record in batch:
            try:
                redact(record)
            except Exception as exc:
                record["message"] = REDACTED
                attributes = record.get("attributes")
                if isinstance(attributes, dict):
                    for key, value in attributes.items():
                        if isinstance(value, str):
                            attributes[key] = REDACTED
                else:
                    record["attributes"] = {}
                mark_error(record, self.name, exc)
        return batch

    # ------------------------------------------------------------------ columns

    def redact_block(self, block: Block) -> list[Block]:
        """Mask a block's credential-named attributes and mark what the text rules must see.

        What :meth:`Redactor.redact_record_inplace` does per record, per column: the keys are
        the block's, so each decision is taken once. Strings are only marked here
        (``pending_text``, ``pending_message``); :meth:`redact_array` runs the rules on them
        later, over the whole batch at once. Returns several blocks when an allow-list keeps
        some numbers of a masked column and not others (the map column they go to differs).
        """
        redactor = self.redactor
        if not redactor.enabled:
            return [block]
        n = len(block)
        pending: list[str] = []
        allow = bool(redactor.config.allow)
        for key, (column, cls) in list(block.attributes.items()):
            if redactor.is_sensitive_key(key):
                if cls is bool:
                    continue  # booleans say nothing secret
                if not allow:
                    block.attributes[key] = ([REDACTED] * n, str)
                    continue
                masked = [redactor.mask_sensitive(v) for v in column]
                classes = set(map(type, masked))
                if len(classes) > 1:
                    parts = block.split([v.__class__ for v in masked])
                    return [piece for part in parts for piece in self.redact_block(part)]
                block.attributes[key] = (masked, classes.pop())
            elif cls is str and redactor.is_scanned_key(key):
                pending.append(key)
            elif cls is int and _holds_card_length_int(column):
                # A card number logged as a JSON number: masked like one in a string.
                masked = [redactor.mask_number(v) for v in column]
                classes = {v.__class__ for v in masked if v is not None}
                if len(classes) > 1:
                    parts = block.split([v.__class__ for v in masked])
                    return [piece for part in parts for piece in self.redact_block(part)]
                if classes == {str}:
                    block.attributes[key] = (masked, str)
        block.pending_text = frozenset(pending)
        block.pending_message = True
        return [block]

    def candidates(self, values: pa.StringArray) -> np.ndarray:
        """Indices of the strings the text rules might change: a superset, sorted.

        One RE2 scan over the array's UTF-8 bytes. A match that straddles two strings marks
        every string it touches, so no string holding a match of its own is missed.
        """
        n = len(values)
        gate = self._compiled_gate()
        if gate is _NO_GATE:
            return np.arange(n)
        data = values.buffers()[2]
        if n == 0 or data is None:
            return np.zeros(0, dtype=np.intp)
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1, offset=values.offset * 4)
        blob = data.to_pybytes()[offsets[0] : offsets[-1]]
        spans = [m.span() for m in gate.finditer(blob)]
        if not spans:
            return np.zeros(0, dtype=np.intp)
        bounds = np.asarray(spans, dtype=np.int64) + offsets[0]
        first = np.searchsorted(offsets, bounds[:, 0], side="right") - 1
        last = np.searchsorted(offsets, bounds[:, 1] - 1, side="right") - 1
        rows = [first]
        for a, b in zip(first[first != last].tolist(), last[first != last].tolist(), strict=True):
            rows.append(np.arange(a + 1, b + 1))
        return np.unique(np.concatenate(rows))

    def redact_array(self, values: pa.StringArray, eligible: np.ndarray | None = None) -> pa.StringArray:
        """``values`` with the text rules applied to the strings where ``eligible`` is True.

        Exactly :meth:`Redactor.redact_text` on each eligible string; only those the gate
        flags are looked at, the others are known to come out unchanged.
        """
        if not self.redactor.enabled:
            return values
        rows = self.candidates(values)
        if eligible is not None and len(rows):
            rows = rows[eligible[rows]]
        if not len(rows):
            return values
        redact = self.redactor.redact_text
        old = values.take(pa.array(rows)).to_pylist()
        new = [redact(v) for v in old]
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if not changed:
            return values
        mask = np.zeros(len(values), dtype=bool)
        mask[rows[changed]] = True
        return pc.replace_with_mask(values, pa.array(mask), pa.array([new[i] for i in changed], pa.string()))

    def redact_strings(self, values: list[str]) -> list[str]:
        """:meth:`redact_array` for a Python list (e.g. user agents needed before the block is built)."""
        if not self.redactor.enabled or not values:
            return values
        array = pa.array(values, pa.string())
        redacted = self.redact_array(array)
        return values if redacted is array else redacted.to_pylist()

    def _compiled_gate(self) -> Any:
        if self._gate is None:
            pattern = self.redactor.gate_pattern()
            if pattern is None:
                self._gate = _NO_GATE
            else:
                options = re2.Options()
                options.max_mem = 64 << 20  # the gate's DFA is large; less memory thrashes it
                self._gate = re2.compile(pattern, options)
        return self._gate
