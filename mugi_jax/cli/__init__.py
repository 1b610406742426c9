"""The ``mugi-jax`` command line (typer). Thin: parse, call the library, print (or ``--json``).

Each command group lives in its own module of this package and registers itself on ``app``;
this keeps the command modules independent of one another.
"""

from __future__ import annotations

import sys

import typer

from mugi_jax.cli._common import CliError, app

# Command modules register on `app` when imported.  Keep this list sorted.
from mugi_jax.cli import cost as _cost  # noqa: F401,E402
from mugi_jax.cli import data as _data  # noqa: F401,E402
from mugi_jax.cli import demo as _demo  # noqa: F401,E402
from mugi_jax.cli import llm as _llm  # noqa: F401,E402
from mugi_jax.cli import report as _report  # noqa: F401,E402
from mugi_jax.cli import tune as _tune  # noqa: F401,E402


def main() -> None:
    """Console-script entry point: one clear line and a non-zero exit code on bad input."""
    try:
        app()
    except CliError as err:  # raised by commands for user errors
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (ValueError, TypeError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)


__all__ = ["app", "main"]
