"""``mugi-jax ppl`` and ``mugi-jax generate``: the LLM under a numerics policy.

    mugi-jax ppl --model smollm2-135m --corpus sotu --numerics exact --context 512 \
        --max-tokens 4096 --json
    mugi-jax generate --model smollm2-135m --numerics mugi --prompt "..." --max-new-tokens 64
"""

from __future__ import annotations

from typing import Optional

import typer

from mugi_jax.cli._common import (CliError, app, check_data_dir, check_float, check_int,
                                  enable_compilation_cache, print_json, status)

#: Upper bounds that keep a request within what fits in memory on one host.
MAX_BATCH = 1024
MAX_SEED = 2**32 - 1


def _policy(name: str):  # noqa: ANN202
    from mugi_jax import numerics

    try:
        return numerics.preset(name)
    except ValueError as err:
        raise CliError(f"--numerics: {err}") from err
    except numerics.MissingKernelError as err:
        raise CliError(f"--numerics {name}: {err}") from err


def _check_model(model: str) -> None:
    from mugi_jax import models

    if model not in models.MODELS:
        raise CliError(f"--model: unknown model {model!r}; valid: {', '.join(models.MODELS)}")
    if model in models.ENCODERS:
        raise CliError(f"--model: {model!r} is an encoder (no next-token logits); evaluate it with "
                       f"`mugi-jax embed-eval --model {model}`")


def _load(model: str):  # noqa: ANN202
    from mugi_jax import data, models

    _check_model(model)
    try:
        with status(f"loading {model}"):
            return models.load(model)
    except (data.DataError, models.CheckpointError) as err:
        raise CliError(str(err)) from None


@app.command()
def ppl(
    model: str = typer.Option("smollm2-135m", help="Model name."),
    corpus: str = typer.Option("sotu", help="Corpus: sotu, brown or austen."),
    numerics: str = typer.Option("exact", "--numerics",
                                 help="Numerics preset: exact, nonlinear-only, pwl, taylor, mugi-l, mugi, "
                                      "mugi-exact."),
    context: int = typer.Option(512, help="Window length in tokens (non-overlapping windows)."),
    max_tokens: int = typer.Option(4096, help="Evaluate the first N tokens of the corpus."),
    batch_size: int = typer.Option(4, help="Windows per forward pass."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Perplexity of a model on a corpus under a numerics policy (no BOS; ppl = exp(mean NLL))."""
    from mugi_jax import data, eval as ev

    _check_model(model)
    if corpus not in data.CORPORA:
        raise CliError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(data.CORPORA)}")
    check_int("--context", context, 2)
    check_int("--max-tokens", max_tokens, 2)
    check_int("--batch-size", batch_size, 1, MAX_BATCH)
    policy = _policy(numerics)
    check_data_dir()
    try:  # the corpus first: a damaged cache fails before the model is loaded
        text = data.corpus_text(corpus)
    except data.DataError as err:
        raise CliError(str(err)) from None
    enable_compilation_cache()
    m, tok, cfg = _load(model)
    if context > cfg.max_seq_len:
        raise CliError(f"--context {context}: exceeds {model}'s context of {cfg.max_seq_len} tokens")
    ids = ev.corpus_tokens(tok, text, max_tokens)
    if len(ids) < 2:
        raise CliError(f"--corpus {corpus}: the corpus text has {len(ids)} token(s); need >= 2")
    try:
        # Without --json a progress bar counts the batches; with it, a spinner (terminal only).
        with status(f"perplexity [{numerics}] (the first batch compiles)", enabled=json_out):
            res = ev.perplexity(m, ids, policy, context=context, max_tokens=max_tokens,
                                batch_size=batch_size, progress=not json_out)
    except ValueError as err:
        raise CliError(str(err)) from err
    res = {"model": model, "corpus": corpus, **res}
    if json_out:
        print_json(res)
    else:
        typer.echo(f"{model} on {corpus} [{numerics}], context {context}: ppl {res['ppl']:.4f} "
                   f"over {res['predicted_tokens']} predicted tokens ({res['seconds']:.1f} s)")


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text (repeat for a batch)."),
    model: str = typer.Option("smollm2-135m", help="Model name."),
    numerics: str = typer.Option("exact", "--numerics", help="Numerics preset."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_k: Optional[int] = typer.Option(None, help="Sample from the k most likely tokens."),
    seed: int = typer.Option(0, help="PRNG seed for sampling."),
    chat: bool = typer.Option(False, help="Wrap the prompt in the model's chat template."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate a continuation of each prompt (a batch; greedy unless --temperature > 0)."""
    _check_model(model)
    check_int("--max-new-tokens", max_new_tokens, 1)
    check_float("--temperature", temperature, 0.0)
    if top_k is not None:
        check_int("--top-k", top_k, 1)
    check_int("--seed", seed, 0, MAX_SEED)
    for i, p in enumerate(prompt):
        if not p:
            raise CliError(f"--prompt number {i + 1} is empty; every prompt needs some text")
    policy = _policy(numerics)
    check_data_dir()
    enable_compilation_cache()
    m, tok, cfg = _load(model)
    if top_k is not None:
        check_int("--top-k", top_k, 1, cfg.vocab_size)
    if max_new_tokens >= cfg.max_seq_len:
        raise CliError(f"--max-new-tokens {max_new_tokens}: must be below {model}'s context of "
                       f"{cfg.max_seq_len} tokens")
    prompts = list(prompt)
    if chat:
        prompts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in prompts]
    import jax

    from mugi_jax.models import Sampler

    try:
        with status(f"generating {max_new_tokens} tokens [{numerics}] (the first run compiles)"):
            out = Sampler(m, tok, policy)(prompts, max_new_tokens, temperature=temperature,
                                           top_k=top_k, key=jax.random.key(seed), stop_at_eos=True)
    except ValueError as err:  # the prompt plus new tokens exceed the context
        raise CliError(str(err).replace("max_new_tokens", "--max-new-tokens")) from None
    if json_out:
        print_json({"model": model, "numerics": numerics, "prompts": list(prompt),
                    "completions": out.text, "tokens": out.tokens})
    else:
        for p, t in zip(prompt, out.text or []):
            typer.echo(f"{p}{t}" if not chat else t)
