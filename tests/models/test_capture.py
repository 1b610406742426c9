"""Activation capture on a tiny random model."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from mugi_jax.models import capture_activations, forward


def test_histograms_cover_every_op(tiny_model, tiny_config):
    toks = jax.random.randint(jax.random.key(0), (2, 6), 0, tiny_config.vocab_size)
    logits, rec = capture_activations(tiny_model, toks)
    np.testing.assert_allclose(logits, forward(tiny_model, toks)[0], atol=1e-5)
    expected = {p for p, kind in tiny_model.numerics_ops() if kind != "kv_cache"}
    assert set(rec) == expected and len(expected) == 11 * tiny_config.n_layers + 1
    r = rec["layers.0.mlp.gate_proj"]
    assert r["kind"] == "linear" and int(r["count"]) == 2 * 6 * tiny_config.dim
    assert int(np.sum(r["exp_hist"])) == int(r["count"]) == int(np.sum(r["mant_hist"]))
    sm = rec["layers.1.attn.softmax"]
    assert sm["kind"] == "softmax"
    # masked scores (-inf) land in the inf/NaN exponent bin: 2 rows x heads x (6*5/2) masked pairs
    assert int(sm["exp_hist"][255]) == 2 * tiny_config.n_heads * 15


def test_full_mode_records_inputs(tiny_model, tiny_config):
    toks = jax.random.randint(jax.random.key(0), (1, 5), 0, tiny_config.vocab_size)
    _, rec = capture_activations(tiny_model, toks, mode="full", include=("mlp.act",))
    assert set(rec) == {f"layers.{i}.mlp.act" for i in range(tiny_config.n_layers)}
    assert rec["layers.0.mlp.act"].shape == (1, 5, tiny_config.ffn_dim)


def test_capture_is_a_rule_and_keeps_numerics(tiny_model, tiny_config):
    """A Capture rule on some ops records exactly those and leaves the logits bit-identical."""
    from mugi_jax import numerics
    from mugi_jax.models.capture import Capture, Recorder

    toks = jax.random.randint(jax.random.key(1), (1, 7), 0, tiny_config.vocab_size)
    mugi = numerics.preset("mugi")
    rec = Recorder(mode="full")
    pol = mugi.prepend(numerics.Rule(r"layers\.1\.attn\.(softmax|scores)", Capture(mugi, rec)))
    graphdef, state = nnx.split(tiny_model)
    out = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t, pol)[0])(state, toks)
    np.testing.assert_array_equal(out, forward(tiny_model, toks, mugi)[0])
    assert set(rec.records) == {"layers.1.attn.softmax", "layers.1.attn.scores"}
    assert rec.records["layers.1.attn.softmax"].shape[-1] == 7
