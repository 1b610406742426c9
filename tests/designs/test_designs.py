"""Design families as data (issue 18): registry, design files, cost-model objects."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mugi_jax.designs import ARCH_NAMES, FAMILIES, charges, design_file, get_arch, load_design


def _write(tmp_path, text: str, name: str = "d.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _edit(text: str, field: str, value: str) -> str:
    lines = [f"{field} = {value}" if ln.split(" = ")[0] == field else ln for ln in text.splitlines()]
    assert any(ln == f"{field} = {value}" for ln in lines), field
    return "\n".join(lines) + "\n"


def test_every_built_in_round_trips_through_its_design_file(tmp_path):
    for name in ARCH_NAMES:
        for nodes in ("1x1", "2x2"):
            arch = get_arch(name, nodes=nodes)
            assert load_design(_write(tmp_path, design_file(arch))) == arch, (name, nodes)
            charges(arch)  # every charged module exists in the inventory
    lut = get_arch("mugi-256x8", variant="lut")
    assert load_design(_write(tmp_path, design_file(lut))) == lut
    assert {get_arch(n).family for n in ARCH_NAMES} == set(FAMILIES)


def test_changing_one_field_gives_the_built_in_with_that_parameter(tmp_path):
    text = design_file(get_arch("mugi-256x8"))
    for rows in (32, 64, 128):
        assert load_design(_write(tmp_path, _edit(text, "rows", str(rows)))) == get_arch(f"mugi-{rows}x8")
    sa = design_file(get_arch("sa-16"))
    assert load_design(_write(tmp_path, _edit(sa, "size", "32"))) == get_arch("sa-32")
    assert load_design(_write(tmp_path, _edit(sa, "variant", '"figna"'))) == get_arch("sa-figna-16")
    carat = design_file(get_arch("carat-256x8"))
    assert load_design(_write(tmp_path, _edit(carat, "rows", "128"))) == get_arch("carat-128x8")


@pytest.mark.parametrize("field,value,match", [
    ("rows", "100", r"rows = 100: allowed values are 32, 64, 128, 256"),
    ("cols", '"wide"', r"cols = 'wide': allowed values are 4, 8, 16, 32"),
    ("adders_per_row", "3", r"adders_per_row = 3: allowed values are 1, 2, 4, 8"),
    ("broadcast_stages", "99", r"broadcast_stages = 99: allowed values are integers 1..32"),
    ("osram_depth", "true", r"osram_depth = True: allowed values are 128, 256, 512, 1024"),
    ("osram_depth", "1024", r"osram_width = 512, osram_depth = 1024: allowed \(width, depth\) "
                            r"pairs are 128 x 1024, 256 x 512, 512 x 256, 1024 x 128, 2048 x 512"),
    ("isram_width", "64", r"isram_width = 64: allowed values are 128, 256, 512, 1024, 2048"),
    ("rows", '"auto"', r"rows cannot be \"auto\""),
    ("nodes", '"3x3"', r"nodes = '3x3': allowed values are 1x1"),
    ("family", '"gpu"', r"family = 'gpu': allowed values are mugi, carat"),
])
def test_bad_fields_are_named_with_their_allowed_values(tmp_path, field, value, match):
    text = _edit(design_file(get_arch("mugi-256x8")), field, value)
    with pytest.raises(ValueError, match=match):
        load_design(_write(tmp_path, text))


def test_bounds_between_fields(tmp_path):
    """Ranges that depend on another field name both: a 32-row column holds at most 4 broadcast
    registers, a row no more adders than its cols products per k-step."""
    small = design_file(get_arch("mugi-32x8"))
    with pytest.raises(ValueError, match=r"broadcast_stages = 5: allowed values here are at most 4 "
                                         r"\(.*rows = 32\)"):
        load_design(_write(tmp_path, _edit(small, "broadcast_stages", "5")))
    narrow = _edit(design_file(get_arch("mugi-256x8")), "cols", "4")
    with pytest.raises(ValueError, match=r"adders_per_row = 8: allowed values here are at most 4 "
                                         r"\(.*cols = 4\)"):
        load_design(_write(tmp_path, _edit(narrow, "adders_per_row", "8")))
    assert load_design(_write(tmp_path, _edit(narrow, "adders_per_row", "4"))).adders_per_row == 4
    carat = design_file(get_arch("carat-64x8"))
    with pytest.raises(ValueError, match=r"broadcast_stages = 9: allowed values here are at most 8"):
        load_design(_write(tmp_path, _edit(carat, "broadcast_stages", "9")))


def test_unknown_and_missing_fields(tmp_path):
    text = design_file(get_arch("sa-16"))
    with pytest.raises(ValueError, match="unknown field.*heigth.*fields are size"):
        load_design(_write(tmp_path, text + "heigth = 4\n"))
    with pytest.raises(ValueError, match="missing field.*variant"):
        load_design(_write(tmp_path, "\n".join(ln for ln in text.splitlines() if not ln.startswith("variant"))))
    with pytest.raises(ValueError, match="not valid TOML"):
        load_design(_write(tmp_path, "rows = = 3\n"))
    with pytest.raises(ValueError, match="no such file"):
        load_design(tmp_path / "nope.toml")


def test_worked_example_two_adders_and_a_16_wide_array(tmp_path):
    """Mugi-256 with 2 adders per row and 16 columns: twice the peak (the paper's count is 8
    cycles per k-step at any width), 2H row adders in the inventory, which the realistic model
    reads instead of its own adders_per_row knob."""
    from mugi_jax.cost import RealisticModel, evaluate
    from mugi_jax.workloads import Workload, get_model

    text = _edit(_edit(design_file(get_arch("mugi-256x8")), "cols", "16"), "adders_per_row", "2")
    wide = load_design(_write(tmp_path, text))
    assert (wide.width, wide.adders_per_row, wide.peak_macs_per_cycle) == (16, 2, 512)
    assert sum(m.instances for m in wide.modules if m.name == "adder") == 512
    w16, w8 = Workload(get_model("llama2-7b"), 16, 128), Workload(get_model("llama2-7b"), 8, 128)
    ratio = float(evaluate(wide, w16).throughput_gflops / evaluate(get_arch("mugi-256x8"), w8).throughput_gflops)
    assert ratio == pytest.approx(2.0, rel=0.02)
    # the design's adders == the realistic knob applied to the 1-adder design (same hardware)
    two = load_design(_write(tmp_path, _edit(design_file(get_arch("mugi-256x8")), "adders_per_row", "2")))
    a = evaluate(two, w8, RealisticModel())
    b = evaluate(get_arch("mugi-256x8"), w8, RealisticModel(adders_per_row=2))
    assert float(a.leakage_w) == pytest.approx(float(b.leakage_w), rel=1e-6)  # float32 params
    assert float(a.energy_j) == pytest.approx(float(b.energy_j), rel=1e-6)
    assert float(a.cycles) == float(b.cycles)


def test_cli_design_show_and_cost_with_a_file(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mugi_jax", *a], capture_output=True, text=True)  # noqa: E731
    shown = run("design", "show", "sa-16")
    assert shown.returncode == 0 and shown.stdout.startswith("# sa-16:")
    path = _write(tmp_path, shown.stdout, "sa.toml")
    args = ["--model", "smollm2-135m", "--batch", "2", "--seq-len", "96", "--json"]
    by_file = json.loads(run("cost", "llm", "--arch", str(path), *args).stdout)
    by_name = json.loads(run("cost", "llm", "--arch", "sa-16", *args).stdout)
    assert by_file == by_name
    bad = run("cost", "llm", "--arch", str(_write(tmp_path, _edit(shown.stdout, "size", "12"), "bad.toml")), *args)
    assert bad.returncode == 2 and "size = 12: allowed values are 8, 16, 32, 64" in bad.stderr
    assert "Traceback" not in bad.stderr
    nope = run("design", "show", "gpu-9")
    assert nope.returncode == 2 and "mugi-256x8" in nope.stderr


def test_each_design_names_its_numerics_datapath(tmp_path):
    from mugi_jax import gemm
    from mugi_jax.designs import datapath

    assert datapath(get_arch("mugi-128x8")) == gemm.Mugi(rows=128, cols=8, adders_per_row=1)
    text = _edit(_edit(design_file(get_arch("mugi-256x8")), "cols", "16"), "adders_per_row", "2")
    assert datapath(load_design(_write(tmp_path, text))) == gemm.Mugi(rows=256, cols=16, adders_per_row=2)
    assert datapath(get_arch("sa-16")) == gemm.SystolicMAC()
    assert datapath(get_arch("simd-16")) == gemm.SystolicMAC(tree_width=16)
    assert datapath(get_arch("sa-figna-16")) == gemm.FIGNA()
    assert datapath(get_arch("tensor-8x16x16")) == gemm.SystolicMAC(tree_width=16)
    for name in ARCH_NAMES:
        assert isinstance(datapath(get_arch(name)), gemm.DATAPATHS), name


TOY_FAMILY = '''
"""Toy: a systolic array under another family name (test of family discovery)."""
import dataclasses
import importlib

from mugi_jax.designs._base import DesignFamily, Param, square_derive, square_srams

_s = importlib.import_module("mugi_jax.designs.systolic")  # the name systolic is its builder
PARAMS = (Param("size", "array rows = columns n", (8, 16)),
          *(p for p in _s.PARAMS if p.name.endswith(("_width", "_depth"))))


def build(p):
    arch = _s.build({**p, "variant": "mac"})
    return dataclasses.replace(arch, name=f"toy-{p['size']}", family="toy", params=tuple(p.items()))


FAMILY = DesignFamily(name="toy", doc="toy", order=35, params=PARAMS, build=build,
                      charges=_s.charges, derive=square_derive,
                      builtins={"toy-8": {"size": 8, **square_srams(8)}})
'''


def test_a_family_is_one_module(tmp_path, monkeypatch):
    """A module exporting FAMILY is discovered (in its order), writes and reads its design file,
    and the cost models evaluate it with nothing else edited: the same hardware as SA-8 costs the
    same."""
    from mugi_jax import designs
    from mugi_jax.cost import evaluate
    from mugi_jax.workloads import Workload, get_model

    (tmp_path / "toy.py").write_text(TOY_FAMILY)
    monkeypatch.setattr(designs, "__path__", [*designs.__path__, str(tmp_path)])
    families = designs._discover()
    assert list(families) == ["mugi", "carat", "systolic", "toy", "simd", "tensor", "mixpe"]
    monkeypatch.setattr(designs, "FAMILIES", families)
    toy = families["toy"].make(families["toy"].builtins["toy-8"])
    assert load_design(_write(tmp_path, design_file(toy))) == toy
    w = Workload(get_model("llama2-7b"), 8, 128)
    a, b = evaluate(toy, w), evaluate(get_arch("sa-8"), w)
    assert float(a.energy_j) == float(b.energy_j) and float(a.throughput_gflops) == float(b.throughput_gflops)
