"""Event charges of the ``paper`` preset: how many times each module fires per unit of work.

Units of work ("bases") and what is charged per unit:

- ``mac``: one useful multiply-accumulate.  The authors' model charges each full-tile k-step's
  events scaled by the tile's utilisation, so array energy is (per full k-step energy) x (useful
  MACs / MACs per full k-step); we write the charges per MAC directly.
- ``output``: one GEMM output element per off-chip k-tile ("vector scaling": the per-output
  scale multiply, which archx evaluates once per off-chip tile of the op, see
  :mod:`mugi_jax.cost.model`).
- ``output_ktile``: one output element per on-chip k-tile (partial-sum drain of SA/SD/tensor).
- ``weight_load``: one weight-load event of a weight-stationary array (archx ``weight_gemm``):
  a whole array of weight registers is written, counted ``b * ceil(m/W) * k * ceil(n/tn_off)``
  times per GEMM (tn_off the off-chip n tile).
- ``output_group``: one output element per 32-wide k quantization group (MixPE dequantization).
- ``op``: one op (the GEMM <-> nonlinear mode switch ``instruction`` of Mugi).
- ``softmax_elem`` / ``silu_elem``: one element of a softmax / SiLU (GELU is charged as SiLU).
- ``softmax_col`` / ``silu_col``: one column tile of the nonlinear unit (H elements on Mugi).

Each charge table maps module name -> events per unit; the module must exist in the
architecture (checked), so the charge and the inventory cannot drift apart.  Per-k-step counts for
Mugi follow the notes' table (section 1.2) and reproduce its per-k-step energy breakdown
(row adders 763 pJ, pe_fifo 592 pJ, ofifo 296 pJ, ... per 256x8 k-step).
"""

from __future__ import annotations

from mugi_jax.hw.arch import BROADCAST_HEIGHT, Arch

Charges = dict[str, dict[str, float]]

BASES: tuple[str, ...] = (
    "mac", "output", "output_ktile", "output_group", "weight_load", "op",
    "softmax_elem", "silu_elem", "softmax_col", "silu_col",
)

# Baseline vector unit, cycles per column of `lanes` elements (archx workload knobs):
# exact: exp 30 + divide 14 + accumulate 1; PWL: 4 + approximate division 1; Taylor: 9 terms + 1.
VECTOR_COLUMN_CYCLES: dict[str, float] = {"exact": 45.0, "pwl": 5.0, "taylor": 10.0}
# Mugi: a table sweep of 2^M = 8 codes per column; SiLU maps both signs (x2).
MUGI_SOFTMAX_COLUMN_CYCLES = 8.0
MUGI_SILU_COLUMN_CYCLES = 16.0


def _vector_charges(kind: str) -> dict[str, dict[str, float]]:
    if kind == "exact":  # (30 + 14) multiplies and register writes, 1 accumulation per element
        per = {"multiplier_vector": 44.0, "register_vector": 44.0, "accumulator_vector": 1.0}
    elif kind == "pwl":  # 21 segment compares, encoder, 22+22 coefficient registers, one add
        per = {"pwl_comparator": 21.0, "pwl_encoder": 1.0, "pwl_register32": 22.0,
               "pwl_register16": 22.0, "adder_vector": 1.0}
    elif kind == "taylor":  # degree 9: 9 multiplies, 9 adds, 9 register writes
        per = {"multiplier_vector": 9.0, "adder_vector": 9.0, "register_vector": 9.0}
    else:
        raise ValueError(f"vector unit kind={kind!r}: allowed exact, pwl, taylor")
    return {"softmax_elem": dict(per), "silu_elem": dict(per)}


