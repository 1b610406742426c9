r"""Softmax pipeline and the public activation functions with a choice of approximation.

Softmax (every approximation except :class:`Exact`), along ``axis`` of length n:

1. :math:`x \leftarrow \mathrm{FTZ}(\mathrm{bf16}(x))` (subnormal inputs count as zero);
2. :math:`y = \mathrm{FTZ}(\mathrm{bf16\_rne}(x - \max x))` (the difference of two BF16 values is
   computed in FP32; see docs/numerics.md why this equals a single rounding);
3. :math:`\epsilon = \widetilde{\exp}(y)` (BF16; for VLP the window groups are ``window_group``
   consecutive *rows* at the same column of the ``(..., rows, cols)`` array, ``axis`` moved last;
   a 1-d input is one row);
4. :math:`S` = FP32 pairwise-tree sum of :math:`\mathrm{FTZ}(\epsilon)`: pad to a power of two with
   zeros, then repeatedly ``v = v[:n/2] + v[n/2:]``;
5. :math:`o = \mathrm{bf16\_rne}(\mathrm{FTZ}(\mathrm{f32}(\epsilon) / S))`; inputs equal to
   :math:`-\infty` (masks) give exactly 0 (a fully masked row gives zeros).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax import formats
from mugi_jax.nonlinear.baselines import exact, pwl, taylor
from mugi_jax.nonlinear.config import PWL, Exact, MugiL, Taylor, VLPConfig
from mugi_jax.nonlinear.vlp import as_bf16, vlp, vlp_parts

__all__ = ["softmax", "silu", "gelu", "activation", "pairwise_sum", "shifted_input", "rows_last"]


def pairwise_sum(v: Float[Array, "... n"]) -> Float[Array, "... 1"]:
    """FP32 pairwise-tree sum over the last axis: zero-pad to a power of two, then repeatedly add
    the second half onto the first half (elementwise) until one element remains."""
    n = v.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    if size != n:
        v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, size - n)])
    while size > 1:
        size //= 2
        v = v[..., :size] + v[..., size:]
    return v


def shifted_input(xb: BFloat16[Array, "..."], axis: int) -> BFloat16[Array, "... n"]:
    """Steps 1-2: ``FTZ(bf16(x - max x))`` with ``axis`` moved last."""
    x = formats.flush_subnormals(jnp.moveaxis(xb, axis, -1))
    xf = x.astype(jnp.float32)
    return formats.flush_subnormals((xf - jnp.max(xf, axis=-1, keepdims=True)).astype(jnp.bfloat16))


def rows_last(y: Array) -> tuple[Array, int]:
    """View ``y`` as ``(..., rows, cols)`` (a 1-d vector is one row); returns it and the rows axis."""
    if y.ndim == 1:
        y = y[None]
    return y, y.ndim - 2


def _approx_exp(y: Array, approx: object) -> Array:
    if isinstance(approx, (VLPConfig, MugiL)):
        cfg = approx.config if isinstance(approx, MugiL) else approx
        y2, rows_axis = rows_last(y)
        return vlp_parts(y2, "exp", cfg, rows_axis).out.reshape(y.shape)
    if isinstance(approx, PWL):
        return pwl(y, "exp", approx)
    if isinstance(approx, Taylor):
        return taylor(y, "exp", approx)
    raise ValueError(f"approx: must be Exact, VLPConfig, MugiL, PWL or Taylor, got {approx!r}")


@functools.partial(jax.jit, static_argnames=("axis", "approx"))
def _softmax_jit(xb: Array, axis: int, approx: object) -> Array:
    y = shifted_input(xb, axis)
    e32 = formats.flush_subnormals(_approx_exp(y, approx).astype(jnp.float32))
    total = pairwise_sum(e32)
    out = formats.flush_subnormals(e32 / total).astype(jnp.bfloat16)
    out = jnp.where(jnp.moveaxis(xb, axis, -1) == -jnp.inf, jnp.zeros((), jnp.bfloat16), out)
    return jnp.moveaxis(out, -1, axis)


def _check_approx(approx: object) -> None:
    if not isinstance(approx, (Exact, VLPConfig, MugiL, PWL, Taylor)):
        raise ValueError(f"approx: must be Exact, VLPConfig, MugiL, PWL or Taylor, got {approx!r}")


def softmax(x: ArrayLike, axis: int = -1, approx: object = VLPConfig()) -> Array:
    """Softmax along ``axis`` with the exponential computed by ``approx``.

    ``Exact()``: ``jax.nn.softmax`` in FP32 (FP32 result).  Otherwise the BF16 pipeline of the
    module docstring (BF16 result); -inf inputs give exactly 0.
    """
    _check_approx(approx)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x: softmax needs at least one axis, got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: must be in [{-x.ndim}, {x.ndim}), got {axis}")
    if isinstance(approx, Exact):
        return jax.nn.softmax(x.astype(jnp.float32), axis=axis)
    xb = as_bf16(x)
    if xb.size == 0:
        return xb
    return _softmax_jit(xb, axis % x.ndim, approx)


def activation(x: ArrayLike, fn: str, approx: object = VLPConfig(), axis: int = -1) -> Array:
    """``fn`` (exp, silu, gelu, gelu_tanh) computed by ``approx``; VLP groups run along ``axis``."""
    _check_approx(approx)
    if isinstance(approx, Exact):
        return exact(x, fn)
    if isinstance(approx, (VLPConfig, MugiL)):
        return vlp(x, fn, approx, axis=axis)
    if isinstance(approx, PWL):
        return pwl(x, fn, approx)
    return taylor(x, fn, approx)


def silu(x: ArrayLike, approx: object = VLPConfig(), axis: int = -1) -> Array:
    """SiLU :math:`x\\sigma(x)` by ``approx`` (BF16 result; FP32 for ``Exact()``)."""
    return activation(x, "silu", approx, axis)


def gelu(x: ArrayLike, approx: object = VLPConfig(), approximate: bool = False, axis: int = -1
         ) -> Array:
    """GELU by ``approx``: erf form by default (``approximate=True``: the tanh form; note that
    ``jax.nn.gelu`` defaults to the tanh form)."""
    return activation(x, "gelu_tanh" if approximate else "gelu", approx, axis)
