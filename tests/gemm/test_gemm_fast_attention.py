"""Fast mode, attention, subscription cycles and bad input."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from gemm_testlib import SCHEMES, activations, first_diff, same_bits, transpose_qt, weights
from hypothesis import given, settings
from hypothesis import strategies as st

from mugi_jax import gemm, quant, sim


def _bf16_product_oracle(a, w):
    """float64 sum of the BF16-rounded products, scaled per group (the fast-mode target)."""
    a32 = np.asarray(a, np.float32)
    codes = np.asarray(w.codes, np.float32)
    g = w.group_size
    k, n = codes.shape
    p = (a32[:, :, None] * codes[None]).astype(ml_dtypes.bfloat16).astype(np.float64)
    s = np.asarray(w.scales, np.float64)
    sums = p.reshape(a32.shape[0], k // g, g, n).sum(2)
    y = sums * s[None]
    asum = a32.astype(np.float64).reshape(-1, k // g, g).sum(-1)[..., None]
    if w.zeros is not None:
        z = np.asarray(w.zeros, np.float64)[None]
        y = y + z * asum if w.scheme.zero_point == "min" else y - s[None] * z * asum
    bound = (np.abs(p).reshape(a32.shape[0], k // g, g, n).sum(2) * np.abs(s[None])).sum(1)
    return y.sum(1), bound


@pytest.fixture(autouse=True)
def _xla_kernels():
    """This module tests the XLA kernels of fast mode and attention (on the CPU the native
    kernel would take the larger products: tests/gemm/test_gemm_native.py tests that one)."""
    from mugi_jax.gemm import native
    with native.xla_only():
        yield


@pytest.fixture
def fast_path(request, monkeypatch):
    """Force the fast-mode path of the small-``m`` cases: "sequential" (short ``k``, the default
    at these sizes) or "elementwise" (what longer ``k`` takes)."""
    from mugi_jax.gemm import kernels
    if request.param == "elementwise":
        monkeypatch.setattr(kernels, "_FAST_SEQUENTIAL_MAX_K", 0)
    kernels._matmul_2d_jit.clear_cache()  # the path is chosen at trace time
    yield request.param
    kernels._matmul_2d_jit.clear_cache()


@pytest.mark.parametrize("m,scheme_name,n,g,fast_path", [
    (5, "sm", 24, 16, "sequential"), (5, "asym_int", 24, 16, "sequential"),
    (2, "sm", 24, 16, "elementwise"), (2, "asym_int", 24, 16, "elementwise"),
    (64, "int4", 24, 16, "dot"), (64, "asym_min", 24, 16, "dot"),
    (2, "sm", 20000, 64, "elementwise"), (2, "asym_min", 20000, 64, "elementwise")],  # n-tiles
    indirect=["fast_path"])
def test_fast_reproduces_product_rounding(m, scheme_name, n, g, fast_path):
    k = 64
    a = activations(m, (m, k), specials=False, spread=2)
    w = weights(m, k, n, SCHEMES[scheme_name](g))
    dp = gemm.Mugi(magnitude_bits=4)
    fast = np.asarray(gemm.matmul(a, w, dp, mode="fast"), np.float64)
    exact = np.asarray(gemm.matmul(a, w, dp, mode="exact"), np.float64)
    oracle, bound = _bf16_product_oracle(a, w)
    tol = 2.0 ** -20 * (bound + np.abs(oracle)) + 1e-30
    assert np.all(np.abs(fast - oracle) <= tol), np.max(np.abs(fast - oracle) / tol)
    assert np.all(np.abs(exact - oracle) <= tol)
    # Exact products (MixPE) in fast mode stay close to exact mode too.
    mix = np.asarray(gemm.matmul(a, w, gemm.MixPE(), mode="fast"), np.float64)
    np.testing.assert_allclose(mix, gemm.matmul(a, w, gemm.MixPE()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dp", [gemm.Carat(), gemm.SystolicMAC(), gemm.FIGNA()], ids=repr)
def test_fast_baselines_close(dp):
    a = activations(2, (8, 32), specials=False, spread=2)
    w = weights(2, 32, 16, quant.SignMagnitudeInt4(group_size=8))
    np.testing.assert_allclose(gemm.matmul(a, w, dp, mode="fast"), gemm.matmul(a, w, dp),
                               rtol=1e-4, atol=1e-4)


def test_fast_specials():
    a = jnp.array([[jnp.inf, 1.0, 0.0, 2.0]] * 8, jnp.bfloat16)
    w = quant.quantize(jnp.array([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]),
                       quant.SignMagnitudeInt4(group_size=None))
    for m in (1, 8):
        out = np.asarray(gemm.matmul(a[:m], w, gemm.Mugi(), mode="fast"))
        assert np.isnan(out[:, 0]).all() and (out[:, 1] == np.inf).all()


# ---------------------------------------------------------------------------------- cycles


def test_subscription_cycles_rules():
    codes = np.zeros((3, 10), np.int8)
    codes[0, :] = 1
    codes[1, 3] = -7
    codes[2, 9] = 5
    w = quant.QuantizedTensor(codes=jnp.asarray(codes), scales=jnp.ones((1, 10)), zeros=None,
                              scheme=quant.SignMagnitudeInt4(group_size=None))
    dp = gemm.Mugi(rows=4, adders_per_row=4)  # adder bound 2
    c = np.asarray(gemm.subscription_cycles(w, dp))
    np.testing.assert_array_equal(c, [[2, 2, 2], [8, 2, 2], [2, 2, 6]])
    np.testing.assert_array_equal(gemm.subscription_cycles(w, dp, early_termination=False), 8)
    # the default array (8 columns, one adder): the adder bound 8 dominates every sweep
    np.testing.assert_array_equal(gemm.subscription_cycles(w, gemm.Mugi(rows=4)), 8)
    res = sim.simulate_gemm(jnp.ones((9, 3), jnp.bfloat16), w, dp)
    np.testing.assert_array_equal(res.tile_cycles, c)
    assert res.cycles == 2 * c.sum()
    # the sweep of a 4-bit scheme is 16 counter values
    w4 = quant.quantize(jnp.ones((4, 4)), quant.AsymUInt4(group_size=None))
    assert int(gemm.subscription_cycles(w4, gemm.Mugi(magnitude_bits=4),
                                        early_termination=False)[0, 0]) == 16


# ---------------------------------------------------------------------------------- attention


def _attention_reference(q, kq, vq, dp, mask, softmax):
    """Per (batch, KV head) GEMMs through the NumPy reference."""
    *batch, hq, tq, d = q.shape
    hkv, tokens = kq.shape[-3], kq.shape[-2]
    grp = hq // hkv
    nb = int(np.prod(batch, dtype=int)) * hkv
    qq = np.asarray(q.astype(jnp.bfloat16)).reshape(nb, grp * tq, d)

    def head(c, i):
        codes = c.codes.reshape(nb, tokens, d)[i]
        scales = c.scales.reshape(nb, *c.scales.shape[-2:])[i]
        zeros = None if c.zeros is None else c.zeros.reshape(nb, *c.zeros.shape[-2:])[i]
        scheme = dataclasses.replace(c.scheme, axis=c.axis - (c.codes.ndim - 2))
        return quant.QuantizedTensor(codes=codes, scales=scales, zeros=zeros, scheme=scheme)

    s = np.stack([sim.reference_matmul(qq[i], transpose_qt(head(kq, i)), dp) for i in range(nb)])
    s = s.reshape(*batch, hq, tq, tokens) * np.float32(1 / np.sqrt(d))
    if mask is not None:
        s = np.where(np.broadcast_to(mask, s.shape), s, -np.inf)
    p = np.asarray(softmax(jnp.asarray(s), axis=-1)).astype(ml_dtypes.bfloat16)
    p = p.reshape(nb, grp * tq, tokens)
    o = np.stack([sim.reference_matmul(p[i], head(vq, i), dp) for i in range(nb)])
    return o.reshape(*batch, hq, tq, d)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from(["per_token", "per_channel"]), st.sampled_from(["per_token", "per_channel"]),
       st.sampled_from([gemm.Mugi(rows=8, magnitude_bits=4), gemm.MixPE(), gemm.SystolicMAC()]),
       st.booleans(), st.integers(0, 2**16))
def test_attention_exact_matches_reference(k_gran, v_gran, dp, use_mask, seed):
    rng = np.random.default_rng(seed)
    b, hkv, grp, tq, tokens, d = 1, 2, 4, 2, 16, 8
    q = jnp.asarray(rng.standard_normal((b, hkv * grp, tq, d)), jnp.float32)
    k = rng.standard_normal((b, hkv, tokens, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, tokens, d)).astype(np.float32)
    kq = quant.quantize_kv(k, quant.AsymUInt4(group_size=8), granularity=k_gran)
    vq = quant.quantize_kv(v, quant.Int4(group_size=8), granularity=v_gran)
    mask = (np.arange(tokens)[None, :] <= np.arange(tq)[:, None] + tokens - tq) if use_mask \
        else None
    out = gemm.attention(q, kq, vq, dp, mask=mask)
    ref = _attention_reference(q, kq, vq, dp, mask, gemm.exact_softmax)
    assert out.shape == (b, hkv * grp, tq, d)
    assert same_bits(out, ref), first_diff(out, ref)
    # close to float attention on the dequantized caches
    kd, vd = np.asarray(quant.dequantize(kq)), np.asarray(quant.dequantize(vq))
    kd, vd = np.repeat(kd, grp, axis=1), np.repeat(vd, grp, axis=1)
    s = np.einsum("bhqd,bhtd->bhqt", np.asarray(q), kd) / np.sqrt(d)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    fl = np.einsum("bhqt,bhtd->bhqd", np.asarray(jax.nn.softmax(s, axis=-1)), vd)
    np.testing.assert_allclose(out, fl, atol=0.1)
    fast = gemm.attention(q, kq, vq, dp, mask=mask, mode="fast")
    np.testing.assert_allclose(fast, out, atol=1e-3)


@pytest.mark.parametrize("mode", gemm.MODES)
@pytest.mark.parametrize("granularity", ["per_token", "per_channel"])
def test_cache_products_equal_one_gemm_per_head(mode, granularity):
    """``cache_scores`` / ``cache_context`` run the (batch row, KV head) GEMMs one after the
    other in row tiles (1024 rows: two tiles of 512): the same bits as ``gemm.matmul`` on each
    head's cache with all its rows at once."""
    import importlib
    attn_mod = importlib.import_module("mugi_jax.gemm.attention")  # the module, not gemm.attention
    rng = np.random.default_rng(7)
    b, h, m, tokens, d = 1, 2, 1024, 32, 16
    assert attn_mod._row_tile(m) < m  # the tiled path is the one tested
    dp = gemm.Mugi()
    scheme = quant.SignMagnitudeInt4(group_size=8)
    k = rng.standard_normal((b, h, tokens, d)).astype(np.float32)
    kq = quant.quantize_kv(k, scheme, granularity=granularity)
    q = jnp.asarray(rng.standard_normal((b, h, m, d)), jnp.bfloat16)
    p = jnp.asarray(rng.random((b, h, m, tokens)), jnp.bfloat16)
    scores = gemm.cache_scores(q, kq, dp, mode)
    context = gemm.cache_context(p, kq, dp, mode)

    def head(i, transpose):
        zeros = None if kq.zeros is None else kq.zeros[0, i]
        w = quant.QuantizedTensor(codes=kq.codes[0, i], scales=kq.scales[0, i], zeros=zeros,
                                  scheme=dataclasses.replace(kq.scheme, axis=kq.axis - 2))
        return transpose_qt(w) if transpose else w

    for i in range(h):
        assert same_bits(scores[0, i], gemm.matmul(q[0, i], head(i, True), dp, mode))
        assert same_bits(context[0, i], gemm.matmul(p[0, i], head(i, False), dp, mode))


