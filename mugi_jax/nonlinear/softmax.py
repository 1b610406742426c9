r"""Softmax pipeline and the public activation functions with a choice of approximation.

Softmax (every approximation except :class:`Exact`), along ``axis`` of length n:

0. attention scores handed over with ``scale`` / ``mask``: :math:`x \leftarrow
   \mathrm{where}(\mathrm{mask}, x \cdot \mathrm{scale}, -\infty)` (one FP32 multiply, as the
   decoder computed it before the softmax; :func:`masked_scaled`);
1. :math:`x \leftarrow \mathrm{FTZ}(\mathrm{bf16}(x))` (subnormal inputs count as zero);
2. :math:`y = \mathrm{bf16\_rne}(x - \max x)` (the difference of two BF16 values is computed in
   FP32; see docs/numerics.md why this equals a single rounding; a subnormal y counts as zero in
   the unit, exactly as if it had been flushed);
3. :math:`\epsilon = \widetilde{\exp}(y)` (BF16; for VLP the window groups are ``window_group``
   consecutive *rows* at the same column of the ``(..., rows, cols)`` array, ``axis`` moved last;
   a 1-d input is one row);
4. :math:`S` = FP32 pairwise-tree sum of :math:`\mathrm{FTZ}(\epsilon)`: pad to a power of two with
   zeros, then repeatedly ``v = v[:n/2] + v[n/2:]``;
5. :math:`o = \mathrm{bf16\_rne}(\mathrm{FTZ}(\mathrm{f32}(\epsilon) / S))`; inputs equal to
   :math:`-\infty` (masks) give exactly 0 (a fully masked row gives zeros).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jaxtyping import Array, ArrayLike, BFloat16, Float

from mugi_jax import _native, formats
from mugi_jax._xla import materialised as _materialised
from mugi_jax.nonlinear.baselines import exact, pwl, taylor
from mugi_jax.nonlinear.config import PWL, Exact, MugiL, Taylor, VLPConfig
from mugi_jax.formats import round_to_bf16
from mugi_jax.nonlinear._common import (as_bf16, bf16_to_f32, flush_f32, grouped, groups,
                                        ungrouped)
from mugi_jax.nonlinear.vlp import bottom_from_extreme, group_offsets, output_table, table_lookup, vlp

_TINY32 = np.float32(2.0 ** -126)

__all__ = ["softmax", "silu", "gelu", "activation", "pairwise_sum", "shifted_input", "rows_last",
           "flush_bf16", "exact_divide", "token_major", "masked_scaled"]


def pairwise_sum(v: Float[Array, "... n"]) -> Float[Array, "... 1"]:
    """FP32 pairwise-tree sum over the last axis: zero-pad to a power of two, then repeatedly add
    the second half onto the first half (elementwise) until one element remains."""
    n = v.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    if size != n:
        v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, size - n)])
    while size > 1:
        size //= 2
        v = v[..., :size] + v[..., size:]
    return v


flush_bf16 = formats.flush_subnormals  # FTZ on BF16 bit patterns


def shifted_input(xb: BFloat16[Array, "..."], axis: int) -> BFloat16[Array, "... n"]:
    """Steps 1-2: ``bf16_rne(FTZ(x) - max FTZ(x))`` with ``axis`` moved last.

    The BF16 subtraction (XLA: FP32 subtract, then RNE to BF16) equals a single rounding of the
    exact difference (see docs/numerics.md); the bit cast downstream keeps the BF16 rounding.
    A subnormal difference is left as is: the VLP unit counts it as zero, exactly as if it had
    been flushed, so the result does not depend on the device's FTZ mode.
    """
    return _shift(flush_bf16(jnp.moveaxis(xb, axis, -1)))


def _shift(x: BFloat16[Array, "... n"]) -> BFloat16[Array, "... n"]:
    return x - jnp.max(x, axis=-1, keepdims=True)


def exact_divide(num: Float[Array, "... n"], den: Float[Array, "... 1"]) -> Float[Array, "... n"]:
    """IEEE FP32 ``num / den`` (den broadcast along the last axis).

    XLA's CPU compiler rewrites ``a / broadcast(b)`` into ``a * broadcast(1 / b)``, which is not
    correctly rounded; adding ``0 * num`` makes the divisor a full-shape value and keeps a true
    division (``0 * num`` is 0 for finite num and NaN where num is NaN/inf, where the quotient is
    NaN anyway).
    """
    return num / (den + 0.0 * num)


def masked_scaled(x: ArrayLike, scale: ArrayLike | None = None,
                  mask: ArrayLike | None = None) -> Array:
    """``where(mask, x * float32(scale), -inf)``, each part only when given: attention scores as a
    decoder hands them to its softmax.  ``x * scale`` is one multiply in ``x``'s dtype promoted
    with FP32 (an FP32 multiply for FP32/BF16 scores; on XLA:CPU with subnormals flushed, as every
    XLA:CPU multiply); ``mask`` (boolean, broadcast against ``x``) False gives -inf."""
    x = jnp.asarray(x)
    if scale is not None:
        x = x * jnp.asarray(scale, jnp.float32)
    if mask is not None:
        x = jnp.where(mask, x, -jnp.inf)
    return x


def check_scale_mask(shape: tuple[int, ...], scale: object, mask: object) -> None:
    """Raise ``ValueError`` unless ``scale`` is None or a real scalar and ``mask`` None or a
    boolean array broadcastable to ``shape``."""
    if scale is not None:
        s = jnp.asarray(scale)
        if s.ndim != 0 or not (jnp.issubdtype(s.dtype, jnp.floating)
                               or jnp.issubdtype(s.dtype, jnp.integer)):
            raise ValueError(f"scale: must be a real scalar, got shape {s.shape} dtype {s.dtype}")
    if mask is not None:
        m = jnp.asarray(mask) if not hasattr(mask, "shape") else mask
        if m.dtype != jnp.bool_ or len(m.shape) > len(shape) or any(
                a not in (1, b) for a, b in zip(m.shape[::-1], shape[::-1])):
            raise ValueError(f"mask: must be a boolean array broadcastable to x's shape {shape}, "
                             f"got shape {tuple(m.shape)} dtype {m.dtype}")


def rows_last(y: Array) -> tuple[Array, int]:
    """View ``y`` as ``(..., rows, cols)`` (a 1-d vector is one row); returns it and the rows axis."""
    if y.ndim == 1:
        y = y[None]
    return y, y.ndim - 2


def _approx_exp(y: Array, approx: object) -> Array:
    if isinstance(approx, PWL):
        return pwl(y, "exp", approx)
    if isinstance(approx, Taylor):
        return taylor(y, "exp", approx)
    raise ValueError(f"approx: must be PWL or Taylor, got {approx!r}")


# Codes of the VLP softmax's exp input (see ``_vlp_codes``): y's own BF16 pattern, except for
# -inf inputs (masks), whose y (-inf, or NaN of either sign in a row whose maximum is -inf or
# NaN) is recoded to ``_mask_code(y)``: patterns of positive values, which ``y = x - max x <= 0``
# never takes.  Their table entries tell a masked input from ``e`` alone.
_E_MASKED = 0x8000        # e of a masked -inf input whose y is -inf: -0 (sums like the +0 it was)
_E_MASKED_NAN = 0x7FC1    # e of a masked input whose y is NaN (| sign): NaN with a spare payload
_NEG_NORMAL = (0x8080, 0xFF80)  # y patterns of negative normal numbers: [lo, hi)


def _mask_code(y: Array) -> Array:
    """Code of a masked input from its y pattern: -inf (0xFF80) -> 0x0200, NaN 0xFFC0 -> 0x0201,
    NaN 0x7FC0 -> 0x0001 (a NaN y is one of those two: see ``_vlp_codes``)."""
    return (y >> 6) & 0x201


@functools.lru_cache(maxsize=64)
def _softmax_exp_table(cfg: VLPConfig, single: bool) -> np.ndarray:
    """:func:`output_table` for exp with FTZ applied (the pipeline flushes e before summing), NaN
    canonical (``sign | 0x7FC0``: a BF16 input's NaN payload passes through y, and must not read
    as a mask) and the entries of the masked inputs' codes (see ``_mask_code``)."""
    t = np.array(output_table("exp", cfg, single), dtype=np.uint16)
    t = np.where((t & 0x7F80) == 0, t & 0x8000, t).astype(np.uint16)  # FTZ (NaN untouched)
    t = np.where((t & 0x7FFF) > 0x7F80, (t & 0x8000) | 0x7FC0, t).astype(np.uint16)
    for y, e in ((0xFF80, _E_MASKED), (0xFFC0, 0x8000 | _E_MASKED_NAN), (0x7FC0, _E_MASKED_NAN)):
        t[..., _mask_code(y)] = e
    t.setflags(write=False)
    return t


