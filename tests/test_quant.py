"""Quantization: round trips, error bounds, packing, pytree behaviour, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mugi_jax import quant

SCHEMES = [
    quant.SignMagnitudeInt4(group_size=32),
    quant.Int4(group_size=32),
    quant.Int4(group_size=32, calibration="minmax"),
    quant.AsymUInt4(group_size=32),
    quant.AsymUInt4(group_size=32, zero_point="int"),
]


def weights(shape=(128, 48), seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32) * 0.05


@pytest.mark.parametrize("scheme", SCHEMES, ids=repr)
def test_codes_in_range_and_error_bound(scheme):
    w = weights()
    q = quant.quantize(w, scheme)
    assert q.codes.dtype == jnp.int8 and q.shape == w.shape
    assert int(q.codes.min()) >= scheme.qmin and int(q.codes.max()) <= scheme.qmax
    assert q.scales.shape == (128 // 32, 48)
    err = jnp.abs(quant.dequantize(q) - w)
    step = jnp.repeat(q.scales.astype(jnp.float32), 32, axis=0)
    assert bool(jnp.all(err <= step / 2 * (1 + 1e-5) + 1e-9))
    # Symmetric schemes hit their extreme level in every group (absmax calibration).
    if scheme.symmetric and scheme.calibration == "absmax":
        g = jnp.abs(q.codes).reshape(4, 32, 48).max(axis=1)
        assert bool(jnp.all(g == 7))


def test_sign_magnitude_levels_and_scale():
    w = jnp.array([[0.7], [-0.35], [0.1], [0.0]], jnp.float32)
    q = quant.quantize(w, quant.SignMagnitudeInt4(group_size=None))
    assert float(q.scales[0, 0]) == pytest.approx(0.1)
    assert q.codes[:, 0].tolist() == [7, -4, 1, 0]  # -3.5 rounds half to even -> -4
    assert q.zeros is None


def test_int4_minmax_uses_minus_eight():
    w = jnp.array([[-0.8], [0.7], [0.1], [0.0]], jnp.float32)
    q = quant.quantize(w, quant.Int4(group_size=None, calibration="minmax"))
    assert q.codes[:, 0].tolist() == [-8, 7, 1, 0]


def test_asym_min_style_matches_q4_1_formula():
    w = jnp.linspace(-1.0, 2.0, 32, dtype=jnp.float32)[:, None]
    q = quant.quantize(w, quant.AsymUInt4(group_size=32))
    d, m = float(q.scales[0, 0]), float(q.zeros[0, 0])
    assert d == pytest.approx(3.0 / 15) and m == -1.0
    expected = np.clip(np.round((np.asarray(w[:, 0]) - m) / np.float32(d)), 0, 15)
    assert np.array_equal(np.asarray(q.codes[:, 0]), expected)
    assert int(q.codes.min()) == 0 and int(q.codes.max()) == 15


def test_asym_int_zero_point_represents_zero_exactly():
    w = jnp.concatenate([jnp.zeros((4, 3)), weights((28, 3), 1) + 0.02])
    q = quant.quantize(w, quant.AsymUInt4(group_size=32, zero_point="int"))
    assert q.zeros.dtype == jnp.int8
    assert bool(jnp.all(quant.dequantize(q)[:4] == 0))


def test_all_zero_group_and_axis_choice():
    w = jnp.zeros((64, 5)).at[:, 1].set(1.0)
    for scheme in SCHEMES:
        s = dataclasses.replace(scheme, axis=1, group_size=None)
        q = quant.quantize(w, s)
        assert q.scales.shape == (64, 1)
        assert bool(jnp.all(quant.dequantize(q) == w))


def test_per_channel_and_negative_axis():
    w = weights((64, 96))
    q = quant.quantize(w, quant.SignMagnitudeInt4(group_size=32, axis=-1))
    assert q.scales.shape == (64, 3) and q.axis == 1 and q.group_size == 32
    qc = quant.quantize(w, quant.SignMagnitudeInt4(group_size=None, axis=0))
    assert qc.scales.shape == (1, 96) and qc.group_size == 64


def test_scale_dtype_and_storage_bytes():
    w = weights((128, 64))
    q = quant.quantize(w, quant.SignMagnitudeInt4(group_size=128, scale_dtype="bfloat16"))
    assert q.scales.dtype == jnp.bfloat16
    assert q.storage_bytes == 128 * 64 // 2 + 64 * 2
    qa = quant.quantize(w, quant.AsymUInt4(group_size=32, scale_dtype="float16"))
    assert qa.storage_bytes == 128 * 64 // 2 + 4 * 64 * 2 * 2  # fp16 scale + fp16 min (Q4_1)
    qz = quant.quantize(w, quant.AsymUInt4(group_size=32, zero_point="int"))
    assert qz.storage_bytes == 128 * 64 // 2 + 4 * 64 * 4 + 4 * 64 // 2
    # bf16 scales still bound the error by half a (stored) step
    err = jnp.abs(quant.dequantize(q) - w)
    assert bool(jnp.all(err <= q.scales.astype(jnp.float32) / 2 * (1 + 1e-5) + 1e-9))


def test_stochastic_rounding_is_unbiased_and_deterministic():
    w = jnp.full((32, 2000), 0.31, jnp.float32).at[0].set(0.7)
    s = quant.SignMagnitudeInt4(group_size=32, rounding="stochastic")
    key = jax.random.PRNGKey(3)
    q1, q2 = quant.quantize(w, s, key), quant.quantize(w, s, key)
    assert bool(jnp.all(q1.codes == q2.codes))
    mean = float(quant.dequantize(q1)[1:].mean())
    assert mean == pytest.approx(0.31, abs=2e-3)
    assert set(np.unique(np.asarray(q1.codes[1:])).tolist()) == {3}.union({4}) - set()
    with pytest.raises(ValueError, match="key"):
        quant.quantize(w, s)


def test_kv_cache_granularities():
    cache = weights((2, 3, 64, 16))  # (batch, kv_heads, tokens, head_dim)
    qt = quant.quantize_kv(cache, quant.AsymUInt4(group_size=None), "per_token")
    assert qt.scales.shape == (2, 3, 64, 1)
    qc = quant.quantize_kv(cache, quant.Int4(group_size=32), "per_channel")
    assert qc.scales.shape == (2, 3, 2, 16)
    for q in (qt, qc):
        assert float(jnp.max(jnp.abs(quant.dequantize(q) - cache))) < 0.05
    with pytest.raises(ValueError, match="granularity"):
        quant.quantize_kv(cache, granularity="per_head")


def test_pytree_jit_vmap():
    w = weights((4, 64, 8))
    s = quant.SignMagnitudeInt4(group_size=32, axis=0)
    qs = jax.vmap(lambda x: quant.quantize(x, s))(w)
    assert qs.codes.shape == (4, 64, 8) and qs.scales.shape == (4, 2, 8)
    deq = jax.jit(jax.vmap(quant.dequantize))(qs)
    ref = jnp.stack([quant.dequantize(quant.quantize(w[i], s)) for i in range(4)])
    assert bool(jnp.all(deq == ref))
    jq = jax.jit(lambda x: quant.quantize(x, s))(w[0])
    assert bool(jnp.all(jq.codes == qs.codes[0]))
    leaves = jax.tree_util.tree_leaves(jq)
    assert len(leaves) == 2  # codes, scales (scheme is static, zeros None)


@given(
    hnp.arrays(np.float32, st.tuples(st.sampled_from([16, 64]), st.sampled_from([1, 5])),
               elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True)),
    st.sampled_from(SCHEMES),
    st.sampled_from([None, 8]),
)
@settings(max_examples=40, deadline=None)
def test_property_round_trip_bound(w, scheme, group):
    scheme = dataclasses.replace(scheme, group_size=group)
    q = quant.quantize(jnp.asarray(w), scheme)
    codes = np.asarray(q.codes)
    assert codes.min() >= scheme.qmin and codes.max() <= scheme.qmax
    gs = w.shape[0] if group is None else group
    step = np.repeat(np.asarray(q.scales, np.float64), gs, axis=0)
    err = np.abs(np.asarray(quant.dequantize(q), np.float64) - w.astype(np.float64))
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-30 + np.abs(w) * 1e-6)
    # Re-quantizing the dequantized tensor is a fixed point for symmetric absmax schemes.
    if scheme.symmetric and scheme.calibration == "absmax":
        q2 = quant.quantize(quant.dequantize(q), scheme)
        assert np.array_equal(np.asarray(q2.codes), codes)


@given(hnp.arrays(np.int8, st.tuples(st.sampled_from([2, 3]), st.sampled_from([2, 8])),
                  elements=st.integers(-8, 7)),
       st.booleans())
@settings(max_examples=30, deadline=None)
def test_property_pack_unpack(codes, unsigned):
    c = codes.astype(np.int16) + 8 if unsigned else codes
    packed = quant.pack_int4(jnp.asarray(c), axis=-1)
    assert packed.dtype == jnp.uint8 and packed.shape == (c.shape[0], c.shape[1] // 2)
    back = quant.unpack_int4(packed, signed=not unsigned, axis=-1)
    assert np.array_equal(np.asarray(back), c)
    # along axis 0 too
    if c.shape[0] % 2 == 0:
        assert np.array_equal(np.asarray(quant.unpack_int4(quant.pack_int4(c, 0), not unsigned, 0)), c)


def test_pack_layout():
    packed = quant.pack_int4(jnp.array([1, 2, -1, 7], jnp.int8))
    assert packed.tolist() == [0x21, 0x7F]


def test_bad_input():
    w = weights((100, 4))
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(w, quant.SignMagnitudeInt4(group_size=32))
    with pytest.raises(ValueError, match="group_size"):
        quant.SignMagnitudeInt4(group_size=0)
    with pytest.raises(ValueError, match="calibration"):
        quant.SignMagnitudeInt4(calibration="minmax")
    with pytest.raises(ValueError, match="rounding"):
        quant.Int4(rounding="up")
    with pytest.raises(ValueError, match="scale_dtype"):
        quant.Int4(scale_dtype="float64")
    with pytest.raises(ValueError, match="zero_point"):
        quant.AsymUInt4(zero_point="x")
    with pytest.raises(TypeError, match="w"):
        quant.quantize(jnp.ones((4, 4), jnp.int32), quant.Int4(group_size=None))
    with pytest.raises(ValueError, match="non-finite"):
        quant.quantize(w.at[3, 1].set(jnp.nan), quant.Int4(group_size=None))
    with pytest.raises(ValueError, match="axis"):
        quant.quantize(w, quant.Int4(group_size=None, axis=2))
    with pytest.raises(TypeError, match="scheme"):
        quant.quantize(w, "int4")
    with pytest.raises(ValueError, match="odd"):
        quant.pack_int4(jnp.ones(3, jnp.int8))
    with pytest.raises(ValueError, match="codes"):
        quant.pack_int4(jnp.array([16, 0], jnp.int16))
    with pytest.raises(TypeError, match="uint8"):
        quant.unpack_int4(jnp.ones(2, jnp.int8), signed=True)


def test_magnitude_bits():
    assert quant.SignMagnitudeInt4().magnitude_bits == 3
    assert quant.Int4().magnitude_bits == 4
    assert quant.AsymUInt4().magnitude_bits == 4


def test_dequantize_is_two_roundings_under_jit():
    """``s q + m`` is computed as f32(f32(s q) + m), never as one fused multiply-add."""
    w = weights((256, 64), 7) + 0.013
    q = quant.quantize(w, quant.AsymUInt4(group_size=32))
    got = np.asarray(jax.jit(quant.dequantize)(q))
    codes = np.asarray(q.codes, np.float32)
    s = np.repeat(np.asarray(q.scales, np.float32), 32, axis=0)
    m = np.repeat(np.asarray(q.zeros, np.float32), 32, axis=0)
    ref = (codes * s).astype(np.float32) + m
    assert np.array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))
