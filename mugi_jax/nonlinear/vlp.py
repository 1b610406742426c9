r"""The VLP table approximation (Mugi's nonlinear unit) as a jitted, vectorised kernel.

For a BF16 input :math:`x = (-1)^s 2^e (1 + m/128)` the unit rounds the mantissa to M bits
(half to even, a carry increments e), giving :math:`|x| \approx 2^{e'} (1 + j/2^M)`.  Elements are
grouped (``window_group`` consecutive elements along ``axis``: one array tile); each group picks a
window of W stored exponents ``[bottom, bottom + W - 1]`` and every element reads one table entry
(or takes a special value).  The rules, in order (see docs/numerics.md, "VLP nonlinear unit"):

1. NaN -> NaN (the input passes through unchanged);
2. zero or subnormal -> f(0) (exp 1, SiLU/GELU 0);
3. inf, or e' > e_top -> exp: 0 for x < 0, +inf for x > 0; SiLU/GELU: x for x > 0, 0 for x < 0;
4. e' < e_top - L + 1 -> exp: entry (bottom, j = 0); SiLU/GELU: 0
   (``tail="linear"``: exp -> bf16(1 + x), SiLU/GELU -> bf16(FTZ(x/2)));
5. e' < bottom -> entry (bottom, 0); e' > bottom + W - 1 -> entry (bottom + W - 1, 2^M - 1);
6. otherwise the entry (s, e', j).

Window, ``build="max"``: :math:`bottom = \mathrm{clip}(\max e' - W + 1,\ e_{top} - L + 1,\ e_{top} - W + 1)`
(max over the group's normal elements; identical to the spec's ``top = min(max e', e_top)``,
``bottom = max(top - W + 1, e_top - L + 1)``). ``build="min"``:
:math:`bottom = \mathrm{clip}(\min e',\ e_{top} - L + 1,\ e_{top} - W + 1)`.

An element's result depends only on its BF16 pattern and its group's window bottom (L - W + 1
possible values).  The kernels therefore evaluate the rules once per configuration on every
(bottom, pattern) pair (:func:`output_table`, ``(L - W + 1, 65536)`` uint16 bit patterns, built
from the ``(2, L, 2^M)`` table) and each element costs one gather at
``(bottom - e_bottom) * 65536 + pattern``; no arithmetic touches the looked-up values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, BFloat16, Float, Int

from mugi_jax import formats
from mugi_jax.formats import round_to_bf16
from mugi_jax.nonlinear.config import FUNCTIONS, MugiL, VLPConfig
from mugi_jax.nonlinear.tables import value_at_zero, vlp_table

__all__ = ["vlp", "subscription_cycles", "as_bf16", "VLPParts", "vlp_parts", "check_fn"]

_TINY32 = np.float32(2.0 ** -126)  # smallest normal FP32 (FTZ threshold)


def check_fn(fn: str, allowed: tuple[str, ...] = FUNCTIONS) -> str:
    if fn not in allowed:
        raise ValueError(f"fn: must be one of {allowed}, got {fn!r}")
    return fn


def _check_cfg(cfg: object) -> VLPConfig:
    if isinstance(cfg, MugiL):
        return cfg.config
    if not isinstance(cfg, VLPConfig):
        raise ValueError(f"cfg: must be a VLPConfig or MugiL, got {type(cfg).__name__}")
    return cfg


def bf16_to_f32(xb: BFloat16[Array, "..."]) -> Float[Array, "..."]:
    """Exact FP32 copy of BF16 values for arithmetic.  The ``reduce_precision`` is a no-op on
    true BF16 values; it stops XLA (excess precision) from feeding an unrounded FP32 producer
    of ``xb`` through a cancelled convert pair."""
    return jax.lax.reduce_precision(xb.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)


flush_f32 = formats.flush_subnormals  # FTZ on FP32 bit patterns


def as_bf16(x: ArrayLike) -> BFloat16[Array, "..."]:
    """The unit's entry: floating inputs are rounded to BF16 once (RNE); non-floating inputs
    raise ``TypeError``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    return x if x.dtype == jnp.bfloat16 else round_to_bf16(x)


