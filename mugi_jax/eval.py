"""Perplexity of a language model under a numerics policy.

Definition (fixed so results are comparable): the text is tokenized with no BOS token; the first
``max_tokens`` tokens are cut into non-overlapping windows of ``context`` tokens (a shorter final
window is kept if it has at least 2 tokens); within each window every position after the first
is predicted from the tokens before it in that window; ``ppl = exp(mean NLL)`` over every
predicted position.  NLL is computed in float32 on device and summed in float64.
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

from mugi_jax import numerics

__all__ = ["perplexity", "corpus_tokens", "window_nll"]


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
               progress: bool = False) -> dict[str, Any]:
    """Perplexity of ``model`` on ``tokens`` (see the module docstring).

    Returns a dict with ``ppl``, ``nll`` (mean), ``predicted_tokens``, ``windows``, ``context``,
    ``tokens_used``, ``numerics`` and ``seconds``.
    """
    from mugi_jax.models.llama import prepare

    policy = numerics.preset(policy)
    if context < 2:
        raise ValueError(f"context: must be >= 2, got {context}")
    if context > model.config.max_seq_len:
        raise ValueError(f"context: {context} exceeds the model's context of "
                         f"{model.config.max_seq_len} tokens")
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
    batch_size = max(1, min(batch_size, n_windows))
    pad = (-n_windows) % batch_size
    if pad:
        win = np.concatenate([win, np.zeros((pad, context), np.int32)])
        val = np.concatenate([val, np.zeros((pad, context), bool)])
    graphdef, state = nnx.split(prepare(model, policy))
    total, count = 0.0, 0
    t0 = time.perf_counter()
    batches = range(0, len(win), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"ppl[{policy.name}]", unit="batch")
    for i in batches:
        nll, cnt = window_nll(graphdef, state, jnp.asarray(win[i:i + batch_size]),
                              jnp.asarray(val[i:i + batch_size]), policy)
        total += float(np.sum(np.asarray(nll, np.float64)))
        count += int(np.sum(np.asarray(cnt)))
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "predicted_tokens": count, "windows": n_windows,
            "context": context, "tokens_used": int(len(toks)), "numerics": policy.name,
            "seconds": time.perf_counter() - t0}
