"""What every benchmark needs: a free loopback port, and its section of docs/benchmarks.md."""

from __future__ import annotations

import re
import socket
from pathlib import Path

DOCS_FILE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\nStackwatch measured side by side with its peers on the same data, "
    "the same machine, the same run. Reproduce with `make bench` (see `bench/README.md`).\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_section(title: str, section: str) -> None:
    """Replace the ``## <title>`` section of docs/benchmarks.md (appended when missing), leaving
    every other section alone: each benchmark owns one section and reruns rewrite only it."""
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else _HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS_FILE.write_text(text.rstrip("\n") + "\n")