def _norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: must be in [{-ndim}, {ndim}) for a {ndim}-d array, got {axis}")
    return axis % ndim


class _Groups(NamedTuple):
    axis: int
    size: int      # elements per group (min(window_group, n))
    count: int     # number of groups
    pad: int       # padding appended to the axis


def _groups(n: int, axis: int, window_group: int) -> _Groups:
    size = max(1, min(window_group, n))
    count = -(-n // size)
    return _Groups(axis, size, count, count * size - n)


def _grouped(v: Array, g: _Groups, fill: int | bool) -> Array:
    """Split ``g.axis`` of ``v`` into ``(count, size)`` (padding with ``fill``)."""
    if g.pad:
        widths = [(0, 0)] * v.ndim
        widths[g.axis] = (0, g.pad)
        v = jnp.pad(v, widths, constant_values=fill)
    return v.reshape(v.shape[:g.axis] + (g.count, g.size) + v.shape[g.axis + 1:])


def _ungrouped(per_group: Array, g: _Groups, shape: tuple[int, ...]) -> Array:
    """Broadcast a per-group array (group axis kept with length 1) back to element shape."""
    full = jnp.broadcast_to(per_group, per_group.shape[:g.axis + 1] + (g.size,)
                            + per_group.shape[g.axis + 2:])
    full = full.reshape(full.shape[:g.axis] + (g.count * g.size,) + full.shape[g.axis + 2:])
    if g.pad:
        full = jax.lax.slice_in_dim(full, 0, shape[g.axis], axis=g.axis)
    return full


class VLPParts(NamedTuple):
    """Everything the unit decides per element (used by the kernel and the cycle count)."""

    out: BFloat16[Array, "..."]        # result
    subscribes: Array                  # bool: the element latches a table entry
    sign: Int[Array, "..."]            # 0 = +, 1 = -
    code: Int[Array, "..."]            # latched code j (after clamping to the window)
    groups: _Groups


class BitFields(NamedTuple):
    """Integer view of BF16 values: ``magnitude`` = the 15 bits below the sign, ``biased`` its
    exponent field, ``rounded`` = the magnitude rounded (half to even) to M fraction bits, i.e.
    ``biased_exponent' * 2^M + j`` with the carry already in the exponent."""

    sign: Int[Array, "..."]
    magnitude: Int[Array, "..."]
    biased: Int[Array, "..."]
    rounded: Int[Array, "..."]


def _round_magnitude(magnitude: Array, m_bits: int) -> Array:
    """Round-half-to-even of a BF16 magnitude to M fraction bits, as one integer operation on
    the 15-bit pattern ``e_biased * 128 + m``: a carry out of the fraction lands in the exponent.
    Equal to :func:`formats.round_mantissa` for normal values (tested exhaustively)."""
    shift = 7 - m_bits
    if shift == 0:
        return magnitude
    return (magnitude + ((1 << (shift - 1)) - 1) + ((magnitude >> shift) & 1)) >> shift


def bit_fields(xb: BFloat16[Array, "..."], m_bits: int) -> BitFields:
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16).astype(jnp.int32)
    magnitude = bits & 0x7FFF
    return BitFields(bits >> 15, magnitude, magnitude >> 7, _round_magnitude(magnitude, m_bits))


