"""Cycle-level NumPy reference of the Mugi VLP array in GEMM mode, and literal references of the
baseline datapaths (Carat, MixPE, systolic MAC, FIGNA).  The oracle for :mod:`mugi_jax.gemm`.

The Mugi model follows docs/numerics.md section 4 literally, one k-step at a time:

* a counter sweeps ``t = 0, 1, ...`` (``2^magnitude_bits`` values, or ``max |q| + 1`` over the
  row tile with early termination);
* each column's value-reuse unit forms ``p_t = bf16_rne(a[c, k] t)`` and broadcasts it;
* each row's comparator fires when ``t == |q[k, r]|``; the PE latches ``p_t``;
* the sign of the code is applied by XOR (exact negation) and the product is pushed into the row
  FIFO; the row adder accumulates ``acc[r, c] = round_acc(acc[r, c] + p)``;
* a k-step lasts ``max(sweep, ceil(cols / adders_per_row))`` cycles (the row adder bound);
* after each quantization group the vector unit dequantizes: ``y = f32(acc s)`` (+ the offset
  term of asymmetric schemes) and adds ``y`` into the output.

Asymmetric codes on a 3-bit-magnitude array (offset decomposition, docs/numerics.md section 4.1):
the array sweeps the signed ``q - 8`` (magnitudes 0..8: 9 counter values without early
termination) and the vector unit adds ``offset * A_g`` with ``offset = f32(m + 8 s)`` (min form)
or ``f32(s (8 - z))`` (zero-point form) and ``A_g`` the FP32 sum of the group's activations.

Subnormals are flushed to zero around every arithmetic operation (docs/numerics.md section 1);
NumPy does not do it by itself.  This module imports only :mod:`mugi_jax.formats` and
:mod:`mugi_jax.quant`; datapath configs are read by attribute (duck typing), never imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np

from mugi_jax import formats, quant

__all__ = ["GemmSimResult", "simulate_gemm", "reference_matmul"]

_BF16 = ml_dtypes.bfloat16
_E4M3 = ml_dtypes.float8_e4m3fn


@dataclasses.dataclass
class GemmSimResult:
    """Output of :func:`simulate_gemm`.

    Attributes:
      out: ``(..., m, n)`` float32 (float64 for ``accumulator="fp64"``).
      cycles: total array cycles (every column tile x row tile x k-step).
      tile_cycles: ``(k, n_row_tiles)`` cycles of each k-step of each row tile (identical for every
        column tile: they depend on the weights only).
      events: counts of ``multiplies`` (column value-reuse unit), ``comparisons`` (row
        comparators), ``latches``, ``fifo_pushes``, ``adds`` (row adders), ``dequant_multiplies``
        and ``offset_ops`` (vector unit), ``group_sum_adds`` (FP32 activation group sums of
        asymmetric schemes, one per activation and k-step), ``output_adds``; ``fifo_max_depth`` (largest row-FIFO
        occupancy: a row's ``cols`` products enter at its comparator's cycle, the adder(s) pop
        ``adders_per_row`` a cycle, the FIFO carries over k-steps) and ``drain_cycles`` (the
        FIFO tails after the last k-step of each tile pass: not included in ``cycles``, the
        steady-state count).
    """

    out: np.ndarray
    cycles: int
    tile_cycles: np.ndarray
    events: dict[str, int]


# ---------------------------------------------------------------------------------------------
# helpers


_ftz = formats.flush_subnormals_numpy


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round FP32 to BF16 (RNE), kept as float32."""
    return np.asarray(x, np.float32).astype(_BF16).astype(np.float32)


@dataclasses.dataclass
class _KN:
    codes: np.ndarray  # (k, n) int64
    scales: np.ndarray  # (k // G, n) float32
    zeros: np.ndarray | None
    group: int
    zero_point: str


def _weights(w: quant.QuantizedTensor) -> _KN:
    """The (k, n) operand with groups along k (groups along n become G = 1)."""
    codes = np.asarray(w.codes).astype(np.int64)
    scales = formats.to_numpy(w.scales).astype(np.float32)
    zeros = None if w.zeros is None else np.asarray(w.zeros).astype(np.float32)
    zp = "none" if w.scheme.symmetric else w.scheme.zero_point
    if codes.ndim != 2:
        raise ValueError(f"w: expected a 2-D (k, n) QuantizedTensor, got shape {codes.shape}")
    k, n = codes.shape
    if w.axis == 0:
        group = k // scales.shape[0]
    else:
        rep = n // scales.shape[1]
        scales = np.repeat(scales, rep, axis=1)
        zeros = None if zeros is None else np.repeat(zeros, rep, axis=1)
        group = 1
    return _KN(codes, scales, zeros, group, zp)


