"""``stackwatch rules check|test``: validate rule files and run their unit tests, offline.

Both work on files alone (no server), so they fit in CI next to ``promtool``: the exit status
is 0 when everything passes, 1 when a file fails, 2 for usage errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["rules_app"]

rules_app = typer.Typer(help="Check alerting/recording rule files and run their unit tests.", no_args_is_help=True)


@rules_app.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="Rule files (Prometheus format).")]) -> None:
    """Validate rule files like `promtool check rules`: YAML, fields, PromQL, templates."""
    from stackwatch.rules.loader import RuleFileError, parse_rule_file

    failed = False
    for path in files:
        typer.echo(f"Checking {path}")
        try:
            groups = parse_rule_file(path)
        except RuleFileError as exc:
            failed = True
            typer.echo("  FAILED:", err=True)
            for e in exc.errors:
                typer.echo(f"{e}", err=True)
            typer.echo("")
            continue
        n = sum(len(g.rules) for g in groups)
        typer.echo(f"  SUCCESS: {n} rules found")
        typer.echo("")
    raise typer.Exit(1 if failed else 0)


@rules_app.command("test")
def test(files: Annotated[list[Path], typer.Argument(help="Test files (promtool test rules format).")]) -> None:
    """Run rule unit tests (promtool test rules format) in memory."""
    from stackwatch.rules.unit import run_test_file

    failed = False
    for path in files:
        typer.echo(f"Unit Testing:  {path}")
        result = run_test_file(path)
        if result.ok:
            typer.echo(f"  SUCCESS ({result.tests} tests)\n")
            continue
        failed = True
        typer.echo("  FAILED:")
        for f in result.failures:
            typer.echo("    " + f.replace("\n", "\n    "))
        typer.echo("")
    raise typer.Exit(1 if failed else 0)
