r"""Baseline nonlinear units: piecewise-linear (PWL), Taylor polynomial, exact FP32.

PWL and Taylor take BF16 inputs (other floats are rounded to BF16 at entry), compute in FP32 and
return BF16 (round to nearest even).  Coefficients are computed in float64 and stored as FP32.

PWL with n segments over [lo, hi]: breakpoints :math:`b_k = lo + k\,(hi - lo)/n`,
:math:`y = f(b_k) + s_k (x - b_k)` with :math:`s_k = (f(b_{k+1}) - f(b_k)) / (b_{k+1} - b_k)` and
:math:`k = \mathrm{clip}(\lfloor (x - lo)\, n / (hi - lo) \rfloor, 0, n - 1)`.  Below ``lo``: 0.
Above ``hi``: exp takes f(hi) (the unit clamps its input), SiLU/GELU the identity x.

Taylor of degree d around c: :math:`y = \sum_{k=0}^{d} a_k (x - c)^k` (Horner, FP32), with
:math:`a_k = f^{(k)}(c)/k!` from exact power-series arithmetic in float64.  Below ``cutoff``: 0;
above ``upper`` (SiLU/GELU only): x.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax.nonlinear.config import PWL, Taylor
from mugi_jax.nonlinear.tables import reference_f64
from mugi_jax.nonlinear.vlp import as_bf16, bf16_to_f32, check_float, check_fn

__all__ = ["PWL_RANGES", "TAYLOR_DEFAULTS", "pwl", "taylor", "exact", "pwl_coefficients",
           "taylor_coefficients"]

#: Default PWL ranges [lo, hi]: the paper's [-20, 0] for the softmax exponential; SiLU and GELU
#: use ranges outside of which they equal 0 / x to within a BF16 ulp-scale error.
PWL_RANGES: dict[str, tuple[float, float]] = {
    "exp": (-20.0, 0.0), "silu": (-8.0, 8.0), "gelu": (-4.0, 4.0), "gelu_tanh": (-4.0, 4.0)}

#: Default Taylor (centre, cutoff, upper), chosen to minimise the maximum absolute error of the
#: degree-9 polynomial: exp expanded at -3.5 and zero below -7 (max error 3.3e-3 on [-20, 0]);
#: SiLU Maclaurin series on [-2.5, 2.5] (0.19), GELU on [-2, 2] (0.09); 0 below, x above.
TAYLOR_DEFAULTS: dict[str, tuple[float, float, float | None]] = {
    "exp": (-3.5, -7.0, None), "silu": (0.0, -2.5, 2.5), "gelu": (0.0, -2.0, 2.0),
    "gelu_tanh": (0.0, -2.0, 2.0)}


# ---------------------------------------------------------------------------------------------
# PWL

@functools.lru_cache(maxsize=64)
def pwl_coefficients(fn: str, segments: int, lo: float, hi: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breakpoints b_k, values f(b_k), slopes s_k) for k < segments, as float32."""
    b = lo + (hi - lo) * np.arange(segments + 1, dtype=np.float64) / segments
    v = reference_f64(fn, b)
    s = np.diff(v) / np.diff(b)
    return (b[:-1].astype(np.float32), v[:-1].astype(np.float32), s.astype(np.float32))


def _pwl_range(fn: str, cfg: PWL) -> tuple[float, float]:
    lo, hi = PWL_RANGES[fn]
    lo = float(cfg.lo) if cfg.lo is not None else lo
    hi = float(cfg.hi) if cfg.hi is not None else hi
    if not lo < hi:
        raise ValueError(f"lo: must be < hi ({hi}), got {lo}")
    return lo, hi


@functools.partial(jax.jit, static_argnames=("fn", "cfg"))
def _pwl_jit(x: Array, fn: str, cfg: PWL) -> Array:
    xb = as_bf16(x)
    lo, hi = _pwl_range(fn, cfg)
    n = cfg.segments
    b, v, s = (jnp.asarray(a) for a in pwl_coefficients(fn, n, lo, hi))
    xf = bf16_to_f32(xb)
    xc = jnp.minimum(xf, jnp.float32(hi))  # exp: the unit clamps its input to [lo, hi]
    k = jnp.clip(jnp.floor((xc - jnp.float32(lo)) * jnp.float32(n / (hi - lo))), 0, n - 1)
    k = jnp.where(jnp.isnan(k), 0, k).astype(jnp.int32)
    y = jnp.take(v, k, mode="clip") + jnp.take(s, k, mode="clip") * (xc - jnp.take(b, k, mode="clip"))
    y = jnp.where(xf < lo, 0.0, y)
    if fn != "exp":
        y = jnp.where(xf > hi, xf, y)
    return y.astype(jnp.bfloat16)


