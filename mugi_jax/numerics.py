"""Numerics policy: which implementation every op of a model uses.

A :class:`Policy` is a frozen, hashable description (usable as a static ``jit`` argument) of

* ``softmax`` / ``silu`` / ``gelu``: a :class:`Nonlinear` choice (exact FP32, or a table/baseline
  approximation from :mod:`mugi_jax.nonlinear`, optionally with the input rounded to BF16 at the
  unit's entry);
* ``proj``: a :class:`Gemm` choice for every projection (Q/K/V/O, gate/up/down, LM head):
  FP32, or BF16 activations x INT4 weights on a :mod:`mugi_jax.gemm` datapath;
* ``attn``: a :class:`Gemm` choice for QK^T and PV;
* ``kv``: the KV-cache format (:class:`KVCache`: FP32, or INT4 per-token groups).

Per-layer overrides: ``Policy.layers`` maps a layer index to a :class:`LayerNumerics` that replaces
the default for that layer.  The model code never branches on numerics: it asks
``policy.layer(i)`` for a :class:`LayerNumerics` and calls its methods.

Presets (:func:`preset`): ``exact``, ``nonlinear-only``, ``pwl``, ``taylor``, ``mugi-l``,
``mugi``, ``mugi-exact`` (see :data:`PRESETS`).  Kernels that have not been built yet make the presets that
need them raise :class:`MissingKernelError` naming the missing module.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "Nonlinear", "Gemm", "KVCache", "LayerNumerics", "Policy", "PRESETS", "preset",
    "MissingKernelError", "EXACT", "WeightRecipe", "check_weights_scheme", "scheme_name",
]


class MissingKernelError(NotImplementedError):
    """A preset needs a kernel module that is not available (yet)."""


def _kernel_module(name: str) -> Any:
    try:
        return importlib.import_module(f"mugi_jax.{name}")
    except ImportError as err:
        raise MissingKernelError(
            f"this numerics policy needs the kernel module mugi_jax.{name}, which is not "
            f"available ({err}); use the 'exact' preset") from err


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
# Op choices
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Nonlinear:
    """How one nonlinear function is computed.

    Attributes:
      approx: ``None`` for the exact FP32 function (``jax.nn``), else an approximation object of
        :mod:`mugi_jax.nonlinear` (``VLPConfig``, ``MugiL``, ``PWL``, ``Taylor``, ``Exact``).
      bf16_input: round the input to BF16 at the unit's entry (the Mugi unit's input format).
    """

    approx: Any = None
    bf16_input: bool = False

    @property
    def label(self) -> str:
        return "exact" if self.approx is None else type(self.approx).__name__

    def _call(self, fn: str, x: Array, **kw: Any) -> Array:
        dtype = x.dtype
        if self.bf16_input:
            x = _to_bf16(x)
        if self.approx is None:
            x = x.astype(jnp.float32)
            if fn == "softmax":
                out = jax.nn.softmax(x, **kw)
            elif fn == "silu":
                out = jax.nn.silu(x)
            else:
                out = jax.nn.gelu(x, approximate=kw.get("approximate", False))
        else:
            nl = _kernel_module("nonlinear")
            if fn == "gelu":
                out = nl.gelu(x, approx=self.approx, **kw)
            else:
                out = getattr(nl, fn)(x, approx=self.approx, **kw)
        return out.astype(dtype)

    def softmax(self, x: Float[Array, "..."], axis: int = -1) -> Float[Array, "..."]:
        return self._call("softmax", x, axis=axis)

    def silu(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        return self._call("silu", x)

    def gelu(self, x: Float[Array, "..."], approximate: bool = False) -> Float[Array, "..."]:
        return self._call("gelu", x, approximate=approximate) if approximate else self._call("gelu", x)


@dataclasses.dataclass(frozen=True)
class Gemm:
    """How a GEMM is computed.

    Attributes:
      datapath: ``None`` for an FP32 ``jnp`` matmul, else a datapath object of
        :mod:`mugi_jax.gemm` (e.g. ``gemm.Mugi()``).
      weight_scheme: INT4 scheme of :mod:`mugi_jax.quant` the weights are quantized with
        (``None``: weights stay FP32).  Groups run along the reduction axis (axis 0 of an
        ``(in, out)`` kernel).
      mode: ``"fast"`` or ``"exact"`` (passed to ``gemm.matmul``).
      bf16_activations: round activations to BF16 before the GEMM.
      bf16_weights: round FP weights to BF16 once (``weight_scheme=None`` only): the format
        deployed INT4 models keep their LM head / embedding in.
    """

    datapath: Any = None
    weight_scheme: Any = None
    mode: str = "fast"
    bf16_activations: bool = False
    bf16_weights: bool = False

    @property
    def label(self) -> str:
        if self.datapath is None and self.weight_scheme is None:
            return "bf16" if self.bf16_weights else "fp32"
        return f"{type(self.datapath).__name__ if self.datapath is not None else 'fp32'}" \
               f"/{type(self.weight_scheme).__name__ if self.weight_scheme is not None else 'fp'}" \
               f"/{self.mode}"

    def prepare_weight(self, w: Float[Array, "din dout"]) -> Any:
        """Convert an ``(in, out)`` FP32 kernel to what :meth:`matmul` consumes (done once)."""
        quant = _kernel_module("quant")
        if isinstance(w, quant.QuantizedTensor):  # calibrated weights (models.quantize): as is
            return w
        if self.weight_scheme is None:
            return w.astype(jnp.bfloat16).astype(jnp.float32) if self.bf16_weights else w
        scheme = dataclasses.replace(self.weight_scheme, axis=0,
                                     group_size=fit_group(self.weight_scheme.group_size, w.shape[0]))
        q = quant.quantize(jnp.asarray(w, jnp.float32), scheme)
        if self.datapath is None:
            return q
        # what the datapath derives from the weights alone (fast mode: the BF16 weight terms)
        return _kernel_module("gemm").prepare_weight(q, self.datapath, self.mode)

    def matmul(self, x: Float[Array, "... din"], w: Any) -> Float[Array, "... dout"]:
        """``x @ w`` under this choice; ``w`` is the output of :meth:`prepare_weight`."""
        dtype = jnp.float32
        if self.bf16_activations:
            x = _to_bf16(x)
        if self.datapath is None:
            if not isinstance(w, jax.Array):  # a QuantizedTensor on the FP32 path: dequantize
                w = w.dequantize(jnp.float32)
            return jnp.matmul(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST)
        gemm = _kernel_module("gemm")
        if isinstance(w, jax.Array):  # an unprepared FP32 kernel: quantize here (every call)
            w = self.prepare_weight(w)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = gemm.matmul(x2, w, self.datapath, mode=self.mode)
        return out.reshape(*lead, out.shape[-1]).astype(dtype)

    def scores(self, q: Float[Array, "B H M D"], k: Float[Array, "B H S D"],
               kv_scheme: Any = None) -> Float[Array, "B H M S"]:
        """``Q K^T`` (unscaled) per batch row and KV head; ``M`` = query heads of the GQA group x
        query tokens.  On a datapath, K is quantized per token with ``kv_scheme`` and is the
        weight operand ``(D, S)`` (groups along the reduction ``D``)."""
        if self.datapath is None:
            if self.bf16_activations:
                q, k = _to_bf16(q), _to_bf16(k)
            return jnp.einsum("bhmd,bhsd->bhms", q.astype(jnp.float32), k.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST)
        if kv_scheme is None:
            raise ValueError("attention GEMMs on a datapath need an INT4 KV-cache scheme "
                             "(LayerNumerics.kv = KVCache(scheme=...))")
        quant = _kernel_module("quant")
        kq = quant.quantize_kv(k.astype(jnp.float32), kv_scheme, granularity="per_token")
        return self.on_cache(q, _transposed(kq))

    def on_cache(self, a: Float[Array, "B H M K"], w: Any) -> Float[Array, "B H M N"]:
        """``a @ w`` on the datapath per batch row and KV head; ``w`` a ``QuantizedTensor``
        ``(B, H, K, N)`` whose groups run along ``K`` or ``N`` (any per-group layout)."""
        gemm = _kernel_module("gemm")
        mm = lambda x, t: gemm.matmul(x, t, self.datapath, mode=self.mode)  # noqa: E731
        return jax.vmap(jax.vmap(mm))(a, w).astype(jnp.float32)

    def context(self, p: Float[Array, "B H M S"], v: Float[Array, "B H S D"],
                kv_scheme: Any = None) -> Float[Array, "B H M D"]:
        """``P V`` per batch row and KV head.  On a datapath, V is quantized per token with
        ``kv_scheme`` and is the weight operand ``(S, D)`` (its groups run along ``D``, so the
        scale changes at every step of the reduction over ``S``)."""
        if self.datapath is None:
            if self.bf16_activations:
                p, v = _to_bf16(p), _to_bf16(v)
            return jnp.einsum("bhms,bhsd->bhmd", p.astype(jnp.float32), v.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST)
        if kv_scheme is None:
            raise ValueError("attention GEMMs on a datapath need an INT4 KV-cache scheme "
                             "(LayerNumerics.kv = KVCache(scheme=...))")
        quant = _kernel_module("quant")
        vq = quant.quantize_kv(v.astype(jnp.float32), kv_scheme, granularity="per_token")
        return self.on_cache(p, _per_head(vq))


def _per_head(t: Any) -> Any:
    """A ``(B, H, K, N)`` cache ``QuantizedTensor`` with its scheme axis counted within one head
    (``(K, N)``: 0 or 1), as :meth:`Gemm.on_cache` maps over the leading axes."""
    quant = _kernel_module("quant")
    axis = t.axis - (t.codes.ndim - 2)
    return quant.QuantizedTensor(codes=t.codes, scales=t.scales, zeros=t.zeros,
                                 scheme=dataclasses.replace(t.scheme, axis=axis))


def _transposed(t: Any) -> Any:
    """A ``(B, H, S, D)`` cache ``QuantizedTensor`` as the ``(B, H, D, S)`` weight operand of
    ``Q K^T`` (groups follow their axis), per head."""
    quant = _kernel_module("quant")
    sw = (lambda x: None if x is None else jnp.swapaxes(x, -1, -2))
    axis = {t.codes.ndim - 1: 0, t.codes.ndim - 2: 1}[t.axis]
    return quant.QuantizedTensor(codes=sw(t.codes), scales=sw(t.scales), zeros=sw(t.zeros),
                                 scheme=dataclasses.replace(t.scheme, axis=axis))


KEY_LAYOUTS = ("per_token", "per_channel")


@dataclasses.dataclass(frozen=True)
class KVCache:
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

    scheme: Any = None
    key_layout: str = "per_token"
    key_group: int = 32
    residual: int = 0

    def __post_init__(self) -> None:
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

    def store(self, x: Float[Array, "... tokens head_dim"]) -> Float[Array, "... tokens head_dim"]:
        """The value the cache holds for ``x`` (quantize + dequantize per token: the values the
        datapath sees; storage is modelled by the cost model, not here).  The KIVI layout keeps
        ``x`` and quantizes at use (:meth:`keys_at` / :meth:`values_at`)."""
        if self.scheme is None or self.kivi:
            return x
        quant = _kernel_module("quant")
        q = quant.quantize_kv(x.astype(jnp.float32), self.scheme, granularity="per_token")
        return quant.dequantize(q, jnp.float32).astype(x.dtype)

    def _quantized_keys(self, k: Float[Array, "... S D"]) -> Any:
        """The quantized keys ``(..., S', D)``; per channel, ``S'`` is ``S`` padded to whole key
        groups."""
        quant = _kernel_module("quant")
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
        quant = _kernel_module("quant")
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
               q_slots: Array | None, bf16: bool, attn: Gemm | None = None) -> Float[Array, "B H M S"]:
        """``Q K^T`` with each key read quantized or in full precision per :meth:`key_mask`;
        with an ``attn`` datapath the quantized keys are its weight operand ``(D, S)``."""
        s = k.shape[-2]
        if attn is not None and attn.datapath is not None:  # quantized keys on the datapath
            s_q = attn.on_cache(q, _transposed(self._quantized_keys(k)))[..., :s]
        mm = functools.partial(jnp.einsum, "bhmd,bhsd->bhms",
                               precision=jax.lax.Precision.HIGHEST)
        if attn is None or attn.datapath is None:
            kq = self._key_values(k)
        if bf16:
            q, k = _to_bf16(q), _to_bf16(k)
        q = q.astype(jnp.float32)
        if attn is None or attn.datapath is None:
            s_q = mm(q, kq)
        mask = self.key_mask(q_slots, s)
        return jnp.where(mask, s_q, mm(q, k.astype(jnp.float32)))

    def context(self, p: Float[Array, "B H M S"], v: Float[Array, "B H S D"],
                q_slots: Array | None, bf16: bool, attn: Gemm | None = None) -> Float[Array, "B H M D"]:
        """``P V`` with each value token read quantized or in full precision per
        :meth:`value_mask`; with an ``attn`` datapath the quantized values are its weight
        operand ``(S, D)`` (the probabilities of the full-precision tokens masked to 0)."""
        quant = _kernel_module("quant")
        vq = quant.quantize_kv(v.astype(jnp.float32), self.scheme, "per_token")
        if bf16:
            p, v = _to_bf16(p), _to_bf16(v)
        p = p.astype(jnp.float32)
        mask = self.value_mask(q_slots, v.shape[-2])
        mm = functools.partial(jnp.einsum, "bhms,bhsd->bhmd",
                               precision=jax.lax.Precision.HIGHEST)
        if attn is not None and attn.datapath is not None:  # quantized values on the datapath
            c_q = attn.on_cache(jnp.where(mask, p, 0.0), _per_head(vq))
        else:
            c_q = mm(jnp.where(mask, p, 0.0), quant.dequantize(vq))
        return c_q + mm(jnp.where(mask, 0.0, p), v.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class LayerNumerics:
    """The numerics of one decoder layer (and, for the default, of the LM head)."""

    softmax_fn: Nonlinear = Nonlinear()
    silu_fn: Nonlinear = Nonlinear()
    gelu_fn: Nonlinear = Nonlinear()
    proj: Gemm = Gemm()
    attn: Gemm = Gemm()
    kv: KVCache = KVCache()

    # Convenience forwarding (what the model calls).
    def softmax(self, x: Float[Array, "..."], axis: int = -1) -> Float[Array, "..."]:
        return self.softmax_fn.softmax(x, axis=axis)

    def silu(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        return self.silu_fn.silu(x)

    def gelu(self, x: Float[Array, "..."], approximate: bool = False) -> Float[Array, "..."]:
        return self.gelu_fn.gelu(x, approximate=approximate)

    def prepare_weight(self, w: Float[Array, "din dout"]) -> Any:
        return self.proj.prepare_weight(w)

    def linear(self, x: Float[Array, "... din"], w: Any) -> Float[Array, "... dout"]:
        return self.proj.matmul(x, w)

    def kv_store(self, x: Array) -> Array:
        """The K/V values the cache holds.  With FP32 attention GEMMs and an INT4 cache format:
        quantized and dequantized per token.  On an attention datapath the cache keeps the
        values and :meth:`scores`/:meth:`context` quantize them per token at use (per-token
        groups are independent of other tokens, so both give the same codes)."""
        if self.attn.datapath is not None:
            return x
        return self.kv.store(x)

    def scores(self, q: Array, k: Array, q_slots: Array | None = None) -> Array:
        """``Q K^T``; ``q_slots`` (``(M,)``, the slot of every query row) tells the KIVI cache
        layout which keys a causal query reads quantized (``None``: all of them)."""
        if self.kv.kivi:
            return self.kv.scores(q, k, q_slots, self.attn.bf16_activations, self.attn)
        return self.attn.scores(q, k, self.kv.scheme)

    def context(self, p: Array, v: Array, q_slots: Array | None = None) -> Array:
        if self.kv.kivi:
            return self.kv.context(p, v, q_slots, self.attn.bf16_activations, self.attn)
        return self.attn.context(p, v, self.kv.scheme)

    def describe(self) -> dict[str, str]:
        return {"softmax": self.softmax_fn.label, "silu": self.silu_fn.label,
                "proj": self.proj.label, "attn": self.attn.label, "kv": self.kv.label}


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


def scheme_name(scheme: Any) -> str | None:
    """``signmag`` / ``int4`` / ``asym`` for a quant scheme (``None`` for no scheme)."""
    if scheme is None:
        return None
    return {"SignMagnitudeInt4": "signmag", "Int4": "int4", "AsymUInt4": "asym"}[
        type(scheme).__name__]


def check_weights_scheme(policy: "Policy", spec: Any) -> None:
    """Refuse quantized weights whose scheme is not the one ``policy`` runs its projections in
    (``spec.scheme``: signmag / int4 / asym).  A policy with FP projections accepts any (the
    weights are dequantized: a weights-only study)."""
    want = scheme_name(policy.default.proj.weight_scheme)
    if want is not None and spec.scheme != want:
        raise ValueError(f"--weights: the directory holds {spec.scheme} weights but numerics "
                         f"{policy.name!r} runs its projections in {want}; quantize with "
                         f"--scheme {want} or pick a policy for {spec.scheme}")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Numerics of a whole model: a default :class:`LayerNumerics` plus per-layer overrides.

    ``layers`` is a tuple of ``(layer_index, LayerNumerics)`` pairs (a tuple keeps the policy
    hashable).  ``head`` is used for the LM head (``None``: the default).  ``weights``: how the
    INT4 projection weights are made (``None``: round to nearest on the fly).
    """

    name: str = "exact"
    default: LayerNumerics = LayerNumerics()
    layers: tuple[tuple[int, LayerNumerics], ...] = ()
    head: LayerNumerics | None = None
    weights: WeightRecipe | None = None

    def layer(self, i: int) -> LayerNumerics:
        """The numerics of decoder layer ``i``."""
        for j, ln in self.layers:
            if j == i:
                return ln
        return self.default

    def lm_head(self) -> LayerNumerics:
        return self.head if self.head is not None else self.default

    def with_layer(self, i: int, numerics: LayerNumerics) -> "Policy":
        """A copy with layer ``i`` overridden."""
        rest = tuple((j, ln) for j, ln in self.layers if j != i)
        return dataclasses.replace(self, layers=rest + ((i, numerics),))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default.describe(),
                "layers": {i: ln.describe() for i, ln in self.layers},
                "head": self.lm_head().describe(),
                "weights": None if self.weights is None else dataclasses.asdict(self.weights)}


