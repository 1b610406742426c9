r"""Softmax pipeline and the public activation functions with a choice of approximation.

Softmax (every approximation except :class:`Exact`), along ``axis`` of length n:

1. :math:`x \leftarrow \mathrm{FTZ}(\mathrm{bf16}(x))` (subnormal inputs count as zero);
2. :math:`y = \mathrm{bf16\_rne}(x - \max x)` (the difference of two BF16 values is computed in
   FP32; see docs/numerics.md why this equals a single rounding; a subnormal y counts as zero in
   the unit, exactly as if it had been flushed);
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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax import formats
from mugi_jax.nonlinear.baselines import exact, pwl, taylor
from mugi_jax.nonlinear.config import PWL, Exact, MugiL, Taylor, VLPConfig
from mugi_jax.nonlinear.vlp import as_bf16, flush_f32, round_to_bf16, vlp, vlp_parts

_TINY32 = np.float32(2.0 ** -126)

__all__ = ["softmax", "silu", "gelu", "activation", "pairwise_sum", "shifted_input", "rows_last",
           "flush_bf16", "exact_divide"]


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


flush_bf16 = formats.flush_subnormals  # FTZ on BF16 bit patterns


def shifted_input(xb: BFloat16[Array, "..."], axis: int) -> BFloat16[Array, "... n"]:
    """Steps 1-2: ``bf16_rne(FTZ(x) - max FTZ(x))`` with ``axis`` moved last.

    The BF16 subtraction (XLA: FP32 subtract, then RNE to BF16) equals a single rounding of the
    exact difference (see docs/numerics.md); the bit cast downstream keeps the BF16 rounding.
    A subnormal difference is left as is: the VLP unit counts it as zero, exactly as if it had
    been flushed, so the result does not depend on the device's FTZ mode.
    """
    return _shift(flush_bf16(jnp.moveaxis(xb, axis, -1)))


def _shift(x: BFloat16[Array, "... n"]) -> BFloat16[Array, "... n"]:
    return x - jnp.max(x, axis=-1, keepdims=True)


def exact_divide(num: Float[Array, "... n"], den: Float[Array, "... 1"]) -> Float[Array, "... n"]:
    """IEEE FP32 ``num / den`` (den broadcast along the last axis).

    XLA's CPU compiler rewrites ``a / broadcast(b)`` into ``a * broadcast(1 / b)``, which is not
    correctly rounded; adding ``0 * num`` makes the divisor a full-shape value and keeps a true
    division (``0 * num`` is 0 for finite num and NaN where num is NaN/inf, where the quotient is
    NaN anyway).
    """
    return num / (den + 0.0 * num)


def rows_last(y: Array) -> tuple[Array, int]:
    """View ``y`` as ``(..., rows, cols)`` (a 1-d vector is one row); returns it and the rows axis."""
    if y.ndim == 1:
        y = y[None]
    return y, y.ndim - 2


def _materialised(fn: Callable[[Array], Array], operand: Array) -> Array:
    """``fn(operand)``, evaluated inside a ``lax.cond`` whose two branches are both ``fn`` (so the
    predicate - data-dependent, so that XLA cannot fold it - does not matter).  A conditional's
    result is materialised, which stops XLA:CPU from fusing the table gather into each of its
    consumers (the pairwise-sum slices and the division), where it runs ~3x slower.  Under
    ``vmap`` the cond becomes a select of both (identical) branches: same values."""
    flat = jax.lax.bitcast_convert_type(operand.reshape(-1)[:1], jnp.uint16)
    return jax.lax.cond(flat[0] != jnp.uint16(0x7FC1), fn, fn, operand)


def _approx_exp(y: Array, approx: object) -> Array:
    if isinstance(approx, (VLPConfig, MugiL)):
        cfg = approx.config if isinstance(approx, MugiL) else approx
        y2, rows_axis = rows_last(y)
        exp = lambda v: vlp_parts(v, "exp", cfg, rows_axis).out  # noqa: E731
        return _materialised(exp, y2).reshape(y.shape)
    if isinstance(approx, PWL):
        return pwl(y, "exp", approx)
    if isinstance(approx, Taylor):
        return taylor(y, "exp", approx)
    raise ValueError(f"approx: must be Exact, VLPConfig, MugiL, PWL or Taylor, got {approx!r}")


@functools.partial(jax.jit, static_argnames=("axis", "approx"))
def _softmax_jit(x: Array, axis: int, approx: object) -> Array:
    x_ftz = flush_bf16(jnp.moveaxis(as_bf16(x), axis, -1))  # one consumer chain: fuses
    y = _shift(x_ftz)
    e32 = flush_bf16(_approx_exp(y, approx)).astype(jnp.float32)
    q = exact_divide(e32, pairwise_sum(e32))
    out = round_to_bf16(flush_f32(q))  # FTZ, then RNE
    u16 = jnp.uint16
    masked = jax.lax.bitcast_convert_type(x_ftz, u16) == u16(0xFF80)
    out = jnp.where(masked, u16(0), jax.lax.bitcast_convert_type(out, u16))  # -inf -> +0
    return jnp.moveaxis(jax.lax.bitcast_convert_type(out, jnp.bfloat16), -1, axis)


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
        return _exact_softmax(x, axis % x.ndim)
    if x.size == 0:
        return x.astype(jnp.bfloat16)
    return _softmax_jit(x, axis % x.ndim, approx)


@functools.partial(jax.jit, static_argnames=("axis",))
def _exact_softmax(x: Array, axis: int) -> Array:
    return jax.nn.softmax(x.astype(jnp.float32), axis=axis)


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