def _masked_extreme(xb: Array, cfg: VLPConfig, g: _Groups) -> Array:
    """Per group (kept as a length-1 axis): the largest (``build="max"``) or smallest (``"min"``)
    BF16 magnitude pattern among the group's normal elements; 0 (max) / 0xFFFF (min) if none."""
    if g.axis == xb.ndim - 1:
        # Groups along the minor axis: XLA:CPU reduces FP32 much faster than uint16 there.
        # |x| of a BF16 value is exact in FP32 and its top 16 bits are the BF16 magnitude.
        a = jnp.abs(bf16_to_f32(xb))
        if cfg.build == "max":  # NaN/inf excluded; a subnormal maximum means "no normal element"
            key = jnp.where(a < jnp.inf, a, 0.0)
            extreme_f = jnp.max(_grouped(key, g, 0), axis=g.axis + 1, keepdims=True)
        else:
            key = jnp.where((a >= _TINY32) & (a < jnp.inf), a, jnp.inf)
            extreme_f = jnp.min(_grouped(key, g, np.inf), axis=g.axis + 1, keepdims=True)
        extreme = (jax.lax.bitcast_convert_type(extreme_f, jnp.uint32) >> 16).astype(jnp.int32)
        extreme = jnp.where(extreme < 0x0080, 0, extreme)  # zero/subnormal: empty group
        return jnp.where(extreme >= 0x7F80, 0xFFFF, extreme)  # +inf (min): empty group
    # Other axes: reduce the uint16 magnitudes of the normal elements.
    mag = jax.lax.bitcast_convert_type(xb, jnp.uint16) & jnp.uint16(0x7FFF)
    normal = (mag >= 0x0080) & (mag < 0x7F80)
    if cfg.build == "max":
        key = jnp.where(normal, mag, jnp.uint16(0))
        extreme = jnp.max(_grouped(key, g, 0), axis=g.axis + 1, keepdims=True)
    else:
        key = jnp.where(normal, mag, jnp.uint16(0xFFFF))
        extreme = jnp.min(_grouped(key, g, 0xFFFF), axis=g.axis + 1, keepdims=True)
    return extreme.astype(jnp.int32)


def _group_bottom(xb: Array, cfg: VLPConfig, g: _Groups, source: Array | None = None) -> Array:
    """Biased exponent of the window's first column, per group (group axis kept with length 1).

    The group extreme is taken on BF16 magnitude patterns (rounding to M bits is monotone, so the
    rounded exponent of the extreme magnitude is the extreme rounded exponent).

    Fast path (``build="max"`` with the unrounded ``source`` of ``xb``): rounding to BF16 is
    monotone too, so the largest BF16 magnitude of a group is ``bf16(max |source|)``; a plain
    ``max(abs(.))`` reduction (no masks, no dependency on the rounded array) is all it takes.
    It is exact whenever every group maximum is finite after rounding (then the group holds no
    NaN or inf); otherwise the masked reduction runs instead (``lax.cond``).
    """
    if source is not None and cfg.build == "max":
        m = jnp.max(_grouped(jnp.abs(source), g, 0), axis=g.axis + 1, keepdims=True)
        fast = jax.lax.bitcast_convert_type(as_bf16(m), jnp.uint16).astype(jnp.int32) & 0x7FFF
        # the slow branch re-rounds ``source`` so that ``xb`` stays fusible into its consumer
        extreme = jax.lax.cond(jnp.all(fast < 0x7F80),
                               lambda: jnp.where(fast < 0x0080, 0, fast),
                               lambda: _masked_extreme(as_bf16(source), cfg, g))
    else:
        extreme = _masked_extreme(xb, cfg, g)
    return bottom_from_extreme(extreme, cfg)


def bottom_from_extreme(extreme: Array, cfg: VLPConfig) -> Array:
    """Biased window bottom from a group's extreme BF16 magnitude pattern (int32; ``build="max"``:
    0 for a group without normal elements, ``"min"``: 0xFFFF)."""
    w, e_top_b, e_lo_b = cfg.window, cfg.e_top + 127, cfg.e_bottom + 127
    e_ext = _round_magnitude(extreme, cfg.mantissa_bits) >> cfg.mantissa_bits
    if cfg.build == "max":  # empty group: extreme 0 -> bottom = e_lo
        return jnp.clip(e_ext - (w - 1), e_lo_b, e_top_b - w + 1)
    return jnp.clip(e_ext, e_lo_b, e_top_b - w + 1)  # empty group: extreme 0xFFFF -> e_top - W + 1


