"""Bad input at the CLI, family by family: one line naming the flag (or variable) as the user typed
it, exit code 2, no traceback, and nothing computed first.

Each family runs its first case as a real subprocess (the console-script path) and the rest
in-process through the same ``main()`` (fast: no interpreter start per case).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mugi_jax.cli import main

REPO = Path(__file__).resolve().parents[1]
MUGI = [sys.executable, "-c", "from mugi_jax.cli import main; main()"]
#: Python parameter names that must never reach a CLI user (they should see the flag).
PY_NAMES = re.compile(r"\b(max_new_tokens|batch_size|calib_tokens|heldout_\w+|rounding|"
                      r"kv_heads|seq_len|budget):")


def _check_line(err: str, needle: str, case) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err, (case, err)
    assert needle in lines[0], (case, needle, lines[0])
    assert not PY_NAMES.search(lines[0]), (case, lines[0])
    assert "--budget: budget" not in lines[0], (case, lines[0])


def _family(cases, monkeypatch, capsys, env=None):
    (args0, needle0), rest = cases[0], cases[1:]
    r = subprocess.run(MUGI + args0, capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 2, (args0, r.stderr)
    _check_line(r.stderr, needle0, args0)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    for args, needle in rest:
        monkeypatch.setattr("sys.argv", ["mugi-jax", *args])
        with pytest.raises(SystemExit) as e:
            main()
        cap = capsys.readouterr()
        assert e.value.code == 2, (args, cap.err)
        _check_line(cap.err, needle, args)


def test_results_directory_family(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cases = [
        (["report", "--quick", "--only", "carbon", "--out", str(afile)], f"--out {afile}"),
        (["report", "--quick", "--only", "carbon", "--out", "/dev/null/sub"], "--out /dev/null/sub"),
        (["experiment", "carbon", "--quick", "--out", str(afile)], f"--out {afile}"),
        (["experiment", "carbon", "--quick", "--out", str(afile / "sub")], "--out"),
    ]
    _family(cases, monkeypatch, capsys)
    assert afile.read_text() == "x"  # nothing written over it
    # python -m experiments.NAME: the same line, exit 2, before any work.
    for args, needle in ((["--out", str(afile)], f"--out {afile}"), (["--seed", "-1"], "--seed -1")):
        r = subprocess.run([sys.executable, "-m", "experiments.carbon", "--quick", *args],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2 and r.stdout == "", args
        _check_line(r.stderr, needle, args)


def test_data_directory_family(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    env = {"MUGI_JAX_DATA": "/dev/null/sub"}
    cases = [
        (["ppl", "--max-tokens", "64"], "MUGI_JAX_DATA=/dev/null/sub"),
        (["generate", "--prompt", "x"], "MUGI_JAX_DATA=/dev/null/sub"),
        (["data", "fetch", "sotu"], "MUGI_JAX_DATA=/dev/null/sub"),
        (["tune", "--steps", "1"], "MUGI_JAX_DATA=/dev/null/sub"),
    ]
    _family(cases, monkeypatch, capsys, env)
    monkeypatch.setenv("MUGI_JAX_DATA", str(afile))
    monkeypatch.setattr("sys.argv", ["mugi-jax", "data", "fetch", "sotu"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    _check_line(capsys.readouterr().err, f"MUGI_JAX_DATA={afile}: is not a directory", "file")


def test_llm_numeric_options_family(monkeypatch, capsys):
    cases = [
        (["ppl", "--batch-size", "0"], "--batch-size 0"),
        (["ppl", "--batch-size", "-3"], "--batch-size -3"),
        (["ppl", "--batch-size", "100000"], "--batch-size 100000"),
        (["ppl", "--context", "1"], "--context 1"),
        (["ppl", "--max-tokens", "0"], "--max-tokens 0"),
        (["generate", "--prompt", "x", "--temperature", "nan"], "--temperature nan: must be a finite"),
        (["generate", "--prompt", "x", "--temperature", "inf"], "--temperature inf"),
        (["generate", "--prompt", "x", "--temperature", "-1"], "--temperature -1"),
        (["generate", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["generate", "--prompt", "x", "--top-k", "0"], "--top-k 0"),
        (["generate", "--prompt", "x", "--seed", "-1"], "--seed -1"),
        (["generate", "--prompt", ""], "--prompt"),
    ]
    _family(cases, monkeypatch, capsys)


def test_cost_numeric_options_family(monkeypatch, capsys):
    cases = [
        (["cost", "gemm", "--arch", "sa-16", "--m", "1e40", "--k", "4", "--n", "4"], "'--m'"),
        (["cost", "gemm", "--arch", "sa-16", "--m", str(10**20), "--k", "4", "--n", "4"], "--m"),
        (["cost", "gemm", "--arch", "sa-16", "--m", "0", "--k", "4", "--n", "4"], "--m 0"),
        (["cost", "gemm", "--arch", "sa-16", "--m", "4", "--k", "4", "--n", "4", "--batch", "0"],
         "--batch 0"),
        (["cost", "llm", "--arch", "sa-16", "--model", "llama2-7b", "--kv-heads", "-8"],
         "--kv-heads -8: must be a positive integer"),
        (["cost", "llm", "--arch", "sa-16", "--model", "llama2-7b", "--kv-heads", "5"], "--kv-heads"),
        (["cost", "llm", "--arch", "sa-16", "--model", "llama2-7b", "--seq-len", "0"], "--seq-len 0"),
        (["cost", "llm", "--arch", "sa-16", "--model", "llama2-7b", "--batch", "0"], "--batch 0"),
    ]
    _family(cases, monkeypatch, capsys)


def test_report_and_tune_options_family(monkeypatch, capsys):
    cases = [
        (["report", "--only", ","], "--only ','"),
        (["report", "--only", "carbon,,multinode"], "--only"),
        (["report", "--only", "nope"], "--only"),
        (["report", "--seed", "-1"], "--seed -1"),
        (["tune", "--budget", "foo"], "--budget 'foo': malformed"),
        (["tune", "--budget", "window<=99"], "--budget 'window<=99': window"),
        (["tune", "--budget", "cycles<=1e999"], "cycles must be a finite number"),
        (["tune", "--rounding", "zz"], "--rounding 'zz'"),
        (["tune", "--objective", "zz"], "--objective 'zz'"),
        (["tune", "--calib-tokens", "0"], "--calib-tokens 0"),
        (["tune", "--heldout-tokens", "1"], "--heldout-tokens 1"),
        (["tune", "--heldout-start", "10"], "--heldout-start 10"),
        (["tune", "--steps", "-1"], "--steps -1"),
        (["tune", "--context", "1"], "--context 1"),
    ]
    _family(cases, monkeypatch, capsys)
