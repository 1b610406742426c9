r"""The VLP table approximation (Mugi's nonlinear unit) as a jitted, vectorised kernel.

For a BF16 input :math:`x = (-1)^s 2^e (1 + m/128)` the unit rounds the mantissa to M bits
(half to even, a carry increments e), giving :math:`|x| \approx 2^{e'} (1 + j/2^M)`.  Elements are
grouped (``window_group`` consecutive elements along ``axis``: one array tile); each group picks a
window of W stored exponents ``[bottom, bottom + W - 1]`` and every element reads one table entry
(or takes a special value).  The rules, in order (see docs/numerics.md, "VLP nonlinear unit"):

1. NaN -> NaN (the input passes through unchanged);
2. zero or subnormal -> f(0) (exp 1, SiLU/GELU 0);
3. inf, or e' > e_top -> ``above(x)`` of the function's record (exp: 0 for x < 0, +inf for
   x > 0; SiLU/GELU: x for x > 0, 0 for x < 0);
4. e' < e_top - L + 1 -> ``below(x)`` (SiLU/GELU: 0), or entry (bottom, j = 0) when the record's
   ``below`` is None (exp) (``tail="linear"``: bf16(f(0) + f'(0) x) in FP32 with FTZ: exp ->
   bf16(1 + x), SiLU/GELU -> bf16(FTZ(x/2)));
5. e' < bottom -> entry (bottom, 0); e' > bottom + W - 1 -> entry (bottom + W - 1, 2^M - 1);
6. otherwise the entry (s, e', j).

The function is a :class:`~mugi_jax.nonlinear.Function` of the registry
(:mod:`mugi_jax.nonlinear.functions`): its table entries, special values and passes come from it.

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
from jax.experimental.custom_partitioning import custom_partitioning
from jaxtyping import Array, ArrayLike, BFloat16, Float, Int

from mugi_jax.formats import round_to_bf16
from mugi_jax.nonlinear import functions
from mugi_jax.nonlinear._common import (TINY32, Groups, as_bf16, bf16_to_f32, check_cfg,
                                        check_float, check_fn, flush_f32, grouped, groups,
                                        norm_axis, ungrouped)
from mugi_jax.nonlinear.config import MugiL, VLPConfig
from mugi_jax.nonlinear.tables import special_values, vlp_table

__all__ = ["vlp", "as_bf16", "VLPParts", "vlp_parts", "check_fn", "round_to_bf16",
           "bf16_to_f32", "check_float"]


class VLPParts(NamedTuple):
    """Everything the unit decides per element (used by the kernel and the cycle count)."""

    out: BFloat16[Array, "..."]        # result
    subscribes: Array                  # bool: the element latches a table entry
    sign: Int[Array, "..."]            # 0 = +, 1 = -
    code: Int[Array, "..."]            # latched code j (after clamping to the window)
    groups: Groups


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


def _masked_extreme(xb: Array, cfg: VLPConfig, g: Groups) -> Array:
    """Per group (kept as a length-1 axis): the largest (``build="max"``) or smallest (``"min"``)
    BF16 magnitude pattern among the group's normal elements; 0 (max) / 0xFFFF (min) if none."""
    if g.axis == xb.ndim - 1:
        # Groups along the minor axis: XLA:CPU reduces FP32 much faster than uint16 there.
        # |x| of a BF16 value is exact in FP32 and its top 16 bits are the BF16 magnitude.
        a = jnp.abs(bf16_to_f32(xb))
        if cfg.build == "max":  # NaN/inf excluded; a subnormal maximum means "no normal element"
            key = jnp.where(a < jnp.inf, a, 0.0)
            extreme_f = jnp.max(grouped(key, g, 0), axis=g.axis + 1, keepdims=True)
        else:
            key = jnp.where((a >= TINY32) & (a < jnp.inf), a, jnp.inf)
            extreme_f = jnp.min(grouped(key, g, np.inf), axis=g.axis + 1, keepdims=True)
        extreme = (jax.lax.bitcast_convert_type(extreme_f, jnp.uint32) >> 16).astype(jnp.int32)
        extreme = jnp.where(extreme < 0x0080, 0, extreme)  # zero/subnormal: empty group
        return jnp.where(extreme >= 0x7F80, 0xFFFF, extreme)  # +inf (min): empty group
    # Other axes: reduce the uint16 magnitudes of the normal elements.
    mag = jax.lax.bitcast_convert_type(xb, jnp.uint16) & jnp.uint16(0x7FFF)
    normal = (mag >= 0x0080) & (mag < 0x7F80)
    if cfg.build == "max":
        key = jnp.where(normal, mag, jnp.uint16(0))
        extreme = jnp.max(grouped(key, g, 0), axis=g.axis + 1, keepdims=True)
    else:
        key = jnp.where(normal, mag, jnp.uint16(0xFFFF))
        extreme = jnp.min(grouped(key, g, 0xFFFF), axis=g.axis + 1, keepdims=True)
    return extreme.astype(jnp.int32)


