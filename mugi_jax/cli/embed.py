"""``mugi-jax embed-eval``: a sentence encoder under numerics presets.

    mugi-jax embed-eval --model minilm-l6 --numerics exact,nonlinear-only,pwl,taylor,mugi-l,mugi \\
        --task brown-genre --max-tokens 128 --k 5 --json

For each preset: the cosine similarity of each passage's embedding to its exact (FP32) embedding
(mean and minimum) and the leave-one-out k-NN genre accuracy on the Brown corpus.
"""

from __future__ import annotations

from typing import Optional

import typer

from mugi_jax.cli._common import CliError, app, print_json

ALL_PRESETS = "exact,nonlinear-only,pwl,taylor,mugi-l,mugi"
TASKS = ("brown-genre",)


@app.command("embed-eval")
def embed_eval(
    model: str = typer.Option("minilm-l6", help="Encoder name."),
    numerics: str = typer.Option(ALL_PRESETS, "--numerics",
                                 help="Comma list of numerics presets (exact is always run: it is "
                                      "the reference of the cosine similarities)."),
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
    if task not in TASKS:
        raise CliError(f"--task: unknown task {task!r}; valid: {', '.join(TASKS)}")
    names = [n.strip() for n in numerics.split(",") if n.strip()]
    for n in names:
        if n not in nx.PRESETS:
            raise CliError(f"--numerics: unknown numerics preset {n!r}; valid: {', '.join(nx.PRESETS)}")
    if not names:
        raise CliError(f"--numerics: give at least one preset; valid: {', '.join(nx.PRESETS)}")
    if not 2 <= passages <= 500:
        raise CliError(f"--passages: must be in [2, 500], got {passages}")
    if not 1 <= k < passages:
        raise CliError(f"--k: must be in [1, {passages - 1}] for {passages} passages, got {k}")
    if batch_size < 1:
        raise CliError(f"--batch-size: must be >= 1, got {batch_size}")
    try:
        m, tok, cfg = models.load(model)
    except data.DataError as err:
        raise CliError(str(err)) from err
    if max_tokens is not None and not 2 <= max_tokens <= cfg.max_seq_len:
        raise CliError(f"--max-tokens: must be in [2, {cfg.max_seq_len}] (the model's "
                       f"max_seq_len), got {max_tokens}")
    try:
        rows = ev.genre_eval(m, tok, names, passages=passages, max_tokens=max_tokens, k=k,
                             batch_size=batch_size, progress=not json_out)
    except data.DataError as err:
        raise CliError(str(err)) from err
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
