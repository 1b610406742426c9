"""Property tests: the jitted VLP kernels equal the cycle-level simulator bit for bit, and
``subscription_cycles`` equals the simulator's per-tile cycle counts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugi_jax import formats
from mugi_jax import nonlinear as nl
from mugi_jax.sim import simulate_softmax, simulate_vlp

from .strategies import BF16, bf16_values, same_bits_nan_aware, vlp_configs

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPES = [(7,), (3, 5), (2, 3, 4), (1, 9)]
FNS = ["exp", "silu", "gelu", "gelu_tanh"]


@SETTINGS
@given(cfg=vlp_configs(), fn=st.sampled_from(FNS), shape=st.sampled_from(SHAPES),
       axis_pick=st.integers(0, 2), seed=st.integers(0, 2**31 - 1), early=st.booleans())
def test_vlp_kernel_equals_simulator(cfg, fn, shape, axis_pick, seed, early):
    axis = axis_pick % len(shape) - len(shape) * (axis_pick % 2)  # negative and positive axes
    x = bf16_values(np.random.default_rng(seed), shape, cfg)
    ref = simulate_vlp(x, fn, cfg, axis=axis, early_termination=early)
    got = formats.to_numpy(nl.vlp(formats.from_numpy(x), fn, cfg, axis=axis))
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.view(np.uint16), ref.outputs.view(np.uint16))
    cycles = np.asarray(nl.subscription_cycles(formats.from_numpy(x), fn, cfg, axis=axis,
                                               early_termination=early))
    np.testing.assert_array_equal(cycles, ref.cycles)
    mugi_l = formats.to_numpy(nl.vlp(formats.from_numpy(x), fn, nl.MugiL(cfg), axis=axis))
    np.testing.assert_array_equal(mugi_l.view(np.uint16), got.view(np.uint16))


SOFTMAX_SHAPES = [(5,), (3, 4), (2, 5, 3), (1, 2, 7, 6), (4, 1)]


@settings(SETTINGS, max_examples=20)
@given(cfg=vlp_configs(), shape=st.sampled_from(SOFTMAX_SHAPES), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([0.5, 3.0, 30.0]), p_special=st.sampled_from([0.0, 0.05, 0.3]),
       early=st.booleans(), last_axis=st.booleans())
def test_softmax_kernel_equals_simulator(cfg, shape, seed, scale, p_special, early, last_axis):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    kinds = rng.random(shape)
    specials = rng.choice(np.array([-np.inf, -np.inf, np.inf, np.nan, 0.0, 1e-39, -1e-39,
                                    3e38, -3e38], dtype=np.float32), shape)
    x = np.where(kinds < p_special, specials, x).astype(np.float32)
    if rng.random() < 0.3 and x.ndim >= 1:
        x[..., 0] = -np.inf  # a fully masked row / column somewhere
    axis = -1 if last_axis else 0
    ref = simulate_softmax(x, cfg, axis=axis, early_termination=early)
    got = formats.to_numpy(nl.softmax(jnp.asarray(x), axis=axis, approx=cfg))
    assert same_bits_nan_aware(got, ref.outputs)
    assert np.all(got.astype(np.float32)[x == -np.inf] == 0)
    cycles = np.asarray(nl.subscription_cycles(jnp.asarray(x), "softmax", cfg, axis=axis,
                                               early_termination=early))
    np.testing.assert_array_equal(cycles, ref.cycles)


@pytest.mark.parametrize("fn", ["exp", "silu", "gelu"])  # gelu_tanh: property test only
def test_every_bf16_value_default_config(fn):
    """All 65536 BF16 patterns, one per tile (window_group=1) and in tiles of 256."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(BF16)
    for group in (1, 256):
        cfg = nl.VLPConfig(window_group=group)
        ref = simulate_vlp(x, fn, cfg)
        got = formats.to_numpy(nl.vlp(formats.from_numpy(x), fn, cfg))
        np.testing.assert_array_equal(got.view(np.uint16), ref.outputs.view(np.uint16))
        np.testing.assert_array_equal(np.asarray(nl.subscription_cycles(formats.from_numpy(x), fn,
                                                                         cfg)), ref.cycles)


