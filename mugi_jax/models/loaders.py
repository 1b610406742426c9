"""Checkpoint loaders: GGUF (llama.cpp) and Hugging Face safetensors Llama checkpoints.

Both produce ``(LlamaConfig, {param name: float32 array})`` in the model's own layout (linear
kernels ``(in, out)``, RoPE on adjacent pairs) and go through :func:`build_model`, which checks
every shape against the config and fails naming the tensor.

* GGUF: weights are stored ``(out, in)`` and llama.cpp has already permuted Q/K for adjacent-pair
  RoPE; quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with PyPI ``gguf``.
* safetensors: ``config.json`` + ``*.safetensors`` with Hugging Face names; Q/K are permuted from
  the half-split RoPE layout into the adjacent-pair layout (the same permutation llama.cpp's
  converter applies).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax.models.config import LlamaConfig
from mugi_jax.models.llama import Linear, Llama

__all__ = ["load_gguf", "load_safetensors", "build_model", "read_gguf", "read_safetensors",
           "CheckpointError"]


class CheckpointError(ValueError):
    """A malformed checkpoint: unreadable, truncated, missing metadata, or disagreeing with its
    config.  The message names the file (and the tensor, where one is at fault)."""


def _malformed(path: str | Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                           "the file is truncated or damaged")


def build_model(config: LlamaConfig, params: dict[str, np.ndarray],
                sources: dict[str, str] | None = None) -> Llama:
    """Create a :class:`Llama` and fill it with ``params`` (model names, model layout).

    Raises :class:`CheckpointError` naming the tensor for a missing tensor or a shape mismatch.
    """
    sources = sources or {}
    expected = config.param_shapes()
    for name, shape in expected.items():
        src = sources.get(name, name)
        if name not in params:
            raise CheckpointError(f"checkpoint is missing tensor {src!r} (expected shape {shape})")
        got = tuple(params[name].shape)
        if got != shape:
            raise CheckpointError(f"tensor {src!r} has shape {got} but the config expects {shape} "
                                  f"(model parameter {name})")
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))

    def arr(name: str) -> jnp.ndarray:
        return jnp.asarray(np.asarray(params[name], np.float32))

    model.embed = nnx.Param(arr("embed"))
    model.final_norm.scale = nnx.Param(arr("final_norm"))
    for i, block in enumerate(model.layers):
        p = f"layers.{i}."
        block.attn_norm.scale = nnx.Param(arr(p + "attn_norm"))
        block.mlp_norm.scale = nnx.Param(arr(p + "mlp_norm"))
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            lin.kernel = nnx.Param(arr(lin.name))
    if not config.tie_embeddings:
        model.lm_head = Linear(config.dim, config.vocab_size, "lm_head", kernel=arr("lm_head"))
    return model


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------

_GGUF_LAYER = {
    "attn_norm": "attn_norm", "ffn_norm": "mlp_norm", "attn_q": "q_proj", "attn_k": "k_proj",
    "attn_v": "v_proj", "attn_output": "o_proj", "ffn_gate": "gate_proj", "ffn_up": "up_proj",
    "ffn_down": "down_proj",
}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_gguf(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray], dict[str, str], Any]:
    """Read a Llama GGUF: ``(config, params, sources, reader)`` (params dequantized, model layout)."""
    import gguf

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError, IndexError, struct errors...
        raise _malformed(path, err) from None
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
    try:
        config = _gguf_config(reader)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: missing or malformed llama.* metadata ({err})") from None
    try:
        params, sources = _gguf_params(reader)
    except Exception as err:  # noqa: BLE001 - a truncated tensor fails inside gguf/numpy
        raise _malformed(path, err) from None
    return config, params, sources, reader


def _gguf_config(reader: Any) -> LlamaConfig:
    names = {t.name for t in reader.tensors}
    n_heads = int(_field(reader, "llama.attention.head_count"))
    dim = int(_field(reader, "llama.embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = int(_field(reader, "llama.vocab_size", len(tokens.data) if tokens is not None else 0))
    return LlamaConfig(
        vocab_size=vocab, dim=dim, n_layers=int(_field(reader, "llama.block_count")),
        n_heads=n_heads, n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", dim // n_heads)),
        ffn_dim=int(_field(reader, "llama.feed_forward_length")),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))),
        tie_embeddings="output.weight" not in names,
        max_seq_len=int(_field(reader, "llama.context_length", 2048)),
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def _gguf_params(reader: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import gguf

    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "embed"
        elif t.name == "output_norm.weight":
            name = "final_norm"
        elif t.name == "output.weight":
            name, w = "lm_head", w.T
        elif parts[0] == "blk" and parts[2] in _GGUF_LAYER:
            name = f"layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}"
            if w.ndim == 2:
                w = w.T  # (out, in) -> (in, out)
        else:
            continue  # e.g. rope_freqs: not used
        params[name] = np.ascontiguousarray(w)
        sources[name] = t.name
    return params, sources


def load_gguf(path: str | Path) -> tuple[Llama, LlamaConfig, Any]:
    """Load a GGUF checkpoint: ``(model, config, reader)`` (the reader carries the tokenizer)."""
    config, params, sources, reader = read_gguf(path)
    return _build(path, config, params, sources), config, reader


def _build(path: str | Path, config: LlamaConfig, params: dict[str, np.ndarray],
           sources: dict[str, str]) -> Llama:
    try:
        return build_model(config, params, sources)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


# ------------------------------------------------------------------------------------------
# safetensors (Hugging Face Llama)
# ------------------------------------------------------------------------------------------

_HF_LAYER = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "mlp_norm",
    "self_attn.q_proj.weight": "q_proj", "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj", "self_attn.o_proj.weight": "o_proj",
    "mlp.gate_proj.weight": "gate_proj", "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
}


def config_from_hf(cfg: dict[str, Any]) -> LlamaConfig:
    """A :class:`LlamaConfig` from a Hugging Face ``config.json`` dict."""
    n_heads = int(cfg["num_attention_heads"])
    dim = int(cfg["hidden_size"])
    return LlamaConfig(
        vocab_size=int(cfg["vocab_size"]), dim=dim, n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_dim=int(cfg["intermediate_size"]), rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        bos_id=cfg.get("bos_token_id"), eos_id=cfg.get("eos_token_id")
        if not isinstance(cfg.get("eos_token_id"), list) else cfg["eos_token_id"][0],
    )


def hf_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Permute an HF ``(out, in)`` Q/K weight from half-split RoPE to adjacent-pair RoPE."""
    out, din = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, din).swapaxes(1, 2).reshape(out, din)


