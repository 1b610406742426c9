"""Cycle-level reference simulator of the Mugi H x W array in nonlinear (VLP) mode.

A deliberately literal, slow NumPy/Python model - the oracle for the kernels of
:mod:`mugi_jax.nonlinear`, which it never imports: it reads only the function's record from the
registry (:mod:`mugi_jax.nonlinear.functions`: ``reference``, ``above``, ``below``, ``signs``,
``f'(0)``) and implements the unit's rules itself.  Per tile (``window_group`` elements, one per
array row):

1. every row decodes its BF16 input and rounds the mantissa to M bits (half to even, carry);
2. the controller picks the window (``build="max"``: top = min(max e, e_top),
   bottom = max(top - W + 1, e_top - L + 1); ``"min"``: bottom = max(min e, e_top - L + 1),
   top = min(bottom + W - 1, e_top)) over the tile's nonzero finite rows;
3. every row either bypasses the table (NaN, zero/subnormal -> f(0), inf or exponent above e_top
   -> ``above(x)``, below the stored range -> ``below(x)`` unless the record's ``below`` is None
   (exp: clamp to the window's first entry), ``tail="linear"`` -> f(0) + f'(0) x) or loads a
   (pass sign, column, code) register;
4. per sign pass, the counter sweeps t = 0, 1, ...; column c broadcasts the table entry
   (sign, bottom + c, t); each row compares its code with t and, on equality, latches the value
   on its column.  A sweep is 2^M cycles, or with early termination it stops once every
   subscriber of the pass has latched (0 cycles when there is none).  The passes of the
   record's ``signs`` always run, another sign's pass only when a row needs it (exp: the
   negative pass, plus a positive pass only when a row needs it; SiLU/GELU: both passes).

Events counted: ``counter_steps`` (cycles), ``comparisons`` (rows x cycles), ``latches``,
``table_reads`` (streaming columns x cycles), ``bypasses`` (rows that did not use the table).

The config is duck-typed: any object with the attributes ``mantissa_bits, window,
lut_exponents, e_top, window_group, build, tail`` (or a wrapper with ``.config``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_dtypes
import numpy as np

from mugi_jax import formats
from mugi_jax.nonlinear import functions

__all__ = ["SimResult", "simulate_vlp", "simulate_softmax", "sim_table", "sim_f64"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_EVENTS = ("counter_steps", "comparisons", "latches", "table_reads", "bypasses")


@dataclasses.dataclass
class SimResult:
    """Outputs (BF16 NumPy array), per-tile cycles (int64 array) and event totals."""

    outputs: np.ndarray
    cycles: np.ndarray
    events: dict[str, int]


def _params(cfg: Any) -> tuple[int, int, int, int, int, str, str]:
    cfg = getattr(cfg, "config", cfg)
    return (int(cfg.mantissa_bits), int(cfg.window), int(cfg.lut_exponents), int(cfg.e_top),
            int(cfg.window_group), str(cfg.build), str(cfg.tail))


def sim_f64(fn: str, v: float) -> float:
    """f(v) in float64 for the shipped functions exp, silu, gelu and gelu_tanh, evaluated with the
    ``math`` module (an independent check of the registry's references; the simulator itself
    reads the record)."""
    def sigmoid(u: float) -> float:
        if u >= 0:
            return 1.0 / (1.0 + math.exp(-u))
        z = math.exp(u)
        return z / (1.0 + z)

    if fn == "exp":
        try:
            return math.exp(v)
        except OverflowError:
            return math.inf
    if fn == "silu":
        return v * sigmoid(v)
    if fn == "gelu":
        return 0.5 * v * math.erfc(-v * math.sqrt(0.5))
    if fn == "gelu_tanh":
        try:
            u = 2.0 * math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)
        except OverflowError:
            u = math.copysign(math.inf, v)
        return v * sigmoid(u)
    raise ValueError(f"fn: unknown {fn!r}")


def sim_table(fn: str, m_bits: int, lut: int, e_top: int) -> dict[tuple[int, int, int], Any]:
    """{(sign, exponent, code): bf16 entry} for the stored exponents [e_top - L + 1, e_top]."""
    codes = 1 << m_bits
    keys, vals = [], []
    for sign in (0, 1):
        for e in range(e_top - lut + 1, e_top + 1):
            for j in range(codes):
                v = math.ldexp(1.0 + j / codes, e) * (-1.0 if sign else 1.0)
                keys.append((sign, e, j))
                vals.append(v)
    rounded = formats.round_float64(functions.get(fn).f64(np.array(vals, dtype=np.float64)),
                                    formats.BF16)
    return dict(zip(keys, rounded))


def _decode(bits: int, m_bits: int) -> tuple[str, int, int, int]:
    """(class, sign, rounded exponent, code) of one BF16 bit pattern; class in
    {"nan", "inf", "zero", "normal"} (subnormals are "zero": they count as zero in the unit)."""
    sign, biased, mant = bits >> 15, (bits >> 7) & 0xFF, bits & 0x7F
    if biased == 0xFF:
        return ("nan" if mant else "inf"), sign, 0, 0
    if biased == 0:
        return "zero", sign, 0, 0
    e = biased - 127
    shift = 7 - m_bits
    code, rem = mant >> shift, mant & ((1 << shift) - 1)
    half = (1 << shift) >> 1
    if shift and (rem > half or (rem == half and code & 1)):
        code += 1
    if code == 1 << m_bits:
        code, e = 0, e + 1
    return "normal", sign, e, code


def _tile(bits: np.ndarray, fn: str, params: tuple, early: bool, table: dict,
          events: dict[str, int]) -> tuple[list, int]:
    m_bits, w, lut, e_top, _, build, tail = params
    codes, e_lo = 1 << m_bits, e_top - lut + 1
    rows = [_decode(int(b), m_bits) for b in bits]
    exps = [e for cls, _, e, _ in rows if cls == "normal"]
    if build == "max":
        top = min(max(exps), e_top) if exps else e_top
        bottom = max(top - w + 1, e_lo)
    else:
        bottom = max(min(exps), e_lo) if exps else e_top - w + 1
        top = min(bottom + w - 1, e_top)
    rec = functions.get(fn)
    bf = lambda v: formats.round_float64(np.array([v], dtype=np.float64), formats.BF16)[0]  # noqa: E731
    out: list = [None] * len(rows)
    regs: list = [None] * len(rows)  # (pass sign, column, code) of table subscribers
    for r, (cls, s, e, j) in enumerate(rows):
        xval = bits[r:r + 1].view(_BF16)[0]
        if cls == "nan":
            out[r] = xval
        elif cls == "zero":
            out[r] = bf(rec.at_zero())
        elif cls == "inf" or e > e_top:
            out[r] = bf(rec.above_f64(np.array([float(xval)]))[0])
        elif e < e_lo and tail == "linear":  # f(0) + f'(0) x in FP32, FTZ after each operation
            t = np.float32(xval)
            slope, f0 = np.float32(rec.slope()), np.float32(rec.at_zero())
            if slope != 1:
                t = _ftz(np.float32(t * slope))
            if f0 != 0:
                t = _ftz(np.float32(f0 + t))
            out[r] = np.float32(t).astype(_BF16)
        elif e < e_lo:
            if rec.below is None:
                regs[r] = (s, 0, 0)  # clamp to (bottom, j = 0)
            else:
                out[r] = bf(rec.below_f64(np.array([float(xval)]))[0])
        elif e < bottom:
            regs[r] = (s, 0, 0)
        elif e > top:
            regs[r] = (s, top - bottom, codes - 1)
        else:
            regs[r] = (s, e - bottom, j)
    events["bypasses"] += sum(reg is None for reg in regs)
    # negative pass first; a pass of a sign outside the record's signs only when a row needs it
    passes = [p for p in (1, 0) if (-1 if p else 1) in rec.signs
              or any(g and g[0] == p for g in regs)]
    streaming = [c for c in range(w) if bottom + c <= e_top]
    cycles = 0
    for pass_sign in passes:
        pending = {r for r, g in enumerate(regs) if g is not None and g[0] == pass_sign}
        t = 0
        while t < codes:
            if early and not pending:
                break
            broadcast = {c: table[(pass_sign, bottom + c, t)] for c in streaming}  # column bus
            events["table_reads"] += len(streaming)
            events["comparisons"] += len(rows)
            for r in range(len(rows)):  # per-row comparator
                g = regs[r]
                if g is not None and g[0] == pass_sign and g[2] == t:
                    out[r] = broadcast[g[1]]  # latch
                    events["latches"] += 1
                    pending.discard(r)
            t += 1
            events["counter_steps"] += 1
        cycles += t
    return out, cycles


def _as_bf16_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "dtype") and not isinstance(x, np.ndarray):
        x = formats.to_numpy(x)  # exact copy of a JAX array
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype == _BF16
            or x.dtype.name.startswith("float")):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    if x.dtype == _BF16:
        return x
    return x.astype(np.float32).astype(_BF16)


def simulate_vlp(x: Any, fn: str, cfg: Any, axis: int = -1, early_termination: bool = True
                 ) -> SimResult:
    """Simulate the VLP unit on ``x`` (tiles: ``window_group`` consecutive elements along
    ``axis``).  ``cycles`` has ``x``'s shape with ``axis`` replaced by the tile count."""
    params = _params(cfg)
    functions.get(fn)  # ValueError naming the registered functions
    xb = _as_bf16_numpy(x)
    scalar = xb.ndim == 0
    xb = xb.reshape(1) if scalar else xb
    moved = np.moveaxis(xb, axis, -1)
    lines = moved.reshape(-1, moved.shape[-1]).view(np.uint16)
    n = moved.shape[-1]
    size = max(1, min(params[4], n))
    n_tiles = -(-n // size)
    table = sim_table(fn, params[0], params[2], params[3])
    events = dict.fromkeys(_EVENTS, 0)
    out = np.zeros(lines.shape, dtype=_BF16)
    cycles = np.zeros((lines.shape[0], n_tiles), dtype=np.int64)
    for li in range(lines.shape[0]):
        for ti in range(n_tiles):
            sl = slice(ti * size, min(n, (ti + 1) * size))
            vals, cyc = _tile(lines[li, sl], fn, params, early_termination, table, events)
            out[li, sl] = np.array(vals, dtype=_BF16)
            cycles[li, ti] = cyc
    out = np.moveaxis(out.reshape(moved.shape), -1, axis)
    cycles = np.moveaxis(cycles.reshape(moved.shape[:-1] + (n_tiles,)), -1, axis)
    return SimResult(out.reshape(()) if scalar else out, cycles, events)


_ftz = formats.flush_subnormals_numpy  # the datapath's FTZ rule (NumPy does not flush)


def simulate_softmax(x: Any, cfg: Any, axis: int = -1, early_termination: bool = True
                     ) -> SimResult:
    """Simulate the softmax pipeline: ``y = FTZ(bf16(x - max))``, the VLP exponential on tiles of
    ``window_group`` rows at one column, an FP32 pairwise-tree sum, ``bf16(FTZ(e / sum))``,
    -inf -> 0.  ``cycles`` has shape ``(..., row_tiles, cols)`` (``axis`` moved last)."""
    xb = _ftz(_as_bf16_numpy(x))
    moved = np.moveaxis(xb, axis, -1)
    x64 = moved.astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = x64 - np.max(x64, axis=-1, keepdims=True)
    y = _ftz(formats.round_float64(d, formats.BF16))
    y2 = y[None] if y.ndim == 1 else y
    ex = simulate_vlp(y2, "exp", cfg, axis=-2, early_termination=early_termination)
    e32 = _ftz(ex.outputs.reshape(y.shape).astype(np.float32))
    n = e32.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    v = np.concatenate([e32, np.zeros(e32.shape[:-1] + (size - n,), np.float32)], axis=-1)
    while size > 1:  # pairwise tree: first half + second half
        size //= 2
        v = (v[..., :size] + v[..., size:]).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = _ftz((e32 / v).astype(np.float32)).astype(_BF16)
    q = np.where(moved.astype(np.float32) == -np.inf, np.zeros((), _BF16), q)
    return SimResult(np.moveaxis(q, -1, axis), ex.cycles, ex.events)
