"""Hugging Face checkpoint directories of every decoder family (Llama 3, Qwen2, Qwen3, Gemma 3):
tiny random checkpoints written here in Hugging Face layout, loaded with ``models.load(dir)``,
against a NumPy forward pass written from the Hugging Face model definitions (half-split
``rotate_half`` RoPE, Gemma's ``(1 + w)`` norms, ...; no code shared with ``mugi_jax.models``).
Gemma 3 is also checked against the GGUF loader, and cached against uncached generation across
its sliding window."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mugi_jax import models

D, HEADS, KV, FFN, VOCAB, LAYERS = 32, 4, 2, 48, 97, 3

FAMILIES = {
    "llama3": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
               "tie_word_embeddings": False, "rope_theta": 10000.0,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
              "tie_word_embeddings": True, "rope_theta": 1000000.0, "use_sliding_window": False},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
              "tie_word_embeddings": True, "rope_theta": 1000000.0, "head_dim": 16},
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
               "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 1000000.0,
               "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 24, "sliding_window": 3,
               "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
               "final_logit_softcapping": None, "attn_logit_softcapping": None,
               "head_dim": 8},
}


def _config(family, **over):
    c = {"hidden_size": D, "intermediate_size": FFN, "num_attention_heads": HEADS,
         "num_hidden_layers": LAYERS, "num_key_value_heads": KV, "rms_norm_eps": 1e-6,
         "vocab_size": VOCAB, "max_position_embeddings": 64, "bos_token_id": 2, "eos_token_id": 1,
         **FAMILIES[family]}
    c.update(over)
    return c


def _head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def _checkpoint(c, seed=0):
    rng = np.random.default_rng(seed)
    d, hd, nh, nkv = c["hidden_size"], _head_dim(c), c["num_attention_heads"], c["num_key_value_heads"]
    gemma = c["model_type"].startswith("gemma")
    norm = (lambda n: 0.1 * rng.standard_normal(n)) if gemma else (lambda n: 1 + 0.1 * rng.standard_normal(n))
    hf = {"model.embed_tokens.weight": rng.standard_normal((c["vocab_size"], d)),
          "model.norm.weight": norm(d)}
    if not c.get("tie_word_embeddings", gemma):
        hf["lm_head.weight"] = 0.3 * rng.standard_normal((c["vocab_size"], d))
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w = {"self_attn.q_proj.weight": (nh * hd, d), "self_attn.k_proj.weight": (nkv * hd, d),
             "self_attn.v_proj.weight": (nkv * hd, d), "self_attn.o_proj.weight": (d, nh * hd),
             "mlp.gate_proj.weight": (c["intermediate_size"], d),
             "mlp.up_proj.weight": (c["intermediate_size"], d),
             "mlp.down_proj.weight": (d, c["intermediate_size"])}
        for k, s in w.items():
            hf[p + k] = 0.3 * rng.standard_normal(s)
        norms = ["input_layernorm", "post_attention_layernorm"]
        if gemma:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for n in norms:
            hf[p + n + ".weight"] = norm(d)
        if c["model_type"] == "qwen2":
            for k, n in (("q", nh), ("k", nkv), ("v", nkv)):
                hf[p + f"self_attn.{k}_proj.bias"] = 0.2 * rng.standard_normal(n * hd)
        if c["model_type"] in ("qwen3", "gemma3_text"):
            hf[p + "self_attn.q_norm.weight"] = norm(hd)
            hf[p + "self_attn.k_norm.weight"] = norm(hd)
    return {k: np.asarray(v, np.float32) for k, v in hf.items()}


def _write(tmp_path, c, hf, dtype=np.float32):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps(c))
    keys = sorted(hf)
    save_file({k: hf[k].astype(dtype) for k in keys[: len(keys) // 2]},
              str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: hf[k].astype(dtype) for k in keys[len(keys) // 2:]},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    return tmp_path


def _inv_freq(c, theta, hd, scaled):
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    sc = c.get("rope_scaling") if scaled else None
    if sc and sc.get("rope_type") == "llama3":  # transformers' _compute_llama3_parameters
        old, lo, hi, f = (sc["original_max_position_embeddings"], sc["low_freq_factor"],
                          sc["high_freq_factor"], sc["factor"])
        out = []
        for v in inv:
            wl = 2 * math.pi / v
            if wl < old / hi:
                out.append(v)
            elif wl > old / lo:
                out.append(v / f)
            else:
                s = (old / wl - lo) / (hi - lo)
                out.append((1 - s) * v / f + s * v)
        inv = np.array(out)
    return inv


def _reference(c, hf, ids):
    """Hugging Face semantics in float64."""
    hf = {k: v.astype(np.float64) for k, v in hf.items()}
    gemma = c["model_type"].startswith("gemma")
    d, hd, nh, nkv = c["hidden_size"], _head_dim(c), c["num_attention_heads"], c["num_key_value_heads"]
    eps, t = c["rms_norm_eps"], len(ids)

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * ((1 + w) if gemma else w)

    def rope(v, inv):
        ang = np.arange(t)[:, None] * inv[None]
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
        return v * cos + np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], -1) * sin

    x = hf["model.embed_tokens.weight"][ids] * (math.sqrt(d) if gemma else 1.0)
    pos = np.arange(t)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sliding = gemma and c["layer_types"][i] == "sliding_attention"
        theta = c["rope_local_base_freq"] if sliding else c["rope_theta"]
        inv = _inv_freq(c, theta, hd, scaled=not sliding)
        h = norm(x, hf[p + "input_layernorm.weight"])
        proj = {}
        for k, n in (("q", nh), ("k", nkv), ("v", nkv)):
            y = h @ hf[p + f"self_attn.{k}_proj.weight"].T + hf.get(p + f"self_attn.{k}_proj.bias", 0.0)
            proj[k] = y.reshape(t, n, hd)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if p + "self_attn.q_norm.weight" in hf:
            q, k = norm(q, hf[p + "self_attn.q_norm.weight"]), norm(k, hf[p + "self_attn.k_norm.weight"])
        q, k = rope(q, inv), rope(k, inv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scale = c["query_pre_attn_scalar"] ** -0.5 if gemma else hd ** -0.5
        s = np.einsum("thd,shd->hts", q, k) * scale
        mask = pos[None, :] <= pos[:, None]
        if sliding:
            mask &= pos[:, None] - pos[None, :] < c["sliding_window"]
        s = np.where(mask, s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", pr, v).reshape(t, -1) @ hf[p + "self_attn.o_proj.weight"].T
        if gemma:
            x = x + norm(o, hf[p + "post_attention_layernorm.weight"])
            h = norm(x, hf[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + o
            h = norm(x, hf[p + "post_attention_layernorm.weight"])
        g = h @ hf[p + "mlp.gate_proj.weight"].T
        if gemma:
            a = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        else:
            a = g / (1 + np.exp(-g))
        f = (a * (h @ hf[p + "mlp.up_proj.weight"].T)) @ hf[p + "mlp.down_proj.weight"].T
        x = x + (norm(f, hf[p + "post_feedforward_layernorm.weight"]) if gemma else f)
    x = norm(x, hf["model.norm.weight"])
    return x @ hf.get("lm_head.weight", hf["model.embed_tokens.weight"]).T


IDS = np.array([3, 17, 50, 8, 96, 0, 41, 12, 5, 77], np.int32)  # longer than Gemma's window of 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_directory_matches_reference(tmp_path, family):
    c = _config(family)
    hf = _checkpoint(c)
    model, tok, cfg = models.load(str(_write(tmp_path, c, hf)))
    assert tok is None and cfg.family == ("gemma3" if family == "gemma3" else family.rstrip("3")
                                          if family == "llama3" else family)
    ours = np.asarray(models.forward(model, IDS[None])[0][0])
    np.testing.assert_allclose(ours, _reference(c, hf, IDS), atol=2e-3, rtol=1e-4)


def test_bf16_checkpoint_and_lazy_reads(tmp_path, monkeypatch):
    """A BF16 checkpoint loads (converted tensor by tensor); each tensor is read exactly once."""
    import ml_dtypes

    from mugi_jax.models import loaders

    c = _config("qwen3")
    hf = _checkpoint(c)
    _write(tmp_path, c, hf, dtype=ml_dtypes.bfloat16)
    calls = []
    real = loaders._hf_convert
    monkeypatch.setattr(loaders, "_hf_convert", lambda n, w, cfg: calls.append(n) or real(n, w, cfg))
    model, _, _ = models.load(str(tmp_path))
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(hf)
    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in hf.items()}
    np.testing.assert_allclose(np.asarray(models.forward(model, IDS[None])[0][0]),
                               _reference(c, rounded, IDS), atol=2e-3, rtol=1e-4)


def test_unsupported_configs_name_the_field(tmp_path):
    from mugi_jax.models import CheckpointError

    c = _config("qwen2")
    hf = _checkpoint(c)
    for over, field in (({"model_type": "mistral"}, "model_type"),
                        ({"use_sliding_window": True}, "use_sliding_window"),
                        ({"hidden_act": "relu"}, "hidden_act")):
        _write(tmp_path, {**c, **over}, hf)
        with pytest.raises(CheckpointError, match=field):
            models.load(str(tmp_path))


def _write_gemma_gguf(path, c, hf):
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(c["num_hidden_layers"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(_head_dim(c))
    w.add_value_length(_head_dim(c))
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_vocab_size(c["vocab_size"])
    w.add_sliding_window(c["sliding_window"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for key, arr in hf.items():
        if "norm" in key:
            arr = arr + np.float32(1.0)  # llama.cpp's converter folds Gemma's 1 + w into the file
        if key == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", arr)
        elif key == "model.norm.weight":
            w.add_tensor("output_norm.weight", arr)
        else:
            _, _, i, rest = key.split(".", 3)
            w.add_tensor(f"blk.{i}.{names[rest.removesuffix('.weight')]}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma3_gguf_and_hf_loaders_agree(tmp_path):
    # six layers: the GGUF layout fixes Gemma 3's every-6th-layer-global pattern
    c = _config("gemma3", num_hidden_layers=6, query_pre_attn_scalar=8, layer_types=None,
                sliding_window_pattern=6)
    del c["layer_types"]
    hf = _checkpoint(c, seed=1)
    d = tmp_path / "hf"
    d.mkdir()
    m_hf, _, cfg_hf = models.load(str(_write(d, c, hf)))
    _write_gemma_gguf(tmp_path / "tiny.gguf", c, hf)
    m_gguf, cfg_gguf, _ = models.load_gguf(tmp_path / "tiny.gguf")
    assert cfg_gguf.layer_types == cfg_hf.layer_types == ("sliding",) * 5 + ("full",)
    a = np.asarray(models.forward(m_hf, IDS[None])[0])
    b = np.asarray(models.forward(m_gguf, IDS[None])[0])
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(a[0], _reference({**c, "layer_types": ["sliding_attention"] * 5
                                                 + ["full_attention"]}, hf, IDS), atol=2e-3, rtol=1e-4)


def test_gemma3_generation_cached_equals_uncached_across_the_window(tmp_path):
    import dataclasses

    from flax import nnx

    c = _config("gemma3", tie_word_embeddings=False)
    hf = _checkpoint(c, seed=2)
    hf["model.embed_tokens.weight"] *= 0.1  # a random model that does not just repeat itself
    model, _, cfg = models.load(str(_write(tmp_path, c, hf)))
    assert cfg.sliding_window == 3
    s = models.Sampler(model)
    prompts = [[5, 9, 30, 7, 11], [11, 3]]  # left-padded batch; prompts + outputs >> window
    a = s(prompts, max_new_tokens=12)
    b = s(prompts, max_new_tokens=12, use_cache=False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len(set(a.tokens[0].tolist())) > 3  # not a degenerate repetition
    np.testing.assert_array_equal(s(prompts[1:], max_new_tokens=12).tokens[0], a.tokens[1])
    # the window matters: the same weights with global attention generate differently
    wide = models.Llama(dataclasses.replace(cfg, layer_types=()))
    nnx.update(wide, nnx.state(model))
    assert not np.array_equal(models.Sampler(wide)(prompts, max_new_tokens=12).tokens, a.tokens)


def test_gemma3_awq_folds_equal_the_unfolded_scaled_model(tmp_path):
    """AWQ on a tiny random Gemma 3 (QK-norm, pre- and post-norms with the ``1 + w`` weights,
    GeGLU, GQA 4 on 1): the folded model (q/k/v scales in the pre-attention norm, gate/up scales
    in the pre-FFN norm, down_proj scales in up_proj's output channels) equals the independent
    reference run on the *unfolded* model - original norms, every quantized kernel with its
    activation scale applied explicitly (``(x / s) @ W^``; down_proj's input ``h / s``)."""
    import jax.numpy as jnp

    from mugi_jax.models import quantize as mq

    c = _config("gemma3", hidden_size=64, intermediate_size=128, num_key_value_heads=1,
                head_dim=32, query_pre_attn_scalar=32, tie_word_embeddings=False)
    hf = _checkpoint(c, seed=3)
    for i in range(LAYERS):  # outlier input channels, as real models have: AWQ scales them
        for n in ("input_layernorm", "pre_feedforward_layernorm"):
            hf[f"model.layers.{i}.{n}.weight"][:4] = 6.0
    model, _, cfg = models.load(str(_write(tmp_path, c, hf)))
    ids = np.random.default_rng(0).integers(0, VOCAB, 96).tolist()
    stats = mq.collect_statistics(model, ids, context=32)
    qw = mq.quantize_model(model, stats, mq.QuantSpec("tiny", "awq", "signmag", 32, "sotu", 128))
    assert set(qw.params) == {f"layers.{i}.{n}.scale" for i in range(LAYERS)
                              for n in ("attn_norm", "mlp_norm")}  # pre-norms only
    folded = np.asarray(models.forward(mq.apply_weights(model, qw), IDS[None], "exact")[0][0])

    def unfolded(with_scales):
        out = dict(hf)
        hf_name = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
                   "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
                   "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
                   "mlp.down_proj": "mlp.down_proj"}
        for i in range(LAYERS):
            for p, name in hf_name.items():
                w = np.asarray(qw.kernels[f"layers.{i}.{p}"].dequantize(jnp.float32), np.float64)
                s = np.asarray(qw.scales.get(f"layers.{i}.{p}", np.ones(w.shape[0])), np.float64)
                if with_scales:
                    w = w / s[:, None]  # (x / s) @ W^
                    if p == "mlp.up_proj":  # u / s_down = up's output; h = act(g) * u
                        w = w * np.asarray(qw.scales[f"layers.{i}.mlp.down_proj"])[None, :]
                out[f"model.layers.{i}.{name}.weight"] = w.T.astype(np.float32)
        return _reference(c, out, IDS)

    for key in ("attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):  # the scales did something
        assert np.ptp(np.asarray(qw.scales[f"layers.0.{key}"])) > 0.1
    np.testing.assert_allclose(folded, unfolded(True), atol=2e-3, rtol=1e-4)
    # without the activation scales the quantized kernels compute something else
    assert np.max(np.abs(folded - unfolded(False))) > 0.1
    # the whole mugi preset (Mugi datapath, BF16 activations, KIVI cache) runs on these weights
    mugi = np.asarray(models.forward(mq.apply_weights(model, qw), IDS[None], "mugi")[0][0])
    assert np.all(np.isfinite(mugi)) and np.corrcoef(mugi.ravel(), folded.ravel())[0, 1] > 0.9