class _Rules(NamedTuple):
    out: Array          # uint16 result bit pattern
    subscribes: Array
    sign: Array
    code: Array


def _element_rules(xb: BFloat16[Array, "..."], bottom: Int[Array, "..."], fn: str,
                   cfg: VLPConfig) -> _Rules:
    """The element rules of the module docstring for a given (broadcastable) biased window
    ``bottom``.  The kernels evaluate it once on every (bottom, BF16 pattern) pair to build
    :func:`output_table`, and per element for the cycle count."""
    m_bits, w, lut = cfg.mantissa_bits, cfg.window, cfg.lut_exponents
    codes, e_top_b, e_lo_b = cfg.codes, cfg.e_top + 127, cfg.e_bottom + 127
    f = bit_fields(xb, m_bits)
    e_b = f.rounded >> m_bits                       # rounded biased exponent
    normal = (f.biased != 0) & (f.biased != 255)    # zero/subnormal count as zero
    is_nan = f.magnitude > 0x7F80
    big = (f.magnitude == 0x7F80) | (normal & (e_b > e_top_b))
    below = normal & (e_b < e_lo_b)
    clamp_tail = cfg.tail == "clamp"
    if fn == "exp":
        subscribes = normal & (e_b <= e_top_b) & (clamp_tail | ~below)
    else:
        subscribes = normal & ~below & (e_b <= e_top_b)

    first = bottom * codes                          # rounded magnitude of (bottom, j = 0)
    latched = jnp.clip(f.rounded, first, first + (w * codes - 1))  # clamp to the window edges
    index = f.sign * (lut * codes) + latched - e_lo_b * codes

    # Special results are extra table entries: [f(0), 0, +inf] after the 2 * L * 2^M entries.
    # Results are assembled as uint16 bit patterns (selects on BF16 values may canonicalise
    # NaN payloads).
    table = vlp_table(fn, m_bits, lut, cfg.e_top)
    n = table.size
    extended = jnp.asarray(np.concatenate(
        [table.reshape(-1), np.array([value_at_zero(fn), 0.0, np.inf], dtype=table.dtype)]
    ).view(np.uint16))
    if fn == "exp":
        special = jnp.where(big & (f.sign == 0), n + 2, n + 1)
    else:
        special = jnp.full_like(index, n + 1)
    special = jnp.where(f.biased == 0, n, special)
    out = extended.at[jnp.where(subscribes, index, special)].get(mode="promise_in_bounds")
    x_bits = jax.lax.bitcast_convert_type(xb, jnp.uint16)
    if fn != "exp":
        out = jnp.where(big & (f.sign == 0), x_bits, out)  # SiLU/GELU are the identity above
    if not clamp_tail:
        xf = bf16_to_f32(xb)
        if fn == "exp":
            tail_v = round_to_bf16(1.0 + xf)
        else:
            tail_v = round_to_bf16(flush_f32(xf * 0.5))
        out = jnp.where(below, jax.lax.bitcast_convert_type(tail_v, jnp.uint16), out)
    return _Rules(jnp.where(is_nan, x_bits, out), subscribes, f.sign, latched & (codes - 1))


def output_table(fn: str, cfg: VLPConfig, single: bool = False) -> np.ndarray:
    """The unit's output for every window bottom and input: ``(L - W + 1, 65536)`` uint16 bit
    patterns indexed ``[bottom - (e_top - L + 1), BF16 pattern]`` (read-only, cached).

    An element's output depends only on its BF16 pattern and its group's window bottom, which
    takes L - W + 1 values, so the kernels replace the element rules by one lookup here.
    ``single=True``: groups of one element, whose bottom is a function of the element itself;
    shape ``(65536,)``."""
    return _output_table(fn, dataclasses.replace(
        cfg, window_group=1, build=cfg.build if single else "max"), single)


