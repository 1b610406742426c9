"""Off-chip memory of the realistic preset: DRAM bandwidth (a roofline bound) and access energy.

Energy per bit comes from CACTI 7's DRAM model (the one shipped in ``hwcomponents-cacti``, run by
``scripts/gen_memory_table.py``: 1 GiB, 8 banks, 8 KiB page, comm-dram cells, 32 nm, 64-byte
blocks).  A streamed access reads whole blocks from open pages, so

.. math::

    e_\\mathrm{bit} = \\frac{E_\\mathrm{read}}{b_\\mathrm{block}}
                    + \\frac{E_\\mathrm{activate} + E_\\mathrm{precharge}}{b_\\mathrm{page}}
    = \\frac{2368.12\\ \\mathrm{pJ}}{512} + \\frac{315.43 + 625.24\\ \\mathrm{pJ}}{65536}
    \\approx 4.64\\ \\mathrm{pJ/bit}

(writes use ``E_write``, 2341.96 pJ per block: 4.59 pJ/bit).  CACTI's DRAM background power
(I/O leakage, refresh: the table's ``leakage_mw``) depends on the part and its power-down
policy, and archx multiplies the I/O leakage by the bank count; it is reported separately and
not charged (see docs/cost_model.md).

Bandwidth options (:data:`MEMORY_SYSTEMS`; peak rates of one device/stack, the realistic preset
uses them as a roofline ceiling without an efficiency derating):

- ``ddr4`` 128 GB/s: the paper's configured DRAM bandwidth (archx ``dram`` ``bandwidth: 128``);
- ``lpddr5`` 51.2 GB/s: one x64 LPDDR5-6400 interface (6400 MT/s x 8 B);
- ``hbm2`` 256 GB/s: one HBM2 stack (2 Gb/s/pin x 1024 pins / 8), the paper's roofline plot;
- ``hbm3`` 819 GB/s: one HBM3 stack (6.4 Gb/s/pin x 1024 / 8).

The energy per bit of every option is CACTI's DDR figure unless ``energy_pj_per_bit`` is given
(CACTI has no HBM/LPDDR I/O model; the DRAM core energy dominates this figure).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources


@functools.lru_cache(maxsize=1)
def _dram_row() -> dict[str, float]:
    text = resources.files("mugi_jax").joinpath("data/cost/memory_cacti_32nm.csv").read_text()
    rows = [r for r in csv.DictReader(text.splitlines()) if r["kind"] == "dram"]
    if len(rows) != 1:
        raise ValueError("memory_cacti_32nm.csv must hold exactly one DRAM row")
    return {k: float(v) for k, v in rows[0].items() if k != "kind" and v != ""}


DRAM_PAGE_BITS = 8192 * 8  # scripts/gen_memory_table.py DRAM_CONFIG page_bits


def dram_read_pj_per_bit() -> float:
    """CACTI DRAM read energy per streamed bit (module docstring)."""
    r = _dram_row()
    return r["read_energy_pj"] / r["block_bits"] + (r["activate_energy_pj"] + r["precharge_energy_pj"]) / DRAM_PAGE_BITS


def dram_write_pj_per_bit() -> float:
    """CACTI DRAM write energy per streamed bit."""
    r = _dram_row()
    return r["write_energy_pj"] / r["block_bits"] + (r["activate_energy_pj"] + r["precharge_energy_pj"]) / DRAM_PAGE_BITS


def dram_background_w() -> float:
    """CACTI DRAM background power as archx totals it (I/O + refresh + closed page) x banks [W]."""
    return _dram_row()["leakage_mw"] / 1e3


@dataclass(frozen=True)
class MemorySystem:
    """Off-chip memory: peak bandwidth [GB/s = 1e9 B/s] and energy per bit (None: CACTI DDR)."""

    name: str = "ddr4"
    bandwidth_gb_s: float = 128.0
    read_pj_per_bit: float | None = None
    write_pj_per_bit: float | None = None

    def __post_init__(self) -> None:
        if not self.bandwidth_gb_s > 0:
            raise ValueError(f"bandwidth_gb_s={self.bandwidth_gb_s!r}: must be > 0")
        for f in ("read_pj_per_bit", "write_pj_per_bit"):
            v = getattr(self, f)
            if v is not None and v < 0:
                raise ValueError(f"{f}={v!r}: must be >= 0 or None (CACTI DDR)")

    @property
    def read_energy_pj_per_bit(self) -> float:
        return dram_read_pj_per_bit() if self.read_pj_per_bit is None else self.read_pj_per_bit

    @property
    def write_energy_pj_per_bit(self) -> float:
        return dram_write_pj_per_bit() if self.write_pj_per_bit is None else self.write_pj_per_bit

    def bits_per_cycle(self, frequency_hz: float) -> float:
        """Bits the DRAM delivers per accelerator clock cycle."""
        return self.bandwidth_gb_s * 1e9 * 8.0 / frequency_hz


MEMORY_SYSTEMS: dict[str, MemorySystem] = {
    "ddr4": MemorySystem("ddr4", 128.0),
    "lpddr5": MemorySystem("lpddr5", 51.2),
    "hbm2": MemorySystem("hbm2", 256.0),
    "hbm3": MemorySystem("hbm3", 819.2),
}


def get_memory(name: str | MemorySystem) -> MemorySystem:
    if isinstance(name, MemorySystem):
        return name
    if name not in MEMORY_SYSTEMS:
        raise ValueError(f"memory={name!r}: allowed values are {', '.join(MEMORY_SYSTEMS)}")
    return MEMORY_SYSTEMS[name]
