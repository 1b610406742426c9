"""The experiment registry and runner.

Every result of the reproduction is one module ``experiments/NAME.py`` declaring its report
entry as a module-level literal (the registry discovers the scripts by it; no list to edit)::

    EXPERIMENT = {"title": "...", "section": "Cost", "needs": "", "in_quick": True,
                  "est_s": 20, "order": 130}

and exposing

    run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict

(an experiment with a larger version also takes ``full: bool = False``: ``mugi-jax report --full``
runs it; the default settings fit ``make demo``'s time budget)

which writes its CSV/PNG files into ``out_dir`` and returns a summary::

    {"tables": [{"file": "x.csv", "title": "..."}], "figures": [{"file": "x.png", "caption": "..."}],
     "readings": ["computed sentence", ...], "comparisons": [paper.compare(...) dicts],
     "headline": {"name": value}, "config": {...}}

The runner (:func:`run_experiment`) adds ``provenance.json`` (config, seed, package versions, git
revision, wall time) and ``reading.json`` (the summary; its presence marks the result complete, so
the report skips it unless forced).  An experiment that cannot run here (model or corpus not
fetched) raises :class:`Unavailable` with the command that fixes it.

``experiments`` is resolved from the checkout (the directory next to the installed ``mugi_jax``
package, the current directory, or ``$MUGI_JAX_REPO``), so the registry works from the console
script as well as from ``python -m``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from mugi_jax.io import check_output_dir, provenance, write_json


class Unavailable(RuntimeError):
    """The experiment needs something not present here (message: what, and how to get it)."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One report entry, read from the ``EXPERIMENT`` record of ``experiments/NAME.py``."""

    name: str
    title: str
    section: str  # the report's section heading ("Numerics", "Cost", "Tuning", ...)
    needs: str = ""  # "", "model" (SmolLM2) - informational
    in_quick: bool = True  # part of `report --quick`
    est_s: float = 10.0  # rough full-run seconds on 2 cores (progress weights)
    order: float = 1000.0  # place in the report (ascending; ties by name)


_FIELDS = {f.name for f in dataclasses.fields(Experiment)} - {"name"}


def repo_root() -> Path | None:
    """The checkout holding ``experiments/`` (None if it cannot be found)."""
    cands = []
    if os.environ.get("MUGI_JAX_REPO"):
        cands.append(Path(os.environ["MUGI_JAX_REPO"]))
    cands += [Path(__file__).resolve().parents[2], Path.cwd()]
    for c in cands:
        if (c / "experiments" / "__init__.py").exists():
            return c.resolve()
    return None


