"""BF16 x INT4 GEMM on the modelled datapaths: ``matmul(a, w, datapath, mode)``.

``mode="exact"`` follows docs/numerics.md sections 4-8 operation by operation and is bit-identical
to the NumPy reference simulator :mod:`mugi_jax.sim.gemm`:

.. math::

    p_{mkn} = \\mathrm{bf16}(a_{mk} \\, q_{kn}), \\qquad
    \\mathrm{acc}_{g} = (\\dots((0 + p_{m,k_0,n}) + p_{m,k_0+1,n}) + \\dots)
    \\ \\text{(FP32 or BF16)},

    y_g = \\mathrm{f32}(\\mathrm{acc}_g s_g)\\ [\\,+ \\mathrm{f32}(m_g A_g)\\ |\\ -
    \\mathrm{f32}(\\mathrm{f32}(s_g z_g) A_g)\\,], \\qquad
    \\mathrm{out} = (\\dots((0 + y_0) + y_1) + \\dots)

with ``A_g`` the sequential FP32 sum of the activations of group ``g`` (offset decomposition of
asymmetric schemes).  The sequential accumulation is a ``lax.scan`` over ``k`` (unrolled by 32,
vectorised over ``m`` and ``n``; ``n`` is tiled for large ``m`` to keep the state in cache).

``mode="fast"`` keeps the product rounding and the scale placement (group sum, then scale) but lets
XLA order the sums: for small ``m`` the sequential scan of exact mode (``k <= 2048``, FP32
accumulator) or a fused elementwise-product + reduction (in ``n``-tiles for very wide outputs),
for large ``m`` one
BF16 x BF16 -> FP32 ``dot`` per group (weight terms derived from the int8 codes in the loop)
using the odd-multiple decomposition

.. math::

    \\mathrm{bf16}(a\\,t) = a\\,t + \\sum_{o\\ \\mathrm{odd} > 1} [t = o 2^j]\\, 2^j\\,
    (\\mathrm{bf16}(a\\,o) - a\\,o),

where every term is exact in BF16/FP32 (``a t`` has at most 12 significant bits, the rounding
error at most 4).  So one GEMM per group, with ``k`` stretched 4x (``a`` and 3 corrections, for
magnitudes up to 8) or 8x (unsigned codes up to 15), replaces the per-element rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from mugi_jax import formats, quant
from mugi_jax._xla import materialised
from mugi_jax.gemm import native
from mugi_jax.gemm._weights import KN, as_kn
from mugi_jax.gemm.datapaths import (DATAPATHS, AlignedGroups, CodeProducts, DequantizedWeights,
                                     Numerics)

__all__ = ["matmul", "prepare_weight", "PreparedWeight", "MODES", "check_datapath",
           "activations_bf16"]

MODES = ("exact", "fast")
UNROLL = 32
_TILE_ELEMS = 1 << 18  # state elements per n-tile of the sequential scan (1 MiB of FP32)
_FAST_DOT_MIN_M = 64  # fast mode: per-group BF16 dots from this many rows, code-reading kernels below
_FAST_DOT_TILE_ELEMS = 1 << 20  # fast dot path, n > 8192: output elements per n-tile
_FAST_DOT_MIN_G = 16  # fast mode: smaller groups fold the scales into one FP32 dot
_FAST_SEQUENTIAL_MAX_K = 2048  # fast mode below _FAST_DOT_MIN_M rows: sequential scan up to this k
_TINY = float(jnp.finfo(jnp.float32).tiny)


# --------------------------------------------------------------------------------------------
# validation


def check_datapath(datapath: object) -> None:
    """A datapath is any object whose ``numerics`` record is of a kind with a kernel."""
    if type(getattr(datapath, "numerics", None)) not in _KERNELS:
        raise TypeError(f"datapath: expected one of {[d.__name__ for d in DATAPATHS]} "
                        f"(e.g. gemm.Mugi()), got {datapath!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")


def activations_bf16(a: Array, name: str = "a") -> Array:
    """BF16 activations (other float types rounded to BF16 with RNE at the unit's entry)."""
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name}: expected BF16 (or another floating-point type, rounded to BF16), "
                        f"got dtype {a.dtype}")
    return a.astype(jnp.bfloat16)


def offset_decomposed(datapath: object, scheme_or_zero_point: quant.Scheme | str) -> bool:
    """Whether asymmetric weights run on ``datapath`` by offset decomposition: the Mugi array with
    3-bit magnitudes sweeps ``q - 8`` (magnitudes 0..8: 9 counter steps) and adds
    ``offset * group_sum`` per group; ``Mugi(magnitude_bits=4)`` sweeps the unsigned code.
    The datapath's numerics record decides."""
    zp = scheme_or_zero_point
    if not isinstance(zp, str):
        zp = "none" if zp.symmetric else zp.zero_point
    # "offset": already decomposed
    return zp in ("min", "int") and datapath.numerics.offset_decomposes(zp)


