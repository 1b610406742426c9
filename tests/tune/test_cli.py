"""``mugi-jax tune``: argument validation (the full run is experiments/tuning.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mugi_jax.cli import app
from mugi_jax.cli._common import CliError

runner = CliRunner()


def test_help_lists_budget_keys() -> None:
    r = runner.invoke(app, ["tune", "--help"])
    assert r.exit_code == 0
    assert "mantissa_bits" in r.output and "energy_pj" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--budget", "mantissa_bit<=3"], "unknown parameter"),
    (["--budget", "window<=99"], "window"),
    (["--objective", "mse"], "--objective"),
    (["--model", "gpt-9"], "--model"),
    (["--corpus", "nope"], "--corpus"),
    (["--steps", "-1"], "--steps"),
])
def test_bad_arguments_raise_cli_error(args: list[str], msg: str) -> None:
    r = runner.invoke(app, ["tune", *args])
    assert isinstance(r.exception, CliError), r.output
    assert msg in str(r.exception)


def test_bad_budget_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "mugi_jax", "tune", "--budget", "window=8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "malformed" in proc.stderr


def test_json_output_stays_valid_with_progress_on_stderr(monkeypatch) -> None:
    """``tune --json`` piped: the stage log goes to stderr, stdout is the JSON object alone."""
    import json

    from mugi_jax.tune import pipeline

    def fake_run(*args, log=None, **kwargs):
        log("tuning 1 steps (the first step compiles)")
        log("step   0 tau 1.000 objective 0.5000 accuracy 0.9000")
        return {"budget": "window<=8", "heldout_ppl": 1.5, "config": []}

    monkeypatch.setattr(pipeline, "run", fake_run)
    monkeypatch.setattr("mugi_jax.cli.tune.enable_compilation_cache", lambda: None)
    r = runner.invoke(app, ["tune", "--steps", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"budget": "window<=8", "heldout_ppl": 1.5, "config": []}
    assert "step   0" in r.stderr and "first step compiles" in r.stderr
