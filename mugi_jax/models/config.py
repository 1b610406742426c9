"""Model configuration: a frozen dataclass describing a Llama-family decoder."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and constants of a Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU).

    RoPE rotates *adjacent* pairs ``(x[2i], x[2i+1])`` (the GGUF / llama.cpp layout); the
    safetensors loader permutes Hugging Face Q/K weights into that layout.

    Attributes:
      vocab_size, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim: shapes.
      rope_theta: RoPE base.  norm_eps: RMSNorm epsilon.  tie_embeddings: LM head = embedding.
      max_seq_len: the longest sequence (prompt + generated tokens) the model accepts.
      bos_id, eos_id: special token ids (``None`` when absent).
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

    def __post_init__(self) -> None:
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                  "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LlamaConfig.{f}: must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_heads ({self.n_heads}) must be a multiple of "
                             f"n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim: must be even for RoPE, got {self.head_dim}")

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.n_heads // self.n_kv_heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter, in the model's own naming and layout
        (linear kernels are ``(in, out)``)."""
        d, hd = self.dim, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"embed": (self.vocab_size, d), "final_norm": (d,)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes.update({
                p + "attn_norm": (d,), p + "mlp_norm": (d,),
                p + "q_proj": (d, self.n_heads * hd), p + "k_proj": (d, self.n_kv_heads * hd),
                p + "v_proj": (d, self.n_kv_heads * hd), p + "o_proj": (self.n_heads * hd, d),
                p + "gate_proj": (d, self.ffn_dim), p + "up_proj": (d, self.ffn_dim),
                p + "down_proj": (self.ffn_dim, d),
            })
        if not self.tie_embeddings:
            shapes["lm_head"] = (d, self.vocab_size)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SMOLLM2_135M = LlamaConfig()
