"""``mugi-jax tune``: gradient tuning of the per-layer VLP parameters under a hardware budget.

    mugi-jax tune --model smollm2-135m --corpus sotu --budget mantissa_bits<=3,window<=8 --json
"""

from __future__ import annotations

import typer

from mugi_jax.cli._common import CliError, app, print_json


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
) -> None:
    """Tune the per-layer VLP parameters by gradient descent and verify on held-out text.

    Tunes e_top, window and mantissa bits per layer and function by gradient descent on
    relaxed VLP units; verifies on held-out text with the exact kernels; compares with the grid."""
    from mugi_jax import data, models
    from mugi_jax.tune import pipeline, tuner

    if model not in models.MODELS:
        raise CliError(f"--model: unknown model {model!r}; valid: {', '.join(models.MODELS)}")
    if corpus not in data.CORPORA:
        raise CliError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(data.CORPORA)}")
    if objective not in tuner.OBJECTIVES:
        raise CliError(f"--objective: must be one of {', '.join(tuner.OBJECTIVES)}, got {objective!r}")
    if steps < 0:
        raise CliError(f"--steps: must be >= 0, got {steps}")
    try:
        tuner.parse_budget(budget)
    except ValueError as err:
        raise CliError(f"--budget: {err}") from err
    log = None if json_out else (lambda s: typer.echo(s, err=True))
    try:
        out = pipeline.run(model, corpus, budget, steps=steps, calib_tokens=calib_tokens,
                           heldout_tokens=heldout_tokens, heldout_start=heldout_start,
                           context=context, objective=objective, rounding=rounding, seed=seed,
                           grid=grid, log=log)
    except data.DataError as err:
        raise CliError(str(err)) from err
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
