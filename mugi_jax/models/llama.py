"""A Flax NNX decoder for the Llama, Qwen2/3 and Gemma 3 families (RMSNorm, RoPE, GQA, gated FFN).

The family is a matter of :class:`~mugi_jax.models.config.DecoderConfig` fields: the FFN's
activation (SwiGLU or GeGLU-tanh), Q/K/V biases, QK-norm, post-attention/post-FFN norms, an
embedding scale, the query scale, sliding-window layers with their own RoPE base, and the RoPE
pair layout.

Every numerics-dependent op is requested from the policy (passed in at call time) by its path
and kind, ``policy.op(path, kind)`` (see :data:`OP_PATHS` and :meth:`Llama.numerics_ops`):
``layers.{i}.attn.{q,k,v,o}_proj``, ``layers.{i}.attn.kv_cache`` (the format K and V are held
in), ``layers.{i}.attn.scores`` (Q K^T), ``layers.{i}.attn.softmax``, ``layers.{i}.attn.context``
(P V), ``layers.{i}.mlp.{gate,up,down}_proj``, ``layers.{i}.mlp.act`` (SiLU or tanh-GELU) and
``lm_head``.  The model never branches on numerics; activation capture is a rule too
(:class:`~mugi_jax.models.capture.Capture`, records keyed by these paths).

Sequences are laid out in *slots*.  Without a cache, slot ``j`` is position ``j`` of the input;
with a :class:`Cache`, the input occupies slots ``cache.index .. cache.index + T - 1``.  A slot may
be invalid (left padding of a batched prompt): valid queries never attend to invalid slots, and an
invalid query attends only to itself (so no softmax row is empty).  RoPE uses the token's
*position* (its index among the valid tokens of its row), not its slot.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from mugi_jax import _xla, gemm, numerics
from mugi_jax.models.config import DecoderConfig

__all__ = ["Llama", "Decoder", "Cache", "RMSNorm", "Linear", "rope", "rope_frequencies", "forward",
           "prepare", "numerics_at", "OP_PATHS", "OP_KINDS", "LayerStack", "scan_layout",
           "RESIDENCIES", "resident_bytes"]

#: The numerics-dependent ops of one decoder layer, relative to ``layers.{i}.`` (plus
#: ``lm_head``).
OP_PATHS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.kv_cache", "attn.scores",
            "attn.softmax", "attn.context", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
            "mlp.act", "mlp.down_proj")


#: The kind (:data:`mugi_jax.numerics.KINDS`) of each op of :data:`OP_PATHS`.
OP_KINDS = {p: (numerics.LINEAR if p.endswith("_proj") else
                {"attn.kv_cache": numerics.KV_CACHE, "attn.scores": numerics.SCORES,
                 "attn.softmax": numerics.SOFTMAX, "attn.context": numerics.CONTEXT,
                 "mlp.act": numerics.ACTIVATION}[p]) for p in OP_PATHS}


def numerics_at(policy: numerics.Policy, path: str) -> numerics.LayerNumerics:
    """The previous per-layer view (``policy.layer(i)`` / ``policy.lm_head()``) of the layer
    holding ``path``; the model itself asks ``policy.op(path, kind)``."""
    parts = path.split(".")
    if parts[0] == "layers":
        return policy.layer(int(parts[1]))
    return policy.lm_head()


def _same_impl(a: Any, b: Any) -> bool:
    """Whether two resolved implementations are the same one: the same pytree structure (static
    configuration included) with the very same leaves (tunable arrays, or tracers of them)."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(x is y for x, y in zip(leaves_a, leaves_b))


