"""Design families as data: one module per family, a registry, and editable design files.

Each family module (:mod:`~mugi_jax.designs.mugi`, :mod:`~mugi_jax.designs.carat`,
:mod:`~mugi_jax.designs.systolic` (with the :mod:`~mugi_jax.designs.figna` PE variant),
:mod:`~mugi_jax.designs.simd`, :mod:`~mugi_jax.designs.tensor`, :mod:`~mugi_jax.designs.mixpe`)
exports one :class:`~mugi_jax.designs._base.DesignFamily`: parameters, builder (inventory, SRAMs,
the numbers the cost formulas read), event charges and built-in designs.  This registry collects
them; nothing else in the package branches on the family.

- :func:`get_arch` / :data:`ARCH_NAMES`: the built-in designs by name (``mugi-256x8``, ``sa-16``, ...).
- :func:`design_file` / :func:`load_design`: a complete, commented TOML description of a design
  (``mugi-jax design show NAME > my.toml``) and back; a file exported from a built-in design
  evaluates to identical figures; unknown, missing or out-of-range fields are errors naming the
  field and the allowed values.
- :func:`charges`: the paper preset's event charges of a design (checked against its inventory).
- :func:`datapath`: the numerics datapath (:mod:`mugi_jax.gemm`) computing what the design computes
  (``gemm.Mugi(rows, cols, adders_per_row)`` for a Mugi design: one description of the hardware).

Adding a family: one module exporting ``FAMILY`` (and its test); :data:`FAMILIES` discovers it.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path
from typing import Any

from mugi_jax.designs import carat as _carat
from mugi_jax.designs import mixpe as _mixpe
from mugi_jax.designs import mugi as _mugi
from mugi_jax.designs import simd as _simd
from mugi_jax.designs import systolic as _systolic
from mugi_jax.designs._base import BASES, Charges, DesignFamily, Param, square_srams
from mugi_jax.hw.arch import MESHES, Arch, Mesh



def _discover() -> dict[str, DesignFamily]:
    """Every module of this package that exports ``FAMILY`` (a :class:`DesignFamily`), by
    ``order``: adding a family is adding its module (and its test), nothing else."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        fam = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(fam, DesignFamily):
            found.append(fam)
    names = [f.name for f in found]
    if len(set(names)) != len(names):
        raise AssertionError(f"two design families share a name: {sorted(names)}")
    return {f.name: f for f in sorted(found, key=lambda f: (f.order, f.name))}


#: Family name -> family, in the order of :data:`ARCH_NAMES` (discovered from the modules).
FAMILIES: dict[str, DesignFamily] = _discover()
_BUILTIN: dict[str, tuple[DesignFamily, dict[str, Any]]] = {
    name: (fam, dict(params)) for fam in FAMILIES.values() for name, params in fam.builtins.items()
}
#: Built-in design names (the CLI's ``--arch`` values).
ARCH_NAMES: tuple[str, ...] = tuple(_BUILTIN)


def family_of(arch: Arch) -> DesignFamily:
    if arch.family not in FAMILIES:
        raise ValueError(f"family={arch.family!r}: known families are {', '.join(FAMILIES)}")
    return FAMILIES[arch.family]


def get_arch(name: str, *, variant: str | None = None, nodes: str | Mesh = "1x1") -> Arch:
    """Build a design by its built-in name (``mugi-256x8``, ``sa-figna-16``, ...) or from a
    design file path (``*.toml``).

    ``variant`` selects ``vlp``/``lut`` for Mugi (default ``vlp``); for other designs it must
    be omitted or equal the variant the name implies.  ``nodes`` is a mesh such as ``"4x4"``
    (for a file: overrides the file's ``nodes`` unless ``"1x1"``).
    """
    if name.endswith(".toml"):
        arch = load_design(name)
        if variant is not None and variant != arch.variant:
            raise ValueError(f"variant={variant!r}: set the variant in the design file {name}")
        return arch if nodes in ("1x1", Mesh()) else arch.with_mesh(nodes)
    if name not in _BUILTIN:
        raise ValueError(f"arch={name!r}: valid names are {', '.join(ARCH_NAMES)}, or a design "
                         "file (*.toml, see `mugi-jax design show`)")
    fam, params = _BUILTIN[name]
    if variant is not None and "variant" in params and fam.name == "mugi":
        params = {**params, "variant": fam.param("variant").check(variant)}
        variant = None
    arch = fam.make(params)
    if variant is not None and variant != arch.variant:
        raise ValueError(
            f"variant={variant!r} does not apply to {name} (its variant is {arch.variant!r}; "
            "variants vlp/lut exist for mugi-* only; pick sa-figna-16 etc. by name)")
    return arch.with_mesh(nodes)


def datapath(arch: Arch):
    """The numerics datapath (:mod:`mugi_jax.gemm`) of ``arch``'s family, with its parameters."""
    fam = family_of(arch)
    if fam.datapath is None:
        raise ValueError(f"family {fam.name!r} has no numerics datapath")
    return fam.datapath(arch)


def charges(arch: Arch) -> Charges:
    """Events per unit of work of ``arch`` under the paper preset (its family's charges); every
    charged module must exist in the design's inventory."""
    c = family_of(arch).charges(arch)
    known = {mod.name for mod in arch.modules}
    for base, table in c.items():
        if base not in BASES:
            raise AssertionError(f"{arch.name}: unknown charge basis {base!r}")
        missing = set(table) - known
        if missing:
            raise AssertionError(f"{arch.name}: charges for {base} name modules not in the design: {missing}")
    return c


