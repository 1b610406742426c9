"""Helpers shared by the nonlinear kernels: argument validation, BF16 entry/exit, window groups.

Private to :mod:`mugi_jax.nonlinear` (one place for what vlp, softmax and the baselines share).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax import formats
from mugi_jax.formats import round_to_bf16
from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear.config import MugiL, VLPConfig

TINY32 = np.float32(2.0 ** -126)  # smallest normal FP32 (FTZ threshold)

flush_f32 = formats.flush_subnormals  # FTZ on FP32 bit patterns


def check_fn(fn: str, extra: tuple[str, ...] = ()) -> str:
    """``fn`` if it names a registered function (or one of ``extra``), else ``ValueError``."""
    if fn in extra or (isinstance(fn, str) and fn in functions.REGISTRY):
        return fn
    raise ValueError(f"fn: must be one of {functions.names() + extra}, got {fn!r}")


def check_cfg(cfg: object) -> VLPConfig:
    if isinstance(cfg, MugiL):
        return cfg.config
    if not isinstance(cfg, VLPConfig):
        raise ValueError(f"cfg: must be a VLPConfig or MugiL, got {type(cfg).__name__}")
    return cfg


def check_float(x: ArrayLike) -> Array:
    """``jnp.asarray(x)``; ``TypeError`` unless it has a floating dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    return x


def norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: must be in [{-ndim}, {ndim}) for a {ndim}-d array, got {axis}")
    return axis % ndim


def bf16_to_f32(xb: BFloat16[Array, "..."]) -> Float[Array, "..."]:
    """Exact FP32 copy of BF16 values for arithmetic.  The ``reduce_precision`` is a no-op on
    true BF16 values; it stops XLA (excess precision) from feeding an unrounded FP32 producer
    of ``xb`` through a cancelled convert pair."""
    return jax.lax.reduce_precision(xb.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)


def as_bf16(x: ArrayLike) -> BFloat16[Array, "..."]:
    """The unit's entry: floating inputs are rounded to BF16 once (RNE); non-floating inputs
    raise ``TypeError``."""
    x = check_float(x)
    return x if x.dtype == jnp.bfloat16 else round_to_bf16(x)


class Groups(NamedTuple):
    axis: int
    size: int      # elements per group (min(window_group, n))
    count: int     # number of groups
    pad: int       # padding appended to the axis


def groups(n: int, axis: int, window_group: int) -> Groups:
    size = max(1, min(window_group, n))
    count = -(-n // size)
    return Groups(axis, size, count, count * size - n)


def grouped(v: Array, g: Groups, fill: int | bool) -> Array:
    """Split ``g.axis`` of ``v`` into ``(count, size)`` (padding with ``fill``)."""
    if g.pad:
        widths = [(0, 0)] * v.ndim
        widths[g.axis] = (0, g.pad)
        v = jnp.pad(v, widths, constant_values=fill)
    return v.reshape(v.shape[:g.axis] + (g.count, g.size) + v.shape[g.axis + 1:])


def ungrouped(per_group: Array, g: Groups, shape: tuple[int, ...]) -> Array:
    """Broadcast a per-group array (group axis kept with length 1) back to element shape."""
    full = jnp.broadcast_to(per_group, per_group.shape[:g.axis + 1] + (g.size,)
                            + per_group.shape[g.axis + 2:])
    full = full.reshape(full.shape[:g.axis] + (g.count * g.size,) + full.shape[g.axis + 2:])
    if g.pad:
        full = jax.lax.slice_in_dim(full, 0, shape[g.axis], axis=g.axis)
    return full
