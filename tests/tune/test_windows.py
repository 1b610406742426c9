"""Per-family VLP windows (``mugi_jax.tune.windows``): the search keeps the best score per
function, and the shipped records are well-formed (the presets' use of them:
tests/test_numerics.py)."""

from __future__ import annotations

import json

import pytest

from mugi_jax import nonlinear as nl
from mugi_jax import numerics


def test_search_picks_each_functions_best_and_keeps_the_default_on_ties(monkeypatch):
    from types import SimpleNamespace

    from mugi_jax.models.config import LlamaConfig
    from mugi_jax.tune import windows

    tiny_model = SimpleNamespace(config=LlamaConfig(  # what the search reads of a model
        vocab_size=101, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48))

    def fake_score(model, tok):  # minimum at softmax e_top 0, activation e_top 2; flat above 3
        def score(p):
            e_sm, e_act = float(p.e_top[0, 0]), float(p.e_top[0, 1])
            return (e_sm - 0) ** 2 + min((e_act - 2) ** 2, 1.0)
        return score, {"objective": "fake", "calibration": "none"}

    monkeypatch.setattr(windows, "_score_fn", fake_score)
    rec = windows.calibrate(tiny_model, None, e_tops=(-1, 0, 1, 2, 3, 4))
    assert rec["softmax"]["e_top"] == 0 and rec["silu"]["e_top"] == 2
    assert rec["family"] == "llama" and rec["activation"] == "silu"
    assert len(rec["trials"]) == 12 and rec["trials"][0]["e_top_softmax"] == 3  # default first
    monkeypatch.setattr(windows, "_score_fn", lambda m, t: (lambda p: 1.0, {}))
    rec = windows.calibrate(tiny_model, None, e_tops=(-1, 0, 1, 2, 3, 4))
    assert rec["softmax"]["e_top"] == rec["silu"]["e_top"] == nl.VLPConfig().e_top


def test_shipped_records_are_well_formed():
    from mugi_jax.tune import windows

    path = numerics.VLP_WINDOWS_FILE
    if not path.is_file():
        pytest.skip("no calibrated windows shipped")
    data = json.loads(path.read_text())
    assert "python -m mugi_jax.tune.windows" in data["what"]
    for rec in data["records"]:
        assert windows.MODELS[rec["family"]] == rec["model"]
        for fn in ("softmax", rec["activation"]):
            assert rec[fn]["e_top"] in rec["e_tops_searched"]
        # the stored choice is the best trial of each function's sweep
        for col, fn in ((0, "softmax"), (1, "activation")):
            sweep = [t for t in rec["trials"] if t["function"] == fn]
            key = "e_top_softmax" if col == 0 else "e_top_activation"
            best = min(sweep, key=lambda t: t["score"])
            chosen = rec["softmax" if col == 0 else rec["activation"]]["e_top"]
            assert best["score"] == min(t["score"] for t in sweep if t[key] == chosen)