def _rounded_bits32(x: Array) -> Array:
    """``FTZ(bf16(x))`` as FP32 bit patterns (uint32; a NaN becomes ``sign | 0x7FC00000``).

    FP32 inputs are rounded (half to even) with integer operations on their patterns in one
    width, which XLA:CPU vectorises without packing; other dtypes go through :func:`as_bf16`."""
    u32 = jnp.uint32
    if x.dtype == jnp.float32:
        b = jax.lax.bitcast_convert_type(x, u32)
        r = (b + u32(0x7FFF) + ((b >> 16) & u32(1))) & u32(0xFFFF0000)
        r = jnp.where((b & u32(0x7FFFFFFF)) > u32(0x7F800000),
                      (b & u32(0x80000000)) | u32(0x7FC00000), r)
    else:
        r = jax.lax.bitcast_convert_type(as_bf16(x), jnp.uint16).astype(u32) << 16
    return jnp.where((r & u32(0x7F800000)) == 0, r & u32(0x80000000), r)  # FTZ


def _row_max(x: Array) -> Array:
    """``max FTZ(bf16(x))`` per row (kept as a length-1 axis) as FP32, taken on ``x`` itself:
    rounding to BF16 and FTZ are monotone, so ``FTZ(bf16(max x)) = max FTZ(bf16(x))`` (NaN
    propagates through both).  Materialised: XLA would otherwise redo it per element."""
    def row_max(v: Array) -> Array:
        return bf16_to_f32(flush_bf16(as_bf16(jnp.max(v, axis=-1, keepdims=True))))

    return _materialised(row_max, x)


