"""``mugi-jax ppl`` / ``generate`` / ``data fetch`` on the real model (small sizes) and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mugi_jax.cli import app, main

runner = CliRunner()


def _run(args):
    r = runner.invoke(app, args)
    return r


def _main(monkeypatch, capsys, args):
    monkeypatch.setattr("sys.argv", ["mugi-jax", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


@pytest.mark.slow
def test_ppl_json_and_generate():
    r = _run(["ppl", "--corpus", "sotu", "--numerics", "exact", "--context", "128",
              "--max-tokens", "512", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["predicted_tokens"] == 4 * 127 and 5 < out["ppl"] < 100
    r = _run(["generate", "--prompt", "The capital of France is", "--max-new-tokens", "4",
              "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.output)
    assert len(g["completions"]) == 1 and len(g["tokens"][0]) == 4
    # every op overridden back to exact: the same perplexity as --numerics exact
    r = _run(["ppl", "--corpus", "sotu", "--numerics", "nonlinear-only", "--override", ".*=exact",
              "--context", "128", "--max-tokens", "512", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ppl"] == out["ppl"]


@pytest.mark.slow
def test_numerics_describe_with_overrides():
    r = _run(["numerics", "--numerics", "mugi", "--override", "lm_head=exact",
              "--override", r"layers\.0\..*=nonlinear-only", "--json"])
    assert r.exit_code == 0, r.output
    ops = json.loads(r.output)["ops"]
    assert len(ops) == 30 * 12 + 1
    assert ops["lm_head"] == "linear: fp32" and ops["layers.0.attn.q_proj"] == "linear: fp32"
    assert ops["layers.1.attn.q_proj"] == "linear: Mugi/SignMagnitudeInt4/fast"
    assert ops["layers.0.mlp.act"] == "activation: VLPConfig"


@pytest.mark.parametrize("args,needle", [
    (["ppl", "--numerics", "fp8"], "valid: exact, nonlinear-only, pwl, taylor, mugi-l, mugi, mugi-exact"),
    (["ppl", "--corpus", "wiki"], "valid: sotu, brown, austen"),
    (["ppl", "--model", "gpt2"], "valid: smollm2-135m"),
    (["generate", "--prompt", "x", "--model", "gpt2"], "valid: smollm2-135m"),
    (["data", "fetch", "imagenet"], "valid: smollm2, minilm, gemma3, sotu, brown, austen"),
    (["ppl", "--override", "lm_head"], "--override: must be PATTERN=PRESET, got 'lm_head'"),
    (["ppl", "--override", "lm_head=fp8"], "--override: unknown numerics preset 'fp8'"),
    (["generate", "--prompt", "x", "--override", "(=exact"], "--override: pattern '('"),
    (["numerics", "--override", "layer0=exact"], "--override: numerics rule pattern(s) 'layer0'"),
])
def test_bad_names_list_valid_ones(monkeypatch, capsys, args, needle):
    code, cap = _main(monkeypatch, capsys, args)
    assert code == 2 and needle in cap.err


@pytest.mark.slow
def test_prompt_longer_than_context_fails_clearly(monkeypatch, capsys):
    code, cap = _main(monkeypatch, capsys, ["generate", "--prompt", "word " * 8200,
                                            "--max-new-tokens", "4"])
    assert code == 2 and "exceeds the model's context of 8192 tokens" in cap.err


@pytest.mark.parametrize("args, message", [
    (["quantize", "--out", "OUT", "--method", "hqq"], "--method 'hqq': not valid"),
    (["quantize", "--out", "OUT", "--scheme", "nf4"], "--scheme 'nf4': not valid"),
    (["quantize", "--out", "OUT", "--group", "48"], "--group 48: not valid"),
    (["quantize", "--out", "OUT", "--calib-tokens", "10"], "--calib-tokens"),
    (["quantize", "--out", "OUT", "--calib-corpus", "wiki"], "--calib-corpus 'wiki'"),
    (["ppl", "--weights", "NOWHERE"], "--weights: NOWHERE has no weights.safetensors"),
    (["generate", "--prompt", "x", "--weights", "NOWHERE"], "--weights: NOWHERE has no"),
])
def test_quantize_and_weights_bad_input(monkeypatch, capsys, tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("OUT", "NOWHERE") else a for a in args]
    code, cap = _main(monkeypatch, capsys, args)
    assert code == 2
    err = cap.err.strip()
    assert message.replace("NOWHERE", str(tmp_path / "NOWHERE")) in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