def _activations(a: Any) -> np.ndarray:
    """``(..., m, k)`` -> ``(M, k)`` float32 holding BF16 values with subnormals flushed."""
    a = np.asarray(a)
    if a.dtype != _BF16:
        if not np.issubdtype(a.dtype, np.floating) and a.dtype != _BF16:
            raise TypeError(f"a: expected a floating-point array, got {a.dtype}")
        a = a.astype(np.float32).astype(_BF16)
    return _ftz(a.astype(np.float32).reshape(-1, a.shape[-1]))


def _offset_decompose(kn: _KN) -> _KN:
    """``q - 8`` and the per-group offset (FP32, one rounding, from the flushed scale/zero)."""
    s = _ftz(kn.scales.astype(np.float32))
    if kn.zero_point == "min":
        offset = _ftz(_ftz(kn.zeros.astype(np.float32)) + _ftz(s * np.float32(8)))
    else:
        offset = _ftz(s * (np.float32(8) - kn.zeros.astype(np.float32)))
    return _KN(kn.codes - 8, s, offset, kn.group, "min")


def _dequant_group(out, acc, asum, s, z, zero_point, dtype, ev):
    """Vector unit: ``y = acc s`` (+ offset), ``out += y`` (FTZ around every operation)."""
    s = _ftz(s.astype(dtype))
    y = _ftz(acc * s)
    ev["dequant_multiplies"] += acc.size
    if zero_point == "min":
        y = _ftz(y + _ftz(_ftz(z.astype(dtype)) * asum[:, None]))
        ev["offset_ops"] += 2 * acc.size
    elif zero_point == "int":
        c = _ftz(s * z.astype(dtype))
        y = _ftz(y - _ftz(c * asum[:, None]))
        ev["offset_ops"] += 2 * acc.size
    ev["output_adds"] += acc.size
    return _ftz(out + y)


def _new_events() -> dict[str, int]:
    return dict.fromkeys(("multiplies", "comparisons", "latches", "fifo_pushes", "adds",
                          "fifo_max_depth", "drain_cycles", "dequant_multiplies", "offset_ops",
                          "group_sum_adds", "output_adds"), 0)


# ---------------------------------------------------------------------------------------------
# Mugi array


def simulate_gemm(a: Any, w: quant.QuantizedTensor, datapath: Any,
                  early_termination: bool = True) -> GemmSimResult:
    with np.errstate(all="ignore"):  # inf/NaN arithmetic is part of the model
        return _simulate_gemm(a, w, datapath, early_termination)


