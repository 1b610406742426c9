"""The native VLP GEMM kernel (mugi_jax/_native/vlp_gemm.cc, mugi_jax.gemm.native): bit for bit
(NaN == NaN) equal to exact mode's XLA kernel and to the NumPy simulator, on every path of the
kernel (AVX512-BF16 pairs, vpermps, the portable scalar loop, and a build without AVX-512),
whatever the thread count."""

from __future__ import annotations

import shutil
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from gemm_testlib import SCHEMES, activations, first_diff, same_bits, weights
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mugi_jax import gemm, quant, sim
from mugi_jax.gemm import kernels, native

pytestmark = pytest.mark.skipif(not native.native_available(),
                                reason="native kernels unavailable (no g++ or MUGI_JAX_NATIVE=0)")

DATAPATHS = {"mugi3": gemm.Mugi(), "mugi4": gemm.Mugi(magnitude_bits=4), "mixpe": gemm.MixPE()}


_xla_exact = jax.jit(lambda a, kn, product: kernels._exact_sequential(
    kernels._a32(a), kn.codes, kn.scales, kn.zeros, kn.group, kn.zero_point, product, "fp32"),
    static_argnums=2)


def _native(a, kn, product, threads=0, method="auto"):
    return jax.jit(lambda a, kn: native.vlp_gemm(a, kn, product, threads, method))(a, kn)


def _methods(product, kn):
    pairs = product == "bf16" and kn.group % 2 == 0
    return ("auto", "vpermps", "scalar") + (("pairs",) if pairs else ())


def _check_all(a, w, dp, with_sim=True, threads=(0, 1, 3)):
    pw = gemm.prepare_weight(w, dp, "exact")
    product = dp.numerics.product
    ref = _xla_exact(a, pw.kn, product)
    if with_sim:
        oracle = sim.reference_matmul(a, w, dp)
        assert same_bits(ref, oracle), first_diff(ref, oracle)
    for method in _methods(product, pw.kn):
        for t in threads:
            out = _native(a, pw.kn, product, t, method)
            assert same_bits(out, ref), (method, t, first_diff(out, ref))
    return ref


@settings(max_examples=4, deadline=None)
@given(st.sampled_from(sorted(SCHEMES)), st.sampled_from(sorted(DATAPATHS)),
       st.sampled_from([16, 32, None]), st.integers(1, 40), st.integers(1, 2), st.integers(1, 70),
       st.booleans(), st.integers(0, 2**20))
def test_native_matches_xla_and_simulator(scheme, datapath, group, m, groups, n, specials, seed):
    """Every scheme and datapath the kernel takes, odd shapes, activations with +-0, BF16
    subnormals, +-inf, NaN and values near overflow: the kernel's every path and thread count
    equals exact mode's XLA kernel, which equals the simulator."""
    dp = DATAPATHS[datapath]
    k = (group or 24) * groups
    w = weights(seed, k, n, SCHEMES[scheme](group), zero_group=True)
    try:
        gemm.prepare_weight(w, dp, "exact")
    except ValueError:  # a scheme wider than the datapath's sweep
        assume(False)
    _check_all(activations(seed, (m, k), specials), w, dp, threads=(3,))


def _hand_weight(codes, scales, zeros=None, scheme=None):
    scheme = scheme or quant.SignMagnitudeInt4(group_size=codes.shape[0] // scales.shape[0])
    return quant.QuantizedTensor(codes=jnp.asarray(codes, jnp.int8),
                                 scales=jnp.asarray(scales, jnp.float32),
                                 zeros=None if zeros is None else jnp.asarray(zeros, jnp.float32),
                                 scheme=scheme)


def _bf16(x):
    return jnp.asarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16))


@pytest.mark.parametrize("case", ["cancel_to_subnormal", "tiny_scale", "tiny_offset", "ties",
                                  "overflow_and_specials"])
