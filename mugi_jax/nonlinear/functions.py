r"""The nonlinear function registry: one :class:`Function` record per function.

The record is the only place a function is defined.  The VLP kernel (:func:`mugi_jax.nonlinear.vlp`
and its tables), Mugi-L, PWL, Taylor, the exact path, the cycle-level simulator
(:mod:`mugi_jax.sim.nonlinear`), the relaxation and the tuner's cost read it::

    from mugi_jax import nonlinear as nl
    nl.register(nl.Function(name="tanh", reference=np.tanh, above=np.sign, below=lambda x: x,
                            signs=(1, -1)))
    nl.vlp(x, "tanh", nl.VLPConfig())

``reference``, ``above`` and ``below`` take and return float64 NumPy arrays.  VLP element rules
(docs/numerics.md section 3, generalised): a zero or subnormal input gives ``reference(0)``; a
rounded exponent above ``e_top`` (or an infinite input) gives ``above(x)``; an exponent below the
stored range gives ``below(x)``, or - ``below=None``, the exp rule - the window's lowest entry
(bottom, j = 0); outside the group's window the element is clamped to the window's edge; otherwise
it reads the table entry ``bf16(reference(+-(1 + j/2^M) 2^e))``.  ``signs`` lists the input signs
whose table pass always runs (+1, -1); a pass of another sign runs only in tiles holding an element
of that sign (exp: ``signs=(-1,)``, softmax inputs are never positive).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Function", "register", "get", "names", "REGISTRY"]

NumpyFn = Callable[[np.ndarray], np.ndarray]


def _zeros(x: np.ndarray) -> np.ndarray:
    return np.zeros_like(x)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Function:
    """One nonlinear function.

    Attributes:
      name: registry name (what ``fn`` arguments take).
      reference: ``f`` on float64 NumPy arrays (table entries, PWL knots, the oracle).
      above: the result for inputs whose exponent is above the stored range (and +-inf).
      below: the result for inputs below the stored range; ``None``: clamp to the window's lowest
        entry (the exp rule).
      signs: input signs (+1, -1) whose table pass always runs.
      pwl_range: default ``[lo, hi]`` of :class:`~mugi_jax.nonlinear.PWL`.  Outside it the PWL
        unit gives ``above(x)`` (the large-magnitude rule), except above ``hi`` when
        ``clamp_above`` (the input is clamped to ``hi``: exp's unit).
      taylor: default ``(centre, cutoff, upper)`` of :class:`~mugi_jax.nonlinear.Taylor`: the
        polynomial around ``centre``; ``above(x)`` below ``cutoff`` and above ``upper``
        (``None``: no upper cut).
      slope_at_zero: ``f'(0)``: ``tail="linear"`` replaces the below-range rule by
        ``bf16(f(0) + f'(0) x)`` (FP32 arithmetic, FTZ).
      series: optional ``series(centre, degree) -> a_0..a_degree`` (exact Taylor coefficients);
        ``None``: from the Cauchy integral of ``reference`` on a circle around the centre
        (``reference`` must then accept complex arguments and be analytic there).
      jax_fn: optional FP32 JAX implementation (the ``Exact()`` path and the relaxation's
        derivative); ``None``: ``reference`` through a host callback (derivative by central
        differences).
    """

    name: str
    reference: NumpyFn
    above: NumpyFn = _relu
    below: NumpyFn | None = _zeros
    signs: tuple[int, ...] = (1, -1)
    pwl_range: tuple[float, float] = (-8.0, 8.0)
    taylor: tuple[float, float, float | None] = (0.0, -4.0, 4.0)
    clamp_above: bool = False
    slope_at_zero: float | None = None
    series: Callable[[float, int], np.ndarray] | None = None
    jax_fn: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == "softmax":
            raise ValueError(f"name: must be a non-empty string other than 'softmax', "
                             f"got {self.name!r}")
        for field in ("reference", "above"):
            if not callable(getattr(self, field)):
                raise ValueError(f"{field}: must be a callable on float64 arrays")
        if self.below is not None and not callable(self.below):
            raise ValueError("below: must be a callable on float64 arrays or None")
        if not self.signs or any(s not in (1, -1) for s in self.signs) \
                or len(set(self.signs)) != len(self.signs):
            raise ValueError(f"signs: must be a non-empty subset of (1, -1), got {self.signs!r}")
        lo, hi = self.pwl_range
        if not lo < hi:
            raise ValueError(f"pwl_range: lo must be < hi, got {self.pwl_range!r}")

    # ---- derived values ------------------------------------------------------------------

    def f64(self, v: Any) -> np.ndarray:
        """``reference`` on float64 (warnings of overflow / invalid values silenced)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.asarray(self.reference(np.asarray(v, np.float64)), np.float64)

    def at_zero(self) -> float:
        return float(self.f64(np.zeros(1))[0])

    def above_f64(self, v: Any) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(self.above(np.asarray(v, np.float64)), np.float64)

    def below_f64(self, v: Any) -> np.ndarray:
        """``below`` on float64 (only for a record whose ``below`` is not None)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(self.below(np.asarray(v, np.float64)), np.float64)

    def slope(self) -> float:
        """``f'(0)`` (the record's value, else a central difference of ``reference``)."""
        if self.slope_at_zero is not None:
            return float(self.slope_at_zero)
        h = 2.0 ** -20
        return float((self.f64(np.array([h])) - self.f64(np.array([-h])))[0] / (2 * h))

    def derivative_f64(self, v: Any) -> np.ndarray:
        """``f'(v)`` by a central difference of ``reference`` (float64)."""
        v = np.asarray(v, np.float64)
        h = 2.0 ** -20 * np.maximum(1.0, np.abs(v))
        return (self.f64(v + h) - self.f64(v - h)) / (2 * h)

    def jax_f32(self, x: Any) -> Any:
        """``f`` on a float32 JAX array: ``jax_fn``, or ``reference`` through a host callback
        (differentiable: its derivative is :meth:`derivative_f64`, also a callback)."""
        if self.jax_fn is not None:
            return self.jax_fn(x)
        return _host_f32(self, x)

    def taylor_coefficients(self, centre: float, degree: int) -> np.ndarray:
        """``a_0 .. a_degree`` of the Taylor polynomial at ``centre`` (float64)."""
        if self.series is not None:
            return np.asarray(self.series(centre, degree), np.float64)
        # Cauchy: a_k = mean over the circle of f(c + r e^{it}) e^{-ikt} / r^k (trapezoid rule,
        # spectrally accurate for a function analytic on the disc)
        n, r = 64, 0.5
        t = 2 * np.pi * np.arange(n) / n
        z = centre + r * np.exp(1j * t)
        with np.errstate(over="ignore", invalid="ignore"):
            fz = np.asarray(self.reference(z), np.complex128)
        if not np.all(np.isfinite(fz)):
            raise ValueError(f"{self.name}: Taylor coefficients need `series` or a reference "
                             "that is analytic (and accepts complex input) near the centre")
        k = np.arange(max(degree, 1) + 1)
        a = (np.mean(fz[None, :] * np.exp(-1j * k[:, None] * t[None, :]), axis=1) / r ** k).real
        # a reference that is not analytic for complex input (np.abs, np.where on v) gives
        # wrong coefficients silently: check the first two against real evaluations
        f0, d0 = self.f64(np.array([centre]))[0], self.derivative_f64(np.array([centre]))[0]
        if not (abs(a[0] - f0) <= 1e-9 * max(1.0, abs(f0))
                and abs(a[1] - d0) <= 1e-5 * max(1.0, abs(d0))):
            raise ValueError(f"{self.name}: the Cauchy-integral Taylor coefficients disagree with "
                             "the reference (is it analytic for complex input?); give `series`")
        return a[:degree + 1]


def _host_f32(rec: Function, x: Any) -> Any:
    import jax
    import jax.numpy as jnp

    def call(f: Callable[[np.ndarray], np.ndarray], v: Any) -> Any:
        return jax.pure_callback(lambda a: np.asarray(f(np.asarray(a)), np.float32),
                                 jax.ShapeDtypeStruct(v.shape, jnp.float32), v,
                                 vmap_method="broadcast_all")

    @jax.custom_jvp
    def f(v: Any) -> Any:
        return call(rec.f64, v)

    @f.defjvp
    def f_jvp(primals: tuple, tangents: tuple) -> tuple:
        (v,), (dv,) = primals, tangents
        return f(v), call(rec.derivative_f64, v) * dv

    return f(jnp.asarray(x, jnp.float32))


#: name -> Function (use :func:`register` / :func:`get`).
REGISTRY: dict[str, Function] = {}


def register(function: Function, *, replace: bool = False) -> Function:
    """Add ``function`` to the registry (``replace=True`` to redefine a name)."""
    if not isinstance(function, Function):
        raise ValueError(f"function: must be a nonlinear.Function, got {type(function).__name__}")
    if function.name in REGISTRY and not replace and REGISTRY[function.name] is not function:
        raise ValueError(f"name: {function.name!r} is already registered (replace=True to "
                         "redefine it)")
    REGISTRY[function.name] = function
    return function


def names() -> tuple[str, ...]:
    """Registered function names, in registration order."""
    return tuple(REGISTRY)


def get(fn: str | Function) -> Function:
    """The record of ``fn`` (a record is returned unchanged); ``ValueError`` naming the valid
    names for an unknown one."""
    if isinstance(fn, Function):
        return fn
    try:
        return REGISTRY[fn]
    except (KeyError, TypeError):
        raise ValueError(f"fn: must be one of {names()}, got {fn!r}") from None


# ---------------------------------------------------------------------------------------------
# The shipped functions

_SQRT_HALF = math.sqrt(0.5)
_GELU_TANH_A = math.sqrt(2.0 / math.pi)
_GELU_TANH_B = 0.044715


def _expit(v: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, evaluated without overflow."""
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _silu(v: np.ndarray) -> np.ndarray:
    return v * _expit(v)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * _erfc(-v * _SQRT_HALF).astype(np.float64)


def _gelu_tanh(v: np.ndarray) -> np.ndarray:
    return v * _expit(2.0 * _GELU_TANH_A * (v + _GELU_TANH_B * v ** 3))


# exact power-series arithmetic (float64) for the Taylor coefficients of the shipped functions

def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([sum(a[i] * b[k - i] for i in range(k + 1)) for k in range(len(a))])


def _exp_series(h: np.ndarray) -> np.ndarray:
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


def _identity(centre: float, degree: int) -> tuple[np.ndarray, np.ndarray]:
    n = degree + 1
    t = np.zeros(n)
    t[0] = centre
    if n > 1:
        t[1] = 1.0
    one = np.zeros(n)
    one[0] = 1.0
    return t, one


def _exp_coeffs(centre: float, degree: int) -> np.ndarray:
    return np.array([math.exp(centre) / math.factorial(k) for k in range(degree + 1)])


def _sigmoid_coeffs(centre: float, degree: int) -> np.ndarray:
    t, one = _identity(centre, degree)
    return _recip(one + _exp_series(-t))


def _silu_coeffs(centre: float, degree: int) -> np.ndarray:
    t, _ = _identity(centre, degree)
    return _mul(t, _sigmoid_coeffs(centre, degree))


def _gelu_coeffs(centre: float, degree: int) -> np.ndarray:
    n = degree + 1
    t, _ = _identity(centre, degree)
    h = np.zeros(n)  # log phi(c + s) - log phi(c) = -c s - s^2 / 2
    if n > 1:
        h[1] = -centre
    if n > 2:
        h[2] = -0.5
    phi = math.exp(-0.5 * centre * centre) / math.sqrt(2 * math.pi) * _exp_series(h)
    big_phi = np.zeros(n)
    big_phi[0] = 0.5 * math.erfc(-centre / math.sqrt(2.0))
    big_phi[1:] = phi[:-1] / np.arange(1, n)
    return _mul(t, big_phi)


def _gelu_tanh_coeffs(centre: float, degree: int) -> np.ndarray:
    t, one = _identity(centre, degree)
    u = _GELU_TANH_A * (t + _GELU_TANH_B * _mul(t, _mul(t, t)))
    return _mul(t, _recip(one + _exp_series(-2.0 * u)))


def _tanh_coeffs(centre: float, degree: int) -> np.ndarray:
    t, one = _identity(centre, degree)  # tanh(x) = 2 sigmoid(2x) - 1
    out = 2.0 * _recip(one + _exp_series(-2.0 * t))
    out[0] -= 1.0
    return out


def _jax_exp(x: Any) -> Any:
    import jax.numpy as jnp
    return jnp.exp(x)


def _jax_silu(x: Any) -> Any:
    import jax
    return jax.nn.silu(x)


def _jax_gelu(x: Any) -> Any:
    import jax
    return jax.nn.gelu(x, approximate=False)


def _jax_gelu_tanh(x: Any) -> Any:
    import jax
    return jax.nn.gelu(x, approximate=True)


def _jax_sigmoid(x: Any) -> Any:
    import jax
    return jax.nn.sigmoid(x)


def _jax_tanh(x: Any) -> Any:
    import jax.numpy as jnp
    return jnp.tanh(x)


def _exp_above(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, np.inf, 0.0)


def _step(x: np.ndarray) -> np.ndarray:  # sigmoid's saturation
    return np.where(x > 0, 1.0, 0.0)


def _sign(x: np.ndarray) -> np.ndarray:  # tanh's saturation (np.sign would give tanh(0) = 0)
    return np.where(x > 0, 1.0, -1.0)


def _half(x: np.ndarray) -> np.ndarray:
    return np.full_like(x, 0.5)


def _ship() -> None:
    # PWL ranges: the paper's [-20, 0] for the softmax exponential; SiLU and GELU use ranges
    # outside of which they equal 0 / x to within a BF16 ulp-scale error.  Taylor defaults
    # minimise the maximum absolute error of the degree-9 polynomial: exp expanded at -3.5 and
    # zero below -7 (max error 3.3e-3 on [-20, 0]); SiLU Maclaurin series on [-2.5, 2.5] (0.19),
    # GELU on [-2, 2] (0.09); 0 below, x above.
    register(Function("exp", np.exp, above=_exp_above, below=None, signs=(-1,),
                      pwl_range=(-20.0, 0.0), taylor=(-3.5, -7.0, None), clamp_above=True,
                      slope_at_zero=1.0, series=_exp_coeffs, jax_fn=_jax_exp))
    register(Function("silu", _silu, pwl_range=(-8.0, 8.0), taylor=(0.0, -2.5, 2.5),
                      slope_at_zero=0.5, series=_silu_coeffs, jax_fn=_jax_silu))
    register(Function("gelu", _gelu, pwl_range=(-4.0, 4.0), taylor=(0.0, -2.0, 2.0),
                      slope_at_zero=0.5, series=_gelu_coeffs, jax_fn=_jax_gelu))
    register(Function("gelu_tanh", _gelu_tanh, pwl_range=(-4.0, 4.0), taylor=(0.0, -2.0, 2.0),
                      slope_at_zero=0.5, series=_gelu_tanh_coeffs, jax_fn=_jax_gelu_tanh))
    # sigmoid: 0 / 1 above the stored range, 1/2 below it (sigma(x) = 1/2 + x/4 + ...).  The
    # Maclaurin series of sigmoid / tanh converge for |x| < pi / pi/2: the Taylor baseline
    # switches to the saturated values at +-2.5 / +-1.3 (max error ~0.1, a weak baseline).
    register(Function("sigmoid", _expit, above=_step, below=_half, pwl_range=(-8.0, 8.0),
                      taylor=(0.0, -2.5, 2.5), slope_at_zero=0.25, series=_sigmoid_coeffs,
                      jax_fn=_jax_sigmoid))
    # tanh: sign(x) above the stored range, x below it (tanh(x) = x - x^3/3 + ...).
    register(Function("tanh", np.tanh, above=_sign, below=lambda x: x, pwl_range=(-4.0, 4.0),
                      taylor=(0.0, -1.3, 1.3), slope_at_zero=1.0, series=_tanh_coeffs,
                      jax_fn=_jax_tanh))


_ship()
