"""The realistic cost model's INT4-format terms (asymmetric offset decomposition, two's
complement, KIVI cache) against a hand computation written from the definitions in
docs/cost_model.md ("INT4 formats"), one GEMM row at a time.  The defaults (sign-magnitude, per
token) are covered bit for bit by test_cost_fixture.py."""

from __future__ import annotations

import math

import pytest

from mugi_jax.cost.realistic import RealisticConfig, gemm_cost
from mugi_jax.hw import get_arch
from mugi_jax.hw.components import component_figures
from mugi_jax.hw.inventory import module_figures

ARCH = get_arch("mugi-256x8")
H, W = ARCH.height, ARCH.width
BH = ARCH.broadcast_stages


def e_vec_op() -> float:
    """pJ per vector-unit op: a BF16 multiply-add averaged per op plus a 16-bit register."""
    mul = component_figures("multiplierbf16", missing="reference").energy_pj
    add = component_figures("adderbf16", missing="reference").energy_pj
    reg = component_figures("register", {"width": 16}, missing="reference").energy_pj
    return (mul + add) / 2 + reg


def e_mac_per_sweep_cycle() -> float:
    """Array events that fire every cycle of a k-step (Mugi: counter, broadcast registers, the
    value-reuse multipliers, sign XOR, row adders, PE and output FIFOs), per MAC of an H x W
    k-step, summed by hand from the module inventory."""
    e = {m.name: module_figures(m, "reference").energy_pj for m in ARCH.modules}
    per_cycle = (e["counter"] + BH * e["counter_register"] + W * e["multiplier"]
                 + W * BH * e["multiplier_register"] + H * e["sign_xor"] + H * e["adder"]
                 + 0.5 * H * e["pe_fifo"] + H * e["ofifo"])
    return per_cycle / (H * W)


def cost(role, m, k, n, batch=1, **cfg):
    return gemm_cost(ARCH, m, k, n, batch=batch, role=role, cfg=RealisticConfig(**cfg))


def test_asymmetric_weights_sweep_group_sums_offsets_and_traffic():
    m, k, n, g = 8, 576, 1536, 32
    base = cost("proj_q", m, k, n, group_size=g)
    asym = cost("proj_q", m, k, n, group_size=g, weight_scheme="asym")
    groups = k // g
    # dequantization unit: offset x group sum per output and group (a multiply-add, 2 ops) and
    # the activation group sums (one add per activation element = 1 op)
    extra_ops = m * n * groups * 2 + m * k
    extra_pj = extra_ops * e_vec_op() + m * k * n * 1 * e_mac_per_sweep_cycle()
    assert (asym["dynamic_energy_j"] - base["dynamic_energy_j"]) * 1e12 == pytest.approx(extra_pj, rel=2e-4)
    # one 16-bit offset per group and output channel next to the scale
    assert (asym["dram_bytes"] - base["dram_bytes"]) * 8 == pytest.approx(16 * n * groups, rel=1e-6)
    # the 9-cycle sweep (no code statistics given: the full sweep) + broadcast fill + drain
    full = math.ceil(m / W) * math.ceil(n / H) * (k * 9 + BH + W)
    assert asym["compute_cycles"] == pytest.approx(full, rel=1e-6)
    measured = cost("proj_q", m, k, n, group_size=g, weight_scheme="asym",
                    cycles_per_kstep=(("proj_q", 7.25),))
    assert measured["compute_cycles"] == pytest.approx(
        math.ceil(m / W) * math.ceil(n / H) * (k * 7.25 + BH + W), rel=1e-6)
    # measured below the design's 8 cycles: no extra array energy; above: per cycle beyond 8
    assert (measured["dynamic_energy_j"] - base["dynamic_energy_j"]) * 1e12 == pytest.approx(
        extra_ops * e_vec_op(), rel=2e-4)
    longer = cost("proj_q", m, k, n, group_size=g, weight_scheme="asym",
                  cycles_per_kstep=(("proj_q", 8.5),))
    assert (longer["dynamic_energy_j"] - base["dynamic_energy_j"]) * 1e12 == pytest.approx(
        extra_ops * e_vec_op() + m * k * n * 0.5 * e_mac_per_sweep_cycle(), rel=2e-4)


def test_twos_complement_runs_the_16_cycle_sweep():
    m, k, n = 8, 576, 1536
    r = cost("up", m, k, n, weight_scheme="int4")
    assert r["compute_cycles"] == pytest.approx(math.ceil(n / H) * (k * 16 + BH + W), rel=1e-6)
    base = cost("up", m, k, n)
    assert (r["dynamic_energy_j"] - base["dynamic_energy_j"]) * 1e12 == pytest.approx(
        m * k * n * 8 * e_mac_per_sweep_cycle(), rel=2e-4)


