"""Bit-level floating-point formats: fields, classification, mantissa rounding, conversions.

A binary floating-point number with ``E`` exponent bits, ``P`` stored mantissa bits and bias ``B``
has the bit layout ``s | e_biased | m`` and the value

.. math::

    x = (-1)^s \\, 2^{e_b - B} (1 + m / 2^P)      \\quad (0 < e_b < e_{\\max})   \\qquad\\text{normal}

    x = (-1)^s \\, 2^{1 - B} (m / 2^P)            \\quad (e_b = 0)              \\qquad\\text{zero / subnormal}

The top biased exponent encodes infinities and NaNs (IEEE style: BF16, FP16, FP32, FP8 E5M2), or,
for the "fn" (finite) FP8 E4M3 format, only the all-ones pattern ``S.1111.111`` is NaN and there
is no infinity.

Every function here is pure, vectorised over whole arrays and jit-able; the format comes from the
array's dtype.  Conversions between formats are delegated to XLA ``convert`` (round to nearest
even), which is tested bit-for-bit against ``ml_dtypes`` on exhaustive inputs.

Arithmetic note (documented in docs/numerics.md): XLA's CPU backend runs arithmetic with
flush-to-zero / denormals-are-zero, conversions are exact.  :func:`flush_subnormals` makes the same
rule explicit where a datapath needs it to be device-independent.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

__all__ = [
    "BF16", "FP16", "FP32", "FP8_E4M3", "FP8_E5M2", "FORMATS", "FloatFormat", "Kind", "Fields",
    "RoundedMantissa", "ROUNDING_MODES", "format_of", "to_bits", "from_bits", "decompose",
    "decompose_bits", "compose", "classify", "round_mantissa", "convert", "to_numpy", "from_numpy",
    "flush_subnormals", "flush_subnormals_numpy", "round_float64", "round_to_bf16",
]


class Kind(enum.IntEnum):
    """Explicit class of a floating-point value (stored as int8 in :class:`Fields`)."""

    ZERO = 0
    SUBNORMAL = 1
    NORMAL = 2
    INF = 3
    NAN = 4


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: field widths, bias and special-value encoding.

    ``nan_style`` is ``"ieee"`` (top exponent = inf when m == 0, NaN otherwise) or ``"fn"``
    (no infinities; only all-ones exponent *and* mantissa is NaN, as in FP8 E4M3 "fn").
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    nan_style: str
    dtype: type  # the jax.numpy / ml_dtypes scalar type
    uint_dtype: type

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def total_bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal (and of the subnormal scale)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite value."""
        top = (1 << self.exponent_bits) - 1
        return (top - self.bias) if self.nan_style == "fn" else (top - 1 - self.bias)

    @property
    def max_finite(self) -> float:
        frac_max = (1 << self.mantissa_bits) - (2 if self.nan_style == "fn" else 1)
        return float(2.0 ** self.emax * (1 + frac_max / 2 ** self.mantissa_bits))

    @property
    def min_normal(self) -> float:
        return float(2.0 ** self.emin)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


BF16 = FloatFormat("bfloat16", 8, 7, "ieee", jnp.bfloat16, jnp.uint16)
FP16 = FloatFormat("float16", 5, 10, "ieee", jnp.float16, jnp.uint16)
FP32 = FloatFormat("float32", 8, 23, "ieee", jnp.float32, jnp.uint32)
FP8_E4M3 = FloatFormat("float8_e4m3fn", 4, 3, "fn", jnp.float8_e4m3fn, jnp.uint8)
FP8_E5M2 = FloatFormat("float8_e5m2", 5, 2, "ieee", jnp.float8_e5m2, jnp.uint8)

FORMATS: dict[str, FloatFormat] = {f.name: f for f in (BF16, FP16, FP32, FP8_E4M3, FP8_E5M2)}
_ALIASES = {"bf16": BF16, "fp16": FP16, "fp32": FP32, "e4m3": FP8_E4M3, "fp8_e4m3": FP8_E4M3,
            "e5m2": FP8_E5M2, "fp8_e5m2": FP8_E5M2}

ROUNDING_MODES = ("rne", "trunc", "half_away")


