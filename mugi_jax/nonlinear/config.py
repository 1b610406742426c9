"""Configurations of the nonlinear units: VLP (Mugi), Mugi-L, PWL, Taylor, exact.

All are frozen dataclasses, hashable, so they can be passed as static arguments to ``jax.jit``.
Invalid values raise ``ValueError`` naming the field and its allowed range at construction time.
"""

from __future__ import annotations

import dataclasses

__all__ = ["VLPConfig", "MugiL", "PWL", "Taylor", "Exact", "Approx", "FUNCTIONS", "BUILDS", "TAILS"]

#: The functions shipped before the registry (``gelu`` is the erf form, ``gelu_tanh`` the tanh
#: form).  Every registered function works everywhere: see ``nonlinear.names()``.
FUNCTIONS = ("exp", "silu", "gelu", "gelu_tanh")
BUILDS = ("max", "min")
TAILS = ("clamp", "linear")

_BF16_EMIN, _BF16_EMAX = -126, 127


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: must be in {rng}, got {value}")


@dataclasses.dataclass(frozen=True)
class VLPConfig:
    r"""Parameters of the VLP (value-level-parallel) table approximation.

    * ``mantissa_bits`` M in 1..7: the BF16 mantissa is rounded (half to even, carry into the
      exponent) to M bits; the code :math:`j \in [0, 2^M)` is the row's subscription time.
    * ``window`` W >= 1: exponents streamed by one tile (the array width, 8).
    * ``lut_exponents`` L >= W: stored exponents :math:`[e_{top} - L + 1, e_{top}]`.
    * ``e_top``: largest stored exponent; the stored range must be BF16 normal exponents
      (:math:`-126 \le e_{top} - L + 1`, :math:`e_{top} \le 127`).
    * ``window_group`` G >= 1: elements sharing one window (one tile of the H x 8 array).
    * ``build``: ``"max"`` (window slides down from the group's largest exponent, the published
      rule) or ``"min"`` (window builds up from the group's smallest exponent).
    * ``tail``: ``"clamp"`` (published rule for exponents below the stored range) or
      ``"linear"`` (first order: exp -> 1 + x, SiLU/GELU -> x/2).
    """

    mantissa_bits: int = 3
    window: int = 8
    lut_exponents: int = 12
    e_top: int = 3
    window_group: int = 256
    build: str = "max"
    tail: str = "clamp"

    def __post_init__(self) -> None:
        _check_int("mantissa_bits", self.mantissa_bits, 1, 7)
        _check_int("window", self.window, 1)
        _check_int("lut_exponents", self.lut_exponents, 1)
        if self.lut_exponents < self.window:
            raise ValueError(
                f"lut_exponents: must be >= window ({self.window}), got {self.lut_exponents}")
        _check_int("e_top", self.e_top, _BF16_EMIN + self.lut_exponents - 1, _BF16_EMAX)
        _check_int("window_group", self.window_group, 1)
        if self.build not in BUILDS:
            raise ValueError(f"build: must be one of {BUILDS}, got {self.build!r}")
        if self.tail not in TAILS:
            raise ValueError(f"tail: must be one of {TAILS}, got {self.tail!r}")

    @property
    def e_bottom(self) -> int:
        """Smallest stored exponent, :math:`e_{top} - L + 1`."""
        return self.e_top - self.lut_exponents + 1

    @property
    def codes(self) -> int:
        """Number of mantissa codes, :math:`2^M` (the length of one sweep)."""
        return 1 << self.mantissa_bits


@dataclasses.dataclass(frozen=True)
class MugiL:
    """Mugi-L: the same numerics as VLP with a physical table (register file + decoder) instead of
    streaming; it differs from :class:`VLPConfig` only in cost."""

    config: VLPConfig = VLPConfig()

    def __post_init__(self) -> None:
        if not isinstance(self.config, VLPConfig):
            raise ValueError(f"config: must be a VLPConfig, got {type(self.config).__name__}")


@dataclasses.dataclass(frozen=True)
class PWL:
    """Piecewise-linear interpolation with ``segments`` equal segments over ``[lo, hi]``.

    ``lo``/``hi`` default per function (see :data:`mugi_jax.nonlinear.baselines.PWL_RANGES`):
    exp [-20, 0] (the paper's softmax range), SiLU [-8, 8], GELU [-4, 4].
    """

    segments: int = 22
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        _check_int("segments", self.segments, 1, 4096)
        if self.lo is not None and self.hi is not None and not float(self.lo) < float(self.hi):
            raise ValueError(f"lo: must be < hi ({self.hi}), got {self.lo}")


@dataclasses.dataclass(frozen=True)
class Taylor:
    """Taylor polynomial of ``degree`` (1..9) around ``centre``; zero below ``cutoff``;
    SiLU/GELU are the identity above ``upper``.

    Defaults per function (see :data:`mugi_jax.nonlinear.baselines.TAYLOR_DEFAULTS`).
    """

    degree: int = 9
    centre: float | None = None
    cutoff: float | None = None
    upper: float | None = None

    def __post_init__(self) -> None:
        _check_int("degree", self.degree, 1, 9)
        if self.cutoff is not None and self.upper is not None and not self.cutoff < self.upper:
            raise ValueError(f"cutoff: must be < upper ({self.upper}), got {self.cutoff}")


@dataclasses.dataclass(frozen=True)
class Exact:
    """The FP32 reference (``jax.nn`` ops evaluated in float32, float32 result)."""


Approx = VLPConfig | MugiL | PWL | Taylor | Exact
