"""Static totals of a design: area and leakage of everything instantiated (logic + SRAM + NoC).

    area    = nodes * (sum_modules instances * area(module) + sum_srams area(sram)) [+ routers]
    leakage = nodes * (sum_modules instances * leak(module) + sum_srams leak(sram)) [+ routers]

DRAM is off-chip: excluded from both (as in the authors' model, where it is tagged ``memory``
rather than ``onchip``).
"""

from __future__ import annotations

from mugi_jax.hw.arch import Arch, Module
from mugi_jax.hw.components import ComponentFigures, MissingAttribute, component_figures
from mugi_jax.hw.memory import sram_figures


def module_figures(module: Module, missing: MissingAttribute = "one") -> ComponentFigures:
    """Per-instance figures of one module under the given missing-attribute policy."""
    return component_figures(module.component, module.attr_dict(), missing=missing)


def all_modules(arch: Arch) -> tuple[Module, ...]:
    return arch.modules + arch.router_modules()


def area_breakdown_mm2(arch: Arch, missing: MissingAttribute = "one") -> dict[str, float]:
    """Area per role (array, nonlinear, vector, control, noc), per SRAM, and ``total`` [mm^2]."""
    out: dict[str, float] = {}
    for mod in all_modules(arch):
        out[mod.role] = out.get(mod.role, 0.0) + mod.instances * module_figures(mod, missing).area_mm2
    for s in arch.srams:
        out[s.name] = sram_figures(s).area_mm2
    out = {k: v * arch.nodes for k, v in out.items()}
    out["logic"] = sum(v for k, v in out.items() if k not in ("isram", "wsram", "osram"))
    out["sram"] = sum(out[s.name] for s in arch.srams)
    out["total"] = out["logic"] + out["sram"]
    return out


def leakage_breakdown_mw(arch: Arch, missing: MissingAttribute = "one") -> dict[str, float]:
    """Leakage power per role, per SRAM, and ``total`` [mW]."""
    out: dict[str, float] = {}
    for mod in all_modules(arch):
        out[mod.role] = out.get(mod.role, 0.0) + mod.instances * module_figures(mod, missing).leakage_mw
    for s in arch.srams:
        out[s.name] = sram_figures(s).leakage_mw
    out = {k: v * arch.nodes for k, v in out.items()}
    out["logic"] = sum(v for k, v in out.items() if k not in ("isram", "wsram", "osram"))
    out["sram"] = sum(out[s.name] for s in arch.srams)
    out["total"] = out["logic"] + out["sram"]
    return out
