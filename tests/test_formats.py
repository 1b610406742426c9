"""Formats: exhaustive checks against ml_dtypes / float64 for every small format."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mugi_jax import formats as fm

SMALL = [fm.BF16, fm.FP16, fm.FP8_E4M3, fm.FP8_E5M2]
ALL = SMALL + [fm.FP32]


def all_patterns(fmt: fm.FloatFormat) -> np.ndarray:
    """Every bit pattern of a <=16-bit format as an ml_dtypes array."""
    n = 1 << fmt.total_bits
    return np.arange(n, dtype=np.uint32).astype(np.dtype(fmt.uint_dtype)).view(fmt.np_dtype)


def fp32_sample(n: int = 200_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000,
                        0xFF800000, 0x7FC00000, 0x7F800001, 0x3F800000], dtype=np.uint32)
    return np.concatenate([special, bits]).view(np.float32)


def patterns(fmt: fm.FloatFormat) -> np.ndarray:
    return fp32_sample() if fmt is fm.FP32 else all_patterns(fmt)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_decompose_matches_float64_value(fmt):
    x = patterns(fmt)
    f = jax.jit(fm.decompose)(fm.from_numpy(x))
    sign, e, m, kind = (np.asarray(a) for a in f)
    x64 = x.astype(np.float64)
    # Classification agrees with NumPy's view of the value.
    assert np.array_equal(kind == fm.Kind.NAN, np.isnan(x64))
    assert np.array_equal(kind == fm.Kind.INF, np.isinf(x64))
    assert np.array_equal(kind == fm.Kind.ZERO, x64 == 0)
    sub = np.abs(x64) < fmt.min_normal
    assert np.array_equal(kind == fm.Kind.SUBNORMAL, sub & (x64 != 0))
    assert np.array_equal(sign == 1, np.signbit(x64))
    # The fields reproduce the value exactly.
    finite = np.isfinite(x64)
    scale = 2.0 ** (e[finite].astype(np.float64) - fmt.mantissa_bits)
    implicit = np.where(kind[finite] == fm.Kind.NORMAL, 1 << fmt.mantissa_bits, 0)
    value = np.where(sign[finite] == 1, -1.0, 1.0) * (implicit + m[finite]) * scale
    assert np.array_equal(value, x64[finite])


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_compose_inverts_decompose_bit_exactly(fmt):
    x = patterns(fmt)
    xj = fm.from_numpy(x)
    back = jax.jit(lambda v: fm.compose(fm.decompose(v), fmt))(xj)
    assert same_bits(fm.to_numpy(back), x)  # NaN payloads included


@pytest.mark.parametrize("src", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("dst", ALL, ids=lambda f: f.name)
def test_convert_matches_ml_dtypes(src, dst):
    x = patterns(src)
    with np.errstate(all="ignore"):
        ref = x.astype(dst.np_dtype)
    got = fm.to_numpy(jax.jit(lambda v: fm.convert(v, dst))(fm.from_numpy(x)))
    nan = np.isnan(ref.astype(np.float64))
    assert np.array_equal(np.isnan(got.astype(np.float64)), nan)
    assert same_bits(got[~nan], ref[~nan])


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_numpy_round_trip_is_exact(fmt):
    x = patterns(fmt)
    assert same_bits(fm.to_numpy(fm.from_numpy(x)), x)


def reference_round(x64: np.ndarray, bits: int, mode: str):
    """Float64 reference: |x| = 2^e (1 + f); round f * 2^bits; carry into e."""
    a = np.abs(x64)
    e = np.floor(np.log2(a)).astype(np.int64)
    frac = a / np.exp2(e.astype(np.float64)) - 1.0  # exact: a is a short binary fraction
    scaled = frac * 2.0**bits
    if mode == "rne":
        j = np.rint(scaled)
    elif mode == "trunc":
        j = np.floor(scaled)
    else:
        j = np.floor(scaled + 0.5)
    j = j.astype(np.int64)
    carry = j == (1 << bits)
    return e + carry, np.where(carry, 0, j)


@pytest.mark.parametrize("fmt", SMALL, ids=lambda f: f.name)
@pytest.mark.parametrize("mode", fm.ROUNDING_MODES)
def test_round_mantissa_exhaustive(fmt, mode):
    x = patterns(fmt)
    x64 = x.astype(np.float64)
    ok = np.isfinite(x64) & (x64 != 0)
    for bits in range(fmt.mantissa_bits + 1):
        e, j = jax.jit(fm.round_mantissa, static_argnums=(1, 2))(fm.from_numpy(x), bits, mode)
        e, j = np.asarray(e), np.asarray(j)
        re, rj = reference_round(x64[ok], bits, mode)
        assert np.array_equal(e[ok], re), (bits, mode)
        assert np.array_equal(j[ok], rj), (bits, mode)
        assert np.all(e[~ok] == 0) and np.all(j[~ok] == 0)
        assert j.min() >= 0 and j.max() < (1 << bits) if bits else j.max() == 0


def test_round_mantissa_examples():
    x = jnp.array([1.0625, 1.1875, 1.9375, -1.5, 3.0], jnp.bfloat16)
    # 1.0625 = 1 + 1/16: tie at 3 bits -> even code 0; 1.1875 = 1 + 3/16 -> tie -> code 2;
    # 1.9375 rounds up and carries into the exponent.
    e, j = fm.round_mantissa(x, 3)
    assert e.tolist() == [0, 0, 1, 0, 1]
    assert j.tolist() == [0, 2, 0, 4, 4]
    e, j = fm.round_mantissa(x, 3, "trunc")
    assert j.tolist() == [0, 1, 7, 4, 4]
    e, j = fm.round_mantissa(x, 3, "half_away")
    assert j.tolist() == [1, 2, 0, 4, 4]


@given(st.integers(0, 2**16 - 1), st.integers(0, 7), st.sampled_from(fm.ROUNDING_MODES))
@settings(max_examples=200, deadline=None)
def test_round_mantissa_bounds_value(bits_pattern, bits, mode):
    x = np.array([bits_pattern], np.uint16).view(ml_dtypes.bfloat16)
    x64 = float(x.astype(np.float64)[0])
    if not np.isfinite(x64) or x64 == 0:
        return
    e, j = fm.round_mantissa(fm.from_numpy(x), bits, mode)
    approx = 2.0 ** int(e[0]) * (1 + int(j[0]) / 2**bits)
    # Rounding to `bits` fraction bits moves the value by at most one step (half for nearest).
    step = 2.0 ** (np.floor(np.log2(abs(x64))) - bits)
    limit = step if mode == "trunc" else step / 2
    assert abs(approx - abs(x64)) <= limit


def test_round_float64_rounds_once():
    # 1 + 2^-8 + 2^-30: float32 would round to 1 + 2^-8 (a tie in bf16 -> 1.0); the true value
    # is just above the tie, so a single rounding gives 1 + 2^-7.
    v = np.array([1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30)])
    got = fm.round_float64(v, fm.BF16).astype(np.float64)
    assert got.tolist() == [1 + 2.0**-7, -(1 + 2.0**-7)]


def test_flush_subnormals():
    x = fm.from_numpy(np.array([1e-39, -1e-39, 1.0, 0.0, -0.0, np.inf, np.nan], ml_dtypes.bfloat16))
    y = fm.to_numpy(jax.jit(fm.flush_subnormals)(x)).astype(np.float64)
    assert y[0] == 0 and not np.signbit(y[0])
    assert y[1] == 0 and np.signbit(y[1])
    assert y[2] == 1.0 and y[3] == 0 and np.signbit(y[4]) and np.isinf(y[5]) and np.isnan(y[6])


def test_format_properties():
    assert (fm.BF16.bias, fm.BF16.emin, fm.BF16.emax) == (127, -126, 127)
    assert fm.FP8_E4M3.max_finite == 448.0
    assert fm.FP8_E5M2.max_finite == 57344.0
    assert fm.FP16.max_finite == 65504.0
    assert fm.BF16.max_finite == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert fm.format_of("bf16") is fm.BF16
    assert fm.format_of(jnp.zeros(2, jnp.float8_e5m2)) is fm.FP8_E5M2


def test_vmap_and_leading_shapes():
    x = jnp.linspace(-3, 3, 24, dtype=jnp.float32).astype(jnp.bfloat16).reshape(2, 3, 4)
    e1, j1 = fm.round_mantissa(x, 3)
    e2, j2 = jax.vmap(lambda v: fm.round_mantissa(v, 3))(x)
    assert e1.shape == (2, 3, 4)
    assert np.array_equal(e1, e2) and np.array_equal(j1, j2)


def test_bad_input_errors():
    x = jnp.ones(3, jnp.bfloat16)
    with pytest.raises(ValueError, match="bits"):
        fm.round_mantissa(x, 8)
    with pytest.raises(ValueError, match="bits"):
        fm.round_mantissa(x, -1)
    with pytest.raises(ValueError, match="mode"):
        fm.round_mantissa(x, 3, "up")
    with pytest.raises(TypeError, match="dtype"):
        fm.decompose(jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="format"):
        fm.format_of("fp7")
    with pytest.raises(TypeError, match="bits"):
        fm.from_bits(jnp.ones(2, jnp.float32), fm.BF16)
    with pytest.raises(TypeError, match="floating"):
        fm.convert(jnp.ones(2, jnp.int32), fm.BF16)


@pytest.mark.parametrize("fmt", SMALL, ids=lambda f: f.name)
def test_round_float64_matches_exact_nearest(fmt):
    """Against brute force: the nearest representable value (ties to even code) of random
    float64 values, including midpoints, values near overflow and in the subnormal range."""
    grid = all_patterns(fmt)
    g64 = grid.astype(np.float64)
    keep = np.isfinite(g64) & ~((g64 == 0) & np.signbit(g64))
    values, codes = g64[keep], grid.view(np.dtype(fmt.uint_dtype))[keep]
    order = np.argsort(values)
    values, codes = values[order], codes[order]
    rng = np.random.default_rng(1)
    mids = (values[1:] + values[:-1]) / 2
    x = np.concatenate([mids, mids * (1 + 1e-12), rng.uniform(-1, 1, 5000) * fmt.max_finite,
                        rng.standard_normal(5000) * fmt.min_normal])
    got = fm.round_float64(x, fmt).astype(np.float64)
    # Brute force on the non-negative half: distance to neighbours, tie -> even bit pattern.
    ax = np.abs(x)
    pos = values[values >= 0]
    pos_codes = codes[values >= 0]
    hi = np.clip(np.searchsorted(pos, ax), 1, len(pos) - 1)
    lo = hi - 1
    d_lo, d_hi = ax - pos[lo], pos[hi] - ax
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (pos_codes[hi] % 2 == 0))
    ref = np.where(pick_hi, pos[hi], pos[lo])
    inrange = ax <= fmt.max_finite
    assert np.array_equal(got[inrange], np.copysign(ref, x)[inrange])


@pytest.mark.parametrize("src", [fm.FP32, fm.FP16], ids=lambda f: f.name)
def test_round_to_bf16_matches_ml_dtypes_and_survives_jit_round_trip(src):
    x = patterns(src)
    ref = x.astype(ml_dtypes.bfloat16)
    got = fm.to_numpy(jax.jit(fm.round_to_bf16)(fm.from_numpy(x)))
    nan = np.isnan(x.astype(np.float64))
    assert np.all(np.isnan(got[nan].astype(np.float32)))
    assert same_bits(got[~nan], ref[~nan])
    # The rounding is not elided when the result is widened again inside the same jit.
    v = jnp.asarray([1 + 2.0**-9], jnp.float32)
    back = jax.jit(lambda a: fm.round_to_bf16(a).astype(jnp.float32))(v)
    assert float(back[0]) == 1.0


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_flush_subnormals_every_pattern(fmt):
    x = patterns(fmt)
    y = fm.to_numpy(jax.jit(fm.flush_subnormals)(fm.from_numpy(x)))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    sub = (np.abs(x64) < fmt.min_normal) & (x64 != 0)
    assert np.all(y64[sub] == 0) and np.array_equal(np.signbit(y64[sub]), np.signbit(x64[sub]))
    assert same_bits(y[~sub], x[~sub])
