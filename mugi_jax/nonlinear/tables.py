r"""Float64 reference functions and the VLP lookup table.

Table entry for sign :math:`s`, stored exponent :math:`e` and code :math:`j`:

.. math:: T[s, e, j] = \mathrm{bf16\_rne}\big(f((-1)^s (1 + j/2^M)\, 2^e)\big),

with :math:`f` evaluated in float64 and rounded *once* to BF16 (:func:`formats.round_float64`).
Entries may be BF16 subnormals or infinities; they are stored as computed.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mugi_jax import formats

__all__ = ["reference_f64", "vlp_table", "value_at_zero"]

_SQRT_HALF = math.sqrt(0.5)
_GELU_TANH_A = math.sqrt(2.0 / math.pi)
_GELU_TANH_B = 0.044715


def _expit(v: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, evaluated without overflow."""
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def reference_f64(fn: str, v: np.ndarray) -> np.ndarray:
    r"""``f(v)`` in float64 for ``fn`` in exp, silu, gelu (erf), gelu_tanh.

    SiLU :math:`v\sigma(v)`; GELU :math:`\tfrac12 v\,\mathrm{erfc}(-v/\sqrt2)`; tanh-GELU
    :math:`v\,\sigma(2u)`, :math:`u = \sqrt{2/\pi}(v + 0.044715 v^3)` (both identical to the
    textbook forms, written to avoid cancellation for negative v).
    """
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if fn == "exp":
            return np.exp(v)
        if fn == "silu":
            return v * _expit(v)
        if fn == "gelu":
            erfc = np.frompyfunc(lambda t: math.erfc(t), 1, 1)
            return 0.5 * v * erfc(-v * _SQRT_HALF).astype(np.float64)
        if fn == "gelu_tanh":
            return v * _expit(2.0 * _GELU_TANH_A * (v + _GELU_TANH_B * v ** 3))
    raise ValueError(f"fn: must be one of exp, silu, gelu, gelu_tanh, got {fn!r}")


def value_at_zero(fn: str) -> float:
    """f(0): exp 1, SiLU/GELU 0."""
    return 1.0 if fn == "exp" else 0.0


@functools.lru_cache(maxsize=256)
def vlp_table(fn: str, mantissa_bits: int, lut_exponents: int, e_top: int) -> np.ndarray:
    """BF16 table of shape ``(2, L, 2^M)`` indexed ``[sign, e - e_bottom, j]`` (sign 0 = +).

    Both signs are stored for every function (exp's positive half is only read for positive
    inputs, which never occur in softmax).  Read-only NumPy array (ml_dtypes bfloat16).
    """
    codes = 1 << mantissa_bits
    exps = np.arange(e_top - lut_exponents + 1, e_top + 1, dtype=np.float64)
    mags = np.ldexp(1.0 + np.arange(codes, dtype=np.float64)[None, :] / codes,
                    exps.astype(np.int64)[:, None])
    v = np.stack([mags, -mags])  # (2, L, codes)
    table = formats.round_float64(reference_f64(fn, v), formats.BF16)
    table.setflags(write=False)
    return table
