"""The README runs as written: its Python blocks execute, its shell examples survive bash."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_python_blocks_run_as_written():
    from mugi_jax import data

    blocks = _blocks("python")
    assert blocks
    try:
        data.model_path("smollm2", fetch_missing=False)
    except data.DataError:
        pytest.skip("SmolLM2 is not fetched (run `make setup`)")
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]


def test_shell_examples_parse_in_bash(tmp_path):
    """Every `mugi-jax ...` line is valid bash with no accidental redirection (`<=` unquoted)."""
    lines = [ln.split("  #")[0].strip() for block in _blocks("bash") for ln in block.splitlines()]
    cmds = [ln for ln in lines if ln.startswith("mugi-jax ")]
    assert any("--budget" in c for c in cmds)
    for cmd in cmds:
        cmd = re.sub(r"\[[^\]]*\]", "", cmd)  # synopsis notation: [--quick | --full] is optional
        # `mugi-jax` replaced by a function that swallows its arguments: only the shell acts.
        r = subprocess.run(["bash", "-c", f"mugi-jax() {{ :; }}; {cmd}"], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode == 0 and not list(tmp_path.iterdir()), (cmd, r.stderr)
