"""Checkpoint loaders: GGUF (llama.cpp) files and Hugging Face safetensors directories.

Both produce ``(DecoderConfig, {param name: tensor})`` in the model's own layout (linear
kernels ``(in, out)``) and go through :func:`build_model`, which checks every shape against the
config and fails naming the tensor.

* GGUF (architectures ``llama`` and ``gemma3``): weights are stored ``(out, in)``; quantized
  tensors (Q4_1, Q4_K, Q5_0, Q6_K, Q8_0, ...) are dequantized to float32 with PyPI ``gguf``.
  llama.cpp's converter permutes Llama Q/K for adjacent-pair RoPE; Gemma keeps the half-split
  layout, and its norm weights already hold Gemma's ``1 + w``.
* Hugging Face directories (``config.json`` + ``*.safetensors``, families Llama/Llama 3,
  Qwen2/2.5, Qwen3, Gemma 3): tensors are read one at a time from the memory-mapped files
  (:class:`LazyTensor`), converted and placed in the model before the next is read, so the
  checkpoint is never held as a whole FP32 copy next to the model.  Llama Q/K are permuted into
  the adjacent-pair layout (the same permutation llama.cpp's converter applies); the other
  families run half-split RoPE as stored; Gemma's norm weights get their ``+1``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax.models.config import DecoderConfig, gemma3_layer_types
from mugi_jax.models.llama import Linear, Llama, RMSNorm

__all__ = ["load_gguf", "load_safetensors", "build_model", "read_gguf", "read_safetensors",
           "config_from_hf", "CheckpointError", "LazyTensor", "HF_FAMILIES"]


class CheckpointError(ValueError):
    """A malformed checkpoint: unreadable, truncated, missing metadata, or disagreeing with its
    config.  The message names the file (and the tensor, where one is at fault)."""


def _malformed(path: str | Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                           "the file is truncated or damaged")


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor read (and converted to the model's layout) only when called."""

    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]

    def __call__(self) -> np.ndarray:
        return self.read()


def _target(model: Llama, name: str) -> tuple[Any, str]:
    """The module and attribute holding model parameter ``name``."""
    if name == "embed":
        return model, "embed"
    if name == "final_norm":
        return model.final_norm, "scale"
    if name == "lm_head":
        return model, "lm_head"
    _, i, rest = name.split(".", 2)
    block = model.layers[int(i)]
    attr = "kernel"
    if rest.endswith(".bias"):
        rest, attr = rest[: -len(".bias")], "bias"
    if rest in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
        mod = getattr(block.attn, rest)
    elif rest in ("gate_proj", "up_proj", "down_proj"):
        mod = getattr(block.mlp, rest)
    else:  # attn_norm, mlp_norm, post_attn_norm, post_mlp_norm
        mod = getattr(block, rest)
    return mod, ("scale" if isinstance(mod, RMSNorm) else attr)


