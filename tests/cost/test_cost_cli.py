"""``mugi-jax cost llm``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mugi_jax.cli import app

runner = CliRunner()

REQUIRED = (
    "throughput_gflops", "energy_efficiency", "power_efficiency_gflops_per_j", "area_mm2",
    "execution_time_s", "gemm_time_s", "nonlinear_time_s", "dynamic_energy_j", "leakage_w",
    "flops_g", "tokens_per_s", "j_per_token", "operational_carbon_g", "embodied_carbon_g", "breakdown",
)


def test_cost_llm_json():
    r = runner.invoke(app, ["cost", "llm", "--arch", "mugi-256x8", "--model", "llama2-70b-gqa",
                            "--batch", "8", "--seq-len", "4096", "--preset", "paper", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    for key in REQUIRED:
        assert key in out, key
    assert set(out["breakdown"]) == {"projection", "attention", "ffn", "nonlinear", "output"}
    assert out["throughput_gflops"] == pytest.approx(200.33, rel=1e-3)
    assert out["flops_g"] == pytest.approx(4.733e6, rel=1e-3)
    assert out["execution_time_s"] == pytest.approx(out["gemm_time_s"] + out["nonlinear_time_s"], rel=1e-6)


def test_cost_llm_mesh_and_variant():
    base = ["cost", "llm", "--arch", "mugi-256x8", "--model", "smollm2-135m", "--batch", "4",
            "--seq-len", "512", "--json"]
    one = json.loads(runner.invoke(app, base).output)
    r = runner.invoke(app, base + ["--nodes", "2x2", "--variant", "lut"])
    assert r.exit_code == 0, r.output
    grid = json.loads(r.output)
    assert grid["variant"] == "lut" and grid["nodes"] == "2x2"
    assert grid["throughput_gflops"] == pytest.approx(4 * one["throughput_gflops"], rel=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["--arch", "mugi-100x8", "--model", "llama2-7b"], "mugi-256x8"),
    (["--arch", "sa-16", "--model", "llama9"], "llama2-70b-gqa"),
    (["--arch", "sa-16", "--model", "llama2-7b", "--nodes", "3x3"], "4x4"),
    (["--arch", "sa-16", "--model", "llama2-7b", "--preset", "fast"], "paper"),
    (["--arch", "sa-16", "--model", "llama2-7b", "--variant", "lut"], "mugi-*"),
    (["--arch", "sa-16", "--model", "llama2-7b", "--seq-len", "32"], "--seq-len"),
])
def test_cost_llm_errors_name_valid_values(args, needle):
    r = runner.invoke(app, ["cost", "llm", *args])
    assert r.exit_code != 0
    assert needle in str(r.exception) or needle in r.output