def test_native_adversarial(case):
    """One fixed case per flush / rounding rule, 40 rows (the pair path's size), every method."""
    m, k, n = 40, 32, 20
    rng = np.random.default_rng(7)
    a = np.zeros((m, k), np.float32)
    codes = rng.integers(-7, 8, (k, n))
    scales = np.full((1, n), 0.5, np.float32)
    zeros = None
    scheme = None
    if case == "cancel_to_subnormal":
        # x (1 + 2^-7) then -x: the running sum is 2^-7 x, below 2^-126 for x = 2^-120 -> flushed
        # (a later add of a normal value then starts from a signed zero)
        a[:, 0] = 2.0 ** -120 * (1 + 2 ** -7)
        a[:, 1] = -(2.0 ** -120)
        a[:, 2::2] = rng.choice([2.0 ** -125, -(2.0 ** -125), 2.0 ** -124], (m, 15))
        codes[:, :] = rng.choice([1, -1, 2], (k, n))
    elif case == "tiny_scale":
        a[:] = rng.standard_normal((m, k)) * 2.0 ** -3
        scales[:] = rng.choice([2.0 ** -126, 2.0 ** -125 * 3, 1e-38, 2.0 ** -120], (1, n))
    elif case == "tiny_offset":
        a[:] = rng.standard_normal((m, k)) * 2.0 ** -4
        codes = rng.integers(0, 16, (k, n))
        scheme = quant.AsymUInt4(group_size=k)
        scales[:] = rng.choice([2.0 ** -126, 2.0 ** -124, 1.0], (1, n))
        zeros = rng.choice([-(2.0 ** -126) * 8, 2.0 ** -127 * 3, 2.0 ** -110], (1, n))
    elif case == "ties":
        # 8 significant bits times 3, 5, 7: products halfway between BF16 neighbours
        a[:] = (129 + 2 * rng.integers(0, 63, (m, k))) * 2.0 ** rng.integers(-8, 8, (m, k))
        codes = rng.choice([3, 5, 7, -3, -5, -7], (k, n))
    else:
        a[:] = rng.standard_normal((m, k))
        a[:, 3] = 3.3e38   # bf16(a * 7) overflows to inf
        a[1, :] = np.inf    # inf * 0 -> NaN
        a[2, 5] = np.nan
        a[3, :] = rng.choice([1e-39, -1e-39, 0.0, -0.0], k)  # BF16 subnormals read as zero
        a[4, :] = -0.0
    w = _hand_weight(codes, scales, zeros, scheme)
    _check_all(_bf16(a), w, gemm.Mugi(), threads=(0,))


def test_smollm2_shape_slice():
    """A slice of a SmolLM2 projection's shape (k = 576, groups of 32), 64 rows (the dispatch
    size of gemm.matmul); the simulator on its first rows."""
    a = activations(3, (64, 576), False, spread=3)
    w = weights(3, 576, 96, quant.SignMagnitudeInt4(group_size=32))
    dp = gemm.Mugi()
    ref = _check_all(a, w, dp, with_sim=False, threads=(2,))
    oracle = sim.reference_matmul(a[:3], w, dp)
    assert same_bits(ref[:3], oracle)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_matmul_dispatches_native(mode):
    """gemm.matmul runs the native kernel from native.MIN_ROWS rows in both modes (fast mode in
    exact mode's order: the same bits), the XLA kernel below."""
    dp = gemm.Mugi()
    w = gemm.prepare_weight(weights(5, 64, 40, quant.SignMagnitudeInt4(group_size=32)), dp, mode)
    for m, uses in ((native.MIN_ROWS, True), (native.MIN_ROWS - 1, False)):
        a = activations(5, (m, 64), True)
        f = jax.jit(lambda a, w: gemm.matmul(a, w, dp, mode=mode))
        assert ("mugi_vlp_gemm" in f.lower(a, w).as_text()) == uses
        if uses:
            out = f(a, w)
            assert same_bits(out, _xla_exact(a, w.kn, "bf16")), first_diff(out, _xla_exact(a, w.kn, "bf16"))


