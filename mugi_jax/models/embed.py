"""Sentence embeddings from a BERT encoder under a numerics policy.

Definition (sentence-transformers' for all-MiniLM-L6-v2): each text is tokenized with
``[CLS] ... [SEP]``; a text longer than ``config.max_seq_len`` tokens is cut to its first
``max_seq_len - 1`` tokens plus ``[SEP]`` (``truncate=True``; ``truncate=False`` makes it an
error); the embedding is the mean of the final hidden states of the text's tokens, L2-normalised.

Texts are batched in order of length, each batch right-padded to a multiple of
:data:`PAD_MULTIPLE` tokens (padding is masked, so an embedding does not depend on its batch
beyond float rounding; a fixed input list always gives the same batches, so results are
deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from mugi_jax import numerics
from mugi_jax.models.bert import Bert, encode, prepare
from mugi_jax.models.tokenizer import EncoderTokenizer

__all__ = ["embed", "tokenize", "PAD_MULTIPLE", "weights_note"]


def weights_note(policy: numerics.Policy) -> str | None:
    """How the encoder's INT4 weights are made under ``policy`` (None: no calibrated recipe)."""
    recipe = getattr(policy, "weights", None)
    if recipe is None or getattr(recipe, "method", "rtn") == "rtn":
        return None
    return (f"encoder weights: {recipe.method} g{recipe.group} {recipe.scheme}, calibrated on "
            f"{recipe.calib_tokens} tokens of {recipe.calib_corpus} (document tails); q/k/v, up "
            "and down scales applied to the activation (post-LayerNorm), o_proj's folded into "
            "v_proj")

#: Batches are padded to a multiple of this many tokens (bounds the number of compiled shapes).
PAD_MULTIPLE = 32


def tokenize(tokenizer: EncoderTokenizer, texts: Sequence[str], max_seq_len: int,
             truncate: bool = True) -> list[list[int]]:
    """Token ids of every text, ``[CLS] ... [SEP]``, cut to ``max_seq_len`` (see the module
    docstring).  Raises ``ValueError`` naming the first too-long text when ``truncate`` is False."""
    ids = tokenizer.encode_batch(list(texts))
    out = []
    for i, row in enumerate(ids):
        if len(row) > max_seq_len:
            if not truncate:
                raise ValueError(f"texts[{i}] has {len(row)} tokens, more than the model's "
                                 f"max_seq_len of {max_seq_len}; pass truncate=True to cut it")
            row = row[:max_seq_len - 1] + [tokenizer.eos_id]
        out.append(row)
    return out


def embed(model: Bert, tokenizer: EncoderTokenizer, texts: Sequence[str],
          numerics: numerics.Policy | str = "exact", batch_size: int = 32,
          truncate: bool = True, max_tokens: int | None = None) -> np.ndarray:
    """The ``(len(texts), dim)`` float32 sentence embeddings of ``texts`` under ``numerics``
    (L2-normalised when ``model.config.normalize``; see the module docstring).  ``max_tokens``
    (special tokens included) lowers the truncation length below ``config.max_seq_len``.

    INT4 projection weights follow the policy's ``weights`` recipe (the ``mugi`` presets: AWQ,
    :func:`mugi_jax.models.quantize.encoder_weights_for`; no recipe: round to nearest on the
    fly); see :func:`weights_note`."""
    from mugi_jax import numerics as nx
    from mugi_jax.models.quantize import encoder_weights_for

    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of strings, got one string (wrap it in a list)")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    cfg = model.config
    if max_tokens is not None and not 2 <= max_tokens <= cfg.max_seq_len:
        raise ValueError(f"max_tokens: must be in [2, {cfg.max_seq_len}] (the model's "
                         f"max_seq_len), got {max_tokens}")
    policy = nx.preset(numerics, nx.family_of(model))
    ids = tokenize(tokenizer, texts, cfg.max_seq_len if max_tokens is None else max_tokens,
                   truncate)
    out = np.zeros((len(ids), cfg.dim), np.float32)
    if not ids:
        return out
    ready = prepare(encoder_weights_for(model, tokenizer, policy), policy)
    rows_per_batch = min(batch_size, len(ids))
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    for start in range(0, len(order), rows_per_batch):
        rows = order[start:start + rows_per_batch]
        longest = max(len(ids[i]) for i in rows)
        t = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, cfg.max_positions)
        tokens = np.full((rows_per_batch, t), cfg.pad_id, np.int32)
        valid = np.zeros((rows_per_batch, t), bool)
        for r, i in enumerate(rows):
            tokens[r, :len(ids[i])] = ids[i]
            valid[r, :len(ids[i])] = True
        emb = encode(ready, jnp.asarray(tokens), jnp.asarray(valid), policy)
        out[rows] = np.asarray(emb[:len(rows)], np.float32)
    return out
