"""Flax NNX LLMs under Mugi numerics.

``load("smollm2-135m")`` returns ``(model, tokenizer, config)``: SmolLM2-135M-Instruct from its
GGUF (fetched and verified by :mod:`mugi_jax.data`), dequantized to float32.  Run it with
:func:`forward` (or ``model(tokens, policy)``), generate with :class:`Sampler`, evaluate with
:func:`mugi_jax.eval.perplexity`, capture activations with :func:`capture_activations`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from mugi_jax.models.capture import Recorder, capture_activations
from mugi_jax.models.config import SMOLLM2_135M, LlamaConfig
from mugi_jax.models.generate import Sampler, generate
from mugi_jax.models.llama import Cache, Llama, forward, prepare
from mugi_jax.models.loaders import CheckpointError, load_gguf, load_safetensors
from mugi_jax.models.tokenizer import Tokenizer

__all__ = [
    "LlamaConfig", "SMOLLM2_135M", "Llama", "Cache", "forward", "prepare", "Sampler", "generate",
    "Tokenizer", "load", "load_gguf", "load_safetensors", "CheckpointError", "MODELS",
    "capture_activations", "Recorder",
]

MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)"}


@functools.lru_cache(maxsize=2)
def _load_cached(name: str) -> tuple[Llama, Tokenizer, LlamaConfig]:
    from mugi_jax import data
    from mugi_jax.models.tokenizer import from_gguf

    path = data.model_path("smollm2")
    model, config, reader = load_gguf(path)
    return model, from_gguf(reader), config


def load(name: str = "smollm2-135m", path: str | Path | None = None) -> tuple[Llama, Tokenizer, Any]:
    """Load a model by registry name (or a checkpoint path: a ``.gguf`` file or a safetensors
    directory with ``config.json``, ``tokenizer.json`` optional).  Returns
    ``(model, tokenizer, config)``; ``tokenizer`` is None for a directory without one.

    Raises ``ValueError`` listing the valid names for an unknown name.
    """
    if path is not None:
        p = Path(path)
        if p.suffix == ".gguf":
            from mugi_jax.models.tokenizer import from_gguf

            model, config, reader = load_gguf(p)
            return model, from_gguf(reader), config
        model, config = load_safetensors(p)
        tok = None
        if (p / "tokenizer.json").exists():
            from mugi_jax.models.tokenizer import from_file

            tok = from_file(p / "tokenizer.json", config.bos_id, config.eos_id)
        return model, tok, config
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return _load_cached(name)
