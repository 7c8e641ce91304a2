"""The log pipeline: parse, normalize, redact, enrich, as a list of same-signature stages.

``Pipeline(config).process(raw_events, project=..., observed_ns=...)`` takes a batch of raw
events as decoded by an ingest protocol and returns one canonical log record per event, in
order. Events are never dropped: a stage that fails on one event leaves it as processed so
far and records the failure in attribute ``pipeline.error``.

Configuration, as loaded from YAML (every stage on by default, except GeoIP)::

    parse:
      json: true
      access_log: true
      syslog: true
      regex:
        - {pattern: '^(?P<ts>\\S+) (?P<level>\\w+) (?P<msg>.*)$', log_type: application}
    redact:
      enabled: true
      rules: [email, card, ...]        # default: all (see stackwatch.redaction.RULE_NAMES)
      allow: ['support@example\\.com']
      deny: ['CUST-\\d{6}']
      extra_sensitive_keys: [ssn]
      safe_keys: [token_bucket]
    enrich:
      service_map:
        - {match_host: '^web-\\d+$', service: nginx}
      user_agent: true
      geoip_db: null                   # path to a MaxMind DB (GeoLite2-City.mmdb)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from stackwatch.errors import ConfigError
from stackwatch.model.logs import LogRecord
from stackwatch.model.logs_arrow import records_to_arrow
from stackwatch.pipeline.columnar import process_to_arrow
from stackwatch.pipeline.enrich import EnrichConfig, Enricher
from stackwatch.pipeline.normalize import Normalizer
from stackwatch.pipeline.parse import ParseConfig, Parser
from stackwatch.pipeline.redact import RedactStage
from stackwatch.pipeline.stage import BatchContext, Stage, gc_paused
from stackwatch.redaction import RedactionConfig

__all__ = ["Pipeline", "PipelineConfig"]

_SECTIONS = {"parse": ParseConfig, "redact": RedactionConfig, "enrich": EnrichConfig}
_SLICE = 5000  # events per process_to_arrow pass, see there


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline's settings: one frozen object, defaults in code."""

    parse: ParseConfig = field(default_factory=ParseConfig)
    redact: RedactionConfig = field(default_factory=RedactionConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PipelineConfig:
        """Build from a mapping as loaded from YAML.

        Raises :class:`~stackwatch.errors.ConfigError` naming the key and the value that is
        wrong, so a bad config stops start-up with a message that says what to fix.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"pipeline: expected a mapping, got {data!r}")
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ConfigError(f"pipeline: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
        sections: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            value = data.get(name)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"pipeline.{name}: expected a mapping, got {value!r}")
            try:
                sections[name] = section_cls.from_dict(value)  # type: ignore[attr-defined]
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"pipeline.{name}: {exc}") from None
        return cls(**sections)


class Pipeline:
    """Runs a batch of raw events through the stages and returns canonical log records.

    ``stages`` replaces the default list (parse, normalize, redact, enrich); each stage is a
    callable ``(batch, BatchContext) -> batch`` that returns one event per input event.
    """

    def __init__(
        self, config: PipelineConfig | None = None, *, stages: Sequence[Stage] | None = None
    ) -> None:
        self.config = config or PipelineConfig()
        self._default_stages: tuple[Stage, ...] = ()
        if stages is not None:
            self.stages: list[Stage] = list(stages)
            return
        try:
            enricher = Enricher(self.config.enrich)
        except Exception as exc:  # missing file, not a MaxMind DB, unreadable: all stop start-up
            raise ConfigError(
                f"pipeline.enrich.geoip_db: cannot open {self.config.enrich.geoip_db!r}: {exc}"
            ) from None
        self.stages = [Parser(self.config.parse), Normalizer(), RedactStage(self.config.redact), enricher]
        self._default_stages = tuple(self.stages)

    def process(
        self,
        raw_events: list[dict[str, Any]],
        *,
        project: str,
        observed_ns: int,
        defaults: Mapping[str, Any] | None = None,
    ) -> list[LogRecord]:
        """Process one batch. Returns exactly one record per raw event, in the same order."""
        context = BatchContext(project, observed_ns, defaults or {})
        batch = raw_events
        with gc_paused():
            for stage in self.stages:
                batch = stage(batch, context)
        return batch

    def process_to_arrow(
        self,
        raw_events: list[dict[str, Any]],
        *,
        project: str,
        observed_ns: int,
        defaults: Mapping[str, Any] | None = None,
    ) -> pa.Table:
        """Process one batch straight into the storage block (the logs table's Arrow columns).

        Returns exactly ``records_to_arrow(self.process(...))`` (same columns, types, values
        and row order) but computes it column by column, several times faster; see
        :mod:`stackwatch.pipeline.columnar`. With custom ``stages`` it is that expression.
        """
        context = BatchContext(project, observed_ns, defaults or {})
        if tuple(self.stages) != self._default_stages or not self._default_stages:
            return records_to_arrow(
                self.process(raw_events, project=project, observed_ns=observed_ns, defaults=defaults)
            )
        parser, normalizer, redact, enricher = self._default_stages
        with gc_paused():
            # Slices of a few thousand events: each makes several passes over its events'
            # objects, and a slice's stay in the CPU cache between them (a 50,000-event batch
            # in one piece is ~20% slower per event).
            tables = [
                process_to_arrow(parser, normalizer, redact, enricher, raw_events[i : i + _SLICE], context)  # type: ignore[arg-type]
                for i in range(0, len(raw_events), _SLICE)
            ]
        if len(tables) == 1:
            return tables[0]
        if not tables:
            return records_to_arrow([])
        return pa.concat_tables(tables).combine_chunks()
