"""Log processing: parse, normalize, redact, enrich (see :mod:`stackwatch.pipeline.pipeline`).

The ``normalize`` *function* is deliberately not re-exported here: it would shadow the
``stackwatch.pipeline.normalize`` module; import it from there.
"""

from stackwatch.pipeline.enrich import EnrichConfig, Enricher, ServiceMapRule
from stackwatch.pipeline.normalize import Normalizer, parse_timestamp
from stackwatch.pipeline.parse import ParseConfig, Parser, RegexRule, parse_access_log_line
from stackwatch.pipeline.pipeline import Pipeline, PipelineConfig
from stackwatch.pipeline.redact import RedactStage
from stackwatch.pipeline.stage import ERROR_ATTRIBUTE, BatchContext, Stage, mark_error
from stackwatch.pipeline.syslog import parse_syslog

__all__ = [
    "ERROR_ATTRIBUTE",
    "BatchContext",
    "EnrichConfig",
    "Enricher",
    "Normalizer",
    "ParseConfig",
    "Parser",
    "Pipeline",
    "PipelineConfig",
    "RedactStage",
    "RegexRule",
    "ServiceMapRule",
    "Stage",
    "mark_error",
    "parse_access_log_line",
    "parse_syslog",
    "parse_timestamp",
]
