"""Grouped-query attention with INT4 K and V caches, both GEMMs on a VLP datapath."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from mugi_jax import quant
from mugi_jax.gemm._weights import KN, as_kn
from mugi_jax.gemm.kernels import (MODES, _matmul_2d, activations_bf16, check_datapath,
                                  check_scheme)

__all__ = ["attention", "exact_softmax"]


def exact_softmax(x: Float[Array, "..."], axis: int = -1) -> Float[Array, "..."]:
    """The default softmax: ``jax.nn.softmax`` in FP32."""
    return jax.nn.softmax(x.astype(jnp.float32), axis=axis)


def _check_cache(c: object, name: str) -> quant.QuantizedTensor:
    if not isinstance(c, quant.QuantizedTensor):
        raise TypeError(f"{name}: expected a QuantizedTensor from quant.quantize_kv, got {type(c)}")
    if c.codes.ndim < 3:
        raise ValueError(f"{name}: expected (..., kv_heads, tokens, head_dim), got {c.shape}")
    if c.axis < c.codes.ndim - 2:
        raise ValueError(f"{name}: groups must run along tokens or head_dim "
                         "(quant.quantize_kv per_token / per_channel)")
    return c


def _batched_matmul(a: Array, kn: KN, datapath: object, mode: str) -> Array:
    """``a`` (B, m, k) x ``kn`` (B, k, n) -> (B, m, n), one GEMM per leading index."""
    return jax.vmap(lambda x, w: _matmul_2d(x, w, datapath, mode))(a, kn)


def attention(q: Float[Array, "... hq tq d"], k_cache: quant.QuantizedTensor,
              v_cache: quant.QuantizedTensor, datapath: object,
              mask: Bool[Array, "..."] | None = None,
              softmax: Callable[..., Array] | None = None, mode: str = "exact",
              scale: float | None = None) -> Float[Array, "... hq tq d"]:
    """GQA attention ``softmax(Q K^T * scale + mask) V`` with INT4 caches on ``datapath``.

    Query head ``h`` uses KV head ``h // (hq // hkv)``.  For each (batch, KV head) the query heads
    of its group are the activations (``(hq / hkv) * tq`` columns: with 8 query heads per group
    and ``tq = 1`` exactly the 8 columns of the Mugi array) and the cache entries are the rows:

    * ``Q K^T``: ``a = Q`` (BF16) x ``w = K^T`` (``(d, tokens)``, reduction over ``d``);
      per-token K groups run along ``d`` (dequantization per group sum), per-channel K groups
      run along tokens (the scale changes at every ``d``: dequantization per product);
    * scores are scaled in FP32 (``scale`` defaults to ``1/sqrt(d)``), masked to ``-inf`` where
      ``mask`` is False, and passed to ``softmax(x, axis=-1)`` (default :func:`exact_softmax`; any
      callable, e.g. ``functools.partial(mugi_jax.nonlinear.softmax, approx=...)``);
    * ``P V``: the probabilities, rounded to BF16 at the unit's entry, x ``w = V``
      (``(tokens, d)``, reduction over tokens).

    Args:
      q: ``(..., hq, tq, d)`` float (rounded to BF16).
      k_cache, v_cache: ``QuantizedTensor`` ``(..., hkv, tokens, d)`` from
        ``quant.quantize_kv`` (per_token or per_channel; any scheme the datapath supports).
      mask: boolean, broadcastable to ``(..., hq, tq, tokens)``; True = attend.
      mode: ``"exact"`` or ``"fast"`` (see :func:`mugi_jax.gemm.matmul`).
    Returns:
      ``(..., hq, tq, d)`` FP32.
    """
    check_datapath(datapath)
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    q = activations_bf16(q, "q")
    k_cache = _check_cache(k_cache, "k_cache")
    v_cache = _check_cache(v_cache, "v_cache")
    if q.ndim < 3:
        raise ValueError(f"q: expected (..., q_heads, q_tokens, head_dim), got {q.shape}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache: shape {v_cache.shape} differs from k_cache {k_cache.shape}")
    *batch, hkv, tokens, d = k_cache.shape
    *qbatch, hq, tq, dq = q.shape
    if tuple(qbatch) != tuple(batch):
        raise ValueError(f"q: batch axes {tuple(qbatch)} differ from the caches' {tuple(batch)}")
    if dq != d:
        raise ValueError(f"q: head_dim {dq} differs from the caches' {d}")
    if hq % hkv:
        raise ValueError(f"q: {hq} query heads is not a multiple of {hkv} KV heads")
    check_scheme(datapath, k_cache.scheme, "k_cache")
    check_scheme(datapath, v_cache.scheme, "v_cache")
    if softmax is None:
        softmax = exact_softmax
    grp = hq // hkv
    nb = math.prod(batch) * hkv

    def flat_kn(c: quant.QuantizedTensor, transpose: bool) -> KN:
        kn = as_kn(c, transpose=transpose)
        f = (lambda x: None if x is None else x.reshape(nb, *x.shape[-2:]))
        return KN(f(kn.codes), f(kn.scales), f(kn.zeros), kn.group, kn.zero_point)

    a = q.reshape(nb, grp * tq, d)
    s = _batched_matmul(a, flat_kn(k_cache, True), datapath, mode)  # (nb, grp*tq, tokens)
    s = s.reshape(*batch, hq, tq, tokens)
    s = s * jnp.float32(1.0 / math.sqrt(d) if scale is None else scale)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask: expected a boolean array, got {mask.dtype}")
        try:
            mask = jnp.broadcast_to(mask, s.shape)
        except ValueError as err:
            raise ValueError(f"mask: shape {mask.shape} does not broadcast to {s.shape}") from err
        s = jnp.where(mask, s, -jnp.inf)
    p = activations_bf16(softmax(s, axis=-1), "softmax output")
    out = _batched_matmul(p.reshape(nb, grp * tq, tokens), flat_kn(v_cache, False), datapath, mode)
    return out.reshape(*batch, hq, tq, d)
