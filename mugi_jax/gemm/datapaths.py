"""Datapath configurations (frozen, hashable: usable as static ``jit`` arguments).

Each class describes a GEMM unit (docs/numerics.md sections 4-8) and, for :class:`Mugi`, the array
geometry the cycle model needs.  Each carries its own numerics as a record (``datapath.numerics``):
one of three kinds of arithmetic, with the fields that change the numbers and nothing else:

* :class:`CodeProducts` - the activations times the INT4 codes themselves (``product`` rounding),
  sequential group sums, dequantization per group (Mugi, MixPE);
* :class:`DequantizedWeights` - weights dequantized per element to BF16 or FP8, exact products,
  FP32 accumulation sequential in ``k`` or by adder trees (systolic / SIMD / tensor MACs, Carat);
* :class:`AlignedGroups` - activations pre-aligned to the group's largest exponent, exact integer
  group sums (FIGNA).

The kernels (:mod:`mugi_jax.gemm.kernels`) and the reference simulator (:mod:`mugi_jax.sim.gemm`)
each keep one implementation per numerics kind, looked up by the record's type; a new datapath
class returns one of these records (or a new kind plus its kernel and reference).
"""

from __future__ import annotations

import dataclasses

__all__ = ["Mugi", "Carat", "MixPE", "SystolicMAC", "FIGNA", "Datapath", "DATAPATHS",
           "ACCUMULATORS", "CodeProducts", "DequantizedWeights", "AlignedGroups", "Numerics"]

ACCUMULATORS = ("fp32", "bf16")


def _check_pos_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {choices}, got {value!r}")


# --------------------------------------------------------------------------------------------
# numerics records: what a datapath computes, without its geometry


@dataclasses.dataclass(frozen=True)
class CodeProducts:
    """Products of the activations and the INT4 codes (``product``: ``"bf16"`` rounds each one
    to BF16, ``"exact"`` keeps it), summed sequentially in ``k`` per group in ``accumulator``,
    then dequantized per group.  ``magnitude_bits``: the swept code magnitude (3: asymmetric
    codes run by offset decomposition, ``q - 8`` plus a per-group offset)."""

    product: str
    accumulator: str
    magnitude_bits: int

    def offset_decomposes(self, zero_point: str) -> bool:
        """Whether weights with this zero-point kind (``"none"``, ``"min"``, ``"int"``) run by
        offset decomposition (docs/numerics.md section 4.1)."""
        return self.magnitude_bits == 3 and zero_point != "none"

    def code_magnitude_bits(self) -> int | None:
        """Widest code magnitude the datapath sweeps (None: every INT4 scheme)."""
        return self.magnitude_bits

    def for_kernel(self) -> CodeProducts:
        """The fields the kernel reads once the weights are prepared: the sweep width only
        decides the offset decomposition, done before (one compilation for both widths)."""
        return dataclasses.replace(self, magnitude_bits=4)


class _EveryScheme:
    """A numerics kind that takes every INT4 scheme as it is (no sweep width, no offset
    decomposition): the answers :class:`CodeProducts` computes."""

    def offset_decomposes(self, zero_point: str) -> bool:
        return False

    def code_magnitude_bits(self) -> int | None:
        return None

    def for_kernel(self):
        return self


@dataclasses.dataclass(frozen=True)
class DequantizedWeights(_EveryScheme):
    """Weights dequantized per element in FP32 and converted to ``weights`` (``"bf16"`` or
    ``"e4m3"``), activations converted to ``activations`` (same choices), exact products,
    FP32 accumulation sequential in ``k`` (``tree_width=None``) or by ``tree_width``-wide
    pairwise adder trees whose chunk sums are added sequentially."""

    weights: str
    activations: str
    tree_width: int | None = None


@dataclasses.dataclass(frozen=True)
class AlignedGroups(_EveryScheme):
    """Per (row, group): activations aligned to the largest exponent as ``align_bits``-bit fixed
    point (truncating), exact int32 group sums with the codes, one FP32 conversion per group,
    then dequantization per group."""

    align_bits: int


Numerics = CodeProducts | DequantizedWeights | AlignedGroups


# --------------------------------------------------------------------------------------------
# datapaths