@functools.lru_cache(maxsize=64)
def _output_table(fn: str, cfg: VLPConfig, single: bool) -> np.ndarray:
    # Compiled ahead of time and called directly: concrete even when first asked for while
    # another function is being traced.
    table = np.array(_output_table_jit.lower(fn, cfg, single).compile()(), dtype=np.uint16)
    table.setflags(write=False)
    return table


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "single"))
def _output_table_jit(fn: str, cfg: VLPConfig, single: bool) -> Array:
    e_lo_b = cfg.e_bottom + 127
    patterns = jnp.arange(1 << 16, dtype=jnp.uint32).astype(jnp.uint16)
    xb = jax.lax.bitcast_convert_type(patterns, jnp.bfloat16)
    if single:  # each pattern's own window
        bottoms = _group_bottom(xb[:, None], cfg, _groups(1, 1, 1)).reshape(xb.shape)
        return _element_rules(xb, bottoms, fn, cfg).out
    bottoms = jnp.arange(e_lo_b, e_lo_b + cfg.lut_exponents - cfg.window + 1)[:, None]
    return _element_rules(xb[None, :], bottoms, fn, cfg).out


_GATHER_1D = jax.lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,),
                                            start_index_map=(0,))


def table_lookup(table: np.ndarray, bits: Array, offset: Array | int = 0) -> Array:
    """``table.reshape(-1)[offset + bits]`` (uint16) for in-range unsigned indices: a bare
    ``lax.gather`` (``jnp`` indexing adds a negative-index select per element; a uint16 table
    gathers faster than a wider one on XLA:CPU)."""
    index = bits.astype(jnp.uint32) + offset
    return jax.lax.gather(jnp.asarray(table.reshape(-1)), index[..., None], _GATHER_1D, (1,),
                          mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def group_offsets(bottom: Array, cfg: VLPConfig, g: _Groups, shape: tuple[int, ...]) -> Array | int:
    """Per element: start of its window bottom's row in the flattened :func:`output_table`.

    The per-group rows are a conditional's result, hence materialised: XLA would otherwise fuse
    their computation (from the group extreme) into the lookup and repeat it for every element.
    The branches: every window at its top (the usual case), or any."""
    if cfg.lut_exponents == cfg.window:  # a single possible bottom
        return 0
    top = cfg.lut_exponents - cfg.window
    rows = jax.lax.cond(jnp.all(bottom == cfg.e_top + 127 - cfg.window + 1),
                        lambda b: jnp.full(b.shape, top << 16, jnp.uint32),
                        lambda b: (b - (cfg.e_bottom + 127)).astype(jnp.uint32) << 16, bottom)
    return _ungrouped(rows, g, shape)


def vlp_parts(xb: BFloat16[Array, "..."], fn: str, cfg: VLPConfig, axis: int,
              source: Array | None = None) -> VLPParts:
    """Per-element decisions of the VLP unit on a BF16 array (see module docstring).

    ``out`` is one lookup in :func:`output_table` (bottom row, BF16 pattern); the other fields
    (only used for cycle counts) come from the element rules.  ``source``: optionally the
    unrounded array ``xb`` was rounded from (enables the fast window reduction; results are
    identical)."""
    if xb.ndim == 0:
        xb = xb.reshape(1)
        source = None if source is None else source.reshape(1)
    axis = _norm_axis(axis, xb.ndim)
    g = _groups(xb.shape[axis], axis, cfg.window_group)
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16)
    if g.size == 1:  # no window reduction: the table already holds each pattern's own window
        bottom = _group_bottom(xb, cfg, g)  # (for the cycle count only)
        out = table_lookup(output_table(fn, cfg, single=True), bits)
    else:
        bottom = _group_bottom(xb, cfg, g, source)
        out = table_lookup(output_table(fn, cfg), bits, group_offsets(bottom, cfg, g, xb.shape))
    rules = _element_rules(xb, _ungrouped(bottom, g, xb.shape), fn, cfg)
    out = jax.lax.bitcast_convert_type(out, jnp.bfloat16)
    return VLPParts(out, rules.subscribes, rules.sign, rules.code, g)