@pytest.mark.parametrize("asym", [False, True])
def test_kivi_keys_traffic_and_dequantization(asym):
    b, hq, dh, c, G, R = 3, 3, 64, 1000, 32, 32
    sch = "asym" if asym else "signmag"
    pt = cost("qkt", hq, dh, c, batch=b, kv_scheme=sch)
    kivi = cost("qkt", hq, dh, c, batch=b, kv_scheme=sch, kv_layout="kivi", kv_key_group=G,
                kv_residual=R)
    quantized = (c - R) // G * G  # whole key groups older than the residual window
    resid = c - quantized
    off = 2 if asym else 1  # a 16-bit scale (and offset) per scale group
    bits_pt = b * (dh * c * 4 + off * 16 * c)
    bits_kivi = b * (dh * (quantized * 4 + resid * 16) + off * 16 * dh * quantized // G)
    assert pt["dram_bytes"] * 8 == pytest.approx(bits_pt, rel=1e-6)
    assert kivi["dram_bytes"] * 8 == pytest.approx(bits_kivi, rel=1e-6)
    # dequantization ops: per token one scale per score (+ offset x query sum per score and the
    # query sums); KIVI: the per-channel scales folded into the query once per key group (+ the
    # offsets' dot product per group and an add per score) and the residual's BF16 products
    ops_pt = b * hq * c * 2 + (b * hq * c * 2 + b * hq * dh if asym else 0)
    ops_kivi = (b * hq * dh * (quantized // G) * 2 + b * hq * dh * resid * 2
                + (b * hq * dh * (quantized // G) * 2 + b * hq * quantized if asym else 0))
    # the array's energy is the same for both layouts; the difference is the vector unit
    assert (kivi["dynamic_energy_j"] - pt["dynamic_energy_j"]) * 1e12 == pytest.approx(
        (ops_kivi - ops_pt) * e_vec_op(), rel=2e-4)


def test_kivi_values_keep_the_residual_in_bf16():
    b, hq, dh, c, R = 3, 3, 64, 1000, 32
    pt = cost("pv", hq, c, dh, batch=b)
    kivi = cost("pv", hq, c, dh, batch=b, kv_layout="kivi", kv_residual=R)
    assert pt["dram_bytes"] * 8 == pytest.approx(b * (c * dh * 4 + 16 * c), rel=1e-6)
    assert kivi["dram_bytes"] * 8 == pytest.approx(
        b * ((c - R) * dh * 4 + R * dh * 16 + 16 * (c - R)), rel=1e-6)


def test_kv_write_traffic_per_token():
    from mugi_jax.cost.realistic import kv_write_bits

    g, dh = 3, 64
    assert kv_write_bits(1, g, dh) == 2 * g * dh * 4 + 2 * g * 16
    kivi = RealisticConfig(kv_layout="kivi", kv_scheme="asym", kv_key_group=32, kv_residual=32)
    # keys: dh/32 channel scales (+ offsets) per token; values: one scale (+ offset); every
    # element also written once in BF16 into the residual window
    assert kv_write_bits(1, g, dh, kivi) == pytest.approx(
        2 * g * dh * 4 + 2 * 16 * g * (dh / 32 + 1) + 2 * g * dh * 16)


@pytest.mark.parametrize("kw,flag", [({"weight_scheme": "fp8"}, "weight_scheme"),
                                     ({"kv_layout": "per_head"}, "kv_layout"),
                                     ({"kv_key_group": 0}, "kv_key_group"),
                                     ({"cycles_per_kstep": (("proj_x", 7.0),)}, "cycles_per_kstep")])
def test_bad_config_names_the_field(kw, flag):
    with pytest.raises(ValueError, match=flag):
        RealisticConfig(**kw)


def test_bf16_lm_head_runs_on_the_vector_unit():
    from mugi_jax.cost.realistic import vector_lanes

    m, k, n = 8, 576, 49152
    r = cost("lm_head", m, k, n, lm_head="bf16")
    macs = m * k * n
    assert r["compute_cycles"] == 0.0  # not on the INT4 array
    assert r["cycles"] >= 2 * macs / vector_lanes(ARCH) - 1  # a multiply-add per MAC
    assert r["dynamic_energy_j"] * 1e12 == pytest.approx(2 * macs * e_vec_op(), rel=2e-4)
    int4 = cost("lm_head", m, k, n)
    # BF16 weights, no scales, instead of INT4 codes + a 16-bit scale per 128 (the output
    # write-back, larger than the output SRAM here, is the same for both)
    assert (r["dram_bytes"] - int4["dram_bytes"]) * 8 == pytest.approx(
        k * n * 16 - (k * n * 4 + 16 * n * math.ceil(k / 128)), rel=1e-6)
