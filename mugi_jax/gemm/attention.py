"""Grouped-query attention with INT4 K and V caches, both GEMMs on a VLP datapath.

The one implementation of the attention GEMMs on a cache: :func:`cache_scores` (``Q K^T``) and
:func:`cache_context` (``P V``) run one GEMM per leading index (batch row x KV head) with the
cache as the weight operand; :func:`attention` groups the query heads and composes them with the
scale, mask and softmax, and the models' numerics (``numerics.Gemm.scores`` / ``context``, the
KIVI cache) call the same two functions."""

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

__all__ = ["attention", "exact_softmax", "cache_scores", "cache_context"]


def exact_softmax(x: Float[Array, "..."], axis: int = -1) -> Float[Array, "..."]:
    """The default softmax: ``jax.nn.softmax`` in FP32."""
    return jax.nn.softmax(x.astype(jnp.float32), axis=axis)


def _check_cache(c: object, name: str, min_ndim: int = 3) -> quant.QuantizedTensor:
    if not isinstance(c, quant.QuantizedTensor):
        raise TypeError(f"{name}: expected a QuantizedTensor from quant.quantize_kv, got {type(c)}")
    if c.codes.ndim < min_ndim:
        raise ValueError(f"{name}: expected (..., kv_heads, tokens, head_dim), got {c.shape}")
    if c.axis < c.codes.ndim - 2:
        raise ValueError(f"{name}: groups must run along tokens or head_dim "
                         "(quant.quantize_kv per_token / per_channel)")
    return c


def _cache_gemm(a: Array, cache: quant.QuantizedTensor, transpose: bool, datapath: object,
                mode: str, causal: int | None = None) -> Array:
    """``a`` ``(..., m, k)`` x the cache ``(..., tokens, d)`` as the weight operand (``K^T``
    ``(d, tokens)`` with ``transpose``, else ``V`` ``(tokens, d)``): one GEMM per leading index,
    ``(..., m, n)`` FP32.  ``causal``: see :func:`cache_scores`."""
    kn = as_kn(cache, transpose=transpose)
    lead = kn.codes.shape[:-2]
    if a.shape[:-2] != lead or a.shape[-1] != kn.codes.shape[-2]:
        raise ValueError(f"activations {a.shape} do not match the cache {cache.shape}"
                         + (" (transposed)" if transpose else ""))
    nb = math.prod(lead)
    flat = (lambda x: None if x is None else x.reshape(nb, *x.shape[-2:]))  # noqa: E731
    kn = KN(flat(kn.codes), flat(kn.scales), flat(kn.zeros), kn.group, kn.zero_point)
    if causal is None:
        out = _gemms(flat(a), kn, datapath, mode)
    else:
        out = _causal_gemms(flat(a), kn, transpose, causal, datapath, mode)
    return out.reshape(*lead, *out.shape[-2:])


