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


@pytest.mark.parametrize("args,needle", [
    (["ppl", "--numerics", "fp8"], "valid: exact, nonlinear-only, pwl, taylor, mugi-l, mugi, mugi-exact"),
    (["ppl", "--corpus", "wiki"], "valid: sotu, brown, austen"),
    (["ppl", "--model", "gpt2"], "valid: smollm2-135m"),
    (["generate", "--prompt", "x", "--model", "gpt2"], "valid: smollm2-135m"),
    (["data", "fetch", "imagenet"], "valid: smollm2, minilm, sotu, brown, austen"),
])
def test_bad_names_list_valid_ones(monkeypatch, capsys, args, needle):
    code, cap = _main(monkeypatch, capsys, args)
    assert code == 2 and needle in cap.err


@pytest.mark.slow
def test_prompt_longer_than_context_fails_clearly(monkeypatch, capsys):
    code, cap = _main(monkeypatch, capsys, ["generate", "--prompt", "word " * 8200,
                                            "--max-new-tokens", "4"])
    assert code == 2 and "exceeds the model's context of 8192 tokens" in cap.err
