"""Alerting and recording rules: Prometheus's rule files and semantics, plus log, error,
period-over-period, multi-threshold and no-data rules in the same files and state machine.

* :mod:`~stackwatch.rules.loader`: read and validate rule files (``rules check``).
* :mod:`~stackwatch.rules.template`: the Go-template subset of labels and annotations.
* :mod:`~stackwatch.rules.evaluator`: one group evaluation (pending -> firing -> resolved).
* :mod:`~stackwatch.rules.manager`: scheduling, reload, state kept across restarts.
* :mod:`~stackwatch.rules.unit`: ``promtool test rules`` files, run in memory (``rules test``).
"""

from importlib import import_module
from typing import Any

# Imported on first use: the CLI imports this package for its commands, and must start fast.
_WHERE = {
    "ActiveAlert": "evaluator", "GroupEvaluator": "evaluator", "GroupState": "evaluator", "RuleState": "evaluator",
    "RuleError": "loader", "RuleFileError": "loader", "expand_globs": "loader", "load_files": "loader",
    "parse_groups": "loader", "parse_rule_file": "loader", "AlertStateStore": "manager", "RuleManager": "manager",
    "Rule": "model", "RuleGroup": "model", "Threshold": "model", "ErrorSource": "sources",
    "MemorySources": "sources", "StoreSources": "sources", "expand": "template", "run_test_file": "unit",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActiveAlert",
    "AlertStateStore",
    "ErrorSource",
    "GroupEvaluator",
    "GroupState",
    "MemorySources",
    "Rule",
    "RuleError",
    "RuleFileError",
    "RuleGroup",
    "RuleManager",
    "RuleState",
    "StoreSources",
    "Threshold",
    "expand",
    "expand_globs",
    "load_files",
    "parse_groups",
    "parse_rule_file",
    "run_test_file",
]