def format_of(x_or_dtype: ArrayLike | np.dtype | type | str | FloatFormat) -> FloatFormat:
    """The :class:`FloatFormat` of an array, a dtype, or a format name (``"bf16"``, ``"float32"``...)."""
    if isinstance(x_or_dtype, FloatFormat):
        return x_or_dtype
    if isinstance(x_or_dtype, str):
        key = x_or_dtype.lower()
        if key in _ALIASES:
            return _ALIASES[key]
        if key in FORMATS:
            return FORMATS[key]
        raise ValueError(
            f"format: unknown name {x_or_dtype!r}; valid: {sorted(FORMATS) + sorted(_ALIASES)}")
    dtype = getattr(x_or_dtype, "dtype", x_or_dtype)
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"format: {x_or_dtype!r} is not an array, dtype or format name") from err
    for fmt in FORMATS.values():
        if dtype == fmt.np_dtype:
            return fmt
    raise TypeError(
        f"dtype: {dtype} is not a supported floating-point format; supported: {sorted(FORMATS)}")


class Fields(NamedTuple):
    """Decomposed fields. ``exponent`` is unbiased: ``e_biased - bias`` for normals and the
    top-exponent patterns (inf/NaN), ``emin = 1 - bias`` for zeros and subnormals; ``mantissa`` is
    the raw stored fraction (no implicit bit); ``kind`` is a :class:`Kind` code (int8)."""

    sign: Int[Array, "..."]
    exponent: Int[Array, "..."]
    mantissa: Int[Array, "..."]
    kind: Int[Array, "..."]


class RoundedMantissa(NamedTuple):
    """Result of :func:`round_mantissa`: ``|x| ~= 2**exponent * (1 + code / 2**bits)``."""

    exponent: Int[Array, "..."]
    code: Int[Array, "..."]


def to_bits(x: ArrayLike) -> Int[Array, "..."]:
    """Bit pattern of ``x`` as an unsigned integer array of the same width."""
    x = jnp.asarray(x)
    fmt = format_of(x.dtype)
    return jax.lax.bitcast_convert_type(x, fmt.uint_dtype)


def from_bits(bits: ArrayLike, fmt: FloatFormat | str) -> Array:
    """Floating-point array of format ``fmt`` whose bit patterns are ``bits``."""
    fmt = format_of(fmt)
    bits = jnp.asarray(bits)
    if not jnp.issubdtype(bits.dtype, jnp.integer):
        raise TypeError(f"bits: expected an integer array, got {bits.dtype}")
    return jax.lax.bitcast_convert_type(bits.astype(fmt.uint_dtype), fmt.dtype)


def decompose_bits(bits: ArrayLike, fmt: FloatFormat | str) -> Fields:
    """Fields of the bit patterns ``bits`` interpreted in format ``fmt``."""
    fmt = format_of(fmt)
    b = jnp.asarray(bits).astype(jnp.uint32)
    pb, eb = fmt.mantissa_bits, fmt.exponent_bits
    mantissa = (b & ((1 << pb) - 1)).astype(jnp.int32)
    biased = ((b >> pb) & ((1 << eb) - 1)).astype(jnp.int32)
    sign = ((b >> (pb + eb)) & 1).astype(jnp.int32)
    top = (1 << eb) - 1
    if fmt.nan_style == "fn":
        is_nan = (biased == top) & (mantissa == (1 << pb) - 1)
        is_inf = jnp.zeros_like(is_nan)
    else:
        is_nan = (biased == top) & (mantissa != 0)
        is_inf = (biased == top) & (mantissa == 0)
    kind = jnp.where(
        biased == 0,
        jnp.where(mantissa == 0, Kind.ZERO, Kind.SUBNORMAL),
        jnp.where(is_nan, Kind.NAN, jnp.where(is_inf, Kind.INF, Kind.NORMAL)),
    ).astype(jnp.int8)
    exponent = jnp.where(biased == 0, fmt.emin, biased - fmt.bias).astype(jnp.int32)
    return Fields(sign, exponent, mantissa, kind)


def decompose(x: ArrayLike) -> Fields:
    """Decompose a floating-point array (BF16, FP16, FP32, FP8 E4M3/E5M2) into :class:`Fields`."""
    x = jnp.asarray(x)
    return decompose_bits(to_bits(x), format_of(x.dtype))


def classify(x: ArrayLike) -> Int[Array, "..."]:
    """The :class:`Kind` code (int8) of every element of ``x``."""
    return decompose(x).kind


def compose(fields: Fields, fmt: FloatFormat | str) -> Array:
    """Inverse of :func:`decompose`: bit-exact for every pattern, NaN payloads included.

    The biased exponent is 0 for ``Kind.ZERO``/``Kind.SUBNORMAL`` and ``exponent + bias``
    otherwise; fields are masked to their widths (out-of-range values are the caller's error).
    """
    fmt = format_of(fmt)
    pb, eb = fmt.mantissa_bits, fmt.exponent_bits
    sign, exponent, mantissa, kind = (jnp.asarray(f) for f in fields)
    kind = kind.astype(jnp.int32)
    biased = jnp.where((kind == Kind.ZERO) | (kind == Kind.SUBNORMAL), 0,
                       exponent.astype(jnp.int32) + fmt.bias)
    bits = ((sign.astype(jnp.uint32) & 1) << (pb + eb)) \
        | ((biased.astype(jnp.uint32) & ((1 << eb) - 1)) << pb) \
        | (mantissa.astype(jnp.uint32) & ((1 << pb) - 1))
    return from_bits(bits.astype(fmt.uint_dtype), fmt)


