"""The common shape of a classic-format import body, read by the embedded ClickHouse engine.

The numpy reader (:mod:`._prom_fast`) holds the GIL for about 1.6 µs a sample, and an import
runs on the server's one Python core: that capped ``POST /api/v1/import/prometheus`` near
0.5 M samples/s. The embedded engine splits the same lines, converts the numbers and groups
the samples by series text in about 0.5 µs a sample, and releases the GIL while it does, so
the HTTP handling, the WAL and the batcher keep running beside it.

What it accepts is what the line parser accepts, or it declines (returns None) and the body
takes the numpy reader, then the line parser, which names any line at fault:

* values go through ``toFloat64OrNull`` with ``precise_float_parsing`` (correctly rounded,
  bit for bit what ``float()`` gives; a hypothesis test keeps it so). The engine also reads
  ``infinity`` and ``±nan``, which Prometheus's grammar does not, so a non-finite value counts
  only when it is spelled ``inf``, ``+inf``, ``-inf`` or ``nan`` in any case;
* timestamps must be integers in their canonical spelling (no ``+``, no leading zeros):
  anything else declines;
* the series text before the value is parsed by Python, once per distinct series, with the
  line parser's own rules.

Samples of a series keep their order in the body (one thread, ``groupArray`` appends in row
order), so the last of two samples with equal timestamps still wins downstream; series come
in the order of their first line, as the other readers give them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from stackwatch.ingest._prom_fast import FastLines

__all__ = ["SqlLineReader"]

# ``local`` is the one-row Arrow table (the body) that ChdbExecutor.query_local exposes to the
# engine; the engine splits the lines too, so Python touches no line. Comment lines come back
# as their own groups, flagged.
_SQL = """
SELECT key, groupArray(ts) AS ts, groupArray(v) AS v, min(ok) AS ok, min(row) AS first, any(comment) AS comment
FROM (
    SELECT rowNumberInAllBlocks() AS row, startsWith(line, '#') AS comment, splitByChar(' ', line) AS parts,
           if(comment, line, arrayStringConcat(arraySlice(parts, 1, -2), ' ')) AS key,
           toInt64OrNull(parts[-1]) AS ts_n,
           toFloat64OrNull(parts[-2]) AS v_n,
           assumeNotNull(ts_n) AS ts,
           assumeNotNull(v_n) AS v,
           comment OR (length(parts) >= 3 AND isNotNull(ts_n) AND toString(ts) = parts[-1] AND isNotNull(v_n)
               AND (isFinite(v) OR lower(parts[-2]) IN ('inf', '+inf', '-inf', 'nan'))) AS ok
    FROM (SELECT arrayJoin(splitByChar('\\n', assumeNotNull(body))) AS line FROM Python(local))
    WHERE line != ''
)
GROUP BY key
ORDER BY first
SETTINGS max_threads = 1, precise_float_parsing = 1, output_format_arrow_string_as_string = 0
"""


#: Smaller bodies are left to numpy. The query costs about 7.5 ms whatever the body (planning,
#: handing the body over), measured on 1 to 1,000 lines (123 B to 123 kB), where numpy takes
#: 0.3-0.9 ms; at 10,000 lines (1.2 MB) 11 ms against 7.7; at 97,920 lines (11.8 MB) 58-66 ms
#: against 99-115. Below the break-even the engine would also be held for nothing.
MIN_BODY_BYTES = 2 << 20


class SqlLineReader:
    """A :data:`~stackwatch.ingest.prom_text.LineReader` that runs on an embedded chDB executor."""

    def __init__(self, executor: Any, min_bytes: int = MIN_BODY_BYTES) -> None:
        self.ex = executor
        self.min_bytes = min_bytes

    def __call__(self, body: bytes) -> FastLines | None:
        if len(body) < max(1, self.min_bytes) or len(body) >= 2**31:  # 32-bit Arrow offsets
            return None
        if b"\t" in body or b"\r" in body:
            return None
        offsets = np.array([0, len(body)], dtype=np.int32)
        one = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(body)])
        result = self.ex.query_local(_SQL, pa.table({"body": one}))
        empty = np.empty(0, dtype=np.int64)
        if not result.num_rows:
            return FastLines([], empty, empty, np.empty(0, dtype=np.float64), [])
        if not all(result.column("ok").to_pylist()):
            return None
        texts = result.column("key").to_pylist()
        flags = result.column("comment").to_pylist()
        comments = [text for text, comment in zip(texts, flags, strict=True) if comment]
        if comments:
            samples = [i for i, comment in enumerate(flags) if not comment]
            result = result.take(pa.array(samples, pa.int64()))
            texts = [texts[i] for i in samples]
        if not texts:
            return FastLines([], empty, empty, np.empty(0, dtype=np.float64), comments)
        ts_col = result.column("ts").combine_chunks()
        v_col = result.column("v").combine_chunks()
        counts = np.diff(np.asarray(ts_col.offsets))
        series = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
        return FastLines(texts, series, np.asarray(ts_col.flatten()), np.asarray(v_col.flatten()), comments)
