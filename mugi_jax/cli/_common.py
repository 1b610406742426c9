"""Shared pieces of the CLI: the typer app, JSON printing, option checks and progress.

Every check here raises :class:`CliError` with a message that starts with the flag as the user
typed it (``--batch-size``), so every command reports bad input the same way: one line, exit 2.
New commands should use these helpers rather than write their own range checks.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
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


def check_int(flag: str, value: int, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` within ``[minimum, maximum]``, else a one-line error naming ``flag``."""
    if value < minimum or (maximum is not None and value > maximum):
        if maximum is None:
            allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        else:
            allowed = f"an integer from {minimum} to {maximum}"
        raise CliError(f"{flag} {value}: must be {allowed}")
    return value


def check_float(flag: str, value: float, minimum: float | None = None,
                maximum: float | None = None, *, above: bool = False) -> float:
    """A finite ``value`` within the bounds (``above``: strictly greater than ``minimum``)."""
    if not math.isfinite(value):
        raise CliError(f"{flag} {value}: must be a finite number")
    low_bad = minimum is not None and (value <= minimum if above else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if above else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
        raise CliError(f"{flag} {value:g}: must be {' and '.join(parts)}")
    return value


def check_choice(flag: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` one of ``allowed``, else an error listing them."""
    if value not in allowed:
        raise CliError(f"{flag} {value!r}: not valid; valid values: {', '.join(allowed)}")
    return value


def check_names(flag: str, text: str, allowed: Sequence[str]) -> list[str] | None:
    """A comma list of names (``a,b``); ``""`` means all (None).  Empty items are an error."""
    if text == "":
        return None
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise CliError(f"{flag} {text!r}: empty name in the comma list; valid names: "
                       f"{', '.join(allowed)}")
    for n in names:
        if n not in allowed:
            raise CliError(f"{flag}: unknown name {n!r}; valid names: {', '.join(allowed)}")
    return names


def check_out_dir(flag: str, path: str | Path) -> Path:
    """Create the results directory now (before any work) or fail naming ``flag`` and the path."""
    from mugi_jax.io import PathError, check_output_dir

    try:
        return check_output_dir(path, flag)
    except PathError as err:
        raise CliError(str(err)) from None


def check_data_dir() -> Path:
    """``$MUGI_JAX_DATA`` can be a directory, else an error naming the variable (before any work)."""
    from mugi_jax import data

    try:
        return data.data_dir()
    except data.DataError as err:
        raise CliError(str(err)) from None


def enable_compilation_cache() -> Path | None:
    """Use a persistent JAX compilation cache under ``$MUGI_JAX_DATA/jax-cache``.

    A second ``ppl``/``generate``/``tune`` with the same shapes and policy then loads the compiled
    programs from disk instead of compiling them again (see docs/models.md for the measured
    effect).  Returns the directory, or None (with a warning) when it cannot be written.
    """
    from mugi_jax import data
    from mugi_jax.io import PathError, check_output_dir

    try:
        cache = check_output_dir(data.ensure_data_dir() / "jax-cache", "MUGI_JAX_DATA=")
    except (PathError, data.DataError) as err:
        typer.secho(f"warning: no persistent compilation cache ({err})", err=True,
                    fg=typer.colors.YELLOW)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache))
    # Cache every program that took noticeable time to compile (the default threshold is 1 s;
    # the many small programs of a decode loop add up too).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return cache


@contextlib.contextmanager
def status(text: str, enabled: bool = True) -> Iterator[Any]:
    """A spinner with elapsed time on stderr while a slow step (load, compile, run) works.

    Only drawn when stderr is a terminal (so piped/JSON output stays clean).  Yields an object
    whose ``update(text)`` changes the message.
    """
    if not enabled or not sys.stderr.isatty():
        yield _NoStatus()
        return
    import time

    from rich.console import Console

    t0 = time.perf_counter()
    console = Console(stderr=True)
    with console.status(f"{text} ...") as st:
        yield _Status(st, t0)
    if (dt := time.perf_counter() - t0) > 2.0:  # say how long a slow step took (compile included)
        console.print(f"[dim]{text}: {dt:.1f} s[/dim]")


class _NoStatus:
    def update(self, text: str) -> None:  # noqa: D102
        pass


class _Status:
    def __init__(self, st: Any, t0: float) -> None:
        self._st, self._t0 = st, t0

    def update(self, text: str) -> None:  # noqa: D102
        self._st.update(f"{text} ...")


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


OVERRIDE_HELP = ("PATTERN=PRESET (repeatable): the ops whose path PATTERN matches in full (a "
                 "regular expression, e.g. 'lm_head' or 'layers\\.0\\..*') take their "
                 "implementation from PRESET; the first matching override wins.  Op paths: "
                 "`mugi-jax numerics`.")


def numerics_policy(name: str, overrides: list[str] | None = None,
                    family: str | None = None) -> Any:
    """The ``--numerics`` preset with the ``--override PATTERN=PRESET`` rules in front
    (``family``: a model family's calibrated VLP windows, :func:`mugi_jax.numerics.preset`)."""
    from mugi_jax import numerics

    try:
        policy = numerics.preset(name, family)
    except ValueError as err:
        raise CliError(f"--numerics: {err}") from None
    for text in overrides or []:
        try:
            numerics.parse_override(text)
        except ValueError as err:
            raise CliError(f"--override: {err}") from None
    return numerics.with_overrides(policy, list(overrides or []), family)


def model_policy(name: str, overrides: list[str] | None, model: Any) -> Any:
    """:func:`numerics_policy` for ``model``'s family, checked against ``model``."""
    from mugi_jax import numerics

    return check_policy(numerics_policy(name, overrides, numerics.family_of(model)), model)


def check_policy(policy: Any, model: Any) -> Any:
    """``policy`` after checking that every ``--override`` pattern matches an op of ``model``."""
    try:
        policy.check(model)
    except ValueError as err:
        raise CliError(f"--override: {err}") from None
    return policy
