"""The numerics Policy: presets, per-layer overrides, op implementations, missing kernels."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import nonlinear as nl
from mugi_jax import numerics


def test_presets_and_unknown_name():
    assert set(numerics.PRESETS) == {"exact", "nonlinear-only", "pwl", "taylor", "mugi-l", "mugi",
                                     "mugi-exact", "mugi-asym"}
    with pytest.raises(ValueError, match="exact, nonlinear-only, pwl, taylor, mugi-l, mugi, mugi-exact"):
        numerics.preset("fp8")
    for name in numerics.PRESETS:
        p = numerics.preset(name)
        assert p.name == name
        hash(p)  # static jit argument
        assert jax.tree_util.tree_leaves(p) == []  # no arrays: configuration only
    assert numerics.preset(numerics.EXACT) is numerics.EXACT
    d = numerics.preset("mugi").default.describe()
    assert d["kv"].startswith("int4") and "Mugi" in d["proj"]


def test_numerics_imports_its_kernels_directly():
    import inspect

    assert "importlib" not in inspect.getsource(numerics)


def test_rules_first_match_full_match_and_kind():
    vlp = numerics.Nonlinear(nl.VLPConfig(), bf16_input=True)
    bf = numerics.Gemm(bf16_activations=True)
    pol = numerics.Policy("t", (numerics.Rule(r"layers\.1\..*", bf),
                                numerics.Rule(r"layers\.1\..*", vlp),
                                numerics.Rule(r".*softmax", numerics.Nonlinear(nl.PWL()))))
    # first applicable rule wins; a Gemm does not apply to a softmax op, so the next rule does
    assert pol.op("layers.1.attn.q_proj", numerics.LINEAR) is bf
    assert pol.op("layers.1.attn.softmax", numerics.SOFTMAX) is vlp
    assert pol.op("layers.2.attn.softmax", numerics.SOFTMAX).approx == nl.PWL()
    # full match: "layers.1" alone does not match "layers.1.attn.q_proj"; no rule -> exact
    pol2 = numerics.Policy("t", (numerics.Rule(r"layers\.1", bf),))
    assert pol2.op("layers.1.attn.q_proj", numerics.LINEAR) == numerics.Gemm()
    assert pol2.op("layers.1.attn.kv_cache", numerics.KV_CACHE) == numerics.KVCache()
    with pytest.raises(ValueError, match="kind"):
        pol.op("lm_head", "conv")
    with pytest.raises(ValueError, match="not a regular expression"):
        numerics.Rule("layers.(", bf)


@pytest.fixture(scope="module")
def tiny_model():
    from flax import nnx

    from mugi_jax.models import Llama
    from mugi_jax.models.config import LlamaConfig

    cfg = LlamaConfig(vocab_size=101, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      ffn_dim=48, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                      max_seq_len=64, bos_id=1, eos_id=2)
    return Llama(cfg, rngs=nnx.Rngs(0))


def test_nested_policy_override_and_describe(tiny_model):
    mugi = numerics.preset("mugi")
    pol = numerics.with_overrides("mugi", ["lm_head=exact", r"layers\.0\..*=nonlinear-only"])
    assert pol.name == r"mugi[lm_head=exact, layers\.0\..*=nonlinear-only]"
    assert pol.op("lm_head", numerics.LINEAR) == numerics.Gemm()
    assert pol.op("layers.0.attn.q_proj", numerics.LINEAR) == numerics.Gemm()
    assert pol.op("layers.0.mlp.act", numerics.ACTIVATION) == mugi.op("layers.0.mlp.act", "activation")
    assert pol.op("layers.1.attn.q_proj", numerics.LINEAR) == mugi.op("layers.1.attn.q_proj", "linear")
    d = pol.describe(tiny_model)
    assert list(d) == [p for p, _ in tiny_model.numerics_ops()]
    assert d["lm_head"] == "linear: fp32" and d["layers.1.mlp.act"] == "activation: VLPConfig"
    assert d["layers.1.attn.kv_cache"].startswith("kv_cache: int4")
    pol.check(tiny_model)
    bad = numerics.with_overrides("exact", [r"layer\.0\..*=mugi"])
    with pytest.raises(ValueError, match=re.escape(r"'layer\.0\..*' match no op")):
        bad.check(tiny_model)
    for text, msg in (("lm_head", "PATTERN=PRESET"), ("lm_head=fp8", "fp8"),
                      ("(=exact", "regular expression")):
        with pytest.raises(ValueError, match=msg):
            numerics.parse_override(text)


def test_per_layer_override():
    ln = numerics.LayerNumerics(proj=numerics.Gemm(bf16_activations=True))
    p = numerics.EXACT.with_layer(3, ln)
    assert p.layer(3) == ln and p.layer(2) == numerics.LayerNumerics()


def test_fit_group():
    assert numerics.fit_group(128, 1536) == 128
    assert numerics.fit_group(128, 576) == 64
    assert numerics.fit_group(None, 576) is None
    w = jax.random.normal(jax.random.key(0), (576, 16))
    gemm = numerics.preset("mugi").default.proj
    g128 = dataclasses.replace(gemm, weight_scheme=dataclasses.replace(gemm.weight_scheme,
                                                                       group_size=128))
    q = g128.prepare_weight(w)
    assert q.group_size == 64 and q.codes.shape == (576, 16)


def test_bf16_input_rounding():
    x = jax.random.normal(jax.random.key(1), (4, 33)) * 3
    nl = numerics.Nonlinear(approx=None, bf16_input=True)
    np.testing.assert_array_equal(nl.silu(x), jax.nn.silu(x.astype(jnp.bfloat16).astype(jnp.float32)))
    np.testing.assert_array_equal(numerics.Nonlinear().softmax(x), jax.nn.softmax(x))


def test_vlp_softmax_close_to_exact_and_masked_zero():
    x = jax.random.normal(jax.random.key(2), (3, 16)) * 2
    x = x.at[:, -4:].set(-jnp.inf)
    p = numerics.preset("nonlinear-only").default.softmax(x)
    assert p.dtype == jnp.float32
    np.testing.assert_array_equal(p[:, -4:], 0.0)
    np.testing.assert_allclose(p, jax.nn.softmax(x), atol=0.03)


def test_mugi_gemms_close_to_dequantized_reference():
    quant = pytest.importorskip("mugi_jax.quant")
    gemm = pytest.importorskip("mugi_jax.gemm")
    mugi = numerics.preset("mugi").default
    # the preset's attention products are FP32 on the INT4 cache; put them on the datapath here
    # an attention datapath reads a per-token cache (the preset's KIVI layout is FP attention)
    ln = numerics.LayerNumerics(proj=mugi.proj, kv=numerics.KVCache(scheme=mugi.kv.scheme),
                                attn=numerics.Gemm(datapath=gemm.Mugi(), bf16_activations=True))
    assert ln.kv_store(jnp.ones((2, 3))) is not None
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(k1, (5, 128))
    w = jax.random.normal(k2, (128, 24)) * 0.1
    wq = ln.prepare_weight(w)
    ref = x.astype(jnp.bfloat16).astype(jnp.float32) @ quant.dequantize(wq)
    np.testing.assert_allclose(ln.linear(x, wq), ref, atol=0.05, rtol=0.02)
    # attention operands: K/V quantized per token on use
    q = jax.random.normal(k1, (2, 3, 6, 16))
    kv = jax.random.normal(k3, (2, 3, 10, 16))
    kd = quant.dequantize(quant.quantize_kv(kv, ln.kv.scheme, "per_token"))
    s = ln.scores(q, kv)
    s_ref = jnp.einsum("bhmd,bhsd->bhms", q.astype(jnp.bfloat16).astype(jnp.float32), kd)
    np.testing.assert_allclose(s, s_ref, atol=0.1, rtol=0.02)
    p = jax.nn.softmax(s)
    o = ln.context(p, kv)
    o_ref = jnp.einsum("bhms,bhsd->bhmd", p.astype(jnp.bfloat16).astype(jnp.float32), kd)
    np.testing.assert_allclose(o, o_ref, atol=0.05, rtol=0.02)


# ---- per-family VLP windows (mugi_jax/data/vlp_windows.json, python -m mugi_jax.tune.windows)


@pytest.fixture
def records_file(tmp_path, monkeypatch):
    path = tmp_path / "vlp_windows.json"
    path.write_text(json.dumps({"records": [
        {"family": "gemma3", "activation": "gelu_tanh", "softmax": {"e_top": 1},
         "gelu_tanh": {"e_top": 4}}]}))
    monkeypatch.setattr(numerics, "VLP_WINDOWS_FILE", path)
    numerics._window_records.cache_clear()
    yield path
    numerics._window_records.cache_clear()


def test_presets_take_the_familys_windows(records_file):
    sm, act = numerics.vlp_windows("gemma3")
    assert (sm.e_top, act.e_top) == (1, 4)
    assert sm == dataclasses.replace(nl.VLPConfig(), e_top=1)  # only e_top differs
    assert numerics.vlp_windows("llama") == (nl.VLPConfig(), nl.VLPConfig())  # no record
    assert numerics.vlp_windows(None) == (nl.VLPConfig(), nl.VLPConfig())
    for name in ("nonlinear-only", "mugi-l", "mugi", "mugi-asym"):
        pol = numerics.preset(name, "gemma3")
        got = [pol.op("layers.0.attn.softmax", numerics.SOFTMAX).approx,
               pol.op("layers.5.mlp.act", numerics.ACTIVATION).approx]
        got = [getattr(a, "config", a).e_top for a in got]  # MugiL wraps a VLPConfig
        assert got == [1, 4], name
        assert numerics.preset(name).op("layers.0.mlp.act", numerics.ACTIVATION) \
            .approx in (nl.VLPConfig(), nl.MugiL())  # without a family: the defaults
    assert numerics.preset("pwl", "gemma3") == numerics.preset("pwl")  # not a VLP preset
    # overrides resolve their presets with the family too
    pol = numerics.with_overrides("exact", ["layers\\.0\\..*=nonlinear-only"], "gemma3")
    assert pol.op("layers.0.mlp.act", numerics.ACTIVATION).approx.e_top == 4


def test_model_entry_points_resolve_names_with_the_models_family(records_file, tiny_model):
    """A preset *name* given with a model (forward, perplexity, Sampler) uses the model's
    family; the tiny Llama has no record, a Gemma-family config has one."""
    import jax.numpy as jnp
    from flax import nnx

    from mugi_jax.models import Llama, forward
    from mugi_jax.models.config import LlamaConfig

    ids = jnp.arange(1, 17)[None]
    base = forward(tiny_model, ids, "nonlinear-only")[0]
    gemma_cfg = dataclasses.replace(tiny_model.config, family="gemma3")
    gm = Llama(gemma_cfg, rngs=nnx.Rngs(0))  # same weights, another family key
    assert isinstance(gemma_cfg, LlamaConfig)
    got = forward(gm, ids, "nonlinear-only")[0]
    want = forward(gm, ids, numerics.preset("nonlinear-only", "gemma3"))[0]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(base))
