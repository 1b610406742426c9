"""Run SCALE-Sim (PyPI ``scalesim`` 3.0.0) on GEMM shapes, as a peer check of :mod:`.systolic`.

SCALE-Sim 3.0.0 crashes under NumPy 2 (it calls ``int()`` on an array when totalling cycles), so
it lives in its own virtual environment with ``numpy<2`` (``make .venv-scalesim/.installed``
creates ``.venv-scalesim``) and is called as a subprocess.  One call simulates every shape of one
dataflow in one SCALE-Sim run (one topology CSV, one layer per shape) and returns the
``Total Cycles`` column of ``COMPUTE_REPORT.csv`` (compute cycles, without the DRAM prefetch).

SCALE-Sim's GEMM topology is ``Layer, M, N, K``: the ifmap operand is M x K and the filter
K x N.  The layout CSV is required by the reader even with custom layouts off; its values are
unused then.  SRAMs are made large (1 MiB each) so the compute schedule is not disturbed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mugi_jax.cost.systolic import check_dataflow

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv-scalesim" / "bin" / "python"

_CONFIG = """\
[general]
run_name = mugi_jax

[architecture_presets]
ArrayHeight : {rows}
ArrayWidth : {cols}
IfmapSramSzkB : 1024
FilterSramSzkB : 1024
OfmapSramSzkB : 1024
IfmapOffset : 0
FilterOffset : 10000000
OfmapOffset : 20000000
Dataflow : {dataflow}
Bandwidth : 10
ReadRequestBuffer : 32
WriteRequestBuffer : 32

[layout]
IfmapCustomLayout : False
IfmapSRAMBankBandwidth : 10
IfmapSRAMBankNum : 10
IfmapSRAMBankPort : 2
FilterCustomLayout : False
FilterSRAMBankBandwidth : 10
FilterSRAMBankNum : 10
FilterSRAMBankPort : 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth : CALC
UseRamulatorTrace : False
"""

_LAYOUT_ROW = "1,1,1,1,1,1,1,2,3,1,2,3,1,2,3,4,1,2,3,4"
_RUNNER = """\
import sys
from scalesim.scale_sim import scalesim
s = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1], topology=sys.argv[2],
             layout=sys.argv[3], input_type_gemm=True)
s.run_scale(top_path=sys.argv[4])
"""


def scalesim_python() -> Path | None:
    """The interpreter with SCALE-Sim (``$MUGI_JAX_SCALESIM_PYTHON`` or ``.venv-scalesim``), or None."""
    env = os.environ.get("MUGI_JAX_SCALESIM_PYTHON")
    p = Path(env) if env else VENV_PYTHON
    return p if p.exists() else None


def scalesim_cycles(shapes: Sequence[tuple[int, int, int]], rows: int, cols: int, dataflow: str,
                    python: Path | None = None, timeout_s: float = 600.0) -> list[int]:
    """SCALE-Sim compute cycles of each ``(m, k, n)`` GEMM on a ``rows x cols`` array.

    Raises ``FileNotFoundError`` when no SCALE-Sim interpreter exists and ``RuntimeError`` when
    the run fails or reports a different number of layers.
    """
    check_dataflow(dataflow)
    if not shapes:
        raise ValueError("shapes: need at least one (m, k, n) GEMM")
    for s in shapes:
        if len(s) != 3 or min(s) < 1:
            raise ValueError(f"shapes: each entry must be (m, k, n) with positive sizes, got {s!r}")
    py = python or scalesim_python()
    if py is None:
        raise FileNotFoundError(
            f"SCALE-Sim is not installed: run `make .venv-scalesim/.installed` (expects {VENV_PYTHON})")
    with tempfile.TemporaryDirectory(prefix="scalesim-") as d:
        d = Path(d)
        (d / "scale.cfg").write_text(_CONFIG.format(rows=rows, cols=cols, dataflow=dataflow))
        topo = ["Layer, M, N, K,"] + [f"L{i}, {m}, {n}, {k}," for i, (m, k, n) in enumerate(shapes)]
        (d / "topo.csv").write_text("\n".join(topo) + "\n")
        lay = ["Layer name," + ",".join(f"f{i}" for i in range(20)) + ","]
        lay += [f"L{i}, {_LAYOUT_ROW}," for i in range(len(shapes))]
        (d / "layout.csv").write_text("\n".join(lay) + "\n")
        (d / "run.py").write_text(_RUNNER)
        res = subprocess.run(
            [str(py), str(d / "run.py"), str(d / "scale.cfg"), str(d / "topo.csv"),
             str(d / "layout.csv"), str(d / "out")],
            cwd=d, capture_output=True, text=True, timeout=timeout_s)
        report = d / "out" / "mugi_jax" / "COMPUTE_REPORT.csv"
        if res.returncode != 0 or not report.exists():
            raise RuntimeError(f"SCALE-Sim failed (rc {res.returncode}): {res.stderr[-2000:]}")
        lines = [ln for ln in report.read_text().splitlines()[1:] if ln.strip()]
    cycles = [int(float(ln.split(",")[2])) for ln in lines]
    if len(cycles) != len(shapes):
        raise RuntimeError(f"SCALE-Sim reported {len(cycles)} layers for {len(shapes)} shapes")
    return cycles
