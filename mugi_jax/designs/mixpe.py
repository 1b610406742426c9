"""MixPE-style n x n PE array (our model; MixPE publishes no archx description).

Assumptions (docs/cost_model.md): systolic dataflow and cycles as SA; each PE multiplies the
BF16 activation's 8-bit significand by the INT4 weight by shift-and-add (one 8-bit shifter, three
12-bit integer adds for the four partial products) and accumulates in a 32-bit integer accumulator
with a per-PE exponent adder; per quantization group (``group`` along k) one BF16 dequantization
multiply and one BF16 add per output, on a per-row dequantization unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs._base import (
    Charges, DesignFamily, Param, empty_charges, sram_params, square_arch, square_derive,
    square_srams, vector_charges, vector_unit,
)
from mugi_jax.designs.systolic import SIZES
from mugi_jax.hw.arch import Arch, Module, attrs

GROUP = 32  # quantization group along k (the cost model's output_group basis)

PARAMS: tuple[Param, ...] = (
    Param("size", "array rows = columns n", SIZES),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    n = p["size"]
    mods = [
        Module("shifter", "shifter", n * n, attrs(width=8, stage=3)),
        Module("shift_adder", "adder", 3 * n * n, attrs(width=12)),
        Module("exponent_adder", "adder", n * n, attrs(width=8)),
        Module("int_accumulator", "accumulator", n * n, attrs(width=32)),
        Module("input_register", "register", n * n, attrs(width=16)),
        Module("weight_register", "register", n * n, attrs(width=4)),
        Module("pe_register", "register", n * n, attrs(width=32)),
        Module("dequant_multiplier", "multiplierbf16", n),
        Module("dequant_adder", "adderbf16", n),
        Module("ofifo", "fifo", n, attrs(width=16, depth=n)),
        Module("ififo", "fifo", n, attrs(width=16, depth=n)),
        Module("wfifo", "fifo", n, attrs(width=4, depth=n)),
        *vector_unit(n, "exact"),
    ]
    return square_arch(p, f"mixpe-{n}", "mixpe", "shift-add", mods)


def charges(arch: Arch) -> Charges:
    H, W = float(arch.height), float(arch.width)
    c = empty_charges()
    c["mac"] = {"shifter": 1.0, "shift_adder": 3.0, "exponent_adder": 1.0,
                "int_accumulator": 1.0, "input_register": 1.0, "weight_register": 1.0,
                "pe_register": 1.0, "ififo": 1.0 / H, "wfifo": 1.0 / W}
    c["output_group"] = {"dequant_multiplier": 1.0, "dequant_adder": 1.0}
    c["output_ktile"] = {"ofifo": 1.0}
    c.update(vector_charges("exact"))
    return c


def datapath(arch: Arch):
    """The numerics datapath: ``gemm.MixPE`` (shift-and-add, group-wise dequantization)."""
    from mugi_jax.gemm import MixPE

    return MixPE()


FAMILY = DesignFamily(
    name="mixpe", doc=__doc__.splitlines()[0], order=60, params=PARAMS, build=build,
    charges=charges,
    derive=square_derive, datapath=datapath,
    builtins={"mixpe-16": {"size": 16, **square_srams(16)}},
)
