"""The realistic preset: data-driven early termination, memory, workload fixes, pipeline, metrics."""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from mugi_jax.cli import app
from mugi_jax.cost import early_termination as et
from mugi_jax.cost import evaluate, sweep
from mugi_jax.cost.memory import MemorySystem, dram_read_pj_per_bit, get_memory
from mugi_jax.cost.realistic import (
    ROLES, RealisticConfig, causal_tile_fraction, evaluate_realistic, gemm_cost, realistic_op_table,
)
from mugi_jax.hw import get_arch
from mugi_jax.workloads import GEMM, OUTPUT, SOFTMAX, Workload, get_model

# ------------------------------------------------------------------ early termination

NL_TOLERANCE = 0.05


def _brute_force(pmf, h, a, cols=8):
    """E[cycles] by enumerating every tile of h magnitudes."""
    bound = -(-cols // a)
    tot = 0.0
    for tile in itertools.product(range(8), repeat=h):
        p = np.prod([pmf[t] for t in tile])
        tot += p * max(max(tile) + 1, bound)
    return tot


@pytest.mark.parametrize("h,a", [(1, 8), (2, 8), (3, 2), (2, 4), (3, 1)])
def test_expected_cycles_matches_enumeration(h, a):
    pmf = np.array([0.3, 0.25, 0.15, 0.1, 0.08, 0.06, 0.04, 0.02])
    want = _brute_force(pmf, h, a)
    assert float(et.expected_cycles_per_kstep(pmf, h, a)) == pytest.approx(want, rel=1e-5)
    assert float(et.expected_cycles_np(pmf, h, a)) == pytest.approx(want, rel=1e-12)


def test_expected_cycles_closed_forms():
    uniform = np.full(8, 1 / 8)
    assert float(et.expected_cycles_np(uniform, 1, 8)) == pytest.approx(4.5)  # mean of t + 1
    # a single row adder (8 products per k-step) always costs 8 cycles: early termination is void
    for h in et.HEIGHTS:
        assert et.expected_cycles_np(uniform, h, 1) == 8.0
    # without early termination: the full sweep
    assert et.expected_cycles_np(uniform, 4, 8, early_termination=False) == 8.0
    # 2 adders: at least 4 cycles; all-zero codes end at the bound
    assert et.expected_cycles_np(np.eye(8)[0], 64, 2) == 4.0


def test_analytic_matches_monte_carlo_on_smollm2_distributions():
    tab = et.code_table()
    for i, (role, h, a) in enumerate([("proj_q", 32, 2), ("down", 64, 8), ("qkt", 32, 4),
                                      ("pv", 128, 2), ("lm_head", 256, 8)]):
        pmf = tab.pmfs(et.ROLE_OF_OP[role])[0]
        analytic = float(et.expected_cycles_per_kstep(pmf, h, a))
        mc = float(et.monte_carlo_cycles_per_kstep(jax.random.key(i), pmf, h, a, samples=40000))
        assert abs(analytic - mc) < 0.02, (role, h, a, analytic, mc)


def test_code_table_covers_the_model():
    tab = et.code_table()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                 "k_cache", "v_cache"):
        assert tab.pmfs(name).shape == (30, 8)  # SmolLM2-135M: 30 layers
        assert tab.binned_pmfs(name).shape == (30, 8, 8)
    # q_proj of one layer: all 576 x 576 codes counted once
    idx = [i for i, (t, l) in enumerate(zip(tab.tensor, tab.layer)) if t == "q_proj" and l == 0]
    assert tab.counts[idx].sum() == 576 * 576
    # group-wise absmax (64 along k): every group holds a full-scale code -> >= 1/64 are 7s
    assert tab.pmfs("q_proj")[:, 7].min() >= 1 / 64 - 1e-9
    with pytest.raises(ValueError, match="tensor="):
        tab.pmfs("nope")


def test_role_cycles_table_shape_and_trends():
    for role in ROLES:
        row = [[et.role_cycles_per_kstep(role, h, a) for a in et.ADDERS] for h in et.HEIGHTS]
        row = np.asarray(row)
        assert np.all(row[:, 0] == 8.0)  # single adder: bound = 8
        assert np.all(row <= 8.0) and np.all(row >= 1.0)
        assert np.all(np.diff(row, axis=0) >= -1e-12)  # taller tiles -> larger maximum
        assert np.all(np.diff(row, axis=1) <= 1e-12)  # more adders -> fewer or equal cycles
    # i.i.d. (pooled) distributions overestimate the k-class model (outlier channels)
    assert et.role_cycles_per_kstep("proj_q", 256, 2, model="iid") >= et.role_cycles_per_kstep("proj_q", 256, 2)