def _gemms(a: Array, kn: KN, datapath: object, mode: str) -> Array:
    """``a`` ``(nb, m, k)`` x ``kn`` ``(nb, k, n)``: ``(nb, m, n)``."""
    nb, m, k = a.shape
    tile = _row_tile(m)
    # One GEMM after the other (lax.map over the leading index, then over row tiles), not
    # vmapped: the batched kernel materialises the activations' BF16-rounding corrections of
    # every (batch row, KV head) at once (4 x 9 MiB for a 512-token prefill of SmolLM2), and
    # XLA:CPU ran it about 2x slower than the same GEMMs on one head's row tile at a time,
    # with the same bits (each output element is the same sum over the same k).
    rows = a.reshape(nb, m // tile, tile, k)

    def one(xs: tuple[Array, KN]) -> Array:
        x, w = xs
        return jax.lax.map(lambda xt: _matmul_2d(xt, w, datapath, mode), x).reshape(m, -1)

    return jax.lax.map(one, (rows, kn))


_ROW_TILE = 512  # activation rows per GEMM of a cache product

#: Query tokens per chunk of a causal cache product.  A multiple of 64: XLA:CPU's dot gives
#: the same bits for a reduction cut short after trailing zeros (measured at every length
#: tried), and for the first columns of a product whose width is a multiple of 64 (measured:
#: a cut at 200 columns, or any cut of a 224-column product, changed bits, so ``Q K^T`` keeps
#: the whole product when the key slots are not a multiple of 64).
_CAUSAL_TILE = 128


def _causal_gemms(a: Array, kn: KN, transpose: bool, tokens: int, datapath: object,
                  mode: str) -> Array:
    """:func:`_gemms` for causal attention without a cache offset: the rows of ``a`` are groups
    of ``tokens`` query tokens (query ``t`` at slot ``t``), and a chunk of ``_CAUSAL_TILE``
    queries reads only the key slots up to its last query.  ``Q K^T`` (``transpose``): the
    keys after the chunk are output columns that are not computed (returned as 0);
    ``P V``: reduction steps whose probabilities are 0, left out.  Every computed element is
    the same sum over the same ``k`` as in :func:`_gemms`, with the same bits."""
    nb, m, k = a.shape
    if tokens < 1 or m % tokens:
        raise ValueError(f"causal: {m} activation rows are not groups of {tokens} query tokens")
    n = kn.codes.shape[-1]
    keys = n if transpose else k  # key slots in the cache
    if transpose and n % 64:
        return _gemms(a, kn, datapath, mode)
    grp = m // tokens
    a4 = a.reshape(nb, grp, tokens, k)
    outs = []
    for q0 in range(0, tokens, _CAUSAL_TILE):
        q1 = min(q0 + _CAUSAL_TILE, tokens)
        # the last chunk reads every slot (as _gemms does: a cut that is not a multiple of 64
        # could change the bits of the last columns), the others up to their last query
        read = keys if q1 == tokens else min(q1, keys)
        if not transpose and read % kn.group:
            read = keys  # a scale group would be cut
        rows = a4[:, :, q0:q1].reshape(nb, grp * (q1 - q0), k)
        if transpose:
            cut = lambda x: None if x is None else x[..., :read]  # noqa: E731
            o = _gemms(rows, KN(cut(kn.codes), cut(kn.scales), cut(kn.zeros), kn.group,
                                kn.zero_point), datapath, mode)
            o = jnp.pad(o, ((0, 0), (0, 0), (0, n - read)))
        else:
            cut = lambda x, r: None if x is None else x[..., :r, :]  # noqa: E731
            g = read // kn.group
            o = _gemms(rows[..., :read], KN(cut(kn.codes, read), cut(kn.scales, g),
                                            cut(kn.zeros, g), kn.group, kn.zero_point),
                       datapath, mode)
        outs.append(o.reshape(nb, grp, q1 - q0, -1))
    return jnp.concatenate(outs, axis=2).reshape(nb, m, -1)


def _row_tile(m: int) -> int:
    """Rows per GEMM: ``_ROW_TILE`` when it divides ``m``, else all ``m`` rows."""
    return _ROW_TILE if m > _ROW_TILE and m % _ROW_TILE == 0 else m


def _check_gemm_args(datapath: object, mode: str, cache: quant.QuantizedTensor,
                     name: str) -> None:
    check_datapath(datapath)
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    _check_cache(cache, name, min_ndim=2)
    check_scheme(datapath, cache.scheme, name)


def cache_scores(q: Float[Array, "... m d"], k_cache: quant.QuantizedTensor, datapath: object,
                 mode: str = "exact", causal: int | None = None) -> Float[Array, "... m tokens"]:
    """``Q K^T`` (unscaled) on ``datapath``: per leading index the keys ``(tokens, d)`` are the
    weight operand ``(d, tokens)`` (per-token groups run along the reduction ``d``, per-channel
    groups along ``tokens``: the scale then changes at every ``d``), ``q`` the activations
    (rounded to BF16).  ``k_cache`` ``(..., tokens, d)`` with the leading axes of ``q``.

    ``causal``: ``T`` when the ``m`` rows are groups of ``T`` query tokens in order, query ``t``
    at key slot ``t``, and the caller masks every key after its query (causal attention
    without a cache offset, e.g. perplexity evaluation): chunks of queries skip the key
    blocks after them, and those scores are returned as 0; the others have the same bits."""
    _check_gemm_args(datapath, mode, k_cache, "k_cache")
    return _cache_gemm(activations_bf16(q, "q"), k_cache, True, datapath, mode, causal)


def cache_context(p: Float[Array, "... m tokens"], v_cache: quant.QuantizedTensor,
                  datapath: object, mode: str = "exact",
                  causal: int | None = None) -> Float[Array, "... m d"]:
    """``P V`` on ``datapath``: per leading index the values ``(tokens, d)`` are the weight
    operand (reduction over ``tokens``), ``p`` the activations (rounded to BF16 at the unit's
    entry).  ``causal``: as in :func:`cache_scores`; the probabilities of the keys after each
    query must be 0 (they are not read)."""
    _check_gemm_args(datapath, mode, v_cache, "v_cache")
    return _cache_gemm(activations_bf16(p, "p"), v_cache, False, datapath, mode, causal)


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
    # the query heads of a KV head's group are its activations: (..., hkv, grp * tq, d)
    a = q.reshape(*batch, hkv, grp * tq, d)
    s = _cache_gemm(a, k_cache, True, datapath, mode)  # (..., hkv, grp * tq, tokens)
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
    out = _cache_gemm(p.reshape(*batch, hkv, grp * tq, tokens), v_cache, False, datapath, mode)
    return out.reshape(*batch, hq, tq, d)
