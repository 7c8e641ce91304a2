"""The examples in docs/ run against a real server, so the documentation cannot rot."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverproc import ADMIN_TOKEN, INGEST_TOKEN, ServerProcess

DOCS = Path(__file__).resolve().parent.parent / "docs"


def blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / doc).read_text(), flags=re.S)


def localize(code: str, server: ServerProcess) -> str:
    return (code.replace("http://127.0.0.1:8040", server.url).replace("<ingest token>", INGEST_TOKEN)
            .replace("$INGEST_TOKEN", INGEST_TOKEN).replace("$STACKWATCH_TOKEN", ADMIN_TOKEN))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("docs") / "data").start()
    yield srv
    srv.stop()


def test_ingest_doc_python_example(server: ServerProcess) -> None:
    (code,) = blocks("ingest.md", "python")
    namespace: dict[str, object] = {}
    root = logging.getLogger()
    before = list(root.handlers)
    exec(compile(localize(code, server), "docs/ingest.md", "exec"), namespace)
    try:
        logging.getLogger("docs.example").warning("hello from the documented example")
        namespace["provider"].force_flush()  # type: ignore[attr-defined]
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        namespace["provider"].shutdown()  # type: ignore[attr-defined]
    assert server.wait_for_count('message:"hello from the documented example" AND service:checkout', 1) == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_ingest_and_search_doc_curl_examples(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "app.log").write_text('{"level": "WARN", "service": "api", "message": "slow", '
                                      '"context": {"duration": 900}}\n')
    shell = next(b for b in blocks("ingest.md", "sh") if "app.log" in b)
    first = shell.split("\n# ")[0]  # the NDJSON example
    r = subprocess.run(["bash", "-c", localize(first, server)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and '"accepted":1' in r.stdout, r.stdout + r.stderr
    assert server.wait_for_count("service:api AND context.duration:>500", 1) == 1
    (search,) = [b for b in blocks("search.md", "sh") if "curl" in b]
    r = subprocess.run(["bash", "-c", localize(search, server)], capture_output=True, text=True)
    assert r.returncode == 0 and '"total":1' in r.stdout, r.stdout + r.stderr


def test_ingest_doc_plain_text_formats() -> None:
    """The documented regexes read the two text formats in their comments into fields."""
    import yaml

    from stackwatch.pipeline import Pipeline, PipelineConfig

    (block,) = [b for b in blocks("ingest.md", "yaml") if "parse:" in b]
    config = PipelineConfig.from_dict(yaml.safe_load(block)["pipeline"])
    lines = ["2026-11-24 05:20:39 [ERROR] app.routes.leads: Lead save failed",
             "2026-11-24 05:20:40,123 - app.worker - WARNING - retry 2",
             "just some text"]
    records = Pipeline(config).process([{"message": line} for line in lines], project="default",
                                       observed_ns=1_800_000_000_000_000_000)
    got = [(r["severity_text"], r["timestamp"], r["logger"], r["message"]) for r in records]
    assert got[0] == ("ERROR", 1_795_497_639_000_000_000, "app.routes.leads", "Lead save failed")
    assert got[1] == ("WARN", 1_795_497_640_123_000_000, "app.worker", "retry 2")
    assert got[2] == ("INFO", 1_800_000_000_000_000_000, "", "just some text")  # stored as it is