def test_simulator_events_are_consistent():
    cfg = nl.VLPConfig(window_group=4)
    x = np.array([-1.0, -0.3, 0.0, -2.5, -7.0, np.nan, -0.01, -np.inf], dtype=np.float32)
    r = simulate_vlp(x, "exp", cfg, early_termination=False)
    assert r.cycles.tolist() == [8, 8]  # one negative pass of 2^3 per tile
    assert r.events["counter_steps"] == 16
    assert r.events["comparisons"] == 8 * 8  # rows x cycles
    assert r.events["table_reads"] == 8 * 16  # W columns x cycles
    assert r.events["latches"] + r.events["bypasses"] == 8
    assert r.events["bypasses"] == 3  # zero, NaN, -inf
    silu = simulate_vlp(x, "silu", cfg, early_termination=False)
    assert silu.cycles.tolist() == [16, 16]  # two sign passes


@settings(SETTINGS, max_examples=15)
@given(cfg=vlp_configs(), fn=st.sampled_from(FNS), seed=st.integers(0, 2**31 - 1),
       p_inf=st.sampled_from([0.0, 0.1]))
def test_float32_inputs_round_once_then_match_simulator(cfg, fn, seed, p_inf):
    """FP32 inputs (including values that round up into the next binade, the fast window path's
    corner, and infinities, its fallback) give the simulator's result on the BF16-rounded input."""
    rng = np.random.default_rng(seed)
    e = rng.integers(cfg.e_bottom - 3, cfg.e_top + 3, (4, 9)).clip(-126, 127)
    frac = np.where(rng.random((4, 9)) < 0.3, 2.0 - 2.0**-9 * rng.random((4, 9)), 1 + rng.random((4, 9)))
    x = (np.where(rng.random((4, 9)) < 0.5, -1.0, 1.0) * frac * np.exp2(e)).astype(np.float32)
    x = np.where(rng.random((4, 9)) < p_inf, np.float32(np.inf), x).astype(np.float32)
    ref = simulate_vlp(x.astype(BF16), fn, cfg)
    got = formats.to_numpy(nl.vlp(jnp.asarray(x), fn, cfg))
    np.testing.assert_array_equal(got.view(np.uint16), ref.outputs.view(np.uint16))
    np.testing.assert_array_equal(np.asarray(nl.subscription_cycles(jnp.asarray(x), fn, cfg)),
                                  ref.cycles)


@pytest.mark.parametrize("fn", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("group,with_inf", [(64, False), (96, False), (64, True), (40, False)])
def test_float32_inputs_wide_groups(fn, group, with_inf):
    """Groups along the minor axis wide enough for the halving maxima of the fast window path
    (64, 96: halved to 16, 12; 40: halved to 20, 10), FP32 inputs that round up into the next
    binade, and a few infinities (the masked fallback)."""
    rng = np.random.default_rng(group + with_inf)
    cfg = nl.VLPConfig(window_group=group)
    shape = (6, 192)
    e = rng.integers(cfg.e_bottom - 3, cfg.e_top + 2, shape)
    frac = np.where(rng.random(shape) < 0.3, 2.0 - 2.0**-9 * rng.random(shape), 1 + rng.random(shape))
    x = (np.where(rng.random(shape) < 0.5, -1.0, 1.0) * frac * np.exp2(e)).astype(np.float32)
    if with_inf:
        x[2, 5] = np.inf
    ref = simulate_vlp(x.astype(BF16), fn, cfg)
    got = formats.to_numpy(nl.vlp(jnp.asarray(x), fn, cfg))
    np.testing.assert_array_equal(got.view(np.uint16), ref.outputs.view(np.uint16))


@pytest.mark.parametrize("fn", ["silu", "gelu", "gelu_tanh", "exp"])
@pytest.mark.parametrize("group,special", [(256, None), (64, None), (96, "nan"), (40, None),
                                           (128, "inf"), (256, "-nan"), (33, "subnormal"),
                                           (64, "zero")])
def test_bf16_inputs_wide_groups(fn, group, special):
    """BF16 inputs (the models' call: the policy rounds to BF16 before the unit) in groups along
    the minor axis wide enough for the halving maxima of the integer window reduction, without
    specials (the fast window path), with zeros or subnormals (still the fast path) and with one
    NaN or infinity (the masked fallback); rows of 384 = 1.5 groups of 256 (a short last group)."""
    rng = np.random.default_rng(group)
    cfg = nl.VLPConfig(window_group=group)
    x = bf16_values(rng, (5, 384), cfg, p_special=0.0)
    bits = x.view(np.uint16)
    if special is not None:
        value = {"nan": 0x7FC0, "-nan": 0xFFC1, "inf": 0x7F80, "subnormal": 0x8001,
                 "zero": 0x0000}[special]
        bits[3, 200] = value
        bits[1, ::7] = np.where(special in ("subnormal", "zero"), value, bits[1, ::7])
    bits[4] &= 0x7FFF  # a row without negative elements
    bits[2] |= 0x8000  # and one without positive ones
    ref = simulate_vlp(x, fn, cfg)
    got = formats.to_numpy(nl.vlp(formats.from_numpy(x), fn, cfg))
    np.testing.assert_array_equal(got.view(np.uint16), ref.outputs.view(np.uint16))


# FP32 patterns for the softmax's integer rounding at entry: NaNs whose low payload bits would
# carry into the exponent (0x7F800001 would round to +inf, 0xFF800001 to -inf - a mask -,
# 0xFFFFFFFF wraps to +0), a value that rounds to -inf in BF16 (a masked element), the largest
# finite BF16's neighbours, FP32 subnormals, and values halfway between two BF16 numbers (ties
# to even both ways).
_FP32_EDGES = np.array([0x7F800001, 0xFF800001, 0xFF807FFF, 0xFFFFFFFF, 0x7FC00000, 0xFF7FC000,
                        0xFF7F7FFF, 0x7F7F8000, 0x00000001, 0x80400000, 0xBF808000, 0xBF818000,
                        0xC0A08000, 0xFF800000, 0x7F800000], dtype=np.uint32).view(np.float32)


@settings(SETTINGS, max_examples=20)
@given(cfg=vlp_configs(), heads=st.sampled_from([1, 2, 3, 5]), tokens=st.sampled_from([1, 2, 5]),
       seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.5, 3.0, 30.0]),
       p_special=st.sampled_from([0.0, 0.05, 0.3]), masked=st.booleans())