def _vlp_codes(x: Array) -> Array:
    """Steps 1-2 as uint16 codes for the table: the pattern of ``y = bf16_rne(FTZ(bf16(x)) -
    max)``, or ``_mask_code(y)`` for -inf inputs, so that the result can be told from ``e`` alone.

    One pass over ``x`` in 32-bit lanes: y is rounded on the FP32 difference's pattern.  A NaN
    difference is ``sign | 0x7FC00000`` (the quiet NaN of a rounded input or of the rounded row
    maximum, or the default NaN of inf - inf), whose rounding is exact: y is the NaN's top half,
    which the table maps to a NaN of the same sign.  Zero, subnormal and -inf y read their own
    table entries (f(0) = 1, 1, 0)."""
    u32 = jnp.uint32
    m = _row_max(x)
    r = _rounded_bits32(x)
    d = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(r, jnp.float32) - m, u32)
    y = (d + u32(0x7FFF) + ((d >> 16) & u32(1))) >> 16
    return jnp.where(r == u32(0xFF800000), _mask_code(y), y).astype(jnp.uint16)


# Window groups of at most this many elements are reduced by elementwise extrema of their slices
# (see ``_vlp_exp_codes``).
_FUSED_GROUP = 8


def _vlp_exp_codes(z: Array, cfg: VLPConfig, axis: int) -> Array:
    """Step 3 on the codes, window groups along ``axis``: FTZ(e) as uint16.

    Small groups (the query heads of one token, at most ``_FUSED_GROUP``) take their extreme
    as elementwise extrema of the group's slices in one vectorised pass that writes each group's
    table row as one byte (materialised: fused into the lookup, the window arithmetic would run
    in its scalar gather loop, per element); the lookup adds it to the code.  On SmolLM2's causal
    prefill softmax, (1, 3, 1536, 512): 0.81 ms for both, against 1.10 ms fused and 1.9 ms with
    the rows of ``group_offsets``.  Larger groups are reduced and use ``group_offsets``."""
    u16 = jnp.uint16
    g = groups(z.shape[axis], axis, cfg.window_group)
    if g.size == 1:
        return table_lookup(_softmax_exp_table(cfg, True), z)
    reduce = jnp.maximum if cfg.build == "max" else jnp.minimum
    fill = 0 if cfg.build == "max" else 0xFFFF

    def bottom(z: Array) -> Array:  # per group: the window's biased bottom exponent
        # only negative normal y count (masks, NaN, -inf, zero and subnormal y do not)
        key = jnp.where(z - u16(_NEG_NORMAL[0]) < u16(_NEG_NORMAL[1] - _NEG_NORMAL[0]), z,
                        u16(fill))
        gz = grouped(key, g, fill)
        if g.size <= _FUSED_GROUP:
            ext = functools.reduce(reduce, [jax.lax.slice_in_dim(gz, i, i + 1, axis=g.axis + 1)
                                            for i in range(g.size)])
        else:
            ext = (jnp.max if cfg.build == "max" else jnp.min)(gz, axis=g.axis + 1, keepdims=True)
        extreme = jnp.where(ext == u16(fill), ext, ext & u16(0x7FFF))  # max: 0, min: 0xFFFF
        return bottom_from_extreme(extreme.astype(jnp.int32), cfg)

    if cfg.lut_exponents == cfg.window:  # a single possible bottom
        offsets = 0
    elif g.size <= _FUSED_GROUP:  # L - W + 1 <= 254 rows: one byte each
        rows = _materialised(lambda v: (bottom(v) - (cfg.e_bottom + 127)).astype(jnp.uint8), z)
        offsets = ungrouped(rows, g, z.shape).astype(jnp.uint32) << 16
    else:
        offsets = group_offsets(bottom(z), cfg, g, z.shape)
    return table_lookup(_softmax_exp_table(cfg, False), z, offsets)


