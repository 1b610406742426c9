r"""Differentiable relaxations of the VLP nonlinear unit (exp inside softmax, SiLU, GELU).

The exact unit (:func:`mugi_jax.nonlinear.vlp`) is a composition of hard, integer decisions.  Here
every decision becomes a smooth function of the unit's parameters

* ``mantissa_bits`` :math:`b` (continuous; the rounding step of the mantissa is :math:`\Delta = 2^{-b}`),
* ``window`` :math:`W` (continuous width of the streamed exponent window),
* ``e_top`` (continuous position of the largest stored exponent),

and of a temperature :math:`\tau \ge 0` (in units of binary exponents).  At :math:`\tau = 0` and
integer parameters every relaxed function below equals the exact kernel bit for bit (tested).

Notation: a normal BF16 input :math:`x = (-1)^s 2^{e}(1 + m)`, :math:`m \in [0, 1)` (7 bits).

**1. Mantissa rounding** (:func:`round_mantissa`).  Hard: :math:`q = \Delta\,\mathrm{rne}(m/\Delta)`
(:math:`q = 1` is the carry into the exponent).  Two relaxations:

* ``"ste"`` (straight-through / LSQ): forward is the hard :math:`q`; gradients
  :math:`\partial q/\partial m = 1`, :math:`\partial q/\partial\Delta = \mathrm{rne}(m/\Delta) - m/\Delta`,
  hence :math:`\partial q/\partial b = -\ln 2\,\Delta\,(\mathrm{rne}(m/\Delta) - m/\Delta)`;
* ``"noise"`` (pseudo-quantization noise, DiffQ): :math:`q = m + \Delta u`,
  :math:`u \sim U(-\tfrac12, \tfrac12)`; :math:`\partial q/\partial m = 1`,
  :math:`\partial q/\partial b = -\ln 2\,\Delta u` (the noise scale is what carries the gradient;
  used only while training, the hard limit rounds).

The rounded magnitude is :math:`r = 2^e (1 + q)`, its log :math:`\ell = e + \log_2(1 + q)`
(:math:`\lfloor\ell\rfloor` is the rounded exponent :math:`e'`).

**2. Window** (``build="max"``).  Per group (``window_group`` elements),
:math:`\mathrm{bot} = \mathrm{clip}(\max e' - W + 1,\ e_{top} - L + 1,\ e_{top} - W + 1)`; the group
maximum is data (no gradient), the clip passes the gradient of whichever argument is active
(:math:`\partial\,\mathrm{bot}/\partial W = -1` or 0, :math:`\partial\,\mathrm{bot}/\partial e_{top}
= 1` or 0).  Window edges as values: :math:`r_{lo} = 2^{\mathrm{bot}}` (code 0 of the bottom
exponent), :math:`r_{hi} = 2^{\mathrm{bot} + W} - 2^{\mathrm{bot} + W - 1 - b}` (the top code of the top
exponent).

**3. Soft membership.**  :math:`\sigma_\tau(z) = \mathrm{sigmoid}(z/\tau)` (:math:`\tau = 0`: the step
:math:`[z > 0]`, or :math:`[z \ge 0]` where the exact rule is non-strict), with

* :math:`p_{lo} = \sigma_\tau(\mathrm{bot} - \ell)` (below the window: clamp to :math:`r_{lo}`),
* :math:`p_{hi} = \sigma_\tau(\ell - \mathrm{bot} - W)` (above: clamp to :math:`r_{hi}`),
* :math:`p_{in} = \sigma_\tau(e_{top} + 1 - \ell)` (inside the stored range from above),
* :math:`p_{g} = \sigma_\tau(\ell - e_{top} + L - 1)` (inside the stored range from below).

Output, with :math:`F(v) = \mathrm{bf16}(f(v))` read from a correctly rounded table of all BF16
values (:func:`bf16_function_table`; its gradient is the analytic :math:`f'(v)`):

.. math::
   y_{win} &= p_{lo} F(\pm r_{lo}) + (1 - p_{lo})\big(p_{hi} F(\pm r_{hi}) + (1 - p_{hi}) F(\pm r)\big)\\
   y &= p_{in}\big(p_g\, y_{win} + (1 - p_g)\, y_{tail}\big) + (1 - p_{in})\, y_{big}

with the special values of the function's record (:mod:`mugi_jax.nonlinear.functions`):
:math:`y_{tail}` = ``below(x)``, or :math:`F(-r_{lo})` (clamp) when ``below`` is None;
:math:`y_{big}` = ``above(x)`` (non-finite values, exp's :math:`+\infty`, are applied where
:math:`p_{in} = 0` only); exp: :math:`y_{tail} = F(-r_{lo})`, :math:`y_{big} = 0`; SiLU/GELU:
:math:`y_{tail} = 0`, :math:`y_{big} = x` for :math:`x > 0` else 0.  ``above``/``below`` are read
from tables over all BF16 patterns with central-difference slopes.  Zero/subnormal inputs give
:math:`\mathrm{bf16}(f(0))`, NaN passes through.  Every weight is a product of sigmoids, so
:math:`\partial y/\partial\theta` is the chain rule through them; the gradients w.r.t. ``e_top``,
``window`` and ``mantissa_bits`` are exact derivatives of this smooth surrogate (tested against
central finite differences) and vanish as :math:`\tau \to 0` except through the clamp values.

Gradient w.r.t. the input ``x`` (needed when the relaxed unit sits inside a model): every BF16
rounding is straight-through (identity), :math:`F` contributes :math:`f'`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from mugi_jax import formats
from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear.config import VLPConfig
from mugi_jax.nonlinear.softmax import check_tokens, exact_divide, pairwise_sum, token_major
from mugi_jax.nonlinear.tables import bf16_patterns

__all__ = ["VLPParams", "ROUNDINGS", "RELAXED_FUNCTIONS", "bf16_function_table", "table_function",
           "exp2_exact", "round_mantissa", "soft_step", "relaxed_vlp", "relaxed_softmax",
           "params_from_config", "round_bf16_ste"]

#: Relaxations of the mantissa rounding.
ROUNDINGS = ("ste", "noise")
#: Functions with a relaxed VLP unit.
RELAXED_FUNCTIONS = ("exp", "silu", "gelu", "gelu_tanh")

_TINY32 = np.float32(2.0 ** -126)
_F32_MAX = np.float32(np.finfo(np.float32).max)


class VLPParams(NamedTuple):
    """Continuous VLP parameters (float arrays, broadcastable against each other).

    At integer values they mean exactly the :class:`~mugi_jax.nonlinear.VLPConfig` fields of the
    same names."""

    e_top: Float[Array, "*units"]
    window: Float[Array, "*units"]
    mantissa_bits: Float[Array, "*units"]


def params_from_config(cfg: VLPConfig) -> VLPParams:
    """The (integer-valued) :class:`VLPParams` of an exact config."""
    return VLPParams(jnp.float32(cfg.e_top), jnp.float32(cfg.window), jnp.float32(cfg.mantissa_bits))


# ---------------------------------------------------------------------------------------------
# F(v) = bf16(f(v)) with an analytic gradient


def _f32_reference(fn: str, v: Array) -> Array:
    return functions.get(fn).jax_f32(v)


def _check_fn(fn: str) -> functions.Function:
    if not isinstance(fn, str) or fn not in functions.REGISTRY:
        raise ValueError(f"fn: must be one of {functions.names()}, got {fn!r}")
    return functions.get(fn)


@functools.lru_cache(maxsize=64)
def _rule_tables(rec: functions.Function, which: str) -> tuple[np.ndarray, np.ndarray]:
    """``above`` or ``below`` of the record at every BF16 pattern (rounded to BF16 as the unit
    does, stored as float32; non-finite values kept) and its central-difference slope (float32; 0 where not finite).  The relative step
    makes the slope of a linear piece exact (x +- x 2^-20 is exact for BF16 x)."""
    v = bf16_patterns()
    f = rec.above_f64 if which == "above" else rec.below_f64
    with np.errstate(invalid="ignore", over="ignore"):
        h = np.ldexp(np.where((v != 0) & np.isfinite(v), np.abs(v), 1.0), -20)
        d = (f(v + h) - f(v - h)) / (2 * h)
    with np.errstate(invalid="ignore", over="ignore"):
        val = np.asarray(formats.round_float64(f(v), formats.BF16), np.float32)  # as the unit
    d = np.where(np.isfinite(d), d, 0.0).astype(np.float32)
    val.setflags(write=False)
    d.setflags(write=False)
    return val, d


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _rule(fn: str, which: str, x: Array) -> Array:
    """The record's ``above``/``below`` at the BF16 values ``x`` (float32)."""
    val, _ = _rule_tables(functions.get(fn), which)
    idx = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x), jnp.uint32) >> 16
    return jnp.asarray(val)[idx.astype(jnp.int32)]