def scan_layout(config: DecoderConfig, policy: numerics.Policy) -> tuple[int, int, int] | None:
    """``(head, period, groups)`` when the decoder's layers can run as one ``lax.scan``: the
    first ``head`` layers unrolled, then ``groups`` groups of ``period`` consecutive layers
    scanned, then the rest unrolled; ``None``: every layer unrolled.

    Scanned layers ``i`` and ``i + period`` must have the same static attention configuration
    (sliding window, RoPE base and scaling: Gemma 3 repeats 5 sliding layers and 1 global one,
    so ``period = 6``) and every op of every layer must resolve to the very same implementation
    (a rule that targets one layer, or an activation capture, which records per op path, keeps
    the unrolled loop).  At least two groups are needed.

    Only uniform stacks (``period == 1``, no embedding scale) are scanned.  Results must not
    depend on the compile strategy, and XLA on CPU fuses differently across a scan boundary:
    the real Gemma 3 270M weights (embedding scale, sliding/global period 6) gave logits that
    differed from the unrolled program by up to 2.4e-4 under ``exact`` and 0.34 under
    ``taylor`` on 128 SOTU tokens, and a tiny period-2 stack differed under ``mugi``; SmolLM2
    is identical under every preset (tests/models/test_numerics_regression.py runs the scanned
    path against fingerprints recorded unrolled)."""
    if config.embed_scale != 1.0:
        return None
    n = config.n_layers
    attention = [(config.window(i), config.layer_rope(i)) for i in range(n)]
    if n < 2 or any(sig != attention[0] for sig in attention):
        return None
    first = [policy.op(f"layers.0.{op}", OP_KINDS[op]) for op in OP_PATHS]
    for i in range(1, n):
        for op, impl in zip(OP_PATHS, first):
            if not _same_impl(policy.op(f"layers.{i}.{op}", OP_KINDS[op]), impl):
                return None
    return 0, 1, n


class LayerStack:
    """The decoder layers as ``lax.scan`` runs them (:func:`scan_layout`): the ``head`` layers
    unrolled, ``groups`` groups of ``period`` layers (position ``j`` of group ``g`` is layer
    ``first + g * period + j``, run with the graph of the group's first layer ``j``), and the
    ``tail`` layers unrolled.

    The weights are not stacked: ``states[j]`` holds each group's state of position ``j``, and
    the scan step picks group ``g``'s with ``lax.switch`` (:meth:`state`).  Stacking them on a
    leading axis inside the jitted call copied every layer's weights into a fresh buffer on
    each call (0.23 s of a 1.2 s 512-token ``exact`` prefill of SmolLM2: 425 MB of FP32
    weights); the switch reads one layer's weights per step, as the scan's slice of a stack
    would, with the same results."""

    def __init__(self, layers: Any, head: int, period: int, groups: int) -> None:
        self.period, self.groups = period, groups
        self.head = tuple(layers[:head])
        first = head  # index of the first scanned layer
        self.first = first
        self.graphdefs = tuple(nnx.graphdef(layers[first + j]) for j in range(period))
        self.states = tuple(
            tuple(nnx.state(layers[first + g * period + j]) for g in range(groups))
            for j in range(period))
        self.tail = tuple(layers[first + groups * period:])

    def state(self, j: int, g: Array) -> Any:
        """The state of position ``j`` of group ``g`` (a traced index)."""
        return jax.lax.switch(g, [functools.partial(lambda s: s, s) for s in self.states[j]])


@struct.dataclass
class Cache:
    """KV cache of all layers: ``k``/``v`` hold one ``(batch * kv_heads, slots, head_dim)``
    array per layer (row ``b * kv_heads + h``: batch row ``b``, KV head ``h``), ``valid`` is
    ``(batch, slots)``, ``index`` the next slot to write (scalar int32).

    This layout is what a decode step can update in place: a step writes its token's rows into
    each layer's array (``dynamic_update_slice``, in place in the decode loop's carry) and the
    attention GEMMs read that array as it is - head-major, with the batch and head dimensions
    merged as XLA's batched dot merges them (a ``(batch, kv_heads, ...)`` array made XLA:CPU
    give the GEMMs a reshaped copy and copy every layer's cache twice per step).  The previous
    layout, one ``(layers, batch, slots, kv_heads, head_dim)`` array, made every step slice each
    layer out, transpose it for the GEMMs and stack the layers back (SmolLM2, 576 slots: ~12 of
    ~45 ms per step; docs/models.md "Throughput")."""

    k: tuple[Float[Array, "BH S D"], ...]
    v: tuple[Float[Array, "BH S D"], ...]
    valid: Bool[Array, "B S"]
    index: Int[Array, ""]

    @classmethod
    def init(cls, config: DecoderConfig, batch: int, slots: int,
             dtype: jnp.dtype = jnp.float32) -> "Cache":
        shape = (batch * config.n_kv_heads, slots, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
        return cls(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers)),
                   valid=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.k[0].shape[1]


