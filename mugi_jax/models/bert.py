"""A Flax NNX BERT encoder (all-MiniLM-L6-v2 and its family) under Mugi numerics.

Embeddings (word + absolute position + token type, then LayerNorm), ``n_layers`` post-LayerNorm
blocks (``x = LN(x + attn(x)); x = LN(x + FFN(x))``, FFN ``down(gelu_erf(up(x)))``, every linear
with a bias), bidirectional attention with a padding mask; :func:`pool` averages the hidden states
of the valid tokens and L2-normalises them (sentence-transformers' mean pooling).

Every numerics-dependent op is requested from the policy by its path (see :data:`OP_PATHS`):
``layers.{i}.attn.{q,k,v,o}_proj``, ``layers.{i}.attn.kv_cache`` (the format K and V are held
in), ``layers.{i}.attn.scores`` (Q K^T), ``layers.{i}.attn.softmax``, ``layers.{i}.attn.context``
(P V), ``layers.{i}.mlp.{up,down}_proj``, ``layers.{i}.mlp.act`` (erf-GELU).  Embeddings,
LayerNorms, biases, residual adds and pooling stay FP32 (as the decoder's norms do).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from mugi_jax import numerics
from mugi_jax.models.config import BertConfig

__all__ = ["Bert", "LayerNorm", "Dense", "encode", "pool", "prepare", "OP_PATHS", "OP_KINDS"]

#: The numerics-dependent ops of one encoder layer, relative to ``layers.{i}.``.
OP_PATHS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.kv_cache", "attn.scores",
            "attn.softmax", "attn.context", "attn.o_proj", "mlp.up_proj", "mlp.act",
            "mlp.down_proj")
#: The kind (:data:`mugi_jax.numerics.KINDS`) of each op of :data:`OP_PATHS`.
OP_KINDS = dict(zip(OP_PATHS, (numerics.LINEAR,) * 3 + (
    numerics.KV_CACHE, numerics.SCORES, numerics.SOFTMAX, numerics.CONTEXT, numerics.LINEAR,
    numerics.LINEAR, numerics.ACTIVATION, numerics.LINEAR)))


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` in FP32."""

    def __init__(self, dim: int, eps: float) -> None:
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Dense(nnx.Module):
    """A projection with an ``(in, out)`` kernel and an FP32 bias; the GEMM is the policy's op
    at ``path``."""

    def __init__(self, din: int, dout: int, path: str, *, rngs: nnx.Rngs) -> None:
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), (din, dout), jnp.float32) * (1.0 / din ** 0.5))
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))
        # AWQ scales that cannot be folded into a preceding op (post-LayerNorm: the LN output is
        # also the residual; erf-GELU before down_proj): the input is multiplied by 1/s in FP32
        # before the GEMM (models.quantize.quantize_encoder).  None: no scaling.
        self.input_scale = nnx.data(None)
        self.path = path

    def __call__(self, x: Float[Array, "... din"], policy: numerics.Policy) -> Float[Array, "... dout"]:
        w = self.kernel.get_value()
        if self.input_scale is not None:
            x = x.astype(jnp.float32) * self.input_scale[...]
        return policy.op(self.path, numerics.LINEAR).matmul(x, w) + self.bias[...]


