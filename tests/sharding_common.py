"""Shapes and a checkpoint shared by the sharding workers and tests/test_sharding.py (no JAX
device is touched here, so importing it leaves ``XLA_FLAGS`` to the importer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mugi_jax.models.config import LlamaConfig

# every sharded dimension (16 query heads, 8 KV heads, 128 FFN columns, 128 vocabulary rows)
# divides by 8, so each mesh shards every rule it can
CONFIG = LlamaConfig(vocab_size=128, dim=64, n_layers=1, n_heads=16, n_kv_heads=8, head_dim=8,
                     ffn_dim=128, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                     max_seq_len=64, bos_id=1, eos_id=2)
CONTEXT, BATCH = 16, 8


def hf_checkpoint(directory: Path) -> dict:
    """A random Hugging Face Llama directory of CONFIG's shapes (untied head; one BF16 tensor),
    in two safetensors files."""
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    c, hd = CONFIG, CONFIG.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,),
              "lm_head.weight": (c.vocab_size, c.dim)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (c.dim,),
                       p + "post_attention_layernorm.weight": (c.dim,),
                       p + "self_attn.q_proj.weight": (c.n_heads * hd, c.dim),
                       p + "self_attn.k_proj.weight": (c.n_kv_heads * hd, c.dim),
                       p + "self_attn.v_proj.weight": (c.n_kv_heads * hd, c.dim),
                       p + "self_attn.o_proj.weight": (c.dim, c.n_heads * hd),
                       p + "mlp.gate_proj.weight": (c.ffn_dim, c.dim),
                       p + "mlp.up_proj.weight": (c.ffn_dim, c.dim),
                       p + "mlp.down_proj.weight": (c.dim, c.ffn_dim)})
    hf = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    hf["model.layers.0.mlp.up_proj.weight"] = hf["model.layers.0.mlp.up_proj.weight"].astype(
        ml_dtypes.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": c.dim, "intermediate_size": c.ffn_dim, "num_attention_heads": c.n_heads,
        "num_hidden_layers": c.n_layers, "num_key_value_heads": c.n_kv_heads, "head_dim": hd,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "vocab_size": c.vocab_size,
        "tie_word_embeddings": False, "max_position_embeddings": c.max_seq_len}))
    keys = sorted(hf)
    save_file({k: hf[k] for k in keys[:6]}, str(directory / "model-1.safetensors"))
    save_file({k: hf[k] for k in keys[6:]}, str(directory / "model-2.safetensors"))
    return hf


def load_counting_reads(directory, mesh):
    """``sharding.load_safetensors_sharded(directory, mesh)`` and the number of checkpoint
    elements it read (each process should read only its own slices)."""
    from mugi_jax.models import hf as hf_mod, sharding

    read = {"elements": 0}
    original = hf_mod.SafetensorsDir.read

    def counting(self, key, index=None):
        x = original(self, key, index)
        read["elements"] += x.size
        return x

    hf_mod.SafetensorsDir.read = counting
    try:
        model, _ = sharding.load_safetensors_sharded(directory, mesh)
    finally:
        hf_mod.SafetensorsDir.read = original
    return model, read["elements"]
