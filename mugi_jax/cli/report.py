"""``mugi-jax report`` (the whole reproduction suite -> report.md) and ``mugi-jax experiment``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from mugi_jax.cli import _mesh
from mugi_jax.cli._common import (CliError, app, check_int, check_names, check_out_dir,
                                  enable_compilation_cache, print_json, status)


def _names_help() -> str:
    from mugi_jax.report.registry import EXPERIMENTS

    return ", ".join(e.name for e in EXPERIMENTS)


@app.command()
def report(
    quick: bool = typer.Option(False, "--quick", help="Small token counts and grids (about 30 s on an idle 2-core machine)."),
    full: bool = typer.Option(False, "--full", help="The large versions of the experiments that have "
                                                    "one (hours on 2 cores; the default fits `make demo`)."),
    force: bool = typer.Option(False, "--force", help="Rerun experiments whose results are already present."),
    out: Path = typer.Option(Path("results"), "--out", help="Results directory (report.md goes here)."),
    only: str = typer.Option("", "--only", help="Comma list of experiments to run (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed passed to every experiment."),
    json_out: bool = typer.Option(False, "--json", help="Print the outcome of each experiment as JSON."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Quantized SmolLM2-135M weights "
                                           "(`mugi-jax quantize --out DIR`, scheme signmag) for the "
                                           "decoder experiments: the `mugi` rows of accuracy, one "
                                           "more row of quant_pareto."),
    mesh: Optional[str] = _mesh.MESH_OPTION,
    mesh_fallback: bool = _mesh.FALLBACK_OPTION,
    distributed: bool = _mesh.DISTRIBUTED_OPTION,
) -> None:
    """Run the reproduction suite and write report.md (tables, figures, computed readings)."""
    from mugi_jax.report import BY_NAME, run_suite

    if quick and full:
        raise CliError("--quick and --full are exclusive: choose one")
    names = check_names("--only", only, list(BY_NAME))
    if weights is not None:
        _check_report_weights(weights, names)
    check_int("--seed", seed, 0, 2**32 - 1)
    check_out_dir("--out", out)
    device_mesh = _mesh.setup(mesh, distributed)
    enable_compilation_cache()
    t0 = time.perf_counter()
    try:
        with _mesh.using(device_mesh, mesh_fallback):
            outcomes = run_suite(out, quick=quick, force=force, seed=seed, names=names,
                                 progress=not json_out and _mesh.is_writer(), full=full,
                                 weights=weights)
    except ValueError as err:
        raise CliError(str(err)) from None
    wall = time.perf_counter() - t0
    if not _mesh.is_writer():
        return
    failed = [o.name for o in outcomes if o.status == "failed"]
    if json_out:
        print_json({"report": str(Path(out) / "report.md"), "seconds": wall, "experiments": [
            {"name": o.name, "status": o.status, "seconds": o.seconds, "message": o.message,
             "headline": (o.summary or {}).get("headline", {})} for o in outcomes]})
    else:
        typer.echo(f"wrote {Path(out) / 'report.md'} in {wall:.0f} s "
                   f"({sum(o.status == 'ok' for o in outcomes)} run, "
                   f"{sum(o.status == 'skipped' for o in outcomes)} already present, "
                   f"{len(failed)} failed)")
    if failed:
        raise CliError(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (see report.md)")


def _check_report_weights(weights: Path, names: list[str] | None) -> None:
    """The report's decoder experiments run SmolLM2-135M, and accuracy's `mugi` rows run
    sign-magnitude weights: refuse another model's or scheme's directory before any work."""
    from mugi_jax.models.quantize import WeightsError, load

    try:
        spec = load(weights, model="smollm2-135m").spec
    except WeightsError as err:
        raise CliError(str(err)) from None
    if (names is None or "accuracy" in names) and spec.scheme != "signmag":
        raise CliError(f"--weights: {weights} holds {spec.scheme} weights, but the report's `mugi` "
                       "preset (experiment accuracy) runs signmag; quantize with --scheme signmag, "
                       "or leave accuracy out with --only")


@app.command()
def experiment(
    name: str = typer.Argument(..., help="Experiment name: one of the suite (`mugi-jax report --help` lists the suite in docs)."),
    quick: bool = typer.Option(False, "--quick", help="Small settings."),
    full: bool = typer.Option(False, "--full", help="The large version (where the experiment has one)."),
    force: bool = typer.Option(False, "--force", help="Rerun even if results/NAME is complete."),
    out: Path = typer.Option(Path("results"), "--out", help="Results root (writes OUT/NAME/)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (readings, headline) as JSON."),
    mesh: Optional[str] = _mesh.MESH_OPTION,
    mesh_fallback: bool = _mesh.FALLBACK_OPTION,
    distributed: bool = _mesh.DISTRIBUTED_OPTION,
) -> None:
    """Run one experiment of the suite into OUT/NAME (CSV, PNG, provenance.json)."""
    from mugi_jax.report import BY_NAME, run_experiment

    if name not in BY_NAME:
        raise CliError(f"unknown experiment {name!r}; valid: {_names_help()}")
    if quick and full:
        raise CliError("--quick and --full are exclusive: choose one")
    check_int("--seed", seed, 0, 2**32 - 1)
    check_out_dir("--out", out)
    device_mesh = _mesh.setup(mesh, distributed)
    enable_compilation_cache()
    mode = " (quick)" if quick else " (full)" if full else ""
    with status(f"running {name}{mode}", enabled=not json_out and _mesh.is_writer()), \
            _mesh.using(device_mesh, mesh_fallback):
        oc = run_experiment(name, out, quick=quick, force=force, seed=seed, full=full)
    if not _mesh.is_writer():
        return
    s = oc.summary or {}
    if json_out:
        print_json({"name": name, "status": oc.status, "seconds": oc.seconds, "message": oc.message,
                    "readings": s.get("readings", []), "headline": s.get("headline", {}),
                    "out": str(Path(out) / name)})
    else:
        typer.echo(f"{name}: {oc.status} in {oc.seconds:.1f} s -> {Path(out) / name}"
                   + (f" ({oc.message})" if oc.message and oc.status != "failed" else ""))
        for line in s.get("readings", []):
            typer.echo(f"  - {line}")
    if oc.status in ("failed", "unavailable"):
        raise CliError(f"{name}: {oc.message}")
