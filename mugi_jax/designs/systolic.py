"""Systolic array n x n (SA): BF16 MAC per PE, weight-stationary SRAM level, 1 cycle per k-step.

Variants: ``mac`` (INT4 -> BF16 per row), ``figna`` (FIGNA PEs, :mod:`mugi_jax.designs.figna`),
``pwl`` / ``taylor`` (the same GEMM with a piecewise-linear or Taylor nonlinear unit).  archx
``zoo/llm/systolic`` (notes section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mugi_jax.designs import figna
from mugi_jax.designs._base import (
    Charges, DesignFamily, Param, empty_charges, sram_params, square_arch, square_derive,
    square_srams, vector_charges, vector_unit,
)
from mugi_jax.hw.arch import Arch, Module, attrs

SIZES: tuple[int, ...] = (8, 16, 32, 64)
VARIANTS: tuple[str, ...] = ("mac", "figna", "pwl", "taylor")

PARAMS: tuple[Param, ...] = (
    Param("size", "array rows = columns n", SIZES),
    Param("variant", "mac, figna (FIGNA PEs), pwl / taylor (nonlinear unit)", VARIANTS),
    *sram_params(),
)


def build(p: Mapping[str, Any]) -> Arch:
    n, variant = p["size"], p["variant"]
    cw = n.bit_length() - 2  # control register width: log2(n) - 1 bits (archx: 2..5 over n = 8..64)
    mods = [
        Module("multiplier", "multiplierbf16", n * n),
        Module("accumulator", "adderbf16", n * n),
        Module("input_register", "register", n * n, attrs(width=16)),
        Module("weight_register", "register", n * n, attrs(width=16)),
        Module("pe_register", "register", n * n, attrs(width=16)),
        Module("icnt", "register", n * n, attrs(width=cw), "control"),
        Module("icmp", "register", n * n, attrs(width=cw), "control"),
        Module("iadd", "register", n * n, attrs(width=cw), "control"),
        Module("wcnt", "register", n * n, attrs(width=cw), "control"),
        Module("wcmp", "register", n * n, attrs(width=cw), "control"),
        Module("wadd", "register", n * n, attrs(width=cw), "control"),
        Module("adder", "adderbf16", n),
        Module("ofifo", "fifo", n, attrs(width=16, depth=n)),
        Module("ififo", "fifo", n, attrs(width=16, depth=n)),
        Module("wfifo", "fifo", n, attrs(width=4, depth=n)),
        Module("int_to_fp", "int_to_bf16", n),
        *(figna.modules(n) if variant == "figna" else []),
    ]
    nl = variant if variant in ("pwl", "taylor") else "exact"
    mods += list(vector_unit(n, nl))  # type: ignore[arg-type]
    return square_arch(p, f"sa-{n}", "systolic", variant, mods, nl)  # type: ignore[arg-type]


def weight_load_charges(H: float, W: float) -> dict[str, float]:
    """A weight load writes the whole array's weight registers through the row FIFOs."""
    return {"weight_register": H * W, "wfifo": H, "int_to_fp": H}


def charges(arch: Arch) -> Charges:
    H, W = float(arch.height), float(arch.width)
    c = empty_charges()
    per_pe = ["multiplier", "accumulator", "input_register", "pe_register",
              "icnt", "icmp", "iadd", "wcnt", "wcmp", "wadd"]
    c["mac"] = {k: 1.0 for k in per_pe}
    c["mac"]["ififo"] = 1.0 / H
    c["weight_load"] = weight_load_charges(H, W)
    # vector scaling on the vector unit (the PWL unit's 16-bit registers play register_vector)
    reg = "pwl_register16" if arch.nonlinear == "pwl" else "register_vector"
    c["output"] = {"multiplier_vector": 1.0, reg: 1.0 / 8}
    if arch.variant == "figna":
        c["mac"].update(figna.mac_charges(H))
    c["output_ktile"] = {"adder": 1.0, "ofifo": 1.0}
    c.update(vector_charges(arch.nonlinear))
    return c


def params_for(n: int, variant: str = "mac") -> dict[str, Any]:
    return {"size": n, "variant": variant, **square_srams(n)}


def datapath(arch: Arch):
    """The numerics datapath: ``gemm.FIGNA`` for the FIGNA variant, else ``gemm.SystolicMAC``."""
    from mugi_jax.gemm import FIGNA, SystolicMAC

    return FIGNA() if arch.variant == "figna" else SystolicMAC()


FAMILY = DesignFamily(
    name="systolic", doc=__doc__.splitlines()[0], order=30, params=PARAMS, build=build,
    charges=charges,
    derive=square_derive, datapath=datapath,
    builtins={**{f"sa-{n}": params_for(n) for n in SIZES},
              **{f"sa-{v}-16": params_for(16, v) for v in ("figna", "pwl", "taylor")}},
)
