r"""``mugi-jax ppl``, ``generate``, ``quantize`` and ``numerics``: the LLM under a numerics policy
(a preset, optionally with per-op overrides).

    mugi-jax ppl --model smollm2-135m --corpus sotu --numerics exact --context 512 \
        --max-tokens 4096 --json
    mugi-jax ppl --model gemma3-270m --corpus sotu --numerics pwl --bos
    mugi-jax ppl --numerics mugi --override 'lm_head=exact' --override 'layers\.0\..*=nonlinear-only'
    mugi-jax generate --model smollm2-135m --numerics mugi --prompt "..." --max-new-tokens 64
    mugi-jax numerics --numerics mugi --override 'lm_head=exact'     # what each op resolves to
    mugi-jax quantize --model smollm2-135m --method gptq --scheme signmag --group 32 \
        --calib-corpus brown --calib-tokens 4096 --out DIR   (then: ppl/generate --weights DIR)
    mugi-jax ppl --mesh data=2,model=4 ...   # over 8 devices (docs/scaling.md)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mugi_jax.cli import _mesh
from mugi_jax.cli._common import (OVERRIDE_HELP, CliError, app, check_choice, check_data_dir,
                                  check_float,
                                  check_int, enable_compilation_cache, model_policy, numerics_policy,
                                  print_json, status)

#: ``--weight-residency`` values (mugi_jax.models.llama.RESIDENCIES, not imported: the CLI starts
#: without JAX).
RESIDENCIES = ("prepared", "bf16", "int4")


def _has_int4_weights(policy: object) -> bool:
    """Whether ``policy``'s decoder projections run on INT4 weights (``--weight-residency int4``)."""
    return getattr(policy.op("layers.0.mlp.down_proj", "linear"), "weight_scheme", None) is not None


#: Upper bounds that keep a request within what fits in memory on one host.
MAX_BATCH = 1024
MAX_SEED = 2**32 - 1


#: Chat templates: SmolLM2's ChatML and Gemma's turns (the BOS comes from the tokenizer).
_CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
_GEMMA_CHAT = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


def _check_model(model: str) -> None:
    from pathlib import Path

    from mugi_jax import models

    if model not in models.MODELS and not Path(model).exists():
        raise CliError(f"--model: unknown model {model!r}; valid: {', '.join(models.MODELS)}, or "
                       "the path of a .gguf file or a Hugging Face checkpoint directory")
    if model in models.ENCODERS:
        raise CliError(f"--model: {model!r} is an encoder (no next-token logits); evaluate it with "
                       f"`mugi-jax embed-eval --model {model}`")


def _load(model: str, mesh=None, fallback: bool = False):  # noqa: ANN001,ANN202
    """A registry name, or a Hugging Face Llama directory (with ``mesh``: read onto the mesh
    slice by slice)."""
    from pathlib import Path

    from mugi_jax import data, models

    _check_model(model)
    if mesh is not None and Path(model).is_dir():
        try:
            with status(f"loading {model}", enabled=_mesh.is_writer()):
                m, tok, cfg = models.load(path=model, mesh=mesh, mesh_fallback=fallback)
        except (ValueError, FileNotFoundError) as err:
            raise CliError(f"--model {model}: {err}") from None
        if tok is None:
            raise CliError(f"--model {model}: the directory has no tokenizer.json")
        return m, tok, cfg
    try:
        with status(f"loading {model}", enabled=_mesh.is_writer()):
            return models.load(model)
    except (data.DataError, models.CheckpointError, FileNotFoundError) as err:
        raise CliError(str(err)) from None


def _check_weights_dir(weights: str | None) -> None:
    """A ``--weights`` directory must hold the weights file (checked before any work)."""
    from pathlib import Path

    from mugi_jax.models import quantize as mq

    if weights is not None and not (Path(weights) / mq.WEIGHTS_FILE).is_file():
        raise CliError(f"--weights: {weights} has no {mq.WEIGHTS_FILE}; create it with "
                       "`mugi-jax quantize --out DIR`")


