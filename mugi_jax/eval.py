"""Accuracy of a model under a numerics policy: perplexity (decoders), embedding fidelity and
k-NN genre classification (encoders).

Perplexity (fixed so results are comparable): :func:`perplexity` evaluates exactly the token
ids it is given, for every model family (:func:`corpus_tokens` tokenizes with no BOS token); the
first ``max_tokens`` tokens are cut into non-overlapping windows of ``context`` tokens (a shorter
final window is kept if it has at least 2 tokens); within each window every position after the
first is predicted from the tokens before it in that window; ``ppl = exp(mean NLL)`` over every
predicted position.  NLL is computed in float32 on device and summed in float64.  Only when asked
(``bos_id``) is a BOS token put in front of every window; then the window's first token is
predicted too (from the BOS alone), so a window predicts ``context`` tokens.

Encoders (:func:`embedding_eval`): the cosine similarity of each text's embedding to its exact
(FP32) embedding, and the leave-one-out k-NN accuracy of a labelled task on the embeddings
(:func:`brown_genre_task`: the genre of each of the 500 Brown files from its first tokens).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from mugi_jax import mesh as meshlib, numerics

__all__ = ["perplexity", "corpus_tokens", "window_nll", "knn_predict", "knn_accuracy",
           "brown_genre_task", "embedding_eval", "genre_eval"]


def corpus_tokens(tokenizer: Any, text: str, max_tokens: int | None) -> list[int]:
    """The first ``max_tokens`` tokens of ``text`` (no BOS).  Only a prefix of the text is
    tokenized (grown until it yields more than ``max_tokens`` tokens), which gives the same
    leading tokens as tokenizing the whole text."""
    if max_tokens is None:
        return tokenizer.encode(text)
    n = max(4096, max_tokens * 8)
    while True:
        ids = tokenizer.encode(text[:n])
        if n >= len(text):
            return ids[:max_tokens]
        if len(ids) > max_tokens + 64:
            return ids[:max_tokens]
        n *= 2


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def window_nll(graphdef: Any, state: Any, tokens: Int[Array, "B T"], valid: Array,
               policy: numerics.Policy) -> tuple[Array, Array]:
    """Per-window summed NLL and predicted-token count for a batch of windows."""
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens, policy, valid=valid)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = tokens[:, 1:]
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    m = valid[:, 1:] & valid[:, :-1]
    return jnp.sum(jnp.where(m, nll, 0.0), axis=1), jnp.sum(m, axis=1)


def perplexity(model: Any, tokens: list[int] | np.ndarray, policy: numerics.Policy | str = "exact",
               context: int = 512, max_tokens: int | None = 4096, batch_size: int = 4,
               progress: bool = False, bos_id: int | None = None, mesh: Any = None,
               mesh_fallback: bool = False) -> dict[str, Any]:
    """Perplexity of ``model`` on ``tokens`` (see the module docstring); ``bos_id``: put this
    token in front of every window (default: none, the ids are evaluated as given).

    With a ``mesh`` (:func:`mugi_jax.models.sharding.make_mesh`) the prepared weights are sharded
    by the parameter rules and each batch of windows along ``data``; ``batch_size`` is rounded
    up to a multiple of the ``data`` axis (the padding windows predict nothing).  Without
    ``mesh``, the mesh of an enclosing :func:`mugi_jax.mesh.using` is used.

    Returns a dict with ``ppl``, ``nll`` (mean), ``predicted_tokens``, ``windows``, ``context``,
    ``tokens_used``, ``bos_id``, ``numerics`` and ``seconds``.
    """
    from mugi_jax.models import sharding
    from mugi_jax.models.llama import prepare

    policy = numerics.preset(policy, numerics.family_of(model))
    if mesh is None:
        mesh, mesh_fallback = meshlib.current()
    if context < 2:
        raise ValueError(f"context: must be >= 2, got {context}")
    if context + (bos_id is not None) > model.config.max_seq_len:
        raise ValueError(f"context: {context}{' + BOS' if bos_id is not None else ''} exceeds "
                         f"the model's context of {model.config.max_seq_len} tokens")
    toks = np.asarray(tokens, np.int32).reshape(-1)
    if max_tokens is not None:
        toks = toks[:max_tokens]
    n_full = len(toks) // context
    rest = len(toks) - n_full * context
    n_windows = n_full + (1 if rest >= 2 else 0)
    if n_windows == 0:
        raise ValueError(f"need at least 2 tokens to measure perplexity, got {len(toks)}")
    win = np.zeros((n_windows, context), np.int32)
    val = np.zeros((n_windows, context), bool)
    win[:n_full] = toks[:n_full * context].reshape(n_full, context)
    val[:n_full] = True
    if n_windows > n_full:
        win[-1, :rest] = toks[n_full * context:]
        val[-1, :rest] = True
    if bos_id is not None:
        win = np.concatenate([np.full((n_windows, 1), bos_id, np.int32), win], axis=1)
        val = np.concatenate([np.ones((n_windows, 1), bool), val], axis=1)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    batch_size = min(batch_size, n_windows)  # fewer windows than a batch: one smaller batch
    if mesh is not None:
        batch_size = -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]
    pad = (-n_windows) % batch_size
    if pad:
        win = np.concatenate([win, np.zeros((pad, win.shape[1]), np.int32)])
        val = np.concatenate([val, np.zeros((pad, win.shape[1]), bool)])
    if mesh is None:
        graphdef, state = nnx.split(prepare(model, policy))
        place = jnp.asarray
    else:
        graphdef, state = nnx.split(sharding.shard_prepared(model, policy, mesh, mesh_fallback))
        rows = sharding.batch_sharding(mesh, 2)
        place = lambda x: sharding.put(x, rows)  # noqa: E731
    total, count = 0.0, 0
    t0 = time.perf_counter()
    batches = range(0, len(win), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"ppl[{policy.name}]", unit="batch")
    for i in batches:
        nll, cnt = window_nll(graphdef, state, place(win[i:i + batch_size]),
                              place(val[i:i + batch_size]), policy)
        total += float(np.sum(sharding.to_host(nll).astype(np.float64)))
        count += int(np.sum(sharding.to_host(cnt)))
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "predicted_tokens": count, "windows": n_windows,
            "context": context, "tokens_used": int(len(toks)), "bos_id": bos_id,
            "numerics": policy.name,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------
# Sentence embeddings (encoders): fidelity to the exact embedding and a labelled task
# ------------------------------------------------------------------------------------------


def knn_predict(embeddings: np.ndarray, labels: Any, k: int = 5) -> np.ndarray:
    """Leave-one-out k-nearest-neighbour predictions by cosine similarity.

    Each item gets the majority label of its ``k`` most similar other items (similarity = dot
    product of the L2-normalised embeddings; equal similarities are ordered by item index); a
    tie in votes goes to the tied label with the larger summed similarity.
    """
    e = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    n = len(e)
    if not 1 <= k < n:
        raise ValueError(f"k: must be in [1, {n - 1}] for {n} items, got {k}")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    classes, codes = np.unique(labels, return_inverse=True)
    near_sims = np.take_along_axis(sims, nearest, axis=1)
    onehot = np.eye(len(classes))[codes[nearest]]  # n k C
    # votes first; the summed similarity (|sum| <= k, scaled below half a vote) breaks ties
    score = onehot.sum(axis=1) + (onehot * near_sims[..., None]).sum(axis=1) / (2 * (k + 1))
    return classes[np.argmax(score, axis=1)]


def knn_accuracy(embeddings: np.ndarray, labels: Any, k: int = 5) -> float:
    """The fraction of items :func:`knn_predict` labels correctly."""
    return float(np.mean(knn_predict(embeddings, labels, k) == np.asarray(labels)))


def brown_genre_task(passages: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """The Brown genre-classification task: ``(texts, genres, file ids)``, one passage per file
    (the file's text; the encoder keeps its first tokens), the genre being the second letter
    of the file id (``ca01`` -> ``a``, press reportage; 15 genres, 500 files).

    ``passages`` < 500 takes that many files evenly spaced in filename order (every genre keeps
    its share)."""
    from mugi_jax import data

    docs = data.brown_documents()
    if passages is not None:
        if not 2 <= passages <= len(docs):
            raise ValueError(f"passages: must be in [2, {len(docs)}], got {passages}")
        docs = [docs[i] for i in np.linspace(0, len(docs) - 1, passages).round().astype(int)]
    return [t for _, t in docs], [f[1] for f, _ in docs], [f for f, _ in docs]


def embedding_eval(model: Any, tokenizer: Any, texts: list[str], labels: Any,
                   policy: numerics.Policy | str = "exact", reference: np.ndarray | None = None,
                   k: int = 5, max_tokens: int | None = None,
                   batch_size: int = 32) -> dict[str, Any]:
    """Embed ``texts`` under ``policy`` and measure it.

    Returns ``knn_accuracy`` (:func:`knn_accuracy` on ``labels``), ``cosine_mean`` /
    ``cosine_min`` (cosine similarity of each embedding to the matching row of ``reference``,
    the exact embeddings; None without one), ``embeddings``, ``numerics``, ``seconds``.
    """
    from mugi_jax.models.embed import embed

    policy = numerics.preset(policy, numerics.family_of(model))
    t0 = time.perf_counter()
    emb = embed(model, tokenizer, texts, policy, batch_size=batch_size, max_tokens=max_tokens)
    seconds = time.perf_counter() - t0
    cos = None
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        e = np.asarray(emb, np.float64)
        cos = np.sum(e * ref, axis=1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
    from mugi_jax.models.embed import weights_note

    return {"numerics": policy.name, "knn_accuracy": knn_accuracy(emb, labels, k), "k": k,
            "weights_note": weights_note(policy),
            "cosine_mean": None if cos is None else float(np.mean(cos)),
            "cosine_min": None if cos is None else float(np.min(cos)),
            "texts": len(texts), "embeddings": emb, "seconds": seconds}


def genre_eval(model: Any, tokenizer: Any, presets: list[str], passages: int | None = None,
               max_tokens: int | None = None, k: int = 5, batch_size: int = 32,
               progress: bool = False) -> list[dict[str, Any]]:
    """:func:`embedding_eval` of each preset on :func:`brown_genre_task`, exact first (the
    reference of the cosine similarities; added when ``presets`` lacks it).  One dict per
    preset, embeddings included."""
    texts, labels, _ = brown_genre_task(passages)
    names = ["exact"] + [p for p in presets if p != "exact"]
    rows, reference = [], None
    for name in names:
        r = embedding_eval(model, tokenizer, texts, labels, name, reference=reference, k=k,
                           max_tokens=max_tokens, batch_size=batch_size)
        if name == "exact":
            reference = r["embeddings"]
            r["cosine_mean"] = r["cosine_min"] = 1.0
        if progress:
            print(f"{name}: k-NN accuracy {r['knn_accuracy']:.3f}, cosine to exact mean "
                  f"{r['cosine_mean']:.5f} min {r['cosine_min']:.5f} ({r['seconds']:.1f} s)",
                  flush=True)
        rows.append(r)
    return rows
