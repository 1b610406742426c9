"""Component library: per-event energy, leakage and area of logic components at 32 nm / 400 MHz.

The figures are the authors' published tables (archx commit 46470fb), transcribed into
``mugi_jax/data/cost/components_32nm.csv`` (provenance next to it).  Each row was measured at
reference attribute values x0 (``width=32``, ``depth=16``, ...).  A query with attributes q is
scaled, for every attribute column of the row, by

    s = prod_a (q_a / x0_a)        (interpolation "linear")
    s = prod_a (q_a / x0_a)^2      (interpolation "quadratic")

applied to dynamic power, leakage and area alike.  Energy per event:

    E [pJ] = dynamic_mW * (f_query / f_row) / f_query [MHz] * 1e3 = dynamic_mW / f_row * 1e3,

i.e. the per-event energy does not depend on the clock (dynamic power does).

**The "missing attribute" rule is a policy, not an accident.**  The authors' reader gives an
attribute the query does not mention the value 1, which shrinks ``round`` by 1/15, ``clamp`` and
``max`` by 1/8 and ``window_select`` by 1/16.  ``missing="one"`` reproduces that (the ``paper``
preset uses it); ``missing="reference"`` uses the row's own value x0 (no scaling), which is what
a query that names no width means physically.  Unknown attribute names are an error.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Mapping

MissingAttribute = Literal["one", "reference"]
MISSING_ATTRIBUTE_POLICIES: tuple[str, ...] = ("one", "reference")

TECHNOLOGY_NM = 32
FREQUENCY_MHZ = 400.0


@dataclass(frozen=True)
class ComponentRow:
    """One measured row of the component table (units: mW, mW, mm^2, MHz)."""

    component: str
    technology_nm: int
    frequency_mhz: float
    dynamic_mw: float
    leakage_mw: float
    area_mm2: float
    interpolation: str
    attributes: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ComponentFigures:
    """Per-instance figures of one queried component."""

    energy_pj: float  # dynamic energy per event
    leakage_mw: float  # leakage power per instance
    area_mm2: float  # area per instance


@functools.lru_cache(maxsize=1)
def component_table() -> dict[str, ComponentRow]:
    """All rows of ``components_32nm.csv`` by component class name."""
    text = resources.files("mugi_jax").joinpath("data/cost/components_32nm.csv").read_text()
    out: dict[str, ComponentRow] = {}
    for row in csv.DictReader(text.splitlines()):
        attrs = tuple(
            (k, float(v)) for k, v in (kv.split("=") for kv in row["attributes"].split(";") if kv)
        )
        out[row["component"]] = ComponentRow(
            component=row["component"],
            technology_nm=int(row["technology_nm"]),
            frequency_mhz=float(row["frequency_mhz"]),
            dynamic_mw=float(row["dynamic_mw"]),
            leakage_mw=float(row["leakage_mw"]),
            area_mm2=float(row["area_mm2"]),
            interpolation=row["interpolation"],
            attributes=attrs,
        )
    return out


def scale_factor(row: ComponentRow, attrs: Mapping[str, float], missing: MissingAttribute) -> float:
    """The multiplier s applied to dynamic power, leakage and area (see module docstring)."""
    if missing not in MISSING_ATTRIBUTE_POLICIES:
        raise ValueError(f"missing={missing!r}: allowed values are {MISSING_ATTRIBUTE_POLICIES}")
    known = {name for name, _ in row.attributes}
    unknown = set(attrs) - known
    if unknown:
        raise ValueError(
            f"component {row.component!r} has no attribute(s) {sorted(unknown)}; "
            f"its table gives {sorted(known) or 'none'}"
        )
    s = 1.0
    for name, x0 in row.attributes:
        q = attrs.get(name, 1.0 if missing == "one" else x0)
        if q <= 0:
            raise ValueError(f"component {row.component!r}: attribute {name}={q} must be > 0")
        r = q / x0
        s *= r * r if row.interpolation == "quadratic" else r
    return s


@functools.lru_cache(maxsize=None)
def _figures_cached(component: str, attrs: tuple[tuple[str, float], ...], missing: str,
                    technology_nm: int) -> ComponentFigures:
    table = component_table()
    if component not in table:
        raise ValueError(f"unknown component {component!r}; known: {sorted(table)}")
    row = table[component]
    if row.technology_nm != technology_nm:
        raise ValueError(f"technology_nm={technology_nm}: the table has only {row.technology_nm} nm")
    s = scale_factor(row, dict(attrs), missing)  # type: ignore[arg-type]
    return ComponentFigures(
        energy_pj=row.dynamic_mw * s / row.frequency_mhz * 1e3,
        leakage_mw=row.leakage_mw * s,
        area_mm2=row.area_mm2 * s,
    )


def component_figures(
    component: str,
    attrs: Mapping[str, float] | None = None,
    *,
    missing: MissingAttribute = "one",
    technology_nm: int = TECHNOLOGY_NM,
) -> ComponentFigures:
    """Per-event energy [pJ], leakage [mW] and area [mm^2] of one instance of ``component``.

    >>> round(component_figures("adderbf16").energy_pj, 4)
    0.3727
    """
    key = tuple(sorted((attrs or {}).items()))
    return _figures_cached(component, key, missing, technology_nm)
