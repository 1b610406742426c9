"""Batched generation (greedy, or temperature / top-k sampling with an explicit PRNG key).

The :class:`Sampler` is kept apart from the model (as in Flax's Gemma/Llama NNX examples): it
prepares the model's weights once for a numerics policy, left-pads a batch of prompts, prefills
a KV cache in one jit-compiled call and decodes with a jit-compiled ``lax.scan``.  The uncached
path (``use_cache=False``) recomputes the whole sequence every step; greedy decoding gives the
same tokens on both paths.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float, Int, PRNGKeyArray

from mugi_jax import mesh as meshlib, numerics
from mugi_jax.models import sharding
from mugi_jax.models.llama import Cache, Llama, prepare

__all__ = ["Sampler", "Generation", "generate", "sample_token"]


@dataclasses.dataclass(frozen=True)
class Generation:
    """Result of a generation call: ``tokens`` ``(batch, max_new_tokens)`` (after EOS: EOS),
    ``text`` the decoded continuations (None without a tokenizer), ``prompt_lengths``."""

    tokens: np.ndarray
    text: list[str] | None
    prompt_lengths: list[int]


def sample_token(logits: Float[Array, "B V"], key: PRNGKeyArray | None, temperature: float,
                 top_k: int | None) -> Int[Array, "B"]:
    """Greedy (``temperature == 0``) or temperature/top-k sampling of one token per row."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def _prefill(graphdef: Any, state: Any, tokens: Array, valid: Array, cache: Cache,
             policy: numerics.Policy) -> tuple[Array, Cache]:
    model = nnx.merge(graphdef, state)
    # the LM head on the last position only, the next token's logits being all decoding reads
    # (SmolLM2, 512 tokens, exact: 0.99 -> 0.79 s; mugi at batch 8: 21.5 -> 19.2 s).  The last
    # rows' logits are not bit-identical to the all-rows head's (docs/models.md): the head's
    # dot sums in another order on fewer rows, and under mugi the final norm's FP32 bits depend
    # on the fusion it lands in, which can flip BF16 roundings of the head's input
    logits, cache = model(tokens, policy, cache=cache, valid=valid, last_only=True)
    return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "steps", "temperature", "top_k",
                                             "eos_id"))
def _decode(graphdef: Any, state: Any, last_logits: Array, cache: Cache, key: Array,
            policy: numerics.Policy, steps: int, temperature: float, top_k: int | None,
            eos_id: int | None) -> Array:
    model = nnx.merge(graphdef, state)
    b = last_logits.shape[0]

    def step(carry: Any, key: Array) -> tuple[Any, Array]:
        logits, cache, done = carry
        tok = sample_token(logits, key, temperature, top_k)
        if eos_id is not None:
            tok = jnp.where(done, eos_id, tok)
            done = done | (tok == eos_id)
        logits, cache = model(tok[:, None], policy, cache=cache, valid=jnp.ones((b, 1), bool))
        return (logits[:, -1], cache, done), tok

    keys = jax.random.split(key, steps)
    _, toks = jax.lax.scan(step, (last_logits, cache, jnp.zeros((b,), bool)), keys)
    return toks.T


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def _full_logits_at(graphdef: Any, state: Any, tokens: Array, valid: Array, slot: Array,
                    policy: numerics.Policy) -> Array:
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens, policy, valid=valid)
    return jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False)