def pwl(x: ArrayLike, fn: str, cfg: PWL = PWL()) -> BFloat16[Array, "..."]:
    """Piecewise-linear approximation of ``fn`` (BF16 in/out, FP32 arithmetic)."""
    fn = check_fn(fn)
    if not isinstance(cfg, PWL):
        raise ValueError(f"cfg: must be a PWL, got {type(cfg).__name__}")
    return _pwl_jit(check_float(x), fn, cfg)


# ---------------------------------------------------------------------------------------------
# Taylor

def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([sum(a[i] * b[k - i] for i in range(k + 1)) for k in range(len(a))])


def _exp(h: np.ndarray) -> np.ndarray:
    g = np.zeros_like(h)
    g[0] = math.exp(h[0])
    for n in range(1, len(h)):
        g[n] = sum(k * h[k] * g[n - k] for k in range(1, n + 1)) / n
    return g


def _recip(a: np.ndarray) -> np.ndarray:
    b = np.zeros_like(a)
    b[0] = 1.0 / a[0]
    for n in range(1, len(a)):
        b[n] = -sum(a[k] * b[n - k] for k in range(1, n + 1)) / a[0]
    return b


@functools.lru_cache(maxsize=64)
def taylor_coefficients(fn: str, degree: int, centre: float) -> np.ndarray:
    """Coefficients a_0..a_degree of the Taylor polynomial of ``fn`` at ``centre`` (float64)."""
    n = degree + 1
    t = np.zeros(n)
    t[0] = centre
    if n > 1:
        t[1] = 1.0
    one = np.zeros(n)
    one[0] = 1.0
    if fn == "exp":
        return np.array([math.exp(centre) / math.factorial(k) for k in range(n)])
    if fn == "silu":
        return _mul(t, _recip(one + _exp(-t)))
    if fn == "gelu":
        h = np.zeros(n)  # log phi(c + s) - log phi(c) = -c s - s^2 / 2
        if n > 1:
            h[1] = -centre
        if n > 2:
            h[2] = -0.5
        phi = math.exp(-0.5 * centre * centre) / math.sqrt(2 * math.pi) * _exp(h)
        big_phi = np.zeros(n)
        big_phi[0] = 0.5 * math.erfc(-centre / math.sqrt(2.0))
        big_phi[1:] = phi[:-1] / np.arange(1, n)
        return _mul(t, big_phi)
    if fn == "gelu_tanh":
        u = math.sqrt(2 / math.pi) * (t + 0.044715 * _mul(t, _mul(t, t)))
        return _mul(t, _recip(one + _exp(-2.0 * u)))
    raise ValueError(f"fn: unknown {fn!r}")


def _taylor_params(fn: str, cfg: Taylor) -> tuple[float, float, float | None]:
    centre, cutoff, upper = TAYLOR_DEFAULTS[fn]
    centre = float(cfg.centre) if cfg.centre is not None else centre
    cutoff = float(cfg.cutoff) if cfg.cutoff is not None else cutoff
    upper = float(cfg.upper) if cfg.upper is not None else upper
    return centre, cutoff, upper


@functools.partial(jax.jit, static_argnames=("fn", "cfg"))
def _taylor_jit(x: Array, fn: str, cfg: Taylor) -> Array:
    xb = as_bf16(x)
    centre, cutoff, upper = _taylor_params(fn, cfg)
    a = taylor_coefficients(fn, cfg.degree, centre).astype(np.float32)
    xf = bf16_to_f32(xb)
    t = xf - jnp.float32(centre)
    y = jnp.full_like(xf, a[-1])
    for coeff in a[-2::-1]:
        y = y * t + coeff
    y = jnp.where(xf < cutoff, 0.0, y)
    if fn != "exp" and upper is not None:
        y = jnp.where(xf > upper, xf, y)
    return y.astype(jnp.bfloat16)


def taylor(x: ArrayLike, fn: str, cfg: Taylor = Taylor()) -> BFloat16[Array, "..."]:
    """Taylor-polynomial approximation of ``fn`` (BF16 in/out, FP32 Horner evaluation)."""
    fn = check_fn(fn)
    if not isinstance(cfg, Taylor):
        raise ValueError(f"cfg: must be a Taylor, got {type(cfg).__name__}")
    return _taylor_jit(check_float(x), fn, cfg)


# ---------------------------------------------------------------------------------------------
# Exact

def exact(x: ArrayLike, fn: str) -> Float[Array, "..."]:
    """FP32 reference: ``jnp.exp``, ``jax.nn.silu``, ``jax.nn.gelu`` (erf or tanh) on float32."""
    return _exact_jit(check_float(x), check_fn(fn))


@functools.partial(jax.jit, static_argnames=("fn",))
def _exact_jit(x: Array, fn: str) -> Array:
    xf = x.astype(jnp.float32)
    if fn == "exp":
        return jnp.exp(xf)
    if fn == "silu":
        return jax.nn.silu(xf)
    return jax.nn.gelu(xf, approximate=(fn == "gelu_tanh"))
