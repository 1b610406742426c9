"""A Flax NNX Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU, tied or untied head).

Every numerics-dependent op goes through the :class:`~mugi_jax.numerics.LayerNumerics` of the
layer (``policy.layer(i)``), passed in at call time: the model never branches on numerics.

Sequences are laid out in *slots*.  Without a cache, slot ``j`` is position ``j`` of the input;
with a :class:`Cache`, the input occupies slots ``cache.index .. cache.index + T - 1``.  A slot may
be invalid (left padding of a batched prompt): valid queries never attend to invalid slots, and an
invalid query attends only to itself (so no softmax row is empty).  RoPE uses the token's
*position* (its index among the valid tokens of its row), not its slot.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from mugi_jax import numerics
from mugi_jax.models import capture
from mugi_jax.models.config import LlamaConfig

__all__ = ["Llama", "Cache", "RMSNorm", "Linear", "rope", "forward", "prepare"]


@struct.dataclass
class Cache:
    """KV cache of all layers: ``k``/``v`` are ``(layers, batch, slots, kv_heads, head_dim)``,
    ``valid`` is ``(batch, slots)``, ``index`` the next slot to write (scalar int32)."""

    k: Float[Array, "L B S H D"]
    v: Float[Array, "L B S H D"]
    valid: Bool[Array, "B S"]
    index: Int[Array, ""]

    @classmethod
    def init(cls, config: LlamaConfig, batch: int, slots: int,
             dtype: jnp.dtype = jnp.float32) -> "Cache":
        shape = (config.n_layers, batch, slots, config.n_kv_heads, config.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.k.shape[2]


def rope(x: Float[Array, "B T H D"], positions: Int[Array, "B T"],
         theta: float) -> Float[Array, "B T H D"]:
    """Rotary embedding on adjacent pairs ``(x[2i], x[2i+1])`` with frequency ``theta^(-2i/D)``."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    ang = positions.astype(jnp.float32)[..., None] * inv  # B T D/2
    cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]
    xr = x.astype(jnp.float32).reshape(*x.shape[:-1], d // 2, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` in FP32."""

    def __init__(self, dim: int, eps: float) -> None:
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x = x.astype(jnp.float32)
        ms = jnp.mean(x * x, axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(ms + self.eps) * self.scale[...]


class Linear(nnx.Module):
    """A bias-free projection with an ``(in, out)`` kernel; the GEMM is the policy's."""

    def __init__(self, din: int, dout: int, name: str, *, rngs: nnx.Rngs | None = None,
                 kernel: Any = None) -> None:
        if kernel is None:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            kernel = jax.random.normal(rngs.params(), (din, dout), jnp.float32) * (1.0 / din ** 0.5)
        self.kernel = nnx.Param(kernel)
        self.name = name

    def __call__(self, x: Float[Array, "... din"],
                 nx: numerics.LayerNumerics) -> Float[Array, "... dout"]:
        w = self.kernel.get_value()
        capture.record(self.name, "gemm", x, w)
        return nx.linear(x, w)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache."""

    def __init__(self, cfg: LlamaConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        d, hd = cfg.dim, cfg.head_dim
        p = f"layers.{layer}."
        self.q_proj = Linear(d, cfg.n_heads * hd, p + "q_proj", rngs=rngs)
        self.k_proj = Linear(d, cfg.n_kv_heads * hd, p + "k_proj", rngs=rngs)
        self.v_proj = Linear(d, cfg.n_kv_heads * hd, p + "v_proj", rngs=rngs)
        self.o_proj = Linear(cfg.n_heads * hd, d, p + "o_proj", rngs=rngs)
        self.cfg = cfg
        self.prefix = p

    def __call__(self, x: Float[Array, "B T d"], positions: Int[Array, "B T"],
                 q_slots: Int[Array, "T"], nx: numerics.LayerNumerics,
                 kv: tuple[Array, Array, Array] | None,
                 valid: Bool[Array, "B T"]) -> tuple[Array, tuple[Array, Array] | None]:
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q_proj(x, nx).reshape(b, t, cfg.n_heads, cfg.head_dim)
        k = self.k_proj(x, nx).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        v = self.v_proj(x, nx).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        q = rope(q, positions, cfg.rope_theta)
        k = nx.kv_store(rope(k, positions, cfg.rope_theta).transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        v = nx.kv_store(v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        if kv is None:  # keys are this call's tokens, slots 0..T-1
            keys, values, key_valid = k, v, valid
            new_kv = None
        else:
            ck, cv, cvalid = kv
            start = q_slots[0]
            keys = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
            values = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
            key_valid = cvalid
            new_kv = (keys, values)
        k_slots = jnp.arange(keys.shape[1])
        causal = k_slots[None, :] <= q_slots[:, None]  # T S
        mask = causal[None] & (key_valid[:, None, :] | (k_slots[None, None, :] == q_slots[None, :, None]))
        kh, g, hd = cfg.n_kv_heads, cfg.group, cfg.head_dim
        # head-major: (B, KV heads, group x T, D); the query heads of a GQA group share K and V
        qg = q.reshape(b, t, kh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, hd)
        capture.record(self.prefix + "qk", "gemm", qg)
        row_slots = jnp.tile(q_slots, g)  # the slot of each of the g x T query rows
        scores = nx.scores(qg, keys.transpose(0, 2, 1, 3), row_slots) * jnp.float32(hd ** -0.5)
        scores = scores.reshape(b, kh, g, t, -1)
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf).reshape(b, kh, g * t, -1)
        capture.record(self.prefix + "softmax", "nonlinear", scores)
        probs = nx.softmax(scores, axis=-1)
        capture.record(self.prefix + "pv", "gemm", probs)
        out = nx.context(probs, values.transpose(0, 2, 1, 3), row_slots)  # B kh (g t) D
        out = out.reshape(b, kh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.n_heads * hd)
        return self.o_proj(out, nx), new_kv


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: LlamaConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        p = f"layers.{layer}."
        self.gate_proj = Linear(cfg.dim, cfg.ffn_dim, p + "gate_proj", rngs=rngs)
        self.up_proj = Linear(cfg.dim, cfg.ffn_dim, p + "up_proj", rngs=rngs)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim, p + "down_proj", rngs=rngs)
        self.prefix = p

    def __call__(self, x: Float[Array, "B T d"], nx: numerics.LayerNumerics) -> Float[Array, "B T d"]:
        g = self.gate_proj(x, nx)
        capture.record(self.prefix + "silu", "nonlinear", g)
        h = nx.silu(g) * self.up_proj(x, nx)
        return self.down_proj(h, nx)


class Block(nnx.Module):
    """Pre-norm decoder block."""

    def __init__(self, cfg: LlamaConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg, layer, rngs=rngs)

    def __call__(self, x: Float[Array, "B T d"], positions: Int[Array, "B T"],
                 q_slots: Int[Array, "T"], nx: numerics.LayerNumerics,
                 kv: tuple[Array, Array, Array] | None,
                 valid: Bool[Array, "B T"]) -> tuple[Float[Array, "B T d"], tuple[Array, Array] | None]:
        h, new_kv = self.attn(self.attn_norm(x), positions, q_slots, nx, kv, valid)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x), nx)
        return x, new_kv


class Llama(nnx.Module):
    """The decoder.  ``model(tokens, policy)`` returns ``(logits, cache)``.

    Args (call):
      tokens: ``(batch, T)`` int token ids.
      policy: a :class:`~mugi_jax.numerics.Policy` (default: exact FP32).
      cache: a :class:`Cache` to read from and write slots ``cache.index ..`` into (``None``: no
        cache, the tokens are the whole sequence).
      valid: ``(batch, T)`` bool, False for padding (default: all valid).
      positions: ``(batch, T)`` RoPE positions (default: the count of valid tokens before each
        token in its row, including those already in the cache).
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs | None = None) -> None:
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.embed = nnx.Param(
            jax.random.normal(rngs.params(), (config.vocab_size, config.dim), jnp.float32) * 0.02)
        self.layers = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layers)])
        self.final_norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nnx.data(None if config.tie_embeddings
                                else Linear(config.dim, config.vocab_size, "lm_head", rngs=rngs))

    def __call__(self, tokens: Int[Array, "B T"], policy: numerics.Policy = numerics.EXACT, *,
                 cache: Cache | None = None, valid: Bool[Array, "B T"] | None = None,
                 positions: Int[Array, "B T"] | None = None) -> tuple[Float[Array, "B T V"], Cache | None]:
        cfg = self.config
        tokens = jnp.asarray(tokens, jnp.int32)
        b, t = tokens.shape
        valid = jnp.ones((b, t), bool) if valid is None else jnp.asarray(valid, bool)
        start = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if positions is None:
            before = 0 if cache is None else jnp.sum(cache.valid, axis=1, keepdims=True)
            positions = jnp.maximum(before + jnp.cumsum(valid, axis=1) - 1, 0)
        q_slots = start + jnp.arange(t, dtype=jnp.int32)
        if cache is not None:
            cvalid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, start))
        x = jnp.take(self.embed[...], tokens, axis=0)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i], cvalid)
            x, nkv = block(x, positions, q_slots, policy.layer(i), kv, valid)
            if nkv is not None:
                new_k.append(nkv[0])
                new_v.append(nkv[1])
        x = self.final_norm(x)
        head = policy.lm_head()
        if self.lm_head is not None:
            logits = self.lm_head(x, head)
        else:
            w = self.embed[...].T
            capture.record("lm_head", "gemm", x)
            logits = head.linear(x, w)
        new_cache = None
        if cache is not None:
            new_cache = Cache(k=jnp.stack(new_k), v=jnp.stack(new_v), valid=cvalid,
                              index=cache.index + t)
        return logits, new_cache