def _vlp_softmax(x: Array, cfg: VLPConfig, tokens: int | None) -> Array:
    """The pipeline for VLP (``x`` with the softmax axis last), reading the exponentials from
    one table lookup on codes (see ``_vlp_codes``); identical results to ``_softmax_jit``'s
    generic path, with fewer passes: ``e`` carries the -inf mask, and is already flushed.

    Window groups are formed in place: the rows ``(..., heads x tokens, cols)`` are viewed as
    ``(..., heads, tokens, cols)`` (a free reshape; ``tokens`` None: one token) and grouped along
    the heads axis, so no pass transposes the scores to a token-major layout and back."""
    u16 = jnp.uint16
    shape = x.shape
    x2, _ = rows_last(x)
    t = tokens or 1
    x3 = x2.reshape(x2.shape[:-2] + (x2.shape[-2] // t, t, x2.shape[-1]))
    z = _vlp_codes(x3)  # stored once: the window reduction and the lookup both read it
    e = _materialised(lambda v: _vlp_exp_codes(v, cfg, v.ndim - 3), z)
    masked = (e == u16(_E_MASKED)) | ((e & u16(0x7FFF)) == u16(_E_MASKED_NAN))

    def f32(v: Array) -> Array:  # exact: BF16 bits in the top half
        return jax.lax.bitcast_convert_type(v.astype(jnp.uint32) << 16, jnp.float32)

    # A masked e (-0 or a NaN of the sign the generic path has) adds into the sum exactly like
    # the generic path's e (+0 or that NaN) does.  The sum is materialised: XLA would otherwise
    # fuse the last levels of the tree into the division and redo them per element.
    total = _materialised(lambda v: pairwise_sum(f32(v)), e)
    q = exact_divide(f32(e), total)
    out = jax.lax.bitcast_convert_type(round_to_bf16(flush_f32(q)), u16)  # FTZ, then RNE
    out = jax.lax.bitcast_convert_type(jnp.where(masked, u16(0), out), jnp.bfloat16)
    return out.reshape(shape)


def token_major(x: Array, tokens: int | None, inverse: bool = False) -> Array:
    """Rows ``(..., heads x tokens, cols)`` laid out head-major -> ``(..., tokens, heads,
    cols)`` (``inverse``: back), so that window groups (rows at one column) hold the rows of
    one token.  ``tokens`` None or 1: ``x`` unchanged."""
    if tokens is None or tokens == 1:
        return x
    if inverse:
        *lead, t, h, n = x.shape
        return jnp.swapaxes(x, -3, -2).reshape(*lead, h * t, n)
    *lead, rows, n = x.shape
    return jnp.swapaxes(x.reshape(*lead, rows // tokens, tokens, n), -3, -2)


def check_tokens(shape: tuple[int, ...], axis: int, tokens: object) -> None:
    """Raise ``ValueError`` unless ``tokens`` is None or a positive int dividing the rows (the
    last axis other than ``axis``) of an array of ``shape``."""
    if tokens is None:
        return
    rows = 1 if len(shape) == 1 else [n for i, n in enumerate(shape) if i != axis % len(shape)][-1]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1 or rows % tokens:
        raise ValueError(f"tokens: must be a positive integer dividing the {rows} rows, "
                         f"got {tokens!r}")


_NATIVE_HANDLER = "softmax_vlp"


@functools.lru_cache(maxsize=64)
def _bottom_rows(cfg: VLPConfig) -> np.ndarray:
    """Per group extreme key (0..0xFFFF, the fill of an empty group included): the row of the
    window's bottom in :func:`_softmax_exp_table` (uint8; at most 254 rows), as
    ``_vlp_exp_codes`` computes it."""
    fill = 0 if cfg.build == "max" else 0xFFFF
    key = np.arange(1 << 16, dtype=np.int32)
    extreme = np.where(key == fill, key, key & 0x7FFF)
    with jax.ensure_compile_time_eval():
        bottom = np.asarray(bottom_from_extreme(jnp.asarray(extreme), cfg))
    rows = (bottom - (cfg.e_bottom + 127)).astype(np.uint8)
    rows.setflags(write=False)
    return rows


def _rounded_magnitude(a: np.ndarray | int, shift: int) -> np.ndarray | int:
    """``a`` rounded half to even at bit ``shift`` (then shifted down): a BF16 magnitude pattern
    rounded to ``7 - shift`` mantissa bits, the carry going into the exponent."""
    if shift == 0:
        return a
    return (a + (1 << (shift - 1)) - 1 + ((a >> shift) & 1)) >> shift


_PERM_SLOTS = 128  # slots of a permute-form row: two pairs of 32-lane word permutes
_PERM_ROWS = 8     # table rows the permute form takes


@functools.lru_cache(maxsize=64)
def _compact_tables(cfg: VLPConfig, single: bool, windowed: bool
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
    """The native kernel's compact forms of :func:`_softmax_exp_table` (and, ``windowed``, of
    :func:`_bottom_rows`), derived from the tables and checked against them: ``(compact,
    compact_rows, (a_lo, a_hi, k_lo, k_hi, shift, ra_lo, ra_hi))``, or None where they do not
    compress so (the kernel then reads the full tables).

    The codes the kernel meets are mostly *regular*: +0 and the non-positive, non-NaN y
    patterns ``0x8000 | a`` (a <= 0x7F80, -inf included).  A table row, as a function of the
    magnitude a, is f(0) on zero and subnormal a (a subnormal y counts as zero), constant on
    ``[0x80, a_lo]`` (below the stored exponents) and on ``[a_hi, 0x7F80]`` (exp underflows):
    so row r of ``compact`` is ``f(0)`` followed by the entries of ``[a_lo, a_hi]`` (about 1500
    entries for the default unit against 65536), and a code reads index ``0`` for ``a < 0x80``,
    else ``1 + clamp(a, a_lo, a_hi) - a_lo`` (one entry of padding follows the rows: the kernel
    reads 32-bit words).  Where every row is moreover a function of ``ra`` =
    :func:`_rounded_magnitude` ``(a, shift)`` (the unit rounds y's mantissa to M bits first)
    with at most 128 slots (``0`` for zero/subnormal a, else ``1 + clamp(ra, ra_lo, ra_hi) -
    ra_lo``), and there are at most 8 rows, those slots follow (128 per row; ``shift`` -1:
    none): the kernel then looks them up by in-register permutes instead of gathers.
    ``compact_rows[clamp(key, k_lo, k_hi) - k_lo]`` is the table row of a window key (the
    bottom rows are constant outside ``[k_lo, k_hi]`` on the keys the kernel meets).  Other
    codes (NaN y, masked inputs) read the full tables."""
    full = np.asarray(_softmax_exp_table(cfg, single)).reshape(-1, 1 << 16)
    nrows = full.shape[0]
    neg = full[:, 0x8000:0xFF81]  # by magnitude a = 0 .. 0x7F80
    changes = np.nonzero((neg[:, 0x81:] != neg[:, 0x80:-1]).any(axis=0))[0] + 0x81
    if not changes.size:
        a_lo = a_hi = 0x80
    else:
        a_lo, a_hi = int(changes[0]) - 1, int(changes[-1])
    width = a_hi - a_lo + 2
    compact = np.concatenate([neg[:, :1], neg[:, a_lo:a_hi + 1]], axis=1)
    compact = np.append(compact.reshape(-1), np.uint16(0)).astype(np.uint16)
    codes = np.concatenate([[0], np.arange(0x8000, 0xFF81)])
    want = full[:, codes]
    a = codes & 0x7FFF
    index = np.where(a < 0x80, 0, np.clip(a, a_lo, a_hi) - a_lo + 1)
    if not np.array_equal(compact[np.arange(nrows)[:, None] * width + index[None, :]], want):
        return None  # e.g. a subnormal y not reading f(0): the full tables
    perm_form = (-1, 0, 0)
    for shift in range(7, -1, -1):  # the coarsest rounding the rows are functions of
        ra_lo, ra_hi = _rounded_magnitude(a_lo, shift), _rounded_magnitude(a_hi, shift)
        if ra_hi - ra_lo + 2 > _PERM_SLOTS or nrows > _PERM_ROWS:
            break
        slot = np.where(a < 0x80, 0,
                        np.clip(_rounded_magnitude(a, shift), ra_lo, ra_hi) - ra_lo + 1)
        perm = np.zeros((nrows, _PERM_SLOTS), np.uint16)
        perm[:, slot] = want
        if np.array_equal(perm[:, slot], want):
            compact = np.concatenate([compact, perm.reshape(-1)])
            perm_form = (shift, int(ra_lo), int(ra_hi))
            break
    k_lo = k_hi = 0
    compact_rows = np.zeros(1, np.int32)
    if windowed:
        # the keys the kernel meets: the codes of negative normal y, and the empty group's fill
        bottom = _bottom_rows(cfg).astype(np.int64)
        lo, hi = _NEG_NORMAL
        steps = np.nonzero(bottom[lo + 1:hi] != bottom[lo:hi - 1])[0] + lo
        k_lo, k_hi = (int(steps[0]), int(steps[-1]) + 1) if steps.size else (lo, lo)
        compact_rows = bottom[k_lo:k_hi + 1].astype(np.int32)
        keys = np.append(np.arange(lo, hi), 0 if cfg.build == "max" else 0xFFFF)
        if (not np.array_equal(compact_rows[np.clip(keys, k_lo, k_hi) - k_lo], bottom[keys])
                or bottom[keys].max() >= nrows):
            return None
    compact.setflags(write=False)
    compact_rows.setflags(write=False)
    return compact, compact_rows, (a_lo, a_hi, k_lo, k_hi) + perm_form


def _native_call(x: Array, table: Array, bottom_rows: Array, scale: Array, mask: Array,
                 compact: Array, compact_rows: Array, tokens: int, group: int, build_max: bool,
                 windowed: bool, scaled: bool, masked: bool, out_f32: bool,
                 ranges: tuple[int, ...] | None) -> Array:
    """The native kernel on ``x`` of shape ``(batch..., rows, n)`` (at least 3-d); ``scale``
    (1,) FP32 and ``mask`` (``x``'s rank, each axis ``x``'s length or 1) are applied first when
    ``scaled`` / ``masked``; ``out_f32``: the BF16 results written as FP32; ``ranges``: those of
    the compact tables (:func:`_compact_tables`), None: the full tables only."""
    a_lo, a_hi, k_lo, k_hi, shift, ra_lo, ra_hi = ranges or (0x80, 0x80, 0, 0, -1, 0, 0)
    return jax.ffi.ffi_call("mugi_" + _NATIVE_HANDLER, jax.ShapeDtypeStruct(
        x.shape, jnp.float32 if out_f32 else jnp.bfloat16))(
        x, table, bottom_rows, scale, mask, compact, compact_rows, tokens=np.int64(tokens),
        group=np.int64(group), build_max=build_max, windowed=windowed, scaled=scaled,
        masked=masked, compacted=ranges is not None, a_lo=np.int64(a_lo), a_hi=np.int64(a_hi),
        k_lo=np.int64(k_lo), k_hi=np.int64(k_hi), shift=np.int64(shift), ra_lo=np.int64(ra_lo),
        ra_hi=np.int64(ra_hi))


def _batch_spec(sharding: object, ndim: int) -> tuple:
    """``sharding``'s spec over ``ndim`` axes with the rows and softmax axes replicated (a window
    group and a row need all of theirs); the leading (batch) axes keep theirs."""
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return spec[:ndim - 2] + (None, None)


def _partition(tokens, group, build_max, windowed, scaled, masked, out_f32, ranges, mesh,
               arg_shapes, result_shape):
    from jax.sharding import NamedSharding, PartitionSpec

    x_shape, mask_shape = arg_shapes[0].shape, arg_shapes[4].shape
    spec = _batch_spec(arg_shapes[0].sharding, len(x_shape))
    x_mesh = arg_shapes[0].sharding.mesh
    x_sharding = NamedSharding(x_mesh, PartitionSpec(*spec))
    # the mask's batch axes that are not broadcast follow x's
    mask_sharding = NamedSharding(x_mesh, PartitionSpec(*(
        a if m == n else None for a, m, n in zip(spec, mask_shape, x_shape))))
    replicated = NamedSharding(x_mesh, PartitionSpec())

    def lower(x, table, bottom_rows, scale, mask, compact, compact_rows):
        return _native_call(x, table, bottom_rows, scale, mask, compact, compact_rows, tokens,
                            group, build_max, windowed, scaled, masked, out_f32, ranges)

    return x_mesh, lower, x_sharding, (x_sharding, replicated, replicated, replicated,
                                       mask_sharding, replicated, replicated)


def _infer(tokens, group, build_max, windowed, scaled, masked, out_f32, ranges, mesh,
           arg_shapes, result_shape):
    from jax.sharding import NamedSharding, PartitionSpec

    spec = _batch_spec(arg_shapes[0].sharding, len(arg_shapes[0].shape))
    return NamedSharding(arg_shapes[0].sharding.mesh, PartitionSpec(*spec))


def _sharding_rule(tokens, group, build_max, windowed, scaled, masked, out_f32, ranges, mesh,
                   value_types, result_types):
    """``b0 b1 .. r n, t k, c, s, <mask>, u, v -> b0 b1 .. r n``: batch axes pass through; a
    mask axis of length 1 where x's is longer is a factor of its own."""
    x_shape, mask_shape = tuple(value_types[0].shape), tuple(value_types[4].shape)
    nb = len(x_shape) - 2
    xf = [f"b{i}" for i in range(nb)] + ["r", "n"]
    mf = [f if m == n else f"m{i}" for i, (f, m, n) in enumerate(zip(xf, mask_shape, x_shape))]
    x_s = " ".join(xf)
    rule = f"{x_s}, t k, c, s, {' '.join(mf)}, u, v -> {x_s}"
    extra = tuple(f for f in mf if f.startswith("m"))
    # in the order the factors first appear in the rule
    return rule, {"need_replication_factors": ("r", "n", "t", "k", "c", "s") + extra + ("u", "v")}


@functools.partial(custom_partitioning, static_argnums=tuple(range(7, 15)))
def _native_partitioned(x: Array, table: Array, bottom_rows: Array, scale: Array, mask: Array,
                        compact: Array, compact_rows: Array, tokens: int, group: int,
                        build_max: bool, windowed: bool, scaled: bool, masked: bool,
                        out_f32: bool, ranges: tuple[int, ...] | None) -> Array:
    return _native_call(x, table, bottom_rows, scale, mask, compact, compact_rows, tokens, group,
                        build_max, windowed, scaled, masked, out_f32, ranges)


# Sharded inputs: the batch axes keep their sharding (each device runs the kernel on its
# shard); the rows and softmax axes are replicated (gathered if they were sharded).
_native_partitioned.def_partition(
    partition=_partition, infer_sharding_from_operands=_infer, sharding_rule=_sharding_rule)


@functools.lru_cache(maxsize=256)
def _native_fn(statics: tuple) -> object:
    """The kernel call for ``statics`` with a ``vmap`` rule: batched axes become leading batch
    axes of the kernel (a batched mask keeps its own; a batched scale is applied before the
    call, on the XLA side)."""
    @jax.custom_batching.custom_vmap
    def call(x, table, bottom_rows, scale, mask, compact, compact_rows):
        return _native_partitioned(x, table, bottom_rows, scale, mask, compact, compact_rows,
                                   *statics)

    @call.def_vmap
    def _(axis_size, in_batched, x, table, bottom_rows, scale, mask, compact, compact_rows):
        if in_batched[1] or in_batched[2] or in_batched[5] or in_batched[6]:
            raise NotImplementedError("softmax: the native kernel's tables are not batched")
        if not in_batched[0]:
            x = jnp.broadcast_to(x, (axis_size,) + x.shape)
        if not in_batched[4]:
            mask = mask[None]
        if in_batched[3]:  # a scale per example: x * scale here (the same FP32 multiply)
            x = x.astype(jnp.float32) * scale.reshape((axis_size,) + (1,) * (x.ndim - 1))
            unscaled = statics[:4] + (False,) + statics[5:]
            return _native_fn(unscaled)(x, table, bottom_rows, jnp.ones((1,), jnp.float32),
                                        mask, compact, compact_rows), True
        return call(x, table, bottom_rows, scale, mask, compact, compact_rows), True

    return call


def _native_softmax(x: Array, cfg: VLPConfig, tokens: int | None, scale: Array | None = None,
                    mask: Array | None = None, out_f32: bool = False) -> Array:
    """``_vlp_softmax(masked_scaled(x, scale, mask))`` by the native kernel (``x`` with the
    softmax axis last; ``mask`` broadcastable to it, its axes in ``x``'s order); ``out_f32``:
    the result as FP32."""
    if x.dtype not in (jnp.float32, jnp.bfloat16):
        x = masked_scaled(x, scale, mask)
        scale = mask = None
        if x.dtype not in (jnp.float32, jnp.bfloat16):
            x = as_bf16(x)  # the XLA path's entry rounding; equal codes (see ``_rounded_bits32``)
    shape = x.shape
    lead = (1,) * max(0, 3 - x.ndim)
    x3 = x.reshape(lead + x.shape)  # (batch..., rows, n)
    t = tokens or 1
    g = groups(x3.shape[-2] // t, 0, cfg.window_group)
    windowed = g.size > 1 and cfg.lut_exponents != cfg.window
    table = jnp.asarray(_softmax_exp_table(cfg, g.size == 1))
    bottom = jnp.asarray(_bottom_rows(cfg) if windowed else np.zeros(1, np.uint8))
    scale_op = jnp.asarray(1.0 if scale is None else scale, jnp.float32).reshape(1)
    if mask is None:
        mask_op = jnp.ones((1,) * x3.ndim, jnp.bool_)
    else:
        mask_op = jnp.asarray(mask)
        mask_op = mask_op.reshape((1,) * (x3.ndim - mask_op.ndim) + mask_op.shape)
    packed = _compact_tables(cfg, g.size == 1, windowed)
    compact, compact_rows, ranges = packed if packed else (np.zeros(1, np.uint16),
                                                          np.zeros(1, np.int32), None)
    statics = (t, g.size, cfg.build == "max", windowed, scale is not None, mask is not None,
               out_f32, ranges)
    return _native_fn(statics)(x3, table, bottom, scale_op, mask_op, jnp.asarray(compact),
                               jnp.asarray(compact_rows)).reshape(shape)


def native_available() -> bool:
    """Whether the native CPU softmax kernel (``mugi_jax/_native/softmax.cc``) is registered in
    this process (False when ``MUGI_JAX_NATIVE=0`` or it cannot be compiled)."""
    return _native.register("softmax", (_NATIVE_HANDLER,))


@functools.partial(jax.jit, static_argnames=("axis", "approx", "tokens", "native", "out_dtype"))
def _softmax_jit(x: Array, axis: int, approx: object, tokens: int | None = None,
                 native: bool = False, scale: Array | None = None,
                 mask: Array | None = None, out_dtype: str = "bfloat16") -> Array:
    out_f32 = out_dtype == "float32"
    if isinstance(approx, (VLPConfig, MugiL)):
        cfg = approx.config if isinstance(approx, MugiL) else approx
        if native and native_available():  # registered in this process (a cached answer)
            # the kernel applies the scale and the mask as it reads x (no pass of their own)
            xl = jnp.moveaxis(x, axis, -1)
            ml = None
            if mask is not None:
                ml = jnp.asarray(mask)
                ml = jnp.moveaxis(ml.reshape((1,) * (x.ndim - ml.ndim) + ml.shape), axis, -1)
            out = jax.lax.platform_dependent(
                xl, ml, scale, cpu=lambda v, m, s: _native_softmax(v, cfg, tokens, s, m, out_f32),
                default=lambda v, m, s: _vlp_softmax(masked_scaled(v, s, m), cfg,
                                                     tokens).astype(out_dtype))
        else:
            xl = jnp.moveaxis(masked_scaled(x, scale, mask), axis, -1)
            out = _vlp_softmax(xl, cfg, tokens).astype(out_dtype)
        return jnp.moveaxis(out, -1, axis)
    x = masked_scaled(x, scale, mask)
    x_ftz = flush_bf16(jnp.moveaxis(as_bf16(x), axis, -1))  # one consumer chain: fuses
    y = _shift(x_ftz)
    e32 = flush_bf16(_approx_exp(y, approx)).astype(jnp.float32)
    q = exact_divide(e32, pairwise_sum(e32))
    out = round_to_bf16(flush_f32(q))  # FTZ, then RNE
    u16 = jnp.uint16
    masked = jax.lax.bitcast_convert_type(x_ftz, u16) == u16(0xFF80)
    out = jnp.where(masked, u16(0), jax.lax.bitcast_convert_type(out, u16))  # -inf -> +0
    out = jax.lax.bitcast_convert_type(out, jnp.bfloat16).astype(out_dtype)
    return jnp.moveaxis(out, -1, axis)


def _check_approx(approx: object) -> None:
    if not isinstance(approx, (Exact, VLPConfig, MugiL, PWL, Taylor)):
        raise ValueError(f"approx: must be Exact, VLPConfig, MugiL, PWL or Taylor, got {approx!r}")


def softmax(x: ArrayLike, axis: int = -1, approx: object = VLPConfig(),
            tokens: int | None = None, scale: ArrayLike | None = None,
            mask: ArrayLike | None = None, out_dtype: str = "bfloat16") -> Array:
    """Softmax along ``axis`` with the exponential computed by ``approx``.

    ``Exact()``: ``jax.nn.softmax`` in FP32 (FP32 result).  Otherwise the BF16 pipeline of the
    module docstring (BF16 result); -inf inputs give exactly 0.

    ``tokens``: the rows (``(..., rows, cols)`` with ``axis`` last) are ``heads x tokens``
    attention rows laid out head-major; VLP window groups are then formed of the rows of one
    token (row ``h * tokens + i`` for every head ``h``), never across tokens.  Only VLP / Mugi-L
    have window groups; the other approximations give the same result with or without it.

    ``scale`` (a real scalar) and ``mask`` (boolean, broadcastable to ``x``): the softmax of
    :func:`masked_scaled` ``(x, scale, mask)``, bit for bit, i.e. of ``where(mask, x *
    float32(scale), -inf)``; the native CPU kernel applies both as it reads ``x`` (attention
    scores straight from ``Q K^T``), saving a pass.

    ``out_dtype``: ``"bfloat16"`` or ``"float32"`` (the same BF16 values written as FP32, for a
    caller that wants FP32: no conversion pass); ``Exact()`` always gives FP32.
    """
    _check_approx(approx)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x: softmax needs at least one axis, got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: must be in [{-x.ndim}, {x.ndim}), got {axis}")
    check_tokens(x.shape, axis, tokens)
    check_scale_mask(x.shape, scale, mask)
    if out_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"out_dtype: must be 'bfloat16' or 'float32', got {out_dtype!r}")
    if isinstance(approx, Exact):
        return _exact_softmax(x, axis % x.ndim, scale, mask)
    if x.size == 0:
        return masked_scaled(x, scale, mask).astype(out_dtype)
    native = isinstance(approx, (VLPConfig, MugiL)) and native_available()
    return _softmax_jit(x, axis % x.ndim, approx, tokens if x.ndim > 1 else None, native,
                        scale, mask, out_dtype)


@functools.partial(jax.jit, static_argnames=("axis",))
def _exact_softmax(x: Array, axis: int, scale: Array | None = None,
                   mask: Array | None = None) -> Array:
    return jax.nn.softmax(masked_scaled(x, scale, mask).astype(jnp.float32), axis=axis)


def activation(x: ArrayLike, fn: str, approx: object = VLPConfig(), axis: int = -1) -> Array:
    """``fn`` (a registered function: exp, silu, gelu, gelu_tanh, sigmoid, tanh, ...) computed by
    ``approx``; VLP groups run along ``axis``."""
    _check_approx(approx)
    if isinstance(approx, Exact):
        return exact(x, fn)
    if isinstance(approx, (VLPConfig, MugiL)):
        return vlp(x, fn, approx, axis=axis)
    if isinstance(approx, PWL):
        return pwl(x, fn, approx)
    return taylor(x, fn, approx)


def silu(x: ArrayLike, approx: object = VLPConfig(), axis: int = -1) -> Array:
    """SiLU :math:`x\\sigma(x)` by ``approx`` (BF16 result; FP32 for ``Exact()``)."""
    return activation(x, "silu", approx, axis)


def gelu(x: ArrayLike, approx: object = VLPConfig(), approximate: bool = False, axis: int = -1
         ) -> Array:
    """GELU by ``approx``: erf form by default (``approximate=True``: the tanh form; note that
    ``jax.nn.gelu`` defaults to the tanh form)."""
    return activation(x, "gelu_tanh" if approximate else "gelu", approx, axis)