@dataclasses.dataclass(frozen=True)
class Mugi:
    """Mugi VLP GEMM array (docs/numerics.md section 4): ``rows`` x ``cols`` PEs.

    Attributes:
      rows: PE rows ``H`` (one output channel each; 32/64/128/256 in the paper).
      cols: PE columns (activations of 8 tokens, or the 8 query heads of a GQA group).
      magnitude_bits: width of the swept code magnitude: 3 (sign-magnitude INT4, 8-cycle sweep)
        or 4 (two's complement INT4 and asymmetric uint4, 16-cycle sweep).
      product: ``"bf16"`` (the column unit is a BF16 multiplier: ``bf16_rne(a t)``) or
        ``"exact"`` (the exact product ``a t``, representable in FP32; for studies/oracles).
      accumulator: ``"fp32"`` (default) or ``"bf16"`` (the paper's adders); the reference
        simulator additionally accepts ``"fp64"`` (float64 oracle).
      adders_per_row: row adders; a k-step takes at least ``ceil(cols / adders_per_row)`` cycles.
    """

    rows: int = 256
    cols: int = 8
    magnitude_bits: int = 3
    product: str = "bf16"
    accumulator: str = "fp32"
    adders_per_row: int = 1

    def __post_init__(self) -> None:
        _check_pos_int("rows", self.rows)
        _check_pos_int("cols", self.cols)
        _check_pos_int("adders_per_row", self.adders_per_row)
        if self.magnitude_bits not in (3, 4):
            raise ValueError(f"magnitude_bits: must be 3 or 4, got {self.magnitude_bits!r}")
        _check_choice("product", self.product, ("bf16", "exact"))
        _check_choice("accumulator", self.accumulator, ACCUMULATORS + ("fp64",))

    @property
    def sweep(self) -> int:
        """Counter values per k-step without early termination: ``2^magnitude_bits``."""
        return 1 << self.magnitude_bits

    @property
    def adder_bound(self) -> int:
        """Cycles the row adder(s) need per k-step: ``ceil(cols / adders_per_row)``."""
        return -(-self.cols // self.adders_per_row)

    @property
    def numerics(self) -> CodeProducts:
        return CodeProducts(self.product, self.accumulator, self.magnitude_bits)


@dataclasses.dataclass(frozen=True)
class Carat:
    """Carat (FP8 x FP8, docs/numerics.md section 5): activations and dequantized weights are
    converted to FP8 E4M3 (RNE); products exact in FP32; FP32 accumulation sequential in k."""

    accumulator: str = "fp32"

    def __post_init__(self) -> None:
        _check_choice("accumulator", self.accumulator, ("fp32",))

    @property
    def numerics(self) -> DequantizedWeights:
        return DequantizedWeights(weights="e4m3", activations="e4m3")


@dataclasses.dataclass(frozen=True)
class MixPE:
    """MixPE (docs/numerics.md section 6): shift-and-add ``a q`` (exact in FP32), sequential
    accumulation in k within a group, dequantization after each group sum."""

    accumulator: str = "fp32"

    def __post_init__(self) -> None:
        _check_choice("accumulator", self.accumulator, ACCUMULATORS)

    @property
    def numerics(self) -> CodeProducts:
        return CodeProducts("exact", self.accumulator, 4)


@dataclasses.dataclass(frozen=True)
class SystolicMAC:
    """Systolic / SIMD MAC array (docs/numerics.md section 7): INT4 weights dequantized per
    element to BF16 before the multiplier, BF16 x BF16 products exact in FP32, FP32 accumulation.

    ``tree_width=None``: output-stationary PE, sequential in k.  ``tree_width=w`` (a power of
    two): each chunk of ``w`` consecutive k is summed by an FP32 pairwise adder tree and the chunk
    sums are added sequentially (SIMD dot-product units; ``w=16`` is the tensor-core rule of
    section 9); ``k`` is padded with +0 products to a multiple of ``w``."""

    accumulator: str = "fp32"
    tree_width: int | None = None

    def __post_init__(self) -> None:
        _check_choice("accumulator", self.accumulator, ("fp32",))
        if self.tree_width is not None and (
                not isinstance(self.tree_width, int) or self.tree_width < 2
                or self.tree_width & (self.tree_width - 1)):
            raise ValueError(f"tree_width: must be None or a power of two >= 2, "
                             f"got {self.tree_width!r}")

    @property
    def numerics(self) -> DequantizedWeights:
        return DequantizedWeights(weights="bf16", activations="bf16", tree_width=self.tree_width)


@dataclasses.dataclass(frozen=True)
class FIGNA:
    """FIGNA FP-INT PE (docs/numerics.md section 8): per (row, quantization group) the BF16
    activations are aligned to the group's largest exponent as ``align_bits``-bit fixed point
    (bits shifted out are truncated), multiplied by the integer codes and summed exactly in an
    int32 accumulator; the group sum is converted to FP32 once and dequantized."""

    align_bits: int = 12

    def __post_init__(self) -> None:
        if not isinstance(self.align_bits, int) or not 8 <= self.align_bits <= 16:
            raise ValueError(f"align_bits: must be an integer in [8, 16], got {self.align_bits!r}")

    @property
    def numerics(self) -> AlignedGroups:
        return AlignedGroups(self.align_bits)


Datapath = Mugi | Carat | MixPE | SystolicMAC | FIGNA
DATAPATHS = (Mugi, Carat, MixPE, SystolicMAC, FIGNA)
