"""Flax NNX LLMs and encoders under Mugi numerics.

``load("smollm2-135m")`` returns ``(model, tokenizer, config)``: SmolLM2-135M-Instruct from its
GGUF (fetched and verified by :mod:`mugi_jax.data`), dequantized to float32.  Run it with
:func:`forward` (or ``model(tokens, policy)``), generate with :class:`Sampler`, evaluate with
:func:`mugi_jax.eval.perplexity`, capture activations with :func:`capture_activations`.

``load("minilm-l6")`` returns the all-MiniLM-L6-v2 sentence encoder (:class:`Bert`, FP32
safetensors) with its WordPiece tokenizer; :func:`embed` gives L2-normalised sentence embeddings.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from mugi_jax.models.bert import Bert
from mugi_jax.models.capture import Capture, Recorder, capture_activations
from mugi_jax.models.config import (GEMMA3_270M, MINILM_L6, SMOLLM2_135M, BertConfig,
                                    DecoderConfig, LlamaConfig)
from mugi_jax.models.embed import embed
from mugi_jax.models.generate import Sampler, generate
from mugi_jax.models.llama import Cache, Decoder, Llama, forward, prepare
from mugi_jax.models.loaders import CheckpointError, load_gguf, load_safetensors
from mugi_jax.models.sharding import make_mesh, parse_mesh, shard
from mugi_jax.models.tokenizer import Tokenizer

__all__ = [
    "LlamaConfig", "SMOLLM2_135M", "Llama", "Cache", "forward", "prepare", "Sampler", "generate",
    "Tokenizer", "load", "load_gguf", "load_safetensors", "CheckpointError", "MODELS",
    "capture_activations", "Recorder", "Capture", "BertConfig", "MINILM_L6", "Bert", "embed", "ENCODERS",
    "DecoderConfig", "GEMMA3_270M", "Decoder",
    "shard", "make_mesh", "parse_mesh",
]

MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)",
          "minilm-l6": "all-MiniLM-L6-v2 sentence encoder (BERT, FP32 safetensors)",
          "gemma3-270m": "Gemma 3 270M base (GGUF Q4_K_M, dequantized to float32)"}
#: The :mod:`mugi_jax.data` artifact each GGUF-backed registry name loads.
_GGUF_ARTIFACT = {"smollm2-135m": "smollm2", "gemma3-270m": "gemma3"}
#: Registry names of the encoders (evaluated by embedding, not perplexity).
ENCODERS = ("minilm-l6",)


@functools.lru_cache(maxsize=2)
def _load_cached(name: str) -> tuple[Any, Tokenizer, Any]:
    from mugi_jax import data
    from mugi_jax.models.tokenizer import from_gguf

    if name == "minilm-l6":
        return _load_bert_dir(data.model_path("minilm"))

    path = data.model_path(_GGUF_ARTIFACT[name])
    model, config, reader = load_gguf(path)
    return model, from_gguf(reader), config


def _is_bert_dir(path: Path) -> bool:
    import json

    cfg = path / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "bert"


def _load_bert_dir(path: Path) -> tuple[Bert, Tokenizer, BertConfig]:
    from mugi_jax.models.hf import load_bert
    from mugi_jax.models.tokenizer import encoder_from_file

    model, config = load_bert(path)
    return model, encoder_from_file(path / "tokenizer.json"), config


def load(name: str = "smollm2-135m", path: str | Path | None = None, *, mesh: Any = None,
         mesh_fallback: bool = False) -> tuple[Any, Tokenizer, Any]:
    """Load a model by registry name, or a checkpoint path (given as ``path`` or as ``name``): a
    ``.gguf`` file or a Hugging Face directory with ``config.json``, ``*.safetensors`` and
    optionally ``tokenizer.json`` (decoders: Llama 3, Qwen2/2.5/3, Gemma 3; BERT encoders).
    Returns ``(model, tokenizer, config)``; ``tokenizer`` is None for a directory without one.

    With a device ``mesh``, a Hugging Face Llama directory is read straight onto the mesh, each
    process reading only the slices its devices hold
    (:func:`mugi_jax.models.sharding.load_safetensors_sharded`); other models are loaded, then
    sharded (:func:`shard`).

    Raises ``ValueError`` listing the valid names for an unknown name.
    """
    if path is None and name not in MODELS and Path(name).exists():
        path = name
    if mesh is not None:
        from mugi_jax.models import sharding

        p = None if path is None else Path(path)
        if p is not None and p.is_dir() and sharding.reads_sharded(p):
            model, config = sharding.load_safetensors_sharded(p, mesh, mesh_fallback)
            tok = None
            if (p / "tokenizer.json").exists():
                from mugi_jax.models.tokenizer import from_file

                tok = from_file(p / "tokenizer.json", config.bos_id, config.eos_id)
            return model, tok, config
        model, tok, config = load(name, path)
        return shard(model, mesh, mesh_fallback), tok, config
    if path is not None:
        p = Path(path)
        if p.suffix == ".gguf":
            from mugi_jax.models.tokenizer import from_gguf

            model, config, reader = load_gguf(p)
            return model, from_gguf(reader), config
        if _is_bert_dir(p):
            return _load_bert_dir(p)
        model, config = load_safetensors(p)
        tok = None
        if (p / "tokenizer.json").exists():
            from mugi_jax.models.tokenizer import from_file

            tok = from_file(p / "tokenizer.json", config.bos_id, config.eos_id)
        return model, tok, config
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return _load_cached(name)
