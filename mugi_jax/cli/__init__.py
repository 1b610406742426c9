"""The ``mugi-jax`` command line (typer). Thin: parse, call the library, print (or ``--json``).

Each command group lives in its own module of this package and registers itself on ``app``;
this keeps the command modules independent of one another.
"""

from __future__ import annotations

import sys

import typer

from mugi_jax.cli._common import CliError, app
from mugi_jax.data import DataError

# Command modules register on `app` when imported.  Keep this list sorted.
from mugi_jax.cli import cost as _cost  # noqa: F401,E402
from mugi_jax.cli import data as _data  # noqa: F401,E402
from mugi_jax.cli import design as _design  # noqa: F401,E402
from mugi_jax.cli import embed as _embed  # noqa: F401,E402
from mugi_jax.cli import llm as _llm  # noqa: F401,E402
from mugi_jax.cli import report as _report  # noqa: F401,E402
from mugi_jax.cli import tour as _tour  # noqa: F401,E402
from mugi_jax.cli import tune as _tune  # noqa: F401,E402


def main() -> None:
    """Console-script entry point: one clear line and a non-zero exit code on bad input."""
    try:  # typer >= 0.20 vendors click as typer._click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as cx

    try:
        code = app(standalone_mode=False)
    except cx.NoArgsIsHelpError as err:  # bare command: show its help
        err.show()
        sys.exit(err.exit_code)
    except cx.UsageError as err:  # bad option/argument/command: one line, not a panel
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        typer.secho(f"error: {err.format_message()}{hint}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except cx.ClickException as err:  # other click errors (bad file, ...): one line too
        typer.secho(f"error: {err.format_message()}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code or 1)
    except CliError as err:  # raised by commands for user errors
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (ValueError, TypeError, OSError, DataError) as err:
        # Library errors that reach here name their file or parameter (CheckpointError,
        # PathError and DataError name the file and, for the cache, the repair command).
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
