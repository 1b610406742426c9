"""Every built-in design and preset gives bit-identical ``mugi-jax cost llm/gemm --json`` figures to
the values recorded in ``tests/cost/data/cost_cli_fixture.json`` (by ``scripts/record_cost_fixture.py``
before the designs-as-data refactor, issue 18).  A change meant to move cost figures re-records the
fixture and says why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = json.loads((ROOT / "tests" / "cost" / "data" / "cost_cli_fixture.json").read_text())


def _recorder():
    spec = importlib.util.spec_from_file_location("record_cost_fixture", ROOT / "scripts" / "record_cost_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_fixture_covers_every_built_in_design_and_preset():
    from mugi_jax.cost import PRESETS
    from mugi_jax.hw import ARCH_NAMES

    rec = _recorder()
    assert [(c, kw) for c, kw in rec.cases()] == [(r["command"], r["args"]) for r in FIXTURE]
    assert {r["args"]["arch"] for r in FIXTURE} == set(ARCH_NAMES)
    assert {r["args"]["preset"] for r in FIXTURE} == set(PRESETS)


@pytest.mark.parametrize("command", ["llm", "gemm"])
def test_cost_json_is_bit_identical_to_the_recorded_values(command):
    rec = _recorder()
    for case in FIXTURE:
        if case["command"] != command:
            continue
        got = json.loads(json.dumps(rec.run(command, case["args"])))
        assert got == case["result"], case["args"]