def test_softmax_tokens_equals_simulator(cfg, heads, tokens, seed, scale, p_special, masked):
    """``softmax(x, tokens=T)`` on head-major ``(heads x T, keys)`` rows equals the simulator on
    the token-major view ``(T, heads, keys)`` (window groups = one token's heads), bit for bit,
    with FP32 edge patterns at entry and (optionally) a causal mask."""
    rng = np.random.default_rng(seed)
    keys = 6
    shape = (2, heads * tokens, keys)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    edges = rng.choice(_FP32_EDGES, shape)
    x = np.where(rng.random(shape) < p_special, edges, x).astype(np.float32)
    if masked:  # query token i sees keys 0 .. keys - tokens + i
        query = np.tile(np.arange(tokens), heads) + keys - tokens
        x = np.where(np.arange(keys)[None, :] <= query[:, None], x, -np.inf).astype(np.float32)
    token_major = x.reshape(2, heads, tokens, keys).transpose(0, 2, 1, 3)
    ref = simulate_softmax(token_major, cfg).outputs.transpose(0, 2, 1, 3).reshape(shape)
    got = formats.to_numpy(nl.softmax(jnp.asarray(x), approx=cfg, tokens=tokens))
    assert same_bits_nan_aware(got, ref)


@pytest.mark.parametrize("tokens", [1, 3])
def test_softmax_fp32_edges_equal_simulator(tokens):
    """Every FP32 edge pattern, one per row (the rest of the row ordinary scores), with and
    without token groups: the kernel's integer rounding at entry equals the simulator's."""
    cfg = nl.VLPConfig(window_group=2)
    rng = np.random.default_rng(7)
    n = len(_FP32_EDGES)
    x = (rng.standard_normal((2, n * tokens, 5)) * 3.0).astype(np.float32)
    x[:, :, 1] = np.repeat(_FP32_EDGES, tokens)
    heads = n
    token_major = x.reshape(2, heads, tokens, 5).transpose(0, 2, 1, 3)
    ref = simulate_softmax(token_major, cfg).outputs.transpose(0, 2, 1, 3).reshape(x.shape)
    got = formats.to_numpy(nl.softmax(jnp.asarray(x), approx=cfg, tokens=tokens))
    assert same_bits_nan_aware(got, ref)