class SelfAttention(nnx.Module):
    """Bidirectional multi-head self-attention; padded keys are masked."""

    def __init__(self, cfg: BertConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        d, p = cfg.dim, f"layers.{layer}.attn."
        self.q_proj = Dense(d, cfg.n_heads * cfg.head_dim, p + "q_proj", rngs=rngs)
        self.k_proj = Dense(d, cfg.n_heads * cfg.head_dim, p + "k_proj", rngs=rngs)
        self.v_proj = Dense(d, cfg.n_heads * cfg.head_dim, p + "v_proj", rngs=rngs)
        self.o_proj = Dense(cfg.n_heads * cfg.head_dim, d, p + "o_proj", rngs=rngs)
        self.n_heads, self.head_dim, self.prefix = cfg.n_heads, cfg.head_dim, p

    def __call__(self, x: Float[Array, "B T d"], valid: Bool[Array, "B T"],
                 policy: numerics.Policy) -> Float[Array, "B T d"]:
        b, t, _ = x.shape
        h, hd, p = self.n_heads, self.head_dim, self.prefix

        def heads(y: Array) -> Array:  # (B, T, H*D) -> (B, H, T, D)
            return y.reshape(b, t, h, hd).transpose(0, 2, 1, 3)

        qk = policy.op(p + "scores", numerics.SCORES)
        pv = policy.op(p + "context", numerics.CONTEXT)
        kv = policy.op(p + "kv_cache", numerics.KV_CACHE)
        q = heads(self.q_proj(x, policy))
        k = heads(self.k_proj(x, policy))
        # padding keys take the row's last valid key: a cache format that quantizes keys in
        # groups of tokens (KIVI) then sees only the text's own values (edge padding)
        last = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)
        edge = jnp.take_along_axis(k, last[:, None, None, None], axis=2)
        k = jnp.where(valid[:, None, :, None], k, edge)
        k = kv.store(k, qk)
        v = kv.store(heads(self.v_proj(x, policy)), pv)
        scores = qk.scores(q, k, kv) * jnp.float32(hd ** -0.5)
        # a valid query sees every valid key; a padding query sees only itself (no row is
        # empty).  Its one score is its row's max (softmax input 0, outside every VLP window),
        # so padding rows never widen the window of the valid rows they share a group with:
        # an embedding does not depend on how far its batch is padded.
        eye = jnp.arange(t)[:, None] == jnp.arange(t)[None, :]
        mask = (valid[:, None, None, :] & valid[:, None, :, None]) | eye[None, None]
        scores = jnp.where(mask, scores, -jnp.inf)
        probs = policy.op(p + "softmax", numerics.SOFTMAX).softmax(scores, axis=-1)
        ctx = pv.context(probs, v, kv)  # B H T D
        return self.o_proj(ctx.transpose(0, 2, 1, 3).reshape(b, t, h * hd), policy)


