"""Carat: the VLP array with FP8 weights and temporal activation mantissas (no early termination).

The module inventory of archx's Carat configuration (``zoo/llm/carat``, the 32 nm 256x8
architecture file; the other heights scale the per-row and per-PE counts with H): 8-bit weight
FIFOs, one 3-bit comparator per row, per-row exponent shifter (an 8-bit adder) and BF16 row adder,
per-PE 1.5-bit ``areg``, per-column exponent scaling, BF16 column accumulators with 3-deep result
registers, ``wreg``/``creg`` broadcast registers, NaN / zero flags, and an H-lane vector unit for
the nonlinear ops.  Weights travel through the SRAMs as 4-bit codes; the 256x8 output SRAM is
256 b x 512.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs._base import (
    VECTOR_COLUMN_CYCLES, Charges, DesignFamily, Param, check_broadcast, empty_charges,
    params_tuple, sram_params, srams_of, vector_charges, vector_unit,
)
from mugi_jax.designs.mugi import BROADCAST_HEIGHT, HEIGHTS, SWEEP_CYCLES, default_srams
from mugi_jax.hw.arch import Arch, Module, attrs

PARAMS: tuple[Param, ...] = (
    Param("rows", "array height H: weight rows", HEIGHTS),
    Param("cols", "array width W: activation columns", (4, 8, 16, 32)),
    Param("broadcast_stages", "pipeline stages down a column (fill/drain of the realistic preset; "
          "at most one per 8 rows)", low=1, high=max(HEIGHTS) // 8),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    h, w = p["rows"], p["cols"]
    mods = [
        Module("counter", "counter", 1, attrs(width=3), "control"),
        Module("creg", "register", (h // 8) * w, attrs(width=3), "control"),  # counter broadcast
        Module("wreg", "register", w, attrs(width=16)),  # per-column activation register
        Module("comparator", "comparator", h, attrs(width=3)),
        Module("exp_scale", "adder", w, attrs(width=8)),
        Module("ireg", "register", h, attrs(width=12)),
        Module("shifterexp", "adder", h, attrs(width=8)),
        Module("areg", "register", h * w, attrs(width=1.5)),
        Module("z_flag", "or_bitwise", h, attrs(width=7)),
        Module("nan_flag", "and_bitwise", h, attrs(width=7)),
        Module("temporal_register", "register", h * w, attrs(width=1)),
        Module("and_gate", "and_bitwise", h * w, attrs(width=16)),
        Module("or_gate", "or_bitwise", h * w * 2, attrs(width=16)),
        Module("sign_xor", "xnor_bitwise", h, attrs(width=1)),
        Module("sign_fifo", "fifo", 2 * h, attrs(width=8, depth=1)),
        Module("pe_fifo", "fifo", 2 * h, attrs(width=16, depth=4)),
        Module("adder", "adderbf16", h),  # BF16 row adder
        Module("accumulator", "adderbf16", w),  # BF16 column accumulator
        Module("accumulator_register", "register", 3 * w, attrs(width=16)),
        Module("ofifo", "fifo", h, attrs(width=16, depth=8)),
        Module("wfifo", "fifo", h, attrs(width=8, depth=8)),
        Module("ififo", "fifo", w, attrs(width=16, depth=8)),
        *vector_unit(h, "exact"),
    ]
    isram, wsram, osram = srams_of(p)
    vec = VECTOR_COLUMN_CYCLES["exact"]
    return Arch(
        name=f"carat-{h}x{w}", family="carat", variant="fp8", height=h, width=w, depth=1,
        cycles_per_step=SWEEP_CYCLES, weight_bits=4, vector_lanes=h, nonlinear="exact",
        node_stationary="os", isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
        softmax_column_cycles=vec, silu_column_cycles=vec, cycle_model="temporal",
        broadcast_stages=p["broadcast_stages"], params=params_tuple(p),
    )


def charges(arch: Arch) -> Charges:
    """Mugi's event structure on Carat's inventory (archx's Carat event file is not public): per
    cycle the counter and its per-column copies (creg), the column value-reuse path (BF16
    accumulator forming the activation's multiples, its 3 pipeline registers, wreg) and the array
    (PE gates/latches, row exponent shift and BF16 row add, ofifo); per k-step the row weight path
    (wfifo, ireg, flags), the comparators every cycle; pe_fifo half its 2H entries per cycle
    ("multiple spikes").  sign_fifo is not charged."""
    H, W, C = float(arch.height), float(arch.width), float(arch.cycles_per_step)
    c = empty_charges()
    kstep = {
        "counter": C, "creg": C * W, "accumulator": C * W, "accumulator_register": C * 3 * W,
        "wreg": C * W, "exp_scale": W, "ififo": W,
        "wfifo": H, "ireg": H, "z_flag": H, "nan_flag": H, "comparator": C * H,
        "shifterexp": C * H, "areg": H * W, "temporal_register": H * W, "and_gate": H * W,
        "or_gate": H * W, "sign_xor": C * H, "adder": C * H, "ofifo": C * H,
        "pe_fifo": 0.5 * C * 2 * H,
    }
    c["mac"] = {k: v / (H * W) for k, v in kstep.items()}
    c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0 / 8}
    c.update(vector_charges("exact"))
    return c


def params_for(h: int) -> dict[str, Any]:
    srams = default_srams(h)
    if h == 256:  # archx's Carat 256x8 output SRAM
        srams.update(osram_width=256, osram_depth=512)
    return {"rows": h, "cols": 8, "broadcast_stages": BROADCAST_HEIGHT[h], **srams}


def derive(p: Mapping[str, Any]) -> dict[str, Any]:
    """The values "auto" stands for: the broadcast stages and SRAMs of the height."""
    out = params_for(p["rows"])
    return {k: v for k, v in out.items() if k == "broadcast_stages" or "sram" in k}


def datapath(arch: Arch):
    """The numerics datapath: ``gemm.Carat`` (FP8 x FP8, FP32 accumulation)."""
    from mugi_jax.gemm import Carat

    return Carat()


FAMILY = DesignFamily(
    name="carat", doc=__doc__.splitlines()[0], order=20, params=PARAMS, build=build,
    charges=charges,
    derive=derive, datapath=datapath, check=check_broadcast,
    builtins={f"carat-{h}x8": params_for(h) for h in HEIGHTS},
)
