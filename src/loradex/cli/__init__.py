"""The `loradex` command line. Each command wraps library calls and prints text or `--json`.

Modules: `_common` (the app settings, output, progress, the one error handler), `commands` (init, ingest,
search, serve, route, ask, migrate), `docs` (docs list/show/rm), `adapters` (train and adapters ...),
`evaluate` (eval, decide).
"""
from __future__ import annotations

from . import adapters, commands, docs, evaluate
from ._common import new_app

__all__ = ["app", "main"]

app = new_app("loradex: cited answers from your documents, domain adapters, one router.")
for command in (commands.init, commands.ingest, commands.search, commands.serve, commands.route, commands.ask,
                commands.migrate, adapters.train):
    app.command()(command)
app.command("eval")(evaluate.evaluate)
app.command("decide")(evaluate.decide)
app.add_typer(docs.docs_app, name="docs")
app.add_typer(adapters.adapters_app, name="adapters")


def main() -> None:
    """The `loradex` console script."""
    app()