def read_safetensors(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray], dict[str, str]]:
    """Read ``config.json`` + ``*.safetensors`` from directory ``path`` (model names/layout)."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found (a safetensors checkpoint needs config.json)")
    try:
        config = config_from_hf(json.loads(cfg_file.read_text()))
    except (ValueError, KeyError, TypeError) as err:  # JSON syntax, missing or non-numeric keys
        raise CheckpointError(f"{cfg_file}: not a usable Llama config.json "
                              f"({type(err).__name__}: {err})") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        try:
            raw.update(load_file(str(f)))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise _malformed(f, err) from None
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for key, w in raw.items():
        w = np.asarray(w).astype(np.float32) if w.dtype != np.float32 else w
        k = key.removeprefix("model.")
        if k == "embed_tokens.weight":
            name = "embed"
        elif k == "norm.weight":
            name = "final_norm"
        elif key == "lm_head.weight":
            name, w = "lm_head", w.T
        elif k.startswith("layers."):
            _, idx, rest = k.split(".", 2)
            if rest not in _HF_LAYER:
                continue
            name = f"layers.{idx}.{_HF_LAYER[rest]}"
            if rest == "self_attn.q_proj.weight" and w.ndim == 2 and w.shape[0] == config.n_heads * config.head_dim:
                w = hf_to_interleaved(w, config.n_heads)
            elif rest == "self_attn.k_proj.weight" and w.ndim == 2 and w.shape[0] == config.n_kv_heads * config.head_dim:
                w = hf_to_interleaved(w, config.n_kv_heads)
            if w.ndim == 2:
                w = w.T
        else:
            continue
        params[name] = np.ascontiguousarray(w)
        sources[name] = key
    if config.tie_embeddings:
        params.pop("lm_head", None)
    return config, params, sources


def load_safetensors(path: str | Path) -> tuple[Llama, LlamaConfig]:
    """Load a Hugging Face Llama checkpoint directory: ``(model, config)``."""
    config, params, sources = read_safetensors(path)
    return _build(path, config, params, sources), config
