"""What every design family module provides, and the pieces several families share.

A family module (``mugi_jax/designs/<family>.py``) exports one :class:`DesignFamily`: its
parameters (:class:`Param`: name, meaning, allowed values), ``build(params) -> Arch`` (the module
inventory, SRAMs and the numbers the cost formulas read), ``charges(arch)`` (the paper preset's
event charges, :data:`BASES`) and its built-in designs by name.  The registry
(:mod:`mugi_jax.designs`) collects the families; nothing else branches on the family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mugi_jax.hw.arch import Arch, Module, NonlinearUnit, attrs
from mugi_jax.hw.memory import Sram, memory_table

Charges = dict[str, dict[str, float]]

#: Units of work the paper preset charges events per (see :mod:`mugi_jax.cost.events`).
BASES: tuple[str, ...] = (
    "mac", "output", "output_ktile", "output_group", "weight_load", "op",
    "softmax_elem", "silu_elem", "softmax_col", "silu_col",
)

# Baseline vector unit, cycles per column of `lanes` elements (archx workload knobs):
# exact: exp 30 + divide 14 + accumulate 1; PWL: 4 + approximate division 1; Taylor: 9 terms + 1.
VECTOR_COLUMN_CYCLES: dict[str, float] = {"exact": 45.0, "pwl": 5.0, "taylor": 10.0}
SRAM_NAMES: tuple[str, ...] = ("isram", "wsram", "osram")
AUTO = "auto"  # a design-file value derived from the other fields


@dataclass(frozen=True)
class Param:
    """One parameter of a design family, as it appears in a design file."""

    name: str
    doc: str
    choices: tuple[Any, ...] | None = None  # allowed values, or
    low: int | None = None  # an integer range low..high
    high: int | None = None

    def check(self, value: Any) -> Any:
        """``value`` if allowed; ValueError naming the field and the allowed values otherwise."""
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool) != isinstance(self.choices[0], bool):
                raise ValueError(f"{self.name} = {value!r}: allowed values are "
                                 f"{', '.join(map(str, self.choices))}")
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise ValueError(f"{self.name} = {value!r}: allowed values are integers {self.low}..{self.high}")
        return value

    @property
    def allowed(self) -> str:
        if self.choices is not None:
            return ", ".join(map(str, self.choices))
        return f"integer {self.low}..{self.high}"


@dataclass(frozen=True)
class DesignFamily:
    """One design family: parameters, builder, charges and built-in designs."""

    name: str
    doc: str
    params: tuple[Param, ...]
    build: Callable[[Mapping[str, Any]], Arch]
    charges: Callable[[Arch], Charges]
    order: float = 1000.0  # place of its built-in designs in ARCH_NAMES (ascending; ties by name)
    builtins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> params
    # fields whose value may be "auto": derived from the other fields (e.g. the SRAMs of a height)
    derive: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    # the numerics datapath (mugi_jax.gemm) that computes what this hardware computes
    datapath: Callable[[Arch], Any] | None = None
    # bounds between fields (ValueError naming the field and its allowed range)
    check: Callable[[Mapping[str, Any]], None] | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def make(self, params: Mapping[str, Any]) -> Arch:
        """Check ``params`` (every field present, no unknown one, each allowed) and build."""
        known = [p.name for p in self.params]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"{self.name} design: unknown field(s) {', '.join(unknown)}; "
                             f"fields are {', '.join(known)}")
        missing = [k for k in known if k not in params]
        if missing:
            raise ValueError(f"{self.name} design: missing field(s) {', '.join(missing)}")
        autos = [k for k in known if params[k] == AUTO]
        fixed = [p for p in self.params if p.name not in autos]
        checked = {p.name: p.check(params[p.name]) for p in fixed}
        if autos:
            try:
                derived = dict(self.derive(checked)) if self.derive is not None else {}
            except KeyError as err:
                raise ValueError(f"{self.name} design: field {err.args[0]} cannot be \"auto\"") from err
            bad = [k for k in autos if k not in derived]
            if bad:
                raise ValueError(f"{self.name} design: field(s) {', '.join(bad)} cannot be \"auto\"")
            for k in autos:
                checked[k] = self.param(k).check(derived[k])
        if all(f"{s}_width" in checked for s in SRAM_NAMES):
            check_srams(checked)
        if self.check is not None:
            self.check(checked)
        return self.build({p.name: checked[p.name] for p in self.params})

    def auto_fields(self, params: Mapping[str, Any]) -> set[str]:
        """Fields of ``params`` equal to what ``derive`` gives them (written "auto" in files)."""
        if self.derive is None:
            return set()
        derived = self.derive(params)
        return {k for k, v in derived.items() if params.get(k) == v}


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------

def sram_pairs() -> tuple[tuple[int, int], ...]:
    """The (width, depth) SRAM macros of 4 banks the CACTI table holds (the only ones the cost
    models can price: data/cost/memory_cacti_32nm.csv, scripts/gen_memory_table.py)."""
    return tuple(sorted((w, d) for kind, w, d, banks in memory_table()
                        if kind == "sram" and banks == 4))


def sram_params(prefix_doc: str = "") -> tuple[Param, ...]:
    """Width and depth of the three SRAM macros (4 banks each; the pair must be in the CACTI
    table, :func:`check_srams`)."""
    pairs = sram_pairs()
    widths = tuple(sorted({w for w, _ in pairs}))
    depths = tuple(sorted({d for _, d in pairs}))
    out = []
    for s in SRAM_NAMES:
        out.append(Param(f"{s}_width", f"{prefix_doc}{s} word width, bits (one access)", widths))
        out.append(Param(f"{s}_depth", f"{s} words per bank (4 banks)", depths))
    return tuple(out)


def check_srams(params: Mapping[str, Any]) -> None:
    """Each SRAM's (width, depth) must be a macro of the CACTI table."""
    pairs = sram_pairs()
    for s in SRAM_NAMES:
        pair = (params[f"{s}_width"], params[f"{s}_depth"])
        if pair not in pairs:
            raise ValueError(
                f"{s}_width = {pair[0]}, {s}_depth = {pair[1]}: allowed (width, depth) pairs are "
                + ", ".join(f"{w} x {d}" for w, d in pairs)
                + " (the SRAM macros of the CACTI table; add one with scripts/gen_memory_table.py)")


