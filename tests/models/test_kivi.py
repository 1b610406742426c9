"""KIVI-style KV cache: per-channel keys grouped along tokens, per-token values, residual tokens
in full precision; cached and uncached paths identical; against a per-query reference."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import numerics, quant
from mugi_jax.models.llama import Cache, forward

KV = numerics.KVCache(scheme=quant.AsymUInt4(group_size=None, axis=-1), key_layout="per_channel",
                      key_group=4, residual=3)
LN = numerics.LayerNumerics(kv=KV, attn=numerics.Gemm(bf16_activations=True))
POLICY = numerics.Policy("kivi-test", LN)


def test_scores_and_context_match_a_per_query_reference():
    """Query i reads key group g quantized iff (g+1)G + R <= i + 1, value j iff j + R <= i."""
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    s, d, g, r = 13, 8, 4, 3
    q = jax.random.normal(kq, (1, 1, s, d))
    k = jax.random.normal(kk, (1, 1, s, d)) * 2 + 0.5
    v = jax.random.normal(kv, (1, 1, s, d))
    slots = jnp.arange(s)
    scores = np.asarray(LN.scores(q, k, slots))
    p = jax.nn.softmax(jnp.asarray(scores), -1)
    ctx = np.asarray(LN.context(p, v, slots))
    bf = lambda x: np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))  # noqa
    kn, vn, qn, pn = np.asarray(k[0, 0]), np.asarray(v[0, 0]), bf(q[0, 0]), bf(p[0, 0])
    for i in range(s):
        keys = bf(kn).copy()
        for grp in range(s // g):
            if (grp + 1) * g + r <= i + 1:  # a complete group, outside the residual window
                blk = kn[grp * g:(grp + 1) * g]  # per channel: each column its own range
                lo, hi = blk.min(0), blk.max(0)
                sc = np.float32((hi - lo) / np.float32(15))
                code = np.clip(np.round((blk - lo) / np.where(sc > 0, sc, 1)), 0, 15)
                keys[grp * g:(grp + 1) * g] = code * sc + lo
        np.testing.assert_allclose(scores[0, 0, i], keys @ qn[i], rtol=1e-5, atol=1e-5)
        vals = bf(vn).copy()
        for j in range(s):
            if j + r <= i:
                lo, hi = vn[j].min(), vn[j].max()
                sc = np.float32((hi - lo) / np.float32(15))
                vals[j] = np.clip(np.round((vn[j] - lo) / sc), 0, 15) * sc + lo
        np.testing.assert_allclose(ctx[0, 0, i], pn[i] @ vals, rtol=1e-5, atol=1e-5)


def test_cached_equals_uncached(tiny_model, tiny_config):
    toks = jax.random.randint(jax.random.key(1), (2, 14), 3, tiny_config.vocab_size)
    full, _ = forward(tiny_model, toks, POLICY)
    cache = Cache.init(tiny_config, 2, 16)
    out, cache = forward(tiny_model, toks[:, :5], POLICY, cache=cache)
    parts = [out]
    for t in range(5, 14):
        out, cache = forward(tiny_model, toks[:, t:t + 1], POLICY, cache=cache)
        parts.append(out)
    np.testing.assert_array_equal(np.concatenate(parts, 1), np.asarray(full))
    exact, _ = forward(tiny_model, toks, "exact")
    assert not np.array_equal(np.asarray(full), np.asarray(exact))  # the cache did quantize


def test_bad_kv_config():
    with pytest.raises(ValueError, match="key_layout"):
        numerics.KVCache(key_layout="per_head")
    with pytest.raises(ValueError, match="residual"):
        numerics.KVCache(residual=-1)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_kivi_on_the_mugi_datapath(mode):
    """The quantized keys (per-channel groups: the scale changes along the output) and values
    (per token: the scale changes along the reduction) on the Mugi datapath: close to the FP
    products of the same quantized values (BF16 product rounding), the residual tokens exact."""
    gemm = pytest.importorskip("mugi_jax.gemm")
    ln = dataclasses.replace(LN, attn=numerics.Gemm(datapath=gemm.Mugi(), mode=mode,
                                                    bf16_activations=True))
    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    s, d = 13, 8
    q = jax.random.normal(kq, (1, 2, s, d))
    k = jax.random.normal(kk, (1, 2, s, d)) * 2 + 0.5
    v = jax.random.normal(kv, (1, 2, s, d))
    slots = jnp.arange(s)
    ref_s, dp_s = LN.scores(q, k, slots), ln.scores(q, k, slots)
    np.testing.assert_allclose(dp_s, ref_s, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(dp_s, ref_s)  # the BF16 product rounding shows
    mask = np.asarray(KV.key_mask(slots, s))  # keys read in full precision: identical
    np.testing.assert_array_equal(np.asarray(dp_s)[..., ~mask], np.asarray(ref_s)[..., ~mask])
    p = jax.nn.softmax(ref_s, -1)
    np.testing.assert_allclose(ln.context(p, v, slots), LN.context(p, v, slots),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("preset,tokens,slots", [
    ("mugi", 64, 64), ("mugi", 192, 192), ("mugi", 200, 200), ("mugi", 512, 512),
    ("mugi", 640, 640), ("mugi-exact", 320, 320), ("mugi-asym", 256, 256), ("mugi", 192, 320)])
def test_causal_products_keep_the_bits(preset, tokens, slots):
    """Queries at slots 0 .. T-1 (perplexity evaluation, or a prefill into an empty cache of
    ``slots`` slots): the attention GEMMs skip the keys after each chunk of queries and KIVI's
    full-precision products run on the band of slots each query reads in full precision: every
    score a query reads, every probability and every context row have the bits of the whole
    products.  Lengths: one chunk (64), several chunks (192, 256, 320, 512), off the 64-slot
    grid (200: the whole key product), past 512 slots (640: the whole full-precision context
    product), more slots than queries (192 of 320)."""
    policy = numerics.preset(preset)
    op = lambda name, kind: policy.op(f"layers.0.attn.{name}", kind)  # noqa: E731
    qk, pv = op("scores", numerics.SCORES), op("context", numerics.CONTEXT)
    kv, softmax = op("kv_cache", numerics.KV_CACHE), op("softmax", numerics.SOFTMAX)
    rng = np.random.default_rng(tokens)
    group, d = 2, 64
    q = jnp.asarray(rng.standard_normal((1, 1, group * tokens, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, slots, d)) * 2 + 0.3, jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 1, slots, d)), jnp.float32)
    rows = jnp.tile(jnp.arange(tokens, dtype=jnp.int32), group)
    causal = jnp.arange(slots)[None] <= rows[:, None]

    @functools.partial(jax.jit, static_argnums=0)
    def attend(skip, q, k, v):
        s = jnp.where(causal, qk.scores(q, k, kv, rows, causal=skip) * 0.125, -jnp.inf)
        p = softmax.softmax(s, axis=-1, tokens=tokens)
        return s, p, pv.context(p, v, kv, rows, causal=skip)

    for whole, skipped in zip(attend(None, q, k, v), attend(tokens, q, k, v)):
        np.testing.assert_array_equal(np.asarray(skipped), np.asarray(whole))


def _one_layer_model(dim: int, n_heads: int, seed: int):
    """A one-layer random decoder with SmolLM2's head size (64) and one KV head."""
    from flax import nnx

    from mugi_jax.models import Llama
    from mugi_jax.models.config import LlamaConfig

    cfg = LlamaConfig(vocab_size=97, dim=dim, n_layers=1, n_heads=n_heads, n_kv_heads=1,
                      head_dim=64, ffn_dim=128, rope_theta=10000.0, norm_eps=1e-5,
                      tie_embeddings=True, max_seq_len=1024, bos_id=1, eos_id=2)
    return cfg, Llama(cfg, rngs=nnx.Rngs(seed))