def _cycles(parts: VLPParts, fn: str, cfg: VLPConfig, early_termination: bool) -> Array:
    """Per-tile cycles: one sweep per sign pass (exp: the negative pass, plus a positive pass
    only in tiles holding a positive subscriber; SiLU/GELU: both passes).  A sweep is 2^M cycles,
    or with early termination the largest latched code of the pass + 1 (0 if nobody subscribes)."""
    g = parts.groups
    total = None
    for pass_sign in (1, 0):
        member = parts.subscribes & (parts.sign == pass_sign)
        if early_termination:
            length = jnp.max(_grouped(jnp.where(member, parts.code + 1, 0), g, 0), axis=g.axis + 1)
        elif fn == "exp" and pass_sign == 0:
            length = jnp.any(_grouped(member, g, False), axis=g.axis + 1) * cfg.codes
        else:
            shape = parts.out.shape[:g.axis] + (g.count,) + parts.out.shape[g.axis + 1:]
            length = jnp.full(shape, cfg.codes)
        total = length if total is None else total + length
    return total.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis"))
def _vlp_jit(x: Array, fn: str, cfg: VLPConfig, axis: int) -> Array:
    xb = as_bf16(x)
    return vlp_parts(xb, fn, cfg, axis, source=x).out.reshape(xb.shape)


def check_float(x: ArrayLike) -> Array:
    """``jnp.asarray(x)``; ``TypeError`` unless it has a floating dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    return x


def vlp(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(), axis: int = -1
        ) -> BFloat16[Array, "..."]:
    """Elementwise VLP approximation of ``fn`` (exp, silu, gelu, gelu_tanh); BF16 result.

    Window groups are ``cfg.window_group`` consecutive elements along ``axis`` (the last group
    may be shorter).  Inputs of other float dtypes are rounded to BF16 (RNE) at entry.
    """
    fn = check_fn(fn)
    cfg = _check_cfg(cfg)
    x = check_float(x)
    if x.size == 0:
        return x.astype(jnp.bfloat16)
    if x.ndim:
        _norm_axis(axis, x.ndim)
    return _vlp_jit(x, fn, cfg, axis if x.ndim else 0)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis", "early_termination"))
def _cycles_jit(x: Array, fn: str, cfg: VLPConfig, axis: int, early_termination: bool) -> Array:
    xb = as_bf16(x)
    if fn == "softmax":
        from mugi_jax.nonlinear.softmax import shifted_input, rows_last
        y, axis = rows_last(shifted_input(xb, axis))
        return _cycles(vlp_parts(y, "exp", cfg, axis), "exp", cfg, early_termination)
    return _cycles(vlp_parts(xb, fn, cfg, axis), fn, cfg, early_termination)


def subscription_cycles(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(),
                        axis: int = -1, early_termination: bool = True) -> Int[Array, "..."]:
    """Cycles each tile of the VLP unit takes on ``x``, computed from the data.

    For ``fn`` in exp/silu/gelu/gelu_tanh a tile is a window group along ``axis``; the result
    has ``x``'s shape with ``axis`` replaced by the number of groups.  Per tile and sign pass
    (exp: the negative pass, and a positive pass only if the tile has a positive subscriber;
    SiLU/GELU: two passes) a sweep takes 2^M cycles, or with ``early_termination`` the largest
    latched code in the pass + 1 (0 when no element of that sign reads the table).

    ``fn="softmax"`` counts the exponential of the softmax pipeline (input ``x - max`` along
    ``axis``; tiles are ``window_group`` consecutive rows at one column): the result has shape
    ``(..., row_groups, cols)`` with ``axis`` moved last (a 1-d input counts as one row).
    """
    fn = check_fn(fn, FUNCTIONS + ("softmax",))
    cfg = _check_cfg(cfg)
    x = check_float(x)
    if x.ndim == 0:
        x = x.reshape(1)
    _norm_axis(axis, x.ndim)
    return _cycles_jit(x, fn, cfg, axis, bool(early_termination))