def test_attention_pluggable_softmax_and_gqa():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((8, 1, 16)), jnp.float32)  # 8 query heads, no batch
    k = quant.quantize_kv(rng.standard_normal((1, 24, 16)).astype(np.float32),
                          quant.SignMagnitudeInt4(group_size=None))
    v = quant.quantize_kv(rng.standard_normal((1, 24, 16)).astype(np.float32),
                          quant.SignMagnitudeInt4(group_size=None), granularity="per_channel")
    calls = []

    def uniform(x, axis=-1):
        calls.append(x.shape)
        return jnp.ones_like(x) / x.shape[axis]

    out = gemm.attention(q, k, v, gemm.Mugi(), softmax=uniform)
    assert calls == [(8, 1, 24)]
    mean_v = np.asarray(quant.dequantize(v)).mean(axis=1)  # (1, 16): every head sees the mean
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(mean_v, (8, 16)), atol=2e-2)
    sm = functools.partial(jax.nn.softmax)
    np.testing.assert_array_equal(gemm.attention(q, k, v, gemm.Mugi(), softmax=sm),
                                  gemm.attention(q, k, v, gemm.Mugi()))


# ---------------------------------------------------------------------------------- bad input


def test_bad_input():
    w = weights(0, 16, 8, quant.SignMagnitudeInt4(group_size=8))
    a = activations(0, (4, 16), specials=False)
    with pytest.raises(TypeError, match="a:"):
        gemm.matmul(jnp.ones((4, 16), jnp.int32), w, gemm.Mugi())
    with pytest.raises(ValueError, match="a:.*reduction"):
        gemm.matmul(a[:, :8], w, gemm.Mugi())
    with pytest.raises(TypeError, match="w:"):
        gemm.matmul(a, jnp.ones((16, 8)), gemm.Mugi())
    with pytest.raises(TypeError, match="datapath:"):
        gemm.matmul(a, w, "mugi")
    with pytest.raises(ValueError, match="mode:"):
        gemm.matmul(a, w, gemm.Mugi(), mode="approx")
    w4 = weights(0, 16, 8, quant.Int4(group_size=8))
    with pytest.raises(ValueError, match="magnitude_bits=4"):
        gemm.matmul(a, w4, gemm.Mugi())
    with pytest.raises(ValueError, match="magnitude_bits=4"):
        gemm.subscription_cycles(w4, gemm.Mugi())
    with pytest.raises(TypeError, match="datapath:"):
        gemm.subscription_cycles(w, gemm.Carat())
    with pytest.raises(ValueError, match="fp64"):
        gemm.matmul(a, w, gemm.Mugi(accumulator="fp64"))
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(jnp.ones((20, 4)), quant.SignMagnitudeInt4(group_size=8))
    with pytest.raises(ValueError, match="rows"):
        gemm.Mugi(rows=0)
    with pytest.raises(ValueError, match="accumulator"):
        gemm.Mugi(accumulator="fp16")
    with pytest.raises(ValueError, match="product"):
        gemm.Mugi(product="fp8")
    kv = quant.quantize_kv(jnp.ones((2, 4, 8)), quant.SignMagnitudeInt4(group_size=None))
    with pytest.raises(ValueError, match="q:"):
        gemm.attention(jnp.ones((3, 1, 8)), kv, kv, gemm.Mugi())
    with pytest.raises(ValueError, match="head_dim"):
        gemm.attention(jnp.ones((4, 1, 6)), kv, kv, gemm.Mugi())
    with pytest.raises(TypeError, match="mask"):
        gemm.attention(jnp.ones((4, 1, 8)), kv, kv, gemm.Mugi(), mask=jnp.ones((4,)))
    assert hash(gemm.Mugi()) == hash(gemm.Mugi())


