"""The Llama model on a tiny random config: cache, padding, prepare, jit, determinism."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mugi_jax import numerics
from mugi_jax.models import Cache, Llama, LlamaConfig, forward, prepare


def _tokens(b, t, seed=1, vocab=101):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


def test_cached_prefill_and_decode_equal_uncached(tiny_model, tiny_config):
    toks = _tokens(2, 12)
    full, _ = forward(tiny_model, toks)
    cache = Cache.init(tiny_config, 2, 16)
    a, cache = forward(tiny_model, toks[:, :7], cache=cache)
    parts = [a]
    for i in range(7, 12):
        b, cache = forward(tiny_model, toks[:, i:i + 1], cache=cache)
        parts.append(b)
    np.testing.assert_allclose(np.concatenate(parts, 1), full, atol=1e-5)
    assert int(cache.index) == 12


def test_cache_rows_hold_each_rows_and_heads_keys(tiny_model, tiny_config):
    """Layer 0's cache after a prefill and two decode steps holds, at row ``b * kv_heads + h``
    and slot ``s``, the RoPE'd key / the value of batch row ``b``, KV head ``h``, token ``s``,
    computed here from the weights (embedding, norm, projection, rotation) for each token."""
    from mugi_jax.models.llama import rope

    cfg = tiny_config
    toks = _tokens(2, 9, seed=3)
    cache = Cache.init(cfg, 2, 12)
    _, cache = forward(tiny_model, toks[:, :7], cache=cache)
    for i in (7, 8):
        _, cache = forward(tiny_model, toks[:, i:i + 1], cache=cache)
    assert len(cache.k) == cfg.n_layers and cache.slots == 12
    assert cache.k[0].shape == (2 * cfg.n_kv_heads, 12, cfg.head_dim)
    block = tiny_model.layers[0]
    h = block.attn_norm(jnp.take(tiny_model.embed[...], toks, axis=0))
    k = (h @ block.attn.k_proj.kernel[...]).reshape(2, 9, cfg.n_kv_heads, cfg.head_dim)
    v = (h @ block.attn.v_proj.kernel[...]).reshape(2, 9, cfg.n_kv_heads, cfg.head_dim)
    k = rope(k, jnp.broadcast_to(jnp.arange(9), (2, 9)), cfg.rope_theta, cfg.rope_layout)
    for b in range(2):
        for hd in range(cfg.n_kv_heads):
            row = b * cfg.n_kv_heads + hd
            np.testing.assert_allclose(cache.k[0][row, :9], k[b, :, hd], atol=1e-5)
            np.testing.assert_allclose(cache.v[0][row, :9], v[b, :, hd], atol=1e-5)
            assert not np.asarray(cache.k[0][row, 9:]).any()  # free slots untouched


def test_left_padding_does_not_change_logits(tiny_model):
    toks = _tokens(1, 6)
    ref, _ = forward(tiny_model, toks)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), toks], axis=1)
    valid = jnp.concatenate([jnp.zeros((1, 3), bool), jnp.ones((1, 6), bool)], axis=1)
    out, _ = forward(tiny_model, padded, valid=valid)
    np.testing.assert_allclose(out[:, 3:], ref, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()  # padded queries attend to themselves: no NaN


def test_deterministic_and_jit_matches_eager(tiny_model):
    toks = _tokens(2, 5)
    a, _ = forward(tiny_model, toks)
    b, _ = forward(tiny_model, toks)
    np.testing.assert_array_equal(a, b)
    eager, _ = tiny_model(toks)
    np.testing.assert_allclose(eager, a, atol=1e-5)


def test_same_seed_same_weights(tiny_config):
    a = Llama(tiny_config, rngs=nnx.Rngs(3))
    b = Llama(tiny_config, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(a.embed[...], b.embed[...])


def test_prepare_is_equivalent_under_exact(tiny_model):
    toks = _tokens(1, 8)
    a, _ = forward(tiny_model, toks)
    b, _ = forward(prepare(tiny_model, "exact"), toks)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_prepare_is_bit_identical_under_mugi(tiny_model):
    """Prepared fast-mode weights (gemm.PreparedWeight with the BF16 terms) change nothing."""
    toks = _tokens(1, 70)  # 70 rows: the projections take the per-group dot path
    a, _ = forward(tiny_model, toks, "mugi")
    b, _ = forward(prepare(tiny_model, "mugi"), toks, "mugi")
    np.testing.assert_array_equal(a, b)


def test_untied_head(tiny_config):
    cfg = dataclasses.replace(tiny_config, tie_embeddings=False)
    m = Llama(cfg, rngs=nnx.Rngs(0))
    out, _ = forward(m, _tokens(1, 4))
    assert out.shape == (1, 4, cfg.vocab_size)


def test_per_layer_policy_changes_only_that_layer(tiny_model):
    toks = _tokens(1, 8)
    base, _ = forward(tiny_model, toks)
    # an override equal to the default changes nothing
    same = numerics.EXACT.with_layer(1, numerics.LayerNumerics())
    out, _ = forward(tiny_model, toks, same)
    np.testing.assert_array_equal(out, base)
    # a BF16 projection in layer 1 only changes the result a little
    bf = numerics.LayerNumerics(proj=numerics.Gemm(bf16_activations=True))
    pol = numerics.EXACT.with_layer(1, bf)
    assert pol.layer(0) == numerics.LayerNumerics() and pol.layer(1) == bf
    out, _ = forward(tiny_model, toks, pol)
    d = np.abs(np.asarray(out) - np.asarray(base)).max()
    assert 0 < d < 0.1


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig(n_heads=9, n_kv_heads=4)
    with pytest.raises(ValueError, match="dim"):
        LlamaConfig(dim=0)


def test_perplexity_evaluates_exactly_the_given_ids(tiny_model):
    """No BOS unless asked; with ``bos_id`` each window gets one and predicts all its tokens."""
    import math

    import jax

    from mugi_jax import eval as ev

    ids = [5, 9, 30, 7, 11, 3, 40, 41, 42, 60]

    def nll(seq, first):  # summed NLL of seq[first:] given the tokens before, one forward pass
        logp = jax.nn.log_softmax(forward(tiny_model, np.asarray([seq], np.int32))[0][0], -1)
        return -sum(float(logp[i - 1, seq[i]]) for i in range(first, len(seq)))

    plain = ev.perplexity(tiny_model, ids, context=5, max_tokens=None)
    assert plain["predicted_tokens"] == 8 and plain["bos_id"] is None
    want = (nll(ids[:5], 1) + nll(ids[5:], 1)) / 8
    assert math.isclose(plain["nll"], want, rel_tol=1e-5)
    bos = ev.perplexity(tiny_model, ids, context=5, max_tokens=None, bos_id=1)
    assert bos["predicted_tokens"] == 10
    want = (nll([1] + ids[:5], 1) + nll([1] + ids[5:], 1)) / 10
    assert math.isclose(bos["nll"], want, rel_tol=1e-5)
    with pytest.raises(ValueError, match="BOS"):
        ev.perplexity(tiny_model, ids, context=64, bos_id=1)


@pytest.mark.parametrize("preset,t", [("mugi", 96), ("mugi-asym", 96), ("mugi-exact", 8)])
def test_projections_as_one_gemm_keep_the_bits(preset, t, monkeypatch):
    """q/k/v and gate/up run as one GEMM on concatenated prepared INT4 kernels (datapath GEMMs
    compute every output column on its own): the same logits, bit for bit, as the separate
    GEMMs, on fast mode's per-group dot path (96 rows) and exact mode's sequential one."""
    from mugi_jax.models import llama

    cfg = LlamaConfig(vocab_size=97, dim=128, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=64,
                      ffn_dim=192, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                      max_seq_len=128, bos_id=1, eos_id=2, qkv_bias=True)
    model = prepare(Llama(cfg, rngs=nnx.Rngs(5)), preset)
    one_gemm, fused_calls = llama._one_gemm, []

    def counted(lins, x, policy):
        out = one_gemm(lins, x, policy)
        fused_calls.append(out is not None)
        return out

    toks = jax.random.randint(jax.random.key(t), (1, t), 3, cfg.vocab_size)
    logits = {}
    for name, fn in (("fused", counted), ("apart", lambda *a: None)):
        monkeypatch.setattr(llama, "_one_gemm", fn)
        llama._forward.clear_cache()  # traced again with this _one_gemm
        logits[name] = np.asarray(forward(model, toks, preset)[0])
    llama._forward.clear_cache()
    assert len(fused_calls) == 2 and all(fused_calls)  # the fused path ran (q/k/v, gate/up)
    np.testing.assert_array_equal(logits["fused"], logits["apart"])