def test_native_under_vmap():
    """vmap over the activations (more rows) and over the weights (a loop): the same bits."""
    dp = gemm.Mugi()
    a = activations(9, (2, 16, 32), True)
    w = gemm.prepare_weight(weights(9, 32, 24, quant.SignMagnitudeInt4(group_size=16)), dp)
    out = jax.vmap(lambda x: native.vlp_gemm(x, w.kn, "bf16"))(a)
    ref = jnp.stack([_xla_exact(x, w.kn, "bf16") for x in a])
    assert same_bits(out, ref)
    kns = jax.tree_util.tree_map(lambda x: jnp.stack([x, x[:, ::-1]]), w.kn)
    out = jax.vmap(lambda x, kn: native.vlp_gemm(x, kn, "bf16"))(a, kns)
    ref2 = _xla_exact(a[1], jax.tree_util.tree_map(lambda x: x[1], kns), "bf16")
    assert same_bits(out[0], ref[0]) and same_bits(out[1], ref2)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_build_without_avx512(tmp_path):
    """The source compiled without AVX-512 (the portable scalar path and scalar table build a CPU
    without it runs) gives the same bits."""
    import ctypes
    from pathlib import Path

    from mugi_jax import _native

    lib = tmp_path / "vlp_gemm_portable.so"
    src = Path(_native.__file__).parent / "vlp_gemm.cc"
    # -O1: a quicker build of the same IEEE operations (-ffp-contract=off kept)
    flags = ["-O1" if f == "-O3" else f for f in _native.FLAGS]
    subprocess.run(["g++", *flags, "-mno-avx512f", f"-I{jax.ffi.include_dir()}",
                    str(src), "-o", str(lib)], check=True, capture_output=True, timeout=300)
    handle = ctypes.CDLL(str(lib))
    jax.ffi.register_ffi_target("mugi_test_vlp_gemm_portable", jax.ffi.pycapsule(handle.vlp_gemm),
                                platform="cpu")
    dp = gemm.Mugi()
    for scheme, specials in (("asym_int", True),):  # the offset dequantization too
        a = activations(11, (37, 64), specials)
        w = gemm.prepare_weight(weights(11, 64, 29, SCHEMES[scheme](32)), dp)
        kn = w.kn
        zeros = kn.scales if kn.zeros is None else kn.zeros
        form = {"none": 0, "offset": 1}[kn.zero_point]
        out = jax.ffi.ffi_call("mugi_test_vlp_gemm_portable",
                               jax.ShapeDtypeStruct((37, 29), jnp.float32))(
            a, kn.codes, jnp.zeros((0, 58), jnp.uint8), kn.scales, zeros, threads=np.int64(2),
            zero_point=np.int64(form), unsigned_codes=False, round_products=True,
            method=np.int64(0))
        assert same_bits(out, _xla_exact(a, kn, "bf16"))
    _ = handle


def test_native_call_is_differentiable_as_the_xla_kernel():
    """Under jax.grad the native call takes the XLA kernel's derivative (the tuner
    differentiates through models' GEMMs)."""
    dp = gemm.Mugi()
    w = gemm.prepare_weight(weights(12, 64, 24, quant.SignMagnitudeInt4(group_size=32)), dp)
    a = jax.random.normal(jax.random.PRNGKey(0), (16, 64))

    def loss(a):
        return jnp.sum(gemm.matmul(a, w, dp, mode="fast") ** 2)

    assert "mugi_vlp_gemm" in jax.jit(loss).lower(a).as_text()
    with native.xla_only():
        want = jax.grad(loss)(a)
    assert same_bits(jax.grad(loss)(a), want)


def test_pair_path_row_and_column_remainders():
    """The pair path's register blocks (8 rows x 48 columns): every remainder of rows in a
    block (items of 32 rows: 33, 38, 40 rows leave 1, 6, 8) and a partial column block,
    against the XLA kernel and the NumPy simulator, on every path."""
    rng = np.random.default_rng(7)
    k, n = 64, 100  # two groups of 32; columns 48 + 48 + 4
    w = quant.quantize(jnp.asarray(rng.standard_normal((k, n)), jnp.float32),
                       quant.SignMagnitudeInt4(group_size=32, axis=0))
    a = jnp.asarray(rng.standard_normal((40, k)), jnp.float32).astype(jnp.bfloat16)
    for m in (33, 38, 40):
        _check_all(a[:m], w, gemm.Mugi(), threads=(0,))