def check_scheme(datapath: object, scheme: quant.Scheme, name: str = "w") -> None:
    """Which (scheme, datapath) pairs exist: Mugi needs ``magnitude_bits >= scheme.magnitude_bits``
    (sign-magnitude: 3; Int4: 4; AsymUInt4: 3 by offset decomposition, or 4); the other datapaths
    take every scheme."""
    if not isinstance(scheme, (quant.SignMagnitudeInt4, quant.Int4, quant.AsymUInt4)):
        raise TypeError(f"{name}: unsupported scheme {type(scheme).__name__}; supported: "
                        "SignMagnitudeInt4, Int4, AsymUInt4")
    swept = datapath.numerics.code_magnitude_bits()
    if swept is not None and scheme.magnitude_bits > swept \
            and not offset_decomposed(datapath, scheme):
        dp = type(datapath).__name__
        raise ValueError(
            f"{name}: scheme {type(scheme).__name__} has code magnitudes up to "
            f"{max(abs(scheme.qmin), scheme.qmax)}, which needs {dp}(magnitude_bits="
            f"{scheme.magnitude_bits}); {dp}(magnitude_bits={swept}) supports "
            + ("SignMagnitudeInt4 and AsymUInt4 (offset decomposition) only"
               if swept == 3 else "every INT4 scheme"))
    if getattr(datapath, "accumulator", "fp32") == "fp64":
        raise ValueError("datapath: accumulator='fp64' exists only in the reference simulator "
                         "(mugi_jax.sim.gemm, the float64 oracle); use 'fp32' or 'bf16'")


# --------------------------------------------------------------------------------------------
# elementary operations (explicit so they are identical on every backend)


def _round_bf16(x: Array) -> Array:
    """FP32 -> nearest-even BF16, kept in FP32."""
    return formats.round_to_bf16(x, keep_float32=True)


def _ftz(x: Array) -> Array:
    """Flush subnormals to zero of the same sign (XLA:CPU arithmetic already does this)."""
    return formats.flush_subnormals(x)


def _explicit_ftz() -> bool:
    return jax.default_backend() != "cpu"


def _maybe_ftz(x: Array) -> Array:
    return _ftz(x) if _explicit_ftz() else x


def _fence(product: Array) -> Array:
    """A rounded product that no following add can absorb, flushed to zero if subnormal.

    XLA:CPU lets LLVM contract ``c + a * b`` into one FMA (single rounding); a flush-to-zero
    written as a float compare-and-select between the multiply and the add prevents it
    (checked by the tests: ``lax.optimization_barrier`` and bit casts do *not*), which is why
    this is not :func:`formats.flush_subnormals` (bit operations)."""
    return jnp.where(jnp.abs(product) < _TINY, jnp.copysign(jnp.zeros_like(product), product),
                     product)


def _a32(a_bf16: Array) -> Array:
    """Activations as FP32 with BF16 subnormals flushed (the DAZ rule)."""
    return _ftz(a_bf16.astype(jnp.float32))


def _array_codes(kn: KN) -> Array:
    """The value the array multiplies by: the signed code (symmetric) or the unsigned code."""
    return kn.codes.astype(jnp.float32)


def _dequantize_group(acc: Array, scale: Array, zero: Array | None, asum: Array | None,
                      zero_point: str, fence: Callable = _fence,
                      flush: Callable = _maybe_ftz) -> Array:
    """The vector unit's dequantization of a group sum (docs/numerics.md section 4), the one
    place it is written: ``y = f32(acc s)``, then ``+ f32(m A)`` (``"min"``, and the ``"offset"``
    of an offset decomposition) or ``- f32(f32(s z) A)`` (``"int"``), ``A`` the FP32 sum of the
    group's activations.  ``acc`` ``(m, n)``, ``scale``/``zero`` ``(n,)``, ``asum`` ``(m,)``.
    ``fence`` follows each multiply and ``flush`` each add (fast mode passes the identity: XLA
    may then fuse and reorder)."""
    y = fence(acc * scale[None, :])
    if zero_point in ("min", "offset"):
        y = flush(y + fence(zero[None, :] * asum[:, None]))
    elif zero_point == "int":
        c = fence(scale * zero)
        y = flush(y - fence(c[None, :] * asum[:, None]))
    return y


def _identity(x: Array) -> Array:
    return x


def _dequant_weights(kn: KN) -> Array:
    """Per-element dequantization in FP32 as a baseline datapath does it: ``f32(q s)``,
    ``f32(f32(q s) + m)`` or ``f32(f32(q - z) s)``; shape ``(k, n)``."""
    q = kn.codes.astype(jnp.float32)
    s = jnp.repeat(kn.scales, kn.group, axis=-2)
    if kn.zero_point == "none":
        return _fence(q * s)
    z = jnp.repeat(kn.zeros, kn.group, axis=-2)
    if kn.zero_point == "min":
        return _ftz(_fence(q * s) + z)
    return _fence((q - z) * s)