def build_model(config: DecoderConfig, params: dict[str, Any],
                sources: dict[str, str] | None = None) -> Llama:
    """Create a :class:`Llama` and fill it with ``params`` (model names, model layout; values
    are arrays or :class:`LazyTensor`, read one at a time).

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
    for name in expected:
        value = params[name]
        arr = jnp.asarray(np.asarray(value() if isinstance(value, LazyTensor) else value,
                                     np.float32))
        if name == "lm_head":
            model.lm_head = Linear(config.dim, config.vocab_size, "lm_head", kernel=arr)
            continue
        mod, attr = _target(model, name)
        setattr(mod, attr, nnx.Param(arr))
    return model


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------

_GGUF_LAYER = {
    "attn_norm": "attn_norm", "ffn_norm": "mlp_norm", "attn_q": "q_proj", "attn_k": "k_proj",
    "attn_v": "v_proj", "attn_output": "o_proj", "ffn_gate": "gate_proj", "ffn_up": "up_proj",
    "ffn_down": "down_proj", "attn_q_norm": "q_norm", "attn_k_norm": "k_norm",
    "post_attention_norm": "post_attn_norm", "post_ffw_norm": "post_mlp_norm",
}
GGUF_ARCHITECTURES = ("llama", "gemma3")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _gguf_config(reader: Any, path: str | Path) -> DecoderConfig:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported "
                              f"(supported: {', '.join(GGUF_ARCHITECTURES)})")

    def get(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    names = {t.name for t in reader.tensors}
    n_heads = int(get("attention.head_count"))
    dim = int(get("embedding_length"))
    n_layers = int(get("block_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    head_dim = int(get("rope.dimension_count", get("attention.key_length", dim // n_heads)))
    common = dict(
        vocab_size=int(get("vocab_size", len(tokens.data) if tokens is not None else 0)),
        dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)), head_dim=head_dim,
        ffn_dim=int(get("feed_forward_length")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        norm_eps=float(np.float32(get("attention.layer_norm_rms_epsilon", 1e-5))),
        tie_embeddings="output.weight" not in names,
        max_seq_len=int(get("context_length", 2048)),
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    if arch == "llama":
        return DecoderConfig(**common)
    # Gemma 3: what the GGUF does not store is fixed by the architecture (llama.cpp sets the same
    # values): every 6th layer global, local RoPE base 1e4, embedding x sqrt(dim), queries scaled
    # by head_dim^-1/2 (by (dim / heads)^-1/2 in the 62-layer 27B model), GeGLU-tanh.
    scaling: tuple[tuple[str, Any], ...] = ()
    if get("rope.scaling.type") not in (None, "none"):
        scaling = (("factor", float(get("rope.scaling.factor"))),
                   ("rope_type", str(get("rope.scaling.type"))))
    query_scale = (dim / n_heads) ** -0.5 if n_layers == 62 else head_dim ** -0.5
    window = get("attention.sliding_window")
    return DecoderConfig(
        **common, family="gemma3", activation="gelu_tanh", rope_layout="half",
        rope_scaling=scaling, rope_scaling_global_only=True, rope_theta_local=10000.0,
        qk_norm=True, post_norms=True, embed_scale=math.sqrt(dim), query_scale=query_scale,
        sliding_window=None if window is None else int(window),
        layer_types=gemma3_layer_types(n_layers) if window is not None else ())


def _gguf_tensor(path: str | Path, tensor: Any, transpose: bool) -> LazyTensor:
    import gguf

    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first

    def read() -> np.ndarray:
        try:
            w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        except Exception as err:  # noqa: BLE001 - a truncated tensor fails inside gguf/numpy
            raise _malformed(path, err) from None
        if w.shape != shape:
            raise _malformed(path, ValueError(f"tensor {tensor.name} has {w.size} values, "
                                              f"expected shape {shape}"))
        return np.ascontiguousarray(w.T if transpose else w)

    return LazyTensor(shape[::-1] if transpose else shape, read)


def read_gguf(path: str | Path) -> tuple[DecoderConfig, dict[str, LazyTensor], dict[str, str], Any]:
    """Read a GGUF: ``(config, params, sources, reader)``; ``params`` are :class:`LazyTensor`
    (dequantized to float32 in the model layout when called; the file is memory-mapped)."""
    import gguf

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError, IndexError, struct errors...
        raise _malformed(path, err) from None
    try:
        config = _gguf_config(reader, path)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: missing or malformed metadata ({err})") from None
    params: dict[str, LazyTensor] = {}
    sources: dict[str, str] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        ndim = len(t.shape)
        if t.name == "token_embd.weight":
            name, transpose = "embed", False
        elif t.name == "output_norm.weight":
            name, transpose = "final_norm", False
        elif t.name == "output.weight":
            name, transpose = "lm_head", True
        elif parts[0] == "blk" and parts[2] in _GGUF_LAYER:
            name = f"layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}"
            if parts[3] == "bias":
                name += ".bias"
            transpose = ndim == 2 and parts[3] != "bias"  # (out, in) -> (in, out)
        else:
            continue  # e.g. rope_freqs: not used
        params[name] = _gguf_tensor(path, t, transpose)
        sources[name] = t.name
    return config, params, sources, reader


def load_gguf(path: str | Path) -> tuple[Llama, DecoderConfig, Any]:
    """Load a GGUF checkpoint: ``(model, config, reader)`` (the reader carries the tokenizer)."""
    config, params, sources, reader = read_gguf(path)
    return _build(path, config, params, sources), config, reader


def _build(path: str | Path, config: DecoderConfig, params: dict[str, Any],
           sources: dict[str, str]) -> Llama:
    try:
        return build_model(config, params, sources)
    except CheckpointError as err:
        msg = str(err)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


# ------------------------------------------------------------------------------------------
# Hugging Face directories (config.json + safetensors)
# ------------------------------------------------------------------------------------------

#: ``model_type`` values of ``config.json`` and the family each maps to.
HF_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
               "gemma3": "gemma3"}
_HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                     "Qwen3ForCausalLM": "qwen3", "Gemma3ForCausalLM": "gemma3_text",
                     "Gemma3ForConditionalGeneration": "gemma3"}

_HF_LAYER = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "mlp_norm",
    "self_attn.q_proj.weight": "q_proj", "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj", "self_attn.o_proj.weight": "o_proj",
    "self_attn.q_proj.bias": "q_proj.bias", "self_attn.k_proj.bias": "k_proj.bias",
    "self_attn.v_proj.bias": "v_proj.bias",
    "self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm",
    "mlp.gate_proj.weight": "gate_proj", "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
}
# Gemma 3 names its four norms differently: post_attention_layernorm is the norm *on* the
# attention output, pre_feedforward_layernorm the FFN's input norm.
_HF_GEMMA_LAYER = {**_HF_LAYER, "post_attention_layernorm.weight": "post_attn_norm",
                   "pre_feedforward_layernorm.weight": "mlp_norm",
                   "post_feedforward_layernorm.weight": "post_mlp_norm"}


def _model_type(cfg: dict[str, Any]) -> str:
    mt = cfg.get("model_type")
    if mt is None:
        archs = cfg.get("architectures") or []
        mt = next((_HF_ARCHITECTURES[a] for a in archs if a in _HF_ARCHITECTURES), None)
    if mt not in HF_FAMILIES:
        raise CheckpointError(f"config.json: model_type {mt!r} is not supported (supported: "
                              f"{', '.join(HF_FAMILIES)})")
    return mt


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) else v


def config_from_hf(cfg: dict[str, Any]) -> DecoderConfig:
    """A :class:`DecoderConfig` from a Hugging Face ``config.json`` dict (Llama, Qwen2, Qwen3,
    Gemma 3; a multimodal Gemma 3 config is read through its ``text_config``)."""
    mt = _model_type(cfg)
    top = cfg
    if mt == "gemma3" and "text_config" in cfg:
        cfg = {**cfg["text_config"], **{k: top[k] for k in ("bos_token_id", "eos_token_id")
                                         if k in top and k not in cfg["text_config"]}}
    family = HF_FAMILIES[mt]
    n_heads = int(cfg["num_attention_heads"])
    dim = int(cfg["hidden_size"])
    scaling = cfg.get("rope_scaling")
    common = dict(
        vocab_size=int(cfg["vocab_size"]), dim=dim, n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_dim=int(cfg["intermediate_size"]), rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        bos_id=_first(cfg.get("bos_token_id")), eos_id=_first(cfg.get("eos_token_id")),
        rope_scaling=tuple(sorted(scaling.items())) if scaling else (), family=family,
    )
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if family != "gemma3" and act != "silu":
        raise CheckpointError(f"config.json: hidden_act {act!r} is not supported for {mt} "
                              "(supported: silu)")
    if cfg.get("use_sliding_window"):
        raise CheckpointError("config.json: use_sliding_window = true is not supported for "
                              f"{mt} (supported: false)")
    if family == "llama":
        return DecoderConfig(**common, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                             qkv_bias=bool(cfg.get("attention_bias", False)))
    if family in ("qwen2", "qwen3"):
        return DecoderConfig(**common, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                             rope_layout="half", qkv_bias=family == "qwen2"
                             or bool(cfg.get("attention_bias", False)), qk_norm=family == "qwen3")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise CheckpointError(f"config.json: hidden_activation {act!r} is not supported for "
                              f"{mt} (supported: gelu_pytorch_tanh)")
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(cap) is not None:
            raise CheckpointError(f"config.json: {cap} = {cfg[cap]!r} is not supported "
                                  "(supported: null)")
    n_layers = common["n_layers"]
    types = cfg.get("layer_types")
    if types is None:
        types = gemma3_layer_types(n_layers, int(cfg.get("sliding_window_pattern", 6)))
    types = tuple("sliding" if t == "sliding_attention" else "full" if t == "full_attention" else t
                  for t in types)
    return DecoderConfig(
        **common, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        activation="gelu_tanh", rope_layout="half", rope_scaling_global_only=True,
        rope_theta_local=float(cfg.get("rope_local_base_freq", 10000.0)), qk_norm=True,
        post_norms=True, embed_scale=math.sqrt(dim),
        query_scale=float(cfg.get("query_pre_attn_scalar", common["head_dim"])) ** -0.5,
        sliding_window=int(cfg["sliding_window"]), layer_types=types)


def hf_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Permute an HF ``(out, in)`` Q/K weight (or ``(out,)`` bias) from half-split RoPE to
    adjacent-pair RoPE."""
    out = w.shape[0]
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, -1).swapaxes(1, 2).reshape(w.shape)


