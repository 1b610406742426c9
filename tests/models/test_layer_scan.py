"""The layer scan (``lax.scan`` over the decoder layers) against the unrolled loop: bit for bit on
tiny random Llama / Qwen configs, under exact and Mugi numerics, with and without a KV cache, and
the cases that must stay unrolled (Gemma 3's layout, a rule for one layer)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mugi_jax import numerics
from mugi_jax.models import Cache, Llama, LlamaConfig, prepare
from mugi_jax.models.config import gemma3_layer_types
from mugi_jax.models.llama import scan_layout

BASE = dict(vocab_size=101, dim=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48,
            norm_eps=1e-5, max_seq_len=64, bos_id=1, eos_id=2)
CONFIGS = {
    # 4 layers: period 1, 4 groups
    "llama": LlamaConfig(n_layers=4, rope_theta=10000.0, tie_embeddings=False,
                         rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                                       ("low_freq_factor", 1.0),
                                       ("original_max_position_embeddings", 16),
                                       ("rope_type", "llama3")), **BASE),
    "qwen": LlamaConfig(n_layers=3, rope_theta=1e6, family="qwen2", qkv_bias=True,
                        rope_layout="half", **BASE),
    # sliding, full, sliding, full, sliding: not uniform, so unrolled (see scan_layout)
    "gemma": LlamaConfig(n_layers=5, rope_theta=1e6, rope_theta_local=1e4, family="gemma3",
                         activation="gelu_tanh", rope_layout="half", qk_norm=True,
                         post_norms=True, embed_scale=32 ** 0.5, query_scale=24 ** -0.5,
                         sliding_window=3, layer_types=gemma3_layer_types(5, 2), **BASE),
}


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "scan"))
def _run(graphdef, state, tokens, policy, scan, cache=None):
    return nnx.merge(graphdef, state)(tokens, policy, cache=cache, scan=scan)


def _both(model, tokens, policy, cache=None):
    graphdef, state = nnx.split(model)
    return [_run(graphdef, state, tokens, policy, scan, cache) for scan in (True, False)]


@pytest.mark.parametrize("family,policy", [
    ("llama", "exact"), ("qwen", "exact"), ("qwen", "mugi")])
def test_scan_is_bit_identical_to_the_unrolled_loop(family, policy):
    cfg = CONFIGS[family]
    policy = numerics.preset(policy)
    model = prepare(Llama(cfg, rngs=nnx.Rngs(0)), policy)
    assert model.layer_stack(policy) is not None
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
    (scanned, _), (unrolled, _) = _both(model, tokens, policy)
    np.testing.assert_array_equal(scanned, unrolled)

    # cached: a prefill, a chunk of as many tokens (scanned, reading the cache), then a decode
    # step (unrolled in both; exact only, to keep the test short); logits and the cache itself.
    # Prefill and chunk have one shape (the cache's write index is traced), so each path
    # compiles its cached program once for both.
    caches = [Cache.init(cfg, 2, 12)] * 2
    parts = (tokens[:, :4], tokens[:, 4:8]) + ((tokens[:, 8:9],) if policy.name == "exact" else ())
    for part in parts:
        graphdef, state = nnx.split(model)
        outs = [_run(graphdef, state, part, policy, scan, c) for scan, c in zip((True, False), caches)]
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        for a, b in zip(jax.tree_util.tree_leaves(outs[0][1]), jax.tree_util.tree_leaves(outs[1][1])):
            np.testing.assert_array_equal(a, b)
        caches = [o[1] for o in outs]


def test_generation_is_unchanged_by_the_scan():
    """The sampler (a scanned prefill, unrolled decode steps) gives the tokens of the unrolled
    model's step-by-step cached decoding."""
    from mugi_jax.models.generate import Sampler

    cfg = CONFIGS["llama"]
    model = Llama(cfg, rngs=nnx.Rngs(2))
    prompt = [[5, 9, 11, 40], [7, 3]]
    got = Sampler(model, policy="exact")(prompt, max_new_tokens=5).tokens
    policy = numerics.EXACT
    ready = prepare(model, policy)
    graphdef, state = nnx.split(ready)
    toks = np.array([[5, 9, 11, 40], [0, 0, 7, 3]], np.int32)
    valid = toks != 0
    cache = Cache.init(cfg, 2, 9)
    logits, cache = jax.jit(lambda s, t, v, c: nnx.merge(graphdef, s)(
        t, policy, cache=c, valid=v, scan=False))(state, toks, valid, cache)
    want = []
    step = jax.jit(lambda s, t, c: nnx.merge(graphdef, s)(t, policy, cache=c, scan=False))
    for _ in range(5):
        tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        want.append(np.asarray(tok))
        logits, cache = step(state, tok[:, None], cache)
    np.testing.assert_array_equal(got, np.stack(want, axis=1))


def test_period_follows_the_attention_layout():
    assert scan_layout(CONFIGS["llama"], numerics.EXACT) == (0, 1, 4)
    # Gemma 3 (embedding scale; sliding/global period) and its layout alone stay unrolled
    assert scan_layout(CONFIGS["gemma"], numerics.EXACT) is None
    gemma26 = LlamaConfig(**{**BASE, "n_layers": 26}, rope_theta_local=1e4, sliding_window=3,
                          layer_types=gemma3_layer_types(26))
    assert scan_layout(gemma26, numerics.EXACT) is None
    gemma3 = Llama(CONFIGS["gemma"], rngs=nnx.Rngs(0))
    assert gemma3.layer_stack(numerics.EXACT) is None
    # fewer than two whole periods: nothing to scan
    assert scan_layout(LlamaConfig(**{**BASE, "n_layers": 1}), numerics.EXACT) is None


def test_a_rule_for_one_layer_keeps_the_unrolled_loop():
    cfg = CONFIGS["llama"]
    policy = numerics.with_overrides("exact", ["layers.2.mlp.act=mugi"])
    assert scan_layout(cfg, policy) is None
    model = Llama(cfg, rngs=nnx.Rngs(0))
    assert model.layer_stack(policy) is None
    tokens = jax.random.randint(jax.random.key(3), (1, 6), 0, cfg.vocab_size)
    (a, _), (b, _) = _both(model, tokens, policy)
    np.testing.assert_array_equal(a, b)
    # the same rule on every layer is uniform again
    assert scan_layout(cfg, numerics.with_overrides("exact", [r"layers\.\d+\.mlp\.act=mugi"])) == (0, 1, 4)
