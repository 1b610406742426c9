r"""The VLP table approximation (Mugi's nonlinear unit) as a jitted, vectorised kernel.

For a BF16 input :math:`x = (-1)^s 2^e (1 + m/128)` the unit rounds the mantissa to M bits
(half to even, a carry increments e), giving :math:`|x| \approx 2^{e'} (1 + j/2^M)`.  Elements are
grouped (``window_group`` consecutive elements along ``axis``: one array tile); each group picks a
window of W stored exponents ``[bottom, bottom + W - 1]`` and every element reads one table entry
(or takes a special value).  The rules, in order (see docs/numerics.md, "VLP nonlinear unit"):

1. NaN -> NaN (the input passes through unchanged);
2. zero or subnormal -> f(0) (exp 1, SiLU/GELU 0);
3. inf, or e' > e_top -> exp: 0 for x < 0, +inf for x > 0; SiLU/GELU: x for x > 0, 0 for x < 0;
4. e' < e_top - L + 1 -> exp: entry (bottom, j = 0); SiLU/GELU: 0
   (``tail="linear"``: exp -> bf16(1 + x), SiLU/GELU -> bf16(FTZ(x/2)));
5. e' < bottom -> entry (bottom, 0); e' > bottom + W - 1 -> entry (bottom + W - 1, 2^M - 1);
6. otherwise the entry (s, e', j).

Window, ``build="max"``: :math:`bottom = \mathrm{clip}(\max e' - W + 1,\ e_{top} - L + 1,\ e_{top} - W + 1)`
(max over the group's normal elements; identical to the spec's ``top = min(max e', e_top)``,
``bottom = max(top - W + 1, e_top - L + 1)``). ``build="min"``:
:math:`bottom = \mathrm{clip}(\min e',\ e_{top} - L + 1,\ e_{top} - W + 1)`.

The table lookup is a gather from the constant ``(2, L, 2^M)`` table with integer indices
computed from the bit fields; no arithmetic touches the looked-up values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, BFloat16, Int

from mugi_jax import formats
from mugi_jax.formats import Kind
from mugi_jax.nonlinear.config import FUNCTIONS, MugiL, VLPConfig
from mugi_jax.nonlinear.tables import value_at_zero, vlp_table

__all__ = ["vlp", "subscription_cycles", "as_bf16", "VLPParts", "vlp_parts", "check_fn"]

_FAR = 1 << 20  # exponent sentinel for elements that do not take part in the window choice


def check_fn(fn: str, allowed: tuple[str, ...] = FUNCTIONS) -> str:
    if fn not in allowed:
        raise ValueError(f"fn: must be one of {allowed}, got {fn!r}")
    return fn


def _check_cfg(cfg: object) -> VLPConfig:
    if isinstance(cfg, MugiL):
        return cfg.config
    if not isinstance(cfg, VLPConfig):
        raise ValueError(f"cfg: must be a VLPConfig or MugiL, got {type(cfg).__name__}")
    return cfg


def as_bf16(x: ArrayLike) -> BFloat16[Array, "..."]:
    """The unit's entry: floating inputs are converted to BF16 (RNE, XLA convert); non-floating
    inputs raise ``TypeError``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    return x if x.dtype == jnp.bfloat16 else x.astype(jnp.bfloat16)


def _norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: must be in [{-ndim}, {ndim}) for a {ndim}-d array, got {axis}")
    return axis % ndim


class _Groups(NamedTuple):
    axis: int
    size: int      # elements per group (min(window_group, n))
    count: int     # number of groups
    pad: int       # padding appended to the axis


