"""Sampler on a tiny random model: cached == uncached, determinism, sampling, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mugi_jax.models import Sampler

PROMPTS = [[5, 9, 30, 7], [11, 3]]


def test_greedy_cached_equals_uncached(tiny_model):
    s = Sampler(tiny_model)
    a = s(PROMPTS, max_new_tokens=10)
    b = s(PROMPTS, max_new_tokens=10, use_cache=False)
    assert a.tokens.shape == (2, 10)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens, s(PROMPTS, max_new_tokens=10).tokens)
    assert a.text is None and a.prompt_lengths == [4, 2]


def test_sampling_is_deterministic_given_the_key(tiny_model):
    s = Sampler(tiny_model)
    k = jax.random.key(7)
    a = s(PROMPTS, 12, temperature=1.0, top_k=20, key=k)
    b = s(PROMPTS, 12, temperature=1.0, top_k=20, key=k)
    c = s(PROMPTS, 12, temperature=1.0, top_k=20, key=jax.random.key(8))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    # top_k=1 is greedy whatever the temperature; cached == uncached with sampling too
    g = s(PROMPTS, 6)
    np.testing.assert_array_equal(s(PROMPTS, 6, temperature=0.7, top_k=1, key=k).tokens, g.tokens)
    np.testing.assert_array_equal(
        s(PROMPTS, 6, temperature=1.0, key=k).tokens,
        s(PROMPTS, 6, temperature=1.0, key=k, use_cache=False).tokens)


def test_stop_at_eos_pads_with_eos(tiny_model, tiny_config):
    s = Sampler(tiny_model)
    out = s(PROMPTS, 20, temperature=1.5, key=jax.random.key(0), stop_at_eos=True).tokens
    for row in out:
        hits = np.flatnonzero(row == tiny_config.eos_id)
        if hits.size:
            assert (row[hits[0]:] == tiny_config.eos_id).all()


def test_bad_input(tiny_model, tiny_config):
    s = Sampler(tiny_model)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        s([[3] * 60], max_new_tokens=10)
    with pytest.raises(ValueError, match="PRNG key"):
        s(PROMPTS, 4, temperature=1.0)
    with pytest.raises(ValueError, match="tokenizer"):
        s(["hello"], 4)
    with pytest.raises(ValueError, match="at least one token"):
        s([[]], 4)


@pytest.mark.parametrize("preset", ["exact", "mugi"])
def test_prefill_head_on_the_last_position(tiny_model, preset):
    """``last_only=True`` (a generation's prefill) computes the LM head on the last position
    only: the same cache bit for bit, and the last row's logits up to the head GEMM's
    accumulation order (XLA:CPU's dot sums in another order on one row than on many)."""
    import jax.numpy as jnp

    from mugi_jax import numerics
    from mugi_jax.models import prepare
    from mugi_jax.models.llama import Cache

    policy = numerics.preset(preset)
    model = prepare(tiny_model, policy)
    tokens = jnp.asarray(np.arange(3, 3 + 2 * 40).reshape(2, 40) % 97, jnp.int32)
    valid = jnp.asarray(np.arange(40)[None] >= np.array([[0], [7]]))
    full, c_full = model(tokens, policy, cache=Cache.init(model.config, 2, 48), valid=valid)
    last, c_last = model(tokens, policy, cache=Cache.init(model.config, 2, 48), valid=valid,
                         last_only=True)
    assert last.shape == (2, 1, full.shape[-1])
    for a, b in zip(jax.tree_util.tree_leaves(c_full), jax.tree_util.tree_leaves(c_last)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(full[:, -1]), rtol=1e-5,
                               atol=1e-5 * float(np.abs(np.asarray(full)).max()))