def paper_charges(arch: Arch) -> Charges:
    """Events per unit of work for ``arch`` under the paper preset (see module docstring)."""
    f, H, W = arch.family, float(arch.height), float(arch.width)
    c: Charges = {b: {} for b in BASES}
    if f == "mugi":
        bh = float(BROADCAST_HEIGHT[arch.height])
        # one full k-step: 8 cycles, 8H MACs -> divide per-k-step counts by 8H
        kstep = {
            "counter": 8, "counter_register": 8 * bh, "multiplier": 64, "multiplier_register": 64 * bh,
            # the comparators fire once per k-step (archx weight_reuse_gemm), not every cycle
            "comparator": H, "magnitude_register": H, "sign_register": H, "sign_fifo": H,
            "temporal_register": 8 * H, "and_gate": 8 * H, "or_gate": 8 * H, "sign_xor": 8 * H,
            "adder": 8 * H, "pe_fifo": 4 * H, "ofifo": 8 * H, "wfifo": H, "ififo": 8,
        }
        c["mac"] = {k: v / (8 * H) for k, v in kstep.items()}
        c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0}
        c["op"] = {"imux": 1.0, "wmux": 1.0}
        elem = {"round": 1.0, "sign_mantissa_register": 1.0, "exponent_register": 1.0,
                "exp_clamp": 1.0, "magnitude_register": 1.0, "sign_register": 1.0,
                "temporal_register": 1.0, "and_gate": 1.0, "post_comp": 1.0, "wfifo": 1.0,
                "ofifo": 1.0}
        if arch.variant == "lut":
            elem["lut_register"] = 1.0  # read of the physical table entry
        c["softmax_elem"] = {**elem, "comparator": MUGI_SOFTMAX_COLUMN_CYCLES,
                             "max_tree": (H - 1) / H, "adder": 1.0,
                             "multiplier_vector": 1.0, "register_vector": 1.0}
        c["silu_elem"] = {**elem, "comparator": MUGI_SILU_COLUMN_CYCLES}
        for base, cyc in (("softmax_col", MUGI_SOFTMAX_COLUMN_CYCLES), ("silu_col", MUGI_SILU_COLUMN_CYCLES)):
            col = {"counter": cyc}
            if arch.variant == "vlp":  # the streamed table: 8 column pushes per cycle, broadcast
                col.update({"ififo": 8 * cyc, "multiplier_register": 8 * cyc * bh,
                            "window_select": cyc / MUGI_SOFTMAX_COLUMN_CYCLES})
            c[base] = col
        c["softmax_col"]["max_tree_register"] = bh
    elif f == "carat":
        # Mugi's event structure on Carat's inventory (archx's Carat event file is not public):
        # per cycle the counter and its per-column copies (creg), the column value-reuse path
        # (BF16 accumulator forming the activation's multiples, its 3 pipeline registers, wreg)
        # and the array (PE gates/latches, row exponent shift and BF16 row add, ofifo); per
        # k-step the row weight path (wfifo, ireg, flags), the comparators every cycle; pe_fifo
        # half its 2H entries per cycle ("multiple spikes").  sign_fifo is not charged.
        kstep = {
            "counter": 8, "creg": 8 * W, "accumulator": 8 * W, "accumulator_register": 8 * 3 * W,
            "wreg": 8 * W, "exp_scale": W, "ififo": W,
            "wfifo": H, "ireg": H, "z_flag": H, "nan_flag": H, "comparator": 8 * H,
            "shifterexp": 8 * H, "areg": 8 * H, "temporal_register": 8 * H, "and_gate": 8 * H,
            "or_gate": 8 * H, "sign_xor": 8 * H, "adder": 8 * H, "ofifo": 8 * H,
            "pe_fifo": 0.5 * 8 * 2 * H,
        }
        c["mac"] = {k: v / (8 * H) for k, v in kstep.items()}
        c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0 / 8}
        c.update(_vector_charges("exact"))
    elif f == "systolic":
        per_pe = ["multiplier", "accumulator", "input_register", "pe_register",
                  "icnt", "icmp", "iadd", "wcnt", "wcmp", "wadd"]
        c["mac"] = {k: 1.0 for k in per_pe}
        c["mac"]["ififo"] = 1.0 / H
        # a weight load writes the whole array's weight registers through the row FIFOs
        c["weight_load"] = {"weight_register": H * W, "wfifo": H, "int_to_fp": H}
        # vector scaling on the vector unit (the PWL unit's 16-bit registers play register_vector)
        reg = "pwl_register16" if arch.nonlinear == "pwl" else "register_vector"
        c["output"] = {"multiplier_vector": 1.0, reg: 1.0 / 8}
        if arch.variant == "figna":
            # archx charges the FIGNA units with instance[-1] (= n) events per k-step, not n^2
            # (n per k-step of n*n MACs -> 1/n per MAC)
            c["mac"].update({k: 1.0 / H for k in
                             ("ch_aloc", "ch_dealoc", "figna_int_to_fp", "prealigner")})
        c["output_ktile"] = {"adder": 1.0, "ofifo": 1.0}
        c.update(_vector_charges(arch.nonlinear))
    elif f == "simd":
        c["mac"] = {"multiplier": 1.0, "input_register": 1.0, "pe_register": 1.0,
                    "accumulator": (W - 1) / W, "accumulator_register": 1.0 / W,
                    "ififo": 1.0 / H}
        c["weight_load"] = {"weight_register": H * W, "wfifo": H, "int_to_fp": H}
        c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0 / 8}
        if arch.variant == "figna":
            c["mac"].update({k: 1.0 / H for k in
                             ("ch_aloc", "ch_dealoc", "figna_int_to_fp", "prealigner")})
        c["output_ktile"] = {"adder": 1.0, "ofifo": 1.0}
        c.update(_vector_charges("exact"))
    elif f == "tensor":
        m, k, n = float(arch.width), float(arch.depth), float(arch.height)
        cyc_macs = m * k * n
        per_cycle = {"multiplier": cyc_macs, "adder_tree": m * n * (k - 1), "accumulator": m * n,
                     "accumulator_register": m * n, "input_register": m * k,
                     "weight_register": k * n, "int_to_fp": k * n, "ififo": m, "wfifo": n}
        c["mac"] = {kk: v / cyc_macs for kk, v in per_cycle.items()}
        c["output_ktile"] = {"ofifo": 1.0 / n}
        c.update(_vector_charges("exact"))
    elif f == "mixpe":
        c["mac"] = {"shifter": 1.0, "shift_adder": 3.0, "exponent_adder": 1.0,
                    "int_accumulator": 1.0, "input_register": 1.0, "weight_register": 1.0,
                    "pe_register": 1.0, "ififo": 1.0 / H, "wfifo": 1.0 / W}
        c["output_group"] = {"dequant_multiplier": 1.0, "dequant_adder": 1.0}
        c["output_ktile"] = {"ofifo": 1.0}
        c.update(_vector_charges("exact"))
    else:
        raise ValueError(f"family={f!r}: unknown")
    known = {mod.name for mod in arch.modules}
    for base, table in c.items():
        missing = set(table) - known
        if missing:
            raise AssertionError(f"{arch.name}: charges for {base} name modules not in the design: {missing}")
    return c