def _hf_name(key: str, config: DecoderConfig) -> str | None:
    """The model parameter a Hugging Face tensor name maps to (``None``: not used)."""
    if key == "lm_head.weight" or key == "language_model.lm_head.weight":
        return "lm_head"
    for prefix in ("model.language_model.", "language_model.model.", "model."):
        if key.startswith(prefix):
            k = key[len(prefix):]
            break
    else:
        return None
    if k == "embed_tokens.weight":
        return "embed"
    if k == "norm.weight":
        return "final_norm"
    if k.startswith("layers."):
        _, idx, rest = k.split(".", 2)
        table = _HF_GEMMA_LAYER if config.family == "gemma3" else _HF_LAYER
        return f"layers.{idx}.{table[rest]}" if rest in table else None
    return None


def _hf_convert(name: str, w: np.ndarray, config: DecoderConfig) -> np.ndarray:
    """A Hugging Face tensor in the model's layout (float32)."""
    w = np.asarray(w, np.float32)
    op = name.removesuffix(".bias").rsplit(".", 1)[-1]
    if config.rope_layout == "adjacent" and op in ("q_proj", "k_proj"):
        w = hf_to_interleaved(w, config.n_heads if op == "q_proj" else config.n_kv_heads)
    if config.family == "gemma3" and (op.endswith("norm")):
        w = w + np.float32(1.0)  # Gemma's RMSNorm multiplies by (1 + w)
    if w.ndim == 2 and name != "embed":
        w = w.T  # (out, in) -> (in, out)
    return np.ascontiguousarray(w)


