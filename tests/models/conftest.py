"""Shared fixtures: a tiny random Llama for fast unit tests."""

from __future__ import annotations

import pytest

from mugi_jax.models.config import LlamaConfig

TINY = LlamaConfig(vocab_size=101, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                   ffn_dim=48, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                   max_seq_len=64, bos_id=1, eos_id=2)


@pytest.fixture(scope="module")
def tiny_config() -> LlamaConfig:
    return TINY


@pytest.fixture(scope="module")
def tiny_model():
    from flax import nnx

    from mugi_jax.models import Llama

    return Llama(TINY, rngs=nnx.Rngs(0))
