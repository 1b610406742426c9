"""Component library (32 nm logic tables, CACTI SRAM/DRAM), the design record and meshes.

- :mod:`mugi_jax.hw.components`: per-event energy / leakage / area of logic components.
- :mod:`mugi_jax.hw.memory`: SRAM / DRAM figures from the committed CACTI table.
- :mod:`mugi_jax.hw.arch`: the design record (:class:`Arch`, :class:`Module`, :class:`Mesh`).
- :mod:`mugi_jax.hw.inventory`: static totals (area, leakage).

The design families that build :class:`Arch` records live in :mod:`mugi_jax.designs`; the names
``get_arch``, ``ARCH_NAMES``, ``load_design``, ``mugi``, ``carat``, ``systolic``, ``simd``,
``tensor_core`` and ``mixpe`` are re-exported from there (resolved on first use: ``designs``
builds on this package).
"""

from mugi_jax.hw.arch import MESHES, Arch, Mesh, Module, parse_mesh
from mugi_jax.hw.components import ComponentFigures, component_figures, component_table
from mugi_jax.hw.inventory import area_breakdown_mm2, leakage_breakdown_mw, module_figures
from mugi_jax.hw.memory import MemoryFigures, Sram, dram_figures, sram_figures

_FROM_DESIGNS = ("ARCH_NAMES", "get_arch", "load_design", "design_file", "mugi", "carat",
                 "systolic", "simd", "tensor_core", "mixpe")


def __getattr__(name: str):
    if name in _FROM_DESIGNS:
        import mugi_jax.designs as designs

        return getattr(designs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCH_NAMES", "MESHES", "Arch", "ComponentFigures", "MemoryFigures", "Mesh", "Module", "Sram",
    "area_breakdown_mm2", "carat", "component_figures", "component_table", "design_file",
    "dram_figures", "get_arch", "leakage_breakdown_mw", "load_design", "mixpe", "module_figures",
    "mugi", "parse_mesh", "simd", "sram_figures", "systolic", "tensor_core",
]