def _group_bottom(xb: Array, cfg: VLPConfig, g: Groups) -> Array:
    """Biased exponent of the window's first column, per group (group axis kept with length 1).

    The group extreme is taken on BF16 magnitude patterns (rounding to M bits is monotone, so the
    rounded exponent of the extreme magnitude is the extreme rounded exponent)."""
    return bottom_from_extreme(_masked_extreme(xb, cfg, g), cfg)


def _largest_magnitude(source: Array, g: Groups) -> Array:
    """Per group (group axis kept with length 1): the BF16 magnitude pattern of ``bf16(max
    |source|)`` (int32), ``>= 0x7F80`` when the group holds a NaN or an infinity or its maximum
    rounds to infinity.

    The maximum of the 15-bit magnitude patterns of ``bf16(source)`` as 16-bit integers:
    rounding is monotone, for non-negative floats the integer order of the patterns is the value
    order, and NaN patterns sort above infinity.  XLA:CPU runs it as plain vector maxima (a BF16
    maximum is emulated through FP32 conversions; FP32 maxima read twice the bytes).  Groups
    along the minor axis are first halved (up to four times, down to 64 bytes per group) by
    elementwise maxima: vectorised loops that XLA:CPU runs faster than its reduction over the
    whole group; the rest is one reduction (see docs/nonlinear.md for the figures)."""
    source = as_bf16(source)
    a = grouped(jax.lax.bitcast_convert_type(source, jnp.int16) & jnp.int16(0x7FFF), g, 0)
    if g.axis == source.ndim - 1:
        for _ in range(4):  # down to 32 int16 lanes: the fastest split measured
            width = a.shape[-1]
            if width % 2 or width <= 32:
                break
            a = jnp.maximum(a[..., :width // 2], a[..., width // 2:])
    return jnp.max(a, axis=g.axis + 1, keepdims=True).astype(jnp.int32)


def _window_rows(xb: Array, cfg: VLPConfig, g: Groups, source: Array | None
                 ) -> tuple[Array, Array | int]:
    """The window bottom per group (group axis kept with length 1) and, per element, the start
    of its bottom's row in the flattened :func:`output_table` (0 when there is one bottom).

    Fast path (``build="max"`` with the unrounded ``source`` of ``xb``): rounding to BF16 is
    monotone, so the largest BF16 magnitude of a group is ``bf16(max |source|)``; a plain
    maximum (no masks, no dependency on the rounded array) is all it takes.  It is exact whenever
    every group maximum is finite after rounding (then the group holds no NaN or inf); otherwise
    the masked reduction runs instead.  One ``lax.cond`` picks the branch and materialises the
    rows: XLA would otherwise fuse their computation into the lookup and redo it per element."""
    def rows(bottom: Array) -> Array:
        return (bottom - (cfg.e_bottom + 127)).astype(jnp.uint32) << 16

    if source is None or cfg.build != "max":
        bottom = _group_bottom(xb, cfg, g)
        return bottom, group_offsets(bottom, cfg, g, xb.shape)
    fast = _largest_magnitude(source, g)

    def fast_branch() -> tuple[Array, Array]:
        bottom = bottom_from_extreme(jnp.where(fast < 0x0080, 0, fast), cfg)
        return bottom, rows(bottom)

    def masked_branch() -> tuple[Array, Array]:
        # re-rounds ``source`` so that ``xb`` stays fusible into its consumer
        bottom = _group_bottom(as_bf16(source), cfg, g)
        return bottom, rows(bottom)

    bottom, offsets = jax.lax.cond(jnp.all(fast < 0x7F80), fast_branch, masked_branch)
    return bottom, (0 if cfg.lut_exponents == cfg.window else ungrouped(offsets, g, xb.shape))


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


def _element_rules(xb: BFloat16[Array, "..."], bottom: Int[Array, "..."], fn: str | functions.Function,
                   cfg: VLPConfig) -> _Rules:
    """The element rules of the module docstring for a given (broadcastable) biased window
    ``bottom``.  The kernels evaluate it once on every (bottom, BF16 pattern) pair to build
    :func:`output_table`, and per element for the cycle count."""
    rec = functions.get(fn)
    m_bits, w, lut = cfg.mantissa_bits, cfg.window, cfg.lut_exponents
    codes, e_top_b, e_lo_b = cfg.codes, cfg.e_top + 127, cfg.e_bottom + 127
    f = bit_fields(xb, m_bits)
    e_b = f.rounded >> m_bits                       # rounded biased exponent
    normal = (f.biased != 0) & (f.biased != 255)    # zero/subnormal count as zero
    is_nan = f.magnitude > 0x7F80
    big = (f.magnitude == 0x7F80) | (normal & (e_b > e_top_b))
    below = normal & (e_b < e_lo_b)
    clamp_tail = cfg.tail == "clamp"
    below_clamps = rec.below is None and clamp_tail  # below the range: entry (bottom, j = 0)
    subscribes = normal & (e_b <= e_top_b) & (~below | below_clamps)

    first = bottom * codes                          # rounded magnitude of (bottom, j = 0)
    latched = jnp.clip(f.rounded, first, first + (w * codes - 1))  # clamp to the window edges
    index = f.sign * (lut * codes) + latched - e_lo_b * codes

    # Special results are extra entries after the 2 * L * 2^M table entries: f(0), then
    # above(x) and below(x) of every BF16 pattern x (the record's rules, evaluated once in
    # float64 and rounded to BF16).  Results are assembled as uint16 bit patterns (selects on
    # BF16 values may canonicalise NaN payloads).
    table = vlp_table(fn, m_bits, lut, cfg.e_top)
    n = table.size
    sv = special_values(fn)
    extended = jnp.asarray(np.concatenate(
        [table.reshape(-1).view(np.uint16), sv.at_zero[None], sv.above, sv.below]))
    x_bits = jax.lax.bitcast_convert_type(xb, jnp.uint16)
    pattern = x_bits.astype(jnp.int32)
    special = jnp.where(big, n + 1 + pattern, n + 1 + (1 << 16) + pattern)
    special = jnp.where(f.biased == 0, n, special)
    out = extended.at[jnp.where(subscribes, index, special)].get(mode="promise_in_bounds")
    if not clamp_tail:  # first order: f(0) + f'(0) x, FP32 with FTZ
        f0, slope = rec.at_zero(), rec.slope()
        t = bf16_to_f32(xb)
        if slope != 1.0:
            t = flush_f32(t * np.float32(slope))
        if f0 != 0.0:
            t = flush_f32(np.float32(f0) + t)
        out = jnp.where(below, jax.lax.bitcast_convert_type(round_to_bf16(t), jnp.uint16), out)
    return _Rules(jnp.where(is_nan, x_bits, out), subscribes, f.sign, latched & (codes - 1))


def output_table(fn: str, cfg: VLPConfig, single: bool = False) -> np.ndarray:
    """The unit's output for every window bottom and input: ``(L - W + 1, 65536)`` uint16 bit
    patterns indexed ``[bottom - (e_top - L + 1), BF16 pattern]`` (read-only, cached).

    An element's output depends only on its BF16 pattern and its group's window bottom, which
    takes L - W + 1 values, so the kernels replace the element rules by one lookup here.
    ``single=True``: groups of one element, whose bottom is a function of the element itself;
    shape ``(65536,)``."""
    return _output_table(functions.get(fn), dataclasses.replace(
        cfg, window_group=1, build=cfg.build if single else "max"), single)


@functools.lru_cache(maxsize=64)
def _output_table(fn: functions.Function, cfg: VLPConfig, single: bool) -> np.ndarray:
    # Compiled ahead of time and called directly: concrete even when first asked for while
    # another function is being traced.
    table = np.array(_output_table_jit.lower(fn, cfg, single).compile()(), dtype=np.uint16)
    table.setflags(write=False)
    return table


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "single"))
def _output_table_jit(fn: functions.Function, cfg: VLPConfig, single: bool) -> Array:
    e_lo_b = cfg.e_bottom + 127
    patterns = jnp.arange(1 << 16, dtype=jnp.uint32).astype(jnp.uint16)
    xb = jax.lax.bitcast_convert_type(patterns, jnp.bfloat16)
    if single:  # each pattern's own window
        bottoms = _group_bottom(xb[:, None], cfg, groups(1, 1, 1)).reshape(xb.shape)
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