class Sampler:
    """Generate from a :class:`Llama` under a numerics policy.

    Args:
      model: the model (its weights are prepared once for ``policy``; the model is not changed).
      tokenizer: optional; needed for string prompts and for decoded text.
      policy: a preset name or a :class:`~mugi_jax.numerics.Policy`.
      mesh: optional device mesh (:func:`mugi_jax.models.sharding.make_mesh`): the prepared
        weights are sharded by the parameter rules, the KV cache by rows (``data``) and KV heads
        (``model``), and the prompts along ``data`` when the ``data`` axis divides the batch
        (otherwise every ``data`` group decodes the whole batch: same tokens).  Default: the
        mesh of an enclosing :func:`mugi_jax.mesh.using`, else one device.
      mesh_fallback: replicate model dimensions the ``model`` axis does not divide (instead of
        raising ``ValueError`` naming them).
      residency: how the prepared weights are held (:data:`mugi_jax.models.llama.RESIDENCIES`:
        ``prepared``, ``bf16`` - a change of numerics for FP32 weights - or ``int4``).
    """

    def __init__(self, model: Llama, tokenizer: Any = None,
                 policy: numerics.Policy | str = "exact", mesh: Any = None,
                 mesh_fallback: bool = False, residency: str = "prepared") -> None:
        self.policy = numerics.preset(policy, numerics.family_of(model))
        self.config = model.config
        self.tokenizer = tokenizer
        if mesh is None:
            mesh, mesh_fallback = meshlib.current()
        self.mesh, self.mesh_fallback = mesh, mesh_fallback
        if mesh is None:
            prepared = prepare(model, self.policy, residency)
        else:
            prepared = sharding.shard_prepared(model, self.policy, mesh, mesh_fallback, residency)
        self.graphdef, self.state = nnx.split(prepared)

    def _place(self, x: np.ndarray) -> Array:
        """Host rows onto the mesh (along ``data`` when it divides them)."""
        if self.mesh is None:
            return jnp.asarray(x)
        if x.shape[0] % self.mesh.shape["data"]:
            return sharding.put(x, NamedSharding(self.mesh, P()))
        return sharding.put(x, sharding.batch_sharding(self.mesh, x.ndim))

    def _encode(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("string prompts need a tokenizer (Sampler(model, tokenizer))")
                out.append(self.tokenizer.encode(p, bos=getattr(self.tokenizer, "add_bos", False)))
            else:
                out.append([int(t) for t in p])
        if not out or any(len(p) == 0 for p in out):
            raise ValueError("prompts: every prompt needs at least one token")
        return out

    def __call__(self, prompts: Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int = 32,
                 *, temperature: float = 0.0, top_k: int | None = None,
                 key: PRNGKeyArray | None = None, use_cache: bool = True,
                 stop_at_eos: bool = False) -> Generation:
        """Generate ``max_new_tokens`` tokens for each prompt (a batch).

        Sampling (``temperature > 0``) needs an explicit ``key``; the same key gives the same
        tokens.  Raises ``ValueError`` when a prompt plus ``max_new_tokens`` exceeds the model's
        context (``config.max_seq_len``).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {temperature}")
        if temperature > 0 and key is None:
            raise ValueError("sampling with temperature > 0 needs an explicit PRNG key (key=...)")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"top_k: must be in 1..{self.config.vocab_size}, got {top_k}")
        ids = self._encode(prompts)
        lengths = [len(p) for p in ids]
        longest = max(lengths)
        total = longest + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens = {total} exceeds the "
                f"model's context of {self.config.max_seq_len} tokens; shorten the prompt or "
                f"max_new_tokens")
        b = len(ids)
        pad = 0
        tokens = np.full((b, longest), pad, np.int32)
        valid = np.zeros((b, longest), bool)
        for i, p in enumerate(ids):
            tokens[i, longest - len(p):] = p
            valid[i, longest - len(p):] = True
        key = key if key is not None else jax.random.key(0)
        eos = self.config.eos_id if stop_at_eos else None
        if use_cache:
            cache = Cache.init(self.config, b, total)
            if self.mesh is not None:
                shardings = sharding.cache_sharding(self.mesh, self.config, self.mesh_fallback)
                if b % self.mesh.shape["data"]:
                    shardings = jax.tree_util.tree_map(
                        lambda s: NamedSharding(self.mesh, P(*(None if a == "data" else a
                                                               for a in s.spec))), shardings)
                cache = jax.tree_util.tree_map(sharding.put, cache, shardings)
            last, cache = _prefill(self.graphdef, self.state, self._place(tokens),
                                   self._place(valid), cache, self.policy)
            out = sharding.to_host(_decode(self.graphdef, self.state, last, cache, key, self.policy,
                                           max_new_tokens, float(temperature), top_k, eos))
        else:
            out = self._uncached(tokens, valid, max_new_tokens, key, float(temperature), top_k, eos)
        text = None
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(row, skip_special=True) for row in out]
        return Generation(tokens=out, text=text, prompt_lengths=lengths)

    def _uncached(self, tokens: np.ndarray, valid: np.ndarray, steps: int, key: Array,
                  temperature: float, top_k: int | None, eos: int | None) -> np.ndarray:
        b, length = tokens.shape
        total = length + steps
        buf = np.zeros((b, total), np.int32)
        vbuf = np.zeros((b, total), bool)
        buf[:, :length], vbuf[:, :length] = tokens, valid
        keys = jax.random.split(key, steps)
        done = np.zeros((b,), bool)
        out = np.zeros((b, steps), np.int32)
        for s in range(steps):
            slot = length + s - 1
            logits = _full_logits_at(self.graphdef, self.state, self._place(buf),
                                     self._place(vbuf), jnp.asarray(slot, jnp.int32), self.policy)
            tok = sharding.to_host(sample_token(logits, keys[s], temperature, top_k))
            if eos is not None:
                tok = np.where(done, eos, tok)
                done = done | (tok == eos)
            out[:, s] = tok
            buf[:, length + s] = tok
            vbuf[:, length + s] = True
        return out


def generate(model: Llama, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 32,
             policy: numerics.Policy | str = "exact", mesh: Any = None,
             **kwargs: Any) -> Generation:
    """One-shot convenience: ``Sampler(model, tokenizer, policy, mesh)(prompts, max_new_tokens,
    ...)``."""
    return Sampler(model, tokenizer, policy, mesh)(prompts, max_new_tokens, **kwargs)