@_rule.defjvp
def _rule_jvp(fn: str, which: str, primals: tuple[Array], tangents: tuple[Array]
              ) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    _, slope = _rule_tables(functions.get(fn), which)
    idx = jax.lax.bitcast_convert_type(x, jnp.uint32) >> 16
    return _rule(fn, which, x), jnp.asarray(slope)[idx.astype(jnp.int32)] * dx


@functools.lru_cache(maxsize=8)
def bf16_function_table(fn: str) -> np.ndarray:
    """``T[bits] = bf16_rne(f(v))`` (as float32) for all 65536 BF16 bit patterns ``v``, ``f`` in
    float64 and rounded once - the same rounding as :func:`mugi_jax.nonlinear.vlp_table`, so every
    entry of every VLP table appears here.  Non-finite results (and NaN inputs) are stored as 0
    (the relaxed unit handles those cases separately)."""
    rec = _check_fn(fn)
    bits = np.arange(1 << 16, dtype=np.uint32)
    v32 = (bits << 16).view(np.float32)
    ok = np.isfinite(v32)
    v = np.where(ok, v32, 0).astype(np.float64)
    out = np.zeros(v.shape, np.float64)
    vals = formats.round_float64(rec.f64(v[ok]), formats.BF16)
    out[ok] = np.asarray(vals, np.float64)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def table_function(fn: str, v: Float[Array, "..."]) -> Float[Array, "..."]:
    r""":math:`F(v) = \mathrm{bf16\_rne}(f(\mathrm{bf16\_rne}(v)))` exactly (table read);
    :math:`F'(v) := f'(v)` (float32 analytic derivative)."""
    table = jnp.asarray(bf16_function_table(fn))
    vb = jax.lax.reduce_precision(v.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)
    idx = jax.lax.bitcast_convert_type(vb, jnp.uint32) >> 16
    return table[idx.astype(jnp.int32)]


