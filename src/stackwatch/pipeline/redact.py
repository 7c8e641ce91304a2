"""Redact: the pipeline stage around :class:`stackwatch.redaction.Redactor`.

The rules live in :mod:`stackwatch.redaction` because the in-app SDK applies the same ones
before logs leave the app; the server applies them again because not every sender uses the
SDK (shippers, syslog, OTLP from other languages).
"""

from __future__ import annotations

from typing import Any

from stackwatch.pipeline.stage import BatchContext, mark_error
from stackwatch.redaction import REDACTED, RedactionConfig, Redactor

__all__ = ["RedactStage"]


class RedactStage:
    """Redacts each record's message and attributes in place.

    Fails closed: if redaction raises on a record, its message and string attributes are
    replaced by ``[REDACTED]`` rather than stored as they came, since storing a secret cannot
    be undone and a lost debug line can.
    """

    name = "redact"

    def __init__(self, config: RedactionConfig | Redactor | None = None) -> None:
        self.redactor = config if isinstance(config, Redactor) else Redactor(config)

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