def _simulate_gemm(a: Any, w: quant.QuantizedTensor, datapath: Any,
                   early_termination: bool) -> GemmSimResult:
    """Simulate ``a @ w`` on a Mugi array described by ``datapath`` (attributes ``rows``,
    ``cols``, ``magnitude_bits``, ``product`` ("bf16"/"exact"), ``accumulator``
    ("fp32"/"bf16"/"fp64") and ``adders_per_row``).  ``a`` is ``(..., m, k)``."""
    rows, cols = int(datapath.rows), int(datapath.cols)
    mb = int(datapath.magnitude_bits)
    product, accumulator = datapath.product, datapath.accumulator
    adders = int(datapath.adders_per_row)
    bound = -(-cols // adders)
    lead = np.shape(a)[:-2]
    a32 = _activations(a)
    kn = _weights(w)
    m_tot, k = a32.shape
    if kn.codes.shape[0] != k:
        raise ValueError(f"a: reduction length {k} does not match w {kn.codes.shape}")
    n = kn.codes.shape[1]
    dtype = np.float64 if accumulator == "fp64" else np.float32
    offset = mb == 3 and kn.zero_point != "none"
    if offset:
        kn = _offset_decompose(kn)
    full_sweep = 9 if offset else 1 << mb  # counter values t = 0..8 for q - 8 in [-8, 7]
    if kn.zero_point == "none" or offset:
        mag, neg = np.abs(kn.codes), kn.codes < 0
    else:
        mag, neg = kn.codes, np.zeros_like(kn.codes, bool)
    if mag.max(initial=0) >= full_sweep:
        raise ValueError(f"w: code magnitude {mag.max()} does not fit magnitude_bits={mb}")
    n_rt = -(-n // rows)
    tile_cycles = np.zeros((k, n_rt), np.int64)
    ev = _new_events()
    out = np.zeros((m_tot, n), dtype)
    g = kn.group
    a_d = a32.astype(dtype)
    for c0 in range(0, m_tot, cols):
        act = a_d[c0:c0 + cols]  # (C, k) the active columns
        n_c = act.shape[0]
        for ti, r0 in enumerate(range(0, n, rows)):
            r1 = min(r0 + rows, n)
            n_r = r1 - r0
            o = np.zeros((n_c, n_r), dtype)
            fifo = np.zeros(n_r, np.int64)  # occupancy of each row's FIFO (carried across k)
            for gi in range(k // g):
                acc = np.zeros((n_r, n_c), dtype)
                asum = np.zeros((n_c,), dtype)
                for kk in range(gi * g, (gi + 1) * g):
                    mrow = mag[kk, r0:r1]
                    sweep = int(mrow.max()) + 1 if early_termination else full_sweep
                    tile_cycles[kk, ti] = max(sweep, bound)
                    latch = np.full((n_r, n_c), np.nan, dtype)
                    fired = np.zeros(n_r, bool)
                    for t in range(tile_cycles[kk, ti]):  # the counter / k-step cycles
                        if t < sweep:
                            prod = act[:, kk] * dtype(t)  # column value-reuse unit
                            if product == "bf16":
                                prod = _bf16(prod).astype(dtype)
                            prod = _ftz(prod)
                            ev["multiplies"] += n_c
                            hit = mrow == t  # row comparators
                            ev["comparisons"] += n_r
                            latch[hit] = prod[None, :]
                            fired |= hit
                            ev["latches"] += int(hit.sum()) * n_c
                            fifo += np.where(hit, n_c, 0)  # the row's products enter its FIFO
                        ev["fifo_max_depth"] = max(ev["fifo_max_depth"], int(fifo.max()))
                        fifo = np.maximum(fifo - adders, 0)  # the row adder(s) pop
                    assert fired.all()
                    latch = np.where(neg[kk, r0:r1, None], -latch, latch)  # sign XOR
                    ev["fifo_pushes"] += n_r * n_c
                    acc = _ftz(acc + latch)  # row adder
                    if accumulator == "bf16":
                        acc = _bf16(acc)
                    ev["adds"] += n_r * n_c
                    if kn.zero_point != "none":
                        asum = _ftz(asum + act[:, kk])
                        ev["group_sum_adds"] += n_c
                o = _dequant_group(o, acc.T, asum, kn.scales[gi, r0:r1],
                                   None if kn.zeros is None else kn.zeros[gi, r0:r1],
                                   kn.zero_point, dtype, ev)
            out[c0:c0 + cols, r0:r1] = o
            ev["drain_cycles"] += int(-(-fifo.max() // adders))  # tail after the last k-step
    n_ct = -(-m_tot // cols)
    cycles = int(tile_cycles.sum()) * n_ct
    return GemmSimResult(out.reshape(*lead, -1, n), cycles, tile_cycles, ev)


# ---------------------------------------------------------------------------------------------
# baseline datapaths (literal references, sequential in k)


def _dequant_weights(kn: _KN) -> np.ndarray:
    q = kn.codes.astype(np.float32)
    s = _ftz(np.repeat(kn.scales, kn.group, axis=0))
    if kn.zero_point == "none":
        return _ftz(q * s)
    z = np.repeat(kn.zeros, kn.group, axis=0)
    if kn.zero_point == "min":
        return _ftz(_ftz(q * s) + _ftz(z))
    return _ftz((q - z) * s)


def _sequential(a32: np.ndarray, w32: np.ndarray, tree: int | None = None) -> np.ndarray:
    acc = np.zeros((a32.shape[0], w32.shape[1]), np.float32)
    if tree is None:
        for kk in range(a32.shape[1]):
            acc = _ftz(acc + _ftz(a32[:, kk, None] * w32[None, kk, :]))
        return acc
    k = a32.shape[1]
    pad = -k % tree
    a32 = np.pad(a32, ((0, 0), (0, pad)))
    w32 = np.pad(w32, ((0, pad), (0, 0)))
    for c0 in range(0, k + pad, tree):  # one SIMD dot-product unit pass
        v = [_ftz(a32[:, kk, None] * w32[None, kk, :]) for kk in range(c0, c0 + tree)]
        while len(v) > 1:  # pairwise adder tree: v[i] + v[i + h]
            h = len(v) // 2
            v = [_ftz(v[i] + v[i + h]) for i in range(h)]
        acc = _ftz(acc + v[0])
    return acc


def _figna(a32: np.ndarray, kn: _KN, align_bits: int) -> np.ndarray:
    m, k = a32.shape
    n = kn.codes.shape[1]
    g = kn.group
    out = np.zeros((m, n), np.float32)
    ev = _new_events()
    for gi in range(k // g):
        ag = a32[:, gi * g:(gi + 1) * g]
        cg = kn.codes[gi * g:(gi + 1) * g]
        acc = np.zeros((m, n), np.float32)
        for r in range(m):
            x = ag[r]
            finite_nz = np.isfinite(x) & (x != 0)
            if not np.all(np.isfinite(x)):
                bad = ~np.isfinite(x)
                acc[r] = np.sum(x[bad, None] * cg[bad].astype(np.float32), axis=0)
                continue
            if not finite_nz.any():
                continue
            mant, ex = np.frexp(x.astype(np.float64))  # x = mant 2^ex, |mant| in [0.5, 1)
            e = ex - 1  # x = 1.f 2^e
            sig = np.where(finite_nz, np.rint(np.abs(mant) * 256).astype(np.int64), 0)
            emax = int(e[finite_nz].max())
            d = np.clip(emax - e, 0, 31)
            mag_ = (sig << (align_bits - 8)) >> d
            a_int = np.where(x < 0, -mag_, mag_)
            s_int = a_int @ cg  # exact integer sum
            s_f = _ftz(s_int.astype(np.float32) * np.float32(2.0 ** -(align_bits - 1)))
            acc[r] = _ftz(s_f * np.float32(2.0 ** emax))
        asum = np.zeros((m,), np.float32)
        for kk in range(g):
            asum = _ftz(asum + ag[:, kk])
        out = _dequant_group(out, acc, asum, kn.scales[gi], None if kn.zeros is None
                             else kn.zeros[gi], kn.zero_point, np.float32, ev)
    return out


def reference_matmul(a: Any, w: quant.QuantizedTensor, datapath: Any) -> np.ndarray:
    """Literal NumPy reference of ``gemm.matmul(a, w, datapath, mode="exact")`` for every
    datapath: the one reference of the datapath's numerics kind (``datapath.numerics``, read by
    attribute: products with the codes, dequantized weights, aligned integer groups)."""
    with np.errstate(all="ignore"):
        return _reference_matmul(a, w, datapath)


@dataclasses.dataclass(frozen=True)
class _CodeArray:
    """The array :func:`simulate_gemm` runs for a code-products datapath without a geometry of
    its own (the output does not depend on the tiling)."""

    rows: int
    product: str
    accumulator: str
    magnitude_bits: int
    cols: int = 8
    adders_per_row: int = 8


def _ref_code_products(a: Any, w: quant.QuantizedTensor, numerics: Any) -> np.ndarray:
    array = _CodeArray(int(w.codes.shape[1]), numerics.product, numerics.accumulator,
                       int(numerics.magnitude_bits))
    return simulate_gemm(a, w, array).out


def _ref_dequantized_weights(a: Any, w: quant.QuantizedTensor, numerics: Any) -> np.ndarray:
    fmt = {"bf16": _BF16, "e4m3": _E4M3}
    a32 = _activations(a)
    kn = _weights(w)
    w32 = _dequant_weights(kn).astype(fmt[numerics.weights]).astype(np.float32)
    a_in = a32.astype(fmt[numerics.activations]).astype(np.float32)
    out = _sequential(a_in, w32, numerics.tree_width)
    return out.reshape(*np.shape(a)[:-2], -1, kn.codes.shape[1])


def _ref_aligned_groups(a: Any, w: quant.QuantizedTensor, numerics: Any) -> np.ndarray:
    kn = _weights(w)
    out = _figna(_activations(a), kn, int(numerics.align_bits))
    return out.reshape(*np.shape(a)[:-2], -1, kn.codes.shape[1])


#: One reference per numerics kind (the name of the record's type: this module imports no
#: datapath class, so that it stays an independent oracle).
_REFERENCES = {
    "CodeProducts": _ref_code_products,
    "DequantizedWeights": _ref_dequantized_weights,
    "AlignedGroups": _ref_aligned_groups,
}


def _reference_matmul(a: Any, w: quant.QuantizedTensor, datapath: Any) -> np.ndarray:
    numerics = getattr(datapath, "numerics", None)
    kind = type(numerics).__name__
    if kind not in _REFERENCES:
        raise TypeError(f"datapath: no reference for {type(datapath).__name__} (numerics "
                        f"{kind}); known kinds: {', '.join(_REFERENCES)}")
    return _REFERENCES[kind](a, w, numerics)