def _with_weights(m, tok, model: str, policy, weights: str | None):  # noqa: ANN001,ANN202
    """The model with the INT4 weights the run uses (``--weights DIR`` or the policy's recipe,
    built once and cached); the second value describes them (None: round to nearest)."""
    from mugi_jax import data
    from mugi_jax.models import quantize as mq

    try:
        with status("preparing INT4 weights (the first run calibrates)"):
            return mq.weights_for(m, tok, model, policy, weights)
    except (mq.WeightsError, data.DataError) as err:
        raise CliError(str(err)) from None


@app.command()
def ppl(
    model: str = typer.Option("smollm2-135m", help="Model: smollm2-135m, gemma3-270m, or a "
                                                   "checkpoint (.gguf file or Hugging Face "
                                                   "directory)."),
    corpus: str = typer.Option("sotu", help="Corpus: sotu, brown or austen."),
    numerics: str = typer.Option("exact", "--numerics",
                                 help="Numerics preset: exact, nonlinear-only, pwl, taylor, mugi-l, mugi, "
                                      "mugi-exact, mugi-asym."),
    override: list[str] = typer.Option([], "--override", help=OVERRIDE_HELP),
    context: int = typer.Option(512, help="Window length in tokens (non-overlapping windows)."),
    max_tokens: int = typer.Option(4096, help="Evaluate the first N tokens of the corpus."),
    batch_size: int = typer.Option(4, help="Windows per forward pass (with --mesh: rounded up "
                                           "to a multiple of the data axis)."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Quantized-weights directory (mugi-jax quantize)."),
    bos: bool = typer.Option(False, "--bos", help="Put the model's BOS token in front of every "
                                                  "window (default: the text's tokens only)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    mesh: Optional[str] = _mesh.MESH_OPTION,
    mesh_fallback: bool = _mesh.FALLBACK_OPTION,
    distributed: bool = _mesh.DISTRIBUTED_OPTION,
) -> None:
    """Perplexity of a model on a corpus under a numerics policy (no BOS unless --bos).

    ppl = exp(mean NLL) over the evaluated tokens."""
    from mugi_jax import data, eval as ev

    _check_model(model)
    if corpus not in data.CORPORA:
        raise CliError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(data.CORPORA)}")
    check_int("--context", context, 2)
    check_int("--max-tokens", max_tokens, 2)
    check_int("--batch-size", batch_size, 1, MAX_BATCH)
    policy = numerics_policy(numerics, override)
    _check_weights_dir(weights)
    device_mesh = _mesh.setup(mesh, distributed)
    check_data_dir()
    try:  # the corpus first: a damaged cache fails before the model is loaded
        text = data.corpus_text(corpus)
    except data.DataError as err:
        raise CliError(str(err)) from None
    enable_compilation_cache()
    m, tok, cfg = _load(model, device_mesh, mesh_fallback)
    _mesh.check_model(cfg, device_mesh, mesh_fallback)
    policy = model_policy(numerics, override, m)  # the family's VLP windows
    if context + bos > cfg.max_seq_len:
        raise CliError(f"--context {context}{' (+1 for --bos)' if bos else ''}: exceeds {model}'s "
                       f"context of {cfg.max_seq_len} tokens")
    if bos and tok.bos_id is None:
        raise CliError(f"--bos: {model} has no BOS token")
    m, wspec = _with_weights(m, tok, model, policy, weights)
    ids = ev.corpus_tokens(tok, text, max_tokens)
    if len(ids) < 2:
        raise CliError(f"--corpus {corpus}: the corpus text has {len(ids)} token(s); need >= 2")
    try:
        # Without --json a progress bar counts the batches; with it, a spinner (terminal only).
        writer = _mesh.is_writer()
        with status(f"perplexity [{numerics}] (the first batch compiles)",
                    enabled=json_out and writer):
            res = ev.perplexity(m, ids, policy, context=context, max_tokens=max_tokens,
                                batch_size=batch_size, progress=not json_out and writer,
                                bos_id=tok.bos_id if bos else None,
                                mesh=device_mesh, mesh_fallback=mesh_fallback)
    except ValueError as err:
        raise CliError(str(err)) from err
    res = {"model": model, "corpus": corpus, **res, "weights": wspec}
    if device_mesh is not None:
        res["mesh"] = dict(device_mesh.shape)
    if not writer:
        return
    if json_out:
        print_json(res)
    else:
        typer.echo(f"{model} on {corpus} [{numerics}], context {context}: ppl {res['ppl']:.4f} "
                   f"over {res['predicted_tokens']} predicted tokens ({res['seconds']:.1f} s)")


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text (repeat for a batch)."),
    model: str = typer.Option("smollm2-135m", help="Model: smollm2-135m, gemma3-270m, or a "
                                                   "checkpoint (.gguf file or Hugging Face "
                                                   "directory)."),
    numerics: str = typer.Option("exact", "--numerics", help="Numerics preset."),
    override: list[str] = typer.Option([], "--override", help=OVERRIDE_HELP),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_k: Optional[int] = typer.Option(None, help="Sample from the k most likely tokens."),
    seed: int = typer.Option(0, help="PRNG seed for sampling."),
    chat: bool = typer.Option(False, help="Wrap the prompt in the model's chat template."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Quantized-weights directory (mugi-jax quantize)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    mesh: Optional[str] = _mesh.MESH_OPTION,
    mesh_fallback: bool = _mesh.FALLBACK_OPTION,
    distributed: bool = _mesh.DISTRIBUTED_OPTION,
    weight_residency: str = typer.Option(
        "prepared", "--weight-residency",
        help="How the weights are held: prepared (what the GEMMs consume, derived once), bf16 "
             "(FP weights in BF16: rounds exact's FP32 weights, identical for mugi's head) or "
             "int4 (INT4 presets: codes and scales only, identical results); docs/models.md."),
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
    policy = numerics_policy(numerics, override)
    check_choice("--weight-residency", weight_residency, RESIDENCIES)
    if weight_residency == "int4" and not _has_int4_weights(policy):
        raise CliError(f"--weight-residency int4: numerics {numerics!r} keeps no INT4 projection "
                       f"weights; use it with an INT4 preset (mugi, mugi-exact, mugi-asym)")
    _check_weights_dir(weights)
    device_mesh = _mesh.setup(mesh, distributed)
    check_data_dir()
    enable_compilation_cache()
    m, tok, cfg = _load(model, device_mesh, mesh_fallback)
    _mesh.check_model(cfg, device_mesh, mesh_fallback)
    policy = model_policy(numerics, override, m)  # the family's VLP windows
    m, _ = _with_weights(m, tok, model, policy, weights)
    if top_k is not None:
        check_int("--top-k", top_k, 1, cfg.vocab_size)
    if max_new_tokens >= cfg.max_seq_len:
        raise CliError(f"--max-new-tokens {max_new_tokens}: must be below {model}'s context of "
                       f"{cfg.max_seq_len} tokens")
    prompts = list(prompt)
    if chat:
        template = (_GEMMA_CHAT if getattr(cfg, "family", "llama") == "gemma3" else _CHATML)
        prompts = [template.format(p) for p in prompts]
    import jax

    from mugi_jax.models import Sampler

    try:
        with status(f"generating {max_new_tokens} tokens [{numerics}] (the first run compiles)",
                    enabled=_mesh.is_writer()):
            out = Sampler(m, tok, policy, mesh=device_mesh, mesh_fallback=mesh_fallback,
                          residency=weight_residency)(
                prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                key=jax.random.key(seed), stop_at_eos=True)
    except ValueError as err:  # the prompt plus new tokens exceed the context
        raise CliError(str(err).replace("max_new_tokens", "--max-new-tokens")) from None
    if not _mesh.is_writer():
        return
    if json_out:
        print_json({"model": model, "numerics": numerics, "prompts": list(prompt),
                    "completions": out.text, "tokens": out.tokens})
    else:
        for p, t in zip(prompt, out.text or []):
            typer.echo(f"{p}{t}" if not chat else t)


@app.command()
def quantize(
    out: str = typer.Option(..., "--out", help="Directory to write weights.safetensors and "
                                               "provenance.json into."),
    model: str = typer.Option("smollm2-135m", help="Model name."),
    method: str = typer.Option("gptq", help="rtn, clip, gptq or awq."),
    scheme: str = typer.Option("signmag", help="signmag (Mugi), int4 (two's complement) or asym "
                                               "(uint4 with a float minimum, GGUF Q4_1 style)."),
    group: int = typer.Option(32, help="Group size along the input axis: 32, 64 or 128."),
    calib_corpus: str = typer.Option("brown", help="Corpus whose last tokens calibrate."),
    calib_tokens: int = typer.Option(4096, help="Calibration tokens (from the end of the corpus; "
                                                "evaluation reads its beginning)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Quantize every projection of a model to INT4 with a calibrated method."""
    import time

    from mugi_jax import data
    from mugi_jax.cli._common import check_choice, check_out_dir
    from mugi_jax.models import quantize as mq

    _check_model(model)
    check_choice("--method", method, mq.METHODS)
    check_choice("--scheme", scheme, mq.SCHEMES)
    if group not in mq.GROUPS:
        raise CliError(f"--group {group}: not valid; valid values: "
                       f"{', '.join(map(str, mq.GROUPS))}")
    check_choice("--calib-corpus", calib_corpus, data.CORPORA)
    check_int("--calib-tokens", calib_tokens, mq.MIN_CALIB_TOKENS)
    check_data_dir()
    out_dir = check_out_dir("--out", out)
    try:
        text = data.corpus_text(calib_corpus)
    except data.DataError as err:
        raise CliError(str(err)) from None
    enable_compilation_cache()
    m, tok, _ = _load(model)
    spec = mq.QuantSpec(model, method, scheme, group, calib_corpus, calib_tokens)
    t0 = time.perf_counter()
    try:
        qw, info = mq.build(m, tok, spec, text, progress=not json_out)
    except ValueError as err:
        raise CliError(str(err).replace("calib_tokens", "--calib-tokens")) from None
    mq.save(out_dir, qw, info, time.perf_counter() - t0)
    res = {"out": str(out_dir), "spec": spec.__dict__, **info,
           "tensors": len(qw.kernels), "folded_params": len(qw.params)}
    if json_out:
        print_json(res)
    else:
        typer.echo(f"{model}: {len(qw.kernels)} projections quantized ({method}, {scheme}, "
                   f"g{group}; {info['calibration']}) -> {out_dir}")


@app.command("numerics")
def describe(
    model: str = typer.Option("smollm2-135m", help="Model name."),
    numerics: str = typer.Option("exact", "--numerics", help="Numerics preset."),
    override: list[str] = typer.Option([], "--override", help=OVERRIDE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List every numerics op of a model and the implementation it resolves to.

    One row per op (path and kind), under a numerics preset with its overrides."""
    from mugi_jax import data, models

    if model not in models.MODELS:
        raise CliError(f"--model: unknown model {model!r}; valid: {', '.join(models.MODELS)}")
    numerics_policy(numerics, override)  # bad --numerics/--override fail before loading
    check_data_dir()
    try:
        m, _, _ = models.load(model)
    except (data.DataError, models.CheckpointError) as err:
        raise CliError(str(err)) from None
    policy = model_policy(numerics, override, m)
    rows = policy.describe(m)
    if json_out:
        print_json({"model": model, "numerics": policy.name, "ops": rows})
    else:
        width = max(len(p) for p in rows)
        for path, impl in rows.items():
            typer.echo(f"{path:<{width}}  {impl}")
