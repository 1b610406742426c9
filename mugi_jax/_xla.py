"""Workarounds for XLA:CPU's fusion decisions, shared by the kernels (``gemm``, ``nonlinear``)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["materialised"]


def materialised(fn: Callable[[Array], Array], operand: Array) -> Array:
    """``fn(operand)``, evaluated inside a ``lax.cond`` whose two branches are both ``fn`` (so the
    predicate - data-dependent, so that XLA cannot fold it - does not matter).  A conditional's
    operand and result are materialised, which stops XLA:CPU from fusing their producers into
    each of their consumers, where an elementwise consumer recomputes the producer per output
    element: e.g. the softmax's table gather into the pairwise-sum slices and the division (~3x
    slower there), a per-row value (row max, row sum) into a per-element loop, or a VLP
    activation into each of the GEMM fast mode's activation terms.  ``lax.optimization_barrier``
    does not do this: XLA:CPU removes it before fusion.  Nor does ``fn`` the identity: XLA
    removes a conditional whose branches return the operand unchanged (checked on the optimised
    HLO), so ``fn`` should be the work whose result is wanted once.  Under ``vmap`` the cond
    becomes a select of both (identical) branches: same values."""
    flat = operand.reshape(-1)[:1]
    flat = jax.lax.bitcast_convert_type(flat, jnp.dtype(f"uint{8 * flat.dtype.itemsize}"))
    return jax.lax.cond(flat[0] != 0x7FC1, fn, fn, operand)