def _offset_decompose(kn: KN) -> KN:
    """Asymmetric codes as a signed sweep plus a per-group offset (docs/numerics.md section 4.1):
    ``s q + m = s (q - 8) + (m + 8 s)`` and ``s (q - z) = s (q - 8) + s (8 - z)``, offsets rounded
    once to FP32 from the flushed scale/zero; the result uses the ``"offset"`` zero-point kind
    (``y = f32(acc s) + f32(offset A_g)``, as ``"min"``)."""
    s = _ftz(kn.scales)
    if kn.zero_point == "min":
        offset = _ftz(_ftz(kn.zeros) + _fence(s * 8.0))
    else:
        offset = _fence(s * (8.0 - kn.zeros))
    codes = (kn.codes.astype(jnp.int32) - 8).astype(jnp.int8)
    return KN(codes, s, offset, kn.group, "offset")


# --------------------------------------------------------------------------------------------
# exact kernels


def _tile_size(m: int, n: int, elems: int = _TILE_ELEMS) -> int:
    """Columns per n-tile so that ``m * tile`` stays near ``elems`` (``n``: no tiling)."""
    if m * n <= 2 * elems:
        return n
    t = 128
    while t * 2 * m <= elems:
        t *= 2
    return min(t, n)


def _map_n_tiles(fn: Callable, tile: int, w: Array, scales: Array | None,
                 zeros: Array | None) -> Array:
    """``fn(w, scales, zeros)`` (each with ``n`` last, result ``(m, n)``) on n-tiles of ``tile``
    columns (zero-padded), one after the other, concatenated."""
    n = w.shape[-1]
    pad = -n % tile
    count = (n + pad) // tile

    def tiles(x: Array | None) -> Array | None:
        if x is None:
            return None
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
        return jnp.moveaxis(x.reshape(x.shape[:-1] + (count, tile)), -2, 0)

    out = lax.map(lambda t: fn(*t), (tiles(w), tiles(scales), tiles(zeros)))
    m = out.shape[1]
    return jnp.moveaxis(out, 0, 1).reshape(m, count * tile)[:, :n]


def _exact_sequential(a32: Array, qf: Array, scales: Array | None, zeros: Array | None,
                      group: int, zero_point: str, product: str, accumulator: str) -> Array:
    """Sequential-in-k accumulation per group, then dequantization per group (``scales=None``:
    one group, no dequantization: ``out = acc``).  ``qf`` (k, n) stays in its storage type
    (int8 codes, BF16 or E4M3 weights) and is widened to FP32 one k-row at a time."""
    m, k = a32.shape
    n = qf.shape[1]
    dequant = scales is not None
    if not dequant:
        group = k
    ng = k // group
    tile = _tile_size(m, n)
    a_g = a32.T.reshape(ng, group, m)
    need_sum = zero_point != "none"

    def run_tile(qt, st, zt):
        def one_group(out, xs):
            ag, qg, sg, zg = xs

            def step(carry, x):
                acc, asum = carry
                ak, qk = x
                p = ak[:, None] * qk.astype(jnp.float32)[None, :]
                # bf16: one rounding; exact: a select, so no FMA contraction / no subnormal
                p = _round_bf16(p) if product == "bf16" else _fence(p)
                acc = acc + p
                if accumulator == "bf16":
                    acc = _round_bf16(acc)
                acc = _maybe_ftz(acc)
                if need_sum:
                    asum = _maybe_ftz(asum + ak)
                return (acc, asum), None

            init = (jnp.zeros((m, tile), jnp.float32), jnp.zeros((m,), jnp.float32))
            (acc, asum), _ = lax.scan(step, init, (ag, qg), unroll=min(group, UNROLL))
            if not dequant:
                return acc, None
            y = _dequantize_group(acc, sg, zg, asum, zero_point)
            return _maybe_ftz(out + y), None

        xs = (a_g, qt.reshape(ng, group, tile), st, zt)
        out, _ = lax.scan(one_group, jnp.zeros((m, tile), jnp.float32), xs)
        if dequant and ng == 1:
            # one group: XLA removes the loop and simplifies +0 + y to y, which keeps a -0 that
            # the sum from +0 makes +0 (found by the native kernel's adversarial test)
            out = jnp.where(out == 0, jnp.zeros_like(out), out)
        return out

    if tile == n:
        return run_tile(qf, scales, zeros)
    return _map_n_tiles(run_tile, tile, qf, scales, zeros)


