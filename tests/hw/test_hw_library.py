"""Component library, CACTI memory table and architecture inventories (no CACTI needed)."""

from __future__ import annotations

import pytest

from mugi_jax.hw import (
    ARCH_NAMES, area_breakdown_mm2, component_figures, get_arch, leakage_breakdown_mw, mugi,
    parse_mesh, sram_figures, systolic,
)
from mugi_jax.hw.components import component_table


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_table_is_transcribed_with_units_in_mw():
    table = component_table()
    assert len(table) == 44
    assert table["adderbf16"].dynamic_mw == pytest.approx(0.1490825)
    assert dict(table["fifo"].attributes) == {"width": 32.0, "depth": 16.0}
    assert table["multiplierbf16"].interpolation == "quadratic"


@pytest.mark.parametrize("component, attrs, energy_pj", [
    ("adderbf16", {}, 0.3727),  # 0.149 mW / 400 MHz
    ("multiplierbf16", {}, 0.2136),
    ("register", {"width": 16}, 0.0752),
    ("fifo", {"width": 16, "depth": 16}, 1.156),  # SA ififo: linear in width and depth
    ("fifo", {"width": 16, "depth": 2}, 0.1445),  # Mugi ofifo
    ("comparator", {"width": 4}, 0.00193),
    ("noc_router", {"bandwidth": 64}, 2.004e-4),
    ("int_to_fp", {}, 1.1945),
])
def test_per_event_energy_matches_the_notes(component, attrs, energy_pj):
    assert component_figures(component, attrs).energy_pj == pytest.approx(energy_pj, rel=2e-3)


def test_missing_attribute_policy_is_explicit():
    # authors' rule: missing width -> 1, which shrinks round by 1/15, clamp/max by 1/8, window_select by 1/16
    base = component_table()
    for name, div in (("round", 15), ("clamp", 8), ("max", 8), ("window_select", 16)):
        one = component_figures(name, missing="one")
        ref = component_figures(name, missing="reference")
        assert ref.energy_pj == pytest.approx(base[name].dynamic_mw / 400 * 1e3)
        assert one.energy_pj == pytest.approx(ref.energy_pj / div)
        assert one.area_mm2 == pytest.approx(ref.area_mm2 / div)
    with pytest.raises(ValueError, match="missing="):
        component_figures("round", missing="zero")  # type: ignore[arg-type]


def test_quadratic_scaling_and_unknown_attributes():
    full = component_figures("multiplier", {"width": 16})
    half = component_figures("multiplier", {"width": 8})
    assert half.energy_pj == pytest.approx(full.energy_pj / 4)
    assert half.leakage_mw == pytest.approx(full.leakage_mw / 4)
    with pytest.raises(ValueError, match="no attribute"):
        component_figures("adderbf16", {"width": 16})
    with pytest.raises(ValueError, match="unknown component"):
        component_figures("flux_capacitor")


def test_cacti_table_reproduces_the_published_sram_areas():
    # notes section 4: SRAM area = published total - logic
    def srams(name):
        return area_breakdown_mm2(get_arch(name))["sram"]
    assert rel(srams("mugi-256x8"), 1.094) < 0.005
    assert rel(srams("mugi-128x8"), 0.851) < 0.005
    assert rel(srams("sa-16"), 0.999) < 0.005
    assert rel(srams("sa-8"), 0.777) < 0.005
    assert rel(srams("tensor-8x16x16"), 17.47) < 0.005


def test_every_sram_of_every_design_is_in_the_table():
    for name in ARCH_NAMES:
        for s in get_arch(name).srams:
            f = sram_figures(s)
            assert f.read_energy_pj > 0 and f.area_mm2 > 0 and f.leakage_mw > 0


def test_mugi_256_inventory_matches_the_published_breakdown():
    area = area_breakdown_mm2(mugi(256))
    leak = leakage_breakdown_mw(mugi(256))
    assert rel(area["logic"], 1.858) < 0.005
    assert rel(leak["logic"], 37.8) < 0.005
    assert rel(area["nonlinear"], 0.108) < 0.01
    assert rel(area["total"], 2.951) < 0.005
    assert rel(area_breakdown_mm2(mugi(256, "lut"))["nonlinear"], 1.19) < 0.01
    assert rel(area_breakdown_mm2(mugi(128))["logic"], 0.941) < 0.01


def test_mesh_replicates_nodes_and_adds_routers():
    one = area_breakdown_mm2(get_arch("mugi-256x8"))
    grid = area_breakdown_mm2(get_arch("mugi-256x8", nodes="4x4"))
    router = component_figures("noc_router", {"bandwidth": 64}).area_mm2
    assert grid["total"] == pytest.approx(16 * one["total"] + 16 * 3 * router)
    assert parse_mesh("8x8").nodes == 64


def test_invalid_designs_name_the_allowed_values():
    with pytest.raises(ValueError, match="mugi-256x8"):
        get_arch("mugi-512x8")
    with pytest.raises(ValueError, match=r"\(32, 64, 128, 256\)"):
        mugi(100)
    with pytest.raises(ValueError, match="vlp"):
        mugi(256, "fast")
    with pytest.raises(ValueError, match="mac"):
        systolic(16, "lut")
    with pytest.raises(ValueError, match="4x4"):
        get_arch("sa-16", nodes="3x3")
    with pytest.raises(ValueError, match="variant"):
        get_arch("sa-16", variant="lut")