def rope_frequencies(head_dim: int, theta: float,
                     scaling: tuple[tuple[str, Any], ...] = ()) -> Float[Array, "D/2"]:
    """RoPE inverse frequencies ``theta^(-2i/D)``, with Hugging Face ``rope_scaling`` applied
    (``linear``: divided by ``factor``; ``llama3``: low frequencies divided by ``factor``, a
    smooth blend between ``low_freq_factor`` and ``high_freq_factor`` wavelengths)."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    sc = dict(scaling)
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor, low, high = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * jnp.pi / inv
        scaled = jnp.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = jnp.where(medium, blended, scaled)
    return inv


def rope(x: Float[Array, "B T H D"], positions: Int[Array, "B T"], theta: float,
         layout: str = "adjacent", scaling: tuple[tuple[str, Any], ...] = ()) -> Float[Array, "B T H D"]:
    """Rotary embedding with frequency ``theta^(-2i/D)`` (see :func:`rope_frequencies`) on the
    pairs ``(x[2i], x[2i+1])`` (``layout="adjacent"``) or ``(x[i], x[i+D/2])`` (``"half"``)."""
    d = x.shape[-1]
    inv = rope_frequencies(d, theta, scaling)
    ang = positions.astype(jnp.float32)[..., None] * inv  # B T D/2
    cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]
    xf = x.astype(jnp.float32)
    if layout == "half":
        x0, x1 = xf[..., : d // 2], xf[..., d // 2:]
        return jnp.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1).astype(x.dtype)
    xr = xf.reshape(*x.shape[:-1], d // 2, 2)
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
    """A projection with an ``(in, out)`` kernel and an optional FP32 bias (added after the
    GEMM, which is the policy's)."""

    def __init__(self, din: int, dout: int, name: str, *, rngs: nnx.Rngs | None = None,
                 kernel: Any = None, bias: bool = False, path: str | None = None) -> None:
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        if kernel is None:
            kernel = jax.random.normal(rngs.params(), (din, dout), jnp.float32) * (1.0 / din ** 0.5)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jax.random.normal(rngs.params(), (dout,), jnp.float32) * 0.02) \
            if bias else nnx.data(None)
        self.name = name  # parameter name (checkpoint loaders)
        self.path = name if path is None else path  # the numerics op path

    def __call__(self, x: Float[Array, "... din"],
                 policy: numerics.Policy) -> Float[Array, "... dout"]:
        y = policy.op(self.path, numerics.LINEAR).matmul(x, self.kernel.get_value())
        return y if self.bias is None else y + self.bias[...]


