"""Hugging Face checkpoint directories (``config.json`` + ``*.safetensors``), read tensor by tensor.

:class:`SafetensorsDir` opens every ``*.safetensors`` file of a directory memory-mapped
(``safetensors.safe_open``) and hands out one tensor at a time, so loading never holds a second
full copy of the checkpoint.  :func:`load_bert` builds a :class:`~mugi_jax.models.bert.Bert` from
a BERT directory (e.g. sentence-transformers/all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax.models.bert import Bert
from mugi_jax.models.config import BertConfig

__all__ = ["SafetensorsDir", "read_config", "load_bert", "bert_param_name"]


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of checkpoint directory ``path``."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found (a Hugging Face checkpoint directory needs "
                                "config.json)")
    return json.loads(f.read_text(encoding="utf-8"))


class SafetensorsDir:
    """The tensors of every ``*.safetensors`` file in a directory, read lazily by name."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {self.path}")
        self._where: dict[str, Any] = {}
        for f in files:
            handle = safe_open(str(f), framework="numpy")
            for key in handle.keys():
                self._where[key] = handle

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        """Tensor ``key`` as float32 (one tensor in memory at a time)."""
        return np.asarray(self._where[key].get_tensor(key)).astype(np.float32, copy=False)

    def read(self, key: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The part ``index`` (a tuple of slices; ``None``: all) of tensor ``key`` as float32.
        Only those bytes are read from the memory-mapped file, so a host of a multi-process run
        loads just the shards its own devices hold (:mod:`mugi_jax.models.sharding`)."""
        import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy: BF16 checkpoints)

        part = self._where[key].get_slice(key)
        x = part[tuple(index)] if index else part[:]
        return np.asarray(x).astype(np.float32, copy=False)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for key in self._where:
            yield key, self.get(key)


_BERT_LAYER = {
    "attention.self.query": "attn.q_proj", "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj", "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj", "output.LayerNorm": "mlp_norm",
}
_BERT_TOP = {
    "embeddings.word_embeddings.weight": "embed",
    "embeddings.position_embeddings.weight": "pos_embed",
    "embeddings.token_type_embeddings.weight": "type_embed",
    "embeddings.LayerNorm.weight": "embed_norm.scale",
    "embeddings.LayerNorm.bias": "embed_norm.bias",
}
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def bert_param_name(key: str) -> tuple[str, bool] | None:
    """``(model parameter name, transpose?)`` of a Hugging Face BERT tensor name, or None for a
    tensor the encoder does not use (``position_ids``, the pooler, an MLM head)."""
    key = key.removeprefix("bert.")
    if key in _BERT_TOP:
        return _BERT_TOP[key], False
    m = _LAYER_KEY.match(key)
    if m is None or m.group(2) not in _BERT_LAYER:
        return None
    base = f"layers.{m.group(1)}.{_BERT_LAYER[m.group(2)]}"
    if base.endswith("_norm"):
        return base + (".scale" if m.group(3) == "weight" else ".bias"), False
    return base + (".kernel" if m.group(3) == "weight" else ".bias"), m.group(3) == "weight"


def _set_param(model: Bert, name: str, value: np.ndarray) -> None:
    *parents, leaf = name.split(".")
    obj: Any = model
    for part in parents:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    setattr(obj, leaf, nnx.Param(jnp.asarray(value)))


def load_bert(path: str | Path, max_seq_len: int | None = None) -> tuple[Bert, BertConfig]:
    """Load a Hugging Face BERT directory: ``(model, config)``.

    ``max_seq_len`` defaults to ``max_seq_length`` of ``sentence_bert_config.json`` when the
    directory has one (a sentence-transformers model), else ``max_position_embeddings``.
    Raises ``ValueError`` naming the tensor for a missing tensor or a shape mismatch.
    """
    path = Path(path)
    if max_seq_len is None and (path / "sentence_bert_config.json").is_file():
        st = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        max_seq_len = st.get("max_seq_length")
    config = BertConfig.from_hf(read_config(path), max_seq_len)
    tensors = SafetensorsDir(path)
    expected = config.param_shapes()
    model = nnx.eval_shape(lambda: Bert(config, rngs=nnx.Rngs(0)))
    seen: dict[str, str] = {}
    for key in tensors.keys():
        mapped = bert_param_name(key)
        if mapped is None:
            continue
        name, transpose = mapped
        want = expected.get(name)
        got = tensors.shape(key)
        got = got[::-1] if transpose else got
        if want is None or got != want:
            raise ValueError(f"{path}: tensor {key!r} has shape {tensors.shape(key)}, which does "
                             f"not fit the config (model parameter {name}, expected {want})")
        w = tensors.get(key)
        _set_param(model, name, np.ascontiguousarray(w.T) if transpose else w)
        seen[name] = key
    missing = [n for n in expected if n not in seen]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing {len(missing)} tensor(s) the config needs, "
                         f"e.g. model parameter {missing[0]} (shape {expected[missing[0]]})")
    return model, config