@table_function.defjvp
def _table_function_jvp(fn: str, primals: tuple[Array], tangents: tuple[Array]
                        ) -> tuple[Array, Array]:
    (v,), (dv,) = primals, tangents
    _, slope = jax.jvp(lambda t: _f32_reference(fn, t), (v,), (jnp.ones_like(v),))
    return table_function(fn, v), slope * dv


# ---------------------------------------------------------------------------------------------
# Pieces


def exp2_exact(t: Float[Array, "..."]) -> Float[Array, "..."]:
    r""":math:`2^t`, exact for integer ``t`` (``ldexp(2^{frac}, floor)``, :math:`2^0 = 1`);
    :math:`d2^t/dt = \ln 2\, 2^t`."""
    fl = jax.lax.stop_gradient(jnp.floor(t))
    return jnp.ldexp(jnp.exp2(t - fl), fl.astype(jnp.int32))


#: Offset of the soft thresholds (in exponents): smaller than the gap between the log-magnitude
#: of code 0 of an exponent and the top code of the exponent below (>= log2(2/(2 - 2^-7)) = 0.0056),
#: so an element that sits exactly on a boundary goes to the side the exact rule puts it on.
STEP_OFFSET = 1.0 / 1024


def soft_step(z: Float[Array, "..."], temperature: float, strict: bool = True) -> Float[Array, "..."]:
    r""":math:`\mathrm{sigmoid}((z \mp c)/\tau)` (:math:`c` = :data:`STEP_OFFSET`, minus for
    ``strict``); at :math:`\tau = 0` the step :math:`[z > 0]` (``strict``) or :math:`[z \ge 0]`,
    which is also the pointwise limit :math:`\tau \to 0` on the values the unit can see.
    Gradient :math:`\sigma(1 - \sigma)/\tau`."""
    if isinstance(temperature, (int, float)) and temperature == 0:
        return (z > 0 if strict else z >= 0).astype(jnp.float32)
    shift = -STEP_OFFSET if strict else STEP_OFFSET
    return jax.nn.sigmoid((z + shift) / jnp.float32(temperature))