EXACT = Policy("exact")


def _nonlinear_only(approx_factory: Callable[[Any], tuple[Any, Any]], name: str) -> Policy:
    nl = _kernel_module("nonlinear")
    sm, act = approx_factory(nl)
    ln = LayerNumerics(softmax_fn=Nonlinear(sm, bf16_input=True),
                       silu_fn=Nonlinear(act, bf16_input=True),
                       gelu_fn=Nonlinear(act, bf16_input=True))
    return Policy(name, ln)


def _vlp(nl: Any) -> tuple[Any, Any]:
    return nl.VLPConfig(), nl.VLPConfig()


def _pwl(nl: Any) -> tuple[Any, Any]:
    return nl.PWL(), nl.PWL()


def _taylor(nl: Any) -> tuple[Any, Any]:
    return nl.Taylor(), nl.Taylor()


def _mugi_l(nl: Any) -> tuple[Any, Any]:
    # the same numerics as VLP (a physical table instead of streaming: only the cost differs)
    return nl.MugiL(), nl.MugiL()


# Picked by the calibrated-weights study of docs/models.md (AWQ beat GPTQ, clip and RTN).
MUGI_METHOD = "awq"
MUGI_GROUP = 32
KIVI_KEY_GROUP = 32
KIVI_RESIDUAL = 32


