"""Run a benchmark by name: ``python bench/run.py [name] [options...]`` (default: ``logs``).

Each benchmark is a module ``bench/<name>_bench.py`` with a ``main(argv) -> int``; the options
after the name are passed to it (``python bench/run.py logs --events 50000``). ``MODULES`` names the
benchmarks whose module is not called ``<name>_bench``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
#: name -> module, for benchmarks outside the ``<name>_bench.py`` convention.
MODULES = {"sdk_web": "sdk_web_overhead"}


def available() -> list[str]:
    return sorted([p.name.removesuffix("_bench.py") for p in BENCH_DIR.glob("*_bench.py")] + list(MODULES))


def main(argv: list[str]) -> int:
    name = "logs"
    if argv and not argv[0].startswith("-"):
        name, argv = argv[0], argv[1:]
    if name not in available():
        sys.stderr.write(f"unknown benchmark {name!r}; available: {', '.join(available())}\n")
        return 2
    sys.path.insert(0, str(BENCH_DIR))
    module = importlib.import_module(MODULES.get(name, f"{name}_bench"))
    return int(module.main(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