def _figna(a_bf16: Array, kn: KN, align_bits: int) -> Array:
    """FIGNA: per (row, group) pre-alignment to the largest exponent, exact integer group sum."""
    a = _ftz(a_bf16.astype(jnp.float32)).astype(jnp.bfloat16)  # exact (DAZ on the input)
    m, k = a.shape
    n = kn.codes.shape[1]
    g = kn.group
    ng = k // g
    f = formats.decompose(a)
    finite_nz = f.kind == formats.Kind.NORMAL
    sig = jnp.where(finite_nz, f.mantissa + 128, 0)
    e = f.exponent.reshape(m, ng, g)
    emax = jnp.max(jnp.where(finite_nz.reshape(m, ng, g), e, -1000), axis=-1)  # (m, ng)
    d = jnp.clip(emax[..., None] - e, 0, 31)
    mag = (sig.reshape(m, ng, g) << (align_bits - 8)) >> d
    a_int = jnp.where(f.sign.reshape(m, ng, g) == 1, -mag, mag).astype(jnp.int32)
    codes = kn.codes.astype(jnp.int32).reshape(ng, g, n)
    s_int = jnp.einsum("mgk,gkn->mgn", a_int, codes, preferred_element_type=jnp.int32)
    emax_c = jnp.clip(emax, -126, 127)
    pow2 = lax.bitcast_convert_type(((emax_c + 127).astype(jnp.uint32) << 23), jnp.float32)
    s_f = _fence(_fence(s_int.astype(jnp.float32) * (2.0 ** -(align_bits - 1))) * pow2[..., None])
    # Non-finite activations: the IEEE sum of their products (order-independent).
    a32 = a.astype(jnp.float32).reshape(m, ng, g)
    nonfin = ~jnp.isfinite(a32)
    any_nonfin = jnp.any(nonfin, axis=-1)  # (m, ng)
    # Only +-inf / NaN terms (finite activations masked to 0): their IEEE sum does not depend on
    # the order, so a GEMM may compute it.
    special = jnp.einsum("mgk,gkn->mgn", jnp.where(nonfin, a32, 0.0), codes.astype(jnp.float32),
                         precision=lax.Precision.HIGHEST)
    acc = jnp.where(any_nonfin[..., None], special, s_f)  # (m, ng, n)
    return _dequant_groups_sequential(acc, a32, kn)


def _dequant_groups_sequential(acc: Array, a32_grouped: Array, kn: KN) -> Array:
    """Section 4 dequantization of group sums ``acc`` (m, ng, n), groups added in order."""
    m, ng, g = a32_grouped.shape

    def add(c, x):
        return _ftz(c + x), None

    def step(out, xs):
        acc_g, a_g, s_g, z_g = xs  # (m, n), (m, g), (n,), (n,)|None
        asum = None
        if kn.zero_point != "none":
            asum, _ = lax.scan(add, jnp.zeros((m,), jnp.float32), a_g.T)
        y = _dequantize_group(acc_g, s_g, z_g, asum, kn.zero_point, flush=_ftz)
        return _ftz(out + y), None

    xs = (acc.transpose(1, 0, 2), a32_grouped.transpose(1, 0, 2), kn.scales, kn.zeros)
    out, _ = lax.scan(step, jnp.zeros((m, acc.shape[-1]), jnp.float32), xs)
    return out


# --------------------------------------------------------------------------------------------
# fast kernels


def _odd_terms(kn: KN) -> tuple[int, ...]:
    """Odd multipliers > 1 whose product rounding must be reproduced (magnitudes up to 15)."""
    top = 15 if kn.zero_point in ("min", "int") else 8  # unsigned codes reach 15
    return tuple(o for o in range(3, top + 1, 2))


def _odd_weight(codes: Array, o: int) -> Array:
    """``sign(q) 2^j`` where ``|q| = o 2^j``, else 0."""
    q = codes.astype(jnp.int32)
    mag = jnp.abs(q)
    out = jnp.zeros_like(q)
    j = 0
    while o << j <= 15:
        out = jnp.where(mag == (o << j), jnp.sign(q) * (1 << j), out)
        j += 1
    return out


