"""Architecture descriptions and the component library (32 nm logic tables, CACTI SRAM/DRAM).

- :mod:`mugi_jax.hw.components`: per-event energy / leakage / area of logic components.
- :mod:`mugi_jax.hw.memory`: SRAM / DRAM figures from the committed CACTI table.
- :mod:`mugi_jax.hw.arch`: frozen design descriptions (Mugi, Carat, systolic, SIMD, tensor core,
  MixPE), meshes, and :func:`get_arch` by name.
- :mod:`mugi_jax.hw.inventory`: static totals (area, leakage).
"""

from mugi_jax.hw.arch import (
    ARCH_NAMES, MESHES, Arch, Mesh, Module, carat, get_arch, mixpe, mugi, parse_mesh, simd,
    systolic, tensor_core,
)
from mugi_jax.hw.components import ComponentFigures, component_figures, component_table
from mugi_jax.hw.inventory import area_breakdown_mm2, leakage_breakdown_mw, module_figures
from mugi_jax.hw.memory import MemoryFigures, Sram, dram_figures, sram_figures

__all__ = [
    "ARCH_NAMES", "MESHES", "Arch", "ComponentFigures", "MemoryFigures", "Mesh", "Module", "Sram",
    "area_breakdown_mm2", "carat", "component_figures", "component_table", "dram_figures",
    "get_arch", "leakage_breakdown_mw", "mixpe", "module_figures", "mugi", "parse_mesh", "simd",
    "sram_figures", "systolic", "tensor_core",
]
