"""The tour command (the number-format tour; `make demo` is the report) and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from mugi_jax.cli import app

runner = CliRunner()


def test_tour_json_is_computed_and_deterministic():
    r1 = runner.invoke(app, ["tour", "--json"])
    r2 = runner.invoke(app, ["tour", "--json"])
    assert r1.exit_code == 0, r1.output
    assert r1.output == r2.output
    out = json.loads(r1.output)
    by_input = {str(v["input"]): v for v in out["bf16_fields"]}
    assert by_input["-1.5"]["vlp_code_3b"] == 4 and by_input["-1.5"]["sign"] == 1
    assert by_input["1e-39"]["kind"] == "SUBNORMAL"
    sqnr = {r["scheme"]: r["sqnr_db"] for r in out["quantization"]}
    # Finer groups quantize a Gaussian better than one scale per channel.
    assert sqnr["sign-magnitude int4 g64"] > sqnr["sign-magnitude int4 per-channel"]


def test_bad_command_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "mugi_jax", "no-such-command"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no-such-command" in (proc.stderr + proc.stdout)
