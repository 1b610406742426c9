"""Internal: a ``QuantizedTensor`` seen as a ``(k, n)`` GEMM operand with groups along ``k``.

Every datapath consumes the same normalised form:

* ``codes`` ``(k, n)`` int8 (signed for symmetric schemes, unsigned 0..15 for asymmetric ones);
* ``scales`` ``(k // G, n)`` float32 and, for asymmetric schemes, ``zeros`` ``(k // G, n)``
  float32 (the float minimum ``m`` for ``zero_point="min"``, the integer ``z`` for ``"int"``);
* ``G``: elements of ``k`` sharing one scale.

A tensor quantized along ``n`` (e.g. a per-token V cache in ``P V``, or a per-channel K cache in
``Q K^T``) has a scale that changes at every ``k``: it becomes ``G = 1`` with the scales
repeated along ``n``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array

from mugi_jax import quant


@dataclasses.dataclass(frozen=True)
class KN:
    codes: Array  # (..., k, n) int8
    scales: Array  # (..., k // G, n) float32
    zeros: Array | None  # (..., k // G, n) float32 or None
    group: int
    zero_point: str  # "none" | "min" | "int"


jax.tree_util.register_pytree_node(
    KN, lambda kn: ((kn.codes, kn.scales, kn.zeros), (kn.group, kn.zero_point)),
    lambda aux, ch: KN(ch[0], ch[1], ch[2], aux[0], aux[1]))


def zero_point_kind(scheme: quant.Scheme) -> str:
    if scheme.symmetric:
        return "none"
    return scheme.zero_point


def as_kn(w: quant.QuantizedTensor, transpose: bool = False) -> KN:
    """Normalise ``w`` (last two axes ``(k, n)``, or ``(n, k)`` with ``transpose``)."""
    codes, scales, zeros = w.codes, w.scales.astype(jnp.float32), w.zeros
    if zeros is not None:
        zeros = zeros.astype(jnp.float32)
    nd = codes.ndim
    axis = w.axis
    if transpose:
        codes = jnp.swapaxes(codes, -1, -2)
        scales = jnp.swapaxes(scales, -1, -2)
        zeros = None if zeros is None else jnp.swapaxes(zeros, -1, -2)
        axis = {nd - 1: nd - 2, nd - 2: nd - 1}.get(axis, axis)
    k, n = codes.shape[-2:]
    if scales.shape[:-2] != codes.shape[:-2] or (zeros is not None and zeros.shape != scales.shape):
        raise ValueError(f"w: scales {scales.shape} / zeros do not match codes {codes.shape}")
    along = k if axis == nd - 2 else n
    count = scales.shape[-2] if axis == nd - 2 else scales.shape[-1]
    other = scales.shape[-1] if axis == nd - 2 else scales.shape[-2]
    if axis in (nd - 2, nd - 1) and (count == 0 or along % count or other != (n if axis == nd - 2
                                                                               else k)):
        raise ValueError(f"w: {count} groups (scales {scales.shape}) do not evenly divide the "
                         f"grouped axis of length {along} (codes {codes.shape}): the group size "
                         "must divide it")
    if axis == nd - 2:
        group = k // scales.shape[-2]
    elif axis == nd - 1:
        rep = n // scales.shape[-1]
        scales = jnp.repeat(scales, rep, axis=-1)
        zeros = None if zeros is None else jnp.repeat(zeros, rep, axis=-1)
        group = 1
    else:
        raise ValueError(f"w: quantization groups run along axis {w.scheme.axis}, which is neither "
                         "the reduction axis nor the output axis of the GEMM")
    return KN(codes, scales, zeros, group, zero_point_kind(w.scheme))