def _one_gemm(lins: tuple[Linear, ...], x: Array, policy: numerics.Policy) -> list[Array] | None:
    """``[lin(x, policy) for lin in lins]`` as one GEMM on the kernels concatenated along the
    outputs, then split (``None`` where that is not allowed): the projections must resolve to
    the very same datapath GEMM (:func:`_same_impl`; a rule for one of them, or an activation
    capture, which records per op, keeps them apart) with prepared INT4 weights of one layout.
    The datapath kernels compute every output column on its own (per-group sums over ``k``
    for that column: tests/models/test_llama.py checks the bits), so the results are the
    same; XLA:CPU runs the narrow ``k``/``v`` projections (192 columns for SmolLM2) on one
    core, and the activations' terms are built once instead of once per projection.
    One-token steps (decode) keep the separate GEMMs: the concatenation copies the weights,
    which a memory-bound step would read twice."""
    if x.shape[-2] < 2:
        return None
    impls = [policy.op(lin.path, numerics.LINEAR) for lin in lins]
    kernels = [lin.kernel.get_value() for lin in lins]
    first = impls[0]
    if not (isinstance(first, numerics.Gemm) and first.datapath is not None
            and all(_same_impl(impl, first) for impl in impls[1:])
            and all(isinstance(w, gemm.PreparedWeight) for w in kernels)):
        return None
    tree = jax.tree_util.tree_structure(kernels[0])
    if any(jax.tree_util.tree_structure(w) != tree for w in kernels[1:]):
        return None
    y = first.matmul(x, jax.tree.map(lambda *a: jnp.concatenate(a, -1), *kernels))
    ends = list(itertools.accumulate(w.shape[1] for w in kernels))
    outs = jnp.split(y, ends[:-1], axis=-1)
    return [o if lin.bias is None else o + lin.bias[...] for o, lin in zip(outs, lins)]


