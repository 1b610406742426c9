"""SIMD array n x n (SD): the multiplier array with a per-row adder-tree reduction (cycles as SA).

archx ``zoo/llm/simd``: ``[H, W-1]`` adder tree per row, an accumulator register per row, a
product register per PE and a per-row partial-sum adder across k-tiles; ``figna`` variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs import figna
from mugi_jax.designs._base import (
    Charges, DesignFamily, Param, empty_charges, sram_params, square_arch, square_derive,
    vector_charges, vector_unit,
)
from mugi_jax.designs.systolic import SIZES, params_for, weight_load_charges
from mugi_jax.hw.arch import Arch, Module, attrs

VARIANTS: tuple[str, ...] = ("mac", "figna")

PARAMS: tuple[Param, ...] = (
    Param("size", "array rows = columns n", SIZES),
    Param("variant", "mac or figna (FIGNA PEs)", VARIANTS),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    n, variant = p["size"], p["variant"]
    mods = [
        Module("multiplier", "multiplierbf16", n * n),
        Module("input_register", "register", n * n, attrs(width=16)),
        Module("weight_register", "register", n * n, attrs(width=16)),
        Module("pe_register", "register", n * n, attrs(width=16)),  # product register per PE
        Module("accumulator", "adderbf16", n * (n - 1)),  # adder tree per row
        Module("accumulator_register", "register", n, attrs(width=16)),
        Module("adder", "adderbf16", n),  # per-row partial-sum adder across k-tiles
        Module("ofifo", "fifo", n, attrs(width=16, depth=n)),
        Module("ififo", "fifo", n, attrs(width=16, depth=n)),
        Module("wfifo", "fifo", n, attrs(width=4, depth=n)),
        Module("int_to_fp", "int_to_bf16", n),
        *(figna.modules(n) if variant == "figna" else []),
        *vector_unit(n, "exact"),
    ]
    return square_arch(p, f"simd-{n}", "simd", variant, mods, cycle_model="adder_tree")


def charges(arch: Arch) -> Charges:
    H, W = float(arch.height), float(arch.width)
    c = empty_charges()
    c["mac"] = {"multiplier": 1.0, "input_register": 1.0, "pe_register": 1.0,
                "accumulator": (W - 1) / W, "accumulator_register": 1.0 / W,
                "ififo": 1.0 / H}
    c["weight_load"] = weight_load_charges(H, W)
    c["output"] = {"multiplier_vector": 1.0, "register_vector": 1.0 / 8}
    if arch.variant == "figna":
        c["mac"].update(figna.mac_charges(H))
    c["output_ktile"] = {"adder": 1.0, "ofifo": 1.0}
    c.update(vector_charges("exact"))
    return c


def datapath(arch: Arch):
    """The numerics datapath: a MAC array whose rows reduce through an n-wide adder tree
    (``gemm.SystolicMAC(tree_width=n)``), or ``gemm.FIGNA`` for the FIGNA variant."""
    from mugi_jax.gemm import FIGNA, SystolicMAC

    return FIGNA() if arch.variant == "figna" else SystolicMAC(tree_width=arch.width)


FAMILY = DesignFamily(
    name="simd", doc=__doc__.splitlines()[0], order=40, params=PARAMS, build=build,
    charges=charges,
    derive=square_derive, datapath=datapath,
    builtins={"simd-16": params_for(16), "simd-figna-16": params_for(16, "figna"),
              "simd-64": params_for(64)},
)
