r"""Float64 references (from the function registry), the VLP lookup table and special values.

Table entry for sign :math:`s`, stored exponent :math:`e` and code :math:`j`:

.. math:: T[s, e, j] = \mathrm{bf16\_rne}\big(f((-1)^s (1 + j/2^M)\, 2^e)\big),

with :math:`f` the record's ``reference`` (:mod:`mugi_jax.nonlinear.functions`) evaluated in
float64 and rounded *once* to BF16 (:func:`formats.round_float64`).  Entries may be BF16
subnormals or infinities; they are stored as computed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from mugi_jax import formats
from mugi_jax.nonlinear import functions

__all__ = ["reference_f64", "vlp_table", "value_at_zero", "special_values", "SpecialValues",
           "bf16_patterns"]


def reference_f64(fn: str | functions.Function, v: np.ndarray) -> np.ndarray:
    """``f(v)`` in float64 for a registered function (the record's ``reference``)."""
    return functions.get(fn).f64(v)


def value_at_zero(fn: str | functions.Function) -> float:
    """f(0): exp 1, SiLU/GELU 0."""
    return functions.get(fn).at_zero()


def vlp_table(fn: str | functions.Function, mantissa_bits: int, lut_exponents: int,
              e_top: int) -> np.ndarray:
    """BF16 table of shape ``(2, L, 2^M)`` indexed ``[sign, e - e_bottom, j]`` (sign 0 = +).

    Both signs are stored for every function (exp's positive half is only read for positive
    inputs, which never occur in softmax).  Read-only NumPy array (ml_dtypes bfloat16).
    """
    return _vlp_table(functions.get(fn), mantissa_bits, lut_exponents, e_top)


@functools.lru_cache(maxsize=256)
def _vlp_table(rec: functions.Function, mantissa_bits: int, lut_exponents: int,
               e_top: int) -> np.ndarray:
    codes = 1 << mantissa_bits
    exps = np.arange(e_top - lut_exponents + 1, e_top + 1, dtype=np.float64)
    mags = np.ldexp(1.0 + np.arange(codes, dtype=np.float64)[None, :] / codes,
                    exps.astype(np.int64)[:, None])
    v = np.stack([mags, -mags])  # (2, L, codes)
    table = formats.round_float64(rec.f64(v), formats.BF16)
    table.setflags(write=False)
    return table


def bf16_patterns() -> np.ndarray:
    """The float64 values of all 65536 BF16 bit patterns (index = pattern)."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    with np.errstate(invalid="ignore"):  # NaN patterns stay NaN
        return (bits << 16).view(np.float32).astype(np.float64)


class SpecialValues(NamedTuple):
    """The record's special results as BF16 bit patterns (uint16): ``at_zero`` (scalar),
    ``above[p]`` / ``below[p]`` for every BF16 pattern ``p`` (``below`` is zeros when the record's
    ``below`` is None: those elements read the table)."""

    at_zero: np.uint16
    above: np.ndarray
    below: np.ndarray


def special_values(fn: str | functions.Function) -> SpecialValues:
    return _special_values(functions.get(fn))


@functools.lru_cache(maxsize=64)
def _special_values(rec: functions.Function) -> SpecialValues:
    v = bf16_patterns()

    def bits(a: np.ndarray) -> np.ndarray:
        out = formats.round_float64(np.asarray(a, np.float64), formats.BF16).view(np.uint16)
        out = np.ascontiguousarray(out)
        out.setflags(write=False)
        return out

    zero = bits(np.array([rec.at_zero()]))[0]
    above = bits(rec.above_f64(v))
    below = bits(rec.below_f64(v)) if rec.below is not None else bits(np.zeros_like(v))
    return SpecialValues(zero, above, below)