#: Fewest tokens of a cached call that pick the causal skipping when its first slot is 0 (a
#: ``lax.cond``: both paths are compiled, so short calls keep one).
_CACHED_CAUSAL_MIN = 128


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional QK-norm, an optional sliding window and
    an optional KV cache."""

    def __init__(self, cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        d, hd = cfg.dim, cfg.head_dim
        p = f"layers.{layer}."
        a = p + "attn."
        self.q_proj = Linear(d, cfg.n_heads * hd, p + "q_proj", rngs=rngs, bias=cfg.qkv_bias,
                             path=a + "q_proj")
        self.k_proj = Linear(d, cfg.n_kv_heads * hd, p + "k_proj", rngs=rngs, bias=cfg.qkv_bias,
                             path=a + "k_proj")
        self.v_proj = Linear(d, cfg.n_kv_heads * hd, p + "v_proj", rngs=rngs, bias=cfg.qkv_bias,
                             path=a + "v_proj")
        self.o_proj = Linear(cfg.n_heads * hd, d, p + "o_proj", rngs=rngs, path=a + "o_proj")
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else nnx.data(None)
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else nnx.data(None)
        self.cfg = cfg
        self.window = cfg.window(layer)
        self.rope_theta, self.rope_scaling = cfg.layer_rope(layer)
        self.prefix = p

    def __call__(self, x: Float[Array, "B T d"], positions: Int[Array, "B T"],
                 q_slots: Int[Array, "T"], policy: numerics.Policy,
                 kv: tuple[Array, Array, Array] | None,
                 valid: Bool[Array, "B T"]) -> tuple[Array, tuple[Array, Array] | None]:
        cfg = self.cfg
        b, t, _ = x.shape
        a = self.prefix + "attn."
        lins = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = _one_gemm(lins, x, policy) or [lin(x, policy) for lin in lins]
        q = q.reshape(b, t, cfg.n_heads, cfg.head_dim)
        k = k.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        v = v.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rot = functools.partial(rope, positions=positions, theta=self.rope_theta,
                                layout=cfg.rope_layout, scaling=self.rope_scaling)
        q = rot(q)
        qk = policy.op(a + "scores", numerics.SCORES)
        pv = policy.op(a + "context", numerics.CONTEXT)
        cache_fmt = policy.op(a + "kv_cache", numerics.KV_CACHE)
        # head-major (B, KV heads, T, D): the cache's layout and the attention GEMMs' operands
        k = cache_fmt.store(rot(k).transpose(0, 2, 1, 3), qk)
        v = cache_fmt.store(v.transpose(0, 2, 1, 3), pv)
        if kv is None:  # keys are this call's tokens, slots 0..T-1
            keys, values, key_valid = k, v, valid
            new_kv = None
        else:
            ck, cv, cvalid = kv
            start = q_slots[0]
            # the new rows written into the layer's cache array (rows: batch x KV heads), which
            # a decode loop carries, so XLA updates it in place; the attention GEMMs read the
            # written array as it is (their batch dimensions, merged, are its rows)
            def write(c: Array, x: Array) -> Array:
                rows = x.astype(c.dtype).reshape(b * cfg.n_kv_heads, t, cfg.head_dim)
                return jax.lax.dynamic_update_slice(c, rows, (0, start, 0))

            new_kv = (write(ck, k), write(cv, v))
            keys, values = (c.reshape(b, cfg.n_kv_heads, *c.shape[1:]) for c in new_kv)
            key_valid = cvalid
        k_slots = jnp.arange(keys.shape[2])
        causal = k_slots[None, :] <= q_slots[:, None]  # T S
        if self.window is not None:
            # valid slots of a row are contiguous (padding is on the left), so a slot distance
            # is a position distance between valid tokens
            causal = causal & (q_slots[:, None] - k_slots[None, :] < self.window)
        mask = causal[None] & (key_valid[:, None, :] | (k_slots[None, None, :] == q_slots[None, :, None]))
        kh, g, hd = cfg.n_kv_heads, cfg.group, cfg.head_dim
        # head-major: (B, KV heads, group x T, D); the query heads of a GQA group share K and V
        qg = q.reshape(b, t, kh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, hd)
        row_slots = jnp.tile(q_slots, g)  # the slot of each of the g x T query rows
        softmax = policy.op(a + "softmax", numerics.SOFTMAX)

        def attend(causal: int | None) -> Array:
            # causal=t: the queries sit at slots 0..t-1, so every key after a query is masked
            # and the attention GEMMs may skip those (same bits where it matters).  They read
            # slots 0..t-1 only, so a cache's free slots are left out: the products then have
            # the uncached path's shapes, hence its bits (XLA:CPU's dots give other bits with
            # other key counts, e.g. 520 slots against 512: tests/models/test_kivi.py)
            ks, vs, m = (keys, values, mask) if causal is None else \
                (keys[:, :, :t], values[:, :, :t], mask[..., :t])
            scores = qk.scores(qg, ks, cache_fmt, row_slots, causal=causal)
            # the softmax of where(mask, scores * scale, -inf): handed over unapplied, so that
            # a fused kernel applies them as it reads the scores (the mask's rows: g x T, the
            # query heads of a KV head, head-major, shared by the KV heads)
            row_mask = jnp.broadcast_to(m[:, None], (b, g, t, m.shape[-1]))
            # tokens=t: the VLP window groups (rows at one key column) are the g query heads of
            # ONE query token - the rows a decode step puts on the array.  Groups spanning query
            # tokens would let a token's window, hence its output, depend on later tokens: the
            # model would not be causal, and the uncached path would differ from the cached one.
            probs = softmax.softmax(scores, axis=-1, tokens=t, scale=jnp.float32(cfg.attn_scale),
                                    mask=row_mask.reshape(b, 1, g * t, -1))
            return pv.context(probs, vs, cache_fmt, row_slots, causal=causal)  # B kh (g t) D

        if kv is None:  # keys are this call's tokens, slots 0..T-1
            out = attend(t)
        elif t >= _CACHED_CAUSAL_MIN and isinstance(qk, numerics.Gemm) and qk.datapath is not None:
            # a prefill into an empty cache starts at slot 0, but the slot is traced: pick the
            # skipping path at run time (not under an activation capture, whose records cannot
            # be made inside a branch)
            out = jax.lax.cond(q_slots[0] == 0, lambda: attend(t), lambda: attend(None))
        else:
            out = attend(None)
        out = out.reshape(b, kh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.n_heads * hd)
        return self.o_proj(out, policy), new_kv


class MLP(nnx.Module):
    """Gated feed-forward: ``down(act(gate(x)) * up(x))`` with ``act`` SiLU (SwiGLU) or the
    tanh GELU (GeGLU), as ``config.activation`` says."""

    def __init__(self, cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        p = f"layers.{layer}."
        m = p + "mlp."
        self.gate_proj = Linear(cfg.dim, cfg.ffn_dim, p + "gate_proj", rngs=rngs, path=m + "gate_proj")
        self.up_proj = Linear(cfg.dim, cfg.ffn_dim, p + "up_proj", rngs=rngs, path=m + "up_proj")
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim, p + "down_proj", rngs=rngs, path=m + "down_proj")
        self.activation = cfg.activation
        self.prefix = p

    def __call__(self, x: Float[Array, "B T d"], policy: numerics.Policy) -> Float[Array, "B T d"]:
        lins = (self.gate_proj, self.up_proj)
        g, up = _one_gemm(lins, x, policy) or [lin(x, policy) for lin in lins]
        fn = "silu" if self.activation == "silu" else "gelu_tanh"  # a registry name
        act = policy.op(self.prefix + "mlp.act", numerics.ACTIVATION).activation(g, fn)
        return self.down_proj(act * up, policy)


class Block(nnx.Module):
    """Pre-norm decoder block (with Gemma's extra norms on the sublayer outputs when
    ``config.post_norms``)."""

    def __init__(self, cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs) -> None:
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg, layer, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.post_norms else nnx.data(None)
        self.post_mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.post_norms else nnx.data(None)

    def __call__(self, x: Float[Array, "B T d"], positions: Int[Array, "B T"],
                 q_slots: Int[Array, "T"], policy: numerics.Policy,
                 kv: tuple[Array, Array, Array] | None,
                 valid: Bool[Array, "B T"]) -> tuple[Float[Array, "B T d"], tuple[Array, Array] | None]:
        h, new_kv = self.attn(self.attn_norm(x), positions, q_slots, policy, kv, valid)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x), policy)
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return x + h, new_kv


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
      scan: run the layers as one ``lax.scan`` when :func:`scan_layout` allows and ``T > 1``
        (prefill, perplexity windows: the compiled program holds one group of layers instead of
        all of them, so it compiles several times faster, with the same results bit for bit);
        ``False``: the unrolled loop.  One-token decode steps always run unrolled.
      last_only: compute the LM head on the last position only (logits ``(batch, 1, V)``): a
        generation's prefill needs no other row, and the head is the largest GEMM of a small
        model (SmolLM2: 49152 x 576).
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None = None) -> None:
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.embed = nnx.Param(
            jax.random.normal(rngs.params(), (config.vocab_size, config.dim), jnp.float32) * 0.02)
        self.layers = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layers)])
        self.final_norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nnx.data(None if config.tie_embeddings
                                else Linear(config.dim, config.vocab_size, "lm_head", rngs=rngs))

    def numerics_ops(self) -> tuple[tuple[str, str], ...]:
        """``(path, kind)`` of every numerics-dependent op, in execution order."""
        return tuple((f"layers.{i}.{op}", OP_KINDS[op]) for i in range(self.config.n_layers)
                     for op in OP_PATHS) + (("lm_head", numerics.LINEAR),)

    def layer_stack(self, policy: numerics.Policy) -> LayerStack | None:
        """The layers stacked for ``lax.scan`` (:class:`LayerStack`), or ``None`` when they must
        run unrolled (:func:`scan_layout`)."""
        layout = scan_layout(self.config, policy)
        if layout is None:
            return None
        head, period, groups = layout
        structure = [jax.tree_util.tree_structure(nnx.state(b)) for b in self.layers]
        if any(structure[i] != structure[head + (i - head) % period]
               for i in range(head, head + groups * period)):
            return None  # e.g. one layer's kernel prepared differently
        return LayerStack(self.layers, head, period, groups)

    def _scan_layers(self, stack: LayerStack, x: Array, positions: Array, q_slots: Array,
                     policy: numerics.Policy, cache: Cache | None, cvalid: Array | None,
                     valid: Array) -> tuple[Array, tuple[Array, ...] | None,
                                        tuple[Array, ...] | None]:
        """Run the layers as :class:`LayerStack` says: the head unrolled, one ``lax.scan`` over
        the groups (the traced program holds ``period`` layers, not ``n_layers``), the tail
        unrolled.  Every layer computes exactly what the unrolled loop computes (same ops, same
        order)."""
        p, g, first = stack.period, stack.groups, stack.first
        end = first + g * p
        new_k: list[Array] = []
        new_v: list[Array] = []

        def unrolled(x: Array, blocks: tuple[Any, ...], start: int) -> Array:
            for i, block in enumerate(blocks, start=start):
                kv = None if cache is None else (cache.k[i], cache.v[i], cvalid)
                x, nkv = block(x, positions, q_slots, policy, kv, valid)
                if nkv is not None:
                    new_k.append(nkv[0])
                    new_v.append(nkv[1])
            return x

        def group(x: Array, xs: Any) -> tuple[Array, Any]:
            gi, kv = xs
            out_k, out_v = [], []
            for j in range(p):
                block = nnx.merge(stack.graphdefs[j], stack.state(j, gi))
                layer_kv = None if kv is None else (kv[0][j], kv[1][j], cvalid)
                x, nkv = block(x, positions, q_slots, policy, layer_kv, valid)
                if nkv is not None:
                    out_k.append(nkv[0])
                    out_v.append(nkv[1])
            return x, (None if kv is None else (jnp.stack(out_k), jnp.stack(out_v)))

        x = unrolled(x, stack.head, 0)
        kv_xs = None
        if cache is not None:
            # the scan's slices of the scanned layers' caches (a prefill: one copy of the cache)
            per_group = lambda a: jnp.stack(a[first:end]).reshape(g, p, *a[0].shape)  # noqa: E731
            kv_xs = (per_group(cache.k), per_group(cache.v))
        x, scanned_kv = jax.lax.scan(group, x, (jnp.arange(g), kv_xs))
        if cache is not None:
            new_k.extend(scanned_kv[0][gi, j] for gi in range(g) for j in range(p))
            new_v.extend(scanned_kv[1][gi, j] for gi in range(g) for j in range(p))
        x = unrolled(x, stack.tail, end)
        if cache is None:
            return x, None, None
        return x, tuple(new_k), tuple(new_v)

    def __call__(self, tokens: Int[Array, "B T"], policy: numerics.Policy = numerics.EXACT, *,
                 cache: Cache | None = None, valid: Bool[Array, "B T"] | None = None,
                 positions: Int[Array, "B T"] | None = None,
                 scan: bool = True,
                 last_only: bool = False) -> tuple[Float[Array, "B T V"], Cache | None]:
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
        if cfg.embed_scale != 1.0:
            x = x * jnp.float32(cfg.embed_scale)
        # one-token steps (decode) stay unrolled: a scan step copies its layer's weights (the
        # switch's result), which doubled the time of a memory-bound batch-1 step on CPU
        stack = self.layer_stack(policy) if scan and t > 1 else None
        if stack is None:
            new_k, new_v = [], []
            for i, block in enumerate(self.layers):
                kv = None if cache is None else (cache.k[i], cache.v[i], cvalid)
                x, nkv = block(x, positions, q_slots, policy, kv, valid)
                if nkv is not None:
                    new_k.append(nkv[0])
                    new_v.append(nkv[1])
            if cache is not None:
                new_k, new_v = tuple(new_k), tuple(new_v)
        else:
            x, new_k, new_v = self._scan_layers(stack, x, positions, q_slots, policy, cache,
                                                cvalid if cache is not None else None, valid)
        if last_only:
            # the norm runs on every row, in a fusion of its own, and the last row is sliced
            # from its result: XLA:CPU's row reduction gives other bits on a one-row operand
            # (measured), which a slice fused into the norm could bring about
            x = _xla.materialised(self.final_norm, x)[:, -1:]
        else:
            x = self.final_norm(x)
        if self.lm_head is not None:
            logits = self.lm_head(x, policy)
        else:
            logits = policy.op("lm_head", numerics.LINEAR).matmul(x, self.embed[...].T)
        new_cache = None
        if cache is not None:
            new_cache = Cache(k=new_k, v=new_v, valid=cvalid, index=cache.index + t)
        return logits, new_cache


Decoder = Llama
"""The decoder of every family (``Llama`` is the historical name)."""


#: How :func:`prepare` holds the projection and LM-head weights in memory (``--weight-residency``):
#:
#: * ``prepared``: what the policy's GEMM consumes, derived once (FP32 kernels for ``exact``; INT4
#:   codes and normalised scales for ``mugi``);
#: * ``bf16``: the weights of FP GEMMs held in BF16 and widened to FP32 in the matmul.  Identical
#:   results where the policy already rounds those weights to BF16 (the ``mugi`` LM head); for FP32
#:   weights (``exact``) an opt-in change of numerics: every weight is rounded to BF16 once;
#: * ``int4``: INT4-weight GEMMs hold only their codes and scales and derive the datapath's terms
#:   at each use (identical results); BF16-valued FP weights (the ``mugi`` head) held in BF16.
#:   Needs a policy with INT4 projection weights.
RESIDENCIES = ("prepared", "bf16", "int4")


def _resident(impl: Any, w: Any, residency: str) -> Any:
    """The kernel ``w`` of a GEMM ``impl`` as ``residency`` holds it (see :data:`RESIDENCIES`)."""
    prepared = impl.prepare_weight(w)
    fp = getattr(impl, "datapath", None) is None and getattr(impl, "weight_scheme", None) is None
    if residency == "prepared" or not isinstance(impl, numerics.Gemm):
        return prepared
    if fp and isinstance(prepared, jax.Array):
        if residency == "bf16" or impl.bf16_weights:
            return prepared.astype(jnp.bfloat16)
        return prepared
    if residency == "int4" and impl.weight_scheme is not None:
        return getattr(prepared, "weight", prepared)  # a gemm.PreparedWeight's QuantizedTensor
    return prepared


def resident_bytes(model: Llama) -> int:
    """Bytes of every array a (prepared) model holds, embedding and norms included."""
    return sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(nnx.state(model))
               if hasattr(x, "nbytes"))


def prepare(model: Llama, policy: numerics.Policy, residency: str = "prepared") -> Llama:
    """A copy of ``model`` whose projection kernels are converted once to what ``policy``'s GEMMs
    consume (e.g. INT4 ``QuantizedTensor``); a tied LM head gets its own prepared kernel.
    Running the returned model under ``policy`` gives the same result as running ``model``
    (which would quantize on every call), only faster.  ``residency``: how the weights are held
    (:data:`RESIDENCIES`; ``bf16`` on FP32 weights changes the numerics, the others do not).

    Raises ``ValueError`` for an unknown ``residency``, or ``int4`` under a policy whose
    projections have no INT4 weights."""
    policy = numerics.preset(policy, numerics.family_of(model))
    policy.check(model)
    if residency not in RESIDENCIES:
        raise ValueError(f"weight residency: must be one of {', '.join(RESIDENCIES)}, "
                         f"got {residency!r}")
    if residency == "int4" and not any(
            getattr(policy.op(path, kind), "weight_scheme", None) is not None
            for path, kind in model.numerics_ops() if kind == numerics.LINEAR):
        raise ValueError(f"weight residency 'int4': numerics {policy.name!r} keeps no INT4 "
                         f"projection weights (use an INT4 preset such as mugi, or bf16)")
    new = nnx.clone(model)
    for block in new.layers:
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            impl = policy.op(lin.path, numerics.LINEAR)
            lin.kernel = nnx.Param(_resident(impl, lin.kernel.get_value(), residency))
    head = policy.op("lm_head", numerics.LINEAR)
    if new.lm_head is None:
        cfg = new.config
        new.lm_head = Linear(cfg.dim, cfg.vocab_size, "lm_head",
                             kernel=_resident(head, new.embed[...].T, residency))
    else:
        new.lm_head.kernel = nnx.Param(_resident(head, new.lm_head.kernel[...], residency))
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
    policy = numerics.preset(policy, numerics.family_of(model))
    policy.check(model)
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(tokens, jnp.int32), policy, cache, valid)
