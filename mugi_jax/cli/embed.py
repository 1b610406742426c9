"""``mugi-jax embed-eval``: a sentence encoder under numerics presets.

    mugi-jax embed-eval --model minilm-l6 --numerics exact,nonlinear-only,pwl,taylor,mugi-l,mugi \\
        --task brown-genre --max-tokens 128 --k 5 --json

For each preset: the cosine similarity of each passage's embedding to its exact (FP32) embedding
(mean and minimum) and the leave-one-out k-NN genre accuracy on the Brown corpus.
"""

from __future__ import annotations

from typing import Optional

import typer

from mugi_jax.cli._common import (OVERRIDE_HELP, CliError, app, check_choice, check_data_dir,
                                   check_int, check_names, enable_compilation_cache, model_policy,
                                   numerics_policy, print_json, status)

ALL_PRESETS = "exact,nonlinear-only,pwl,taylor,mugi-l,mugi"
TASKS = ("brown-genre",)


@app.command("embed-eval")
def embed_eval(
    model: str = typer.Option("minilm-l6", help="Encoder name."),
    numerics: str = typer.Option(ALL_PRESETS, "--numerics",
                                 help="Comma list of numerics presets (exact is always run: it is "
                                      "the reference of the cosine similarities)."),
    override: list[str] = typer.Option([], "--override", help=OVERRIDE_HELP + "  Applied to "
                                       "every preset of --numerics (not to the exact reference)."),
    task: str = typer.Option("brown-genre", help="Labelled task: brown-genre (the genre of each "
                                                 "Brown file, 15 classes)."),
    max_tokens: Optional[int] = typer.Option(
        None, help="Tokens per passage incl. [CLS]/[SEP] (default: the model's max_seq_len)."),
    passages: int = typer.Option(500, help="Files used, evenly spaced in filename order (<= 500)."),
    k: int = typer.Option(5, help="Neighbours of the leave-one-out k-NN classifier."),
    batch_size: int = typer.Option(32, help="Passages per forward pass."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Embedding fidelity (cosine to exact) and k-NN genre accuracy of an encoder per preset."""
    from mugi_jax import data, eval as ev, models
    from mugi_jax import numerics as nx

    if model not in models.ENCODERS:
        raise CliError(f"--model: {model!r} is not an encoder; valid: {', '.join(models.ENCODERS)}")
    check_choice("--task", task, TASKS)
    names = check_names("--numerics", numerics, tuple(nx.PRESETS)) or list(nx.PRESETS)
    for n in names if override else ():  # bad --override fails before loading
        numerics_policy(n, override)
    check_int("--passages", passages, 2, 500)
    check_int("--k", k, 1, passages - 1)
    check_int("--batch-size", batch_size, 1, 1024)
    check_data_dir()
    enable_compilation_cache()
    try:
        with status(f"loading {model}", enabled=not json_out):
            m, tok, cfg = models.load(model)
    except (data.DataError, models.CheckpointError, ValueError) as err:
        raise CliError(str(err)) from None
    if max_tokens is not None:
        check_int("--max-tokens", max_tokens, 2, cfg.max_seq_len)
    # preset names resolve with the model's family (its VLP windows) in models.embed
    policies = [model_policy(n, override, m) if override else n for n in names]
    try:
        rows = ev.genre_eval(m, tok, policies, passages=passages, max_tokens=max_tokens, k=k,
                             batch_size=batch_size, progress=not json_out)
    except data.DataError as err:
        raise CliError(str(err)) from None
    out = [{key: v for key, v in r.items() if key != "embeddings"} for r in rows]
    if json_out:
        print_json({"model": model, "task": task, "passages": passages,
                    "max_tokens": max_tokens or cfg.max_seq_len, "k": k, "results": out})
    else:
        typer.echo(f"{model} on {task} ({passages} passages, {max_tokens or cfg.max_seq_len} "
                   f"tokens, {k}-NN leave-one-out):")
        for r in out:
            typer.echo(f"  {r['numerics']:<15} accuracy {r['knn_accuracy']:.3f}  cosine to exact "
                       f"mean {r['cosine_mean']:.5f} min {r['cosine_min']:.5f}")
        for r in out:
            if r.get("weights_note"):
                typer.echo(f"  note: {r['weights_note']}")