def check_broadcast(p: Mapping[str, Any]) -> None:
    """Column broadcast pipeline of an H-row VLP array: at most one register per 8 rows."""
    check_at_most("broadcast_stages", p["broadcast_stages"], p["rows"] // 8,
                  f"one pipeline register per 8 rows at most: rows = {p['rows']}")


def check_at_most(name: str, value: int, high: int, why: str) -> None:
    """A bound that depends on another field: ``value <= high`` or a ValueError naming the
    field, the allowed range and why."""
    if value > high:
        raise ValueError(f"{name} = {value}: allowed values here are at most {high} ({why})")


def srams_of(params: Mapping[str, Any]) -> tuple[Sram, Sram, Sram]:
    return tuple(Sram(s, params[f"{s}_width"], params[f"{s}_depth"]) for s in SRAM_NAMES)  # type: ignore[return-value]


def sram_values(srams: tuple[Sram, Sram, Sram]) -> dict[str, int]:
    out = {}
    for s in srams:
        out[f"{s.name}_width"], out[f"{s.name}_depth"] = s.width_bits, s.depth
    return out


def square_srams(n: int) -> dict[str, int]:
    """SA/SD n x n: three 64 KiB macros, width 16*n bits (n BF16 words per access).

    archx: SA-16 uses 256b x 512; SA-8's published SRAM area (0.777 mm^2) equals 3 x 128b x 1024.
    SA-32 and SA-64 follow the same rule (512b x 256, 1024b x 128)."""
    width = 16 * n
    depth = 65536 * 8 // (4 * width)
    return {f"{s}_{k}": v for s in SRAM_NAMES for k, v in (("width", width), ("depth", depth))}