def read_safetensors(path: str | Path) -> tuple[DecoderConfig, dict[str, LazyTensor], dict[str, str]]:
    """Read ``config.json`` and index ``*.safetensors`` in directory ``path``: ``(config,
    params, sources)`` with :class:`LazyTensor` params (each read from the memory-mapped file
    and converted to float32 in the model layout only when called)."""
    from safetensors import safe_open

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found (a safetensors checkpoint needs config.json)")
    try:
        config = config_from_hf(json.loads(cfg_file.read_text()))
    except CheckpointError as err:
        raise CheckpointError(f"{cfg_file}: {str(err).removeprefix('config.json: ')}") from None
    except (ValueError, KeyError, TypeError) as err:  # JSON syntax, missing or non-numeric keys
        raise CheckpointError(f"{cfg_file}: not a usable decoder config.json "
                              f"({type(err).__name__}: {err})") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    params: dict[str, LazyTensor] = {}
    sources: dict[str, str] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                index = {key: tuple(st.get_slice(key).get_shape()) for key in st.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise _malformed(f, err) from None
        for key, shape in index.items():
            name = _hf_name(key, config)
            if name is None:
                continue
            if len(shape) == 2 and name != "embed":
                shape = shape[::-1]

            def read(f: Path = f, key: str = key, name: str = name) -> np.ndarray:
                try:
                    with safe_open(str(f), framework="numpy") as src:
                        w = src.get_tensor(key)
                except Exception as err:  # noqa: BLE001 - a file changed or damaged since indexing
                    raise _malformed(f, err) from None
                return _hf_convert(name, w, config)

            params[name] = LazyTensor(shape, read)
            sources[name] = key
    if config.tie_embeddings:
        params.pop("lm_head", None)
    return config, params, sources


def load_safetensors(path: str | Path) -> tuple[Llama, DecoderConfig]:
    """Load a Hugging Face checkpoint directory (Llama, Qwen2/2.5/3, Gemma 3): ``(model, config)``."""
    config, params, sources = read_safetensors(path)
    return _build(path, config, params, sources), config