def test_kbinned_model_matches_measured_cycles():
    """The committed measurements (gemm.subscription_cycles on every SmolLM2 tensor) against the
    analytic k-class model: close on average; the i.i.d. model is further off."""
    import csv
    from importlib import resources

    text = resources.files("mugi_jax").joinpath("data/cost/et_measured_smollm2.csv").read_text()
    rows = list(csv.DictReader(ln for ln in text.splitlines() if not ln.startswith("#")))
    assert len(rows) > 900
    meas = np.array([float(r["measured"]) for r in rows])
    kb = np.array([float(r["kbinned"]) for r in rows])
    iid = np.array([float(r["iid"]) for r in rows])
    a1 = np.array([r["adders_per_row"] == "1" for r in rows])
    assert np.all(meas[a1] == 8.0) and np.allclose(kb[a1], 8.0, atol=1e-3)
    err_kb = np.abs(kb - meas) / meas
    err_iid = np.abs(iid - meas) / meas
    kv = np.array([r["tensor"].endswith("_cache") for r in rows])
    assert err_kb[~kv].mean() < 0.01 and err_kb[~kv].mean() < err_iid[~kv].mean()  # weights
    assert err_kb[kv].mean() < 0.15 and err_kb[kv].mean() < err_iid[kv].mean() / 2  # KV cache
    assert np.all(kb[kv] >= meas[kv] - 1e-3)  # conservative on the KV cache (token correlation)


def test_measured_cycles_on_real_codes():
    """measured_cycles_per_kstep = the datapath rule on a small hand-made tensor."""
    codes = np.array([[1, -3, 0, 0], [7, 0, 0, 1], [0, 0, 0, 0]])  # (k=3, n=4)
    # H = 2: tiles (1, -3) (0, 0) / (7, 0) (0, 1) / (0,0) (0,0); a = 8 (bound 1): max + 1
    assert float(et.measured_cycles_per_kstep(codes, 2, 8)) == pytest.approx((4 + 1 + 8 + 2 + 1 + 1) / 6)
    assert float(et.measured_cycles_per_kstep(codes, 2, 2)) == pytest.approx((4 + 4 + 8 + 4 + 4 + 4) / 6)
    with pytest.raises(ValueError, match="height"):
        et.measured_cycles_per_kstep(codes, 8)


def test_expected_nonlinear_cycles_matches_enumeration():
    rng = np.random.default_rng(0)
    pmf = rng.random((2, 9))
    pmf /= pmf.sum(-1, keepdims=True)
    for g in (1, 2, 3):
        want = 0.0
        for s in range(2):
            for tile in itertools.product(range(9), repeat=g):
                want += np.prod([pmf[s, v] for v in tile]) * max(tile)
        assert float(et.expected_nonlinear_cycles(pmf, g)) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="pass_pmf"):
        et.expected_nonlinear_cycles(np.ones((2, 8)), 4)


def test_nonlinear_analytic_vs_measured():
    for fn, top in (("softmax", 8.0), ("silu", 16.0)):
        meas = et.nonlinear_cycles_per_tile(fn)
        ana = et.nonlinear_analytic_cycles_per_tile(fn)
        assert 0 < ana <= top and abs(ana - meas) / meas < NL_TOLERANCE, (fn, ana, meas)


def test_nonlinear_cycles_from_captured_activations():
    sm = et.nonlinear_cycles_per_tile("softmax")
    si = et.nonlinear_cycles_per_tile("silu")
    assert 1.0 <= sm <= 8.0 and 1.0 <= si <= 16.0
    assert et.nonlinear_cycles_per_tile("softmax", False) == 8.0
    assert et.nonlinear_cycles_per_tile("silu", False) == 16.0
    with pytest.raises(ValueError, match="fn="):
        et.nonlinear_cycles_per_tile("gelu")


# ------------------------------------------------------------------ memory


def test_dram_energy_per_bit_from_cacti():
    # CACTI DDR, 64-byte block read 2368.12 pJ; activate 315.431 + precharge 625.238 pJ per 8 KiB page
    assert dram_read_pj_per_bit() == pytest.approx(2368.12 / 512 + (315.431 + 625.238) / 65536, rel=1e-9)
    assert get_memory("ddr4").bits_per_cycle(400e6) == pytest.approx(2560.0)  # 128 GB/s at 400 MHz
    assert get_memory("hbm2").bandwidth_gb_s == 256.0
    with pytest.raises(ValueError, match="memory="):
        get_memory("ddr9")
    with pytest.raises(ValueError, match="bandwidth_gb_s"):
        MemorySystem("x", 0.0)


