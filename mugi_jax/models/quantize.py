"""Calibrated INT4 weights for a whole Llama-family model: collect calibration statistics, quantize
every projection with RTN / clipping search / GPTQ / AWQ, fold AWQ scales, save and load.

Which tensors: the seven projections of every decoder layer (q/k/v/o, gate/up/down).  The
embedding and a tied LM head are *not* quantized here: the numerics policy decides their format
(kept 8-bit/BF16 by the default presets, docs/models.md).

Calibration (:func:`calibration_ids`): the **last** ``N`` tokens of the corpus text, in windows of
``context`` tokens.  Evaluation (``mugi-jax ppl``, the report) reads the first ``--max-tokens``
(at most :data:`EVAL_RESERVED_TOKENS`) tokens; a calibration range that would reach into that
prefix is an error, so the two never overlap.

Statistics (:func:`collect_statistics`): per layer, the :class:`~mugi_jax.quant.Calibration` of
the four distinct projection inputs (attention input, shared by q/k/v; o_proj input; MLP input,
shared by gate/up; down_proj input), from the full-precision model (not sequentially through the
already-quantized layers: one forward pass per window).

AWQ folds (:func:`quantize_model`): the q/k/v scales ``s`` (searched jointly on the concatenated
kernels) divide the attention RMSNorm weight; gate/up likewise the MLP RMSNorm weight; the
down_proj scales divide the up_proj output channels (exact for any gated FFN, SwiGLU or GeGLU:
``act(g) * (u / s) = h / s``).  A fold goes only into the norm that directly feeds the quantized
kernels: for Gemma 3 that is the *pre*-attention and *pre*-FFN norm (``attn_norm``,
``mlp_norm``; their GGUF/HF weights already hold Gemma's ``1 + w``, and the fold divides that
whole multiplier); the post-attention/post-FFN norms act on the sublayer *outputs* and the
QK-norm on the q/k *outputs*, so they are left alone.  The o_proj input is the attention output
of the query heads that share the KV heads (GQA: 9 on 3 for SmolLM2, 4 on 1 for Gemma 3): a
v_proj fold would need o_proj scales tied across the heads of a group, and it would change the
values the INT4 KV cache quantizes; o_proj gets the clipping search only (no activation scaling
at run time).  The scales are kept in :attr:`QuantizedWeights.scales` (not saved).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax import io, quant
from mugi_jax.models import capture

__all__ = ["METHODS", "SCHEMES", "GROUPS", "QuantSpec", "QuantizedWeights", "WeightsError",
           "calibration_ids", "collect_statistics", "quantize_model", "apply_weights", "save",
           "load", "EVAL_RESERVED_TOKENS", "MIN_CALIB_TOKENS", "PROJECTIONS",
           "ENCODER_PROJECTIONS", "ENCODER_INPUTS", "encoder_calibration_ids", "quantize_encoder",
           "apply_encoder_weights", "encoder_weights_for", "cached_encoder_weights"]

METHODS = ("rtn", "clip", "gptq", "awq")
SCHEMES = ("signmag", "int4", "asym")
GROUPS = (32, 64, 128)
EVAL_RESERVED_TOKENS = 16384  # the largest evaluation prefix (report: 16k tokens per corpus)
MIN_CALIB_TOKENS = 128
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
PROVENANCE_FILE = "provenance.json"
# (module attribute path inside a block, op path suffix, statistics key)
PROJECTIONS = (("attn.q_proj", "attn"), ("attn.k_proj", "attn"), ("attn.v_proj", "attn"),
               ("attn.o_proj", "o"), ("mlp.gate_proj", "mlp"), ("mlp.up_proj", "mlp"),
               ("mlp.down_proj", "down"))
_STAT_OF_CAPTURE = {"q_proj": "attn", "o_proj": "o", "gate_proj": "mlp", "down_proj": "down"}


class WeightsError(ValueError):
    """A quantized-weights directory that cannot be used (missing, damaged, another model or
    scheme)."""


def scheme_class(name: str) -> type[quant.Scheme]:
    return {"signmag": quant.SignMagnitudeInt4, "int4": quant.Int4, "asym": quant.AsymUInt4}[name]


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What a quantized-weights directory was made from (its identity)."""

    model: str
    method: str
    scheme: str
    group: int
    calib_corpus: str
    calib_tokens: int

    def __post_init__(self) -> None:
        for field, allowed in (("method", METHODS), ("scheme", SCHEMES), ("group", GROUPS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}: must be one of {allowed}, got {getattr(self, field)!r}")

    def scheme_for(self, length: int) -> quant.Scheme:
        """The scheme of a kernel whose input axis has ``length`` elements (the group is the
        largest power-of-two divisor of ``length`` not above ``group``: SmolLM2's d = 576 makes
        g128 kernels with a 576-long input use g64, as the numerics presets do)."""
        from mugi_jax.numerics import fit_group

        g = fit_group(self.group, length)
        if self.scheme == "int4":
            return quant.Int4(group_size=g, axis=0, calibration="minmax")
        return scheme_class(self.scheme)(group_size=g, axis=0)

    @property
    def slug(self) -> str:
        return (f"{self.model}-{self.method}-{self.scheme}-g{self.group}-{self.calib_corpus}"
                f"-{self.calib_tokens}")


@dataclasses.dataclass
class QuantizedWeights:
    """Quantized projection kernels (op path -> QuantizedTensor) and the full-precision
    parameters AWQ changed (parameter path -> array), with the spec they were made from."""

    spec: QuantSpec
    kernels: dict[str, quant.QuantizedTensor]
    params: dict[str, Any]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: AWQ: op path of each quantized kernel -> the per-input-channel scales ``s`` its input is
    #: divided by (through the folds); only in memory (tests check the folds against them).
    scales: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# calibration data


def calibration_ids(tokenizer: Any, text: str, n_tokens: int, context: int = 512) -> list[int]:
    """The last ``n_tokens`` tokens of ``text`` (tokenized from a suffix of the text, grown until
    long enough), checked not to overlap the first :data:`EVAL_RESERVED_TOKENS` tokens."""
    if not isinstance(n_tokens, int) or n_tokens < MIN_CALIB_TOKENS:
        raise ValueError(f"calib_tokens: need at least {MIN_CALIB_TOKENS} calibration tokens, "
                         f"got {n_tokens!r}")
    chars = max(4096, n_tokens * 8)
    while True:
        start = max(0, len(text) - chars)
        ids = tokenizer.encode(text[start:])
        if len(ids) > n_tokens + 64 or start == 0:
            break
        chars *= 2
    # Drop the first (possibly split) token of the suffix; keep the last n_tokens.
    ids = ids[1:][-n_tokens:]
    prefix = tokenizer.encode(text[:start][:EVAL_RESERVED_TOKENS * 16])  # enough characters
    if len(ids) < n_tokens or len(prefix) < EVAL_RESERVED_TOKENS:
        raise ValueError(f"calib_tokens: {n_tokens} calibration tokens from the end of the corpus "
                         f"would overlap its first {EVAL_RESERVED_TOKENS} tokens, which evaluation "
                         "reads; use fewer calibration tokens")
    return ids


def collect_statistics(model: Any, ids: list[int], context: int = 512,
                       inputs: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per layer, the :class:`~mugi_jax.quant.Calibration` of each distinct projection input
    (keys ``attn``, ``o``, ``mlp``, ``down``), accumulated over windows of ``context`` tokens of
    the full-precision model.  ``inputs``: projection name -> statistics key (default: the
    decoder's; :data:`ENCODER_INPUTS` for a BERT encoder)."""
    inputs = _STAT_OF_CAPTURE if inputs is None else inputs
    from mugi_jax import numerics

    n_layers = model.config.n_layers
    graphdef, state = nnx.split(model)
    toks = np.asarray(ids, np.int32)
    n_win = len(toks) // context
    if n_win == 0:
        raise ValueError(f"calib_tokens: {len(toks)} tokens do not fill one {context}-token window")

    @jax.jit
    def stats_of(state: Any, window: jax.Array) -> dict[str, quant.Calibration]:
        m = nnx.merge(graphdef, state)
        rec = capture.Recorder("full", include=tuple(inputs))
        m(window[None], capture.capturing(numerics.EXACT, rec))  # a capture rule on every op
        out = {}
        for name, x in rec.records.items():
            layer = re.search(r"layers\.(\d+)\.", name)
            key = next((v for k, v in inputs.items() if name.endswith(k)), None)
            if layer is not None and key is not None:
                out[f"{layer.group(1)}.{key}"] = quant.Calibration.of(x)
        return out

    total: dict[str, quant.Calibration] = {}
    for w in range(n_win):
        part = stats_of(state, jnp.asarray(toks[w * context:(w + 1) * context]))
        total = part if not total else {k: jax.tree.map(jnp.add, total[k], part[k]) for k in total}
    return [{k: total[f"{i}.{k}"] for k in ("attn", "o", "mlp", "down")} for i in range(n_layers)]


# ---------------------------------------------------------------------------------------------
# quantization


def _get(block: Any, path: str) -> Any:
    for part in path.split("."):
        block = getattr(block, part)
    return block


def _one(w: jax.Array, stats: quant.Calibration, scheme: quant.Scheme, method: str):
    if method == "rtn":
        return quant.quantize(w, scheme)
    if method == "clip":
        return quant.clip(w, scheme, stats)
    if method == "gptq":
        return quant.gptq(w, stats, scheme)
    raise AssertionError(method)


def _kernels_of(block: Any, projections: tuple[tuple[str, str], ...]) -> dict[str, jax.Array]:
    return {p: jnp.asarray(_get(block, p).kernel.get_value(), jnp.float32) for p, _ in projections}


def _quantize_each(i: int, w: dict[str, jax.Array], st: dict[str, Any] | None, spec: QuantSpec,
                   projections: tuple[tuple[str, str], ...]) -> dict[str, quant.QuantizedTensor]:
    """Every kernel of layer ``i`` on its own (rtn, clip, gptq)."""
    return {f"layers.{i}.{p}": _one(w[p], None if st is None else st[key],
                                    spec.scheme_for(w[p].shape[0]), spec.method)
            for p, key in projections}


def quantize_model(model: Any, stats: list[dict[str, Any]] | None, spec: QuantSpec,
                   progress: bool = False) -> QuantizedWeights:
    """Quantize every projection of ``model`` per ``spec`` (``stats`` from
    :func:`collect_statistics`; unused for ``rtn``)."""
    kernels: dict[str, quant.QuantizedTensor] = {}
    params: dict[str, Any] = {}
    scales: dict[str, Any] = {}
    layers = list(model.layers)
    if progress:
        from tqdm import tqdm

        layers = tqdm(layers, desc=f"quantize[{spec.method}]", unit="layer")
    for i, block in enumerate(layers):
        w = _kernels_of(block, PROJECTIONS)
        st = None if stats is None else stats[i]
        if spec.method != "awq":
            kernels.update(_quantize_each(i, w, st, spec, PROJECTIONS))
            continue
        # AWQ: joint scales for kernels sharing an input, folded into the preceding op
        sch = spec.scheme_for(w["attn.q_proj"].shape[0])
        qkv = ("attn.q_proj", "attn.k_proj", "attn.v_proj")
        s_attn, _ = quant.awq_scales(jnp.concatenate([w[p] for p in qkv], 1), st["attn"], sch)
        for p in qkv:
            kernels[f"layers.{i}.{p}"], _ = quant.awq(w[p], st["attn"], sch, scales=s_attn)
            scales[f"layers.{i}.{p}"] = s_attn
        params[f"layers.{i}.attn_norm.scale"] = block.attn_norm.scale.get_value() / s_attn
        kernels[f"layers.{i}.attn.o_proj"] = quant.clip(
            w["attn.o_proj"], spec.scheme_for(w["attn.o_proj"].shape[0]), st["o"])
        sch_d = spec.scheme_for(w["mlp.down_proj"].shape[0])
        s_down, _ = quant.awq_scales(w["mlp.down_proj"], st["down"], sch_d)
        kernels[f"layers.{i}.mlp.down_proj"], _ = quant.awq(w["mlp.down_proj"], st["down"], sch_d,
                                                            scales=s_down)
        up = w["mlp.up_proj"] / s_down[None, :]  # the up_proj output carries 1/s_down
        sch_m = spec.scheme_for(up.shape[0])
        s_mlp, _ = quant.awq_scales(jnp.concatenate([w["mlp.gate_proj"], up], 1), st["mlp"], sch_m)
        kernels[f"layers.{i}.mlp.gate_proj"], _ = quant.awq(w["mlp.gate_proj"], st["mlp"], sch_m,
                                                            scales=s_mlp)
        kernels[f"layers.{i}.mlp.up_proj"], _ = quant.awq(up, st["mlp"], sch_m, scales=s_mlp)
        params[f"layers.{i}.mlp_norm.scale"] = block.mlp_norm.scale.get_value() / s_mlp
        scales.update({f"layers.{i}.mlp.gate_proj": s_mlp, f"layers.{i}.mlp.up_proj": s_mlp,
                       f"layers.{i}.mlp.down_proj": s_down})
    return QuantizedWeights(spec, kernels, params, scales=scales)


def apply_weights(model: Any, weights: QuantizedWeights) -> Any:
    """A copy of ``model`` whose projection kernels are the quantized tensors (and whose RMSNorm
    weights carry the AWQ folds).  Raises :class:`WeightsError` for a shape mismatch."""
    new = nnx.clone(model)
    for i, block in enumerate(new.layers):
        for p, _ in PROJECTIONS:
            lin = _get(block, p)
            q = weights.kernels.get(f"layers.{i}.{p}")
            if q is None or tuple(q.shape) != tuple(lin.kernel.get_value().shape):
                raise WeightsError(f"--weights: tensor layers.{i}.{p} is missing or has the wrong "
                                   f"shape for {weights.spec.model}")
            lin.kernel = nnx.Param(q)
        for norm in ("attn_norm", "mlp_norm"):
            v = weights.params.get(f"layers.{i}.{norm}.scale")
            if v is not None:
                getattr(block, norm).scale = nnx.Param(jnp.asarray(v, jnp.float32))
    return new


# ---------------------------------------------------------------------------------------------
# BERT encoders (post-LayerNorm)

#: The encoder's projections (module attribute path inside a layer, statistics key).
ENCODER_PROJECTIONS = (("attn.q_proj", "attn"), ("attn.k_proj", "attn"), ("attn.v_proj", "attn"),
                       ("attn.o_proj", "o"), ("mlp.up_proj", "mlp"), ("mlp.down_proj", "down"))
#: Captured projection input -> statistics key, for :func:`collect_statistics` on an encoder.
ENCODER_INPUTS = {"q_proj": "attn", "o_proj": "o", "up_proj": "mlp", "down_proj": "down"}
#: Encoder calibration windows start this many tokens into a document: an evaluation passage
#: (``eval.brown_genre_task``) is a document's first <= ``max_seq_len`` (256) tokens.
ENCODER_SKIP_TOKENS = 512
ENCODER_WINDOW = 128


def encoder_calibration_ids(tokenizer: Any, documents: list[str], n_tokens: int,
                            window: int = ENCODER_WINDOW,
                            skip_tokens: int = ENCODER_SKIP_TOKENS) -> list[int]:
    """``n_tokens`` (rounded up to whole windows) calibration tokens for an encoder: windows of
    ``window`` tokens, ``[CLS]`` + text + ``[SEP]``, cut from the documents' *tails* (each
    document's first ``skip_tokens`` tokens are never used), last document first.  Returned
    flat (window after window)."""
    if not isinstance(n_tokens, int) or n_tokens < MIN_CALIB_TOKENS:
        raise ValueError(f"calib_tokens: need at least {MIN_CALIB_TOKENS} calibration tokens, "
                         f"got {n_tokens!r}")
    body = window - 2
    out: list[int] = []
    for text in reversed(documents):
        ids = tokenizer.encode(text, special=False)[skip_tokens:]
        for start in range(0, len(ids) - body + 1, body):
            out += [tokenizer.bos_id] + ids[start:start + body] + [tokenizer.eos_id]
            if len(out) >= n_tokens:
                return out
    raise ValueError(f"calib_tokens: the documents hold fewer than {n_tokens} tokens beyond their "
                     f"first {skip_tokens}")


def quantize_encoder(model: Any, stats: list[dict[str, Any]] | None,
                     spec: QuantSpec) -> QuantizedWeights:
    """Quantize every projection of a post-LayerNorm BERT encoder per ``spec``.

    AWQ on a post-LN block: the LayerNorm output feeding q/k/v (and up_proj) is also the
    residual, so a scale cannot be folded into it; erf-GELU sits between up_proj and down_proj,
    so down_proj's scale cannot be folded into up_proj.  Those scales are applied to the
    activation (``Dense.input_scale = 1/s``, an elementwise multiply in FP32 before the GEMM).
    What folds: o_proj's scales into v_proj's output channels and bias (multi-head attention,
    each value channel feeds exactly one o_proj input; exact in FP32; the values the INT4 KV
    cache quantizes are then ``v / s``).
    """
    kernels: dict[str, quant.QuantizedTensor] = {}
    params: dict[str, Any] = {}
    scales: dict[str, Any] = {}
    for i, blk in enumerate(model.layers):
        w = _kernels_of(blk, ENCODER_PROJECTIONS)
        st = None if stats is None else stats[i]
        if spec.method != "awq":
            kernels.update(_quantize_each(i, w, st, spec, ENCODER_PROJECTIONS))
            continue
        pre = f"layers.{i}."
        sch_o = spec.scheme_for(w["attn.o_proj"].shape[0])
        s_o, _ = quant.awq_scales(w["attn.o_proj"], st["o"], sch_o)
        kernels[pre + "attn.o_proj"], _ = quant.awq(w["attn.o_proj"], st["o"], sch_o, scales=s_o)
        w["attn.v_proj"] = w["attn.v_proj"] / s_o[None, :]  # v_proj's output carries 1/s_o
        params[pre + "attn.v_proj.bias"] = blk.attn.v_proj.bias.get_value() / s_o
        qkv = ("attn.q_proj", "attn.k_proj", "attn.v_proj")
        sch = spec.scheme_for(w["attn.q_proj"].shape[0])
        s_attn, _ = quant.awq_scales(jnp.concatenate([w[p] for p in qkv], 1), st["attn"], sch)
        for p in qkv:
            kernels[pre + p], _ = quant.awq(w[p], st["attn"], sch, scales=s_attn)
            params[pre + p + ".input_scale"] = 1.0 / s_attn
            scales[pre + p] = s_attn
        scales[pre + "attn.o_proj"] = s_o
        for p, key in (("mlp.up_proj", "mlp"), ("mlp.down_proj", "down")):
            sch_p = spec.scheme_for(w[p].shape[0])
            kernels[pre + p], s_p = quant.awq(w[p], st[key], sch_p)
            params[pre + p + ".input_scale"] = 1.0 / s_p
            scales[pre + p] = s_p
    return QuantizedWeights(spec, kernels, params, scales=scales)


def apply_encoder_weights(model: Any, weights: QuantizedWeights) -> Any:
    """A copy of the encoder with the quantized kernels, the activation scales
    (``input_scale``) and the folded v_proj biases of ``weights``."""
    new = nnx.clone(model)
    for i, blk in enumerate(new.layers):
        for p, _ in ENCODER_PROJECTIONS:
            lin, name = _get(blk, p), f"layers.{i}.{p}"
            q = weights.kernels.get(name)
            if q is None or tuple(q.shape) != tuple(lin.kernel.get_value().shape):
                raise WeightsError(f"--weights: tensor {name} is missing or has the wrong shape")
            lin.kernel = nnx.Param(q)
            if name + ".input_scale" in weights.params:
                lin.input_scale = nnx.Param(jnp.asarray(weights.params[name + ".input_scale"],
                                                        jnp.float32))
            if name + ".bias" in weights.params:
                lin.bias = nnx.Param(jnp.asarray(weights.params[name + ".bias"], jnp.float32))
    return new


_ENCODER_BUILT: dict[tuple[int, Any], tuple[Any, Any]] = {}
#: Bumped when what :func:`quantize_encoder` computes from the same inputs changes (it is part
#: of the encoder weights' cache key).
ENCODER_RECIPE_VERSION = 1


def _model_fingerprint(model: Any) -> str:
    """sha256 of every parameter's path, dtype, shape and bytes (the model the weights are of)."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)),
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cached_encoder_weights(model: Any, ids: list[int], recipe: Any) -> tuple[QuantizedWeights, bool]:
    """:func:`quantize_encoder` of ``model`` calibrated on ``ids`` (windows of
    :data:`ENCODER_WINDOW`) per ``recipe``, cached on disk under :func:`cache_dir` like the
    decoders' weights (each file written atomically, verified by size and sha256 before use).
    The key covers everything the result depends on: the model's parameters (fingerprint), the
    calibration ids (tokenizer, corpus, window, skipped heads), the recipe and
    :data:`ENCODER_RECIPE_VERSION`.  Returns ``(weights, from_cache)``."""
    key = hashlib.sha256(json.dumps(
        [ENCODER_RECIPE_VERSION, FORMAT_VERSION, _model_fingerprint(model), ENCODER_WINDOW,
         hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest(),
         dataclasses.asdict(recipe)]).encode()).hexdigest()[:16]
    spec = QuantSpec(f"encoder-{key}", recipe.method, recipe.scheme, recipe.group,
                     recipe.calib_corpus, recipe.calib_tokens)
    where = cache_dir(spec)
    qw = _load_cached(where, spec)
    if qw is not None:
        return qw, True
    t0 = time.perf_counter()
    stats = collect_statistics(model, ids, ENCODER_WINDOW, ENCODER_INPUTS)
    qw = quantize_encoder(model, stats, spec)
    _store(where, qw, {"calibration": f"{len(ids)} tokens of {recipe.calib_corpus} "
                                      f"(encoder_calibration_ids, {ENCODER_WINDOW}-token windows)",
                       "recipe_version": ENCODER_RECIPE_VERSION}, time.perf_counter() - t0)
    return qw, False


def encoder_weights_for(model: Any, tokenizer: Any, policy: Any) -> Any:
    """The encoder with the INT4 weights ``policy``'s :class:`~mugi_jax.numerics.WeightRecipe`
    asks for (method, scheme, group; ``calib_tokens`` tokens of ``calib_corpus``, Brown: the
    tails of its files, see :func:`encoder_calibration_ids`), or ``model`` unchanged (no
    recipe, or round to nearest: quantized on the fly).  Built once and cached on disk
    (:func:`cached_encoder_weights`), and kept in memory for the process's last two
    (model, recipe) pairs."""
    from mugi_jax import data

    recipe = getattr(policy, "weights", None)
    if recipe is None or recipe.method == "rtn":
        return model
    key = (id(model), recipe)
    if key in _ENCODER_BUILT:
        return _ENCODER_BUILT[key][1]
    docs = ([t for _, t in data.brown_documents()] if recipe.calib_corpus == "brown"
            else [data.corpus_text(recipe.calib_corpus)])
    ids = encoder_calibration_ids(tokenizer, docs, recipe.calib_tokens)
    built = apply_encoder_weights(model, cached_encoder_weights(model, ids, recipe)[0])
    while len(_ENCODER_BUILT) >= 2:
        _ENCODER_BUILT.pop(next(iter(_ENCODER_BUILT)))
    _ENCODER_BUILT[key] = (model, built)  # the model is held so that its id stays unique
    return built


# ---------------------------------------------------------------------------------------------
# files


def save(directory: str | Path, weights: QuantizedWeights, extra: dict[str, Any] | None = None,
         wall_time_s: float | None = None) -> Path:
    """Write ``weights.safetensors`` (codes int8, scales, zeros, folded norms; the spec in the
    metadata) and ``provenance.json`` into ``directory`` (each file atomically)."""
    from safetensors.numpy import save as st_save

    tensors: dict[str, np.ndarray] = {}
    schemes = {}
    for name, q in weights.kernels.items():
        tensors[f"{name}.codes"] = np.asarray(q.codes, np.int8)
        tensors[f"{name}.scales"] = np.asarray(q.scales, np.float32)
        if q.zeros is not None:
            tensors[f"{name}.zeros"] = np.asarray(q.zeros, np.float32)
        schemes[name] = {"scheme": type(q.scheme).__name__, "group_size": q.group_size}
    for name, v in weights.params.items():
        tensors[name] = np.asarray(v, np.float32)
    spec = dataclasses.asdict(weights.spec)
    meta = {"format": "mugi-jax-quantized-weights", "format_version": str(FORMAT_VERSION),
            "spec": json.dumps(spec)}
    directory = Path(directory)
    io.write_bytes(directory / WEIGHTS_FILE, st_save(tensors, metadata=meta))
    prov = io.provenance({**spec, **(extra or {})}, seed=None, wall_time_s=wall_time_s)
    prov["tensors"] = schemes
    io.write_json(directory / PROVENANCE_FILE, prov)
    return directory


def load(directory: str | Path, model: str | None = None) -> QuantizedWeights:
    """Read a directory written by :func:`save`.  ``model``: the model it must have been made for.
    Raises :class:`WeightsError` (message starts with ``--weights``)."""
    from safetensors import safe_open

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"--weights: {directory} has no {WEIGHTS_FILE}; create it with "
                           "`mugi-jax quantize --out DIR`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "mugi-jax-quantized-weights":
                raise WeightsError(f"--weights: {path} is not a mugi-jax quantized-weights file")
            spec = QuantSpec(**json.loads(meta["spec"]))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except WeightsError:
        raise
    except Exception as err:  # a damaged file: say so in one line
        raise WeightsError(f"--weights: cannot read {path} ({type(err).__name__}: {err})") from err
    if model is not None and spec.model != model:
        raise WeightsError(f"--weights: {directory} holds weights for model {spec.model!r}, not "
                           f"{model!r}")
    kernels, params = {}, {}
    for key, arr in arrays.items():
        if key.endswith(".codes"):
            name = key[:-len(".codes")]
            codes = jnp.asarray(arr, jnp.int8)
            scales = jnp.asarray(arrays[f"{name}.scales"], jnp.float32)
            zeros = arrays.get(f"{name}.zeros")
            scheme = spec.scheme_for(codes.shape[0])
            if codes.shape[0] // scales.shape[0] != scheme.group_size:
                raise WeightsError(f"--weights: tensor {name} has groups of "
                                   f"{codes.shape[0] // scales.shape[0]}, not {scheme.group_size}")
            if zeros is not None:
                zeros = jnp.asarray(zeros, jnp.float32)
            kernels[name] = quant.QuantizedTensor(codes=codes, scales=scales, zeros=zeros,
                                                  scheme=scheme)
        elif not key.endswith((".scales", ".zeros")):
            params[key] = jnp.asarray(arr, jnp.float32)
    prov_path = Path(directory) / PROVENANCE_FILE
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    return QuantizedWeights(spec, kernels, params, prov)


def build(model: Any, tokenizer: Any, spec: QuantSpec, text: str | None, context: int = 512,
          progress: bool = False) -> tuple[QuantizedWeights, dict[str, Any]]:
    """Calibration ids -> statistics -> quantized weights; returns the weights and a record of
    the calibration range (for the provenance)."""
    t0 = time.perf_counter()
    stats, info = None, {"calibration": "none (rtn)"}
    if spec.method != "rtn":
        ids = calibration_ids(tokenizer, text, spec.calib_tokens, context)
        stats = collect_statistics(model, ids, context)
        info = {"calibration": f"last {spec.calib_tokens} tokens of {spec.calib_corpus} "
                               f"(evaluation reads the first <= {EVAL_RESERVED_TOKENS})",
                "calib_windows": len(ids) // context, "calib_context": context}
    weights = quantize_model(model, stats, spec, progress)
    info["quantize_seconds"] = time.perf_counter() - t0
    return weights, info


def cache_dir(spec: QuantSpec) -> Path:
    """Where the weights a policy's recipe asks for are cached (``MUGI_JAX_DATA``)."""
    from mugi_jax import data

    return data.data_dir() / "cache" / "quantized" / spec.slug


def weights_for(model: Any, tokenizer: Any, model_name: str, policy: Any,
                weights_dir: str | Path | None = None,
                progress: bool = False) -> tuple[Any, dict[str, Any] | None]:
    """The model with the INT4 weights ``policy`` runs on: those in ``weights_dir`` (checked to be
    for ``model_name`` and the policy's scheme), else the policy's :class:`WeightRecipe` (built
    once and cached under :func:`cache_dir`), else ``model`` unchanged (round to nearest on the
    fly).  Returns ``(model, spec dict or None)``."""
    from mugi_jax import data, numerics

    if weights_dir is not None:
        qw = load(weights_dir, model=model_name)
        try:
            numerics.check_weights_scheme(policy, qw.spec)
        except ValueError as err:
            raise WeightsError(str(err)) from err
        return apply_weights(model, qw), {**dataclasses.asdict(qw.spec), "dir": str(weights_dir)}
    recipe = policy.weights
    if recipe is None or recipe.method == "rtn":
        return model, None
    spec = QuantSpec(model_name, recipe.method, recipe.scheme, recipe.group, recipe.calib_corpus,
                     recipe.calib_tokens)
    where = cache_dir(spec)
    qw = _load_cached(where, spec)
    if qw is None:
        text = data.corpus_text(spec.calib_corpus)
        t0 = time.perf_counter()
        qw, info = build(model, tokenizer, spec, text, progress=progress)
        _store(where, qw, info, time.perf_counter() - t0)
    return apply_weights(model, qw), {**dataclasses.asdict(spec), "dir": str(where)}


def _load_cached(where: Path, spec: QuantSpec) -> QuantizedWeights | None:
    """The weights cached in ``where`` for ``spec``, or None (absent, damaged or made for another
    spec: then removed, so the caller rebuilds them).  The file is verified (size, sha256)
    before use; a file cached before files were stamped is adopted if it loads."""
    from mugi_jax import data

    wfile, qw = where / WEIGHTS_FILE, None
    if wfile.is_file() and not wfile.with_name(wfile.name + ".sha256").exists():
        data.stamp_derived(wfile)
    if data.verify_derived(wfile):
        try:
            qw = load(where, model=spec.model)
        except WeightsError:
            wfile.unlink(missing_ok=True)
        if qw is not None and qw.spec != spec:  # never reuse weights made for another recipe
            qw = None
            wfile.unlink(missing_ok=True)
    return qw


def _store(where: Path, qw: QuantizedWeights, info: dict[str, Any], seconds: float) -> None:
    from mugi_jax import data

    save(where, qw, info, seconds)
    data.stamp_derived(where / WEIGHTS_FILE)