def test_uncached_and_cached_mugi_forwards_agree():
    """End to end under ``mugi``: perplexity evaluation's uncached forward (causal skipping,
    full-precision bands), a prefill into an empty cache with more slots (the same skipping,
    picked at run time: the first slot is traced) and a prefill in two calls (the second starts
    at slot 64: whole products) give the same logits, bit for bit."""
    cfg, model = _one_layer_model(dim=128, n_heads=2, seed=3)
    toks = jax.random.randint(jax.random.key(2), (1, 192), 3, cfg.vocab_size)
    full = np.asarray(forward(model, toks, "mugi")[0])
    once = np.asarray(forward(model, toks, "mugi", cache=Cache.init(cfg, 1, 256))[0])
    first, cache = forward(model, toks[:, :64], "mugi", cache=Cache.init(cfg, 1, 192))
    rest, _ = forward(model, toks[:, 64:], "mugi", cache=cache)
    np.testing.assert_array_equal(once, full)
    np.testing.assert_array_equal(np.concatenate([first, rest], 1), full)


def test_prefill_into_a_larger_cache_off_the_grid_keeps_the_bits():
    """A prefill of 512 tokens into an empty cache of 520 slots (off the 64-slot grid: a
    prompt plus 8 new tokens) against the uncached forward, bit for bit.  Until the causal
    path read only the prompt's slots, its products ran over all 520 slots (the key groups:
    544), and XLA:CPU's dots give other bits with another key count (806,701 of the scores of
    SmolLM2's first layer a last bit apart); the BF16 roundings and INT4 codes those flipped
    moved SmolLM2's logits by up to 2.4, and this tiny model's by up to 0.0072."""
    cfg, model = _one_layer_model(dim=96, n_heads=3, seed=1)
    toks = jax.random.randint(jax.random.key(1), (1, 512), 3, cfg.vocab_size)
    full = np.asarray(forward(model, toks, "mugi")[0])
    once, cache = forward(model, toks, "mugi", cache=Cache.init(cfg, 1, 520))
    np.testing.assert_array_equal(np.asarray(once), full)
    assert int(cache.index) == 512 and not bool(cache.valid[0, 512:].any())
