"""The attention softmax's VLP window groups never span query tokens, so a decoder under VLP
numerics stays causal and its cached and uncached paths agree.

A VLP window is shared by the rows of a group at one key column (the mapping puts attention rows
on array rows).  The group is the query heads of one token (what a decode step puts on the
array); when it also held later tokens' rows (the old head-major ``(group x T)`` layout, groups of
256 rows), a token's window - hence its output - depended on the tokens after it, and the
uncached path (each step re-runs every earlier token next to new ones) diverged from the cached
one (seen on Gemma 3 270M under its calibrated softmax window, e_top 2).  Tiny random models; a
narrow stored range (e_top 3 on these small scores) makes the windows matter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mugi_jax import nonlinear as nl, numerics
from mugi_jax.models import Cache, Llama, LlamaConfig
from mugi_jax.models.config import gemma3_layer_types

BASE = dict(vocab_size=101, dim=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48,
            norm_eps=1e-5, max_seq_len=64, bos_id=1, eos_id=2, rope_theta=1e4)
CONFIGS = {
    "llama": LlamaConfig(n_layers=2, **BASE),
    "gemma": LlamaConfig(**{**BASE, "n_layers": 3}, family="gemma3", activation="gelu_tanh",
                         rope_layout="half", qk_norm=True, post_norms=True,
                         embed_scale=32 ** 0.5, rope_theta_local=1e4, sliding_window=3,
                         layer_types=gemma3_layer_types(3, 2)),
}
# FP32 GEMMs of different row counts round differently (~1e-7); a shared window moved logits
# by ~1e-2 here
TOL = 1e-5


def _softmax_policy(e_top: int) -> numerics.Policy:
    unit = numerics.Nonlinear(nl.VLPConfig(e_top=e_top), bf16_input=True)
    return numerics.Policy(f"vlp-softmax-e{e_top}", (numerics.Rule(r".*\.attn\.softmax", unit),))


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def _run(graphdef, state, tokens, policy, cache=None):
    return nnx.merge(graphdef, state)(tokens, policy, cache=cache)


@pytest.mark.parametrize("family,e_top", [("llama", 3), ("gemma", 3)])
def test_prefix_logits_do_not_depend_on_later_tokens(family, e_top):
    cfg = CONFIGS[family]
    graphdef, state = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))
    policy = _softmax_policy(e_top)
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, cfg.vocab_size)
    full = np.asarray(_run(graphdef, state, tokens, policy)[0])
    prefix = np.asarray(_run(graphdef, state, tokens[:, :23], policy)[0])
    np.testing.assert_allclose(prefix, full[:, :23], rtol=0, atol=TOL)


def test_decode_steps_equal_the_full_forward():
    """Prefill + one-token decode steps reproduce the uncached forward's last-position logits."""
    cfg = CONFIGS["gemma"]
    graphdef, state = nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))
    policy = _softmax_policy(3)
    tokens = jax.random.randint(jax.random.key(2), (1, 30), 0, cfg.vocab_size)
    full = np.asarray(_run(graphdef, state, tokens, policy)[0])
    _, cache = _run(graphdef, state, tokens[:, :26], policy, Cache.init(cfg, 1, 32))
    for i in range(26, 30):
        step, cache = _run(graphdef, state, tokens[:, i:i + 1], policy, cache)
        np.testing.assert_allclose(np.asarray(step[:, -1]), full[:, i], rtol=0, atol=TOL)


def test_softmax_tokens_groups_each_tokens_rows():
    """``nl.softmax(x, tokens=T)`` on head-major ``(heads x T)`` rows equals the softmax of the
    token-major ``(T, heads)`` view (one window group per token), which differs from grouping
    the head-major rows; PWL ignores it; a bad ``tokens`` is refused."""
    heads, t, s = 3, 5, 16
    x = jax.random.normal(jax.random.key(3), (2, heads * t, s)) * jnp.geomspace(0.02, 2.0, heads * t)[:, None]
    x = x.at[:, :, -3:].set(-np.inf)
    cfg = nl.VLPConfig(e_top=2)
    got = np.asarray(nl.softmax(x, approx=cfg, tokens=t))
    per_token = x.reshape(2, heads, t, s).transpose(0, 2, 1, 3)  # (2, T, heads, s): groups = heads
    want = np.asarray(nl.softmax(per_token, approx=cfg)).transpose(0, 2, 1, 3).reshape(x.shape)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, np.asarray(nl.softmax(x, approx=cfg)))
    np.testing.assert_array_equal(np.asarray(nl.softmax(x, approx=nl.PWL(), tokens=t)),
                                  np.asarray(nl.softmax(x, approx=nl.PWL())))
    with pytest.raises(ValueError, match="tokens"):
        nl.softmax(x, approx=cfg, tokens=4)