def test_attention_with_vlp_softmax():
    nl = pytest.importorskip("mugi_jax.nonlinear")
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((8, 1, 16)), jnp.float32)
    k = quant.quantize_kv(rng.standard_normal((1, 24, 16)).astype(np.float32),
                          quant.SignMagnitudeInt4(group_size=None))
    v = quant.quantize_kv(rng.standard_normal((1, 24, 16)).astype(np.float32),
                          quant.SignMagnitudeInt4(group_size=None))
    out = gemm.attention(q, k, v, gemm.Mugi(), softmax=nl.softmax)
    ref = gemm.attention(q, k, v, gemm.Mugi())
    np.testing.assert_allclose(out, ref, atol=5e-2)


def test_inconsistent_quantized_tensor_is_rejected():
    bad = quant.QuantizedTensor(codes=jnp.zeros((20, 8), jnp.int8), scales=jnp.ones((3, 8)),
                                zeros=None, scheme=quant.SignMagnitudeInt4(group_size=8))
    with pytest.raises(ValueError, match="group size must divide"):
        gemm.matmul(jnp.ones((2, 20), jnp.bfloat16), bad, gemm.Mugi())


# ---------------------------------------------------------------------------------- prepared


@pytest.mark.parametrize("scheme_name", ["sm", "asym_min", "asym_int"])
def test_prepared_weight_gives_the_same_bits(scheme_name):
    a = activations(3, (70, 64), specials=False, spread=2)  # 70 rows: the per-group dot path
    w = weights(3, 64, 24, SCHEMES[scheme_name](16))
    # Mugi() runs asymmetric codes by offset decomposition, Mugi(magnitude_bits=4) directly
    for dp, other in ((gemm.Mugi(magnitude_bits=4), gemm.Mugi()),
                      (gemm.Mugi(), gemm.Mugi(magnitude_bits=4))):
        for mode in gemm.MODES:
            pw = gemm.prepare_weight(w, dp, mode)
            # the codes are held once (twice when offset-decomposed: the shifted copy)
            copies = 2 if gemm.kernels.offset_decomposed(dp, w.scheme) else 1
            held = [x for x in jax.tree_util.tree_leaves(pw) if x.shape == w.codes.shape]
            assert len(held) == copies and all(x.itemsize == 1 for x in held), (dp, mode)
            for rows in (a, a[:5]):
                out = jax.jit(lambda x, p, dp=dp, mode=mode: gemm.matmul(x, p, dp, mode))(rows, pw)
                assert same_bits(out, gemm.matmul(rows, w, dp, mode)), (dp, mode)
            # prepared for one datapath, used on another: derived again from the weights
            assert same_bits(gemm.matmul(a, pw, other, mode), gemm.matmul(a, w, other, mode))
    np.testing.assert_array_equal(quant.dequantize(pw), quant.dequantize(w))
    # terms made for another product rounding are not used
    mix = gemm.prepare_weight(w, gemm.MixPE(), "fast")
    assert same_bits(gemm.matmul(a, mix, dp, "fast"), gemm.matmul(a, w, dp, "fast"))


