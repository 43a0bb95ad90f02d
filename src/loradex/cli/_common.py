"""What every `loradex` command shares: the Typer app, the output consoles, `--json` output, the project and
`--json` options, the progress bar, and the one error handler.

Errors: a `LoradexError` (bad input or state; its message says what to do) is printed as `error: ...` and
exits 1. Anything else is a bug and keeps its traceback. Exit codes: 0 done; 1 an error; 3 done, but some
files were skipped.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from ..errors import LoradexError, QueryError

if TYPE_CHECKING:
    from ..project import Project

EXIT_ERROR = 1
EXIT_SKIPPED = 3

# A pipe or a log gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ProjectOpt = typer.Option(Path("."), "--project", "-p", help="Project folder (holds loradex.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


class _Group(TyperGroup):
    """Runs the command; a LoradexError becomes `error: <message>` on stderr and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LoradexError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(EXIT_ERROR) from None


def new_app(help: str) -> typer.Typer:
    """A Typer app (or sub-app) with loradex's settings and error handler."""
    return typer.Typer(cls=_Group, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)


def emit(data: Any) -> None:
    """Write `data` as indented JSON to stdout (the `--json` output)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def open_checked(project: Path, domain: str | None = None) -> Project:
    """The project in `project`; raises QueryError when `domain` is given and the project has no such domain."""
    from ..project import open_project

    proj = open_project(project)
    if domain is not None and domain not in proj.config.domains:
        raise QueryError(f"unknown domain {domain!r}; the project has: {', '.join(proj.config.domains) or 'none'}")
    return proj


@contextmanager
def progress(label: str, unit: str, *, disable: bool, **fields: str) -> Iterator[Any]:
    """A progress bar on stderr; yields `update(done, total, **fields)`. Hidden with `--json`."""
    extra = "".join(f", {name} {{task.fields[{name}]}}" for name in fields)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit + extra),
                  TimeRemainingColumn(), console=err, transient=True, disable=disable) as bar:
        task = bar.add_task(label, None, **fields)  # type: ignore[arg-type]  # fields go to the columns
        yield lambda done, total, **values: bar.update(task, completed=done, total=total, **values)
