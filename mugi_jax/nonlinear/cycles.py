"""Data-driven cycle counts of the VLP unit (:func:`subscription_cycles`).

Separate from :mod:`mugi_jax.nonlinear.vlp` and :mod:`mugi_jax.nonlinear.softmax` because the
softmax count needs both (``vlp`` does not import ``softmax``: no import cycle).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int

from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear._common import (as_bf16, check_cfg, check_float, check_fn, grouped,
                                        norm_axis)
from mugi_jax.nonlinear.config import MugiL, VLPConfig
from mugi_jax.nonlinear.softmax import rows_last, shifted_input
from mugi_jax.nonlinear.vlp import VLPParts, vlp_parts

__all__ = ["subscription_cycles"]


def _cycles(parts: VLPParts, fn: functions.Function, cfg: VLPConfig,
            early_termination: bool) -> Array:
    """Per-tile cycles: one sweep per sign pass, negative first.  The passes of the record's
    ``signs`` always run; a pass of another sign runs only in tiles holding a subscriber of that
    sign (exp: the negative pass, plus a positive pass only where needed; SiLU/GELU: both
    passes).  A sweep is 2^M cycles, or with early termination the largest latched code of the
    pass + 1 (0 if nobody subscribes)."""
    g = parts.groups
    total = None
    for pass_sign in (1, 0):
        member = parts.subscribes & (parts.sign == pass_sign)
        always = (-1 if pass_sign else 1) in fn.signs
        if early_termination:
            length = jnp.max(grouped(jnp.where(member, parts.code + 1, 0), g, 0), axis=g.axis + 1)
        elif not always:
            length = jnp.any(grouped(member, g, False), axis=g.axis + 1) * cfg.codes
        else:
            shape = parts.out.shape[:g.axis] + (g.count,) + parts.out.shape[g.axis + 1:]
            length = jnp.full(shape, cfg.codes)
        total = length if total is None else total + length
    return total.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis", "early_termination"))
def _cycles_jit(x: Array, fn: str | functions.Function, cfg: VLPConfig, axis: int,
                early_termination: bool) -> Array:
    xb = as_bf16(x)
    if fn == "softmax":
        y, axis = rows_last(shifted_input(xb, axis))
        exp = functions.get("exp")
        return _cycles(vlp_parts(y, exp, cfg, axis), exp, cfg, early_termination)
    return _cycles(vlp_parts(xb, fn, cfg, axis), fn, cfg, early_termination)


def subscription_cycles(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(),
                        axis: int = -1, early_termination: bool = True) -> Int[Array, "..."]:
    """Cycles each tile of the VLP unit takes on ``x``, computed from the data.

    For a registered function ``fn`` (exp, silu, gelu, ...) a tile is a window group along
    ``axis``; the result has ``x``'s shape with ``axis`` replaced by the number of groups.  Per
    tile and sign pass (the record's ``signs`` always run; exp: the negative pass, and a
    positive pass only if the tile has a positive subscriber; SiLU/GELU: two passes) a sweep
    takes 2^M cycles, or with ``early_termination`` the largest latched code in the pass + 1 (0
    when no element of that sign reads the table).

    ``fn="softmax"`` counts the exponential of the softmax pipeline (input ``x - max`` along
    ``axis``; tiles are ``window_group`` consecutive rows at one column): the result has shape
    ``(..., row_groups, cols)`` with ``axis`` moved last (a 1-d input counts as one row).
    """
    fn = check_fn(fn, ("softmax",))
    cfg = check_cfg(cfg)
    x = check_float(x)
    if x.ndim == 0:
        x = x.reshape(1)
    norm_axis(axis, x.ndim)
    rec = fn if fn == "softmax" else functions.get(fn)
    return _cycles_jit(x, rec, cfg, axis, bool(early_termination))