@pytest.mark.parametrize("scheme_name,group,axis", [("sm", 8, 0), ("asym_int", 4, 0),
                                                    ("sm", 8, 1), ("asym_min", 8, 1)])
def test_fast_small_groups_fold_the_scales(scheme_name, group, axis):
    """Groups under 16 along k, or along n (the scale changes at every k): one FP32 dot with the
    scales folded into the weight terms, close to the BF16-product oracle / exact mode."""
    a = activations(4, (9, 64), specials=False, spread=2)
    dp = gemm.Mugi(magnitude_bits=4)
    scheme = dataclasses.replace(SCHEMES[scheme_name](group), axis=axis)
    w = weights(4, 64, 32, scheme)
    fast = np.asarray(gemm.matmul(a, w, dp, mode="fast"), np.float64)
    if axis == 0:
        oracle, bound = _bf16_product_oracle(a, w)
    else:
        oracle = np.asarray(gemm.matmul(a, w, dp, mode="exact"), np.float64)
        bound = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(quant.dequantize(w),
                                                                      np.float64))
    assert np.all(np.abs(fast - oracle) <= 2.0 ** -18 * (bound + np.abs(oracle)) + 1e-30)


def test_fast_dot_path_in_n_tiles(monkeypatch):
    """Very wide outputs run the per-group dot path in padded n-tiles (forced small here)."""
    from mugi_jax.gemm import kernels
    monkeypatch.setattr(kernels, "_FAST_DOT_TILE_ELEMS", 1 << 12)
    kernels._matmul_2d_jit.clear_cache()
    try:
        a = activations(5, (64, 32), specials=False, spread=2)
        w = weights(5, 32, 8300, quant.SignMagnitudeInt4(group_size=16))  # 8300 = 64 tiles + 108
        dp = gemm.Mugi()
        fast = np.asarray(gemm.matmul(a, gemm.prepare_weight(w, dp, "fast"), dp, "fast"),
                          np.float64)
        exact = np.asarray(gemm.matmul(a, w, dp), np.float64)
        bound = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(quant.dequantize(w),
                                                                      np.float64))
        assert np.all(np.abs(fast - exact) <= 2.0 ** -18 * bound + 1e-30)
    finally:
        kernels._matmul_2d_jit.clear_cache()