def group_offsets(bottom: Array, cfg: VLPConfig, g: Groups, shape: tuple[int, ...]) -> Array | int:
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
    return ungrouped(rows, g, shape)


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
    axis = norm_axis(axis, xb.ndim)
    g = groups(xb.shape[axis], axis, cfg.window_group)
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16)
    if g.size == 1:  # no window reduction: the table already holds each pattern's own window
        bottom = _group_bottom(xb, cfg, g)  # (for the cycle count only)
        out = table_lookup(output_table(fn, cfg, single=True), bits)
    else:
        bottom, offsets = _window_rows(xb, cfg, g, source)
        out = table_lookup(output_table(fn, cfg), bits, offsets)
    rules = _element_rules(xb, ungrouped(bottom, g, xb.shape), fn, cfg)
    out = jax.lax.bitcast_convert_type(out, jnp.bfloat16)
    return VLPParts(out, rules.subscribes, rules.sign, rules.code, g)


def _vlp_xla(x: Array, fn: functions.Function, cfg: VLPConfig, axis: int, out_dtype: type
             ) -> Array:
    """The XLA path (any axis, any platform): window reduction, then one gather per element."""
    xb = as_bf16(x)
    return vlp_parts(xb, fn, cfg, axis, source=x).out.reshape(xb.shape).astype(out_dtype)


