"""Calibrated weight quantizers: clipping search, GPTQ and AWQ scale search.

Each returns an ordinary :class:`~mugi_jax.quant.QuantizedTensor` of the scheme it is given
(symmetric, sign-magnitude or asymmetric; any group size), so every datapath and the simulator
consume the result unchanged.  Kernels are ``(in, out)`` with the groups along ``in`` (axis 0,
the GEMM reduction axis); calibration activations ``x`` are ``(tokens, in)``: the inputs that
feed the kernel.

* :func:`clip` - per group, the range ``[a lo, a hi]`` for the shrink factor ``a`` on a grid that
  minimises the squared error of the group, or with ``x`` the output error of the group
  ``||X_G (w_G - w^_G)||^2`` (``X_G``: the activation columns of the group's input channels).
* :func:`gptq` - Frantar et al. (2022): Hessian ``H = 2 X^T X``, dampened by ``damp`` times its
  mean diagonal; columns (input channels) are quantized one at a time in order (or in decreasing
  ``diag(H)`` with ``act_order``) and the quantization error of each is spread over the columns
  not yet quantized through the upper Cholesky factor ``U`` of ``H^-1``:
  ``W[j] -= U[i, j] (w_i - q(w_i)) / U[i, i]``, lazily in blocks of ``block_size`` columns.  A
  group's scale (and zero) is fixed from the group's current (updated) values when its first
  column is reached.
* :func:`awq` - Lin et al. (2023): per-input-channel scales ``s = mean|x|^alpha`` (normalised to
  a geometric mean of 1) for ``alpha`` on a grid; the kernel ``diag(s) W`` is quantized and the
  activation divided by ``s`` (folded into the preceding op by :mod:`mugi_jax.quant.model`); the
  ``alpha`` with the smallest output error ``||X W - (X / s) Q(diag(s) W)||`` wins.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from mugi_jax.quant import core
from mugi_jax.quant.core import QuantizedTensor, Scheme

__all__ = ["clip", "gptq", "awq", "awq_scales", "output_error", "Calibration", "CLIP_GRID",
           "AWQ_GRID"]

CLIP_GRID = 20  # shrink factors 1, 1 - 0.5/20, ..., 0.525 (the range AWQ's clip search covers)
CLIP_MIN_SHRINK = 0.5
AWQ_GRID = 20  # alpha = 0, 1/20, ..., 19/20
_HI = lax.Precision.HIGHEST


class Calibration(eqx.Module):
    """Sufficient statistics of calibration activations ``X`` (tokens, in) for every quantizer
    here: ``xtx = X^T X`` and ``abs_sum = sum_t |X_t|`` over ``tokens`` tokens (so activations
    can be streamed window by window without keeping them)."""

    xtx: Float[Array, "i i"]
    abs_sum: Float[Array, " i"]
    tokens: Array

    @classmethod
    def of(cls, x: Float[ArrayLike, "t i"]) -> "Calibration":
        x = jnp.asarray(x, jnp.float32).reshape(-1, jnp.shape(x)[-1])
        return cls(jnp.matmul(x.T, x, precision=_HI), jnp.sum(jnp.abs(x), 0),
                   jnp.asarray(x.shape[0], jnp.int32))

    def add(self, x: Float[ArrayLike, "... i"]) -> "Calibration":
        """These statistics plus those of more activations ``x`` (leading axes are tokens)."""
        other = Calibration.of(x)
        return Calibration(self.xtx + other.xtx, self.abs_sum + other.abs_sum,
                           self.tokens + other.tokens)

    @property
    def mean_abs(self) -> Array:
        return self.abs_sum / jnp.maximum(self.tokens, 1)


def _check_kernel_and_x(w: ArrayLike, x: ArrayLike | Calibration | None, scheme: Scheme,
                        need_x: bool) -> tuple[Array, Calibration | None, int]:
    """Validate a 2-D ``(in, out)`` kernel grouped along ``in`` and its ``(tokens, in)``
    calibration activations (or their :class:`Calibration`); returns ``(w, stats, group)``."""
    w, axis, group = core.check_weights(w, scheme)
    if w.ndim != 2:
        raise ValueError(f"w: expected a 2-D (in, out) kernel, got shape {w.shape}")
    if axis != 0:
        raise ValueError(f"scheme: calibrated quantizers group along the kernel's input axis "
                         f"(axis=0), got axis={scheme.axis}")
    if x is None:
        if need_x:
            raise ValueError("x: calibration activations (tokens, in) are required")
        return w.astype(jnp.float32), None, group
    if isinstance(x, Calibration):
        if x.xtx.shape != (w.shape[0], w.shape[0]):
            raise ValueError(f"x: calibration statistics of {x.xtx.shape[0]} input channels do "
                             f"not match a kernel of shape {w.shape}")
        n_tok = int(x.tokens) if core._is_concrete(x.tokens) else 1
        stats = x
    else:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x: expected floating-point calibration activations, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"x: calibration activations must be (tokens, {w.shape[0]}) to "
                             f"feed a kernel of shape {w.shape}, got {x.shape}")
        n_tok = x.shape[0]
        if core._is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"x: contains {int(jnp.sum(~jnp.isfinite(x)))} non-finite values "
                             "(NaN/inf); calibration activations must be finite")
        stats = Calibration.of(x) if n_tok else None
    if n_tok < 1:
        raise ValueError("x: needs at least one calibration token, got 0")
    if core._is_concrete(stats.xtx) and not bool(jnp.all(jnp.isfinite(stats.xtx))):
        raise ValueError("x: calibration statistics are not finite (activations overflow)")
    return w.astype(jnp.float32), stats, group


def output_error(x: Float[ArrayLike, "t i"], w: Float[ArrayLike, "i o"],
                 q: QuantizedTensor) -> Array:
    """``||X W - X dequantize(q)||_F^2``: the calibration-set output error of a quantized kernel."""
    x = jnp.asarray(x, jnp.float32)
    d = jnp.asarray(w, jnp.float32) - q.dequantize(jnp.float32)
    return jnp.sum(jnp.square(jnp.matmul(x, d, precision=_HI)))


# ---------------------------------------------------------------------------------------------
# clipping search


def clip(w: Float[ArrayLike, "i o"], scheme: Scheme, x: Float[ArrayLike, "t i"] | None = None,
         grid: int = CLIP_GRID, min_shrink: float = CLIP_MIN_SHRINK) -> QuantizedTensor:
    """Clipping search: each group's range shrunk by the factor (of ``grid`` values from 1 down to
    ``min_shrink``) with the smallest error; see the module docstring.

    Without ``x`` any tensor shape and group axis are accepted (plain squared error); with ``x``
    the kernel must be ``(in, out)`` grouped along ``in``.
    """
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid: must be a positive integer, got {grid!r}")
    if not 0.0 < min_shrink <= 1.0:
        raise ValueError(f"min_shrink: must lie in (0, 1], got {min_shrink!r}")
    if x is None:
        w, axis, group = core.check_weights(w, scheme)
        return _clip_plain(w.astype(jnp.float32), scheme, axis, group, grid, float(min_shrink))
    w, stats, group = _check_kernel_and_x(w, x, scheme, need_x=True)
    return _clip_weighted(w, stats.xtx, scheme, group, grid, float(min_shrink))


def _shrinks(grid: int, min_shrink: float) -> Array:
    return 1.0 - jnp.arange(grid, dtype=jnp.float32) * ((1.0 - min_shrink) / grid)


def _candidates(g: Array, red: int, scheme: Scheme, grid: int, min_shrink: float):
    """Per shrink factor: grouped parameters and the dequantized group values."""
    lo, hi = jnp.min(g, red, keepdims=True), jnp.max(g, red, keepdims=True)

    def one(a):
        scale, zeros = core.group_params(lo * a, hi * a, scheme)
        deq = core.decode(core.encode(g, scale, zeros, scheme), scale, zeros, scheme)
        return scale, zeros, deq

    return jax.vmap(one)(_shrinks(grid, min_shrink))


def _pick(errors: Array, params: tuple, g: Array, scheme: Scheme, axis: int) -> QuantizedTensor:
    """The candidate of least error per group (ties: the wider range), as a QuantizedTensor."""
    best = jnp.argmin(errors, axis=0)[None]  # (1, ..groups..)
    scale_all, zeros_all = params
    take = lambda a: jnp.take_along_axis(a, best, axis=0)[0]  # noqa: E731
    scale = take(scale_all)
    zeros = None if zeros_all is None else take(zeros_all)
    return core.assemble(core.encode(g, scale, zeros, scheme), scale, zeros, scheme, axis)


@functools.partial(jax.jit, static_argnames=("scheme", "axis", "group", "grid", "min_shrink"))
def _clip_plain(w: Array, scheme: Scheme, axis: int, group: int, grid: int,
                min_shrink: float) -> QuantizedTensor:
    g = core.grouped(w, axis, group)
    red = axis + 1
    scale, zeros, deq = _candidates(g, red, scheme, grid, min_shrink)
    err = jnp.sum(jnp.square(deq - g[None]), axis=red + 1, keepdims=True)
    return _pick(err, (scale, zeros), g, scheme, axis)


@functools.partial(jax.jit, static_argnames=("scheme", "group", "grid", "min_shrink"))
def _clip_weighted(w: Array, xtx: Array, scheme: Scheme, group: int, grid: int,
                   min_shrink: float) -> QuantizedTensor:
    ng = w.shape[0] // group
    blocks = xtx.reshape(ng, group, ng, group)
    hess = blocks[jnp.arange(ng), :, jnp.arange(ng), :]  # (ng, g, g): X_G^T X_G of each group
    g = core.grouped(w, 0, group)  # (ng, g, out)
    scale, zeros, deq = _candidates(g, 1, scheme, grid, min_shrink)
    d = deq - g[None]  # (grid, ng, g, out)
    err = jnp.einsum("cgio,gij,cgjo->cgo", d, hess, d, precision=_HI)[:, :, None, :]
    return _pick(err, (scale, zeros), g, scheme, 0)


# ---------------------------------------------------------------------------------------------
# GPTQ


def gptq(w: Float[ArrayLike, "i o"], x: Float[ArrayLike, "t i"], scheme: Scheme,
         damp: float = 0.01, block_size: int = 128, act_order: bool = False) -> QuantizedTensor:
    """GPTQ quantization of an ``(in, out)`` kernel on calibration activations ``x``.

    Args:
      w: the kernel ``(in, out)``; groups of ``scheme.group_size`` along ``in``.
      x: ``(tokens, in)`` activations that feed it.
      scheme: any INT4 scheme with ``axis=0``.
      damp: dampening, ``H += damp * mean(diag(H)) I`` (must be positive).
      block_size: columns per lazy batch update (the result does not depend on it beyond float
        rounding).
      act_order: quantize columns in decreasing ``diag(H)`` (groups stay contiguous in the
        original order; each group's parameters are fixed when its first column is reached).

    Input channels that never fire (``diag(H) = 0``) are quantized as zero weights.
    """
    if not isinstance(damp, (int, float)) or not damp > 0 or not np.isfinite(damp):
        raise ValueError(f"damp: must be a positive finite number, got {damp!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: must be a positive integer, got {block_size!r}")
    if scheme.rounding != "nearest":
        raise ValueError("scheme: GPTQ needs rounding='nearest'")
    w, stats, group = _check_kernel_and_x(w, x, scheme, need_x=True)
    hess = 2.0 * stats.xtx
    return _gptq(w, hess, scheme, group, float(damp), min(block_size, w.shape[0]),
                 bool(act_order))


@functools.partial(jax.jit, static_argnames=("scheme", "group", "damp", "block", "act_order"))
def _gptq(w: Array, hess: Array, scheme: Scheme, group: int, damp: float, block: int,
          act_order: bool) -> QuantizedTensor:
    n_in, n_out = w.shape
    ng = n_in // group
    diag = jnp.diagonal(hess)
    dead = diag == 0
    hess = hess + jnp.diag(jnp.where(dead, 1.0, 0.0))
    w = jnp.where(dead[:, None], 0.0, w)
    perm = jnp.argsort(-jnp.diagonal(hess), stable=True) if act_order else jnp.arange(n_in)
    inv_perm = jnp.argsort(perm)
    hp = hess[perm][:, perm]
    hp = hp + damp * jnp.mean(jnp.diagonal(hp)) * jnp.eye(n_in, dtype=hp.dtype)
    chol = jnp.linalg.cholesky(hp)
    hinv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(n_in, dtype=hp.dtype))
    u = jnp.linalg.cholesky(hinv).T  # upper: U^T U = H^-1
    wp = w[perm]
    group_of = perm // group  # group of each permuted column
    members = inv_perm.reshape(ng, group)  # permuted positions of each group's columns

    scales = jnp.zeros((ng, n_out), jnp.float32)
    zeros = jnp.zeros((ng, n_out), jnp.float32)
    fixed = jnp.zeros((ng,), bool)
    codes = jnp.zeros((n_in, n_out), jnp.float32)
    for b0 in range(0, n_in, block):  # static: a handful of blocks
        b1 = min(b0 + block, n_in)
        nb = b1 - b0
        u_blk = u[b0:b1]  # (nb, n_in)

        def column(j, carry, b0=b0, b1=b1, nb=nb, u_blk=u_blk):
            wb, err, scales, zeros, fixed, codes = carry
            i = b0 + j
            gi = group_of[i]
            # first column of a group reached: fix its parameters from the group's current values
            # (its columns in this block are up to date; later ones get the pending updates)
            def fix(state):
                scales, zeros = state
                pos = members[gi]  # (group,)
                pending = jnp.matmul(u_blk[:, pos].T, err, precision=_HI)  # (group, out)
                cur = jnp.where((pos < b1)[:, None], wb[jnp.clip(pos - b0, 0, nb - 1)],
                                wp[pos] - pending)
                s_new, z_new = core.group_params(jnp.min(cur, 0), jnp.max(cur, 0), scheme)
                scales = scales.at[gi].set(s_new)
                return scales, zeros if z_new is None else zeros.at[gi].set(z_new)

            scales, zeros = lax.cond(fixed[gi], lambda st: st, fix, (scales, zeros))
            fixed = fixed.at[gi].set(True)
            s = scales[gi]
            z = None if scheme.symmetric else zeros[gi]
            wi = wb[j]
            q = core.encode(wi, s, z, scheme)
            e = (wi - core.decode(q, s, z, scheme)) / u[i, i]
            later = (jnp.arange(nb) > j)[:, None]
            wb = wb - jnp.where(later, u_blk[j, b0:b1][:, None] * e[None, :], 0.0)
            err = err.at[j].set(e)
            codes = codes.at[i].set(q)
            return wb, err, scales, zeros, fixed, codes

        init = (wp[b0:b1], jnp.zeros((nb, n_out), jnp.float32), scales, zeros, fixed, codes)
        _, err, scales, zeros, fixed, codes = lax.fori_loop(0, nb, column, init)
        wp = wp.at[b1:].add(-jnp.matmul(u[b0:b1, b1:].T, err, precision=_HI))
    codes = codes[inv_perm].reshape(ng, group, n_out)
    z_out = None if scheme.symmetric else zeros[:, None, :]
    return core.assemble(codes, scales[:, None, :], z_out, scheme, 0)


# ---------------------------------------------------------------------------------------------
# AWQ


def awq_scales(w: Float[ArrayLike, "i o"], x: Float[ArrayLike, "t i"] | Calibration,
               scheme: Scheme, grid: int = AWQ_GRID) -> tuple[Array, Array]:
    """AWQ's per-input-channel scale search.

    Returns ``(s, errors)``: the scales ``s`` (``(in,)``, positive, normalised so that
    ``max(s) min(s) = 1``) minimising ``||X W - (X / s) Q(diag(s) W)||^2`` over
    ``alpha in {0, 1/grid, ...}`` (``alpha = 0``: ``s = 1``, plain round to nearest), and the
    error of every ``alpha``.  ``w`` may be several kernels that share the input, concatenated
    along ``out``.
    """
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid: must be a positive integer, got {grid!r}")
    w, stats, group = _check_kernel_and_x(w, x, scheme, need_x=True)
    return _awq_scales(w, stats, scheme, group, grid)


def _quadratic_error(delta: Array, xtx: Array) -> Array:
    """``||X delta||_F^2 = tr(delta^T X^T X delta)``."""
    return jnp.sum(delta * jnp.matmul(xtx, delta, precision=_HI))


@functools.partial(jax.jit, static_argnames=("scheme", "group", "grid"))
def _awq_scales(w: Array, stats: Calibration, scheme: Scheme, group: int,
                grid: int) -> tuple[Array, Array]:
    mean_abs = stats.mean_abs
    floor = jnp.min(jnp.where(mean_abs > 0, mean_abs, jnp.inf))
    mean_abs = jnp.where(mean_abs > 0, mean_abs, jnp.where(jnp.isfinite(floor), floor, 1.0))
    sch = dataclasses.replace(scheme, axis=0, group_size=group)

    def scales_for(alpha):
        s = mean_abs ** alpha
        return s / jnp.sqrt(jnp.max(s) * jnp.min(s))

    def error(alpha):
        s = scales_for(alpha)
        deq = core.quantize(w * s[:, None], sch).dequantize(jnp.float32)
        return _quadratic_error(w - deq / s[:, None], stats.xtx)

    alphas = jnp.arange(grid, dtype=jnp.float32) / grid
    errors = lax.map(error, alphas)
    return scales_for(alphas[jnp.argmin(errors)]), errors


def awq(w: Float[ArrayLike, "i o"], x: Float[ArrayLike, "t i"] | Calibration, scheme: Scheme,
        grid: int = AWQ_GRID, clip_search: bool = True,
        scales: Float[ArrayLike, "i"] | None = None) -> tuple[QuantizedTensor, Array]:
    """AWQ: returns ``(q, s)`` with ``q`` the quantized ``diag(s) W`` and ``s`` the scales the
    kernel's input must be divided by (``x @ W ~= (x / s) @ dequantize(q)``).

    ``scales``: use these (e.g. searched jointly for several kernels sharing the input) instead of
    searching.  ``clip_search``: after scaling, choose each group's range by :func:`clip` on the
    scaled activations (as AWQ does).
    """
    w, stats, group = _check_kernel_and_x(w, x, scheme, need_x=True)
    if scales is None:
        s, _ = _awq_scales(w, stats, scheme, group, grid)
    else:
        s = jnp.asarray(scales, jnp.float32)
        if s.shape != (w.shape[0],) or (core._is_concrete(s) and not bool(jnp.all(s > 0))):
            raise ValueError(f"scales: expected {w.shape[0]} positive per-input-channel scales, "
                             f"got shape {s.shape}")
    ws = w * s[:, None]
    if not clip_search:
        return core.quantize(ws, scheme), s
    scaled = Calibration(stats.xtx / (s[:, None] * s[None, :]), stats.abs_sum / s, stats.tokens)
    return clip(ws, scheme, scaled), s
