"""PromQL conformance: Prometheus's own test scripts, run against our engine.

Every ``eval`` block of ``shared/testdata/promql/*.test`` (current Prometheus),
``shared/testdata/promql/v2.42.0/*.test`` and our own ``tests/query/promql/*.test``
runs through ``promql_script.run_script``. A block either passes, is skipped with
a reason (experimental / Prometheus-3-only features, native histograms, syntax
promql-parser rejects), or fails. A failure fails the test unless it is listed,
with why, in ``known_failures.KNOWN_FAILURES``; a listed block that now passes
fails the test too, so the list only ever shrinks. The per-file summary prints
with ``pytest -s`` or ``python tests/query/promql/promql_script.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from known_failures import KNOWN_FAILURES
from promql_script import corpus_files, run_script

FILES = corpus_files()


@pytest.mark.parametrize(("name", "path", "delayed"), FILES, ids=[f[0] for f in FILES])
def test_promql_script(name: str, path: Path, delayed: bool) -> None:
    outcomes = run_script(path, delayed_name_removal=delayed)
    counts = Counter(o.status for o in outcomes)
    print(f"\n{name}: pass={counts['pass']} fail={counts['fail']} skip={counts['skip']}")
    unexpected = [o for o in outcomes if o.status == "fail" and f"{name}:{o.line}" not in KNOWN_FAILURES]
    fixed = [o for o in outcomes if o.status != "fail" and f"{name}:{o.line}" in KNOWN_FAILURES]
    lines = [f"{name}:{o.line}: {o.expr}\n    {o.reason}" for o in unexpected]
    lines += [f"{name}:{o.line}: listed in KNOWN_FAILURES but now {o.status}: remove it" for o in fixed]
    assert not lines, "\n".join(lines)


def test_own_corpus_runs_without_skips() -> None:
    """Our dashboard/alert corpus must run completely: nothing in it may be skipped."""
    own = [f for f in FILES if f[0].startswith("own/")]
    assert own, "no tests/query/promql/*.test files found"
    for name, path, delayed in own:
        skipped = [o for o in run_script(path, delayed_name_removal=delayed) if o.status == "skip"]
        assert not skipped, f"{name}: {[(o.line, o.reason) for o in skipped]}"