@pytest.mark.parametrize("scheme_name", ["sm", "asym_int"])
def test_fast_dot_path_same_bits_fused_and_vmapped(scheme_name):
    """The dot path builds its activation terms inside a conditional (so that XLA does not
    recompute a fused producer per term), which ``vmap`` turns into a select: the same bits
    whether the activations come from a fused producer or from memory, vmapped or not, and with
    NaN / infinities among them (the conditional's predicate reads the first element)."""
    x = activations(6, (2, 70, 64), specials=True, spread=2)  # 70 rows: the per-group dot path
    y = activations(7, (2, 70, 64), specials=False, spread=1)
    w = weights(6, 64, 24, SCHEMES[scheme_name](16))
    dp = gemm.Mugi(magnitude_bits=4)
    pw = gemm.prepare_weight(w, dp, "fast")
    a = (x.astype(jnp.float32) * y.astype(jnp.float32)).astype(jnp.bfloat16)
    direct = [gemm.matmul(a[i], pw, dp, "fast") for i in range(2)]
    fused = jax.jit(lambda x, y, p: gemm.matmul(x.astype(jnp.float32) * y.astype(jnp.float32),
                                                p, dp, "fast"))
    vmapped = jax.jit(jax.vmap(lambda r, p: gemm.matmul(r, p, dp, "fast"), (0, None)))(a, pw)
    for i in range(2):
        assert same_bits(fused(x[i], y[i], pw), direct[i]), i
        assert same_bits(vmapped[i], direct[i]), i
    assert np.isnan(np.asarray(direct[0])).any()  # the specials reached the output


