"""Activation capture on a tiny random model."""

from __future__ import annotations

import jax
import numpy as np

from mugi_jax.models import capture_activations, forward


def test_histograms_cover_every_op(tiny_model, tiny_config):
    toks = jax.random.randint(jax.random.key(0), (2, 6), 0, tiny_config.vocab_size)
    logits, rec = capture_activations(tiny_model, toks)
    np.testing.assert_allclose(logits, forward(tiny_model, toks)[0], atol=1e-5)
    ops = ["q_proj", "k_proj", "v_proj", "qk", "softmax", "pv", "o_proj", "gate_proj", "up_proj",
           "silu", "down_proj"]
    expected = {f"layers.{i}.{op}" for i in range(tiny_config.n_layers) for op in ops} | {"lm_head"}
    assert set(rec) == expected
    r = rec["layers.0.gate_proj"]
    assert r["kind"] == "gemm" and int(r["count"]) == 2 * 6 * tiny_config.dim
    assert int(np.sum(r["exp_hist"])) == int(r["count"]) == int(np.sum(r["mant_hist"]))
    sm = rec["layers.1.softmax"]
    assert sm["kind"] == "nonlinear"
    # masked scores (-inf) land in the inf/NaN exponent bin: 2 rows x heads x (6*5/2) masked pairs
    assert int(sm["exp_hist"][255]) == 2 * tiny_config.n_heads * 15


def test_full_mode_records_inputs(tiny_model, tiny_config):
    toks = jax.random.randint(jax.random.key(0), (1, 5), 0, tiny_config.vocab_size)
    _, rec = capture_activations(tiny_model, toks, mode="full", include=("silu",))
    assert set(rec) == {f"layers.{i}.silu" for i in range(tiny_config.n_layers)}
    assert rec["layers.0.silu"].shape == (1, 5, tiny_config.ffn_dim)
