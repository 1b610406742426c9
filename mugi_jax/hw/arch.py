"""Architecture descriptions: what hardware each design instantiates (per node), as frozen data.

An :class:`Arch` says *what exists* (array shape, SRAM macros, modules with their component class,
attributes and instance counts, node mesh).  *How it is used* (mapping, cycles, event counts) lives
in :mod:`mugi_jax.cost`.  Everything is hashable, so an ``Arch`` can be a static argument.

Module lists follow the authors' cost model (archx, ``zoo/llm``) as read in
``reference/archx-costmodel-notes.md``; where the notes are silent the choice is documented in
``docs/cost_model.md`` ("Architecture assumptions").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from mugi_jax.hw.memory import Sram

Family = Literal["mugi", "carat", "systolic", "simd", "tensor", "mixpe"]
NonlinearUnit = Literal["vlp", "lut", "exact", "pwl", "taylor"]

MUGI_HEIGHTS: tuple[int, ...] = (32, 64, 128, 256)
SYSTOLIC_SIZES: tuple[int, ...] = (8, 16, 32, 64)
MUGI_VARIANTS: tuple[str, ...] = ("vlp", "lut")
SYSTOLIC_VARIANTS: tuple[str, ...] = ("mac", "figna", "pwl", "taylor")
SIMD_VARIANTS: tuple[str, ...] = ("mac", "figna")
MESHES: tuple[str, ...] = ("1x1", "2x1", "2x2", "4x4", "8x8")

# Pipeline registers that broadcast the counter / value-reuse products down an H-row column
# (archx ``broadcast_height``).
BROADCAST_HEIGHT: dict[int, int] = {32: 1, 64: 1, 128: 3, 256: 5}


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
    family: Family
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


def _a(**kw: float) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in kw.items()))


# ---------------------------------------------------------------------------------------------
# SRAM sizing (archx configurations; SA-32/64 are our extrapolation, see docs)
# ---------------------------------------------------------------------------------------------

def _mugi_srams(h: int) -> tuple[Sram, Sram, Sram]:
    if h == 256:
        return Sram("isram", 128, 1024), Sram("wsram", 256, 512), Sram("osram", 512, 256)
    if h == 128:
        return Sram("isram", 128, 1024), Sram("wsram", 128, 1024), Sram("osram", 256, 512)
    return Sram("isram", 128, 1024), Sram("wsram", 128, 1024), Sram("osram", 128, 1024)


def _square_srams(n: int) -> tuple[Sram, Sram, Sram]:
    """SA/SD n x n: three 64 KiB macros, width 16*n bits (n BF16 words per access).

    archx: SA-16 uses 256b x 512; SA-8's published SRAM area (0.777 mm^2) equals 3 x 128b x 1024.
    SA-32 and SA-64 follow the same rule (512b x 256, 1024b x 128)."""
    width = 16 * n
    depth = 65536 * 8 // (4 * width)
    return tuple(Sram(name, width, depth) for name in ("isram", "wsram", "osram"))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Vector unit for nonlinear ops (baselines)
# ---------------------------------------------------------------------------------------------

def _vector_unit(lanes: int, kind: NonlinearUnit) -> tuple[Module, ...]:
    if kind == "exact":
        return (
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("register_vector", "register", lanes, _a(width=16), "vector"),
            Module("accumulator_vector", "adderbf16", lanes, (), "vector"),
            # the accumulator's result register: archx instantiates it (area, leakage) but no
            # event charges it
            Module("mac_register_vector", "register", lanes, _a(width=16), "vector"),
        )
    if kind == "pwl":  # 22 segments: 21 breakpoint comparators, 21->22 encoder, coefficient regs
        return (
            Module("pwl_comparator", "bf_comparator", 21 * lanes, (), "vector"),
            Module("pwl_encoder", "21_22_encoder", lanes, (), "vector"),
            Module("pwl_register32", "register", 22 * lanes, _a(width=32), "vector"),
            Module("pwl_register16", "register", 22 * lanes, _a(width=16), "vector"),
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("adder_vector", "adderbf16", lanes, (), "vector"),
        )
    if kind == "taylor":  # degree-9 Horner: 9 multiply-adds, 9 coefficient registers per lane
        return (
            Module("multiplier_vector", "multiplierbf16", lanes, (), "vector"),
            Module("adder_vector", "adderbf16", lanes, (), "vector"),
            Module("register_vector", "register", 9 * lanes, _a(width=16), "vector"),
        )
    raise ValueError(f"vector unit kind={kind!r}: allowed exact, pwl, taylor")


# ---------------------------------------------------------------------------------------------
# Designs
# ---------------------------------------------------------------------------------------------

def mugi(height: int, variant: str = "vlp") -> Arch:
    """Mugi H x 8 (``vlp``: table streamed from isram; ``lut``: physical table in the array)."""
    if height not in MUGI_HEIGHTS:
        raise ValueError(f"height={height}: Mugi heights are {MUGI_HEIGHTS}")
    if variant not in MUGI_VARIANTS:
        raise ValueError(f"variant={variant!r}: Mugi variants are {MUGI_VARIANTS}")
    h, w, bh = height, 8, BROADCAST_HEIGHT[height]
    mods = [
        Module("counter", "counter", 1, _a(width=3), "control"),
        Module("counter_register", "register", bh, _a(width=3), "control"),
        Module("multiplier", "multiplierbf16", w),  # value reuse: a * t, once per column
        Module("multiplier_register", "register", bh * w, _a(width=16)),
        Module("comparator", "comparator", h, _a(width=4)),
        Module("magnitude_register", "register", h, _a(width=3)),
        Module("sign_register", "register", h, _a(width=1)),
        Module("sign_fifo", "fifo", h, _a(width=4, depth=2)),
        Module("temporal_register", "register", h * w, _a(width=1)),
        Module("and_gate", "and_bitwise", h * w, _a(width=16)),
        Module("or_gate", "or_bitwise", h * w * 2, _a(width=16)),
        Module("sign_xor", "xor_bitwise", h, _a(width=1)),
        Module("adder", "adderbf16", h),  # one BF16 row accumulator
        Module("pe_fifo", "fifo", h, _a(width=16, depth=8)),
        Module("ofifo", "fifo", h, _a(width=16, depth=2)),
        Module("wfifo", "fifo", h, _a(width=4, depth=8)),
        Module("ififo", "fifo", w, _a(width=16, depth=2)),
        Module("multiplier_vector", "multiplierbf16", h // 8, (), "vector"),
        Module("register_vector", "register", h // 8, _a(width=16), "vector"),
        # nonlinear mode (the same array)
        Module("round", "round", h, (), "nonlinear"),
        Module("sign_mantissa_register", "register", h, _a(width=4), "nonlinear"),
        Module("exponent_register", "register", h, _a(width=8), "nonlinear"),
        Module("exp_clamp", "clamp", h, (), "nonlinear"),
        Module("max_tree", "max", h - 1, (), "nonlinear"),
        Module("max_tree_register", "register", bh, _a(width=8), "nonlinear"),
        Module("post_comp", "bf_post", h, (), "nonlinear"),
        Module("imux", "multiplexer", 1, _a(width=128), "control"),
        Module("wmux", "multiplexer", 1, _a(width=1024, num_inputs=2), "control"),
    ]
    if variant == "vlp":
        mods.append(Module("window_select", "window_select", 1, (), "nonlinear"))
    else:
        # physical table: 2 signs x 8 mantissa codes x 12 exponents of 16 b, every 8 rows.  The
        # decoder's table (decoder.csv) exists in no archx commit; the published area breakdown
        # (nonlinear 0.108 -> 1.19 mm^2 for 256x8) equals the registers alone, so it costs 0.
        mods.append(Module("lut_register", "register", (h // 8) * 2 * 8 * 12, _a(width=16), "nonlinear"))
    isram, wsram, osram = _mugi_srams(h)
    return Arch(
        name=f"mugi-{h}x8", family="mugi", variant=variant, height=h, width=w, depth=1,
        cycles_per_step=8, weight_bits=4, vector_lanes=h, nonlinear=variant,  # type: ignore[arg-type]
        node_stationary="os", isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
    )


def carat(height: int) -> Arch:
    """Carat H x 8 (FP8 weights, temporal activation mantissa, no early termination).

    The module inventory of archx's Carat configuration (``zoo/llm/carat``, the 32 nm 256x8
    architecture file; the other heights scale the per-row and per-PE counts with H): 8-bit
    weight FIFOs, one 3-bit comparator per row, per-row exponent shifter (an 8-bit adder) and BF16
    row adder, per-PE 1.5-bit ``areg``, per-column exponent scaling, BF16 column accumulators
    with 3-deep result registers, ``wreg``/``creg`` broadcast registers, NaN / zero flags, and an
    H-lane vector unit for the nonlinear ops.  Weights travel through the SRAMs as 4-bit codes
    (``weight_bits``); the output SRAM is 256 b x 512.
    """
    if height not in MUGI_HEIGHTS:
        raise ValueError(f"height={height}: Carat heights are {MUGI_HEIGHTS}")
    h, w = height, 8
    mods = [
        Module("counter", "counter", 1, _a(width=3), "control"),
        Module("creg", "register", (h // 8) * w, _a(width=3), "control"),  # counter broadcast
        Module("wreg", "register", w, _a(width=16)),  # per-column activation register
        Module("comparator", "comparator", h, _a(width=3)),
        Module("exp_scale", "adder", w, _a(width=8)),
        Module("ireg", "register", h, _a(width=12)),
        Module("shifterexp", "adder", h, _a(width=8)),
        Module("areg", "register", h * w, _a(width=1.5)),
        Module("z_flag", "or_bitwise", h, _a(width=7)),
        Module("nan_flag", "and_bitwise", h, _a(width=7)),
        Module("temporal_register", "register", h * w, _a(width=1)),
        Module("and_gate", "and_bitwise", h * w, _a(width=16)),
        Module("or_gate", "or_bitwise", h * w * 2, _a(width=16)),
        Module("sign_xor", "xnor_bitwise", h, _a(width=1)),
        Module("sign_fifo", "fifo", 2 * h, _a(width=8, depth=1)),
        Module("pe_fifo", "fifo", 2 * h, _a(width=16, depth=4)),
        Module("adder", "adderbf16", h),  # BF16 row adder
        Module("accumulator", "adderbf16", w),  # BF16 column accumulator
        Module("accumulator_register", "register", 3 * w, _a(width=16)),
        Module("ofifo", "fifo", h, _a(width=16, depth=8)),
        Module("wfifo", "fifo", h, _a(width=8, depth=8)),
        Module("ififo", "fifo", w, _a(width=16, depth=8)),
        *_vector_unit(h, "exact"),
    ]
    isram, wsram, _ = _mugi_srams(h)
    osram = Sram("osram", 256, 512) if h == 256 else _mugi_srams(h)[2]
    return Arch(
        name=f"carat-{h}x8", family="carat", variant="fp8", height=h, width=w, depth=1,
        cycles_per_step=8, weight_bits=4, vector_lanes=h, nonlinear="exact",
        node_stationary="os", isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
    )


def _square_pe_modules(n: int, figna: bool) -> list[Module]:
    mods = []
    if figna:  # FIGNA FP-INT PE additions (per PE)
        mods += [
            Module("ch_aloc", "ch_aloc", n * n),
            Module("ch_dealoc", "ch_dealoc", n * n),
            Module("figna_int_to_fp", "int_to_fp", n * n),
            Module("prealigner", "prealigner", n * n),
        ]
    return mods


def systolic(n: int, variant: str = "mac") -> Arch:
    """Systolic array n x n (``mac``/``figna`` GEMM; ``pwl``/``taylor`` change the nonlinear unit)."""
    if n not in SYSTOLIC_SIZES:
        raise ValueError(f"n={n}: systolic sizes are {SYSTOLIC_SIZES}")
    if variant not in SYSTOLIC_VARIANTS:
        raise ValueError(f"variant={variant!r}: systolic variants are {SYSTOLIC_VARIANTS}")
    cw = n.bit_length() - 2  # control register width: log2(n) - 1 bits (archx: 2..5 over n = 8..64)
    mods = [
        Module("multiplier", "multiplierbf16", n * n),
        Module("accumulator", "adderbf16", n * n),
        Module("input_register", "register", n * n, _a(width=16)),
        Module("weight_register", "register", n * n, _a(width=16)),
        Module("pe_register", "register", n * n, _a(width=16)),
        Module("icnt", "register", n * n, _a(width=cw), "control"),
        Module("icmp", "register", n * n, _a(width=cw), "control"),
        Module("iadd", "register", n * n, _a(width=cw), "control"),
        Module("wcnt", "register", n * n, _a(width=cw), "control"),
        Module("wcmp", "register", n * n, _a(width=cw), "control"),
        Module("wadd", "register", n * n, _a(width=cw), "control"),
        Module("adder", "adderbf16", n),
        Module("ofifo", "fifo", n, _a(width=16, depth=n)),
        Module("ififo", "fifo", n, _a(width=16, depth=n)),
        Module("wfifo", "fifo", n, _a(width=4, depth=n)),
        Module("int_to_fp", "int_to_bf16", n),
        *_square_pe_modules(n, variant == "figna"),
    ]
    nl: NonlinearUnit = variant if variant in ("pwl", "taylor") else "exact"  # type: ignore[assignment]
    mods += list(_vector_unit(n, nl))
    isram, wsram, osram = _square_srams(n)
    return Arch(
        name=f"sa-{n}", family="systolic", variant=variant, height=n, width=n, depth=1,
        cycles_per_step=1, weight_bits=4, vector_lanes=n, nonlinear=nl, node_stationary="ws",
        isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
    )


def simd(n: int, variant: str = "mac") -> Arch:
    """SIMD n x n: the multiplier array with a per-row adder-tree reduction (same cycles as SA)."""
    if n not in SYSTOLIC_SIZES:
        raise ValueError(f"n={n}: SIMD sizes are {SYSTOLIC_SIZES}")
    if variant not in SIMD_VARIANTS:
        raise ValueError(f"variant={variant!r}: SIMD variants are {SIMD_VARIANTS}")
    mods = [
        Module("multiplier", "multiplierbf16", n * n),
        Module("input_register", "register", n * n, _a(width=16)),
        Module("weight_register", "register", n * n, _a(width=16)),
        Module("pe_register", "register", n * n, _a(width=16)),  # product register per PE
        Module("accumulator", "adderbf16", n * (n - 1)),  # adder tree per row
        Module("accumulator_register", "register", n, _a(width=16)),
        Module("adder", "adderbf16", n),  # per-row partial-sum adder across k-tiles
        Module("ofifo", "fifo", n, _a(width=16, depth=n)),
        Module("ififo", "fifo", n, _a(width=16, depth=n)),
        Module("wfifo", "fifo", n, _a(width=4, depth=n)),
        Module("int_to_fp", "int_to_bf16", n),
        *_square_pe_modules(n, variant == "figna"),
        *_vector_unit(n, "exact"),
    ]
    isram, wsram, osram = _square_srams(n)
    return Arch(
        name=f"simd-{n}", family="simd", variant=variant, height=n, width=n, depth=1,
        cycles_per_step=1, weight_bits=4, vector_lanes=n, nonlinear="exact", node_stationary="ws",
        isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
    )


def tensor_core() -> Arch:
    """NVIDIA-style tensor core 8 x 16 x 16 (m 8, k 16, n 16 per cycle; 2048 MAC/cycle)."""
    m, k, n = 8, 16, 16
    mods = [
        Module("multiplier", "multiplierbf16", m * k * n),
        Module("adder_tree", "adderbf16", m * n * (k - 1)),
        Module("accumulator", "adderbf16", m * n),
        Module("accumulator_register", "register", m * n, _a(width=16)),
        Module("input_register", "register", m * k, _a(width=16)),
        Module("weight_register", "register", k * n, _a(width=16)),
        Module("int_to_fp", "int_to_bf16", k * n),
        Module("ififo", "fifo", m, _a(width=16 * k, depth=16)),
        Module("wfifo", "fifo", n, _a(width=4 * k, depth=16)),
        Module("ofifo", "fifo", m, _a(width=16 * n, depth=16)),
        *_vector_unit(m * n, "exact"),
    ]
    s = (Sram("isram", 2048, 512), Sram("wsram", 2048, 512), Sram("osram", 2048, 512))
    return Arch(
        name="tensor-8x16x16", family="tensor", variant="mac", height=n, width=m, depth=k,
        cycles_per_step=1, weight_bits=4, vector_lanes=m * n, nonlinear="exact",
        node_stationary="ws", isram=s[0], wsram=s[1], osram=s[2], modules=tuple(mods),
    )


MIXPE_GROUP = 32  # quantization group along k


def mixpe(n: int = 16) -> Arch:
    """MixPE-style n x n PE array (our model; MixPE publishes no archx description).

    Assumptions (docs/cost_model.md): systolic dataflow and cycles as SA; each PE multiplies the
    BF16 activation's 8-bit significand by the INT4 weight by shift-and-add (one 8-bit shifter,
    three 12-bit integer adds for the four partial products) and accumulates in a 32-bit integer
    accumulator with a per-PE exponent adder; per quantization group (32 along k) one BF16
    dequantization multiply and one BF16 add per output, on a per-row dequantization unit.
    """
    if n not in SYSTOLIC_SIZES:
        raise ValueError(f"n={n}: MixPE sizes are {SYSTOLIC_SIZES}")
    mods = [
        Module("shifter", "shifter", n * n, _a(width=8, stage=3)),
        Module("shift_adder", "adder", 3 * n * n, _a(width=12)),
        Module("exponent_adder", "adder", n * n, _a(width=8)),
        Module("int_accumulator", "accumulator", n * n, _a(width=32)),
        Module("input_register", "register", n * n, _a(width=16)),
        Module("weight_register", "register", n * n, _a(width=4)),
        Module("pe_register", "register", n * n, _a(width=32)),
        Module("dequant_multiplier", "multiplierbf16", n),
        Module("dequant_adder", "adderbf16", n),
        Module("ofifo", "fifo", n, _a(width=16, depth=n)),
        Module("ififo", "fifo", n, _a(width=16, depth=n)),
        Module("wfifo", "fifo", n, _a(width=4, depth=n)),
        *_vector_unit(n, "exact"),
    ]
    isram, wsram, osram = _square_srams(n)
    return Arch(
        name=f"mixpe-{n}", family="mixpe", variant="shift-add", height=n, width=n, depth=1,
        cycles_per_step=1, weight_bits=4, vector_lanes=n, nonlinear="exact", node_stationary="ws",
        isram=isram, wsram=wsram, osram=osram, modules=tuple(mods),
    )


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

ARCH_NAMES: tuple[str, ...] = (
    *(f"mugi-{h}x8" for h in MUGI_HEIGHTS),
    *(f"carat-{h}x8" for h in MUGI_HEIGHTS),
    *(f"sa-{n}" for n in SYSTOLIC_SIZES),
    "sa-figna-16", "sa-pwl-16", "sa-taylor-16",
    "simd-16", "simd-figna-16", "simd-64",
    "tensor-8x16x16", "mixpe-16",
)


def get_arch(name: str, *, variant: str | None = None, nodes: str | Mesh = "1x1") -> Arch:
    """Build a design by its CLI name (``mugi-256x8``, ``sa-figna-16``, ...).

    ``variant`` selects ``vlp``/``lut`` for Mugi (default ``vlp``); for other designs it must
    be omitted or equal the variant the name implies.  ``nodes`` is a mesh such as ``"4x4"``.
    """
    if name not in ARCH_NAMES:
        raise ValueError(f"arch={name!r}: valid names are {', '.join(ARCH_NAMES)}")
    if m := re.fullmatch(r"mugi-(\d+)x8", name):
        arch = mugi(int(m.group(1)), variant or "vlp")
    else:
        if m := re.fullmatch(r"carat-(\d+)x8", name):
            arch = carat(int(m.group(1)))
        elif m := re.fullmatch(r"sa-(?:(figna|pwl|taylor)-)?(\d+)", name):
            arch = systolic(int(m.group(2)), m.group(1) or "mac")
        elif m := re.fullmatch(r"simd-(?:(figna)-)?(\d+)", name):
            arch = simd(int(m.group(2)), m.group(1) or "mac")
        elif name == "tensor-8x16x16":
            arch = tensor_core()
        else:
            arch = mixpe(16)
        if variant is not None and variant != arch.variant:
            raise ValueError(
                f"variant={variant!r} does not apply to {name} (its variant is {arch.variant!r}; "
                "variants vlp/lut exist for mugi-* only; pick sa-figna-16 etc. by name)")
    return arch.with_mesh(nodes)
