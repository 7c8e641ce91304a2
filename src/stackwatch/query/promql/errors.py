"""PromQL errors.

One small hierarchy, so the HTTP layer can map each kind to Prometheus's ``errorType``::

    PromQLError
    ├── ParseError        -> errorType "bad_data" (HTTP 400)
    └── EvaluationError   -> errorType "execution" (HTTP 422)
        ├── TooManySamples  (still "execution", as Prometheus reports it)
        └── QueryTimeout    -> errorType "timeout" (HTTP 503)

Messages match Prometheus's wording where its tests compare them, so a client that
greps an error (Grafana does, for a few) sees the same text.
"""

from __future__ import annotations

__all__ = ["EvaluationError", "ParseError", "PromQLError", "QueryTimeout", "TooManySamples"]


class PromQLError(Exception):
    """Base class of every error the engine raises on purpose."""

    error_type = "execution"


class ParseError(PromQLError):
    """The query text is not valid PromQL (or uses a construct the engine rejects)."""

    error_type = "bad_data"


class EvaluationError(PromQLError):
    """The query is valid but cannot be evaluated on this data."""

    error_type = "execution"


class TooManySamples(EvaluationError):
    """Evaluation would hold more samples in memory than ``max_samples`` allows."""

    def __init__(self, where: str = "expression evaluation") -> None:
        super().__init__(f"query processing would load too many samples into memory in {where}")


class QueryTimeout(EvaluationError):
    """Evaluation ran past the engine's ``timeout_s``."""

    error_type = "timeout"

    def __init__(self, where: str = "expression evaluation") -> None:
        super().__init__(f"query timed out in {where}")