def vector_unit(lanes: int, kind: NonlinearUnit) -> tuple[Module, ...]:
    """The baselines' nonlinear vector unit (``exact`` exp/divide, ``pwl``, ``taylor``)."""
    if kind == "exact":
        return (
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("register_vector", "register", lanes, attrs(width=16), "vector"),
            Module("accumulator_vector", "adderbf16", lanes, (), "vector"),
            # the accumulator's result register: archx instantiates it (area, leakage) but no
            # event charges it
            Module("mac_register_vector", "register", lanes, attrs(width=16), "vector"),
        )
    if kind == "pwl":  # 22 segments: 21 breakpoint comparators, 21->22 encoder, coefficient regs
        return (
            Module("pwl_comparator", "bf_comparator", 21 * lanes, (), "vector"),
            Module("pwl_encoder", "21_22_encoder", lanes, (), "vector"),
            Module("pwl_register32", "register", 22 * lanes, attrs(width=32), "vector"),
            Module("pwl_register16", "register", 22 * lanes, attrs(width=16), "vector"),
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("adder_vector", "adderbf16", lanes, (), "vector"),
        )
    if kind == "taylor":  # degree-9 Horner: 9 multiply-adds, 9 coefficient registers per lane
        return (
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("adder_vector", "adderbf16", lanes, (), "vector"),
            Module("register_vector", "register", 9 * lanes, attrs(width=16), "vector"),
        )
    raise ValueError(f"vector unit kind={kind!r}: allowed exact, pwl, taylor")


def vector_charges(kind: str) -> Charges:
    """Per softmax / SiLU element on the vector unit."""
    if kind == "exact":  # (30 + 14) multiplies and register writes, 1 accumulation per element
        per = {"multiplier_vector": 44.0, "register_vector": 44.0, "accumulator_vector": 1.0}
    elif kind == "pwl":  # 21 segment compares, encoder, 22+22 coefficient registers, one add
        per = {"pwl_comparator": 21.0, "pwl_encoder": 1.0, "pwl_register32": 22.0,
               "pwl_register16": 22.0, "adder_vector": 1.0}
    elif kind == "taylor":  # degree 9: 9 multiplies, 9 adds, 9 register writes
        per = {"multiplier_vector": 9.0, "adder_vector": 9.0, "register_vector": 9.0}
    else:
        raise ValueError(f"vector unit kind={kind!r}: allowed exact, pwl, taylor")
    return {"softmax_elem": dict(per), "silu_elem": dict(per)}


def empty_charges() -> Charges:
    return {b: {} for b in BASES}


def params_tuple(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(params.items())


def square_derive(p: Mapping[str, Any]) -> dict[str, Any]:
    """The values "auto" stands for in a square array's file: three 64 KiB SRAMs of width 16 n."""
    return square_srams(p["size"])


def square_arch(p: Mapping[str, Any], name: str, family: str, variant: str, mods: list[Module],
                nonlinear: NonlinearUnit = "exact", cycle_model: str = "systolic") -> Arch:
    """An n x n array (systolic, SIMD, MixPE): 1 cycle per k-step, weight-stationary SRAM level,
    an n-lane vector unit for the nonlinear ops."""
    n = p["size"]
    isram, wsram, osram = srams_of(p)
    vec = VECTOR_COLUMN_CYCLES[nonlinear]
    return Arch(
        name=name, family=family, variant=variant, height=n, width=n, depth=1, cycles_per_step=1,
        weight_bits=4, vector_lanes=n, nonlinear=nonlinear, node_stationary="ws", isram=isram,
        wsram=wsram, osram=osram, modules=tuple(mods), softmax_column_cycles=vec,
        silu_column_cycles=vec, cycle_model=cycle_model, params=params_tuple(p),
    )
