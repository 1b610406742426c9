"""NVIDIA-style tensor core m x k x n (8 x 16 x 16: 2048 MAC/cycle), archx ``zoo/llm/tensor``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs._base import (
    VECTOR_COLUMN_CYCLES, Charges, DesignFamily, Param, empty_charges, params_tuple, sram_params,
    srams_of, vector_charges, vector_unit,
)
from mugi_jax.hw.arch import Arch, Module, attrs

PARAMS: tuple[Param, ...] = (
    Param("m", "tokens per step (array columns)", (8,)),
    Param("k", "reduction depth per step (adder-tree inputs)", (16,)),
    Param("n", "output channels per step (array rows)", (16,)),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    m, k, n = p["m"], p["k"], p["n"]
    mods = [
        Module("multiplier", "multiplierbf16", m * k * n),
        Module("adder_tree", "adderbf16", m * n * (k - 1)),
        Module("accumulator", "adderbf16", m * n),
        Module("accumulator_register", "register", m * n, attrs(width=16)),
        Module("input_register", "register", m * k, attrs(width=16)),
        Module("weight_register", "register", k * n, attrs(width=16)),
        Module("int_to_fp", "int_to_bf16", k * n),
        Module("ififo", "fifo", m, attrs(width=16 * k, depth=16)),
        Module("wfifo", "fifo", n, attrs(width=4 * k, depth=16)),
        Module("ofifo", "fifo", m, attrs(width=16 * n, depth=16)),
        *vector_unit(m * n, "exact"),
    ]
    isram, wsram, osram = srams_of(p)
    vec = VECTOR_COLUMN_CYCLES["exact"]
    return Arch(
        name=f"tensor-{m}x{k}x{n}", family="tensor", variant="mac", height=n, width=m, depth=k,
        cycles_per_step=1, weight_bits=4, vector_lanes=m * n, nonlinear="exact",
        node_stationary="ws", isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
        softmax_column_cycles=vec, silu_column_cycles=vec, offchip_k_min=k, cycle_model="tensor",
        params=params_tuple(p),
    )


def charges(arch: Arch) -> Charges:
    c = empty_charges()
    m, k, n = float(arch.width), float(arch.depth), float(arch.height)
    cyc_macs = m * k * n
    per_cycle = {"multiplier": cyc_macs, "adder_tree": m * n * (k - 1), "accumulator": m * n,
                 "accumulator_register": m * n, "input_register": m * k,
                 "weight_register": k * n, "int_to_fp": k * n, "ififo": m, "wfifo": n}
    c["mac"] = {kk: v / cyc_macs for kk, v in per_cycle.items()}
    c["output_ktile"] = {"ofifo": 1.0 / n}
    c.update(vector_charges("exact"))
    return c


def datapath(arch: Arch):
    """The numerics datapath: k-deep FP32 adder trees (``gemm.SystolicMAC(tree_width=k)``)."""
    from mugi_jax.gemm import SystolicMAC

    return SystolicMAC(tree_width=arch.depth)


FAMILY = DesignFamily(
    name="tensor", doc=__doc__.splitlines()[0], order=50, params=PARAMS, build=build,
    charges=charges,
    datapath=datapath,
    builtins={"tensor-8x16x16": {"m": 8, "k": 16, "n": 16,
                                 **{f"{s}_{f}": v for s in ("isram", "wsram", "osram")
                                    for f, v in (("width", 2048), ("depth", 512))}}},
)
