"""experiments/quant_pareto.py without a model (choice costs, Pareto front, cost ordering) and
`mugi-jax report --weights DIR` refusing a directory made for another model or scheme."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import quant_pareto as qp

REPO = Path(__file__).resolve().parents[1]
MUGI = [sys.executable, "-c", "from mugi_jax.cli import main; main()"]


def _row(fmt, group, method, kv, ppl, mj, cyc):
    return {"format": fmt, "group": group, "method": method, "kv": kv, "head": "bf16", "ppl_mean": ppl,
            "mj_per_token": mj, "cycles_per_token": cyc}


def test_choice_costs_pair_rows_differing_in_one_axis():
    rows = [_row("signmag", 32, "rtn", "per_token", 40.0, 1.0, 100.0),
            _row("asym", 32, "rtn", "per_token", 30.0, 1.1, 112.0),
            _row("signmag", 32, "awq", "per_token", 32.0, 1.0, 100.0),
            _row("asym", 32, "awq", "per_token", 28.0, 1.1, 112.0),
            _row("signmag", 32, "rtn", "kivi", 38.0, 1.02, 100.1)]
    got = {c["choice"]: c for c in qp.choice_costs(rows)}
    asym = got["format = asym (vs signmag)"]
    assert asym["pairs"] == 2  # rtn and awq
    assert asym["ppl_change_pct"] == pytest.approx(((30 / 40 - 1) + (28 / 32 - 1)) / 2 * 100)
    assert asym["energy_change_pct"] == pytest.approx(10.0)
    assert got["method = awq (vs rtn)"]["pairs"] == 2
    kivi = got["kv = kivi (vs per_token)"]
    assert kivi["pairs"] == 1 and kivi["ppl_change_pct"] == pytest.approx(-5.0)


def test_pareto_front():
    pts = [(1.0, 10.0), (1.1, 5.0), (1.2, 6.0), (0.9, 20.0), (1.0, 12.0)]
    assert qp.pareto_front(pts) == [0, 1, 3]


def test_cost_orders_the_formats():
    """Same codes statistics for all (none measured): asymmetric costs the 9-cycle sweep, two's
    complement the 16-cycle one; KIVI moves more bytes than per-token keys; larger groups fewer."""
    sm = qp.cost_of("signmag", 32, "per_token", {})
    asym = qp.cost_of("asym", 32, "per_token", {})
    int4 = qp.cost_of("int4", 32, "per_token", {})
    assert sm["cycles_per_token"] < asym["cycles_per_token"] < int4["cycles_per_token"]
    assert sm["mj_per_token"] < asym["mj_per_token"] < int4["mj_per_token"]
    # a BF16 LM head on the vector unit costs more than the INT4 one on the array
    assert qp.cost_of("signmag", 32, "per_token", {}, "int4")["mj_per_token"] < sm["mj_per_token"]
    kivi = qp.cost_of("signmag", 32, "kivi", {})
    assert kivi["dram_kb_per_token"] > sm["dram_kb_per_token"]
    assert qp.cost_of("signmag", 128, "per_token", {})["dram_kb_per_token"] < sm["dram_kb_per_token"]


def test_default_subset_and_full_grid():
    assert len(qp.settings(False, True)["configs"]) == 72 + 3
    d = qp.settings(False, False)
    assert d["configs"] == qp.DEFAULT_CONFIGS and d["max_tokens"] <= 1024


def _weights_dir(tmp_path: Path, model: str, scheme: str) -> Path:
    from mugi_jax.models import quantize

    spec = quantize.QuantSpec(model, "rtn", scheme, 32, "brown", 4096)
    return quantize.save(tmp_path / f"{model}-{scheme}", quantize.QuantizedWeights(spec, {}, {}))


@pytest.mark.parametrize("model,scheme,needle", [
    ("gemma3-270m", "signmag", "holds weights for model 'gemma3-270m'"),
    ("smollm2-135m", "asym", "holds asym weights"),
])
def test_report_refuses_weights_for_another_model_or_scheme(tmp_path, model, scheme, needle):
    d = _weights_dir(tmp_path, model, scheme)
    r = subprocess.run(MUGI + ["report", "--weights", str(d), "--out", str(tmp_path / "res")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--weights" in r.stderr and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "res" / "report.md").exists()


def test_report_refuses_a_missing_weights_dir(tmp_path):
    r = subprocess.run(MUGI + ["report", "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "res")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "--weights" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tiny():
    from flax import nnx

    from mugi_jax.models import Llama
    from mugi_jax.models.config import LlamaConfig

    cfg = LlamaConfig(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      ffn_dim=96, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True,
                      max_seq_len=64, bos_id=1, eos_id=2)
    return Llama(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("fmt", ["signmag", "int4", "asym"])
def test_measured_cycles_equal_a_direct_count(tiny, fmt):
    """The experiment's cycles per k-step (the datapath's subscription_cycles on the codes the
    policy runs) against a NumPy count from the round-to-nearest codes: per (k-step, tile of
    256 rows) max(largest swept magnitude + 1, the 8 columns / 1 adder), averaged per role."""
    import numpy as np

    from mugi_jax import numerics, quant

    policy = numerics.mugi_policy(fmt, 32, "rtn", "kivi")
    got = qp.measured_cycles_per_kstep(tiny, policy)
    scheme = {"signmag": quant.SignMagnitudeInt4(group_size=32, axis=0),
              "int4": quant.Int4(group_size=32, axis=0, calibration="minmax"),
              "asym": quant.AsymUInt4(group_size=32, axis=0)}[fmt]
    for attr, role in qp.ROLE_OF_PROJ.items():
        per_layer = []
        for block in tiny.layers:
            lin = block
            for part in attr.split("."):
                lin = getattr(lin, part)
            codes = np.asarray(quant.quantize(lin.kernel.get_value(), scheme).codes, np.int64)
            mag = np.abs(codes - 8) if fmt == "asym" else np.abs(codes)
            n = mag.shape[1]
            tiles = [mag[:, j:j + 256].max(axis=1) for j in range(0, n, 256)]
            per_layer.append(np.mean(np.maximum(np.stack(tiles, 1) + 1, 8)))
        assert got[role] == pytest.approx(float(np.mean(per_layer)), rel=1e-6), role
        assert 8.0 <= got[role] <= (8.0 if fmt == "signmag" else 9.0)


@pytest.mark.parametrize("config", [("int4", 32, "rtn", "per_token", "int4"),
                                    ("asym", 64, "rtn", "kivi", "bf16")])
def test_every_format_runs_end_to_end(tiny, config):
    """Each kind of configuration the experiment builds evaluates (finite perplexity): two's
    complement on the 4-bit array with an INT4 head and per-token KV, asymmetric with KIVI."""
    import math

    import numpy as np

    from mugi_jax import eval as ev
    from mugi_jax import numerics

    fmt, group, method, kv, head = config
    policy = numerics.mugi_policy(fmt, group, method, kv, lm_head=head)
    ids = np.random.default_rng(0).integers(3, 101, 48).tolist()
    r = ev.perplexity(tiny, ids, policy, context=24, max_tokens=48, batch_size=2)
    assert math.isfinite(r["ppl"]) and r["ppl"] > 1
