"""``mugi-jax tune``: gradient tuning of the per-layer VLP parameters under a hardware budget.

    mugi-jax tune --model smollm2-135m --corpus sotu --budget 'mantissa_bits<=3,window<=8' --json

(quote the budget: ``<`` is a redirection in the shell)
"""

from __future__ import annotations

import math
from typing import Optional

import typer

from mugi_jax.cli import _mesh
from mugi_jax.cli._common import (CliError, app, check_choice, check_data_dir, check_int,
                                  enable_compilation_cache, print_json, status)

MAX_STEPS = 100_000
MAX_TOKENS = 1 << 24


@app.command("tune")
def tune_cmd(
    model: str = typer.Option("smollm2-135m", help="Model name."),
    corpus: str = typer.Option("sotu", help="Corpus: sotu, brown or austen."),
    budget: str = typer.Option("mantissa_bits<=3,window<=8",
                               help="Comma-separated limits: mantissa_bits<=B, window<=W, "
                                    "e_top<=E, e_top>=E, table_entries<=N, cycles<=C, "
                                    "energy_pj<=J."),
    steps: int = typer.Option(30, help="Optimizer steps."),
    objective: str = typer.Option("fisher", help="fisher (captured activations), ce or kl "
                                                 "(end to end)."),
    rounding: str = typer.Option("ste", help="Mantissa relaxation: ste or noise."),
    calib_tokens: int = typer.Option(256, help="Calibration tokens (from the corpus start)."),
    heldout_tokens: int = typer.Option(1024, help="Held-out tokens (from --heldout-start)."),
    heldout_start: int = typer.Option(2048, help="First held-out token (>= --calib-tokens)."),
    context: int = typer.Option(128, help="Window length in tokens."),
    grid: bool = typer.Option(True, help="Also run the uniform grid-search baseline."),
    seed: int = typer.Option(0, help="Random seed."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    mesh: Optional[str] = _mesh.MESH_OPTION,
    mesh_fallback: bool = _mesh.FALLBACK_OPTION,
    distributed: bool = _mesh.DISTRIBUTED_OPTION,
) -> None:
    """Tune the per-layer VLP parameters by gradient descent and verify on held-out text.

    Tunes e_top, window and mantissa bits per layer and function by gradient descent on
    relaxed VLP units; verifies on held-out text with the exact kernels; compares with the grid."""
    from mugi_jax import data, models
    from mugi_jax.tune import pipeline, tuner

    from mugi_jax.tune import relax

    if model not in models.MODELS:
        raise CliError(f"--model: unknown model {model!r}; valid: {', '.join(models.MODELS)}")
    if corpus not in data.CORPORA:
        raise CliError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(data.CORPORA)}")
    check_choice("--objective", objective, tuner.OBJECTIVES)
    check_choice("--rounding", rounding, relax.ROUNDINGS)
    check_int("--steps", steps, 0, MAX_STEPS)
    check_int("--calib-tokens", calib_tokens, 2, MAX_TOKENS)
    check_int("--heldout-tokens", heldout_tokens, 2, MAX_TOKENS)
    check_int("--heldout-start", heldout_start, 0, MAX_TOKENS)
    check_int("--context", context, 2)
    check_int("--seed", seed, 0, 2**32 - 1)
    if heldout_start < calib_tokens:
        raise CliError(f"--heldout-start {heldout_start}: must be >= --calib-tokens {calib_tokens} "
                       "(the held-out text may not overlap the calibration text)")
    try:
        limits = tuner.parse_budget(budget).cost_limits()
    except ValueError as err:
        raise CliError(f"--budget {budget!r}: {str(err).removeprefix('budget: ')}") from None
    for key, value in limits.items():
        if not math.isfinite(value):
            raise CliError(f"--budget {budget!r}: {key} must be a finite number, got {value:g}")
    device_mesh = _mesh.setup(mesh, distributed)
    if device_mesh is not None:
        _mesh.check_model(models.SMOLLM2_135M, device_mesh, mesh_fallback)
    check_data_dir()
    enable_compilation_cache()
    # The pipeline logs each stage and tuning step on stderr, with --json too (piped or not: the
    # JSON object alone goes to stdout); on a terminal a spinner also shows the elapsed time.
    writer = _mesh.is_writer()
    log = (lambda s: typer.echo(s, err=True)) if writer else None
    try:
        with status(f"tuning {model} on {corpus} ({steps} steps; compiles first)",
                    enabled=json_out and writer), _mesh.using(device_mesh, mesh_fallback):
            out = pipeline.run(model, corpus, budget, steps=steps, calib_tokens=calib_tokens,
                               heldout_tokens=heldout_tokens, heldout_start=heldout_start,
                               context=context, objective=objective, rounding=rounding, seed=seed,
                               grid=grid, log=log)
    except (data.DataError, models.CheckpointError) as err:
        raise CliError(str(err)) from None
    except ValueError as err:  # e.g. the corpus is shorter than --heldout-start + --heldout-tokens
        raise CliError(str(err).replace("heldout_start", "--heldout-start")
                       .replace("heldout_tokens", "--heldout-tokens")
                       .replace("calib_tokens", "--calib-tokens")) from None
    if not writer:
        return
    if json_out:
        print_json(out)
        return
    typer.echo(f"budget {out['budget']}")
    typer.echo(f"tuned      held-out ppl {out['heldout_ppl']:.4f}  model evals {out['model_evals']}")
    if grid:
        typer.echo(f"grid-best  held-out ppl {out['grid_best_ppl']:.4f}  model evals "
                   f"{out['grid_model_evals']}")
    typer.echo(f"exact      held-out ppl {out['exact_ppl']:.4f}")
    for row in out["config"]:
        s, a = row["softmax"], row["silu"]
        typer.echo(f"layer {row['layer']:2d}  softmax e_top={s['e_top']:+d} W={s['window']} "
                   f"b={s['mantissa_bits']}  silu e_top={a['e_top']:+d} W={a['window']} "
                   f"b={a['mantissa_bits']}")