def _mugi(mode: str, name: str, scheme: str = "signmag", method: str = MUGI_METHOD,
          group: int = MUGI_GROUP) -> Policy:
    """Mugi's numerics: VLP nonlinear ops, BF16 x INT4 projections on the Mugi array, a KIVI INT4
    KV cache (keys per channel in groups of 32 tokens, values per token, the newest 32 tokens in
    full precision), and the LM head (the tied embedding) in BF16 with BF16 activations."""
    base = _nonlinear_only(_vlp, name).default
    quant = _kernel_module("quant")
    gemm = _kernel_module("gemm")
    weight = {"signmag": quant.SignMagnitudeInt4(group_size=group, axis=0),
              "asym": quant.AsymUInt4(group_size=group, axis=0)}[scheme]
    proj = Gemm(datapath=gemm.Mugi(), weight_scheme=weight, mode=mode, bf16_activations=True)
    kv_scheme = {"signmag": quant.SignMagnitudeInt4(group_size=None, axis=-1),
                 "asym": quant.AsymUInt4(group_size=None, axis=-1)}[scheme]
    kv = KVCache(scheme=kv_scheme, key_layout="per_channel", key_group=KIVI_KEY_GROUP,
                 residual=KIVI_RESIDUAL)
    # QK^T and PV on the Mugi datapath too: BF16 queries / probabilities x the INT4 K/V cache
    # (KIVI layout: per-channel key groups, per-token values), BF16 product rounding, per-group
    # dequantization; the residual full-precision tokens are BF16 x BF16 products in FP32.
    attn = Gemm(datapath=gemm.Mugi(), mode=mode, bf16_activations=True)
    ln = dataclasses.replace(base, proj=proj, attn=attn, kv=kv)
    head = dataclasses.replace(ln, proj=Gemm(bf16_activations=True, bf16_weights=True))
    return Policy(name, ln, head=head, weights=WeightRecipe(method, scheme, group))


PRESETS: dict[str, Callable[[], Policy]] = {
    "exact": lambda: EXACT,
    "nonlinear-only": lambda: _nonlinear_only(_vlp, "nonlinear-only"),
    "pwl": lambda: _nonlinear_only(_pwl, "pwl"),
    "taylor": lambda: _nonlinear_only(_taylor, "taylor"),
    "mugi-l": lambda: _nonlinear_only(_mugi_l, "mugi-l"),
    "mugi": lambda: _mugi("fast", "mugi"),
    "mugi-exact": lambda: _mugi("exact", "mugi-exact"),
    "mugi-asym": lambda: _mugi("fast", "mugi-asym", scheme="asym"),
}


def preset(name: str | Policy) -> Policy:
    """The named preset (a :class:`Policy` is returned unchanged).

    Raises ``ValueError`` listing the valid names for an unknown name, and
    :class:`MissingKernelError` when the preset needs a kernel module that is not available.
    """
    if isinstance(name, Policy):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown numerics preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()
