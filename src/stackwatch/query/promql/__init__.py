"""PromQL: a numpy-vectorised evaluation engine over a narrow storage interface.

Parsing is done by ``promql-parser``; evaluation is ours. Use::

    from stackwatch.query.promql import Engine, MemoryStorage

    store = MemoryStorage()
    store.add({"__name__": "up", "job": "api"}, 0, 1.0)
    result = Engine(store).instant("up", 60_000)
    result.to_prometheus_json()  # {"resultType": "vector", "result": [...]}
"""

from .engine import Engine, Result, SeriesResult
from .errors import EvaluationError, ParseError, PromQLError, QueryTimeout, TooManySamples
from .storage import STALE_NAN, Matcher, MemoryStorage, Querier, Series, SeriesSet, is_stale_nan

__all__ = [
    "STALE_NAN",
    "Engine",
    "EvaluationError",
    "Matcher",
    "MemoryStorage",
    "ParseError",
    "PromQLError",
    "Querier",
    "QueryTimeout",
    "Result",
    "Series",
    "SeriesResult",
    "SeriesSet",
    "TooManySamples",
    "is_stale_nan",
]
