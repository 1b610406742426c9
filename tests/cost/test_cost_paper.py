"""The ``paper`` preset: worked examples and headline ratios of the published evaluation.

Tolerances (issue 5): cycle-derived figures 1 %, energy-derived 5 %, carbon 10 %.  Where our
principled reading does not reach a published figure, the test pins what we compute and says so
(docs/cost_model.md, "Reproduction status").
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax.cost import energy_by_module, evaluate, report_at, sweep
from mugi_jax.cost.model import arch_params, row_costs, table_arrays
from mugi_jax.cost.presets import PAPER
from mugi_jax.hw import get_arch
from mugi_jax.workloads import NONLINEAR, PROJECTION, Workload, get_model, op_table

ARCHS = ["mugi-256x8", "sa-16", "simd-16", "sa-pwl-16", "sa-taylor-16", "carat-256x8",
         "tensor-8x16x16", "mugi-128x8"]
MODELS = ["llama2-7b", "llama2-70b-gqa"]


@pytest.fixture(scope="module")
def grid():
    archs = [get_arch(a) for a in ARCHS]
    work = [Workload(get_model(m), 8, 4096) for m in MODELS]
    rep = sweep(archs, work)
    return lambda a, m: report_at(rep, ARCHS.index(a), MODELS.index(m))


def rel(a, b) -> float:
    return abs(float(a) - float(b)) / abs(float(b))


def single_row_cycles(arch: str, batch: int, m: int, k: int, n: int) -> float:
    t = {"kind": np.float32([0]), "cls": np.int32([0]), "b": np.float32([batch]),
         "m": np.float32([m]), "k": np.float32([k]), "n": np.float32([n]), "rep": np.float32([1])}
    r = row_costs(arch_params(get_arch(arch)), {k_: jnp.asarray(v) for k_, v in t.items()})
    return float(r["cycles"][0])


def test_worked_example_decode_q_projection():
    # Llama-2-7B decode q-projection on Mugi 256x8: m = 8 tokens, k = n = 4096
    assert single_row_cycles("mugi-256x8", 1, 8, 4096, 4096) == 524_288  # 16 * 4096 * 8
    assert single_row_cycles("sa-16", 1, 8, 4096, 4096) == 1_048_576  # 256 n-tiles * 4096
    # tensor core: m-tiles(8) * k-tiles(16) * n-tiles(16) * batch
    assert single_row_cycles("tensor-8x16x16", 1, 8, 4096, 4096) == 1 * 256 * 256


def test_worked_example_per_layer_projection_cycles(grid):
    for arch, published in (("mugi-256x8", 8.7242e9), ("sa-16", 1.7314e10)):
        per_layer = grid(arch, "llama2-7b").breakdown.cycles[PROJECTION] / 32
        assert rel(per_layer, published) < 1e-4, (arch, per_layer)


def test_headline_throughput_70b_gqa(grid):
    mu, sa, sd = (grid(a, "llama2-70b-gqa") for a in ("mugi-256x8", "sa-16", "simd-16"))
    ratio = mu.throughput_gflops / sa.throughput_gflops
    assert rel(ratio, 2.07) < 0.01, ratio  # computed 2.066
    assert sd.cycles == sa.cycles  # SIMD cycles are the systolic ones
    assert rel(mu.flops_g, 4.733e6) < 1e-3


def test_headline_energy_efficiency_vs_simd(grid):
    mu, sd = grid("mugi-256x8", "llama2-70b-gqa"), grid("simd-16", "llama2-70b-gqa")
    ratio = mu.energy_efficiency / sd.energy_efficiency
    assert rel(ratio, 3.11) < 0.05, ratio  # computed 3.122
    # the paper's metric is an inverse energy-delay product: ratio = speedup x energy ratio (2.07 x 1.51)
    assert ratio == pytest.approx((sd.execution_time_s / mu.execution_time_s) * (sd.energy_j / mu.energy_j))
    assert rel(sd.energy_j / mu.energy_j, 1.51) < 0.05


def test_headline_softmax_throughput_45x(grid):
    def nl_gflops(a):
        r = grid(a, "llama2-70b-gqa")
        return r.breakdown.flops_g[NONLINEAR] / r.breakdown.time_s[NONLINEAR]
    assert rel(nl_gflops("mugi-256x8") / nl_gflops("sa-16"), 45.0) < 0.01
    # per-design nonlinear throughputs of the notes (section 3), GFLOP/s at 3 FLOP / element
    for arch, gflops in (("mugi-256x8", 19.2), ("sa-16", 0.4267), ("sa-pwl-16", 3.84),
                         ("sa-taylor-16", 1.92), ("carat-256x8", 6.83), ("tensor-8x16x16", 3.41),
                         ("mugi-128x8", 9.6)):
        assert rel(nl_gflops(arch), gflops) < 0.01, arch


def test_carbon_llama2_7b(grid):
    mu, sa, sd = (grid(a, "llama2-7b") for a in ("mugi-256x8", "sa-16", "simd-16"))
    op_sa = sa.operational_carbon_g / mu.operational_carbon_g
    op_sd = sd.operational_carbon_g / mu.operational_carbon_g
    em_sa = sa.embodied_carbon_g / mu.embodied_carbon_g
    em_sd = sd.embodied_carbon_g / mu.embodied_carbon_g
    # The published 1.45x operational ratio (authors' op_carbon.csv: 1.4527) within 1 % (issue 13;
    # nothing fitted: it follows from the on-chip energies that reproduce the comprehensive table).
    assert rel(op_sa, 1.4527) < 0.01
    assert op_sd == pytest.approx(1.392, rel=0.01)  # pinned (our model)
    # Embodied: the authors' formula is unpublished (their per-design rates give 1.48x); ours is
    # area x time (ACT), 1.657x, which their own areas and times also give (1.659x): see docs.
    assert em_sa == pytest.approx(1.657, rel=0.01)
    assert em_sa == pytest.approx((sa.area_mm2 * sa.execution_time_s) / (mu.area_mm2 * mu.execution_time_s))
    assert em_sd == pytest.approx(1.601, rel=0.01)
    # operational carbon is proportional to total on-chip energy
    assert op_sa == pytest.approx(sa.energy_j / mu.energy_j)


def test_leakage_and_area(grid):
    mu = grid("mugi-256x8", "llama2-7b")
    assert rel(mu.area_mm2, 2.951) < 0.005
    # the notes' leakage totals (logic 37.8 mW + CACTI SRAMs with the authors' settings 56.4 mW)
    assert rel(mu.leakage_w, 0.0942) < 0.002
    assert rel(grid("sa-16", "llama2-7b").leakage_w, 0.0860) < 0.002
    assert rel(grid("simd-16", "llama2-7b").leakage_w, 0.0838) < 0.002


def test_mesh_speedup_is_the_node_count_and_lut_only_costs_area():
    w = Workload(get_model("llama2-13b"), 8, 4096)
    one = evaluate(get_arch("mugi-256x8"), w)
    grid16 = evaluate(get_arch("mugi-256x8", nodes="4x4"), w)
    lut = evaluate(get_arch("mugi-256x8", variant="lut"), w)
    assert float(grid16.throughput_gflops / one.throughput_gflops) == pytest.approx(16.0, rel=1e-6)
    small = Workload(get_model("llama2-7b"), 8, 128)
    noc = energy_by_module(get_arch("mugi-256x8", nodes="2x2"), small)["noc"]
    assert noc > 0 and "noc" not in energy_by_module(get_arch("mugi-256x8"), small)  # NoC bit-hops
    assert float(lut.cycles) == float(one.cycles)
    assert float(lut.area_mm2) > float(one.area_mm2) + 1.0


def test_sweep_matches_evaluate_and_sequence_families():
    archs = [get_arch("mugi-64x8"), get_arch("simd-figna-16"), get_arch("mixpe-16")]
    work = [Workload(get_model("llama2-7b"), b, s) for b in (1, 16) for s in (128, 1024)]
    rep = sweep(archs, work)
    assert rep.cycles.shape == (3, 4)
    for i, a in enumerate(archs):
        for j, w in enumerate(work):
            one = evaluate(a, w)
            assert float(rep.cycles[i, j]) == pytest.approx(float(one.cycles), rel=1e-6)
            assert float(rep.energy_j[i, j]) == pytest.approx(float(one.energy_j), rel=1e-6)
    # the family trick: cycles of each run equal the direct row-by-row sum
    t = op_table(work[1], PAPER.decode)
    p = arch_params(archs[0])
    r = row_costs(p, {k: jnp.asarray(v) for k, v in table_arrays(t).items()})
    direct = float(np.sum(np.asarray(r["cycles"], np.float64) * t.repeat))
    assert float(rep.cycles[0, 1]) == pytest.approx(direct, rel=1e-5)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="paper"):
        evaluate(get_arch("sa-16"), Workload(get_model("llama2-7b")), preset="optimistic")


def test_prefix_kernel_matches_the_reference_formulation():
    """The sweep's prefix-sum kernel equals plain reps @ row-costs (family_totals) row by row."""
    import jax

    from mugi_jax.cost.model import family_totals
    from mugi_jax.workloads import op_table_family

    model, seqs = get_model("smollm2-135m"), [256, 700]
    archs = [get_arch("tensor-8x16x16"), get_arch("sa-pwl-16"), get_arch("mugi-32x8", nodes="2x2")]
    rep = sweep(archs, [Workload(model, 3, s) for s in seqs])
    union, reps = op_table_family(model, 3, seqs, 64, PAPER.decode)
    t = {k: jnp.asarray(v) for k, v in table_arrays(union).items()}
    ref_fn = jax.jit(family_totals)
    for i, a in enumerate(archs):
        ref = ref_fn(arch_params(a), t, jnp.asarray(reps, jnp.float32))
        for j in range(len(seqs)):
            assert float(rep.cycles[i, j]) == pytest.approx(float(np.sum(ref["class_cycles"][j])), rel=1e-4)
            assert float(rep.dynamic_energy_j[i, j]) == pytest.approx(
                float(np.sum(ref["class_energy_pj"][j])) * 1e-12, rel=1e-4)
            assert float(rep.nonlinear_cycles[i, j]) == pytest.approx(float(ref["nonlinear_cycles"][j]), rel=1e-4)


def test_batch_saturation_mugi_at_8_systolic_at_16():
    """Notes 2.5: decode fills Mugi's 8 columns at batch 8, the 16x16 array's at batch 16."""
    archs = [get_arch("mugi-256x8"), get_arch("sa-16")]
    work = [Workload(get_model("llama2-13b"), b, 4096) for b in (4, 8, 16, 32)]
    rep = sweep(archs, work)
    proj = np.asarray(rep.breakdown.flops_g[..., PROJECTION] / rep.breakdown.time_s[..., PROJECTION])
    mugi, sa = proj
    assert mugi[1] / mugi[0] == pytest.approx(2.0, rel=0.02)
    assert mugi[2] / mugi[1] == pytest.approx(1.0, rel=0.02)  # saturated at 8
    assert sa[2] / sa[1] == pytest.approx(2.0, rel=0.02)
    assert sa[3] / sa[2] == pytest.approx(1.0, rel=0.02)  # saturated at 16
    assert mugi[1] / sa[1] == pytest.approx(2.0, rel=0.02)  # the batch-8 iso-peak win
    assert mugi[1] == pytest.approx(204.8, rel=0.02)  # 256 MAC/cycle at 400 MHz
