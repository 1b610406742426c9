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
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "Nonlinear", "Gemm", "KVCache", "LayerNumerics", "Policy", "PRESETS", "preset",
    "MissingKernelError", "EXACT",
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
    """

    datapath: Any = None
    weight_scheme: Any = None
    mode: str = "fast"
    bf16_activations: bool = False

    @property
    def label(self) -> str:
        if self.datapath is None and self.weight_scheme is None:
            return "fp32"
        return f"{type(self.datapath).__name__ if self.datapath is not None else 'fp32'}" \
               f"/{type(self.weight_scheme).__name__ if self.weight_scheme is not None else 'fp'}" \
               f"/{self.mode}"

    def prepare_weight(self, w: Float[Array, "din dout"]) -> Any:
        """Convert an ``(in, out)`` FP32 kernel to what :meth:`matmul` consumes (done once)."""
        if self.weight_scheme is None:
            return w
        quant = _kernel_module("quant")
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
        quant, gemm = _kernel_module("quant"), _kernel_module("gemm")
        kq = quant.quantize_kv(k.astype(jnp.float32), kv_scheme, granularity="per_token")
        kt = quant.QuantizedTensor(
            codes=jnp.swapaxes(kq.codes, -1, -2), scales=jnp.swapaxes(kq.scales, -1, -2),
            zeros=None if kq.zeros is None else jnp.swapaxes(kq.zeros, -1, -2),
            scheme=dataclasses.replace(kq.scheme, axis=0))
        mm = lambda a, w: gemm.matmul(a, w, self.datapath, mode=self.mode)  # noqa: E731
        return jax.vmap(jax.vmap(mm))(q, kt).astype(jnp.float32)

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
        quant, gemm = _kernel_module("quant"), _kernel_module("gemm")
        vq = quant.quantize_kv(v.astype(jnp.float32), kv_scheme, granularity="per_token")
        vq = quant.QuantizedTensor(codes=vq.codes, scales=vq.scales, zeros=vq.zeros,
                                   scheme=dataclasses.replace(vq.scheme, axis=1))
        mm = lambda a, w: gemm.matmul(a, w, self.datapath, mode=self.mode)  # noqa: E731
        return jax.vmap(jax.vmap(mm))(p, vq).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class KVCache:
    """The KV-cache format.

    Attributes:
      scheme: ``None`` (FP32 cache) or a :mod:`mugi_jax.quant` INT4 scheme; groups run along
        ``head_dim`` (per-token quantization: a token's entry never changes once written, so the
        cached and the uncached paths agree exactly).
    """

    scheme: Any = None

    @property
    def label(self) -> str:
        return "fp32" if self.scheme is None else f"int4:{type(self.scheme).__name__}"

    def store(self, x: Float[Array, "... tokens head_dim"]) -> Float[Array, "... tokens head_dim"]:
        """The value the cache holds for ``x`` (quantize + dequantize: the values the datapath
        sees; storage is modelled by the cost model, not here)."""
        if self.scheme is None:
            return x
        quant = _kernel_module("quant")
        q = quant.quantize_kv(x.astype(jnp.float32), self.scheme, granularity="per_token")
        return quant.dequantize(q, jnp.float32).astype(x.dtype)


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

    def scores(self, q: Array, k: Array) -> Array:
        return self.attn.scores(q, k, self.kv.scheme)

    def context(self, p: Array, v: Array) -> Array:
        return self.attn.context(p, v, self.kv.scheme)

    def describe(self) -> dict[str, str]:
        return {"softmax": self.softmax_fn.label, "silu": self.silu_fn.label,
                "proj": self.proj.label, "attn": self.attn.label, "kv": self.kv.label}


@dataclasses.dataclass(frozen=True)
class Policy:
    """Numerics of a whole model: a default :class:`LayerNumerics` plus per-layer overrides.

    ``layers`` is a tuple of ``(layer_index, LayerNumerics)`` pairs (a tuple keeps the policy
    hashable).  ``head`` is used for the LM head (``None``: the default).
    """

    name: str = "exact"
    default: LayerNumerics = LayerNumerics()
    layers: tuple[tuple[int, LayerNumerics], ...] = ()
    head: LayerNumerics | None = None

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
                "head": self.lm_head().describe()}


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


def _mugi(mode: str, name: str) -> Policy:
    base = _nonlinear_only(_vlp, name).default
    quant = _kernel_module("quant")
    gemm = _kernel_module("gemm")
    proj = Gemm(datapath=gemm.Mugi(), weight_scheme=quant.SignMagnitudeInt4(group_size=128, axis=0),
                mode=mode, bf16_activations=True)
    kv = KVCache(scheme=quant.SignMagnitudeInt4(group_size=None, axis=-1))
    # QK^T and PV: BF16 activations x the INT4 (per-token) K/V values, FP32 products.  Running
    # them on the Mugi datapath too is one field away (``attn=Gemm(datapath=gemm.Mugi(), ...)``,
    # see docs/models.md) but the per-element dequantization of P V makes it ~10x slower on CPU.
    attn = Gemm(bf16_activations=True)
    ln = dataclasses.replace(base, proj=proj, attn=attn, kv=kv)
    return Policy(name, ln)


PRESETS: dict[str, Callable[[], Policy]] = {
    "exact": lambda: EXACT,
    "nonlinear-only": lambda: _nonlinear_only(_vlp, "nonlinear-only"),
    "pwl": lambda: _nonlinear_only(_pwl, "pwl"),
    "taylor": lambda: _nonlinear_only(_taylor, "taylor"),
    "mugi-l": lambda: _nonlinear_only(_mugi_l, "mugi-l"),
    "mugi": lambda: _mugi("fast", "mugi"),
    "mugi-exact": lambda: _mugi("exact", "mugi-exact"),
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
