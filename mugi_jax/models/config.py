"""Model configurations: frozen dataclasses describing a decoder and a BERT encoder.

One :class:`DecoderConfig` covers the decoder families the library runs - Llama (SmolLM2,
Llama 3), Qwen2/2.5/3 and Gemma 3 - as field values, not subclasses, so the model, the loaders
and the cost model read the same record.  ``LlamaConfig`` is the same class (older name).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

__all__ = ["DecoderConfig", "LlamaConfig", "SMOLLM2_135M", "GEMMA3_270M", "ACTIVATIONS",
           "ROPE_LAYOUTS", "FAMILIES", "BertConfig", "MINILM_L6", "LLAMA2_7B", "LLAMA2_13B",
           "LLAMA2_70B", "LLAMA2_70B_GQA", "LLAMA3_8B", "LLAMA3_70B"]

#: Gated-FFN activations: ``silu`` (SwiGLU) and ``gelu_tanh`` (GeGLU with the tanh GELU).
ACTIVATIONS = ("silu", "gelu_tanh")
#: RoPE pair layouts: ``adjacent`` rotates ``(x[2i], x[2i+1])`` (llama.cpp's Llama GGUFs);
#: ``half`` rotates ``(x[i], x[i + D/2])`` (Hugging Face, llama.cpp's Gemma/Qwen GGUFs).
ROPE_LAYOUTS = ("adjacent", "half")
FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape and constants of a decoder (RMSNorm, RoPE, GQA, gated FFN, tied or untied head).

    Attributes:
      vocab_size, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim: shapes.
      rope_theta: RoPE base of the global-attention layers.  norm_eps: RMSNorm epsilon (norm
        weights are stored as the multiplier itself: Gemma's ``1 + w`` is folded in at load).
      tie_embeddings: LM head = embedding.
      max_seq_len: the longest sequence (prompt + generated tokens) the model accepts.
      bos_id, eos_id: special token ids (``None`` when absent).
      family: the checkpoint family (one of :data:`FAMILIES`), for naming, loaders and the
        numerics presets' per-family data (calibrated VLP windows,
        :func:`mugi_jax.numerics.vlp_windows`): the forward pass never reads it.
      activation: the gated FFN's function (:data:`ACTIVATIONS`).
      rope_layout: pair layout of RoPE (:data:`ROPE_LAYOUTS`).
      rope_scaling: RoPE frequency scaling as sorted ``(key, value)`` pairs of the Hugging Face
        ``rope_scaling`` dict (``()``: none).  Types ``llama3`` and ``linear`` are supported.
      rope_scaling_global_only: apply ``rope_scaling`` to the global layers only (Gemma 3).
      rope_theta_local: RoPE base of the sliding-window layers (``None``: ``rope_theta``).
      qkv_bias: Q/K/V projections have biases (Qwen2).
      qk_norm: RMSNorm over ``head_dim`` on each query and key head before RoPE (Qwen3, Gemma 3).
      post_norms: RMSNorm on the attention and FFN outputs before the residual add (Gemma 3).
      embed_scale: the embedding lookup is multiplied by this (Gemma: ``sqrt(dim)``).
      query_scale: scores are ``q.k * query_scale`` (``None``: ``head_dim ** -0.5``).
      sliding_window: window of the sliding-window layers: a query at position ``p`` sees keys at
        ``p - sliding_window < q <= p`` (``None``: no sliding layers).
      layer_types: ``"sliding"`` or ``"full"`` per layer (``()``: every layer full).
    """

    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int = 64
    ffn_dim: int = 1536
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 8192
    bos_id: int | None = 1
    eos_id: int | None = 2
    family: str = "llama"
    activation: str = "silu"
    rope_layout: str = "adjacent"
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    rope_scaling_global_only: bool = False
    rope_theta_local: float | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: float = 1.0
    query_scale: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                  "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}.{f}: must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{name}: n_heads ({self.n_heads}) must be a multiple of "
                             f"n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"{name}.head_dim: must be even for RoPE, got {self.head_dim}")
        for f, allowed in (("family", FAMILIES), ("activation", ACTIVATIONS),
                           ("rope_layout", ROPE_LAYOUTS)):
            if getattr(self, f) not in allowed:
                raise ValueError(f"{name}.{f}: must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, f)!r}")
        if self.layer_types:
            if len(self.layer_types) != self.n_layers:
                raise ValueError(f"{name}.layer_types: needs one entry per layer "
                                 f"({self.n_layers}), got {len(self.layer_types)}")
            bad = sorted(set(self.layer_types) - {"sliding", "full"})
            if bad:
                raise ValueError(f"{name}.layer_types: entries must be 'sliding' or 'full', "
                                 f"got {bad}")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ValueError(f"{name}: layer_types has sliding layers but sliding_window "
                                 f"is {self.sliding_window!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                                or self.sliding_window < 1):
            raise ValueError(f"{name}.sliding_window: must be a positive integer or None, "
                             f"got {self.sliding_window!r}")
        kind = dict(self.rope_scaling).get("rope_type", dict(self.rope_scaling).get("type"))
        if self.rope_scaling and kind not in ("llama3", "linear", "default"):
            raise ValueError(f"{name}.rope_scaling: type {kind!r} is not supported "
                             "(supported: llama3, linear, default)")

    #: What the cost model and the docs read: a causal decoder (prefill and decode).
    causal = True

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def attn_scale(self) -> float:
        """The factor on ``q . k``."""
        return self.head_dim ** -0.5 if self.query_scale is None else self.query_scale

    def window(self, layer: int) -> int | None:
        """Sliding window of ``layer`` (``None``: global attention)."""
        if self.layer_types and self.layer_types[layer] == "sliding":
            return self.sliding_window
        return None

    def layer_rope(self, layer: int) -> tuple[float, tuple[tuple[str, Any], ...]]:
        """``(base, scaling)`` of RoPE in ``layer``."""
        if self.window(layer) is not None:
            theta = self.rope_theta if self.rope_theta_local is None else self.rope_theta_local
            return theta, (() if self.rope_scaling_global_only else self.rope_scaling)
        return self.rope_theta, self.rope_scaling

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter, in the model's own naming and layout
        (linear kernels are ``(in, out)``)."""
        d, hd = self.dim, self.head_dim
        qd, kvd = self.n_heads * hd, self.n_kv_heads * hd
        shapes: dict[str, tuple[int, ...]] = {"embed": (self.vocab_size, d), "final_norm": (d,)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes.update({
                p + "attn_norm": (d,), p + "mlp_norm": (d,),
                p + "q_proj": (d, qd), p + "k_proj": (d, kvd), p + "v_proj": (d, kvd),
                p + "o_proj": (qd, d),
                p + "gate_proj": (d, self.ffn_dim), p + "up_proj": (d, self.ffn_dim),
                p + "down_proj": (self.ffn_dim, d),
            })
            if self.qkv_bias:
                shapes.update({p + "q_proj.bias": (qd,), p + "k_proj.bias": (kvd,),
                               p + "v_proj.bias": (kvd,)})
            if self.qk_norm:
                shapes.update({p + "q_norm": (hd,), p + "k_norm": (hd,)})
            if self.post_norms:
                shapes.update({p + "post_attn_norm": (d,), p + "post_mlp_norm": (d,)})
        if not self.tie_embeddings:
            shapes["lm_head"] = (d, self.vocab_size)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LlamaConfig = DecoderConfig


def gemma3_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's layout: every ``pattern``-th layer global, the others sliding."""
    return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers))


