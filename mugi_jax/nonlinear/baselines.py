r"""Baseline nonlinear units: piecewise-linear (PWL), Taylor polynomial, exact FP32.

PWL and Taylor take BF16 inputs (other floats are rounded to BF16 at entry), compute in FP32 and
return BF16 (round to nearest even).  Coefficients are computed in float64 and stored as FP32.

PWL with n segments over [lo, hi]: breakpoints :math:`b_k = lo + k\,(hi - lo)/n`,
:math:`y = f(b_k) + s_k (x - b_k)` with :math:`s_k = (f(b_{k+1}) - f(b_k)) / (b_{k+1} - b_k)` and
:math:`k = \mathrm{clip}(\lfloor (x - lo)\, n / (hi - lo) \rfloor, 0, n - 1)`.  Outside
[lo, hi] the record's large-magnitude rule ``above(x)`` (exp: 0 below; SiLU/GELU: 0 below, x
above), except above ``hi`` for a record with ``clamp_above`` (exp: f(hi), the unit clamps its
input).

Taylor of degree d around c: :math:`y = \sum_{k=0}^{d} a_k (x - c)^k` (Horner, FP32), with
:math:`a_k = f^{(k)}(c)/k!` from the record (exact power-series arithmetic in float64 for the
shipped functions).  Below ``cutoff`` and above ``upper``: ``above(x)`` (exp: 0 below, no upper).

Defaults (range, centre, cutoff, upper) live in the function's record
(:mod:`mugi_jax.nonlinear.functions`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear._common import as_bf16, bf16_to_f32, check_float, check_fn
from mugi_jax.nonlinear.config import PWL, Taylor
from mugi_jax.nonlinear.tables import bf16_patterns

__all__ = ["PWL_RANGES", "TAYLOR_DEFAULTS", "pwl", "taylor", "exact", "pwl_coefficients",
           "taylor_coefficients"]

#: Default PWL ranges [lo, hi] of the shipped functions (a view of the records' ``pwl_range``).
PWL_RANGES: dict[str, tuple[float, float]] = {
    n: functions.get(n).pwl_range for n in functions.names()}

#: Default Taylor (centre, cutoff, upper) of the shipped functions (the records' ``taylor``).
TAYLOR_DEFAULTS: dict[str, tuple[float, float, float | None]] = {
    n: functions.get(n).taylor for n in functions.names()}


def above_f32(fn: str | functions.Function) -> np.ndarray:
    """``float32(above(x))`` of the record for every BF16 pattern ``x`` (index = pattern)."""
    return _above_f32(functions.get(fn))


@functools.lru_cache(maxsize=64)
def _above_f32(rec: functions.Function) -> np.ndarray:
    out = rec.above_f64(bf16_patterns()).astype(np.float32)
    out.setflags(write=False)
    return out


def _outside(xb: Array, rec: functions.Function) -> Array:
    """The large-magnitude rule ``above(x)`` of the record at the BF16 inputs ``xb`` (FP32)."""
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16).astype(jnp.int32)
    return jnp.asarray(above_f32(rec))[bits]


# ---------------------------------------------------------------------------------------------
# PWL

def pwl_coefficients(fn: str | functions.Function, segments: int, lo: float, hi: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breakpoints b_k, values f(b_k), slopes s_k) for k < segments, as float32."""
    return _pwl_coefficients(functions.get(fn), segments, lo, hi)