def _groups(n: int, axis: int, window_group: int) -> _Groups:
    size = max(1, min(window_group, n))
    count = -(-n // size)
    return _Groups(axis, size, count, count * size - n)


def _grouped(v: Array, g: _Groups, fill: int | bool) -> Array:
    """Split ``g.axis`` of ``v`` into ``(count, size)`` (padding with ``fill``)."""
    if g.pad:
        widths = [(0, 0)] * v.ndim
        widths[g.axis] = (0, g.pad)
        v = jnp.pad(v, widths, constant_values=fill)
    return v.reshape(v.shape[:g.axis] + (g.count, g.size) + v.shape[g.axis + 1:])


def _ungrouped(per_group: Array, g: _Groups, shape: tuple[int, ...]) -> Array:
    """Broadcast a per-group array (group axis kept with length 1) back to element shape."""
    full = jnp.broadcast_to(per_group, per_group.shape[:g.axis + 1] + (g.size,)
                            + per_group.shape[g.axis + 2:])
    full = full.reshape(full.shape[:g.axis] + (g.count * g.size,) + full.shape[g.axis + 2:])
    if g.pad:
        full = jax.lax.slice_in_dim(full, 0, shape[g.axis], axis=g.axis)
    return full


class VLPParts(NamedTuple):
    """Everything the unit decides per element (used by the kernel and the cycle count)."""

    out: BFloat16[Array, "..."]        # result
    subscribes: Array                  # bool: the element latches a table entry
    sign: Int[Array, "..."]            # 0 = +, 1 = -
    code: Int[Array, "..."]            # latched code j (after clamping to the window)
    groups: _Groups


def vlp_parts(xb: BFloat16[Array, "..."], fn: str, cfg: VLPConfig, axis: int) -> VLPParts:
    """Per-element decisions of the VLP unit on a BF16 array (see module docstring)."""
    m_bits, w, lut, e_top = cfg.mantissa_bits, cfg.window, cfg.lut_exponents, cfg.e_top
    e_lo, codes = cfg.e_bottom, cfg.codes
    axis = _norm_axis(axis, xb.ndim) if xb.ndim else 0
    if xb.ndim == 0:
        xb = xb.reshape(1)
    g = _groups(xb.shape[axis], axis, cfg.window_group)

    fields = formats.decompose(xb)
    exponent, code = formats.round_mantissa(xb, m_bits, "rne")
    sign = fields.sign
    normal = fields.kind == Kind.NORMAL
    big = (fields.kind == Kind.INF) | (normal & (exponent > e_top))
    below = normal & (exponent < e_lo)
    inside = normal & (exponent >= e_lo) & (exponent <= e_top)

    if cfg.build == "max":
        key = jnp.where(normal, exponent, -_FAR)
        extreme = jnp.max(_grouped(key, g, -_FAR), axis=axis + 1, keepdims=True)
        bottom_g = jnp.clip(extreme - (w - 1), e_lo, e_top - w + 1)
    else:
        key = jnp.where(normal, exponent, _FAR)
        extreme = jnp.min(_grouped(key, g, _FAR), axis=axis + 1, keepdims=True)
        bottom_g = jnp.clip(extreme, e_lo, e_top - w + 1)
    bottom = _ungrouped(bottom_g, g, xb.shape)
    top = bottom + (w - 1)
    e_lat = jnp.clip(exponent, bottom, top)
    j_lat = jnp.where(exponent < bottom, 0, jnp.where(exponent > top, codes - 1, code))

    clamp_tail = cfg.tail == "clamp"
    subscribes = inside | (below & clamp_tail) if fn == "exp" else inside
    index = (sign * lut + (e_lat - e_lo)) * codes + j_lat
    index = jnp.where(subscribes, index, 0)
    table = jnp.asarray(vlp_table(fn, m_bits, lut, e_top).reshape(-1))
    looked_up = table.at[index].get(mode="promise_in_bounds")

    bf = jnp.bfloat16
    zero_v = jnp.zeros((), bf)
    if fn == "exp":
        big_v = jnp.where(sign == 1, zero_v, jnp.asarray(jnp.inf, bf))
    else:
        big_v = jnp.where(sign == 0, xb, zero_v)
    out = jnp.where(subscribes, looked_up, zero_v)
    out = jnp.where(big, big_v, out)
    if not clamp_tail:
        xf = xb.astype(jnp.float32)
        if fn == "exp":
            tail_v = (1.0 + xf).astype(bf)
        else:
            tail_v = formats.flush_subnormals(xf * 0.5).astype(bf)
        out = jnp.where(below, tail_v, out)
    is_zero = (fields.kind == Kind.ZERO) | (fields.kind == Kind.SUBNORMAL)
    out = jnp.where(is_zero, jnp.asarray(value_at_zero(fn), bf), out)
    out = jnp.where(fields.kind == Kind.NAN, xb, out)
    return VLPParts(out, subscribes, sign, j_lat, g)


def _cycles(parts: VLPParts, fn: str, cfg: VLPConfig, early_termination: bool) -> Array:
    """Per-tile cycles: one sweep per sign pass (exp: the negative pass, plus a positive pass
    only in tiles holding a positive subscriber; SiLU/GELU: both passes).  A sweep is 2^M cycles,
    or with early termination the largest latched code of the pass + 1 (0 if nobody subscribes)."""
    g = parts.groups
    total = None
    for pass_sign in (1, 0):
        member = parts.subscribes & (parts.sign == pass_sign)
        if early_termination:
            length = jnp.max(_grouped(jnp.where(member, parts.code + 1, 0), g, 0), axis=g.axis + 1)
        elif fn == "exp" and pass_sign == 0:
            length = jnp.any(_grouped(member, g, False), axis=g.axis + 1) * cfg.codes
        else:
            shape = parts.out.shape[:g.axis] + (g.count,) + parts.out.shape[g.axis + 1:]
            length = jnp.full(shape, cfg.codes)
        total = length if total is None else total + length
    return total.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis"))
def _vlp_jit(xb: Array, fn: str, cfg: VLPConfig, axis: int) -> Array:
    return vlp_parts(xb, fn, cfg, axis).out.reshape(xb.shape)


def vlp(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(), axis: int = -1
        ) -> BFloat16[Array, "..."]:
    """Elementwise VLP approximation of ``fn`` (exp, silu, gelu, gelu_tanh); BF16 result.

    Window groups are ``cfg.window_group`` consecutive elements along ``axis`` (the last group
    may be shorter).  Inputs of other float dtypes are rounded to BF16 (RNE) at entry.
    """
    fn = check_fn(fn)
    cfg = _check_cfg(cfg)
    xb = as_bf16(x)
    if xb.size == 0:
        return xb
    if xb.ndim:
        _norm_axis(axis, xb.ndim)
    return _vlp_jit(xb, fn, cfg, axis if xb.ndim else 0)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis", "early_termination"))
def _cycles_jit(xb: Array, fn: str, cfg: VLPConfig, axis: int, early_termination: bool) -> Array:
    if fn == "softmax":
        from mugi_jax.nonlinear.softmax import shifted_input, rows_last
        y, axis = rows_last(shifted_input(xb, axis))
        return _cycles(vlp_parts(y, "exp", cfg, axis), "exp", cfg, early_termination)
    return _cycles(vlp_parts(xb, fn, cfg, axis), fn, cfg, early_termination)


def subscription_cycles(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(),
                        axis: int = -1, early_termination: bool = True) -> Int[Array, "..."]:
    """Cycles each tile of the VLP unit takes on ``x``, computed from the data.

    For ``fn`` in exp/silu/gelu/gelu_tanh a tile is a window group along ``axis``; the result
    has ``x``'s shape with ``axis`` replaced by the number of groups.  Per tile and sign pass
    (exp: the negative pass, and a positive pass only if the tile has a positive subscriber;
    SiLU/GELU: two passes) a sweep takes 2^M cycles, or with ``early_termination`` the largest
    latched code in the pass + 1 (0 when no element of that sign reads the table).

    ``fn="softmax"`` counts the exponential of the softmax pipeline (input ``x - max`` along
    ``axis``; tiles are ``window_group`` consecutive rows at one column): the result has shape
    ``(..., row_groups, cols)`` with ``axis`` moved last (a 1-d input counts as one row).
    """
    fn = check_fn(fn, FUNCTIONS + ("softmax",))
    cfg = _check_cfg(cfg)
    xb = as_bf16(x)
    if xb.ndim == 0:
        xb = xb.reshape(1)
    _norm_axis(axis, xb.ndim)
    return _cycles_jit(xb, fn, cfg, axis, bool(early_termination))