def spec_of(path: Path) -> Experiment | None:
    """The :class:`Experiment` a script declares as a module-level literal
    ``EXPERIMENT = {"title": ..., "section": ..., ...}`` (keys: the fields of
    :class:`Experiment` but ``name``, which is the file's stem), or None without one.  Read with
    :mod:`ast` (nothing is imported), so listing the experiments costs no imports."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "EXPERIMENT"
                                                for t in node.targets):
            try:
                record = ast.literal_eval(node.value)
            except ValueError as err:
                raise ValueError(f"{path}: EXPERIMENT must be a literal dict ({err})") from err
            if not isinstance(record, dict) or set(record) - _FIELDS \
                    or not {"title", "section"} <= set(record):
                raise ValueError(f"{path}: EXPERIMENT must be a dict with title, section and "
                                 f"optionally {', '.join(sorted(_FIELDS - {'title', 'section'}))}")
            return Experiment(name=path.stem, **record)
    return None


def discover(root: Path | None = None) -> tuple[Experiment, ...]:
    """Every ``experiments/*.py`` that declares an ``EXPERIMENT`` record, in report order."""
    root = repo_root() if root is None else root
    if root is None:
        return ()
    found = [spec_of(p) for p in sorted((root / "experiments").glob("*.py"))
             if not p.name.startswith("_")]
    return tuple(sorted((e for e in found if e is not None), key=lambda e: (e.order, e.name)))


#: The report's experiments, discovered from the scripts (empty without a checkout).
EXPERIMENTS: tuple[Experiment, ...] = discover()
BY_NAME = {e.name: e for e in EXPERIMENTS}


def load(name: str) -> ModuleType:
    """Import ``experiments.NAME`` (the checkout is put on ``sys.path`` if needed)."""
    if name not in BY_NAME:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(BY_NAME)}")
    root = repo_root()
    if root is None:
        raise Unavailable("the experiments/ directory was not found (run from the repository "
                          "checkout or set MUGI_JAX_REPO)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"experiments.{name}")


def read_summary(out_dir: Path) -> dict | None:
    p = Path(out_dir) / "reading.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: Path, quick: bool, full: bool = False) -> bool:
    """A finished result that satisfies the request (full results satisfy a default request,
    default results a quick one)."""
    s = read_summary(out_dir)
    if s is None or s.get("status") != "ok":
        return False
    if full:
        return bool(s.get("full", False))
    return quick or not s.get("quick", False)


def has_full(mod: ModuleType) -> bool:
    """Whether the experiment's ``run`` has a larger (``full=True``) version."""
    import inspect

    return "full" in inspect.signature(mod.run).parameters


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # ok | skipped (already present) | unavailable | failed | not-run
    seconds: float
    summary: dict | None
    message: str = ""


def takes_weights(mod: ModuleType) -> bool:
    """Whether the experiment's ``run`` takes a quantized-weights directory (``weights``: the
    decoder experiments; ``mugi-jax report --weights DIR``)."""
    import inspect

    return "weights" in inspect.signature(mod.run).parameters


def run_experiment(name: str, out_root: str | Path = "results", quick: bool = False,
                   force: bool = False, seed: int = 0, full: bool = False,
                   weights: str | Path | None = None) -> Outcome:
    """Run one experiment into ``out_root/NAME`` (skipped when complete unless ``force``).
    ``full``: the experiment's large version (experiments without one run their default, which
    is then their full result).  ``weights``: a quantized-weights directory, passed to the
    experiments that take one (a result made with other weights is not reused)."""
    if quick and full:
        raise ValueError("quick and full are exclusive: choose one")
    out_dir = Path(out_root) / name
    check_output_dir(out_root, "out")  # a bad results directory fails now, not after the work
    wanted = None
    if weights is not None:
        try:
            wanted = str(weights) if takes_weights(load(name)) else None
        except Unavailable:
            pass
    if not force and is_complete(out_dir, quick, full) \
            and (read_summary(out_dir) or {}).get("weights") == wanted:
        return Outcome(name, "skipped", 0.0, read_summary(out_dir), "already present")
    t0 = time.perf_counter()
    try:
        mod = load(name)
        big = has_full(mod)
        kw = {"full": full} if big else {}
        if wanted is not None:
            kw["weights"] = wanted
        summary = mod.run(out_dir, quick=quick, seed=seed, **kw) or {}
    except Unavailable as err:
        dt = time.perf_counter() - t0
        s = {"status": "unavailable", "message": str(err), "quick": quick, "name": name}
        write_json(out_dir / "reading.json", s)
        return Outcome(name, "unavailable", dt, s, str(err))
    except Exception as err:  # noqa: BLE001 - the suite goes on; the report says what failed
        dt = time.perf_counter() - t0
        msg = f"{type(err).__name__}: {err}"
        s = {"status": "failed", "message": msg, "quick": quick, "name": name,
             "traceback": traceback.format_exc(limit=8)}
        write_json(out_dir / "reading.json", s)
        return Outcome(name, "failed", dt, s, msg)
    dt = time.perf_counter() - t0
    # a result is "full" when it ran the large version, or the experiment has no larger one
    is_full = not quick and (full or not big)
    config = dict(summary.get("config", {}), experiment=name, quick=quick, full=is_full)
    write_json(out_dir / "provenance.json", provenance(config, seed, dt))
    summary = dict(summary, status="ok", quick=quick, full=is_full, seed=seed, name=name,
                   wall_time_s=dt, weights=wanted)
    write_json(out_dir / "reading.json", summary)
    return Outcome(name, "ok", dt, summary)


def cli_main(name: str, argv: list[str] | None = None) -> Outcome:
    """``python -m experiments.NAME [--quick | --full] [--force] [--out DIR] [--seed N]``."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m experiments.{name}",
                                 description=BY_NAME[name].title if name in BY_NAME else name)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small settings (seconds, not minutes)")
    mode.add_argument("--full", action="store_true", help="the large version (where there is one)")
    ap.add_argument("--force", action="store_true", help="rerun even if results/NAME is complete")
    ap.add_argument("--out", default="results", help="results root (writes OUT/NAME/)")
    ap.add_argument("--seed", type=int, default=0)

    def one_line_error(message: str) -> None:  # argparse prints the usage too; one line is enough
        print(f"error: {message} (see 'python -m experiments.{name} --help')", file=sys.stderr)
        raise SystemExit(2)

    ap.error = one_line_error  # type: ignore[method-assign]
    args = ap.parse_args(argv)
    try:
        if not 0 <= args.seed < 2**32:
            raise ValueError(f"--seed {args.seed}: must be an integer from 0 to {2**32 - 1}")
        check_output_dir(args.out, "--out")
    except ValueError as err:  # bad --seed or --out (PathError): one line, exit 2, before any work
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    oc = run_experiment(name, args.out, quick=args.quick, force=args.force, seed=args.seed,
                        full=args.full)
    print(f"{name}: {oc.status} in {oc.seconds:.1f}s -> {Path(args.out) / name}"
          + (f" ({oc.message})" if oc.message else ""))
    for line in (oc.summary or {}).get("readings", []):
        print(f"  - {line}")
    if oc.status in ("failed", "unavailable"):
        raise SystemExit(1)
    return oc