def prepare(model: Llama, policy: numerics.Policy) -> Llama:
    """A copy of ``model`` whose projection kernels are converted once to what ``policy``'s GEMMs
    consume (e.g. INT4 ``QuantizedTensor``); a tied LM head gets its own prepared kernel.
    Running the returned model under ``policy`` gives the same result as running ``model``
    (which would quantize on every call), only faster."""
    policy = numerics.preset(policy)
    new = nnx.clone(model)
    for i, block in enumerate(new.layers):
        ln = policy.layer(i)
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            lin.kernel = nnx.Param(ln.prepare_weight(lin.kernel.get_value()))
    head = policy.lm_head()
    if new.lm_head is None:
        cfg = new.config
        new.lm_head = Linear(cfg.dim, cfg.vocab_size, "lm_head",
                             kernel=head.prepare_weight(new.embed[...].T))
    else:
        new.lm_head.kernel = nnx.Param(head.prepare_weight(new.lm_head.kernel[...]))
    return new


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def _forward(graphdef: Any, state: Any, tokens: Array, policy: numerics.Policy,
             cache: Cache | None, valid: Array | None) -> tuple[Array, Cache | None]:
    model = nnx.merge(graphdef, state)
    return model(tokens, policy, cache=cache, valid=valid)


def forward(model: Llama, tokens: Int[Array, "B T"], policy: numerics.Policy | str = "exact", *,
            cache: Cache | None = None,
            valid: Bool[Array, "B T"] | None = None) -> tuple[Float[Array, "B T V"], Cache | None]:
    """Jit-compiled ``model(tokens, policy, cache=cache, valid=valid)``."""
    policy = numerics.preset(policy)
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(tokens, jnp.int32), policy, cache, valid)