_NATIVE_HANDLER = "vlp_activation"


def native_available() -> bool:
    """Whether the native CPU kernel (``mugi_jax/_native/vlp_activation.cc``) is registered;
    False when native kernels are disabled (``MUGI_JAX_NATIVE=0``) or cannot be compiled."""
    from mugi_jax import _native
    return _native.register(_NATIVE_HANDLER, [_NATIVE_HANDLER])


def _native_table(fn: functions.Function, cfg: VLPConfig, single: bool) -> np.ndarray:
    """:func:`output_table` flattened, with one spare entry: the kernel's AVX2 lookup reads 32
    bits at each entry (the entry and the next), the last one included."""
    return np.concatenate([output_table(fn, cfg, single=single).reshape(-1),
                           np.zeros(1, np.uint16)])


def _native_call(x: Array, table: Array, cfg: VLPConfig, size: int, out_dtype: type) -> Array:
    """The kernel on ``x`` (FP32 or BF16, at least 1-d) with groups of ``size`` elements along
    the last axis; ``table``: :func:`_native_table`."""
    call = jax.ffi.ffi_call("mugi_" + _NATIVE_HANDLER, jax.ShapeDtypeStruct(x.shape, out_dtype))
    return call(x, table, group=np.int64(size),
                mantissa_bits=np.int64(cfg.mantissa_bits), window=np.int64(cfg.window),
                lut_exponents=np.int64(cfg.lut_exponents), e_top=np.int64(cfg.e_top),
                build_min=np.int64(cfg.build == "min"))


