"""Mugi: the value-level-parallelism (VLP) array, H rows x W columns (ASPLOS 2026).

Weights (INT4 sign-magnitude) sit on the rows; activations enter the W columns; a k-step sweeps
the 3-bit magnitudes in 8 cycles (value reuse: each column forms activation x t once and
broadcasts it down the rows, a comparator per row fires when its magnitude equals t).  One BF16
adder per row (``adders_per_row`` of them) accumulates the row's W products.  In nonlinear mode
the same array sweeps a table (``vlp``: streamed from the input SRAM; ``lut``: a physical table
every 8 rows).  Module list and per-k-step counts: archx ``zoo/llm/mugi`` (notes section 1.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs._base import (
    Charges, DesignFamily, Param, check_at_most, check_broadcast, empty_charges, params_tuple,
    sram_params, sram_values, srams_of,
)
from mugi_jax.hw.arch import Arch, Module, attrs
from mugi_jax.hw.memory import Sram

HEIGHTS: tuple[int, ...] = (32, 64, 128, 256)
# Pipeline registers that broadcast the counter / value-reuse products down an H-row column
# (archx ``broadcast_height``).
BROADCAST_HEIGHT: dict[int, int] = {32: 1, 64: 1, 128: 3, 256: 5}
SWEEP_CYCLES = 8  # one k-step: the 2^3 magnitudes of a 4-bit sign-magnitude weight
# nonlinear unit: a table sweep of 2^M = 8 codes per column; SiLU / GELU map both signs (x2)
SOFTMAX_COLUMN_CYCLES = 8.0
SILU_COLUMN_CYCLES = 16.0


def default_srams(h: int) -> dict[str, int]:
    """archx's Mugi/Carat SRAMs: 256x8 isram 128b x 1024, wsram 256b x 512, osram 512b x 256;
    128x8 128/128/256 b; 64x8 and 32x8 all 128b x 1024 (64 KiB each)."""
    if h == 256:
        s = (Sram("isram", 128, 1024), Sram("wsram", 256, 512), Sram("osram", 512, 256))
    elif h == 128:
        s = (Sram("isram", 128, 1024), Sram("wsram", 128, 1024), Sram("osram", 256, 512))
    else:
        s = (Sram("isram", 128, 1024), Sram("wsram", 128, 1024), Sram("osram", 128, 1024))
    return sram_values(s)


PARAMS: tuple[Param, ...] = (
    Param("rows", "array height H: weight rows (output channels / KV positions)", HEIGHTS),
    Param("cols", "array width W: activation columns (tokens / query heads)", (4, 8, 16, 32)),
    Param("variant", "nonlinear table: vlp (streamed from isram) or lut (physical, every 8 rows)",
          ("vlp", "lut")),
    Param("adders_per_row", "BF16 row adders per row (the paper: 1)", (1, 2, 4, 8)),
    Param("broadcast_stages", "pipeline registers broadcasting counter / products down a column "
          "(at most one per 8 rows)", low=1, high=max(HEIGHTS) // 8),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    h, w, bh, a = p["rows"], p["cols"], p["broadcast_stages"], p["adders_per_row"]
    variant = p["variant"]
    mods = [
        Module("counter", "counter", 1, attrs(width=3), "control"),
        Module("counter_register", "register", bh, attrs(width=3), "control"),
        Module("multiplier", "multiplierbf16", w),  # value reuse: a * t, once per column
        Module("multiplier_register", "register", bh * w, attrs(width=16)),
        Module("comparator", "comparator", h, attrs(width=4)),
        Module("magnitude_register", "register", h, attrs(width=3)),
        Module("sign_register", "register", h, attrs(width=1)),
        Module("sign_fifo", "fifo", h, attrs(width=4, depth=2)),
        Module("temporal_register", "register", h * w, attrs(width=1)),
        Module("and_gate", "and_bitwise", h * w, attrs(width=16)),
        Module("or_gate", "or_bitwise", h * w * 2, attrs(width=16)),
        Module("sign_xor", "xor_bitwise", h, attrs(width=1)),
        Module("adder", "adderbf16", h * a),  # BF16 row accumulators
        Module("pe_fifo", "fifo", h, attrs(width=16, depth=8)),
        Module("ofifo", "fifo", h, attrs(width=16, depth=2)),
        Module("wfifo", "fifo", h, attrs(width=4, depth=8)),
        Module("ififo", "fifo", w, attrs(width=16, depth=2)),
        Module("multiplier_vector", "multiplierbf16", h // 8, (), "vector"),
        Module("register_vector", "register", h // 8, attrs(width=16), "vector"),
        # nonlinear mode (the same array)
        Module("round", "round", h, (), "nonlinear"),
        Module("sign_mantissa_register", "register", h, attrs(width=4), "nonlinear"),
        Module("exponent_register", "register", h, attrs(width=8), "nonlinear"),
        Module("exp_clamp", "clamp", h, (), "nonlinear"),
        Module("max_tree", "max", h - 1, (), "nonlinear"),
        Module("max_tree_register", "register", bh, attrs(width=8), "nonlinear"),
        Module("post_comp", "bf_post", h, (), "nonlinear"),
        Module("imux", "multiplexer", 1, attrs(width=128), "control"),
        Module("wmux", "multiplexer", 1, attrs(width=1024, num_inputs=2), "control"),
    ]
    if variant == "vlp":
        mods.append(Module("window_select", "window_select", 1, (), "nonlinear"))
    else:
        # physical table: 2 signs x 8 mantissa codes x 12 exponents of 16 b, every 8 rows.  The
        # decoder's table (decoder.csv) exists in no archx commit; the published area breakdown
        # (nonlinear 0.108 -> 1.19 mm^2 for 256x8) equals the registers alone, so it costs 0.
        mods.append(Module("lut_register", "register", (h // 8) * 2 * 8 * 12, attrs(width=16), "nonlinear"))
    isram, wsram, osram = srams_of(p)
    suffix = "" if a == 1 else f"-{a}adders"
    return Arch(
        name=f"mugi-{h}x{w}{suffix}", family="mugi", variant=variant, height=h, width=w, depth=1,
        cycles_per_step=SWEEP_CYCLES, weight_bits=4, vector_lanes=h, nonlinear=variant,
        node_stationary="os", isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
        softmax_column_cycles=SOFTMAX_COLUMN_CYCLES, silu_column_cycles=SILU_COLUMN_CYCLES,
        lut_streamed=variant == "vlp", cycle_model="temporal", data_driven_cycles=True,
        broadcast_stages=bh, adders_per_row=a, params=params_tuple(p),
    )


def charges(arch: Arch) -> Charges:
    """Events per unit of work (paper preset): archx's Mugi event file and performance functions."""
    H, W, C = float(arch.height), float(arch.width), float(arch.cycles_per_step)
    bh = float(arch.broadcast_stages)
    c = empty_charges()
    # one full k-step: C cycles, H x W MACs; per-row events every cycle, per-PE events once
    kstep = {
        "counter": C, "counter_register": C * bh, "multiplier": W * C, "multiplier_register": W * C * bh,
        # the comparators fire once per k-step (archx weight_reuse_gemm), not every cycle
        "comparator": H, "magnitude_register": H, "sign_register": H, "sign_fifo": H,
        "temporal_register": H * W, "and_gate": H * W, "or_gate": H * W, "sign_xor": H * C,
        "adder": H * C, "pe_fifo": 0.5 * H * C, "ofifo": H * C, "wfifo": H, "ififo": W,
    }
    c["mac"] = {k: v / (H * W) for k, v in kstep.items()}
    c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0}
    c["op"] = {"imux": 1.0, "wmux": 1.0}
    elem = {"round": 1.0, "sign_mantissa_register": 1.0, "exponent_register": 1.0,
            "exp_clamp": 1.0, "magnitude_register": 1.0, "sign_register": 1.0,
            "temporal_register": 1.0, "and_gate": 1.0, "post_comp": 1.0, "wfifo": 1.0,
            "ofifo": 1.0}
    if arch.variant == "lut":
        elem["lut_register"] = 1.0  # read of the physical table entry
    c["softmax_elem"] = {**elem, "comparator": SOFTMAX_COLUMN_CYCLES,
                         "max_tree": (H - 1) / H, "adder": 1.0,
                         "multiplier_vector": 1.0, "register_vector": 1.0}
    c["silu_elem"] = {**elem, "comparator": SILU_COLUMN_CYCLES}
    for base, cyc in (("softmax_col", SOFTMAX_COLUMN_CYCLES), ("silu_col", SILU_COLUMN_CYCLES)):
        col = {"counter": cyc}
        if arch.variant == "vlp":  # the streamed table: W column pushes per cycle, broadcast
            col.update({"ififo": W * cyc, "multiplier_register": W * cyc * bh,
                        "window_select": cyc / SOFTMAX_COLUMN_CYCLES})
        c[base] = col
    c["softmax_col"]["max_tree_register"] = bh
    return c


