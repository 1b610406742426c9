"""The ``realistic`` cost-model preset: the published model's known weaknesses corrected.

Each correction answers one known weakness of the authors' published cost model (listed in
docs/cost_model.md); the paper preset (:mod:`mugi_jax.cost.model`) is untouched and both are reported side by
side by ``experiments/paper_vs_realistic.py``.

Workload (:func:`realistic_op_table`), with B batch, P prompt, S max length, T = S - P:

- every per-token op runs T decode steps (projections, FFN, activation, attention, LM head);
- prefill attention is causal: QK^T / PV skip the (query block, key tile) pairs above the
  diagonal (tile granularity of the array, :func:`causal_tile_fraction`), the softmax has
  P (P + 1) / 2 elements per head, useful MACs scale by (P + 1) / (2 P);
- the LM head in prefill runs on the last prompt position only (B tokens, not B P);
- vector-unit ops: RMSNorm (2 per layer + final; 4 ops/element: square, accumulate, normalise,
  scale), RoPE on Q and K (3 ops/element: 2 multiplies + 1 add per rotated element), two residual
  adds (1 op), the SwiGLU gating product (1 op), on-the-fly INT4 KV quantization of the new K and
  V (3 ops/element: |x| max, multiply by 1/scale, round) and the embedding lookup (a DRAM read of
  d BF16 values per token);
- group-wise dequantization: one scale multiply-add (2 ops) per output per group of
  ``group_size`` along k (weights), one per KV token scale (attention), on the vector unit,
  overlapped with the array as its own stream.

INT4 formats (:class:`RealisticConfig` ``weight_scheme`` / ``kv_scheme`` / ``kv_layout``; the
defaults, sign-magnitude weights and a per-token KV cache, add nothing below):

- asymmetric codes by offset decomposition (``asym``, docs/numerics.md): the Mugi sweep runs
  t = 0..8, 9 cycles per k-step instead of 8 (with early termination: the measured cycles of
  ``cycles_per_kstep``, else the full 9), and every array event that fires once per cycle fires
  for each cycle beyond 8 as well; the dequantization unit adds the activation group sums (one add per
  activation element and group) and ``offset x group_sum`` (one multiply-add per output and
  group); every group carries a 16-bit offset next to its scale (DRAM traffic);
- two's complement (``int4``) needs the 4-bit-magnitude array: a 16-cycle full sweep;
- a KIVI cache (``kv_layout="kivi"``): keys quantized per channel in groups of ``kv_key_group``
  tokens (one scale per channel and group: folded into the query, one multiply-add per query
  element and key group), values per token; the newest ``kv_residual`` tokens stay BF16 (16-bit
  DRAM reads, their products on the vector unit, one multiply-add each) and every token is
  written twice (BF16 into the residual window, INT4 when it leaves it);
- a BF16 LM head (``lm_head="bf16"``, the numerics presets' choice): its MACs run on the vector
  unit (a multiply-add each; the INT4 array has no BF16 weight path) and its weights stream
  from DRAM at 16 bits.

Cycles of one execution of a GEMM row, streams run concurrently and overlap at tile level:

- compute: Mugi/Carat ``b ceil(m/W) ceil(n/H) (k c_step + H_b + W)`` with c_step the data-driven
  cycles per k-step (:mod:`.early_termination`; the row-adder bound ceil(W / adders_per_row)
  included; Carat 8) and per output tile the broadcast pipeline fill (H_b counter/multiplier
  register stages) and the drain of the W outputs of a row through its ofifo; systolic arrays
  (SA, MixPE) with skew, output- or weight-stationary (:mod:`.systolic`, checked against
  SCALE-Sim); SIMD adds an adder-tree latency ceil(log2 W) per fold, the tensor core
  log2(16) + 1 per output tile;
- on-chip SRAM streams as in the paper preset;
- DRAM: bits moved / bits per cycle of :class:`~mugi_jax.cost.memory.MemorySystem` (roofline);
  weights (+ 16-bit group scales) are read every execution unless the whole model fits in the
  weight SRAMs, the INT4 KV cache (+ 16-bit per-token scales) is always read, activations go
  off chip only when they exceed half the input / output SRAM (double buffering), and an input
  that does not fit is re-read for every off-chip n tile;
- op cycles: the on-chip streams (array, SRAM, dequantization) interleave cycle by cycle
  (on-chip = their max); against DRAM the op is a double-buffered pipeline of N weight-operand
  tiles (half the weight SRAM each): max(on-chip, DRAM) + min(on-chip, DRAM) / N (the first load
  and the last compute do not overlap; the paper takes the max of whole-op totals).

Energy: the paper preset's event charges (component table with ``missing="reference"``: a
component query missing an attribute takes the table's reference value, not 1) for on-chip
dynamic energy, plus vector-unit ops x (E_mul + E_add) / 2 + E_reg16 per op, plus DRAM bits x
CACTI energy per bit (:mod:`.memory`), plus leakage x time.  Metrics (:class:`RealisticExtras`)
add pJ per FLOP with and without DRAM, J per token with and without DRAM, time to first token
(all prefill ops) and time per output token (decode time / T).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from mugi_jax.cost import early_termination as et
from mugi_jax.cost.conventions import Preset
from mugi_jax.cost.memory import MEMORY_SYSTEMS, MemorySystem, get_memory
from mugi_jax.cost.model import ArchParams, arch_params, gemm_row_costs, nonlinear_row_costs
from mugi_jax.cost.report import Report, derive_report
from mugi_jax.cost.systolic import check_dataflow
from mugi_jax.hw.arch import CYCLE_MODELS, Arch
from mugi_jax.hw.components import MissingAttribute, component_figures
from mugi_jax.workloads import (
    ATTENTION, GEMM, NONLINEAR, OUTPUT, SOFTMAX, DecodeConvention, Workload, attention_shapes,
    layer_gemms,
)

VECTOR = 10  # op kind local to this preset: elementwise work on the vector unit
ROLES: tuple[str, ...] = tuple(et.ROLE_OF_OP)  # GEMM roles (data-driven cycles per k-step)
ROW_BUCKET = 2048
# vector-unit ops per element (module docstring)
RMSNORM_OPS, ROPE_OPS, RESIDUAL_OPS, GATE_OPS, KVQ_OPS, DEQUANT_OPS = 4.0, 3.0, 1.0, 1.0, 3.0, 2.0
SCALE_BITS = 16.0  # BF16 quantization scales
ACT_BITS = 16.0
KV_BITS = 4.0
WEIGHT_SCHEMES = ("signmag", "int4", "asym")
KV_LAYOUTS = ("per_token", "kivi")
#: Mugi counter values per k-step (full sweep) of each INT4 format on the array
SWEEP_CYCLES = {"signmag": 8, "asym": 9, "int4": 16}
KV_ROLES = ("qkt", "pv")


@dataclass(frozen=True)
class RealisticConfig:
    """Knobs of the realistic preset (defaults: the paper's hardware, corrected accounting)."""

    memory: MemorySystem = field(default_factory=lambda: get_memory("ddr4"))
    early_termination: bool = True
    adders_per_row: int | None = None  # Mugi row adders; None: the design's (the paper's: 1)
    # systolic array dataflow: "os" keeps k in time like the paper's count (its node_stationary
    # "ws" is the SRAM-level stationarity only); "ws" pays R cycles of weight load per fold
    dataflow: str = "os"
    group_size: int = 128
    causal: bool = True
    include_dram_energy: bool = True  # in energy_j / the paper metrics of the Report
    # INT4 formats (module docstring): weights' and KV cache's codes, the KV layout
    weight_scheme: str = "signmag"
    kv_scheme: str = "signmag"
    kv_layout: str = "per_token"
    kv_key_group: int = 32
    kv_residual: int = 32  # KIVI only
    # the LM head: ``int4`` on the array like the projections, or ``bf16`` weights (as the
    # numerics presets keep it): BF16 x BF16 MACs on the vector unit, 16-bit weights from DRAM
    lm_head: str = "int4"
    # measured Mugi cycles per k-step per GEMM role (e.g. ``gemm.subscription_cycles`` on the
    # deployed codes); roles not given: the SmolLM2 table (sign-magnitude) or the full sweep
    cycles_per_kstep: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name, allowed in (("weight_scheme", WEIGHT_SCHEMES), ("kv_scheme", WEIGHT_SCHEMES),
                              ("kv_layout", KV_LAYOUTS), ("lm_head", ("int4", "bf16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed values are {', '.join(allowed)}")
        for name in ("kv_key_group", "kv_residual"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (1 if name == "kv_key_group" else 0):
                raise ValueError(f"{name}={v!r}: allowed values are "
                                 f"{'positive' if name == 'kv_key_group' else 'non-negative'} integers")
        for role, c in self.cycles_per_kstep:
            if role not in ROLES or not (isinstance(c, (int, float)) and 1 <= c <= 16):
                raise ValueError(f"cycles_per_kstep: ({role!r}, {c!r}): roles are {', '.join(ROLES)}, "
                                 "cycles from 1 to 16")
        if self.adders_per_row not in (None, 1, 2, 4, 8):
            raise ValueError(f"adders_per_row={self.adders_per_row!r}: allowed values are None (the design's), 1, 2, 4, 8")
        check_dataflow(self.dataflow)
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r}: allowed values are positive integers")


# ---------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------

COLS = ("kind", "cls", "phase", "role", "b", "m", "k", "n", "rep", "tile_frac", "mac_frac",
        "ops", "dram_r", "dram_w", "is_kv")


def causal_tile_fraction(p: int, tq: int, tk: int) -> tuple[float, float]:
    """(fraction of QK^T tiles, fraction of PV k-steps) a causal prefill of ``p`` tokens needs.

    Query blocks of ``tq`` tokens, key tiles of ``tk`` keys: block i (tokens i tq .. (i+1) tq - 1)
    needs the key tiles up to its last token, ceil(min(p, (i+1) tq) / tk) of ceil(p / tk), and in
    PV the k-steps (keys) up to min(p, (i+1) tq) of p.
    """
    if min(p, tq, tk) < 1:
        raise ValueError(f"p={p}, tq={tq}, tk={tk}: all must be >= 1")
    blocks = -(-p // tq)
    ends = np.minimum(p, (np.arange(blocks) + 1) * tq)
    qk = float(np.sum(np.ceil(ends / tk)) / (blocks * math.ceil(p / tk)))
    pv = float(np.sum(ends) / (blocks * p))
    return qk, pv


def kv_write_bits(tokens: int, kv_heads: int, dh: int, kv: "RealisticConfig | None" = None) -> float:
    """DRAM bits written into the KV cache for ``tokens`` new tokens (keys and values): INT4 codes
    plus 16-bit scales (per token and head; KIVI keys: per channel and ``kv_key_group`` tokens),
    16-bit offsets too for asymmetric codes, and with KIVI the BF16 write into the residual window."""
    kv = kv or RealisticConfig()
    asym = 2.0 if kv.kv_scheme == "asym" else 1.0
    elems = tokens * kv_heads * dh  # of K (and of V)
    if kv.kv_layout == "kivi":
        scales = tokens * kv_heads * (dh / kv.kv_key_group + 1.0)
        resid = 2 * elems * ACT_BITS if kv.kv_residual > 0 else 0.0
        return 2 * elems * KV_BITS + asym * SCALE_BITS * scales + resid
    return 2 * elems * KV_BITS + asym * 2 * tokens * kv_heads * SCALE_BITS


def realistic_op_table(workload: Workload, arch: Arch, causal: bool = True,
                       kv: "RealisticConfig | None" = None) -> dict[str, np.ndarray]:
    """Rows of the corrected workload (module docstring) as float64 columns ``COLS``.

    The op list, shapes, activation and attention kind come from the model's config (the same
    :func:`mugi_jax.workloads.layer_gemms` / :func:`~mugi_jax.workloads.attention_shapes` the paper
    preset's table uses).  An encoder runs once over all S tokens with bidirectional attention (no
    causal saving, no KV cache, no LM head); sliding-window layers attend to min(c, window) keys.
    ``arch`` only sets the causal tile granularity (array width / height); ``kv`` (a
    :class:`RealisticConfig`) the KV cache's write traffic.
    """
    md, B, S, P = workload.model, workload.batch, workload.seq_len, workload.prefill_len
    d, h, g, dh, F, V, L = md.dim, md.heads, md.kv_heads, md.dh, md.ffn_hidden, md.vocab, md.layers
    if md.encoder:
        P, causal = S, False
    T = S - P
    rows: list[tuple] = []

    def add(kind, cls, phase, role, b, m, k, n, rep, tile_frac=1.0, mac_frac=1.0, ops=0.0,
            dram_r=0.0, dram_w=0.0, is_kv=0.0):
        r = ROLES.index(role) if role else 0
        rows.append((kind, cls, phase, r, b, m, k, n, rep, tile_frac, mac_frac, ops, dram_r, dram_w, is_kv))

    phases = ((0, B * P, float(L)),) if md.encoder else ((0, B * P, float(L)), (1, B, float(L) * T))
    for phase, tok, rep in phases:
        for op, cls, m, k, n in layer_gemms(md, tok):
            add(GEMM, cls, phase, op, 1, m, k, n, rep)
        add(md.act_kind, NONLINEAR, phase, None, 1, F, 1, tok, rep)
        add(VECTOR, NONLINEAR, phase, None, 1, 2 * tok * d, 1, 1, rep, ops=RMSNORM_OPS)
        if not md.encoder:  # RoPE (the encoder has absolute position embeddings)
            add(VECTOR, NONLINEAR, phase, None, 1, tok * (h + g) * dh, 1, 1, rep, ops=ROPE_OPS)
        add(VECTOR, NONLINEAR, phase, None, 1, 2 * tok * d, 1, 1, rep, ops=RESIDUAL_OPS)
        if md.gated_ffn:
            add(VECTOR, NONLINEAR, phase, None, 1, tok * F, 1, 1, rep, ops=GATE_OPS)
        if not md.encoder:  # on-the-fly INT4 quantization of the new K, V into the cache
            kv_elems = 2 * tok * g * dh
            add(VECTOR, NONLINEAR, phase, None, 1, kv_elems, 1, 1, rep, ops=KVQ_OPS,
                dram_w=kv_write_bits(tok, g, dh, kv))
        # per token, not per layer: embedding read, final norm
        add(VECTOR, OUTPUT, phase, None, 1, tok * d, 1, 1, rep / L, ops=RMSNORM_OPS,
            dram_r=tok * d * ACT_BITS)
    if not md.encoder:
        add(GEMM, OUTPUT, 0, "lm_head", 1, B, d, V, 1.0)  # prefill: last position only
        add(GEMM, OUTPUT, 1, "lm_head", 1, B, d, V, float(T))
    # causal prefill attention (tile granularity of the array: query tokens per column tile)
    is_vlp = arch.cycle_model == "temporal"
    m_tile = arch.width if is_vlp else arch.height
    n_tile = arch.height if is_vlp else arch.width
    tq = max(1, m_tile // (h // g))
    qk_f, pv_f = causal_tile_fraction(P, tq, n_tile) if causal else (1.0, 1.0)
    mac_f = (P + 1) / (2 * P) if causal else 1.0
    for window, n_layers in md.attention_groups():
        keys = P if window is None else min(P, window)
        qk, pv, sm = attention_shapes(md, B, P, keys)
        # the causal saving of a full prefill; a window already limits the keys (kept full)
        qf, pf, mf = (qk_f, pv_f, mac_f) if window is None or window >= P else (1.0, 1.0, 1.0)
        add(GEMM, ATTENTION, 0, "qkt", *qk, float(n_layers), qf, mf, is_kv=1.0)
        add(GEMM, ATTENTION, 0, "pv", *pv, float(n_layers), pf, mf, is_kv=1.0)
        add(SOFTMAX, NONLINEAR, 0, None, 1, sm[0], 1, sm[1], float(n_layers), mf, mf)
        if md.encoder:
            continue
        for c in range(P + 1, S + 1):
            qk, pv, sm = attention_shapes(md, B, 1, c if window is None else min(c, window))
            add(GEMM, ATTENTION, 1, "qkt", *qk, float(n_layers), is_kv=1.0)
            add(GEMM, ATTENTION, 1, "pv", *pv, float(n_layers), is_kv=1.0)
            add(SOFTMAX, NONLINEAR, 1, None, 1, sm[0], 1, sm[1], float(n_layers))
    a = np.asarray(rows, np.float64)
    return {c: a[:, i] for i, c in enumerate(COLS)}


def model_weight_bits(workload: Workload, group_size: int = 128, asym: bool = False,
                      bf16_head: bool = False) -> float:
    """INT4 weights + BF16 group scales (and offsets, ``asym``) of all layers and the LM head (the
    config's op list; ``bf16_head``: the LM head in BF16)."""
    md = workload.model
    per_weight = KV_BITS + (2.0 if asym else 1.0) * SCALE_BITS / group_size
    n = md.layers * sum(k * n_ for _, _, _, k, n_ in layer_gemms(md, 1))
    head = 0 if md.encoder else md.dim * md.vocab
    if bf16_head:
        return float(n * per_weight + head * ACT_BITS)
    return float((n + head) * per_weight)


# ---------------------------------------------------------------------------------------------
# Design parameters
# ---------------------------------------------------------------------------------------------

class RealParams(NamedTuple):
    """A design under the realistic preset: the paper's :class:`ArchParams` plus extras."""

    base: ArchParams
    cycle_model: Float[Array, ""]  # index into hw.arch.CYCLE_MODELS
    ws: Float[Array, ""]  # 1 weight-stationary systolic dataflow, 0 output-stationary
    cps: Float[Array, " R"]  # cycles per k-step per GEMM role
    fold_overhead: Float[Array, ""]  # Mugi/Carat per-output-tile fill + drain
    vec_lanes: Float[Array, ""]
    e_vec_op: Float[Array, ""]  # pJ per vector op
    isram_bits: Float[Array, ""]
    wsram_bits: Float[Array, ""]
    osram_bits: Float[Array, ""]
    resident: Float[Array, ""]  # 1 if all weights stay on chip between decode steps
    dram_bits_per_cycle: Float[Array, ""]
    e_dram_r: Float[Array, ""]  # pJ / bit
    e_dram_w: Float[Array, ""]
    group: Float[Array, ""]
    # INT4 formats (module docstring); all 0 for sign-magnitude weights and a per-token cache
    e_mac_cycle: Float[Array, ""]  # pJ per MAC of one more sweep cycle per k-step (Mugi)
    w_long: Float[Array, ""]  # 1: the weights' format sweeps longer than the design's 8 cycles
    kv_long: Float[Array, ""]  # (KV cache)
    w_asym: Float[Array, ""]
    kv_asym: Float[Array, ""]
    kivi: Float[Array, ""]
    lm_bf16: Float[Array, ""]  # 1: the LM head is BF16 on the vector unit
    key_group: Float[Array, ""]
    residual: Float[Array, ""]


def vector_lanes(arch: Arch) -> int:
    """Lanes of the design's vector unit: its ``multiplier_vector`` instances (Mugi: the H/8
    scaling multipliers; others: the nonlinear vector unit)."""
    return max(1, sum(m.instances for m in arch.modules if m.name == "multiplier_vector"))


def realistic_params(arch: Arch, workload: Workload, cfg: RealisticConfig) -> tuple[RealParams, float, float]:
    """(:class:`RealParams`, leakage W, area mm^2) of ``arch`` under ``cfg``."""
    base = arch_params(arch, "reference", vec_per_offtile=False)
    W, H = arch.width, arch.height
    a = arch.adders_per_row if cfg.adders_per_row is None else cfg.adders_per_row
    leak_w, area = float(base.leakage_w), float(base.area_mm2)
    # the sweep length follows the INT4 format on an array that sweeps the weight codes (Mugi:
    # the design record says so; nothing branches on the family name)
    sweeps_codes = arch.data_driven_cycles
    sweep = {r: SWEEP_CYCLES[cfg.kv_scheme if r in KV_ROLES else cfg.weight_scheme] for r in ROLES}
    measured = dict(cfg.cycles_per_kstep)

    def role_cycles(r: str) -> float:
        if r in measured:
            return float(measured[r])
        if not sweeps_codes or sweep[r] == arch.cycles_per_step:
            return et.role_cycles_per_kstep(r, H, a, W, cfg.early_termination)
        # no code statistics for this format: the full sweep (or the adder bound)
        return float(max(sweep[r], et.adder_bound(W, a)))

    if arch.data_driven_cycles:
        cps = [role_cycles(r) for r in ROLES]
        sm = et.nonlinear_cycles_per_tile("softmax", cfg.early_termination)
        si = et.nonlinear_cycles_per_tile("silu", cfg.early_termination)
        base = base._replace(sm_col_cycles=np.float32(sm), si_col_cycles=np.float32(si))
        if a > arch.adders_per_row:  # extra row adders: leakage and area (energy per add unchanged)
            add = component_figures("adderbf16", missing="reference")
            leak_w += (a - arch.adders_per_row) * H * arch.nodes * add.leakage_mw / 1e3
            area += (a - arch.adders_per_row) * H * arch.nodes * add.area_mm2
    else:
        cps = [float(arch.cycles_per_step)] * len(ROLES)
    fold = float(arch.broadcast_stages + W) if arch.cycle_model == "temporal" else 0.0
    df = cfg.dataflow
    mul = component_figures("multiplierbf16", missing="reference").energy_pj
    addf = component_figures("adderbf16", missing="reference").energy_pj
    reg = component_figures("register", {"width": 16}, missing="reference").energy_pj
    si_, sw_, so_ = arch.srams
    resident = (model_weight_bits(workload, cfg.group_size, cfg.weight_scheme == "asym",
                                  cfg.lm_head == "bf16") <= sw_.capacity_bits * arch.nodes)
    mem = cfg.memory
    vals = dict(
        cycle_model=CYCLE_MODELS.index(arch.cycle_model), ws=1.0 if df == "ws" else 0.0,
        fold_overhead=fold, vec_lanes=vector_lanes(arch) * arch.nodes,
        e_vec_op=(mul + addf) / 2 + reg, isram_bits=si_.capacity_bits, wsram_bits=sw_.capacity_bits,
        osram_bits=so_.capacity_bits, resident=float(resident),
        dram_bits_per_cycle=mem.bits_per_cycle(arch.frequency_mhz * 1e6),
        e_dram_r=mem.read_energy_pj_per_bit, e_dram_w=mem.write_energy_pj_per_bit,
        group=float(cfg.group_size),
        e_mac_cycle=_mac_energy_per_cycle(arch) if sweeps_codes else 0.0,
        w_long=float(sweeps_codes and SWEEP_CYCLES[cfg.weight_scheme] > arch.cycles_per_step),
        kv_long=float(sweeps_codes and SWEEP_CYCLES[cfg.kv_scheme] > arch.cycles_per_step),
        w_asym=float(cfg.weight_scheme == "asym"), kv_asym=float(cfg.kv_scheme == "asym"),
        kivi=float(cfg.kv_layout == "kivi"), key_group=float(cfg.kv_key_group),
        lm_bf16=float(cfg.lm_head == "bf16"),
        residual=float(cfg.kv_residual),
    )
    rp = RealParams(base=base, cps=np.asarray(cps, np.float32),
                    **{k: np.float32(v) for k, v in vals.items()})
    return rp, leak_w, area


def _mac_energy_per_cycle(arch: Arch) -> float:
    """pJ per MAC that one more counter cycle per k-step costs on ``arch`` (the design's charges
    are linear in its cycles per k-step: the difference of one cycle)."""
    from dataclasses import replace as dc_replace

    from mugi_jax.cost.model import basis_energies_pj

    plus = dc_replace(arch, cycles_per_step=arch.cycles_per_step + 1)
    return (basis_energies_pj(plus, "reference")["mac"]
            - basis_energies_pj(arch, "reference")["mac"])


# ---------------------------------------------------------------------------------------------
# Row costs
# ---------------------------------------------------------------------------------------------

def _cdiv(a, b):
    return jnp.ceil(a / b)


def _overlap(onchip, dram, tiles) -> Array:
    """Double-buffered tiles: N loads of D/N and N computes of C/N, load i+1 overlapping compute
    i, take D/N + (N - 1) max(C, D)/N + C/N = max(C, D) + min(C, D)/N cycles."""
    n = jnp.maximum(tiles, 1.0)
    return jnp.maximum(onchip, dram) + jnp.minimum(onchip, dram) / n


def compute_cycles(rp: RealParams, t: dict[str, Float[Array, " R"]]) -> Float[Array, " R"]:
    """Array compute cycles of one execution of each GEMM row (before causal skipping and nodes)."""
    p = rp.base
    b, m, k, n = t["b"], t["m"], t["k"], t["n"]
    W, H = p.W, p.H
    model = rp.cycle_model  # CYCLE_MODELS: temporal, systolic, adder_tree, tensor
    cps = rp.cps[t["role"].astype(jnp.int32)]
    vlp = b * _cdiv(m, W) * _cdiv(n, H) * (k * cps + rp.fold_overhead)
    # systolic (rows = H, cols = W): os M on rows, ws K on rows
    sa_os = b * _cdiv(m, H) * _cdiv(n, W) * (k + H + W - 2.0) - 1.0
    sa_ws = b * _cdiv(k, H) * _cdiv(n, W) * (2.0 * H + W + m - 2.0) - 1.0
    sa = jnp.where(rp.ws > 0, sa_ws, sa_os)
    tm, tn = jnp.minimum(W, m), jnp.minimum(H, n)
    mt, nt = _cdiv(m, tm), _cdiv(n, tn)
    kc = _cdiv(k, jnp.minimum(p.K, k))
    paper = b * mt * nt * kc * p.cyc
    simd = paper + b * mt * nt * jnp.ceil(jnp.log2(W))
    tensor = paper + b * mt * nt * (jnp.log2(p.K) + 1.0)
    return jnp.select([model == 0, model == 1, model == 2], [vlp, sa, simd], tensor)


def gemm_costs(rp: RealParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Per-row (one execution) cycles, on-chip energy [pJ], DRAM bits and FLOPs of GEMM rows."""
    p = rp.base
    b, m, k, n = t["b"], t["m"], t["k"], t["n"]
    is_kv = t["is_kv"]
    # a BF16 LM head runs on the vector unit (a multiply-add per MAC), not on the array
    head = (t["role"] == ROLES.index("lm_head")) & (rp.lm_bf16 > 0)
    compute = jnp.where(head, 0.0, compute_cycles(rp, t) * t["tile_frac"] / p.nodes)
    sram = gemm_row_costs(p._replace(cyc=jnp.float32(0.0)), t)[0] * t["tile_frac"]
    _, e_chip, flops = gemm_row_costs(p, t)
    # dequantization on the vector unit
    outputs = b * m * n
    qkt = t["role"] == ROLES.index("qkt")
    # KV rows: the tokens read quantized (KIVI: older than the residual window; keys in whole
    # key groups) and the BF16 residual ones
    kv_tokens = jnp.where(qkt, n, k)
    q_tok = jnp.where(rp.kivi > 0, jnp.maximum(kv_tokens - rp.residual, 0.0), kv_tokens)
    q_tok = jnp.where((rp.kivi > 0) & qkt, jnp.floor(q_tok / rp.key_group) * rp.key_group, q_tok)
    r_tok = kv_tokens - q_tok
    key_groups = q_tok / rp.key_group
    # per-token keys: one scale per score; KIVI keys: the per-channel scales folded into the
    # query once per key group; per-token values: folded into the probabilities
    kv_scale = jnp.where((rp.kivi > 0) & qkt, b * m * k * key_groups, b * m * q_tok)
    # offsets (asymmetric; an add counts half a multiply-add): keys per token: offset x query
    # sum per score + the query sums; KIVI keys: one multiply-add per query element and key
    # group + an add per score; values: one multiply-add per probability (sum_s p_s o_s) + an
    # add per output
    kv_off = jnp.where(qkt, jnp.where(rp.kivi > 0, b * m * k * key_groups + b * m * q_tok / 2,
                                      b * m * q_tok + b * m * k / 2),
                       b * m * q_tok + outputs / 2)
    resid = b * m * jnp.where(qkt, k, n) * r_tok * rp.kivi  # BF16 products of the residual window
    w_groups = outputs * _cdiv(k, rp.group)
    # weights: scale x partial per output and group; asymmetric: offset x group sum and the group
    # sums (one add per activation element, counted as half a multiply-add)
    w_ops = w_groups + rp.w_asym * (w_groups + b * m * k / 2)
    kv_ops = kv_scale + rp.kv_asym * kv_off + resid
    dq_ops = jnp.where(is_kv > 0, kv_ops, jnp.where(head, b * m * k * n, w_ops)) * DEQUANT_OPS
    dq_ops = dq_ops * t["mac_frac"]
    dq_cycles = dq_ops / rp.vec_lanes
    # DRAM traffic
    tm = jnp.minimum(p.W, m)
    tn = jnp.minimum(p.H, n)
    tn_off = jnp.minimum(n, jnp.maximum(tn, jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(p.e_o_elems / tm, 1.0))))))
    tm_off = jnp.minimum(m, jnp.maximum(tm, jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(p.e_o_elems / tn_off, 1.0))))))
    w_bits = jnp.where(head, k * n * ACT_BITS,
                       k * n * p.wbits + (1.0 + rp.w_asym) * SCALE_BITS * n * _cdiv(k, rp.group))
    dh = k * n / kv_tokens  # head_dim
    kv_scales = jnp.where((rp.kivi > 0) & qkt, dh * key_groups, q_tok)
    kv_bits = b * (dh * (q_tok * KV_BITS + r_tok * ACT_BITS)
                   + (1.0 + rp.kv_asym) * SCALE_BITS * kv_scales) * t["mac_frac"]
    operand = jnp.where(is_kv > 0, kv_bits, w_bits * _cdiv(m, tm_off) * (1.0 - rp.resident))
    in_bits = b * m * k * ACT_BITS
    in_dram = jnp.where(in_bits <= rp.isram_bits / 2, 0.0, in_bits * _cdiv(n, tn_off))
    out_bits = b * m * n * ACT_BITS
    out_dram = jnp.where(out_bits <= rp.osram_bits / 2, 0.0, out_bits)
    dram_r = operand + in_dram
    dram_w = out_dram
    dram = (dram_r + dram_w) / rp.dram_bits_per_cycle
    tiles = _cdiv(jnp.where(is_kv > 0, kv_bits, w_bits), rp.wsram_bits / 2)
    onchip = jnp.maximum(jnp.maximum(compute, sram), dq_cycles)  # interleaved cycle by cycle
    cycles = _overlap(onchip, dram, tiles)
    # the longer sweep of asymmetric / two's-complement codes: the per-cycle array events fire
    # for every counter cycle the k-step runs beyond the design's 8 (the row's cycles per k-step:
    # measured, or the full sweep); sign-magnitude keeps the paper's 8-cycle charge
    cps = rp.cps[t["role"].astype(jnp.int32)]
    extra = jnp.maximum(cps - p.cyc, 0.0) * jnp.where(is_kv > 0, rp.kv_long, rp.w_long) * (1.0 - head)
    e_sweep = b * m * k * n * extra * rp.e_mac_cycle
    return {
        "cycles": cycles, "compute": compute, "dram_cycles": dram,
        "energy_pj": (jnp.where(head, 0.0, e_chip) * t["mac_frac"] + dq_ops * rp.e_vec_op
                      + e_sweep * t["mac_frac"]),
        "dram_r": dram_r, "dram_w": dram_w, "flops": flops * t["mac_frac"],
    }


def nonlinear_costs(rp: RealParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Softmax / SiLU rows: the paper's unit model (Mugi with data-driven cycles per column),
    scaled by the causal fraction of prefill softmax elements."""
    cyc, e, fl = nonlinear_row_costs(rp.base, t)
    f = t["mac_frac"]
    z = jnp.zeros_like(cyc)
    return {"cycles": cyc * f, "compute": cyc * f, "dram_cycles": z, "energy_pj": e * f,
            "dram_r": z, "dram_w": z, "flops": fl * f}


def vector_costs(rp: RealParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Elementwise rows on the vector unit: ops / lanes, osram read + write of every element,
    explicit DRAM traffic (embedding reads, KV-cache writes); streams overlap fully."""
    p = rp.base
    elems = t["m"]
    ops = elems * t["ops"]
    compute = ops / rp.vec_lanes
    acc = _cdiv(elems * ACT_BITS, p.w_o)
    sram = 2.0 * acc / p.nodes
    dram = (t["dram_r"] + t["dram_w"]) / rp.dram_bits_per_cycle
    cycles = jnp.maximum(jnp.maximum(compute, sram), dram)
    return {"cycles": cycles, "compute": compute, "dram_cycles": dram,
            "energy_pj": ops * rp.e_vec_op + acc * (p.e_osram_r + p.e_osram_w),
            "dram_r": t["dram_r"], "dram_w": t["dram_w"], "flops": ops}


@jax.jit
def row_costs(rp: RealParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Per-row costs of a realistic op table (one execution of each row), jitted and elementwise."""
    g, nl, v = gemm_costs(rp, t), nonlinear_costs(rp, t), vector_costs(rp, t)
    kind = t["kind"]
    return {key: jnp.where(kind == GEMM, g[key], jnp.where(kind == VECTOR, v[key], nl[key]))
            for key in g}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

class RealisticExtras(NamedTuple):
    """Metrics the paper preset does not have."""

    ttft_s: float  # time to first token: all prefill ops (an encoder: the whole run)
    tpot_s: float  # time per output token: decode time / decode steps (0 for an encoder)
    dram_bytes: float
    dram_energy_j: float
    onchip_energy_j: float  # dynamic + leakage, on chip
    pj_per_flop: float  # with DRAM
    pj_per_flop_onchip: float
    j_per_token: float  # with DRAM
    j_per_token_onchip: float
    memory_bound_fraction: float  # share of run time in rows whose DRAM stream is the longest
    compute_cycles: float  # sum of array / vector / nonlinear compute streams
    weights_resident: bool


def _pad(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r = len(t["kind"])
    n = -(-r // ROW_BUCKET) * ROW_BUCKET
    out = {}
    for k, v in t.items():
        fill = 0.0 if k in ("rep", "dram_r", "dram_w", "is_kv", "ops", "role", "phase", "cls", "kind") else 1.0
        out[k] = np.concatenate([v, np.full(n - r, fill)]).astype(np.float32)
    return out


def evaluate_realistic(arch: Arch, workload: Workload, cfg: RealisticConfig | None = None,
                       preset: Preset | None = None) -> tuple[Report, RealisticExtras]:
    """Realistic-preset cost of ``workload`` on ``arch``: the :class:`Report` (paper metrics;
    energy includes DRAM when ``cfg.include_dram_energy``) and :class:`RealisticExtras`."""
    cfg = cfg or RealisticConfig()
    preset = preset or REALISTIC
    table = realistic_op_table(workload, arch, cfg.causal, cfg)
    rp, leak_w, area = realistic_params(arch, workload, cfg)
    t = _pad(table)
    r = {k: np.asarray(v, np.float64)[: len(table["kind"])]
         for k, v in row_costs(jax.tree_util.tree_map(jnp.asarray, rp), {k: jnp.asarray(v) for k, v in t.items()}).items()}
    rep = table["rep"]
    cls = table["cls"].astype(int)
    onehot = np.eye(5)[cls]
    f = float(rp.base.frequency_hz)
    dram_pj = r["dram_r"] * float(rp.e_dram_r) + r["dram_w"] * float(rp.e_dram_w)
    e_pj = r["energy_pj"] + (dram_pj if cfg.include_dram_energy else 0.0)
    is_gemm = table["kind"] == GEMM
    totals = {
        "class_cycles": (r["cycles"] * rep) @ onehot,
        "class_energy_pj": (e_pj * rep) @ onehot,
        "class_flops": (r["flops"] * rep) @ onehot,
        "gemm_cycles": np.sum(r["cycles"] * rep * is_gemm),
        "nonlinear_cycles": np.sum(r["cycles"] * rep * ~is_gemm),
    }
    # decode steps (an encoder has none: its tokens are the B x S inputs it encodes)
    T = 0 if workload.model.encoder else workload.seq_len - workload.prefill_len
    tokens = float(workload.batch * (T or workload.seq_len))
    report = derive_report(
        totals, leakage_w=np.float64(leak_w), area_mm2=np.float64(area), frequency_hz=np.float64(f),
        tokens=np.float64(tokens), carbon_intensity_g_per_kwh=preset.carbon_intensity_g_per_kwh,
        embodied_g_per_mm2=preset.embodied_g_per_mm2, lifetime_s=preset.lifetime_s, xp=np)
    time_s = float(report.execution_time_s)
    prefill = table["phase"] == 0
    onchip = float(np.sum(r["energy_pj"] * rep)) * 1e-12 + leak_w * time_s
    dram_j = float(np.sum(dram_pj * rep)) * 1e-12
    flops = float(np.sum(r["flops"] * rep))
    mem_bound = r["dram_cycles"] >= r["cycles"] - 1e-6
    extras = RealisticExtras(
        ttft_s=float(np.sum(r["cycles"] * rep * prefill)) / f,
        tpot_s=float(np.sum(r["cycles"] * rep * ~prefill)) / f / T if T else 0.0,
        dram_bytes=float(np.sum((r["dram_r"] + r["dram_w"]) * rep)) / 8,
        dram_energy_j=dram_j, onchip_energy_j=onchip,
        pj_per_flop=(onchip + dram_j) / flops * 1e12, pj_per_flop_onchip=onchip / flops * 1e12,
        j_per_token=(onchip + dram_j) / tokens, j_per_token_onchip=onchip / tokens,
        memory_bound_fraction=float(np.sum(r["cycles"] * rep * mem_bound)) / max(float(report.cycles), 1.0),
        compute_cycles=float(np.sum(r["compute"] * rep)),
        weights_resident=bool(rp.resident > 0),
    )
    return report._replace(extras=extras), extras


def evaluate(arch: Arch, workload: Workload, preset: Preset | None = None) -> Report:
    """The :class:`Report` of :func:`evaluate_realistic` (the entry ``cost.evaluate`` dispatches to)."""
    return evaluate_realistic(arch, workload, None, preset)[0]


@functools.lru_cache(maxsize=256)
def gemm_cost(arch: Arch, m: int, k: int, n: int, dataflow: str | None = None, batch: int = 1,
              role: str = "proj_q", cfg: RealisticConfig | None = None) -> dict[str, float]:
    """One GEMM ``batch x (m x k) @ (k x n)`` under the realistic preset (the CLI's ``cost gemm``).

    Returns cycles (with DRAM and overlap), compute cycles (array only, with fill/drain), DRAM
    bytes and energy [J] (on-chip dynamic + DRAM + leakage over the cycles).
    """
    for name, v in (("m", m), ("k", k), ("n", n), ("batch", batch)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r}: allowed values are positive integers")
    if role not in ROLES:
        raise ValueError(f"role={role!r}: allowed values are {', '.join(ROLES)}")
    cfg = cfg or RealisticConfig()
    if dataflow is not None:
        cfg = replace(cfg, dataflow=check_dataflow(dataflow))
    from mugi_jax.workloads import get_model

    rp, leak_w, _ = realistic_params(arch, Workload(get_model("llama2-7b")), cfg)
    t = {c: np.zeros(1) for c in COLS}
    t.update(kind=np.full(1, float(GEMM)), role=np.full(1, float(ROLES.index(role))),
             b=np.full(1, float(batch)), m=np.full(1, float(m)), k=np.full(1, float(k)),
             n=np.full(1, float(n)), rep=np.ones(1), tile_frac=np.ones(1), mac_frac=np.ones(1),
             is_kv=np.full(1, 1.0 if role in ("qkt", "pv") else 0.0))
    r = {k_: float(np.asarray(v)[0]) for k_, v in
         row_costs(jax.tree_util.tree_map(jnp.asarray, rp), {c: jnp.asarray(_pad(t)[c]) for c in COLS}).items()}
    f = float(rp.base.frequency_hz)
    dram_j = (r["dram_r"] * float(rp.e_dram_r) + r["dram_w"] * float(rp.e_dram_w)) * 1e-12
    dyn_j = r["energy_pj"] * 1e-12
    return {
        "cycles": r["cycles"], "compute_cycles": r["compute"], "dram_cycles": r["dram_cycles"],
        "time_s": r["cycles"] / f, "dram_bytes": (r["dram_r"] + r["dram_w"]) / 8,
        "dynamic_energy_j": dyn_j, "dram_energy_j": dram_j, "leakage_energy_j": leak_w * r["cycles"] / f,
        "energy_j": dyn_j + dram_j + leak_w * r["cycles"] / f, "flops": r["flops"],
    }


# ---------------------------------------------------------------------------------------------
# the cost model object


@dataclass(frozen=True)
class RealisticModel(Preset):
    """The corrected model (:mod:`mugi_jax.cost.realistic`) with its knobs: off-chip ``memory``,
    Mugi ``adders_per_row`` (None: the design's), data-driven ``early_termination``, systolic
    ``dataflow``, quantization ``group_size``, ``causal`` prefill attention, and whether the
    report's energy (and every paper metric) ``include_dram_energy``."""

    name: str = "realistic"
    missing_attribute: MissingAttribute = "reference"
    decode: DecodeConvention = DecodeConvention(linear_decode_steps=None, lm_head_decode_steps=None)
    include_dram_energy: bool = True
    memory: MemorySystem = MEMORY_SYSTEMS["ddr4"]
    adders_per_row: int | None = None
    early_termination: bool = True
    dataflow: str = "os"
    group_size: int = 128
    causal: bool = True

    @property
    def config(self) -> RealisticConfig:
        """The :class:`RealisticConfig` of these knobs."""
        return RealisticConfig(memory=self.memory, early_termination=self.early_termination,
                               adders_per_row=self.adders_per_row, dataflow=self.dataflow,
                               group_size=self.group_size, causal=self.causal,
                               include_dram_energy=self.include_dram_energy)

    def evaluate(self, design, workload):
        """The :class:`~mugi_jax.cost.report.Report` with ``extras`` (TTFT, TPOT, DRAM, ...)."""
        return evaluate_realistic(design, workload, self.config, self)[0]

    def sweep(self, designs, workloads):
        from mugi_jax.cost import stack_reports
        cfg = self.config
        reps = [evaluate_realistic(a, w, cfg, self)[0] for a in designs for w in workloads]
        return stack_reports(reps, (len(designs), len(workloads)))

    def gemm(self, design, m: int, k: int, n: int, batch: int = 1, role: str = "proj_q") -> dict:
        """One GEMM under the realistic model (:func:`mugi_jax.cost.realistic.gemm_cost`)."""
        return gemm_cost(design, m, k, n, self.dataflow, batch, role, self.config)


# Corrected conventions (issue 6): every op runs seq_len - prefill_len decode steps, the LM head
# every step, DRAM energy included, components' missing attributes at their reference value.
REALISTIC = RealisticModel()
