"""Exact mode vs the cycle-level simulator (bit for bit), cycles, and the float64 oracle."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from gemm_testlib import SCHEMES, activations, first_diff, same_bits, transpose_qt, weights
from hypothesis import given, settings
from hypothesis import strategies as st

from mugi_jax import gemm, quant, sim

# Few distinct shapes keep the number of compilations (the cost of these tests) small.
SHAPES = [(3, 16, 5), (11, 32, 21)]
GROUPS = {16: [8, 16, None], 32: [8, 32, None]}


@st.composite
def mugi_case(draw):
    m, k, n = draw(st.sampled_from(SHAPES))
    scheme_name = draw(st.sampled_from(sorted(SCHEMES)))
    scheme = SCHEMES[scheme_name](draw(st.sampled_from(GROUPS[k])))
    # 3-bit magnitudes: sign-magnitude, or asymmetric codes by offset decomposition
    mb = 3 if scheme_name != "int4" and draw(st.booleans()) else 4
    dp = gemm.Mugi(rows=draw(st.sampled_from([4, 8])), cols=draw(st.sampled_from([4, 8])),
                   magnitude_bits=mb, product=draw(st.sampled_from(["bf16", "exact"])),
                   accumulator=draw(st.sampled_from(["fp32", "bf16"])),
                   adders_per_row=draw(st.sampled_from([1, 2, 8])))
    seed = draw(st.integers(0, 2**20))
    a = activations(seed, (m, k), specials=draw(st.booleans()))
    w = weights(seed, k, n, scheme, zero_group=draw(st.booleans()))
    return a, w, dp, draw(st.booleans())


@settings(max_examples=30, deadline=None)
@given(mugi_case())
def test_exact_matches_simulator_bit_for_bit(case):
    a, w, dp, et = case
    out = gemm.matmul(a, w, dp, mode="exact")
    res = sim.simulate_gemm(a, w, dp, early_termination=et)
    assert out.dtype == jnp.float32 and out.shape == res.out.shape
    assert same_bits(out, res.out), first_diff(out, res.out)
    cyc = np.asarray(gemm.subscription_cycles(w, dp, early_termination=et))
    np.testing.assert_array_equal(cyc, res.tile_cycles)
    assert res.cycles == -(-a.shape[0] // dp.cols) * int(cyc.sum())
    assert int(gemm.total_cycles(a.shape[0], w, dp, et)) == res.cycles
    m, k = a.shape
    n = w.shape[1]
    assert res.events["adds"] == m * k * n == res.events["fifo_pushes"] == res.events["latches"]
    assert min(m, dp.cols) <= res.events["fifo_max_depth"] <= 2 * dp.cols


@settings(max_examples=16, deadline=None)
@given(st.sampled_from(["carat", "mixpe", "mixpe_bf16", "systolic", "simd", "figna"]),
       st.sampled_from(sorted(SCHEMES)), st.sampled_from([8, None]), st.booleans(),
       st.integers(0, 2**20))
def test_baseline_datapaths_match_reference(name, scheme_name, group, specials, seed):
    dp = {"carat": gemm.Carat(), "mixpe": gemm.MixPE(), "mixpe_bf16": gemm.MixPE("bf16"),
          "systolic": gemm.SystolicMAC(), "simd": gemm.SystolicMAC(tree_width=8),
          "figna": gemm.FIGNA()}[name]
    m, k, n = SHAPES[1]
    a = activations(seed, (m, k), specials)
    w = weights(seed, k, n, SCHEMES[scheme_name](group))
    out = gemm.matmul(a, w, dp, mode="exact")
    ref = sim.reference_matmul(a, w, dp)
    assert same_bits(out, ref), first_diff(out, ref)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["asym_min", "asym_int"]), st.sampled_from([(5, 24, 7), (1, 8, 3)]),
       st.sampled_from([8, None]), st.booleans(), st.booleans(), st.integers(0, 2**20))
def test_asym_offset_decomposition(scheme_name, shape, group, specials, et, seed):
    """Asymmetric INT4 on the 3-bit Mugi array: the array sweeps q - 8 (9 counter values), the
    vector unit adds offset * group sum; exact mode equals the simulator bit for bit (zeros,
    subnormals, inf, NaN, odd shapes), cycles follow |q - 8|, fast mode is close."""
    m, k, n = shape
    dp = gemm.Mugi(rows=4, cols=4)
    a = activations(seed, (m, k), specials)
    w = weights(seed, k, n, SCHEMES[scheme_name](group), zero_group=True)
    out = gemm.matmul(a, w, dp, mode="exact")
    res = sim.simulate_gemm(a, w, dp, early_termination=et)
    assert same_bits(out, res.out), first_diff(out, res.out)
    mag = np.abs(np.asarray(w.codes, np.int64) - 8)
    tiles = np.pad(mag, ((0, 0), (0, -n % 4))).reshape(k, -1, 4).max(-1) + 1
    np.testing.assert_array_equal(res.tile_cycles, np.maximum(tiles if et else 9, 4))
    np.testing.assert_array_equal(gemm.subscription_cycles(w, dp, et), res.tile_cycles)
    assert res.events["group_sum_adds"] == m * k * -(-n // 4)
    if not specials:
        ref = np.asarray(a, np.float64) @ np.asarray(quant.dequantize(w), np.float64)
        # the decomposition's two terms s (q - 8) and the offset may cancel: the rounding scales
        # with their magnitudes, not with |w|'s
        g = k // w.scales.shape[0]
        s = np.repeat(np.asarray(w.scales, np.float64), g, axis=0)
        z = np.repeat(np.asarray(w.zeros, np.float64), g, axis=0)
        offset = z + 8 * s if scheme_name == "asym_min" else s * (8 - z)
        terms = np.abs(s * (np.asarray(w.codes, np.float64) - 8)) + np.abs(offset)
        tol = 1e-2 * np.abs(np.asarray(a, np.float64)) @ (
            np.abs(np.asarray(quant.dequantize(w))) + terms)
        assert np.all(np.abs(np.asarray(out) - ref) <= tol + 1e-6)
        fast = gemm.matmul(a, w, dp, mode="fast")
        assert np.all(np.abs(np.asarray(fast) - ref) <= tol + 1e-6)


@pytest.mark.parametrize("scheme_name", ["asym_min", "asym_int"])
def test_asym_offset_fast_dot_path(scheme_name):
    """Fast mode's dot path (m >= 64: the odd-multiple decomposition on q - 8) agrees with exact
    mode to FP32 reassociation."""
    a = activations(3, (70, 64), specials=False, spread=2)
    w = weights(3, 64, 24, SCHEMES[scheme_name](32))
    exact = np.asarray(gemm.matmul(a, w, gemm.Mugi(), mode="exact"))
    fast = np.asarray(gemm.matmul(a, w, gemm.Mugi(), mode="fast"))
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)


def test_asym_offset_worked_example():
    """One group, min form: w = s q + m with s = 0.5, m = -1; codes [0, 15, 8]: the array sums
    a (q - 8) = 1*(-8) + 2*7 + 4*0 = 6, the offset m + 8 s = 3 times A = 7: 0.5*6 + 21 = 24."""
    w = quant.QuantizedTensor(codes=jnp.array([[0], [15], [8]], jnp.int8),
                              scales=jnp.array([[0.5]], jnp.float32),
                              zeros=jnp.array([[-1.0]], jnp.float32),
                              scheme=quant.AsymUInt4(group_size=None))
    a = jnp.array([[1.0, 2.0, 4.0]], jnp.bfloat16)
    assert float(gemm.matmul(a, w, gemm.Mugi())[0, 0]) == 24.0
    assert float((a.astype(jnp.float32) @ quant.dequantize(w))[0, 0]) == 24.0
    assert int(gemm.subscription_cycles(w, gemm.Mugi(rows=4, cols=1), False)[0, 0]) == 9


def test_groups_along_n_and_batch_axes():
    """A (k, n) tensor quantized along n (scale changes at every k) and leading batch axes."""
    a = activations(3, (2, 3, 16), specials=False, spread=0)
    w = weights(3, 16, 24, quant.AsymUInt4(group_size=8, axis=1))  # (k, n), groups along n
    assert w.axis == 1 and same_bits(transpose_qt(transpose_qt(w)).codes, w.codes)
    dp = gemm.Mugi(rows=8, magnitude_bits=4)
    out = gemm.matmul(a, w, dp)
    ref = sim.simulate_gemm(a, w, dp).out
    assert out.shape == (2, 3, 24)
    assert same_bits(out, ref), first_diff(out, ref)
    np.testing.assert_allclose(out, np.asarray(a, np.float32) @ np.asarray(quant.dequantize(w)),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scheme_name", sorted(SCHEMES))
def test_float64_oracle(scheme_name):
    """Exact products + FP64 accumulation == a @ dequantize(w) in float64 (all sums exact for
    activations spanning a few binades)."""
    m, k, n = SHAPES[1]
    a = activations(7, (m, k), specials=False, spread=3)
    w = weights(7, k, n, SCHEMES[scheme_name](8))
    dp = gemm.Mugi(rows=8, magnitude_bits=4, product="exact", accumulator="fp64")
    out = sim.simulate_gemm(a, w, dp).out
    assert out.dtype == np.float64
    codes = np.asarray(w.codes, np.float64)
    s = np.repeat(np.asarray(w.scales, np.float64), 8, axis=0)
    if w.zeros is None:
        wd = codes * s
    elif w.scheme.zero_point == "min":
        wd = codes * s + np.repeat(np.asarray(w.zeros, np.float64), 8, axis=0)
    else:
        wd = (codes - np.repeat(np.asarray(w.zeros, np.float64), 8, axis=0)) * s
    oracle = np.asarray(a, np.float64) @ wd
    if w.zeros is None:
        np.testing.assert_array_equal(out, oracle)
    else:  # the offset decomposition reassociates: equal up to float64 rounding
        np.testing.assert_allclose(out, oracle, rtol=1e-13, atol=1e-13)
    # The FP32 kernel with exact products is the same thing rounded to FP32 along the way.
    k32 = gemm.matmul(a, w, dataclasses.replace(dp, accumulator="fp32"))
    np.testing.assert_allclose(k32, oracle, rtol=1e-5, atol=1e-5)


def test_specials_follow_ieee():
    """inf * code 0 = NaN, inf * code q = +-inf, NaN propagates, subnormals read as zero."""
    w = quant.quantize(jnp.array([[0.0, 1.0, -1.0], [1.0, 1.0, 1.0]]).T.reshape(3, 2) * 1.0,
                       quant.SignMagnitudeInt4(group_size=None))
    # codes column 0: [0, 7, -7]; column 1: [7, 7, 7]
    a = jnp.array([[jnp.inf, 0, 0], [0, jnp.nan, 0], [1e-39, 1e-39, 1e-39]], jnp.bfloat16)
    out = np.asarray(gemm.matmul(a, w, gemm.Mugi()))
    assert np.isnan(out[0, 0]) and out[0, 1] == np.inf
    assert np.isnan(out[1]).all()
    assert (out[2] == 0).all()
    assert same_bits(out, sim.simulate_gemm(a, w, gemm.Mugi()).out)


def test_bf16_accumulator_is_coarser():
    a = activations(1, (4, 32), specials=False, spread=1)
    w = weights(1, 32, 6, quant.SignMagnitudeInt4(group_size=None))
    ref = np.asarray(a, np.float64) @ np.asarray(quant.dequantize(w), np.float64)
    e32 = np.abs(gemm.matmul(a, w, gemm.Mugi()) - ref).max()
    e16 = np.abs(gemm.matmul(a, w, gemm.Mugi(accumulator="bf16")) - ref).max()
    assert e16 > e32


def test_tiled_exact_path_matches_simulator():
    """m * n large enough for the n-tiled sequential kernel (with padding of the last tile)."""
    m, k, n = 72, 16, 8200
    a = activations(11, (m, k), specials=True)
    w = weights(11, k, n, quant.SignMagnitudeInt4(group_size=8))
    dp = gemm.Mugi()
    out = gemm.matmul(a, w, dp)
    res = sim.simulate_gemm(a, w, dp, early_termination=False)
    assert same_bits(out, res.out), first_diff(out, res.out)
    assert res.cycles == 9 * k * 33 * 8


def test_simd_tree_pads_k():
    a = activations(5, (9, 20), specials=True)
    w = weights(5, 20, 7, quant.Int4(group_size=4))
    dp = gemm.SystolicMAC(tree_width=16)
    out = gemm.matmul(a, w, dp)
    assert same_bits(out, sim.reference_matmul(a, w, dp))
    b = activations(6, (3, 20), specials=False, spread=0)
    np.testing.assert_allclose(gemm.matmul(b, w, dp), gemm.matmul(b, w, gemm.SystolicMAC()),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme_name", ["sm", "asym_int"])
def test_figna_specials(scheme_name):
    w = weights(9, 32, 21, SCHEMES[scheme_name](8))
    for seed in range(3):
        a = activations(seed, (11, 32), specials=True)
        out = gemm.matmul(a, w, gemm.FIGNA())
        assert same_bits(out, sim.reference_matmul(a, w, gemm.FIGNA())), seed
        assert np.isnan(np.asarray(out)).any()


def test_a_datapath_defined_here_runs_by_its_numerics_record():
    """The kernels and the reference pick their implementation by ``datapath.numerics``, not by
    the class: a datapath class defined only in this test runs through both, bit for bit, and
    equals the built-in datapath with the same record."""

    @dataclasses.dataclass(frozen=True)
    class EightWideTrees:
        @property
        def numerics(self):
            return gemm.DequantizedWeights(weights="bf16", activations="bf16", tree_width=8)

    @dataclasses.dataclass(frozen=True)
    class ShiftAdd:
        @property
        def numerics(self):
            return gemm.CodeProducts(product="exact", accumulator="fp32", magnitude_bits=4)

    m, k, n = SHAPES[1]
    a = activations(5, (m, k), specials=True)
    w = weights(5, k, n, SCHEMES["asym_int"](8))
    for mine, builtin in ((EightWideTrees(), gemm.SystolicMAC(tree_width=8)), (ShiftAdd(), gemm.MixPE())):
        out = gemm.matmul(a, w, mine, mode="exact")
        assert same_bits(out, sim.reference_matmul(a, w, mine))
        assert same_bits(out, gemm.matmul(a, w, builtin, mode="exact"))
    with pytest.raises(TypeError, match="datapath: expected one of"):
        gemm.matmul(a, w, object())