def round_mantissa(x: ArrayLike, bits: int, mode: str = "rne") -> RoundedMantissa:
    """Round the significand of ``x`` to ``bits`` fraction bits, with carry into the exponent.

    For a finite non-zero ``x`` with ``|x| = 2^e (1 + f)``, ``0 <= f < 1`` (subnormals are first
    normalised, so the result describes the *value*), returns ``(e', j)`` with
    ``|x| ~= 2^{e'} (1 + j / 2^bits)`` and ``0 <= j < 2^bits``:

    * ``mode="rne"``: round half to even (default, the VLP unit's input rounding);
    * ``mode="trunc"``: truncate toward zero;
    * ``mode="half_away"``: round half away from zero.

    When rounding carries out of the fraction (``j == 2^bits``), ``e' = e + 1`` and ``j = 0``.
    Zeros, infinities and NaNs give ``(0, 0)``; use :func:`classify` to tell them apart.
    """
    x = jnp.asarray(x)
    fmt = format_of(x.dtype)
    if not isinstance(bits, (int, np.integer)) or not 0 <= bits <= fmt.mantissa_bits:
        raise ValueError(
            f"bits: must be an integer in [0, {fmt.mantissa_bits}] for {fmt.name}, got {bits!r}")
    if mode not in ROUNDING_MODES:
        raise ValueError(f"mode: must be one of {ROUNDING_MODES}, got {mode!r}")
    pb = fmt.mantissa_bits
    f = decompose(x)
    # Normalise subnormals: m = 2^p + rest with p the position of the leading one.
    lead = 31 - jax.lax.clz(jnp.maximum(f.mantissa, 1))
    sub = f.kind == Kind.SUBNORMAL
    frac = jnp.where(sub, (f.mantissa - (1 << lead)) << (pb - lead), f.mantissa)
    exponent = jnp.where(sub, f.exponent - (pb - lead), f.exponent)
    shift = pb - bits
    if shift == 0:
        code = frac
    else:
        code = frac >> shift
        rem = frac & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if mode == "rne":
            up = (rem > half) | ((rem == half) & ((code & 1) == 1))
        elif mode == "half_away":
            up = rem >= half
        else:
            up = jnp.zeros_like(rem, dtype=bool)
        code = code + up.astype(jnp.int32)
    carry = code >> bits  # 1 exactly when rounding overflowed the fraction
    exponent = exponent + carry
    code = code & ((1 << bits) - 1)
    finite_nonzero = (f.kind == Kind.NORMAL) | sub
    return RoundedMantissa(
        jnp.where(finite_nonzero, exponent, 0).astype(jnp.int32),
        jnp.where(finite_nonzero, code, 0).astype(jnp.int32),
    )


def convert(x: ArrayLike, fmt: FloatFormat | str) -> Array:
    """Convert to ``fmt`` with round-to-nearest-even (XLA convert; NaN stays NaN; values beyond
    the range become inf, or NaN for the "fn" E4M3 format which has no inf, as in ml_dtypes)."""
    fmt = format_of(fmt)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got {x.dtype}")
    return x.astype(fmt.dtype)


def to_numpy(x: ArrayLike) -> np.ndarray:
    """Exact copy of a JAX array as a NumPy array of the matching ml_dtypes/NumPy dtype."""
    x = jnp.asarray(x)
    fmt = format_of(x.dtype)
    return np.asarray(jax.device_get(to_bits(x))).view(fmt.np_dtype)


def from_numpy(x: np.ndarray) -> Array:
    """Exact (bit-preserving) JAX copy of a NumPy array with an ml_dtypes/NumPy float dtype."""
    x = np.asarray(x)
    fmt = format_of(x.dtype)
    bits = x.view(np.dtype(fmt.uint_dtype))
    return from_bits(jnp.asarray(bits), fmt)