@functools.lru_cache(maxsize=64)
def _pwl_coefficients(rec: functions.Function, segments: int, lo: float, hi: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = lo + (hi - lo) * np.arange(segments + 1, dtype=np.float64) / segments
    v = rec.f64(b)
    s = np.diff(v) / np.diff(b)
    return (b[:-1].astype(np.float32), v[:-1].astype(np.float32), s.astype(np.float32))


def _pwl_range(fn: functions.Function, cfg: PWL) -> tuple[float, float]:
    lo, hi = fn.pwl_range
    lo = float(cfg.lo) if cfg.lo is not None else lo
    hi = float(cfg.hi) if cfg.hi is not None else hi
    if not lo < hi:
        raise ValueError(f"lo: must be < hi ({hi}), got {lo}")
    return lo, hi


@functools.partial(jax.jit, static_argnames=("fn", "cfg"))
def _pwl_jit(x: Array, fn: functions.Function, cfg: PWL) -> Array:
    xb = as_bf16(x)
    lo, hi = _pwl_range(fn, cfg)
    n = cfg.segments
    b, v, s = (jnp.asarray(a) for a in pwl_coefficients(fn, n, lo, hi))
    xf = bf16_to_f32(xb)
    xc = jnp.minimum(xf, jnp.float32(hi))  # the unit clamps its input to [lo, hi]
    k = jnp.clip(jnp.floor((xc - jnp.float32(lo)) * jnp.float32(n / (hi - lo))), 0, n - 1)
    k = jnp.where(jnp.isnan(k), 0, k).astype(jnp.int32)
    y = jnp.take(v, k, mode="clip") + jnp.take(s, k, mode="clip") * (xc - jnp.take(b, k, mode="clip"))
    outside = _outside(xb, fn)
    y = jnp.where(xf < lo, outside, y)
    if not fn.clamp_above:
        y = jnp.where(xf > hi, outside, y)
    return y.astype(jnp.bfloat16)


def pwl(x: ArrayLike, fn: str, cfg: PWL = PWL()) -> BFloat16[Array, "..."]:
    """Piecewise-linear approximation of ``fn`` (BF16 in/out, FP32 arithmetic)."""
    fn = check_fn(fn)
    if not isinstance(cfg, PWL):
        raise ValueError(f"cfg: must be a PWL, got {type(cfg).__name__}")
    return _pwl_jit(check_float(x), functions.get(fn), cfg)


# ---------------------------------------------------------------------------------------------
# Taylor

def taylor_coefficients(fn: str | functions.Function, degree: int, centre: float) -> np.ndarray:
    """Coefficients a_0..a_degree of the Taylor polynomial of ``fn`` at ``centre`` (float64)."""
    return _taylor_coefficients(functions.get(fn), degree, centre)


@functools.lru_cache(maxsize=64)
def _taylor_coefficients(rec: functions.Function, degree: int, centre: float) -> np.ndarray:
    return rec.taylor_coefficients(centre, degree)


def _taylor_params(fn: functions.Function, cfg: Taylor) -> tuple[float, float, float | None]:
    centre, cutoff, upper = fn.taylor
    centre = float(cfg.centre) if cfg.centre is not None else centre
    cutoff = float(cfg.cutoff) if cfg.cutoff is not None else cutoff
    upper = float(cfg.upper) if cfg.upper is not None else upper
    return centre, cutoff, upper


@functools.partial(jax.jit, static_argnames=("fn", "cfg"))
def _taylor_jit(x: Array, fn: functions.Function, cfg: Taylor) -> Array:
    xb = as_bf16(x)
    centre, cutoff, upper = _taylor_params(fn, cfg)
    a = taylor_coefficients(fn, cfg.degree, centre).astype(np.float32)
    xf = bf16_to_f32(xb)
    t = xf - jnp.float32(centre)
    y = jnp.full_like(xf, a[-1])
    for coeff in a[-2::-1]:
        y = y * t + coeff
    outside = _outside(xb, fn)
    y = jnp.where(xf < cutoff, outside, y)
    if upper is not None:
        y = jnp.where(xf > upper, outside, y)
    return y.astype(jnp.bfloat16)


def taylor(x: ArrayLike, fn: str, cfg: Taylor = Taylor()) -> BFloat16[Array, "..."]:
    """Taylor-polynomial approximation of ``fn`` (BF16 in/out, FP32 Horner evaluation)."""
    fn = check_fn(fn)
    if not isinstance(cfg, Taylor):
        raise ValueError(f"cfg: must be a Taylor, got {type(cfg).__name__}")
    return _taylor_jit(check_float(x), functions.get(fn), cfg)


# ---------------------------------------------------------------------------------------------
# Exact

def exact(x: ArrayLike, fn: str) -> Float[Array, "..."]:
    """FP32 reference: the record's ``jax_fn`` (``jnp.exp``, ``jax.nn.silu``, ``jax.nn.gelu``
    (erf or tanh), ...) on float32, or its float64 ``reference`` through a host callback."""
    return _exact_jit(check_float(x), functions.get(check_fn(fn)))


@functools.partial(jax.jit, static_argnames=("fn",))
def _exact_jit(x: Array, fn: functions.Function) -> Array:
    return fn.jax_f32(x.astype(jnp.float32))
