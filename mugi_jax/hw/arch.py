"""The design record: what hardware a design instantiates (per node), as frozen data.

An :class:`Arch` says *what exists* (array shape, SRAM macros, modules with their component class,
attributes and instance counts, node mesh) and the few numbers its cost formulas read (cycles per
k-step, nonlinear cycles per column, cycle model).  The design families that build them (Mugi,
Carat, systolic, SIMD, tensor core, MixPE) live in :mod:`mugi_jax.designs`, one module each;
:func:`get_arch` and :data:`ARCH_NAMES` are that registry's.  Everything is hashable, so an
``Arch`` can be a static argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from mugi_jax.hw.memory import Sram

NonlinearUnit = Literal["vlp", "lut", "exact", "pwl", "taylor"]
#: How a design's array turns a GEMM into cycles (the realistic preset's fill/drain formulas):
#: ``temporal`` (VLP arrays: k-steps of a magnitude sweep, broadcast fill + ofifo drain),
#: ``systolic`` (OS/WS skew, SCALE-Sim), ``adder_tree`` (log2 W tree latency per fold),
#: ``tensor`` (log2 K + 1 per output tile).
CYCLE_MODELS: tuple[str, ...] = ("temporal", "systolic", "adder_tree", "tensor")
MESHES: tuple[str, ...] = ("1x1", "2x1", "2x2", "4x4", "8x8")


@dataclass(frozen=True)
class Module:
    """``instances`` copies (per node) of component class ``component`` queried with ``attrs``."""

    name: str
    component: str
    instances: int
    attrs: tuple[tuple[str, float], ...] = ()
    role: str = "array"  # array | nonlinear | vector | control | noc

    def attr_dict(self) -> dict[str, float]:
        return dict(self.attrs)


@dataclass(frozen=True)
class Mesh:
    """A rows x cols grid of identical nodes joined by a NoC (1x1 = single node, no routers)."""

    rows: int = 1
    cols: int = 1

    @property
    def nodes(self) -> int:
        return self.rows * self.cols

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols}"


def parse_mesh(text: str) -> Mesh:
    """``"4x4"`` -> Mesh(4, 4); ValueError naming the allowed meshes otherwise."""
    if text not in MESHES:
        raise ValueError(f"nodes={text!r}: allowed meshes are {', '.join(MESHES)}")
    r, c = (int(v) for v in text.split("x"))
    return Mesh(r, c)


@dataclass(frozen=True)
class Arch:
    """One accelerator design (one node's hardware, replicated over ``mesh``).

    GEMM mapping: the m dimension (tokens / query heads) goes on ``width`` columns, the n
    dimension (output channels / KV positions) on ``height`` rows, the reduction k advances in
    time, ``depth`` k-indices per step (16 for the tensor core, else 1), each step lasting
    ``cycles_per_step`` clock cycles (8 for the VLP arrays: one 3-bit magnitude sweep).
    """

    name: str
    family: str  # the design family module (mugi_jax.designs) that built it
    variant: str
    height: int
    width: int
    depth: int
    cycles_per_step: int
    weight_bits: int
    vector_lanes: int  # lanes of the nonlinear unit (Mugi: the array rows)
    nonlinear: NonlinearUnit
    node_stationary: Literal["os", "ws"]
    isram: Sram
    wsram: Sram
    osram: Sram
    modules: tuple[Module, ...]
    mesh: Mesh = Mesh()
    activation_bits: int = 16
    frequency_mhz: float = 400.0
    technology_nm: int = 32
    # what the cost formulas read (set by the family module)
    softmax_column_cycles: float = 0.0  # nonlinear unit: cycles per column of vector_lanes elements
    silu_column_cycles: float = 0.0  # SiLU / GELU (two-pass functions)
    lut_streamed: bool = False  # the nonlinear table is streamed from the input SRAM (Mugi vlp)
    offchip_k_min: int = 0  # the off-chip k tile is grown to at least this (tensor core: 16)
    cycle_model: str = "systolic"  # one of CYCLE_MODELS
    data_driven_cycles: bool = False  # realistic preset: cycles per k-step from real INT4 codes
    broadcast_stages: int = 0  # pipeline registers broadcasting down a column (VLP arrays)
    adders_per_row: int = 1  # row adders (VLP arrays)
    params: tuple[tuple[str, object], ...] = ()  # the family parameters it was built from

    @property
    def nodes(self) -> int:
        return self.mesh.nodes

    @property
    def srams(self) -> tuple[Sram, Sram, Sram]:
        return (self.isram, self.wsram, self.osram)

    @property
    def peak_macs_per_cycle(self) -> float:
        return self.height * self.width * self.depth / self.cycles_per_step * self.nodes

    @property
    def label(self) -> str:
        suffix = "" if self.mesh.nodes == 1 else f"@{self.mesh.name}"
        return f"{self.name}[{self.variant}]{suffix}"

    def with_mesh(self, mesh: Mesh | str) -> "Arch":
        """The same node replicated over ``mesh`` (adds i/w/o routers per node when > 1 node)."""
        m = parse_mesh(mesh) if isinstance(mesh, str) else mesh
        return replace(self, mesh=m)

    def router_modules(self) -> tuple[Module, ...]:
        if self.nodes == 1:
            return ()
        return tuple(Module(n, "noc_router", 1, (("bandwidth", 64.0),), "noc")
                     for n in ("irouter", "wrouter", "orouter"))


def attrs(**kw: float) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in kw.items()))