def round_float64(x: ArrayLike, fmt: FloatFormat | str) -> np.ndarray:
    """Round float64 values *once* (round to nearest, ties to even) into ``fmt``.

    Used for table entries ``bf16_rne(f(v))`` computed in float64.  ``ml_dtypes`` converts
    float64 to bfloat16 through float32, which double-rounds (e.g. ``1 + 2^-8 + 2^-30`` becomes
    1.0 instead of ``1 + 2^-7``), so the rounding is done here on float64 directly: scale by the
    target quantum (exact), ``rint`` (ties to even), scale back (exact).  Results beyond the
    largest finite value become inf (NaN for the "fn" E4M3 format, which has no inf, as in
    ml_dtypes); subnormal results follow the target's gradual underflow.  Returns an ml_dtypes
    (or NumPy) array of ``fmt``.
    """
    fmt = format_of(fmt)
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    a = np.where(finite, np.abs(x), 0.0)
    _, exp2 = np.frexp(a)  # a = m * 2^exp2, m in [0.5, 1)
    quantum_exp = np.maximum(exp2 - 1, fmt.emin) - fmt.mantissa_bits
    rounded = np.ldexp(np.rint(np.ldexp(a, -quantum_exp)), quantum_exp)
    overflow_value = np.nan if fmt.nan_style == "fn" else np.inf
    rounded = np.where(rounded > fmt.max_finite, overflow_value, rounded)
    out = np.where(finite, np.copysign(rounded, x), x)
    with np.errstate(invalid="ignore", over="ignore"):
        return out.astype(fmt.np_dtype)  # exact: every value is representable (or inf/NaN)


def flush_subnormals(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Replace subnormal values by zero of the same sign (the datapaths' FTZ rule).

    Works on the bit pattern (exponent field 0 -> keep only the sign bit): an integer select,
    device-independent, and much faster under XLA:CPU than a float compare-and-select.
    """
    x = jnp.asarray(x)
    fmt = format_of(x.dtype)
    bits = to_bits(x)
    exp_mask = fmt.uint_dtype(((1 << fmt.exponent_bits) - 1) << fmt.mantissa_bits)
    sign_mask = fmt.uint_dtype(1 << (fmt.total_bits - 1))
    return from_bits(jnp.where((bits & exp_mask) == 0, bits & sign_mask, bits), fmt)


def flush_subnormals_numpy(x: ArrayLike) -> np.ndarray:
    """NumPy twin of :func:`flush_subnormals` for the reference simulators (which must not run
    JAX): values below the smallest normal of FP32 (of FP64 for float64 input; BF16 shares
    FP32's range) become zero of the same sign; the dtype is kept."""
    x = np.asarray(x)
    tiny = np.finfo(np.float64).tiny if x.dtype == np.float64 else 2.0 ** -126
    with np.errstate(invalid="ignore"):
        small = np.abs(x.astype(np.float64)) < tiny
    return np.where(small, np.copysign(np.zeros((), x.dtype), x), x).astype(x.dtype)


def round_to_bf16(v: Float[Array, "..."], *, keep_float32: bool = False) -> Array:
    """Round a float16/float32/float64 array to BF16 once (nearest, ties to even); with
    ``keep_float32`` the rounded values are returned as FP32 (the datapaths' form: a BF16
    product or sum held in an FP32 register).

    FP32 (and exactly widened FP16) values are rounded with integer operations on their bit
    patterns - ``(b + 0x7FFF + ((b >> 16) & 1)) >> 16``, NaN -> ``sign | 0x7FC0`` as in XLA and
    ml_dtypes - which XLA:CPU runs faster than its convert and which no compiler pass can elide.
    FP64 uses ``lax.reduce_precision`` and an exact convert.  A bare ``astype(bfloat16)`` is
    not enough inside ``jit``: with XLA's default ``xla_allow_excess_precision`` a later
    ``astype(float32)`` may cancel the round trip, silently keeping FP32 precision.
    """
    v = jnp.asarray(v)
    if v.dtype == jnp.bfloat16 or v.dtype == jnp.float64:
        out = v if v.dtype == jnp.bfloat16 else jax.lax.reduce_precision(
            v, exponent_bits=8, mantissa_bits=7).astype(jnp.bfloat16)
        return out.astype(jnp.float32) if keep_float32 else out
    u32 = jnp.uint32
    b = jax.lax.bitcast_convert_type(v.astype(jnp.float32), u32)  # float16 -> float32 is exact
    rounded = (b + u32(0x7FFF) + ((b >> 16) & u32(1))) >> 16
    is_nan = (b & u32(0x7FFFFFFF)) > u32(0x7F800000)
    bits = jnp.where(is_nan, ((b >> 16) & u32(0x8000)) | u32(0x7FC0), rounded)
    if keep_float32:
        return jax.lax.bitcast_convert_type(bits << 16, jnp.float32)
    return jax.lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)


# ml_dtypes is imported for its dtype registrations (bfloat16, float8_*) used by np.dtype above.
_ = ml_dtypes.bfloat16