SMOLLM2_135M = DecoderConfig()

GEMMA3_270M = DecoderConfig(
    vocab_size=262144, dim=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, ffn_dim=2048,
    rope_theta=1_000_000.0, rope_theta_local=10_000.0, norm_eps=1e-6, tie_embeddings=True,
    max_seq_len=32768, bos_id=2, eos_id=1, family="gemma3", activation="gelu_tanh",
    rope_layout="half", qk_norm=True, post_norms=True, embed_scale=math.sqrt(640),
    query_scale=256 ** -0.5, sliding_window=512, layer_types=gemma3_layer_types(18))


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and constants of a BERT sentence encoder (post-LayerNorm, erf-GELU FFN, absolute
    position and token-type embeddings, bidirectional attention, mean pooling).

    Attributes:
      vocab_size, dim, n_layers, n_heads, head_dim, ffn_dim: shapes.
      max_positions: rows of the position-embedding table.
      type_vocab_size: rows of the token-type table (every token of a single sentence is type 0).
      norm_eps: LayerNorm epsilon.
      max_seq_len: the longest input (special tokens included) the encoder is given; longer
        texts are truncated to it (sentence-transformers' ``max_seq_length``), see
        :func:`mugi_jax.models.embed`.
      pad_id: the padding token id.
      normalize: L2-normalise the pooled embedding.
    """

    vocab_size: int = 30522
    dim: int = 384
    n_layers: int = 6
    n_heads: int = 12
    head_dim: int = 32
    ffn_dim: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    max_seq_len: int = 256
    pad_id: int = 0
    normalize: bool = True
    #: the family key of the numerics presets' per-family data (e.g. VLP windows)
    family: ClassVar[str] = "bert"

    def __post_init__(self) -> None:
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "head_dim", "ffn_dim",
                  "max_positions", "type_vocab_size", "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"BertConfig.{f}: must be a positive integer, got {v!r}")
        if self.max_seq_len > self.max_positions:
            raise ValueError(f"BertConfig.max_seq_len ({self.max_seq_len}) exceeds max_positions "
                             f"({self.max_positions})")

    #: What the cost model and the docs read: an encoder (no decode, no causal mask).
    causal = False
    activation = "gelu"  # erf form

    @property
    def n_kv_heads(self) -> int:
        """Every head has its own K and V (no GQA)."""
        return self.n_heads

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], max_seq_len: int | None = None) -> "BertConfig":
        """From a Hugging Face ``config.json`` dict (``model_type`` "bert", absolute positions,
        erf GELU); ``max_seq_len`` defaults to ``max_position_embeddings``."""
        if cfg.get("model_type") != "bert":
            raise ValueError(f"config.json: model_type {cfg.get('model_type')!r} is not 'bert'")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"config.json: hidden_act {cfg['hidden_act']!r} is not supported "
                             "(only 'gelu', the erf form)")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"config.json: position_embedding_type "
                             f"{cfg['position_embedding_type']!r} is not supported (only 'absolute')")
        dim, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        if dim % heads:
            raise ValueError(f"config.json: hidden_size {dim} is not a multiple of "
                             f"num_attention_heads {heads}")
        max_pos = int(cfg["max_position_embeddings"])
        return cls(vocab_size=int(cfg["vocab_size"]), dim=dim, n_layers=int(cfg["num_hidden_layers"]),
                   n_heads=heads, head_dim=dim // heads, ffn_dim=int(cfg["intermediate_size"]),
                   max_positions=max_pos, type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                   norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                   max_seq_len=max_pos if max_seq_len is None else int(max_seq_len),
                   pad_id=int(cfg.get("pad_token_id") or 0))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter (model naming; linear kernels ``(in, out)``)."""
        d, f = self.dim, self.ffn_dim
        shapes: dict[str, tuple[int, ...]] = {
            "embed": (self.vocab_size, d), "pos_embed": (self.max_positions, d),
            "type_embed": (self.type_vocab_size, d), "embed_norm.scale": (d,),
            "embed_norm.bias": (d,)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            for name, shape in (("attn.q_proj", (d, d)), ("attn.k_proj", (d, d)),
                                ("attn.v_proj", (d, d)), ("attn.o_proj", (d, d)),
                                ("mlp.up_proj", (d, f)), ("mlp.down_proj", (f, d))):
                shapes[p + name + ".kernel"] = shape
                shapes[p + name + ".bias"] = (shape[1],)
            for norm in ("attn_norm", "mlp_norm"):
                shapes[p + norm + ".scale"] = (d,)
                shapes[p + norm + ".bias"] = (d,)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: sentence-transformers/all-MiniLM-L6-v2 (inputs truncated to 256 tokens, as there).
MINILM_L6 = BertConfig()


# ---------------------------------------------------------------------------------------------
# The paper's evaluation models (shapes only: no checkpoint is loaded for them; the cost model
# builds its op tables from these records).  The authors model Llama-2-70B both as MHA
# (kv heads = heads) and with GQA (8 KV heads).
# ---------------------------------------------------------------------------------------------

def _llama(vocab: int, dim: int, layers: int, heads: int, kv_heads: int, ffn: int, rope: float,
           max_seq: int, bos: int, eos: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                       head_dim=dim // heads, ffn_dim=ffn, rope_theta=rope, norm_eps=1e-5,
                       tie_embeddings=False, max_seq_len=max_seq, bos_id=bos, eos_id=eos)


LLAMA2_7B = _llama(32000, 4096, 32, 32, 32, 11008, 10000.0, 4096, 1, 2)
LLAMA2_13B = _llama(32000, 5120, 40, 40, 40, 13824, 10000.0, 4096, 1, 2)
LLAMA2_70B = _llama(32000, 8192, 80, 64, 64, 28672, 10000.0, 4096, 1, 2)
LLAMA2_70B_GQA = _llama(32000, 8192, 80, 64, 8, 28672, 10000.0, 4096, 1, 2)
LLAMA3_8B = _llama(128256, 4096, 32, 32, 8, 14336, 500000.0, 8192, 128000, 128001)
LLAMA3_70B = _llama(128256, 8192, 80, 64, 8, 28672, 500000.0, 8192, 128000, 128001)
