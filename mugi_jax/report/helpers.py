"""Small helpers shared by the experiment scripts (plotting, tables, model loading)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mugi_jax.io import save_figure, write_csv
from mugi_jax.report.registry import Unavailable


@contextlib.contextmanager
def figure(path: Path, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """``with figure(out / "x.png", 1, 2, figsize=(8, 3)) as (fig, ax): ...`` (Agg, saved, closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(*args, **kwargs)
    try:
        yield fig, ax
        fig.tight_layout()
        # "tight" grows the canvas to hold everything drawn (legends placed outside the axes,
        # long rotated tick labels), so nothing is clipped.
        save_figure(fig, path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def table(out_dir: Path, file: str, rows: Sequence[Mapping[str, Any]], title: str,
          fieldnames: Sequence[str] | None = None) -> dict:
    """Write ``rows`` to ``out_dir/file`` and return the summary's table entry."""
    write_csv(Path(out_dir) / file, rows, fieldnames)
    return {"file": file, "title": title}


def _load_fetched(artifact: str, name: str, label: str) -> tuple[Any, Any, Any]:
    """``models.load(name)`` if data artifact ``artifact`` is fetched, else :class:`Unavailable`
    with the fetch command (never downloads)."""
    from mugi_jax import data, models

    try:
        data.model_path(artifact, fetch_missing=False)
    except Exception as err:  # noqa: BLE001
        raise Unavailable(f"{label} is not fetched ({err}); run `mugi-jax data fetch {artifact}`") from None
    return models.load(name)


def load_smollm2() -> tuple[Any, Any, Any]:
    """SmolLM2-135M (model, tokenizer, config), or :class:`Unavailable` if it is not fetched."""
    return _load_fetched("smollm2", "smollm2-135m", "SmolLM2-135M")


def load_minilm() -> tuple[Any, Any, Any]:
    """all-MiniLM-L6-v2 (model, tokenizer, config), or :class:`Unavailable` if it is not fetched."""
    return _load_fetched("minilm", "minilm-l6", "all-MiniLM-L6-v2")


def corpus_or_none(name: str) -> str | None:
    """The corpus text, or None when it is not fetched (never downloads)."""
    from mugi_jax import data

    try:
        return data.corpus_text(name, fetch_missing=False)
    except Exception:  # noqa: BLE001
        return None


def script_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """A standalone script's results directory, created now (before any work), or exit code 2
    with one line naming ``flag`` and the path (no traceback after minutes of computing)."""
    import sys

    from mugi_jax.io import PathError, check_output_dir

    try:
        return check_output_dir(path, flag)
    except PathError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def ratio_text(x: float) -> str:
    return f"{x:.3g}x"