# ---------------------------------------------------------------------------------------------
# Design files
# ---------------------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def design_file(arch: Arch) -> str:
    """A complete, commented TOML description of ``arch`` (every parameter of its family)."""
    fam = family_of(arch)
    if not arch.params:
        raise ValueError(f"{arch.name}: built without family parameters; cannot describe it")
    params = dict(arch.params)
    lines = [f"# {arch.name}: {fam.doc}",
             "# A design file of mugi-jax: edit any value, then evaluate it with",
             "#   mugi-jax cost llm --arch THIS_FILE.toml --model llama2-70b-gqa --json",
             "# Every field is required; the comment above each says what it is and its allowed values.",
             "",
             "# design family (one module of mugi_jax.designs): " + ", ".join(FAMILIES),
             f"family = {_toml_value(fam.name)}",
             f"# node mesh: {', '.join(MESHES)}",
             f"nodes = {_toml_value(arch.mesh.name)}",
             ""]
    autos = fam.auto_fields(params)
    derivable = set(fam.derive(params)) if fam.derive is not None else set()
    for p in fam.params:
        auto = f', or "auto" (here {params[p.name]})' if p.name in derivable else ""
        lines.append(f"# {p.doc} (allowed: {p.allowed}{auto})")
        lines.append(f"{p.name} = {_toml_value('auto' if p.name in autos else params[p.name])}")
    return "\n".join(lines) + "\n"


def design_from_dict(data: dict[str, Any], source: str = "design") -> Arch:
    """Build a design from a parsed design file (``family``, ``nodes`` and the family's fields)."""
    data = dict(data)
    fam_name = data.pop("family", None)
    if fam_name is None:
        raise ValueError(f"{source}: missing field family (allowed: {', '.join(FAMILIES)})")
    if fam_name not in FAMILIES:
        raise ValueError(f"{source}: family = {fam_name!r}: allowed values are {', '.join(FAMILIES)}")
    nodes = data.pop("nodes", None)
    if nodes is None:
        raise ValueError(f"{source}: missing field nodes (allowed: {', '.join(MESHES)})")
    if nodes not in MESHES:
        raise ValueError(f"{source}: nodes = {nodes!r}: allowed values are {', '.join(MESHES)}")
    try:
        arch = FAMILIES[fam_name].make(data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    return arch.with_mesh(nodes)


def load_design(path: str | Path) -> Arch:
    """The design described by a TOML design file (see :func:`design_file`)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"design file {str(p)!r}: no such file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"design file {str(p)!r}: not valid TOML ({err})") from err
    return design_from_dict(data, f"design file {str(p)!r}")


# ---------------------------------------------------------------------------------------------
# Builders by parameter (the former mugi_jax.hw.arch functions)
# ---------------------------------------------------------------------------------------------

def mugi(height: int, variant: str = "vlp") -> Arch:
    """Mugi H x 8 (``vlp``: table streamed from isram; ``lut``: physical table in the array)."""
    if height not in _mugi.HEIGHTS:
        raise ValueError(f"height={height}: Mugi heights are {_mugi.HEIGHTS}")
    if variant not in ("vlp", "lut"):
        raise ValueError(f"variant={variant!r}: Mugi variants are ('vlp', 'lut')")
    return _mugi.FAMILY.make(_mugi.params_for(height, variant))


def carat(height: int) -> Arch:
    """Carat H x 8."""
    if height not in _mugi.HEIGHTS:
        raise ValueError(f"height={height}: Carat heights are {_mugi.HEIGHTS}")
    return _carat.FAMILY.make(_carat.params_for(height))


def _square(fam: DesignFamily, label: str, n: int, variant: str, variants: tuple[str, ...]) -> Arch:
    if n not in _systolic.SIZES:
        raise ValueError(f"n={n}: {label} sizes are {_systolic.SIZES}")
    if variant not in variants:
        raise ValueError(f"variant={variant!r}: {label} variants are {variants}")
    return fam.make(_systolic.params_for(n, variant))


def systolic(n: int, variant: str = "mac") -> Arch:
    """Systolic array n x n."""
    return _square(_systolic.FAMILY, "systolic", n, variant, _systolic.VARIANTS)


def simd(n: int, variant: str = "mac") -> Arch:
    """SIMD n x n."""
    return _square(_simd.FAMILY, "SIMD", n, variant, _simd.VARIANTS)


def tensor_core() -> Arch:
    """The 8 x 16 x 16 tensor core."""
    return get_arch("tensor-8x16x16")


def mixpe(n: int = 16) -> Arch:
    """MixPE n x n."""
    if n not in _systolic.SIZES:
        raise ValueError(f"n={n}: MixPE sizes are {_systolic.SIZES}")
    return _mixpe.FAMILY.make({"size": n, **square_srams(n)})


__all__ = [
    "ARCH_NAMES", "BASES", "FAMILIES", "Charges", "DesignFamily", "Param", "carat", "charges", "datapath",
    "design_file", "design_from_dict", "family_of", "get_arch", "load_design", "mixpe", "mugi",
    "simd", "systolic", "tensor_core",
]