def test_memory_bound_decode_gemm():
    """Llama-2-7B q-projection decode on an 8x8 mesh of Mugi-256x8: the paper divides compute by
    64 nodes; the realistic preset streams the 4-bit weights (+ BF16 group scales) from one DRAM
    at 128 GB/s = 2560 bits per 400 MHz cycle, so the op is DRAM-bound."""
    arch = get_arch("mugi-256x8", nodes="8x8")
    k = n = 4096
    r = gemm_cost(arch, 8, k, n)
    w_bits = k * n * 4 + 16 * n * (k // 128)
    # the 8 x 4096 BF16 input (512 kbit) exceeds half the 64 KiB isram: re-read for each of the
    # 2 off-chip n tiles (2048 outputs fill the osram); the 8 x 4096 output is written back
    act = 8 * 4096 * 16
    assert r["dram_bytes"] == pytest.approx((w_bits + 3 * act) / 8)
    assert r["dram_cycles"] == pytest.approx((w_bits + 3 * act) / 2560, rel=1e-6)
    assert r["compute_cycles"] == pytest.approx(16 * (4096 * 8 + 13) / 64)
    tiles = -(-w_bits // (256 * 512 * 4 // 2))  # double-buffered halves of the weight SRAM
    assert r["cycles"] == pytest.approx(r["dram_cycles"] + r["compute_cycles"] / tiles, rel=1e-6)
    fast = gemm_cost(arch, 8, k, n, cfg=RealisticConfig(memory=get_memory("hbm3")))
    assert fast["cycles"] < r["cycles"] / 3


# ------------------------------------------------------------------ workload and pipeline


def test_causal_tile_fraction():
    assert causal_tile_fraction(64, 8, 256) == (1.0, pytest.approx(8 * 36 / 512))
    qk, pv = causal_tile_fraction(64, 1, 1)
    assert qk == pytest.approx(64 * 65 / 2 / 64 ** 2) and pv == pytest.approx(qk)
    with pytest.raises(ValueError):
        causal_tile_fraction(0, 1, 1)


def test_realistic_op_table_fixes():
    w = Workload(get_model("llama2-7b"), batch=8, seq_len=256, prefill_len=64)
    t = realistic_op_table(w, get_arch("mugi-256x8"))
    T, L = 256 - 64, 32
    gemm = t["kind"] == GEMM
    dec = t["phase"] == 1
    proj = gemm & dec & (t["role"] == ROLES.index("proj_q"))
    assert t["rep"][proj].tolist() == [L * T]  # every projection runs S - P decode steps
    head = gemm & (t["cls"] == OUTPUT)
    assert sorted(t["rep"][head].tolist()) == [1.0, float(T)]  # LM head every decode step
    assert t["m"][head & ~dec].tolist() == [8.0]  # prefill LM head: last position only
    sm0 = (t["kind"] == SOFTMAX) & ~dec
    assert t["mac_frac"][sm0].tolist() == [pytest.approx(65 / 128)]  # causal softmax elements
    assert np.sum((t["kind"] == SOFTMAX) & dec) == T


def test_mugi_decode_projection_cycles():
    """Llama-2-7B q-projection decode on 256x8: 16 output tiles x (4096 k-steps x 8 cycles +
    5 broadcast stages + 8 drained outputs) = 524,496 (paper: 524,288)."""
    r = gemm_cost(get_arch("mugi-256x8"), 8, 4096, 4096)
    assert r["compute_cycles"] == 16 * (4096 * 8 + 5 + 8)
    # 2 adders per row: the data-driven k-step (SmolLM2 q_proj distributions at H = 256)
    cfg = RealisticConfig(adders_per_row=2)
    r2 = gemm_cost(get_arch("mugi-256x8"), 8, 4096, 4096, cfg=cfg)
    c = et.role_cycles_per_kstep("proj_q", 256, 2)
    assert r2["compute_cycles"] == pytest.approx(16 * (4096 * c + 13), rel=1e-5)


def test_bad_config_values():
    with pytest.raises(ValueError, match="adders_per_row"):
        RealisticConfig(adders_per_row=3)
    with pytest.raises(ValueError, match="dataflow"):
        RealisticConfig(dataflow="is")
    with pytest.raises(ValueError, match="m="):
        gemm_cost(get_arch("sa-16"), 0, 1, 1)
    with pytest.raises(ValueError, match="preset="):
        evaluate(get_arch("sa-16"), Workload(get_model("llama2-7b")), "fancy")


# ------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def small_run():
    w = Workload(get_model("llama2-70b-gqa"), batch=8, seq_len=512, prefill_len=64)
    archs = [get_arch(a) for a in ("mugi-256x8", "sa-16", "simd-16")]
    return w, archs, {a.name: evaluate_realistic(a, w) for a in archs}


def test_realistic_run_metrics(small_run):
    w, archs, res = small_run
    rep, x = res["mugi-256x8"]
    assert float(rep.tokens) == 8 * (512 - 64)
    assert x.ttft_s > 0 and x.tpot_s > 0
    assert x.ttft_s + x.tpot_s * (512 - 64) == pytest.approx(float(rep.execution_time_s), rel=1e-9)
    assert x.dram_energy_j > 0 and x.pj_per_flop > x.pj_per_flop_onchip
    assert float(rep.energy_j) == pytest.approx(x.onchip_energy_j + x.dram_energy_j, rel=1e-9)
    assert not x.weights_resident
    # the paper's headline ordering survives: Mugi faster than SA-16 at batch 8
    sa = res["sa-16"][0]
    assert float(rep.throughput_gflops) > float(sa.throughput_gflops)
    # sweep() dispatches to the same model
    s = sweep(archs[:1], [w], "realistic")
    assert float(s.cycles[0, 0]) == pytest.approx(float(rep.cycles))


def test_paper_preset_untouched():
    w = Workload(get_model("llama2-70b-gqa"), batch=8, seq_len=4096)
    assert float(evaluate(get_arch("mugi-256x8"), w, "paper").throughput_gflops) == pytest.approx(200.33, rel=1e-3)


# ------------------------------------------------------------------ CLI

runner = CliRunner()


def test_cost_gemm_cli_json():
    r = runner.invoke(app, ["cost", "gemm", "--arch", "sa-16", "--m", "8", "--k", "256", "--n", "512",
                            "--dataflow", "os", "--preset", "realistic", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["compute_cycles"] == 9151 and out["cycles"] >= 9151 and out["energy_j"] > 0
    r = runner.invoke(app, ["cost", "gemm", "--arch", "sa-16", "--m", "8", "--k", "256", "--n", "512",
                            "--preset", "paper", "--json"])
    assert json.loads(r.output)["cycles"] == 8192
    r = runner.invoke(app, ["cost", "gemm", "--arch", "sa-16", "--m", "8", "--k", "256", "--n", "512",
                            "--dataflow", "rs"])
    assert r.exit_code != 0 and "--dataflow" in (r.output + str(r.exception))


def test_cost_llm_realistic_cli_json():
    r = runner.invoke(app, ["cost", "llm", "--arch", "mugi-256x8", "--model", "llama2-7b", "--batch", "8",
                            "--seq-len", "256", "--preset", "realistic", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    x = out["realistic"]
    assert out["tokens"] == 8 * (256 - 64)
    assert x["ttft_s"] > 0 and x["tpot_s"] > 0 and x["pj_per_flop"] > x["pj_per_flop_onchip"]
    assert out["energy_j"] == pytest.approx(x["onchip_energy_j"] + x["dram_energy_j"], rel=1e-9)


def test_resident_weights_are_not_reread_and_causal_saves_prefill_attention():
    from mugi_jax.workloads import ModelShape

    tiny = ModelShape("tiny", layers=2, dim=64, heads=2, kv_heads=2, ffn_hidden=128, vocab=256)
    w = Workload(tiny, batch=8, seq_len=96, prefill_len=32)
    arch = get_arch("mugi-256x8")
    rep, x = evaluate_realistic(arch, w)
    assert x.weights_resident
    # decode projection / FFN / LM-head rows read nothing from DRAM (weights resident, the
    # 8-token activations fit on chip; prefill activations of 256 tokens may spill)
    import jax.numpy as jnp

    from mugi_jax.cost.realistic import realistic_params, row_costs

    t = realistic_op_table(w, arch)
    rp = realistic_params(arch, w, RealisticConfig())[0]
    r = row_costs(jax.tree_util.tree_map(jnp.asarray, rp),
                  {k: jnp.asarray(v, jnp.float32) for k, v in t.items()})
    weight_rows = (t["kind"] == GEMM) & (t["is_kv"] == 0) & (t["phase"] == 1)
    assert np.all(np.asarray(r["dram_r"])[weight_rows] == 0)
    kv_rows = (t["kind"] == GEMM) & (t["is_kv"] == 1)
    assert np.all(np.asarray(r["dram_r"])[kv_rows] > 0)  # the KV cache always streams
    big = Workload(get_model("llama2-7b"), batch=8, seq_len=128, prefill_len=64)
    on = evaluate_realistic(arch, big)[1]
    off = evaluate_realistic(arch, big, RealisticConfig(causal=False))[1]
    assert on.ttft_s < off.ttft_s and on.tpot_s == pytest.approx(off.tpot_s)
    assert not on.weights_resident