@pytest.mark.parametrize("mode", gemm.MODES)
@pytest.mark.parametrize("tokens", [100, 256, 320, 200])
def test_causal_cache_products_keep_the_bits(mode, tokens):
    """``causal=T``: chunks of 128 queries read the key slots up to their last query only.
    The scores a query reads and the context rows (probabilities 0 after each query) have the
    bits of the whole products; the skipped scores are 0.  Lengths: one chunk (100), several
    (256, 320 with a short last chunk), keys off the 64-slot grid (200: the whole product)."""
    rng = np.random.default_rng(tokens)
    group, d = 2, 64
    dp = gemm.Mugi()
    scheme = quant.SignMagnitudeInt4(group_size=None)
    k = quant.quantize_kv(rng.standard_normal((1, 2, tokens, d)).astype(np.float32),
                          dataclasses.replace(scheme, group_size=4), granularity="per_channel")
    v = quant.quantize_kv(rng.standard_normal((1, 2, tokens, d)).astype(np.float32), scheme,
                          granularity="per_token")
    q = jnp.asarray(rng.standard_normal((1, 2, group * tokens, d)), jnp.bfloat16)
    after = np.tile(np.arange(tokens)[None] > np.arange(tokens)[:, None], (group, 1))
    p = jnp.asarray(np.where(after, 0.0, rng.random((1, 2, group * tokens, tokens))), jnp.bfloat16)
    whole, skipped = (gemm.cache_scores(q, k, dp, mode, causal=c) for c in (None, tokens))
    whole, skipped = np.asarray(whole), np.asarray(skipped)
    np.testing.assert_array_equal(skipped[..., ~after], whole[..., ~after])
    if tokens % 64 == 0 and tokens > 128:  # the first chunk's queries: keys from 128 skipped
        first = np.tile(np.arange(tokens) < 128, group)
        assert not skipped[..., first, 128:].any() and whole[..., first, 128:].all()
    np.testing.assert_array_equal(np.asarray(gemm.cache_context(p, v, dp, mode, causal=tokens)),
                                  np.asarray(gemm.cache_context(p, v, dp, mode)))
    with pytest.raises(ValueError, match="causal"):
        gemm.cache_scores(q, k, dp, mode, causal=tokens + 1)