@pytest.mark.parametrize("group,build", [(16, "max"), (24, "min"), (64, "max")])
def test_softmax_wide_groups_equal_simulator(group, build):
    """Window groups wider than the fused slice-extremum path (more than 8 rows, padded last
    group): the reduced-then-materialised window rows equal the simulator's."""
    cfg = nl.VLPConfig(window_group=group, build=build, e_top=1)
    rng = np.random.default_rng(group)
    x = (rng.standard_normal((2, 40, 6)) * 3.0).astype(np.float32)
    x[0, 3, 2] = -np.inf
    x[1, 7, :] = -np.inf
    ref = simulate_softmax(x, cfg, axis=-1)
    got = formats.to_numpy(nl.softmax(jnp.asarray(x), approx=cfg))
    assert same_bits_nan_aware(got, ref.outputs)


# BF16 inputs whose NaN payloads reach y unchanged (one of them the payload of the masked-NaN
# marker 0x7FC1), a signalling NaN, and the y patterns the table reads directly: -inf from an
# overflowing difference of finite inputs, subnormal and zero differences.
_BF16_EDGES = np.array([0x7FC1, 0xFFC1, 0x7F81, 0xFFC5, 0xFF80, 0xFF7F, 0x7F7F, 0x0080, 0x0081,
                        0x8080, 0x0000, 0x8000], dtype=np.uint16)


@pytest.mark.parametrize("tokens", [None, 2])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_softmax_y_patterns_equal_simulator(tokens, dtype):
    """Rows mixing -inf masks with every BF16 edge input (each in its own row, so that NaN,
    +-inf and the largest finite values each set a row's maximum), with and without token
    groups: the kernel, which reads y's own pattern from the table, equals the simulator."""
    cfg = nl.VLPConfig(window_group=2)
    rng = np.random.default_rng(3)
    n = len(_BF16_EDGES)
    x = (rng.standard_normal((2 * n, 6)) * 3.0).astype(BF16)
    x[:n, 2] = _BF16_EDGES.view(BF16)
    x[n:, 2] = _BF16_EDGES.view(BF16)
    x[n:, 3] = _BF16_EDGES[::-1].view(BF16)
    x[:, 4] = -np.inf
    x[0, :] = -np.inf  # a fully masked row
    t = tokens or 1
    heads = x.shape[0] // t
    token_major = x.reshape(heads, t, 6).transpose(1, 0, 2)
    ref = simulate_softmax(token_major.astype(np.float32), cfg).outputs.transpose(1, 0, 2)
    got = formats.to_numpy(nl.softmax(jnp.asarray(x.astype(dtype)), approx=cfg, tokens=tokens))
    assert same_bits_nan_aware(got, ref.reshape(x.shape))
    assert np.all(got.astype(np.float32)[x.astype(np.float32) == -np.inf] == 0)


@pytest.mark.parametrize("fn,group", [("silu", 256), ("gelu_tanh", 64), ("gelu", 40)])
def test_policy_activation_on_fp32_equals_rounded_input(fn, group):
    """The policy's VLP activation (``numerics.Nonlinear(..., bf16_input=True)``, what the models
    call) hands FP32 input to the unit, which rounds it at entry: bit-identical to rounding with
    ``astype`` first and to the simulator on the rounded input, FP32 edge patterns (NaN payloads,
    ties, values that round to infinity, subnormals) included."""
    from mugi_jax import numerics
    rng = np.random.default_rng(group)
    cfg = nl.VLPConfig(window_group=group)
    clean = (rng.standard_normal((4, 300)) * 3.0).astype(np.float32)
    clean[0, :40] *= 8.0  # exponents above e_top
    edges = clean.copy()  # NaN / infinity somewhere: the masked window fallback
    flat = edges.reshape(-1)
    flat[rng.choice(flat.size, 60, replace=False)] = np.resize(_FP32_EDGES, 60)
    unit = numerics.Nonlinear(cfg, bf16_input=True)
    for x in (clean, edges):
        got = np.asarray(unit.activation(jnp.asarray(x), fn))
        assert got.dtype == np.float32
        pre = nl.activation(jnp.asarray(x).astype(jnp.bfloat16), fn, cfg).astype(jnp.float32)
        np.testing.assert_array_equal(got.view(np.uint32), np.asarray(pre).view(np.uint32))
        with np.errstate(invalid="ignore"):
            ref = simulate_vlp(x.astype(BF16), fn, cfg).outputs
        assert same_bits_nan_aware(got.astype(BF16), ref)