def _native_partition(cfg: VLPConfig, size: int, out_dtype: type, mesh: jax.sharding.Mesh,
                      arg_shapes: tuple, result_shape: object) -> tuple:
    """Per-device lowering under SPMD partitioning; every axis keeps its sharding (the table
    is replicated).  Rows are independent, so the leading axes need nothing; on the last axis
    the kernel runs per shard when every shard holds whole window groups, else
    :func:`_straddling_groups` combines the groups' extremes with one all-reduce of a
    per-group array (no gather of the activation)."""
    x_shape = arg_shapes[0]
    spec = tuple(x_shape.sharding.spec) + (None,) * (len(x_shape.shape) - len(x_shape.sharding.spec))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None))
    names = () if spec[-1] is None else spec[-1] if isinstance(spec[-1], tuple) else (spec[-1],)
    shards = int(np.prod([mesh.shape[a] for a in names]))
    n = x_shape.shape[-1]

    def lower(x: Array, table: Array) -> Array:
        # whole groups on every shard (groups of one: always; ``table`` is then the
        # single-element table, which the straddling path cannot read)
        if size == 1 or (n % shards == 0 and (n // shards) % size == 0):
            return _native_call(x, table, cfg, size, out_dtype)
        return _straddling_groups(x, table, cfg, size, out_dtype, names, n)

    return mesh, lower, sharding, (sharding, replicated)


def _straddling_groups(x: Array, table: Array, cfg: VLPConfig, size: int, out_dtype: type,
                       names: tuple[str, ...], n: int) -> Array:
    """The unit on one shard of a last axis (of global length ``n``, split over the mesh axes
    ``names``) whose window groups straddle shards: each shard reduces the pieces of the groups
    it holds into a per-group array (the other groups get the neutral element), one all-reduce
    (max/min) over ``names`` gives every group's extreme, then the XLA lookup."""
    local = x.shape[-1]
    shard = jnp.zeros((), jnp.int32)
    for a in names:  # linear index of this shard, the first name major
        shard = shard * jax.lax.axis_size(a) + jax.lax.axis_index(a)
    position = shard * local + jnp.arange(local, dtype=jnp.int32)  # >= n: padding
    group_of = position // size
    count = -(-n // size)
    xb = as_bf16(x)
    mag = (jax.lax.bitcast_convert_type(xb, jnp.uint16) & jnp.uint16(0x7FFF)).astype(jnp.int32)
    normal = (mag >= 0x0080) & (mag < 0x7F80) & (position < n)
    per_group = jnp.zeros(x.shape[:-1] + (count,), jnp.int32)
    if cfg.build == "max":
        extreme = jax.lax.pmax(per_group.at[..., group_of].max(jnp.where(normal, mag, 0)), names)
    else:
        extreme = jax.lax.pmin((per_group + 0xFFFF).at[..., group_of].min(
            jnp.where(normal, mag, 0xFFFF)), names)
    rows = (bottom_from_extreme(extreme, cfg) - (cfg.e_bottom + 127)).astype(jnp.uint32) << 16
    bits = jax.lax.bitcast_convert_type(xb, jnp.uint16)
    out = table_lookup(table, bits, jnp.take(rows, jnp.minimum(group_of, count - 1), axis=-1))
    return jax.lax.bitcast_convert_type(out, jnp.bfloat16).astype(out_dtype)


@functools.partial(custom_partitioning, static_argnums=(2, 3, 4))
def _native_partitioned(x: Array, table: Array, cfg: VLPConfig, size: int, out_dtype: type
                        ) -> Array:
    return _native_call(x, table, cfg, size, out_dtype)


_native_partitioned.def_partition(
    partition=_native_partition, sharding_rule="... i, t -> ... i",
    need_replication_factors=("t",),
    infer_sharding_from_operands=lambda cfg, size, out_dtype, mesh, arg_shapes, result_shape:
        arg_shapes[0].sharding)


def _vlp_native(x: Array, fn: functions.Function, cfg: VLPConfig, out_dtype: type) -> Array:
    """The unit in one native pass for window groups along the last axis (FP32 and BF16 inputs
    as they are, other floats rounded to BF16 first); the same bits as :func:`_vlp_xla`.

    ``custom_vmap``: rows are independent, so a batch axis (moved to the front) is just more
    rows; ``custom_partitioning``: a sharded input stays sharded (see :func:`_native_partition`);
    ``custom_jvp``: the derivative is zero, as on the XLA path."""
    if x.dtype not in (jnp.float32, jnp.bfloat16):
        x = as_bf16(x)
    shape = x.shape
    x = x.reshape(1) if x.ndim == 0 else x
    size = groups(x.shape[-1], 0, cfg.window_group).size

    @jax.custom_batching.custom_vmap
    def op(x: Array, table: Array) -> Array:
        return _native_partitioned(x, table, cfg, size, out_dtype)

    @op.def_vmap
    def _(axis_size: int, in_batched: list[bool], x: Array, table: Array) -> tuple[Array, bool]:
        return op(x, table), True  # (the table is a constant: never batched)

    @jax.custom_jvp
    def piecewise_constant(x: Array) -> Array:
        return op(x, jnp.asarray(_native_table(fn, cfg, size == 1)))

    @piecewise_constant.defjvp
    def _(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
        # zero derivative, as the XLA path's (integer operations on the bit patterns)
        out = piecewise_constant(*primals)
        return out, jnp.zeros_like(out)

    return piecewise_constant(x).reshape(shape)


@functools.partial(jax.jit, static_argnames=("fn", "cfg", "axis", "out_dtype", "native"))
def _vlp_jit(x: Array, fn: functions.Function, cfg: VLPConfig, axis: int,
             out_dtype: type = jnp.bfloat16, native: bool = True) -> Array:
    def xla(x: Array) -> Array:
        return _vlp_xla(x, fn, cfg, axis, out_dtype)

    last = x.ndim == 0 or norm_axis(axis, x.ndim) == x.ndim - 1
    if native and last and native_available():
        return jax.lax.platform_dependent(
            x, cpu=lambda x: _vlp_native(x, fn, cfg, out_dtype), default=xla)
    return xla(x)


def vlp(x: ArrayLike, fn: str, cfg: VLPConfig | MugiL = VLPConfig(), axis: int = -1, *,
        out_dtype: str = "bfloat16", native: bool = True) -> Float[Array, "..."]:
    """Elementwise VLP approximation of ``fn`` (a registered function: exp, silu, gelu,
    gelu_tanh, sigmoid, tanh, ...); BF16 result (``out_dtype="float32"``: the same values
    widened exactly to FP32, written by the unit itself instead of a pass of its own).

    Window groups are ``cfg.window_group`` consecutive elements along ``axis`` (the last group
    may be shorter).  Inputs of other float dtypes are rounded to BF16 (RNE) at entry.  On CPU,
    groups along the last axis run in the native kernel ``mugi_jax/_native/vlp_activation.cc``
    when it is available (same bits; see docs/nonlinear.md), everything else in XLA;
    ``native=False`` forces the XLA path (tests and benchmarks compare both).
    """
    fn = check_fn(fn)
    cfg = check_cfg(cfg)
    x = check_float(x)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype: must be one of {tuple(_OUT_DTYPES)}, got {out_dtype!r}")
    out_dtype = _OUT_DTYPES[out_dtype]
    if x.size == 0:
        return x.astype(out_dtype)
    if x.ndim:
        norm_axis(axis, x.ndim)
    return _vlp_jit(x, functions.get(fn), cfg, axis if x.ndim else 0, out_dtype, bool(native))


_OUT_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