def round_bf16_ste(v: Float[Array, "..."]) -> Float[Array, "..."]:
    """Round to BF16 (RNE) in the forward pass, identity gradient (straight-through)."""
    vb = jax.lax.reduce_precision(v, exponent_bits=8, mantissa_bits=7)
    return v + jax.lax.stop_gradient(vb - v)


def round_mantissa(m: Float[Array, "..."], mantissa_bits: Float[Array, "..."], rounding: str = "ste",
                   key: PRNGKeyArray | None = None) -> Float[Array, "..."]:
    r"""Rounded fraction :math:`q` of :math:`m \in [0, 1)` at step :math:`\Delta = 2^{-b}` (module
    docstring, part 1).  ``rounding="noise"`` needs ``key``; ``key=None`` always rounds (``"ste"``).
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: must be one of {ROUNDINGS}, got {rounding!r}")
    delta = exp2_exact(-mantissa_bits)
    if rounding == "noise" and key is not None:
        u = jax.random.uniform(key, m.shape, jnp.float32, -0.5, 0.5)
        return m + delta * u
    s = jax.lax.stop_gradient(m / delta)
    k = jnp.round(s)  # half to even
    # forward exactly delta * k; d/dm = 1; d/d(delta) = k - m/delta (LSQ)
    return jax.lax.stop_gradient(delta * k) + (m - jax.lax.stop_gradient(m)) \
        + (delta - jax.lax.stop_gradient(delta)) * (k - s)


def _group_max(v: Array, axis: int, group: int) -> Array:
    """Max of ``v`` over groups of ``group`` consecutive elements along ``axis``, broadcast back."""
    n = v.shape[axis]
    size = max(1, min(group, n))
    count = -(-n // size)
    pad = count * size - n
    vm = jnp.moveaxis(v, axis, -1)
    if pad:
        vm = jnp.pad(vm, [(0, 0)] * (vm.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    gm = jnp.max(vm.reshape(vm.shape[:-1] + (count, size)), axis=-1, keepdims=True)
    gm = jnp.broadcast_to(gm, vm.shape[:-1] + (count, size)).reshape(vm.shape)[..., :n]
    return jnp.moveaxis(gm, -1, axis)


def _check(fn: str, base: VLPConfig, rounding: str, temperature: float) -> None:
    _check_fn(fn)
    if not isinstance(base, VLPConfig):
        raise ValueError(f"base: must be a VLPConfig, got {type(base).__name__}")
    if base.build != "max":
        raise ValueError(f"base.build: the relaxation supports 'max' only, got {base.build!r}")
    if base.tail != "clamp":
        raise ValueError(f"base.tail: the relaxation supports 'clamp' only, got {base.tail!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: must be one of {ROUNDINGS}, got {rounding!r}")
    if isinstance(temperature, (int, float)) and not temperature >= 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")


# ---------------------------------------------------------------------------------------------
# The relaxed unit


def _temp(t: float | Array) -> float | Array:
    """A Python float stays static (0 selects the hard steps); an array is a traced temperature."""
    return float(t) if isinstance(t, (int, float)) else jnp.asarray(t, jnp.float32)


def _relaxed_core(x: Array, fn: str, p: VLPParams, lut: int, group: int, temperature: float,
                  rounding: str, key: PRNGKeyArray | None, axis: int, exact_values: bool) -> Array:
    """Relaxed unit on a float32 array whose values are BF16 (forward) with gradients to ``x``."""
    xs = jax.lax.stop_gradient(x)
    bits = jax.lax.bitcast_convert_type(xs, jnp.uint32)
    biased = ((bits >> 23) & 0xFF).astype(jnp.int32)
    normal = (biased != 0) & (biased != 255)
    is_nan = jnp.isnan(xs)
    is_zero = biased == 0  # zero or subnormal
    is_inf = (biased == 255) & ~is_nan
    sign = jnp.where(xs < 0, -1.0, 1.0).astype(jnp.float32)
    e = jnp.where(normal, biased - 127, 0)
    x_safe = jnp.where(normal, x, 1.0)
    ax = jnp.abs(x_safe)
    # m from the bit field (exact); dm/dx = 2^-e
    m_bits = ((bits & 0x7FFFFF) >> 16).astype(jnp.float32) * jnp.float32(2.0 ** -7)
    scale = jax.lax.stop_gradient(jnp.ldexp(jnp.float32(1.0), jnp.clip(-e, -126, 126)))
    m = m_bits + (ax - jax.lax.stop_gradient(ax)) * scale
    q = round_mantissa(m, p.mantissa_bits, rounding, key)
    q = jnp.maximum(q, -0.5)
    ef = e.astype(jnp.float32)
    # log2(1 + q) with the values 0 (q = 0) and 1 (q = 1, the carry) pinned exactly: a fused
    # log2 may be an ulp off there, which would move an element across an exponent boundary
    lg = jnp.log2(1.0 + q)
    pinned = jnp.where(q == 0.0, 0.0, jnp.where(q == 1.0, 1.0, lg))
    ell = ef + (lg + jax.lax.stop_gradient(pinned - lg))
    r = jnp.minimum(jnp.ldexp(1.0 + q, e), _F32_MAX)

    # window (build="max"): the group maximum of the rounded exponent is data
    e_round = jax.lax.stop_gradient(jnp.floor(ell))
    e_max = _group_max(jnp.where(normal, e_round, -jnp.inf), axis, group)
    e_lo = p.e_top - (lut - 1)
    bottom = jnp.clip(jnp.maximum(e_max, -1e4) - p.window + 1.0, e_lo, p.e_top - p.window + 1.0)
    r_lo = exp2_exact(bottom)
    r_hi = exp2_exact(bottom + p.window) - exp2_exact(bottom + p.window - 1.0 - p.mantissa_bits)

    p_lo = soft_step(bottom - ell, temperature, strict=True)
    p_hi = soft_step(ell - bottom - p.window, temperature, strict=False)
    p_in = soft_step(p.e_top + 1.0 - ell, temperature, strict=True)
    p_g = soft_step(ell - e_lo, temperature, strict=False)

    if exact_values:
        f_lo, f_hi, f_in = (table_function(fn, sign * v) for v in (r_lo, r_hi, r))
    else:
        f_lo, f_hi, f_in = (_f32_reference(fn, sign * v) for v in (r_lo, r_hi, r))
    y_win = p_lo * f_lo + (1.0 - p_lo) * (p_hi * f_hi + (1.0 - p_hi) * f_in)
    rec = functions.get(fn)
    y_tail = f_lo if rec.below is None else _rule(fn, "below", x)
    big_raw = _rule(fn, "above", x)
    big_inf = jax.lax.stop_gradient(~jnp.isfinite(big_raw))
    y_big = jnp.where(big_inf, 0.0, big_raw)
    y = p_in * (p_g * y_win + (1.0 - p_g) * y_tail) + (1.0 - p_in) * y_big
    f0 = float(formats.round_float64(np.array([rec.at_zero()]), formats.BF16).astype(np.float32)[0])
    y = jnp.where(is_zero, jnp.float32(f0), y)
    # beyond e_top with a non-finite rule value (exp: +inf for x > 0): not differentiable there
    y = jnp.where(big_inf & jax.lax.stop_gradient(p_in == 0), big_raw, y)
    y = jnp.where(is_inf, jax.lax.stop_gradient(big_raw), y)  # f(+-inf) = above(+-inf)
    return jnp.where(is_nan, xs, y)


def _bf16_values(x: Array) -> Array:
    """float32 array holding ``bf16_rne(x)``, straight-through gradient; non-finite entries get no
    gradient."""
    x = jnp.asarray(x, jnp.float32)
    xr = jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)
    fin = jnp.isfinite(x)
    x_safe = jnp.where(fin, x, 0.0)
    return jnp.where(fin, jax.lax.stop_gradient(xr) + (x_safe - jax.lax.stop_gradient(x_safe)), xr)


def relaxed_vlp(x: ArrayLike, fn: str, params: VLPParams, base: VLPConfig = VLPConfig(), *,
                temperature: float = 0.0, rounding: str = "ste", key: PRNGKeyArray | None = None,
                axis: int = -1, exact_values: bool = True) -> Float[Array, "..."]:
    r"""Relaxed :func:`mugi_jax.nonlinear.vlp` (float32 result, BF16 values at :math:`\tau = 0`).

    ``params`` (:class:`VLPParams`) must broadcast to scalars of the unit (one unit per call; use
    ``jax.vmap`` for a stack of units).  ``base`` supplies ``lut_exponents`` and ``window_group``
    (``build="max"``, ``tail="clamp"`` only).  At ``temperature=0``, ``rounding="ste"`` and integer
    parameters the result equals ``nl.vlp(x, fn, VLPConfig(...))`` exactly.

    ``exact_values=False`` replaces the table read :math:`F` by the float32 function :math:`f`
    (no BF16 value rounding): the surrogate is then a smooth function of all three parameters
    (with ``rounding="noise"`` and a fixed key), which is what the finite-difference tests check.
    """
    _check(fn, base, rounding, temperature)
    xb = _bf16_values(x)
    if xb.ndim == 0:
        return relaxed_vlp(xb.reshape(1), fn, params, base, temperature=temperature,
                           rounding=rounding, key=key, axis=0, exact_values=exact_values)[0]
    if not -xb.ndim <= axis < xb.ndim:
        raise ValueError(f"axis: must be in [{-xb.ndim}, {xb.ndim}), got {axis}")
    p = VLPParams(*(jnp.asarray(v, jnp.float32) for v in params))
    for name, v in zip(VLPParams._fields, p):
        chex.assert_rank(v, 0, custom_message=f"params.{name} must be a scalar per call")
    return _relaxed_core(xb, fn, p, base.lut_exponents, base.window_group, _temp(temperature),
                         rounding, key, axis % xb.ndim, bool(exact_values))


def relaxed_softmax(x: ArrayLike, params: VLPParams, base: VLPConfig = VLPConfig(), *,
                    temperature: float = 0.0, rounding: str = "ste",
                    key: PRNGKeyArray | None = None, axis: int = -1, exact_values: bool = True,
                    tokens: int | None = None) -> Float[Array, "..."]:
    r"""Relaxed :func:`mugi_jax.nonlinear.softmax` with a VLP exponential (float32 result).

    :math:`y = \mathrm{bf16}(x - \max x)` (straight-through), :math:`\epsilon` = relaxed exp of
    :math:`y` (window groups: ``window_group`` rows at one column), FTZ,
    :math:`S` = FP32 pairwise sum, output :math:`\mathrm{bf16}(\epsilon / S)` (straight-through);
    ``-inf`` inputs give 0.  Gradient: :math:`\partial o_i/\partial\epsilon_k =
    (\delta_{ik} - o_i)/S`, chained into the relaxed exp.  At ``temperature=0`` and integer
    parameters equal to ``nl.softmax(x, axis, VLPConfig(...), tokens)`` (``tokens``: window
    groups per token of head-major attention rows, as there).
    """
    _check("exp", base, rounding, temperature)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 0:
        raise ValueError("x: softmax needs at least one axis, got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: must be in [{-x.ndim}, {x.ndim}), got {axis}")
    check_tokens(x.shape, axis, tokens)
    xm = token_major(jnp.moveaxis(_bf16_values(x), axis, -1), tokens if x.ndim > 1 else None)
    xm = jnp.where(jnp.abs(xm) < _TINY32, 0.0 * xm, xm)  # FTZ of the input
    masked = xm == -jnp.inf
    fin = jnp.isfinite(xm)
    mx = jax.lax.stop_gradient(jnp.max(xm, axis=-1, keepdims=True))
    d = jnp.where(fin, xm, 0.0) - mx
    y = jnp.where(fin, round_bf16_ste(d), xm - mx)
    y2 = y[None] if y.ndim == 1 else y
    p = VLPParams(*(jnp.asarray(v, jnp.float32) for v in params))
    eps = _relaxed_core(y2, "exp", p, base.lut_exponents, base.window_group, _temp(temperature),
                        rounding, key, y2.ndim - 2, bool(exact_values)).reshape(y.shape)
    eps = jnp.where(jnp.abs(eps) < _TINY32, 0.0 * eps, eps)
    qv = exact_divide(eps, pairwise_sum(eps))
    qv = jnp.where(jnp.abs(qv) < _TINY32, 0.0 * qv, qv)
    out = jnp.where(masked, 0.0, round_bf16_ste(qv))
    return jnp.moveaxis(token_major(out, tokens if x.ndim > 1 else None, inverse=True), -1, axis)
