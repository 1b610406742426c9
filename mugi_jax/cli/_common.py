"""Shared pieces of the CLI: the typer app and JSON printing."""

from __future__ import annotations

import json
import math
from typing import Any

import typer

app = typer.Typer(
    name="mugi-jax",
    help="Mugi VLP accelerator models: numerics, cost, tuning and paper reproduction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax scalars and arrays
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan; say it in words rather than emit invalid JSON
    return obj


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (numpy/jax values converted)."""
    typer.echo(json.dumps(_jsonable(obj), indent=2, sort_keys=False))


@app.callback()
def _root() -> None:
    """Mugi VLP accelerator models: numerics, cost, tuning and paper reproduction."""
