"""The vectorised cost model: per-row cycles, energy and FLOPs of an op table.

An architecture is flattened into :class:`ArchParams`, a NamedTuple of float32 scalars (a
pytree).  Designs differ only in these numbers, so one jitted function serves every design, and a
stack of them (leading axis) can be ``vmap``-ped together with a stack of op tables: a whole sweep
is one compiled call.

GEMM row (batch b, m x k @ k x n), on-chip tile (tm, tk, tn) = (min(W, m), min(Ks, k), min(H, n)):

    compute   = b * ceil(m/tm) * ceil(n/tn) * ceil(k/min(K, k)) * cycles_per_step
    isram_r   = b * mt * kt * nt * ceil(tm*tk*16 / w_i)
    wsram_r   = b * kt * nt * ceil(tk*tn*wbits / w_w) * (mt if node-stationary os else 1)
    osram_r/w = b * mt * nt * ceil(tm*tn*16 / w_o) * (1 if os else kt)
    fills     = isram_w = ceil(b*m*k*16/w_i) * n_offchip_tiles, wsram_w = ceil(b*k*n*wbits/w_w) * m_offchip_tiles,
                drain   = ceil(b*m*n*16/w_o)
    cycles    = max(all streams) / nodes                               (perfect overlap)

Nonlinear row (m x n elements; columns of tm = min(lanes, m) elements):

    compute   = ceil(m/tm) * n * cycles_per_column
    osram_r/w = n * f * (floor(m/tm) * ceil(tm*16/w_o) + ceil((m mod tm)*16/w_o)),  f = 2 softmax, 1 SiLU
    cycles    = max(compute, osram_r, osram_w, fill) / nodes

Energy [pJ] = sum over bases of count x (events per unit x energy per event), plus SRAM accesses x
CACTI access energy, plus NoC bit-hops x router energy.  FLOPs: 2 per MAC, 3 per nonlinear element.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
import numpy as np
from jaxtyping import Array, Float

from mugi_jax.cost.events import paper_charges
from mugi_jax.designs.mixpe import GROUP as MIXPE_GROUP
from mugi_jax.hw.arch import Arch
from mugi_jax.hw.components import MissingAttribute
from mugi_jax.hw.inventory import area_breakdown_mm2, leakage_breakdown_mw, module_figures
from mugi_jax.hw.memory import sram_figures
from mugi_jax.workloads import GEMM, SOFTMAX, OpTable

N_CLASSES = 5
LUT_BITS = 8 * 12 * 4  # lut_height x lut_width x 4 b: the "virtual LUT" loaded into isram per op
WINDOW_BITS = 8 * 4  # window_width x 4 b streamed per table read


class ArchParams(NamedTuple):
    """Numeric description of a design for the vectorised model (all float32 scalars)."""

    W: Float[Array, ""]  # array columns (m tile)
    H: Float[Array, ""]  # array rows (n tile)
    K: Float[Array, ""]  # k per compute step (tensor 16, else 1)
    Ks: Float[Array, ""]  # on-chip k tile for SRAM traffic (H, tensor 16)
    cyc: Float[Array, ""]  # cycles per k-step
    w_i: Float[Array, ""]
    w_w: Float[Array, ""]
    w_o: Float[Array, ""]
    e_i_elems: Float[Array, ""]  # usable isram elements (half the banks): 2 * w_i * d_i / 16
    e_w_elems: Float[Array, ""]  # usable wsram elements: 2 * w_w * d_w / weight bits
    e_o_elems: Float[Array, ""]  # usable osram elements (half the banks): 2 * w_o * d_o / 16
    k_off_min: Float[Array, ""]  # the off-chip k tile grows to at least this (tensor core: 16)
    vec_per_offtile: Float[Array, ""]  # 1: vector scaling once per output per off-chip k-tile
    wbits: Float[Array, ""]
    ws: Float[Array, ""]  # 1 if node-stationary ws, 0 if os
    nodes: Float[Array, ""]
    hops: Float[Array, ""]  # average NoC hops (mesh rows), 0 for one node
    nl_lanes: Float[Array, ""]
    sm_col_cycles: Float[Array, ""]
    si_col_cycles: Float[Array, ""]
    lut_streamed: Float[Array, ""]  # 1 for Mugi vlp (table read from isram)
    # energies, pJ
    e_mac: Float[Array, ""]
    e_output: Float[Array, ""]
    e_output_ktile: Float[Array, ""]
    e_output_group: Float[Array, ""]
    e_weight_load: Float[Array, ""]
    e_op: Float[Array, ""]
    e_softmax_elem: Float[Array, ""]
    e_silu_elem: Float[Array, ""]
    e_softmax_col: Float[Array, ""]
    e_silu_col: Float[Array, ""]
    e_isram_r: Float[Array, ""]
    e_isram_w: Float[Array, ""]
    e_wsram_r: Float[Array, ""]
    e_wsram_w: Float[Array, ""]
    e_osram_r: Float[Array, ""]
    e_osram_w: Float[Array, ""]
    e_router_bit: Float[Array, ""]
    # statics
    leakage_w: Float[Array, ""]
    area_mm2: Float[Array, ""]
    frequency_hz: Float[Array, ""]


def basis_energies_pj(arch: Arch, missing: MissingAttribute = "one") -> dict[str, float]:
    """Energy per unit of each basis: sum over charged modules of events x E(module) [pJ]."""
    mods = {m.name: m for m in arch.modules}
    out = {}
    for base, table in paper_charges(arch).items():
        out[base] = float(sum(n * module_figures(mods[name], missing).energy_pj for name, n in table.items()))
    return out


def arch_params(arch: Arch, missing: MissingAttribute = "one", vec_per_offtile: bool = True) -> ArchParams:
    """Flatten ``arch`` into :class:`ArchParams` (paper preset charges).

    ``vec_per_offtile``: charge the per-output vector scaling once per off-chip k-tile (the
    paper's counting) rather than once per output.
    """
    e = basis_energies_pj(arch, missing)
    si, sw, so = (sram_figures(s) for s in arch.srams)
    router = [m for m in arch.router_modules()]
    e_bit = module_figures(router[0], missing).energy_pj if router else 0.0
    vals = dict(
        W=arch.width, H=arch.height, K=arch.depth, Ks=arch.depth if arch.depth > 1 else arch.height,
        cyc=arch.cycles_per_step, w_i=arch.isram.width_bits, w_w=arch.wsram.width_bits,
        w_o=arch.osram.width_bits,
        e_i_elems=2 * arch.isram.width_bits * arch.isram.depth / 16,
        e_w_elems=2 * arch.wsram.width_bits * arch.wsram.depth / arch.weight_bits,
        e_o_elems=2 * arch.osram.width_bits * arch.osram.depth / 16,
        k_off_min=arch.offchip_k_min,
        vec_per_offtile=1.0 if vec_per_offtile else 0.0,
        wbits=arch.weight_bits, ws=1.0 if arch.node_stationary == "ws" else 0.0,
        nodes=arch.nodes, hops=float(arch.mesh.rows) if arch.nodes > 1 else 0.0,
        nl_lanes=arch.vector_lanes,
        sm_col_cycles=arch.softmax_column_cycles, si_col_cycles=arch.silu_column_cycles,
        lut_streamed=1.0 if arch.lut_streamed else 0.0,
        e_mac=e["mac"], e_output=e["output"], e_output_ktile=e["output_ktile"],
        e_output_group=e["output_group"], e_weight_load=e["weight_load"], e_op=e["op"], e_softmax_elem=e["softmax_elem"],
        e_silu_elem=e["silu_elem"], e_softmax_col=e["softmax_col"], e_silu_col=e["silu_col"],
        e_isram_r=si.read_energy_pj, e_isram_w=si.write_energy_pj,
        e_wsram_r=sw.read_energy_pj, e_wsram_w=sw.write_energy_pj,
        e_osram_r=so.read_energy_pj, e_osram_w=so.write_energy_pj, e_router_bit=e_bit,
        leakage_w=leakage_breakdown_mw(arch, missing)["total"] / 1e3,
        area_mm2=area_breakdown_mm2(arch, missing)["total"],
        frequency_hz=arch.frequency_mhz * 1e6,
    )
    # NumPy scalars: building and stacking params must not dispatch (or compile) JAX ops.
    return ArchParams(**{k: np.float32(v) for k, v in vals.items()})


def stack_params(params: list[ArchParams]) -> ArchParams:
    """Stack several designs along a new leading axis (for vmap)."""
    return ArchParams(*(np.stack(col).astype(np.float32) for col in zip(*params)))


def table_arrays(table: OpTable) -> dict[str, np.ndarray]:
    """The float32 columns the model needs, plus a one-hot class matrix."""
    return {
        "kind": table.kind.astype(np.float32), "cls": table.op_class.astype(np.int32),
        "b": table.batch.astype(np.float32), "m": table.m.astype(np.float32),
        "k": table.k.astype(np.float32), "n": table.n.astype(np.float32),
        "rep": table.repeat.astype(np.float32),
    }


def _cdiv(a, b):
    return jnp.ceil(a / b)


def _pow2_floor(x):
    return jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(x, 1.0))))


def _pow2_ceil(x):
    """Smallest power of two >= x (exact: frexp, no logarithm rounding)."""
    mant, ex = jnp.frexp(x)
    return jnp.ldexp(jnp.ones_like(x), jnp.where(mant == 0.5, ex - 1, ex))


def _while_halve(x, cond_fn, steps: int = 48):
    """Halve ``x`` elementwise while ``cond_fn(x)`` holds (at most ``steps`` times)."""
    return lax.fori_loop(0, steps, lambda _, v: jnp.where(cond_fn(v), v / 2.0, v), x)


def offchip_tile(p: ArchParams, b, m, k, n):
    """The DRAM -> SRAM tile (tm, tk, tn) of a GEMM row, as archx schedules it (notes 2.2).

    The output SRAM's usable half holds tm x tn outputs: tm = min(m, W) and tn = n * b / nodes
    halved until it fits, doubled while it is under half full and below the array height, then
    tm doubled while the tile is under half full; tk fills the weight SRAM (E_w / tn), halved
    until tm x tk fits the input SRAM (the tensor core trades tn for tk until tk >= 16).  All
    three are then rounded up to powers of two and capped by m, k, n.
    """
    tm = jnp.minimum(m, p.W)
    tn = _while_halve(n * b / p.nodes, lambda v: tm * v > p.e_o_elems)
    tn = lax.fori_loop(0, 32, lambda _, v: jnp.where((2 * tm * v < p.e_o_elems) & (v < p.H), 2 * v, v), tn)
    tm = lax.fori_loop(0, 32, lambda _, v: jnp.where((2 * v * tn < p.e_o_elems) & (v < m), 2 * v, v), tm)
    tk = _while_halve(p.e_w_elems / tn, lambda v: v * tm > p.e_i_elems)

    def trade(_, kn):
        grow = kn[0] < p.k_off_min
        return jnp.where(grow, 2 * kn[0], kn[0]), jnp.where(grow, kn[1] / 2, kn[1])

    tk, tn = lax.fori_loop(0, 8, trade, (tk, tn))
    return (jnp.minimum(_pow2_ceil(tm), m), jnp.minimum(_pow2_ceil(tk), k),
            jnp.minimum(_pow2_ceil(tn), n))


def gemm_row_counts(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Event counts of one execution of each GEMM row: the charge bases of
    :mod:`mugi_jax.cost.events` and the SRAM / NoC accesses, plus ``cycles`` and ``flops``.

    Array and on-chip SRAM events are counted once per off-chip tile (archx evaluates a tiled
    GEMM whose batch is the number of off-chip tiles): the output SRAM of output-stationary
    designs is read and written once per output tile per off-chip k-tile, a weight-stationary
    design reads its partial sums (k-tiles - 1) times per off-chip tile, and the per-output
    vector scaling runs once per off-chip k-tile.
    """
    b, m, k, n = t["b"], t["m"], t["k"], t["n"]
    tm = jnp.minimum(p.W, m)
    tn = jnp.minimum(p.H, n)
    tk = jnp.minimum(p.Ks, k)
    mt, nt, kt = _cdiv(m, tm), _cdiv(n, tn), _cdiv(k, tk)
    kc = _cdiv(k, jnp.minimum(p.K, k))
    tm_x, tk_x, tn_x = offchip_tile(p, b, m, k, n)
    k_off, n_off = _cdiv(k, tk_x), _cdiv(n, tn_x)
    compute = b * mt * nt * kc * p.cyc
    isram_r = b * mt * kt * nt * _cdiv(tm * tk * 16.0, p.w_i)
    wsram_r = b * kt * nt * _cdiv(tk * tn * p.wbits, p.w_w) * jnp.where(p.ws > 0, 1.0, mt)
    out_tiles = b * mt * nt * _cdiv(tm * tn * 16.0, p.w_o)
    osram_w = out_tiles * jnp.where(p.ws > 0, kt, k_off)
    osram_acc_r = out_tiles * jnp.where(p.ws > 0, kt - k_off, k_off)
    # off-chip fills (notes 2.2, simplified to its fixed point): tn_off = pow2 >= tn filling the
    # osram with tm columns, tm_off grown with what is left.
    tn_off = jnp.minimum(n, jnp.maximum(tn, _pow2_floor(p.e_o_elems / tm)))
    tm_off = jnp.minimum(m, jnp.maximum(tm, _pow2_floor(p.e_o_elems / tn_off)))
    isram_w = _cdiv(b * m * k * 16.0, p.w_i) * _cdiv(n, tn_off)
    wsram_w = _cdiv(b * k * n * p.wbits, p.w_w) * _cdiv(m, tm_off)
    drain = _cdiv(b * m * n * 16.0, p.w_o)
    cycles = jnp.maximum(jnp.maximum(jnp.maximum(compute, isram_r), jnp.maximum(wsram_r, isram_w)),
                         jnp.maximum(jnp.maximum(wsram_w, jnp.maximum(osram_w, osram_acc_r)), drain)) / p.nodes
    macs = b * m * k * n
    outputs = b * m * n
    return {
        "cycles": cycles, "flops": 2.0 * macs,
        "mac": macs, "output": outputs * jnp.where(p.vec_per_offtile > 0, k_off, 1.0),
        "output_ktile": outputs * kt, "output_group": outputs * _cdiv(k, MIXPE_GROUP),
        "weight_load": b * mt * k * n_off, "op": jnp.ones_like(macs),
        "isram_r": isram_r, "isram_w": isram_w, "wsram_r": wsram_r, "wsram_w": wsram_w,
        "osram_r": osram_acc_r + drain, "osram_w": osram_w,
        # NoC bit-hops; archx pairs the routers with swapped SRAM widths (kept: paper preset)
        "router_bits": p.hops * (isram_w * p.w_o + wsram_w * p.w_i + drain * p.w_w),
    }


# event count -> the ArchParams field holding its energy per event [pJ]
ENERGY_FIELDS: dict[str, str] = {
    **{k: f"e_{k}" for k in (
        "mac", "output", "output_ktile", "output_group", "weight_load", "op", "softmax_elem",
        "silu_elem", "softmax_col", "silu_col", "isram_r", "isram_w", "wsram_r", "wsram_w",
        "osram_r", "osram_w")},
    "router_bits": "e_router_bit",
}


def _costs(p: ArchParams, counts: dict[str, Array]) -> tuple[Array, Array, Array]:
    """(cycles, dynamic energy [pJ], FLOPs) from a row-count dict."""
    energy = sum(v * getattr(p, ENERGY_FIELDS[k]) for k, v in counts.items() if k in ENERGY_FIELDS)
    return counts["cycles"], energy, counts["flops"]


def gemm_row_costs(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> tuple[Array, Array, Array]:
    """(cycles, dynamic energy [pJ], FLOPs) of one execution of each GEMM row (elementwise)."""
    return _costs(p, gemm_row_counts(p, t))


def nonlinear_row_counts(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Array]:
    """Event counts of one execution of each softmax / activation row (bases of
    :mod:`mugi_jax.cost.events` and SRAM accesses), plus ``cycles`` and ``flops``."""
    m, n = t["m"], t["n"]
    sm = t["kind"] == SOFTMAX
    elems = m * n
    lt = jnp.minimum(p.nl_lanes, m)
    full = jnp.floor(m / lt)
    rem = m - full * lt
    cols = (full + (rem > 0)) * n
    col_cycles = jnp.where(sm, p.sm_col_cycles, p.si_col_cycles)
    compute = cols * col_cycles
    f = jnp.where(sm, 2.0, 1.0)
    osram = n * f * (full * _cdiv(lt * 16.0, p.w_o) + _cdiv(rem * 16.0, p.w_o))
    fill = _cdiv(elems * 16.0, p.w_o)
    lut_reads = cols * col_cycles * _cdiv(WINDOW_BITS, p.w_i) * p.lut_streamed
    lut_fill = _cdiv(LUT_BITS, p.w_i) * p.lut_streamed
    cycles = jnp.maximum(jnp.maximum(compute, osram), fill) / p.nodes
    zero = jnp.zeros_like(elems)
    return {
        "cycles": cycles, "flops": 3.0 * elems,
        "softmax_elem": jnp.where(sm, elems, zero), "silu_elem": jnp.where(sm, zero, elems),
        "softmax_col": jnp.where(sm, cols, zero), "silu_col": jnp.where(sm, zero, cols),
        "op": jnp.ones_like(elems),
        "osram_r": osram + fill, "osram_w": osram + fill, "isram_r": lut_reads, "isram_w": lut_fill,
    }


def nonlinear_row_costs(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> tuple[Array, Array, Array]:
    """(cycles, dynamic energy [pJ], FLOPs) of one execution of each softmax / activation row."""
    return _costs(p, nonlinear_row_counts(p, t))


def row_costs(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Float[Array, " R"]]:
    """Per-row cycles, dynamic energy [pJ] and FLOPs (for one execution of each row).

    Pure and elementwise over the rows; see the module docstring for the formulas.
    """
    is_gemm = t["kind"] == GEMM
    g = gemm_row_costs(p, t)
    nl = nonlinear_row_costs(p, t)
    return {
        "cycles": jnp.where(is_gemm, g[0], nl[0]),
        "energy_pj": jnp.where(is_gemm, g[1], nl[1]),
        "flops": jnp.where(is_gemm, g[2], nl[2]),
        "is_gemm": is_gemm.astype(jnp.float32),
    }


def _class_columns(cycles, energy, flops, cls, is_gemm, rep):
    """[R, 17] per-row contributions: cycles/energy/FLOPs by class (3 x 5), GEMM and NL cycles."""
    onehot = (cls[..., None] == jnp.arange(N_CLASSES)).astype(jnp.float32)
    c, e, f = cycles * rep, energy * rep, flops * rep
    return jnp.concatenate([
        c[..., None] * onehot, e[..., None] * onehot, f[..., None] * onehot,
        (c * is_gemm)[..., None], (c * (1.0 - is_gemm))[..., None],
    ], axis=-1)


def _split_columns(sums):
    c = N_CLASSES
    return {
        "class_cycles": sums[..., :c], "class_energy_pj": sums[..., c:2 * c],
        "class_flops": sums[..., 2 * c:3 * c], "gemm_cycles": sums[..., 3 * c],
        "nonlinear_cycles": sums[..., 3 * c + 1],
    }


def prefix_family_totals(
    p: ArchParams,
    fixed_gemm: dict[str, Float[Array, " Fg"]],
    gemm_reps: Float[Array, "S Fg"],
    gemm_blocks: dict[str, Float[Array, "B C"]],
    fixed_nl: dict[str, Float[Array, " Fn"]],
    nl_reps: Float[Array, "S Fn"],
    nl_blocks: dict[str, Float[Array, "B2 C"]],
    prefix: Float[Array, " S"],
) -> dict:
    """Totals for S sequence lengths of one (model, batch) family, using the prefix structure.

    Fixed rows (projections, FFN, LM head, prefill attention, activation), split into GEMM and
    nonlinear rows, are weighted by their repeat matrices; the attention-decode blocks (rows
    ordered by context length, each with its repeat) contribute their cumulative sum up to
    ``prefix[s]`` rows (= seq_len - prefill_len).  Equivalent to :func:`family_totals` on
    :func:`mugi_jax.workloads.op_table_family`, but each row is costed once, by its own formula
    only, and decode rows are reduced to (cycles, energy, FLOPs) before the prefix sums.
    """
    sums = 0.0
    for fixed, reps, blocks, fn, is_gemm in (
        (fixed_gemm, gemm_reps, gemm_blocks, gemm_row_costs, 1.0),
        (fixed_nl, nl_reps, nl_blocks, nonlinear_row_costs, 0.0),
    ):
        n_fixed = reps.shape[-1]
        n_blocks, c = blocks["m"].shape
        t = {k: jnp.concatenate([fixed[k], blocks[k].reshape(-1)]) for k in fixed}
        cyc, en, fl = fn(p, t)
        # fixed rows: per-class columns, weighted by the repeat matrix
        sums = sums + reps @ _class_columns(cyc[:n_fixed], en[:n_fixed], fl[:n_fixed],
                                            fixed["cls"], is_gemm, 1.0)
        # decode blocks (all rows of one class): prefix sums as a masked matrix product
        rep = blocks["rep"].reshape(-1)
        vals = jnp.stack([cyc[n_fixed:] * rep, en[n_fixed:] * rep, fl[n_fixed:] * rep], axis=-1)
        dec = jnp.sum(vals.reshape(n_blocks, c, 3), axis=0)  # [C, 3]
        mask = (jnp.arange(c)[None, :] < prefix[:, None]).astype(jnp.float32)  # [S, C]
        part = mask @ dec  # [S, 3]: cycles, energy, FLOPs
        onehot = (blocks["cls"][0, 0] == jnp.arange(N_CLASSES)).astype(jnp.float32)
        sums = sums + jnp.concatenate([
            part[:, :1] * onehot, part[:, 1:2] * onehot, part[:, 2:3] * onehot,
            part[:, :1] * is_gemm, part[:, :1] * (1.0 - is_gemm),
        ], axis=-1)
    return _split_columns(sums)


def table_totals(p: ArchParams, t: dict[str, Float[Array, " R"]]) -> dict[str, Float[Array, "..."]]:
    """Whole-run sums per op class (cycles, dynamic energy pJ, FLOPs) and GEMM / nonlinear cycles."""
    r = row_costs(p, t)
    rep = t["rep"]
    onehot = (t["cls"][:, None] == jnp.arange(N_CLASSES)[None, :]).astype(jnp.float32)
    cyc = r["cycles"] * rep
    return {
        "class_cycles": cyc @ onehot,
        "class_energy_pj": (r["energy_pj"] * rep) @ onehot,
        "class_flops": (r["flops"] * rep) @ onehot,
        "gemm_cycles": jnp.sum(cyc * r["is_gemm"]),
        "nonlinear_cycles": jnp.sum(cyc * (1.0 - r["is_gemm"])),
    }


def family_totals(p: ArchParams, t: dict[str, Float[Array, " R"]], reps: Float[Array, "S R"]) -> dict:
    """Like :func:`table_totals` for every repeat vector of ``reps`` at once (leading axis S).

    Each row is costed once; ``reps @ [row cost x class one-hot]`` gives every member of the
    family (see :func:`mugi_jax.workloads.op_table_family`) in one matrix product.
    """
    r = row_costs(p, t)
    return _split_columns(reps @ _class_columns(r["cycles"], r["energy_pj"], r["flops"], t["cls"],
                                                r["is_gemm"], 1.0))

