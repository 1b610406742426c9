"""Numerics policy: ordered rules over the named ops of a model (the Qwix convention).

Every numerics-dependent op of a model has a *path* and a *kind*, e.g. (Llama)::

    layers.3.attn.q_proj   linear        layers.3.attn.kv_cache  kv_cache
    layers.3.attn.scores   scores        layers.3.attn.softmax   softmax
    layers.3.attn.context  context       layers.3.mlp.act        activation
    layers.3.mlp.down_proj linear        lm_head                 linear

A model lists its ops with ``model.numerics_ops()`` (``(path, kind)`` pairs) and asks the policy
for each op by path: ``policy.op("layers.3.attn.softmax", "softmax").softmax(x)``.  The model
never branches on numerics.

A :class:`Policy` is an ordered tuple of :class:`Rule`\\ s.  ``Rule(pattern, impl)`` applies to an
op when ``re.fullmatch(pattern, path)`` succeeds and ``impl`` implements the op's kind; the first
rule that applies wins; an op no rule applies to is exact (FP32).  An ``impl`` is

* an implementation: :class:`Nonlinear` (softmax, activation), :class:`Gemm` (linear, scores,
  context) or :class:`KVCache` (kv_cache) - equinox modules whose configuration is static and
  whose tunable parameters (if any) are array leaves, so a policy is a pytree that
  ``eqx.filter_jit`` (or ``jax.jit`` as an argument) traces, and a hashable static argument
  when it holds no arrays;
* another :class:`Policy` (the matched ops resolve in it: this is how ``--override
  'lm_head=exact'`` works);
* anything with a ``resolve(path, kind)`` method (e.g. :class:`mugi_jax.models.capture.Capture`,
  which records an op's input and calls the implementation it wraps).

Presets (:func:`preset`) are rule lists: ``exact``, ``nonlinear-only``, ``pwl``, ``taylor``,
``mugi-l``, ``mugi``, ``mugi-exact`` (see :data:`PRESETS`).  ``policy.describe(model)`` lists the
implementation each op of ``model`` resolves to; ``policy.check(model)`` raises if a user rule
matches no op of the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from mugi_jax import gemm, quant
from mugi_jax import nonlinear as nl

__all__ = [
    "Nonlinear", "Gemm", "KVCache", "Rule", "Policy", "PRESETS", "preset", "EXACT", "KINDS",
    "LINEAR", "SCORES", "CONTEXT", "SOFTMAX", "ACTIVATION", "KV_CACHE", "parse_override",
    "with_overrides", "LayerNumerics", "from_layers", "fit_group", "WeightRecipe",
    "check_weights_scheme", "scheme_name", "KEY_LAYOUTS", "mugi_policy", "vlp_windows",
    "family_of", "VLP_WINDOWS_FILE",
]

#: Op kinds.  An implementation lists the kinds it implements in its ``kinds`` class attribute.
LINEAR, SCORES, CONTEXT = "linear", "scores", "context"
SOFTMAX, ACTIVATION, KV_CACHE = "softmax", "activation", "kv_cache"
KINDS = (LINEAR, SCORES, CONTEXT, SOFTMAX, ACTIVATION, KV_CACHE)


def fit_group(group_size: int | None, length: int) -> int | None:
    """The group size actually used on a reduction axis of ``length``: ``group_size`` when it
    divides ``length``, else the largest power of two below it that does (SmolLM2's d = 576 is
    not a multiple of 128, so its g128 projections use g64; documented in docs/models.md)."""
    if group_size is None or length % group_size == 0:
        return group_size
    g = group_size
    while g > 1 and length % g:
        g //= 2
    return g


def _to_bf16(x: Array) -> Array:
    return x.astype(jnp.bfloat16)


# --------------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------------


class Nonlinear(eqx.Module):
    """How a nonlinear op (softmax, or an activation such as SiLU/GELU) is computed.

    Attributes:
      approx: ``None`` for the exact FP32 function (``jax.nn``), else an approximation object of
        :mod:`mugi_jax.nonlinear` (``VLPConfig``, ``MugiL``, ``PWL``, ``Taylor``, ``Exact``).
      bf16_input: round the input to BF16 at the unit's entry (the Mugi unit's input format).
    """

    approx: Any = eqx.field(default=None, static=True)
    bf16_input: bool = eqx.field(default=False, static=True)
    kinds: ClassVar[tuple[str, ...]] = (SOFTMAX, ACTIVATION)

    @property
    def label(self) -> str:
        return "exact" if self.approx is None else type(self.approx).__name__

    def _call(self, fn: str, x: Array, **kw: Any) -> Array:
        dtype = x.dtype
        # A VLP activation unit rounds a float input to BF16 at entry itself (the same RNE, NaN
        # -> sign | 0x7FC0, as ``astype``); handed the unrounded input, its window reduction and
        # lookup read it directly instead of a rounded copy written in a pass of its own.
        unit_rounds = fn != "softmax" and isinstance(self.approx, (nl.VLPConfig, nl.MugiL))
        if self.bf16_input and not unit_rounds:
            x = _to_bf16(x)
        if self.approx is None:  # no window groups: ``tokens`` does not matter
            x = x.astype(jnp.float32)
            kw.pop("tokens", None)
            out = jax.nn.softmax(x, **kw) if fn == "softmax" else nl.exact(x, fn)
        elif fn == "softmax":
            out = nl.softmax(x, approx=self.approx, **kw)
        elif unit_rounds and dtype == jnp.float32:  # the unit writes the FP32 result itself
            out = nl.vlp(x, fn, self.approx, out_dtype="float32")
        else:
            out = nl.activation(x, fn, approx=self.approx)
        return out.astype(dtype)

    def softmax(self, x: Float[Array, "..."], axis: int = -1, tokens: int | None = None,
                scale: Any = None, mask: Any = None) -> Float[Array, "..."]:
        """Softmax along ``axis`` of ``where(mask, x * float32(scale), -inf)``
        (:func:`nonlinear.masked_scaled`; each part only when given); ``tokens``: the rows are
        ``heads x tokens`` attention rows (head-major) and VLP window groups are formed per
        token (:func:`nonlinear.softmax`).  The result has the masked, scaled scores' dtype."""
        if (isinstance(self.approx, (nl.VLPConfig, nl.MugiL))
                and x.dtype in (jnp.float32, jnp.bfloat16)):
            # the unit rounds FP32 to BF16 at entry itself (``bf16_input`` or not: same codes)
            # and applies the scale and mask as it reads the scores, and writes the result in
            # the dtype asked for (no passes of their own)
            dtype = x.dtype if scale is None else jnp.result_type(x.dtype, jnp.float32)
            return nl.softmax(x, axis=axis, approx=self.approx, tokens=tokens, scale=scale,
                              mask=mask, out_dtype=jnp.dtype(dtype).name)
        return self._call("softmax", nl.masked_scaled(x, scale, mask), axis=axis, tokens=tokens)

    def activation(self, x: Float[Array, "..."], fn: str) -> Float[Array, "..."]:
        """``fn`` (a name of the :mod:`mugi_jax.nonlinear` function registry) of ``x``."""
        return self._call(fn, x)

    def silu(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        return self._call("silu", x)

    def gelu(self, x: Float[Array, "..."], approximate: bool = False) -> Float[Array, "..."]:
        return self._call("gelu_tanh" if approximate else "gelu", x)


class Gemm(eqx.Module):
    """How a GEMM (a projection, or the attention's ``Q K^T`` / ``P V``) is computed.

    Attributes:
      datapath: ``None`` for an FP32 ``jnp`` matmul, else a datapath object of
        :mod:`mugi_jax.gemm` (e.g. ``gemm.Mugi()``).
      weight_scheme: INT4 scheme of :mod:`mugi_jax.quant` the weights are quantized with
        (``None``: weights stay FP32).  Groups run along the reduction axis (axis 0 of an
        ``(in, out)`` kernel).
      mode: ``"fast"`` or ``"exact"`` (passed to ``gemm.matmul``).
      bf16_activations: round activations to BF16 before the GEMM.
      bf16_weights: round FP weights to BF16 once (``weight_scheme=None`` only): the format
        deployed INT4 models keep their LM head / embedding in.  :meth:`prepare_weight` holds
        them as BF16 (the values, half the bytes); products of few rows (decode steps) then run
        on the native BF16-weight kernel (:func:`gemm.bf16_weight_matmul`), which differs from
        XLA's FP32 dot in the summation order only.
    """

    datapath: Any = eqx.field(default=None, static=True)
    weight_scheme: Any = eqx.field(default=None, static=True)
    mode: str = eqx.field(default="fast", static=True)
    bf16_activations: bool = eqx.field(default=False, static=True)
    bf16_weights: bool = eqx.field(default=False, static=True)
    kinds: ClassVar[tuple[str, ...]] = (LINEAR, SCORES, CONTEXT)

    @property
    def label(self) -> str:
        if self.datapath is None and self.weight_scheme is None:
            return ("bf16" if self.bf16_weights else "fp32") + \
                ("/bf16-act" if self.bf16_activations else "")
        return f"{type(self.datapath).__name__ if self.datapath is not None else 'fp32'}" \
               f"/{type(self.weight_scheme).__name__ if self.weight_scheme is not None else 'fp'}" \
               f"/{self.mode}"

    @property
    def quantizes_kv_at_use(self) -> bool:
        """True when :meth:`scores`/:meth:`context` quantize K/V per token themselves (on a
        datapath), so the cache keeps the raw values (see :meth:`KVCache.store`)."""
        return self.datapath is not None

    def prepare_weight(self, w: Float[Array, "din dout"]) -> Any:
        """Convert an ``(in, out)`` FP32 kernel to what :meth:`matmul` consumes (done once)."""
        if isinstance(w, quant.QuantizedTensor):  # calibrated weights (models.quantize)
            return w if self.datapath is None else gemm.prepare_weight(w, self.datapath, self.mode)
        if self.weight_scheme is None:  # BF16 weights are held as BF16 (exact, half the bytes)
            return w.astype(jnp.bfloat16) if self.bf16_weights else w
        scheme = dataclasses.replace(self.weight_scheme, axis=0,
                                     group_size=fit_group(self.weight_scheme.group_size, w.shape[0]))
        q = quant.quantize(jnp.asarray(w, jnp.float32), scheme)
        if self.datapath is None:
            return q
        # what the datapath derives from the weights alone (normalised codes and scales)
        return gemm.prepare_weight(q, self.datapath, self.mode)

    def matmul(self, x: Float[Array, "... din"], w: Any) -> Float[Array, "... dout"]:
        """``x @ w`` under this choice; ``w`` is the output of :meth:`prepare_weight`."""
        dtype = jnp.float32
        if self.bf16_activations:
            x = _to_bf16(x)
        if self.datapath is None:
            if not isinstance(w, jax.Array):  # a QuantizedTensor on the FP32 path: dequantize
                w = w.dequantize(jnp.float32)
            elif self.bf16_weights and w.dtype != jnp.bfloat16:
                w = self.prepare_weight(w)  # an unprepared kernel: rounded here, every call
            if w.dtype == jnp.bfloat16:  # BF16-held: prepared BF16 weights or the bf16 residency
                return gemm.bf16_weight_matmul(x, w)  # native on CPU for decode steps
            return jnp.matmul(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)
        if isinstance(w, jax.Array):  # an unprepared FP32 kernel: quantize here (every call)
            w = self.prepare_weight(w)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = gemm.matmul(x2, w, self.datapath, mode=self.mode)
        return out.reshape(*lead, out.shape[-1]).astype(dtype)

    def scores(self, q: Float[Array, "B H M D"], k: Float[Array, "B H S D"],
               kv: Any = None, q_slots: Array | None = None,
               causal: int | None = None) -> Float[Array, "B H M S"]:
        """``Q K^T`` (unscaled) per batch row and KV head; ``M`` = query heads of the GQA group x
        query tokens.  ``kv``: the cache format (a :class:`KVCache`, or its INT4 scheme).  A KIVI
        cache reads each key quantized or not per query slot (``q_slots``, ``(M,)``; ``None``:
        all quantized).  On a datapath, K is quantized per token with the cache's scheme and is
        the weight operand ``(D, S)`` (groups along the reduction ``D``).

        ``causal``: ``T`` when the ``M`` rows are groups of ``T`` query tokens at slots
        ``0 .. T-1`` (no cache offset) and the caller masks every key after its query; the
        scores there may then be left uncomputed (0), the others keep their bits
        (:func:`gemm.cache_scores`)."""
        return self._cache_gemm(q, k, kv, q_slots, "scores", "bhmd,bhsd->bhms", gemm.cache_scores,
                                causal)

    def context(self, p: Float[Array, "B H M S"], v: Float[Array, "B H S D"],
                kv: Any = None, q_slots: Array | None = None,
                causal: int | None = None) -> Float[Array, "B H M D"]:
        """``P V`` per batch row and KV head (``kv``, ``q_slots``: as in :meth:`scores`).  On a
        datapath, V is quantized per token with the cache's scheme and is the weight operand
        ``(S, D)`` (its groups run along ``D``, so the scale changes at every step of the
        reduction over ``S``).  ``causal``: as in :meth:`scores`; ``p`` is 0 after each query
        (those values are not read)."""
        return self._cache_gemm(p, v, kv, q_slots, "context", "bhms,bhsd->bhmd",
                                gemm.cache_context, causal)

    def _cache_gemm(self, a: Array, x: Array, kv: Any, q_slots: Array | None, kivi_op: str,
                    equation: str, on_datapath: Any, causal: int | None = None) -> Array:
        """What :meth:`scores` and :meth:`context` share: a KIVI cache reads per query slot
        (``kv.scores`` / ``kv.context``); without a datapath an FP32 ``einsum`` (BF16 operands
        with ``bf16_activations``); on a datapath the cache quantized per token is the weight
        operand of ``on_datapath`` (:func:`gemm.cache_scores` / :func:`gemm.cache_context`)."""
        if getattr(kv, "kivi", False):
            return getattr(kv, kivi_op)(a, x, q_slots, self.bf16_activations, self, causal)
        kv_scheme = getattr(kv, "scheme", kv)
        if self.datapath is None:
            if self.bf16_activations:
                a, x = _to_bf16(a), _to_bf16(x)
            return jnp.einsum(equation, a.astype(jnp.float32), x.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST)
        if kv_scheme is None:
            raise ValueError("attention GEMMs on a datapath need an INT4 KV-cache scheme "
                             "(a rule giving the attn.kv_cache op a KVCache(scheme=...))")
        xq = quant.quantize_kv(x.astype(jnp.float32), kv_scheme, granularity="per_token")
        return on_datapath(a, xq, self.datapath, self.mode, causal=causal)


KEY_LAYOUTS = ("per_token", "per_channel")


class KVCache(eqx.Module):
    """The KV-cache format.

    Attributes:
      scheme: ``None`` (FP32 cache) or a :mod:`mugi_jax.quant` INT4 scheme.  Values are always
        quantized per token, in groups of ``scheme.group_size`` along ``head_dim`` (``None``: the
        whole head).
      key_layout: ``"per_token"`` (keys like values) or ``"per_channel"`` (KIVI: every channel of
        a KV head has its own scale per group of ``key_group`` consecutive token slots; a group
        is quantized once it is complete).
      key_group: tokens per key group (``per_channel``).
      residual: the newest ``residual`` tokens (relative to each query) stay in full precision:
        a value token ``j`` is quantized for a query at slot ``i`` when ``j + residual <= i``, a
        key group ``[gG, (g+1)G)`` when ``(g+1)G + residual <= i + 1``.  Because this depends
        only on slots, the cached and the uncached paths see identical values.
    """

    scheme: Any = eqx.field(default=None, static=True)
    key_layout: str = eqx.field(default="per_token", static=True)
    key_group: int = eqx.field(default=32, static=True)
    residual: int = eqx.field(default=0, static=True)
    kinds: ClassVar[tuple[str, ...]] = (KV_CACHE,)

    def __check_init__(self) -> None:
        if self.key_layout not in KEY_LAYOUTS:
            raise ValueError(f"key_layout: must be one of {KEY_LAYOUTS}, got {self.key_layout!r}")
        if not isinstance(self.key_group, int) or self.key_group < 1:
            raise ValueError(f"key_group: must be a positive integer, got {self.key_group!r}")
        if not isinstance(self.residual, int) or self.residual < 0:
            raise ValueError(f"residual: must be a non-negative integer, got {self.residual!r}")

    @property
    def kivi(self) -> bool:
        """Whether the cache is quantized at use, depending on the query slot (KIVI layout)."""
        return self.scheme is not None and (self.key_layout == "per_channel" or self.residual > 0)

    @property
    def label(self) -> str:
        if self.scheme is None:
            return "fp32"
        base = f"int4:{type(self.scheme).__name__}"
        if not self.kivi:
            return base
        return f"{base}:k-{self.key_layout}-g{self.key_group}:r{self.residual}"

    def store(self, x: Float[Array, "... tokens head_dim"],
              consumer: Any = None) -> Float[Array, "... tokens head_dim"]:
        """The value the cache holds for ``x`` (quantize + dequantize per token: the values the
        datapath sees; storage is modelled by the cost model, not here).  ``consumer`` is the
        attention GEMM that reads the cache: when it quantizes per token at use
        (``consumer.quantizes_kv_at_use``) the cache keeps the values (per-token groups are
        independent of other tokens, so both give the same codes); the KIVI layout keeps ``x``
        too and quantizes at use (:meth:`scores` / :meth:`context`)."""
        if self.scheme is None or self.kivi or getattr(consumer, "quantizes_kv_at_use", False):
            return x
        q = quant.quantize_kv(x.astype(jnp.float32), self.scheme, granularity="per_token")
        return quant.dequantize(q, jnp.float32).astype(x.dtype)

    def _quantized_keys(self, k: Float[Array, "... S D"]) -> Any:
        """The quantized keys ``(..., S', D)``; per channel, ``S'`` is ``S`` padded to whole key
        groups."""
        if self.key_layout == "per_token":
            return quant.quantize_kv(k.astype(jnp.float32), self.scheme, "per_token")
        s = k.shape[-2]
        # An incomplete last group is read quantized only without query slots (an encoder: the
        # whole sequence is in the cache); edge padding keeps its range that of its tokens.
        pad = -s % self.key_group
        kp = jnp.pad(k.astype(jnp.float32), [(0, 0)] * (k.ndim - 2) + [(0, pad), (0, 0)],
                     mode="edge")
        scheme = dataclasses.replace(self.scheme, group_size=self.key_group)
        return quant.quantize_kv(kp, scheme, "per_channel")

    def _key_values(self, k: Float[Array, "... S D"]) -> Array:
        return quant.dequantize(self._quantized_keys(k), jnp.float32)[..., :k.shape[-2], :]

    def key_mask(self, q_slots: Array | None, s: int) -> Array:
        """``(M, S)``: whether key slot ``j`` is read quantized by the query at ``q_slots[m]``
        (``q_slots=None``: a bidirectional encoder, every key quantized)."""
        if q_slots is None:
            return jnp.ones((1, s), bool)
        j = jnp.arange(s)
        if self.key_layout == "per_token":
            return j[None, :] + self.residual <= q_slots[:, None]
        end = (j // self.key_group + 1) * self.key_group
        return end[None, :] + self.residual <= q_slots[:, None] + 1

    def value_mask(self, q_slots: Array | None, s: int) -> Array:
        if q_slots is None:
            return jnp.ones((1, s), bool)
        return jnp.arange(s)[None, :] + self.residual <= q_slots[:, None]

    def scores(self, q: Float[Array, "B H M D"], k: Float[Array, "B H S D"],
               q_slots: Array | None, bf16: bool, attn: Gemm | None = None,
               causal: int | None = None) -> Float[Array, "B H M S"]:
        """``Q K^T`` with each key read quantized or in full precision per :meth:`key_mask`;
        with an ``attn`` datapath the quantized keys are its weight operand ``(D, S)``.
        ``causal`` (:meth:`Gemm.scores`): the scores after each query are left 0 on the
        datapath, and the full-precision products are computed on the band of keys each query
        reads in full precision only (:meth:`_fp_band`), with the same bits."""
        s = k.shape[-2]
        on_datapath = attn is not None and attn.datapath is not None
        causal = causal if on_datapath and q_slots is not None else None
        if on_datapath:  # quantized keys on the datapath
            s_q = gemm.cache_scores(q, self._quantized_keys(k), attn.datapath, attn.mode,
                                    causal=causal)[..., :s]
        mm = functools.partial(jnp.einsum, "bhmd,bhsd->bhms",
                               precision=jax.lax.Precision.HIGHEST)
        if not on_datapath:
            kq = self._key_values(k)
        if bf16:
            q, k = _to_bf16(q), _to_bf16(k)
        q = q.astype(jnp.float32)
        if not on_datapath:
            s_q = mm(q, kq)
        mask = self.key_mask(q_slots, s)
        k = k.astype(jnp.float32)
        s_fp = (mm(q, k) if causal is None else
                self._fp_band(q, k, self._first_fp_key, mm, True, causal))
        return jnp.where(mask, s_q, s_fp)

    def context(self, p: Float[Array, "B H M S"], v: Float[Array, "B H S D"],
                q_slots: Array | None, bf16: bool, attn: Gemm | None = None,
                causal: int | None = None) -> Float[Array, "B H M D"]:
        """``P V`` with each value token read quantized or in full precision per
        :meth:`value_mask`; with an ``attn`` datapath the quantized values are its weight
        operand ``(S, D)`` (the probabilities of the full-precision tokens masked to 0).
        ``causal`` (:meth:`Gemm.context`): ``p`` is 0 after each query; the datapath skips
        those values and the full-precision products run on the band (:meth:`_fp_band`)."""
        vq = quant.quantize_kv(v.astype(jnp.float32), self.scheme, "per_token")
        if bf16:
            p, v = _to_bf16(p), _to_bf16(v)
        p = p.astype(jnp.float32)
        s = v.shape[-2]
        mask = self.value_mask(q_slots, s)
        on_datapath = attn is not None and attn.datapath is not None
        causal = causal if on_datapath and q_slots is not None else None
        mm = functools.partial(jnp.einsum, "bhms,bhsd->bhmd",
                               precision=jax.lax.Precision.HIGHEST)
        if on_datapath:  # quantized values on the datapath
            c_q = gemm.cache_context(jnp.where(mask, p, 0.0), vq, attn.datapath, attn.mode,
                                     causal=causal)
        else:
            c_q = mm(jnp.where(mask, p, 0.0), quant.dequantize(vq))
        p_fp = jnp.where(mask, 0.0, p)
        v = v.astype(jnp.float32)
        c_fp = (mm(p_fp, v) if causal is None else
                self._fp_band(p_fp, v, self._first_fp_value, mm, False, causal))
        return c_q + c_fp

    def _first_fp_key(self, i: int) -> int:
        """The first key slot a query at slot ``i`` reads in full precision (:meth:`key_mask`;
        may be negative: none is quantized)."""
        if self.key_layout == "per_token":
            return i - self.residual + 1
        return (i + 1 - self.residual) // self.key_group * self.key_group

    def _first_fp_value(self, i: int) -> int:
        """The first value slot a query at slot ``i`` reads in full precision."""
        return i - self.residual + 1

    def _fp_band(self, a: Array, x: Array, first_fp: Callable[[int], int], mm: Any,
                 scores: bool, tokens: int) -> Array:
        """The full-precision products of causal queries without a cache offset on the band of
        slots they read in full precision: ``mm(a, x)`` where it matters, chunk by chunk of
        ``_FP_BAND_TILE`` queries (query ``t`` of each group of ``tokens`` rows at slot ``t``;
        ``S >= tokens`` slots, those after the last query masked), each
        against the slots from its first query's first full-precision slot (rounded down to a
        multiple of 64) to its last query.  ``scores``: ``a`` queries ``(B, H, M, D)``, ``x``
        keys, the result ``(B, H, M, S)`` (0 outside the bands); else ``a`` the probabilities
        ``(B, H, M, S)`` with every slot outside the bands 0 (after a query, or read quantized)
        and ``x`` the values: ``(B, H, M, D)``.

        The bits are those of the whole product: each score is the same dot over ``D``, each
        context row the same sum over the slots with zeros left out at its ends; the band edges
        sit at multiples of 64, where XLA:CPU's dot kernel keeps them (measured; checked by
        tests/models/test_kivi.py).  Otherwise the whole product is computed: with ``S`` not a
        multiple of 64 (the dot then picks other kernels), and for the context past 512 slots
        (measured bit changes at 640: the long reduction is split into blocks)."""
        b, h, m, _ = a.shape
        s = x.shape[-2]
        if s % 64 or tokens % 64 or m % tokens or tokens > s or (not scores and s > 512):
            return mm(a, x)
        grp = m // tokens
        a5 = a.reshape(b, h, grp, tokens, a.shape[-1])
        outs = []
        for q0 in range(0, tokens, _FP_BAND_TILE):
            q1 = min(q0 + _FP_BAND_TILE, tokens)
            lo = min(max(0, first_fp(q0)) // 64 * 64, q1)
            rows = a5[:, :, :, q0:q1].reshape(b, h, grp * (q1 - q0), a.shape[-1])
            if scores:
                o = mm(rows, x[:, :, lo:q1])
                o = jnp.pad(o, ((0, 0), (0, 0), (0, 0), (lo, s - q1)))
            else:
                o = mm(rows[..., lo:q1], x[:, :, lo:q1])
            outs.append(o.reshape(b, h, grp, q1 - q0, o.shape[-1]))
        return jnp.concatenate(outs, axis=3).reshape(b, h, m, -1)


_FP_BAND_TILE = 64  # queries per chunk of KIVI's full-precision band (KVCache._fp_band)


_DEFAULTS: dict[str, Any] = {LINEAR: Gemm(), SCORES: Gemm(), CONTEXT: Gemm(),
                             SOFTMAX: Nonlinear(), ACTIVATION: Nonlinear(), KV_CACHE: KVCache()}


# --------------------------------------------------------------------------------------------
# Rules and policies
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"pattern {pattern!r}: not a regular expression ({err})") from None


def _applies(impl: Any, kind: str) -> bool:
    """Whether ``impl`` implements ops of ``kind`` (policies and wrappers resolve any kind)."""
    kinds = getattr(impl, "kinds", None)
    return kinds is None or kind in kinds


class Rule(eqx.Module):
    """``impl`` for every op whose path ``pattern`` matches in full (``re.fullmatch``) and whose
    kind ``impl`` implements.

    ``required`` (default True): :meth:`Policy.check` reports the rule when its pattern matches
    no op of the model (a typo in an override).  The presets' rules are not required (a model
    family may lack an op, e.g. an encoder has no KV cache).
    """

    pattern: str = eqx.field(static=True)
    impl: Any
    required: bool = eqx.field(default=True, static=True)

    def __check_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise ValueError(f"pattern: must be a string, got {self.pattern!r}")
        _compiled(self.pattern)

    def matches(self, path: str) -> bool:
        return _compiled(self.pattern).fullmatch(path) is not None


@dataclasses.dataclass(frozen=True)
class WeightRecipe:
    """How a policy's INT4 projection weights are made when no ``--weights`` directory is given:
    ``method`` (rtn, clip, gptq, awq) on ``calib_tokens`` tokens from the end of ``calib_corpus``
    (:mod:`mugi_jax.models.quantize`; built once and cached).  The scheme is the policy's."""

    method: str = "rtn"
    scheme: str = "signmag"
    group: int = 128
    calib_corpus: str = "brown"
    calib_tokens: int = 4096


class Policy(eqx.Module):
    """Numerics of a whole model: ordered :class:`Rule`\\ s, the first applicable one wins.

    ``weights``: how the INT4 projection weights are made (``None``: round to nearest on the
    fly; see :class:`WeightRecipe`)."""

    name: str = eqx.field(default="exact", static=True)
    rules: tuple[Rule, ...] = ()
    weights: WeightRecipe | None = eqx.field(default=None, static=True)

    def __init__(self, name: str = "exact", rules: Sequence[Rule] | "LayerNumerics" = (),
                 layers: Sequence[tuple[int, "LayerNumerics"]] = (),
                 head: "LayerNumerics | None" = None,
                 weights: WeightRecipe | None = None) -> None:
        if isinstance(rules, LayerNumerics):  # the previous Policy(name, default, layers, head)
            rules = _layer_rules(rules, layers, head)
        elif layers or head is not None:
            raise ValueError("layers/head: only with a LayerNumerics default (the previous API); "
                             "give per-layer rules instead")
        self.name = name
        self.rules = tuple(rules)
        self.weights = weights

    def __check_init__(self) -> None:
        if not isinstance(self.rules, tuple) or not all(isinstance(r, Rule) for r in self.rules):
            raise ValueError("rules: must be a tuple of numerics.Rule")

    def rule_for(self, path: str, kind: str) -> Rule | None:
        """The first rule that applies to op ``path`` of ``kind`` (``None``: exact default)."""
        for rule in self.rules:
            if rule.matches(path) and _applies(rule.impl, kind):
                return rule
        return None

    def resolve(self, path: str, kind: str) -> Any:
        """The implementation of op ``path`` of ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        rule = self.rule_for(path, kind)
        if rule is None:
            return _DEFAULTS[kind]
        impl = rule.impl
        return impl.resolve(path, kind) if hasattr(impl, "resolve") else impl

    op = resolve  # what model code calls: ``policy.op(path, kind)``

    def prepend(self, *rules: Rule, name: str | None = None) -> "Policy":
        """A copy with ``rules`` in front (they take precedence)."""
        return Policy(self.name if name is None else name, tuple(rules) + self.rules,
                      weights=self.weights)

    def unmatched(self, ops: Iterable[tuple[str, str]]) -> list[str]:
        """Patterns of required rules (nested policies included) that match no op path."""
        paths = [p for p, _ in ops]
        out = []
        for rule in self.rules:
            if rule.required and not any(rule.matches(p) for p in paths):
                out.append(rule.pattern)
            if isinstance(rule.impl, Policy):
                out += [p for p in rule.impl.unmatched(ops) if p not in out]
        return out

    def check(self, model: Any) -> None:
        """Raise ``ValueError`` naming every required rule pattern that matches no op of
        ``model`` (``model.numerics_ops()``)."""
        ops = _ops_of(model)
        bad = self.unmatched(ops)
        if bad:
            names = ", ".join(f"'{b}'" for b in bad)
            raise ValueError(
                f"numerics rule pattern(s) {names} match no op of the "
                f"model (ops look like {ops[0][0]!r}, {ops[-1][0]!r}; see docs/numerics.md)")

    def describe(self, model: Any = None) -> dict[str, Any]:
        """With a model: ``{op path: "kind: implementation"}`` for every op of the model, in
        the model's order.  Without: the policy's name and rules."""
        if model is None:
            return {"name": self.name,
                    "rules": [(r.pattern, _label(r.impl)) for r in self.rules],
                    "weights": None if self.weights is None else dataclasses.asdict(self.weights)}
        return {path: f"{kind}: {_label(self.resolve(path, kind))}"
                for path, kind in _ops_of(model)}

    # ---- the per-layer view of the previous API (kept for existing callers) ----------------

    def layer(self, i: int) -> "LayerNumerics":
        """The resolved implementations of Llama decoder layer ``i`` as a :class:`LayerNumerics`
        (the previous per-layer API; new code asks :meth:`op` by path)."""
        p = f"layers.{i}."
        act = self.op(p + "mlp.act", ACTIVATION)
        return LayerNumerics(softmax_fn=self.op(p + "attn.softmax", SOFTMAX), silu_fn=act,
                             gelu_fn=act, proj=self.op(p + "mlp.down_proj", LINEAR),
                             attn=self.op(p + "attn.scores", SCORES),
                             kv=self.op(p + "attn.kv_cache", KV_CACHE))

    @property
    def default(self) -> "LayerNumerics":
        """:meth:`layer` of layer 0 (the previous API's default layer numerics)."""
        return self.layer(0)

    def lm_head(self) -> "LayerNumerics":
        return dataclasses.replace(self.layer(0), proj=self.op("lm_head", LINEAR))

    def with_layer(self, i: int, numerics: "LayerNumerics") -> "Policy":
        """A copy with decoder layer ``i`` overridden (rules in front)."""
        return self.prepend(*numerics.rules(rf"layers\.{i}"))


def _label(impl: Any) -> str:
    if isinstance(impl, Policy):
        return f"policy {impl.name}"
    return getattr(impl, "label", type(impl).__name__)


def _ops_of(model: Any) -> list[tuple[str, str]]:
    if hasattr(model, "numerics_ops"):
        return list(model.numerics_ops())
    return [(p, k) for p, k in model]


@dataclasses.dataclass(frozen=True)
class LayerNumerics:
    """The implementations of one Llama decoder layer (the previous per-layer API, kept so that
    existing code runs; it converts to rules with :meth:`rules`)."""

    softmax_fn: Any = Nonlinear()
    silu_fn: Any = Nonlinear()
    gelu_fn: Any = Nonlinear()
    proj: Any = Gemm()
    attn: Any = Gemm()
    kv: Any = KVCache()

    def rules(self, layer: str = r"layers\.\d+", head: bool = False) -> tuple[Rule, ...]:
        """Rules giving the ops of the layers matched by ``layer`` (a pattern) these
        implementations (and the LM head ``proj`` when ``head``)."""
        out = (Rule(layer + r"\.attn\.softmax", self.softmax_fn, required=False),
               Rule(layer + r"\.mlp\.act", self.silu_fn, required=False),
               Rule(layer + r"\.(attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)", self.proj,
                    required=False),
               Rule(layer + r"\.attn\.(scores|context)", self.attn, required=False),
               Rule(layer + r"\.attn\.kv_cache", self.kv, required=False))
        return out + ((Rule("lm_head", self.proj, required=False),) if head else ())

    # The methods the previous model code called.
    def softmax(self, x: Array, axis: int = -1, tokens: int | None = None, scale: Any = None,
                mask: Any = None) -> Array:
        return self.softmax_fn.softmax(x, axis=axis, tokens=tokens, scale=scale, mask=mask)

    def silu(self, x: Array) -> Array:
        return self.silu_fn.silu(x)

    def gelu(self, x: Array, approximate: bool = False) -> Array:
        return self.gelu_fn.gelu(x, approximate=approximate)

    def prepare_weight(self, w: Array) -> Any:
        return self.proj.prepare_weight(w)

    def linear(self, x: Array, w: Any) -> Array:
        return self.proj.matmul(x, w)

    def kv_store(self, x: Array) -> Array:
        return self.kv.store(x, self.attn)

    def scores(self, q: Array, k: Array, q_slots: Array | None = None) -> Array:
        """``Q K^T``; ``q_slots`` (``(M,)``, the slot of every query row) tells the KIVI cache
        layout which keys a causal query reads quantized (``None``: all of them)."""
        return self.attn.scores(q, k, self.kv, q_slots)

    def context(self, p: Array, v: Array, q_slots: Array | None = None) -> Array:
        return self.attn.context(p, v, self.kv, q_slots)

    def describe(self) -> dict[str, str]:
        return {"softmax": _label(self.softmax_fn), "silu": _label(self.silu_fn),
                "proj": _label(self.proj), "attn": _label(self.attn), "kv": _label(self.kv)}


def _layer_rules(default: LayerNumerics, layers: Sequence[tuple[int, LayerNumerics]] = (),
                 head: LayerNumerics | None = None) -> tuple[Rule, ...]:
    rules: tuple[Rule, ...] = ()
    for i, ln in layers:
        rules += ln.rules(rf"layers\.{i}")
    rules += (Rule("lm_head", (head or default).proj, required=False),)
    return rules + default.rules()


def from_layers(name: str, default: LayerNumerics,
                layers: Sequence[tuple[int, LayerNumerics]] = (),
                head: LayerNumerics | None = None) -> Policy:
    """A :class:`Policy` from the previous per-layer description (default layer numerics,
    ``(index, LayerNumerics)`` overrides, LM head); ``Policy(name, default, layers, head)``
    does the same."""
    return Policy(name, _layer_rules(default, layers, head))


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

EXACT = Policy("exact")


#: Per-family VLP windows (``e_top`` of the softmax exponential and of the FFN activation), one
#: record per family; produced by ``python -m mugi_jax.tune.windows --model NAME --write``.
VLP_WINDOWS_FILE = Path(__file__).resolve().parent / "data" / "vlp_windows.json"


@functools.lru_cache(maxsize=1)
def _window_records(path: str) -> dict[str, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return {}
    return {r["family"]: r for r in json.loads(p.read_text(encoding="utf-8"))["records"]}


def family_of(model: Any) -> str | None:
    """The family key of a model (or its config): ``config.family`` (``llama``, ``gemma3``,
    ``bert``, ...); ``None`` when it has none."""
    return getattr(getattr(model, "config", model), "family", None)


def vlp_windows(family: str | None) -> tuple[nl.VLPConfig, nl.VLPConfig]:
    """The ``(softmax, activation)`` VLP configurations the presets use for ``family``: the
    calibrated ``e_top`` of its record in :data:`VLP_WINDOWS_FILE`, else ``VLPConfig()``."""
    base = nl.VLPConfig()
    rec = None if family is None else _window_records(str(VLP_WINDOWS_FILE)).get(family)
    if rec is None:
        return base, base
    return (dataclasses.replace(base, e_top=int(rec["softmax"]["e_top"])),
            dataclasses.replace(base, e_top=int(rec[rec["activation"]]["e_top"])))


def _nonlinear_only(name: str, approx: Any, act_approx: Any = None) -> Policy:
    unit = Nonlinear(approx, bf16_input=True)
    act = unit if act_approx is None else Nonlinear(act_approx, bf16_input=True)
    return Policy(name, (Rule(r".*\.attn\.softmax", unit, required=False),
                         Rule(r".*\.mlp\.act", act, required=False)))


# Picked by the calibrated-weights study of docs/models.md (AWQ beat GPTQ, clip and RTN).
MUGI_METHOD = "awq"
MUGI_GROUP = 32
KIVI_KEY_GROUP = 32
KIVI_RESIDUAL = 32


MUGI_SCHEMES = ("signmag", "int4", "asym")
MUGI_KV_LAYOUTS = ("kivi", "per_token")


def mugi_policy(scheme: str = "signmag", group: int = MUGI_GROUP, method: str = MUGI_METHOD,
                kv_layout: str = "kivi", mode: str = "fast", name: str | None = None,
                lm_head: str = "bf16", family: str | None = None) -> Policy:
    """Mugi's numerics for one INT4 format: VLP nonlinear ops, BF16 x INT4 projections on the
    Mugi array (``scheme``: ``signmag`` on the 3-bit array, ``asym`` by offset decomposition on
    it, ``int4`` two's complement on the 4-bit-magnitude array) in groups of ``group`` with
    ``method``-calibrated weights, an INT4 KV cache in the same format (``kivi``: keys per
    channel in groups of 32 tokens, values per token, the newest 32 tokens in full precision;
    ``per_token``: keys and values per token), and the LM head (the tied embedding) in BF16 with
    BF16 activations (``lm_head="int4"``: like the projections, round to nearest).  The ``mugi``
    presets are ``kivi`` with AWQ g32 and a BF16 head.  ``family``: the VLP units take the
    family's calibrated windows (:func:`vlp_windows`)."""
    if lm_head not in ("bf16", "int4"):
        raise ValueError(f"lm_head: must be bf16 or int4, got {lm_head!r}")
    if scheme not in MUGI_SCHEMES:
        raise ValueError(f"scheme: must be one of {', '.join(MUGI_SCHEMES)}, got {scheme!r}")
    if kv_layout not in MUGI_KV_LAYOUTS:
        raise ValueError(f"kv_layout: must be one of {', '.join(MUGI_KV_LAYOUTS)}, got {kv_layout!r}")
    weight = {"signmag": quant.SignMagnitudeInt4(group_size=group, axis=0),
              "int4": quant.Int4(group_size=group, axis=0, calibration="minmax"),
              "asym": quant.AsymUInt4(group_size=group, axis=0)}[scheme]
    datapath = gemm.Mugi(magnitude_bits=4 if scheme == "int4" else 3)
    proj = Gemm(datapath=datapath, weight_scheme=weight, mode=mode, bf16_activations=True)
    kv_scheme = {"signmag": quant.SignMagnitudeInt4(group_size=None, axis=-1),
                 "int4": quant.Int4(group_size=None, axis=-1, calibration="minmax"),
                 "asym": quant.AsymUInt4(group_size=None, axis=-1)}[scheme]
    kv = (KVCache(scheme=kv_scheme, key_layout="per_channel", key_group=KIVI_KEY_GROUP,
                  residual=KIVI_RESIDUAL) if kv_layout == "kivi" else KVCache(scheme=kv_scheme))
    # QK^T and PV on the Mugi datapath too: BF16 queries / probabilities x the INT4 K/V cache
    # (KIVI layout: per-channel key groups, per-token values), BF16 product rounding, per-group
    # dequantization; the residual full-precision tokens are BF16 x BF16 products in FP32.
    attn = Gemm(datapath=datapath, mode=mode, bf16_activations=True)
    head = Gemm(bf16_activations=True, bf16_weights=True) if lm_head == "bf16" else proj
    name = name or f"mugi[{scheme},g{group},{method},{kv_layout},head-{lm_head}]"
    base = _nonlinear_only(name, *vlp_windows(family))
    return Policy(name, (Rule("lm_head", head, required=False),
                         Rule(r".*_proj", proj, required=False),
                         Rule(r".*\.attn\.(scores|context)", attn, required=False),
                         Rule(r".*\.attn\.kv_cache", kv, required=False)) + base.rules,
                  weights=WeightRecipe(method, scheme, group))


def _mugi(name: str, mode: str, scheme: str = "signmag", family: str | None = None) -> Policy:
    return mugi_policy(scheme, mode=mode, name=name, family=family)


#: Preset name -> ``f(family=None)`` building it (the VLP units take the family's windows,
#: :func:`vlp_windows`).
PRESETS: dict[str, Callable[..., Policy]] = {
    "exact": lambda family=None: EXACT,
    "nonlinear-only": lambda family=None: _nonlinear_only("nonlinear-only", *vlp_windows(family)),
    "pwl": lambda family=None: _nonlinear_only("pwl", nl.PWL()),
    "taylor": lambda family=None: _nonlinear_only("taylor", nl.Taylor()),
    # the same numerics as VLP (a physical table instead of streaming: only the cost differs)
    "mugi-l": lambda family=None: _nonlinear_only(
        "mugi-l", *(nl.MugiL(c) for c in vlp_windows(family))),
    "mugi": lambda family=None: _mugi("mugi", "fast", family=family),
    "mugi-exact": lambda family=None: _mugi("mugi-exact", "exact", family=family),
    "mugi-asym": lambda family=None: _mugi("mugi-asym", "fast", scheme="asym", family=family),
}


def scheme_name(scheme: Any) -> str | None:
    """``signmag`` / ``int4`` / ``asym`` for a quant scheme (``None`` for no scheme)."""
    if scheme is None:
        return None
    return {"SignMagnitudeInt4": "signmag", "Int4": "int4", "AsymUInt4": "asym"}[
        type(scheme).__name__]


def check_weights_scheme(policy: Policy, spec: Any) -> None:
    """Refuse quantized weights whose scheme is not the one ``policy`` runs its projections in
    (``spec.scheme``: signmag / int4 / asym).  A policy with FP projections accepts any (the
    weights are dequantized: a weights-only study)."""
    want = scheme_name(getattr(policy.op("layers.0.mlp.down_proj", LINEAR), "weight_scheme", None))
    if want is not None and spec.scheme != want:
        raise ValueError(f"--weights: the directory holds {spec.scheme} weights but numerics "
                         f"{policy.name!r} runs its projections in {want}; quantize with "
                         f"--scheme {want} or pick a policy for {spec.scheme}")


def preset(name: str | Policy, family: str | None = None) -> Policy:
    """The named preset (a :class:`Policy` is returned unchanged); ``family`` (a model's
    :func:`family_of`) gives its VLP units the family's calibrated windows (:func:`vlp_windows`).

    Raises ``ValueError`` listing the valid names for an unknown name.
    """
    if isinstance(name, Policy):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown numerics preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name](family)


def parse_override(text: str) -> tuple[str, str]:
    """``"PATTERN=PRESET"`` -> ``(pattern, preset name)`` (split at the last ``=``, so a
    pattern may contain ``=``).  Raises ``ValueError`` for a malformed text, an invalid regular
    expression or an unknown preset."""
    pattern, sep, name = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"must be PATTERN=PRESET, got {text!r}")
    _compiled(pattern)
    if name not in PRESETS:
        raise ValueError(f"unknown numerics preset {name!r} in {text!r}; valid: "
                         f"{', '.join(PRESETS)}")
    return pattern, name


def with_overrides(policy: str | Policy, overrides: Sequence[str | tuple[str, str | Policy]],
                   family: str | None = None) -> Policy:
    """``policy`` with the ops matched by each override's pattern taking their implementation
    from its preset (``"PATTERN=PRESET"`` strings or ``(pattern, preset)`` pairs).  Overrides
    come before the policy's rules, in the order given (the first matching one wins).
    ``family``: as in :func:`preset`, for every preset named."""
    base = preset(policy, family)
    if not overrides:
        return base
    rules, names = [], []
    for ov in overrides:
        pattern, name = parse_override(ov) if isinstance(ov, str) else ov
        rules.append(Rule(pattern, preset(name, family)))
        names.append(f"{pattern}={name if isinstance(name, str) else name.name}")
    return base.prepend(*rules, name=f"{base.name}[{', '.join(names)}]")
