"""GGUF and safetensors loaders on small checkpoints written by the tests."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from mugi_jax.models import CheckpointError, forward, load, load_gguf, load_safetensors
from mugi_jax.models.loaders import build_model


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * (0.3 if len(shape) == 2 else 0.1) + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
            for name, shape in cfg.param_shapes().items()}


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_gguf(path, cfg, params):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_context_length(cfg.max_seq_len)
    w.add_vocab_size(cfg.vocab_size)
    # a byte-level BPE vocabulary: 3 special tokens, the 98 first byte symbols, no merges needed
    b2u = _bytes_to_unicode()
    symbols = [b2u[b] for b in sorted(b2u)][: cfg.vocab_size - 3]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + symbols
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * len(symbols))
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"embed": "token_embd.weight", "final_norm": "output_norm.weight"}
    layer = {"attn_norm": "attn_norm", "mlp_norm": "ffn_norm", "q_proj": "attn_q", "k_proj": "attn_k",
             "v_proj": "attn_v", "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
             "down_proj": "ffn_down"}
    for name, arr in params.items():
        if name in names:
            w.add_tensor(names[name], arr)
        else:
            _, i, op = name.split(".")
            w.add_tensor(f"blk.{i}.{layer[op]}.weight", arr.T.copy() if arr.ndim == 2 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_roundtrip_and_tokenizer(tmp_path, tiny_config):
    TINY = tiny_config
    params = _random_params(TINY)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, TINY, params)
    model, cfg, reader = load_gguf(path)
    assert cfg.n_layers == TINY.n_layers and cfg.n_kv_heads == TINY.n_kv_heads
    assert cfg.tie_embeddings and cfg.vocab_size == TINY.vocab_size
    np.testing.assert_array_equal(model.layers[1].attn.k_proj.kernel[...], params["layers.1.k_proj"])
    ref = build_model(cfg, params)
    toks = np.array([[5, 9, 30, 2, 7]], np.int32)
    np.testing.assert_array_equal(forward(model, toks)[0], forward(ref, toks)[0])
    # the tokenizer stored in the file
    _, tok, _ = load(path=path)
    ids = tok.encode("AB=<|im_end|>")
    assert ids[-1] == 2 and len(ids) == 4
    assert tok.decode(ids) == "AB=<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "AB="


def _hf_reference(cfg, hf, ids):
    """NumPy forward pass of a Hugging Face Llama (half-split 'rotate_half' RoPE)."""
    x = hf["model.embed_tokens.weight"][ids].astype(np.float64)
    t, hd = len(ids), cfg.head_dim

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * g

    def rope(v):
        inv = cfg.rope_theta ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(t)[:, None] * inv[None]
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
        rot = np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], -1)
        return v * cos + rot * sin

    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        h = rms(x, hf[p + "input_layernorm.weight"])
        q = rope((h @ hf[p + "self_attn.q_proj.weight"].T).reshape(t, cfg.n_heads, hd))
        k = rope((h @ hf[p + "self_attn.k_proj.weight"].T).reshape(t, cfg.n_kv_heads, hd))
        v = (h @ hf[p + "self_attn.v_proj.weight"].T).reshape(t, cfg.n_kv_heads, hd)
        k = np.repeat(k, cfg.group, axis=1)
        v = np.repeat(v, cfg.group, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", pr, v).reshape(t, -1)
        x = x + o @ hf[p + "self_attn.o_proj.weight"].T
        h = rms(x, hf[p + "post_attention_layernorm.weight"])
        g = h @ hf[p + "mlp.gate_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ hf[p + "mlp.up_proj.weight"].T)) @ hf[p + "mlp.down_proj.weight"].T
    x = rms(x, hf["model.norm.weight"])
    return x @ hf.get("lm_head.weight", hf["model.embed_tokens.weight"]).T


def _hf_checkpoint(cfg, seed=0):
    rng = np.random.default_rng(seed)
    d, hd = cfg.dim, cfg.head_dim
    hf = {"model.embed_tokens.weight": rng.standard_normal((cfg.vocab_size, d)),
          "model.norm.weight": 1 + 0.1 * rng.standard_normal(d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
                  "self_attn.q_proj.weight": (cfg.n_heads * hd, d),
                  "self_attn.k_proj.weight": (cfg.n_kv_heads * hd, d),
                  "self_attn.v_proj.weight": (cfg.n_kv_heads * hd, d),
                  "self_attn.o_proj.weight": (d, cfg.n_heads * hd),
                  "mlp.gate_proj.weight": (cfg.ffn_dim, d), "mlp.up_proj.weight": (cfg.ffn_dim, d),
                  "mlp.down_proj.weight": (d, cfg.ffn_dim)}
        for k, s in shapes.items():
            hf[p + k] = (1 + 0.1 * rng.standard_normal(s)) if len(s) == 1 else 0.3 * rng.standard_normal(s)
    return {k: v.astype(np.float32) for k, v in hf.items()}


def _hf_config(cfg, **over):
    c = {"architectures": ["LlamaForCausalLM"], "hidden_size": cfg.dim,
         "intermediate_size": cfg.ffn_dim, "num_attention_heads": cfg.n_heads,
         "num_hidden_layers": cfg.n_layers, "num_key_value_heads": cfg.n_kv_heads,
         "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "vocab_size": cfg.vocab_size,
         "tie_word_embeddings": True, "max_position_embeddings": cfg.max_seq_len,
         "bos_token_id": 1, "eos_token_id": 2}
    c.update(over)
    return c


def test_safetensors_matches_hf_reference(tmp_path, tiny_config):
    TINY = tiny_config
    from safetensors.numpy import save_file

    hf = _hf_checkpoint(TINY)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TINY)))
    keys = sorted(hf)
    save_file({k: hf[k] for k in keys[: len(keys) // 2]}, str(tmp_path / "model-00001.safetensors"))
    save_file({k: hf[k] for k in keys[len(keys) // 2:]}, str(tmp_path / "model-00002.safetensors"))
    model, cfg = load_safetensors(tmp_path)
    assert cfg == TINY
    ids = np.array([3, 17, 50, 8, 99, 0, 41], np.int32)
    ours = np.asarray(forward(model, ids[None])[0][0])
    ref = _hf_reference(cfg, {k: v.astype(np.float64) for k, v in hf.items()}, ids)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_config):
    TINY = tiny_config
    from safetensors.numpy import save_file

    hf = _hf_checkpoint(TINY)
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TINY, intermediate_size=64)))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight"):
        load_safetensors(tmp_path)
    del hf["model.layers.1.self_attn.v_proj.weight"]
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TINY)))
    with pytest.raises(CheckpointError, match="missing tensor 'layers.1.v_proj'"):
        load_safetensors(tmp_path)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="smollm2-135m"):
        load("llama-9000")


def test_malformed_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path, tiny_config):
    from safetensors.numpy import save_file

    from mugi_jax import models

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tiny_config, _random_params(tiny_config))
    blob = path.read_bytes()
    for name, cut in (("empty", b""), ("head", blob[:1000]), ("half", blob[:len(blob) // 2]),
                      ("all-but-one", blob[:-1])):
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(cut)
        with pytest.raises(CheckpointError, match=re.escape(str(bad))):
            models.load(path=bad)
    hf = _hf_checkpoint(tiny_config)
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_safetensors(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(tiny_config)))
    st = tmp_path / "model.safetensors"
    st.write_bytes(st.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=re.escape(str(st))):
        load_safetensors(tmp_path)