class FeedForward(nnx.Module):
    """``down(gelu_erf(up(x)))``."""

    def __init__(self, cfg: BertConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        p = f"layers.{layer}.mlp."
        self.up_proj = Dense(cfg.dim, cfg.ffn_dim, p + "up_proj", rngs=rngs)
        self.down_proj = Dense(cfg.ffn_dim, cfg.dim, p + "down_proj", rngs=rngs)
        self.prefix = p

    def __call__(self, x: Float[Array, "B T d"], policy: numerics.Policy) -> Float[Array, "B T d"]:
        u = self.up_proj(x, policy)
        act = policy.op(self.prefix + "act", numerics.ACTIVATION).activation(u, "gelu")
        return self.down_proj(act, policy)


class EncoderLayer(nnx.Module):
    """Post-LayerNorm block: ``x = LN(x + attn(x)); x = LN(x + FFN(x))``."""

    def __init__(self, cfg: BertConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        self.attn = SelfAttention(cfg, layer, rngs=rngs)
        self.attn_norm = LayerNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg, layer, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.dim, cfg.norm_eps)

    def __call__(self, x: Float[Array, "B T d"], valid: Bool[Array, "B T"],
                 policy: numerics.Policy) -> Float[Array, "B T d"]:
        x = self.attn_norm(x + self.attn(x, valid, policy))
        return self.mlp_norm(x + self.mlp(x, policy))


class Bert(nnx.Module):
    """The encoder.  ``model(tokens, policy, valid=...)`` returns the final hidden states
    ``(batch, T, dim)``; :func:`pool` turns them into sentence embeddings.

    Args (call):
      tokens: ``(batch, T)`` int token ids (``T <= config.max_positions``).
      policy: a :class:`~mugi_jax.numerics.Policy` (default: exact FP32).
      valid: ``(batch, T)`` bool, False for padding (default: all valid).  Padding is on the
        right: token ``j`` has position ``j``.
      token_types: ``(batch, T)`` segment ids (default: all 0, a single sentence).
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs | None = None) -> None:
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        d = config.dim

        def table(rows: int) -> nnx.Param:
            return nnx.Param(jax.random.normal(rngs.params(), (rows, d), jnp.float32) * 0.02)

        self.embed = table(config.vocab_size)
        self.pos_embed = table(config.max_positions)
        self.type_embed = table(config.type_vocab_size)
        self.embed_norm = LayerNorm(d, config.norm_eps)
        self.layers = nnx.List([EncoderLayer(config, i, rngs=rngs) for i in range(config.n_layers)])

    def __call__(self, tokens: Int[Array, "B T"], policy: numerics.Policy = numerics.EXACT, *,
                 valid: Bool[Array, "B T"] | None = None,
                 token_types: Int[Array, "B T"] | None = None) -> Float[Array, "B T d"]:
        tokens = jnp.asarray(tokens, jnp.int32)
        b, t = tokens.shape
        valid = jnp.ones((b, t), bool) if valid is None else jnp.asarray(valid, bool)
        types = jnp.zeros((b, t), jnp.int32) if token_types is None else token_types
        x = (jnp.take(self.embed[...], tokens, axis=0) + self.pos_embed[...][:t][None]
             + jnp.take(self.type_embed[...], types, axis=0))
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, valid, policy)
        return x

    def numerics_ops(self) -> tuple[tuple[str, str], ...]:
        """``(path, kind)`` of every numerics-dependent op, in execution order."""
        return tuple((f"layers.{i}.{op}", OP_KINDS[op]) for i in range(self.config.n_layers)
                     for op in OP_PATHS)

    def dense_layers(self) -> list[Dense]:
        """Every projection of the encoder (what :func:`prepare` converts)."""
        return [lin for blk in self.layers
                for lin in (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj, blk.attn.o_proj,
                            blk.mlp.up_proj, blk.mlp.down_proj)]


def pool(hidden: Float[Array, "B T d"], valid: Bool[Array, "B T"],
         normalize: bool = True) -> Float[Array, "B d"]:
    """Mean of the valid tokens' hidden states, L2-normalised when ``normalize`` (an all-padding
    row gives zeros)."""
    m = valid.astype(jnp.float32)[..., None]
    mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    if not normalize:
        return mean
    norm = jnp.sqrt(jnp.sum(mean * mean, axis=-1, keepdims=True))
    return mean / jnp.maximum(norm, 1e-12)


def prepare(model: Bert, policy: numerics.Policy) -> Bert:
    """A copy of ``model`` whose projection kernels are converted once to what ``policy``'s
    GEMMs consume (e.g. INT4); running it under ``policy`` gives the same result, only faster."""
    policy = numerics.preset(policy, numerics.family_of(model))
    policy.check(model)
    new = nnx.clone(model)
    for lin in new.dense_layers():
        lin.kernel = nnx.Param(policy.op(lin.path, numerics.LINEAR).prepare_weight(lin.kernel.get_value()))
    return new


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "normalize"))
def _encode(graphdef: Any, state: Any, tokens: Array, valid: Array, policy: numerics.Policy,
            normalize: bool) -> Array:
    model = nnx.merge(graphdef, state)
    return pool(model(tokens, policy, valid=valid), valid, normalize)


def encode(model: Bert, tokens: Int[Array, "B T"], valid: Bool[Array, "B T"] | None = None,
           policy: numerics.Policy | str = "exact") -> Float[Array, "B d"]:
    """Jit-compiled sentence embeddings ``pool(model(tokens, policy, valid=valid), valid)`` of a
    right-padded batch (the model's ``normalize`` setting decides the L2 normalisation)."""
    policy = numerics.preset(policy, numerics.family_of(model))
    tokens = jnp.asarray(tokens, jnp.int32)
    valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid, bool)
    graphdef, state = nnx.split(model)
    return _encode(graphdef, state, tokens, valid, policy, model.config.normalize)