def params_for(h: int, variant: str = "vlp") -> dict[str, Any]:
    return {"rows": h, "cols": 8, "variant": variant, "adders_per_row": 1,
            "broadcast_stages": BROADCAST_HEIGHT[h], **default_srams(h)}


def derive(p: Mapping[str, Any]) -> dict[str, Any]:
    """The values "auto" stands for: the broadcast stages and SRAMs of the height."""
    return {"broadcast_stages": BROADCAST_HEIGHT[p["rows"]], **default_srams(p["rows"])}


def check(p: Mapping[str, Any]) -> None:
    """Bounds between fields: the broadcast pipeline (one register per 8 rows at most) and the
    row adders (no more than the ``cols`` products a row receives per k-step)."""
    check_broadcast(p)
    check_at_most("adders_per_row", p["adders_per_row"], p["cols"],
                  f"no more adders than the products a row gets per k-step: cols = {p['cols']}")


def datapath(arch: Arch):
    """The numerics datapath: ``gemm.Mugi`` with this array's rows, columns and row adders
    (3-bit magnitude sweep; the numerics' default accumulator)."""
    from mugi_jax.gemm import Mugi

    return Mugi(rows=arch.height, cols=arch.width, magnitude_bits=3, adders_per_row=arch.adders_per_row)


FAMILY = DesignFamily(
    name="mugi", doc=__doc__.splitlines()[0], order=10, params=PARAMS, build=build,
    charges=charges,
    derive=derive, datapath=datapath, check=check,
    builtins={f"mugi-{h}x8": params_for(h) for h in HEIGHTS},
)