def _weight_terms(codes_g: Array, odds: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """``(ng, g, n)`` codes -> ``(ng, (1 + len(odds)) g, n)``: the codes, then for each odd
    multiple ``o`` the weights ``sign(q) 2^j`` of the codes ``|q| = o 2^j`` (all exact in BF16).

    Written as one elementwise select over the output shape (the term index an iota), in int8:
    stacking per-term arrays made XLA materialise each term as int32 in a layer scan."""
    ng, g, n = codes_g.shape
    nt = 1 + len(odds)
    q = codes_g.astype(jnp.int8)[:, None]  # (ng, 1, g, n); codes are -8..15
    term = lax.broadcasted_iota(jnp.int8, (1, nt, 1, 1), 1)
    sign, mag = jnp.sign(q), jnp.abs(q)
    out = jnp.where(term == 0, q, jnp.int8(0))
    for i, o in enumerate(odds):
        j = 0
        while o << j <= 15:
            out = jnp.where((term == i + 1) & (mag == (o << j)), sign * jnp.int8(1 << j), out)
            j += 1
    return out.reshape(ng, nt * g, n).astype(dtype)


def _odd_corrections(a: Array, odds: tuple[int, ...]) -> list[Array]:
    """``bf16(a o) - a o`` per odd multiple (exact in BF16: ``a o`` has at most 12 significant
    bits); 0 where the product is not finite (its rounding is then the identity)."""
    out = []
    for o in odds:
        ao = a * o
        c = _round_bf16(ao) - ao
        out.append(jnp.where(jnp.isfinite(c), c, 0.0))
    return out


def _fast_dot_groups(a32: Array, kn: KN, product: str) -> Array:
    """One BF16 x BF16 -> FP32 ``dot`` per group on the odd-multiple decomposition: the
    activations and their corrections ``(m, nt g)`` against the group's weight terms
    ``(nt g, n)``, then the group's scale.  The terms are derived from the int8 codes inside
    the call: for all groups at once, as int8 (4 bytes per weight for sign-magnitude, alive
    for this call only), widened to BF16 one group at a time in the loop."""
    m, k = a32.shape
    n = kn.codes.shape[1]
    g = kn.group
    ng = k // g
    odds = _odd_terms(kn) if product == "bf16" else ()
    a_g = a32.reshape(m, ng, g).transpose(1, 0, 2)  # (ng, m, g)
    # The barrier keeps XLA from hoisting the derivation of the weight terms out of a caller's
    # loop: in a model's layer scan it materialised the terms of every layer on each call.
    # Within this call XLA may derive them where it likes.
    codes_g = lax.optimization_barrier(kn.codes).reshape(ng, g, n)

    def activation_terms(a_g):  # (ng, m, nt * g), term-major like the weight terms
        xa = jnp.stack([a_g] + _odd_corrections(a_g, odds), 2)
        xa = xa.reshape(ng, m, (1 + len(odds)) * g).astype(jnp.bfloat16)
        # carried as bit patterns: XLA:CPU widens a BF16 loop operand to FP32 (twice the bytes,
        # and a conversion back at every step)
        return lax.bitcast_convert_type(xa, jnp.uint16)
    # Built inside a conditional, whose operand is materialised: else XLA:CPU fuses the
    # activations' producer into this construction and recomputes it once per term, e.g. a
    # model's VLP SiLU (a table gather) times the gate before the down projection (profiled:
    # 15-19 ms of a 512-token down call, 4x the gather's work).
    xa = materialised(activation_terms, a_g)

    def group_sum(xg, tg):
        # BF16 operands (every term is exact in BF16, every product exact in FP32): measured
        # 1.4-1.8x faster on XLA:CPU than the same dot on FP32 operands
        return lax.dot(lax.bitcast_convert_type(xg, jnp.bfloat16), tg.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)

    def run(codes_t, scales_t, zeros_t):
        # all groups' terms in one fused pass before the loop: measured 20-30% faster at the
        # SmolLM2 g32 prefill shapes than deriving them group by group inside the loop (and
        # as fast as holding them prepared)
        terms = _weight_terms(codes_t, odds, jnp.int8)
        return _scan_groups(xa, a_g, terms, scales_t, zeros_t, kn, group_sum)

    # very wide outputs (an LM head): n-tiles, so that the (m, tile) group sum and running sum
    # stay in cache across the groups, and the derived terms are one tile's
    tile = n if n <= 8192 else _tile_size(m, n, _FAST_DOT_TILE_ELEMS)
    if tile < n:
        return _map_n_tiles(run, tile, codes_g, kn.scales, kn.zeros)
    return run(codes_g, kn.scales, kn.zeros)


def _fast_folded(a32: Array, kn: KN, product: str) -> Array:
    r"""Small groups (the scale changes every few ``k``, e.g. a per-token V cache in ``P V``):
    the scales folded into the weight terms and one FP32 ``dot`` per term,

    .. math::

        \sum_k \mathrm{bf16}(a_k q_{kn}) s_{kn} = \sum_k a_k (q_{kn} s_{kn})
        + \sum_o \sum_k (\mathrm{bf16}(a_k o) - a_k o) (w^o_{kn} s_{kn})
        \ [+ \sum_k a_k m_{kn}\ |\ - \sum_k a_k s_{kn} z_{kn}]

    (``m``: the float minimum or the offset of the offset decomposition),

    exact in real arithmetic; in FP32 every ``w^o s`` is exact (``w^o`` is a signed power of
    two), ``q s`` and the sums round once each (the reordering fast mode allows)."""
    odds = _odd_terms(kn) if product == "bf16" else ()
    s = jnp.repeat(kn.scales, kn.group, axis=0)  # (k, n)
    ws = [kn.codes.astype(jnp.float32) * s] + [
        _odd_weight(kn.codes, o).astype(jnp.float32) * s for o in odds]
    xs = [a32] + _odd_corrections(a32, odds)
    if kn.zero_point != "none":
        z = jnp.repeat(kn.zeros, kn.group, axis=0)
        ws.append(z if kn.zero_point in ("min", "offset") else -(s * z))
        xs.append(a32)
    # one dot per term, summed (no concatenated copies of the stretched operands)
    dots = [lax.dot(x, w, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
            for x, w in zip(xs, ws)]
    return functools.reduce(jnp.add, dots)


def _fast_grouped(a32: Array, kn: KN, product: str) -> Array:
    """Group sums with the datapath's product rounding, summed in XLA's order.  The path is
    chosen per shape (thresholds measured with ``experiments.bench_gemm``)."""
    m, k = a32.shape
    n = kn.codes.shape[1]
    g = kn.group
    ng = k // g
    if g < _FAST_DOT_MIN_G:
        # many tiny groups (scales varying along k): scales folded into the weights
        return _fast_folded(a32, kn, product)
    if m >= _FAST_DOT_MIN_M:
        return _fast_dot_groups(a32, kn, product)
    # Few rows: XLA:CPU's BF16 dot is slow at small m (measured 5-28x the FP32 matmul with the
    # terms prepared), and the work is bound by reading the weights, so the kernels read the
    # int8 codes: the sequential scan of exact mode (an order fast mode may pick), or for one or
    # two rows and a long reduction the products of a group formed and reduced at once
    # (measured 1.4-2x faster than the scan at k = 4096; at 8 rows 4.5x slower).
    if k <= _FAST_SEQUENTIAL_MAX_K or m > 2:
        return _exact_sequential(a32, kn.codes, kn.scales, kn.zeros, g, kn.zero_point, product,
                                 "fp32")
    a_g = a32.reshape(m, ng, g).transpose(1, 0, 2)  # (ng, m, g)
    codes_g = kn.codes.reshape(ng, g, n)

    def group_sum(ag, cg):
        p = ag[:, :, None] * cg.astype(jnp.float32)[None]  # (m, g, n)
        if product == "bf16":
            p = _round_bf16(p)
        return jnp.sum(p, axis=1)
    # XLA:CPU materialises the (m, g, n) products of a group: past the cache size (an LM
    # head, n = 49152) that costs 30x, so wide outputs run in n-tiles of bounded products.
    tile = _fast_tile(m * g, n)
    if tile < n:
        return _map_n_tiles(lambda c, s_, z_: _scan_groups(a_g, a_g, c, s_, z_, kn, group_sum),
                            tile, codes_g, kn.scales, kn.zeros)
    return _scan_groups(a_g, a_g, codes_g, kn.scales, kn.zeros, kn, group_sum)


def _scan_groups(xa: Array, a_g: Array, codes_g: Array, scales: Array, zeros: Array | None,
                 kn: KN, group_sum: Callable) -> Array:
    """``sum_g scale_g * group_sum_g`` (+ the zero-point term), one group per scan step."""
    m, n = a_g.shape[1], codes_g.shape[-1]

    def step(out, xs):
        xg, ag, cg, sg, zg = xs
        asum = None if kn.zero_point == "none" else jnp.sum(ag, axis=-1)
        y = _dequantize_group(group_sum(xg, cg), sg, zg, asum, kn.zero_point, fence=_identity,
                              flush=_identity)
        return out + y, None

    out, _ = lax.scan(step, jnp.zeros((m, n), jnp.float32), (xa, a_g, codes_g, scales, zeros))
    return out


_FAST_TILE_ELEMS = 1 << 20  # products per group and n-tile in the elementwise fast path


def _fast_tile(rows: int, n: int) -> int:
    """Output columns per tile so that ``rows * tile`` products stay bounded; only very wide
    outputs are tiled (measured: 3-5x faster on n = 49152, no gain at n <= 4096)."""
    return n if n <= 8192 else _tile_size(rows, n, _FAST_TILE_ELEMS)


# --------------------------------------------------------------------------------------------
# dispatch


def _matmul_2d(a: Array, kn: KN, datapath: object, mode: str) -> Array:
    numerics = datapath.numerics
    if offset_decomposed(datapath, kn.zero_point):
        kn = _offset_decompose(kn)
    # whether the native kernel may be used is decided here, outside the jit, so that it is
    # part of the compilation's key (MUGI_JAX_NATIVE, native.xla_only())
    return _matmul_2d_jit(a, kn, numerics.for_kernel(), mode, native.allowed())


@functools.partial(jax.jit, static_argnames=("numerics", "mode", "allow_native"))
def _matmul_2d_jit(a: Array, kn: KN, numerics: Numerics, mode: str,
                   allow_native: bool = False) -> Array:
    kn = KN(kn.codes, _ftz(kn.scales), None if kn.zeros is None else _ftz(kn.zeros), kn.group,
            kn.zero_point)
    if type(numerics) is CodeProducts:
        return _code_products(a, kn, numerics, mode, allow_native)
    return _KERNELS[type(numerics)](a, kn, numerics, mode)


def _code_products(a: Array, kn: KN, numerics: CodeProducts, mode: str,
                   allow_native: bool = False) -> Array:
    """Mugi / MixPE: products with the codes, group sums, dequantization per group.  On the CPU
    the native kernel (:mod:`mugi_jax.gemm.native`, exact mode's bits) takes the shapes where
    it measured faster than the XLA kernel of ``mode``."""

    def xla(a: Array, kn: KN) -> Array:
        a32 = _a32(a)
        if mode == "fast":
            return _fast_grouped(a32, kn, numerics.product)
        return _exact_sequential(a32, kn.codes, kn.scales, kn.zeros, kn.group, kn.zero_point,
                                 numerics.product, numerics.accumulator)

    if allow_native and native.fits(a.shape[0], kn, numerics.accumulator, mode):
        return lax.platform_dependent(
            a, kn, cpu=lambda a, kn: native.vlp_gemm(a, kn, numerics.product, xla=xla),
            default=xla)
    return xla(a, kn)


_FORMATS = {"bf16": jnp.bfloat16, "e4m3": jnp.float8_e4m3fn}


def _dequantized_weights(a: Array, kn: KN, numerics: DequantizedWeights, mode: str) -> Array:
    """Systolic / SIMD / tensor-core MACs and Carat: weights dequantized per element, then a
    float GEMM (exact products, FP32 sums sequential in k or by adder trees)."""
    a32 = _a32(a)
    w = _dequant_weights(kn).astype(_FORMATS[numerics.weights])
    a_in = a32 if numerics.activations == "bf16" else \
        a32.astype(_FORMATS[numerics.activations]).astype(jnp.float32)
    if mode == "fast":
        return lax.dot(a_in.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)
    if numerics.tree_width is not None:
        return _exact_tree(a_in, w, numerics.tree_width)
    return _exact_sequential(a_in, w, None, None, 1, "none", "exact", "fp32")


def _aligned_groups(a: Array, kn: KN, numerics: AlignedGroups, mode: str) -> Array:
    """FIGNA: integer group sums of pre-aligned activations (exact in either mode)."""
    if kn.group * (1 << numerics.align_bits) * 15 >= 1 << 31:
        raise ValueError(f"w: group size {kn.group} overflows FIGNA's int32 group "
                         f"accumulator at align_bits={numerics.align_bits}; use smaller "
                         "groups or fewer align_bits")
    return _figna(a, kn, numerics.align_bits)


#: One kernel per kind of datapath numerics (the record's type): ``kernel(a, kn, numerics,
#: mode)``.
_KERNELS: dict[type, Callable] = {
    CodeProducts: _code_products,
    DequantizedWeights: _dequantized_weights,
    AlignedGroups: _aligned_groups,
}


def _exact_tree(a32: Array, w: Array, width: int) -> Array:
    """Chunks of ``width`` k: FP32 pairwise tree (``v = v[:h] + v[h:]``), chunk sums added
    sequentially from +0; k padded with +0 products."""
    m, k = a32.shape
    n = w.shape[1]
    pad = -k % width
    a32 = jnp.pad(a32, ((0, 0), (0, pad)))
    w = jnp.pad(w, ((0, pad), (0, 0)))
    nc = (k + pad) // width
    tile = _tile_size(m * width, n)
    padn = -n % tile
    w = jnp.pad(w, ((0, 0), (0, padn)))
    n_tiles = (n + padn) // tile
    a_c = a32.T.reshape(nc, width, m)

    def run_tile(wt):
        def step(acc, x):
            ac, wc = x  # (width, m), (width, tile)
            v = _fence(ac[:, :, None] * wc.astype(jnp.float32)[:, None, :])
            while v.shape[0] > 1:
                h = v.shape[0] // 2
                v = _maybe_ftz(v[:h] + v[h:])
            return _maybe_ftz(acc + v[0]), None

        out, _ = lax.scan(step, jnp.zeros((m, tile), jnp.float32),
                          (a_c, wt.reshape(nc, width, tile)))
        return out

    wt = w.reshape(k + pad, n_tiles, tile).transpose(1, 0, 2)
    out = lax.map(run_tile, wt).transpose(1, 0, 2).reshape(m, n_tiles * tile)
    return out[:, :n]


@dataclasses.dataclass(frozen=True)
class PreparedWeight:
    """A 2-D ``QuantizedTensor`` ``(k, n)`` in the form :func:`matmul` consumes, with what the
    GEMMs derive from the weights alone computed once (:func:`prepare_weight`).  It reads like
    the ``QuantizedTensor`` it was made from (``codes``, ``scales``, ``zeros``, ``scheme``,
    ``axis``, ``group_size``, ``dequantize``), so ``quant.dequantize`` accepts it.

    Attributes:
      weight: the ``QuantizedTensor``.
      kn: its codes, scales (subnormals flushed) and zeros with groups along ``k``; its codes
        are the weight's own array where they are equal (stored once).
      made_for: what ``kn`` was made for (static: the datapath's numerics fields and whether it
        runs asymmetric codes by offset decomposition); another datapath re-derives it from
        ``weight``.
    """

    weight: quant.QuantizedTensor
    kn: KN
    made_for: tuple[object, bool]

    codes = property(lambda self: self.weight.codes)
    scales = property(lambda self: self.weight.scales)
    zeros = property(lambda self: self.weight.zeros)
    scheme = property(lambda self: self.weight.scheme)
    axis = property(lambda self: self.weight.axis)
    group_size = property(lambda self: self.weight.group_size)
    shape = property(lambda self: tuple(self.weight.shape))

    def dequantize(self, dtype: jnp.dtype = jnp.float32) -> Array:
        return self.weight.dequantize(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held (every array once: codes, scales, zeros and their normalised copies)."""
        return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(self))


def _flatten_prepared(p: PreparedWeight) -> tuple[tuple, tuple]:
    # the normalised codes of a symmetric weight grouped along k are the weight's codes: one
    # leaf, so that a model's layer stacking copies (and a memory count sees) them once
    own_codes = None if p.kn.codes is p.weight.codes else p.kn.codes
    return ((p.weight, own_codes, p.kn.scales, p.kn.zeros),
            (p.made_for, p.kn.group, p.kn.zero_point))


def _unflatten_prepared(aux: tuple, children: tuple) -> PreparedWeight:
    weight, own_codes, scales, zeros = children
    made_for, group, zero_point = aux
    codes = weight.codes if own_codes is None else own_codes
    return PreparedWeight(weight, KN(codes, scales, zeros, group, zero_point), made_for)


jax.tree_util.register_pytree_node(PreparedWeight, _flatten_prepared, _unflatten_prepared)


def prepare_weight(w: quant.QuantizedTensor, datapath: object,
                   mode: str = "exact") -> PreparedWeight:
    """``w`` prepared once for ``matmul(a, ., datapath, mode)`` (same result as passing ``w``):
    the normalised codes and scales (offset-decomposed where the datapath does that).  Fast
    mode derives its weight terms from the int8 codes inside each call (as int8, alive for the
    call only; measured as fast as holding them), so both modes hold the same."""
    check_datapath(datapath)
    _check_mode(mode)
    if isinstance(w, PreparedWeight):
        if w.made_for == _made_for(datapath, w.scheme):
            return w
        w = w.weight
    _check_weight(w)
    check_scheme(datapath, w.scheme)
    kn = as_kn(w)
    kn = KN(kn.codes, _ftz(kn.scales), None if kn.zeros is None else _ftz(kn.zeros), kn.group,
            kn.zero_point)
    if offset_decomposed(datapath, kn.zero_point):
        kn = _offset_decompose(kn)
    return PreparedWeight(w, kn, _made_for(datapath, w.scheme))


def _made_for(datapath: object, scheme: quant.Scheme) -> tuple[object, bool]:
    return datapath.numerics.for_kernel(), offset_decomposed(datapath, scheme)


def _check_weight(w: object) -> None:
    if not isinstance(w, quant.QuantizedTensor):
        raise TypeError(f"w: expected a mugi_jax.quant.QuantizedTensor (k, n) or a "
                        f"gemm.PreparedWeight, got {type(w)}")
    if w.codes.ndim != 2:
        raise ValueError(f"w: expected a 2-D (k, n) QuantizedTensor, got shape {w.shape}")


def matmul(a: Float[Array, "... m k"], w: quant.QuantizedTensor | PreparedWeight,
           datapath: object, mode: str = "exact") -> Float[Array, "... m n"]:
    """``a @ w`` on ``datapath`` (FP32 output; leading axes of ``a`` are batch axes).

    Args:
      a: activations ``(..., m, k)``, BF16 (other float types are rounded to BF16 with RNE).
      w: a 2-D ``QuantizedTensor`` ``(k, n)``; groups along ``k`` (axis 0, the usual layout) or
        along ``n`` (axis 1: the scale then changes at every ``k``, dequantization per element);
        or the :class:`PreparedWeight` of one (:func:`prepare_weight`: weights used more than
        once).
      datapath: :class:`Mugi`, :class:`Carat`, :class:`MixPE`, :class:`SystolicMAC` or
        :class:`FIGNA`.
      mode: ``"exact"`` (bit-identical to :mod:`mugi_jax.sim.gemm`) or ``"fast"``.

    Raises:
      TypeError: non-floating ``a``, ``w`` not a ``QuantizedTensor``, unknown datapath.
      ValueError: shape mismatch, unknown mode, a scheme the datapath cannot sweep (Mugi with
        ``magnitude_bits=3`` supports SignMagnitudeInt4 only; ``magnitude_bits=4`` every scheme).
    """
    check_datapath(datapath)
    _check_mode(mode)
    a = activations_bf16(a)
    prepared = w if isinstance(w, PreparedWeight) else None
    if prepared is None:
        _check_weight(w)
    if a.ndim < 2:
        raise ValueError(f"a: expected (..., m, k), got shape {a.shape}")
    if a.shape[-1] != w.shape[0]:
        raise ValueError(f"a: reduction length {a.shape[-1]} does not match w (k, n) = {w.shape}")
    check_scheme(datapath, w.scheme)
    if prepared is not None and prepared.made_for == _made_for(datapath, prepared.scheme):
        kn = prepared.kn  # already offset-decomposed where the datapath does that
    else:
        kn = as_kn(w.weight if prepared is not None else w)
    lead, m, k = a.shape[:-2], a.shape[-2], a.shape[-1]
    out = _matmul_2d(a.reshape(-1, k), kn, datapath, mode)
    return out.reshape(*lead, m, w.shape[1])
