"""Model-level calibrated quantization on a tiny random Llama: every method, AWQ folds keep the
function, save/load round trip, and a directory for another model/scheme is refused."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import numerics, quant
from mugi_jax.models import llama
from mugi_jax.models import quantize as mq


def _stats(model, seed=0, windows=2, context=32):
    ids = np.random.default_rng(seed).integers(3, model.config.vocab_size, windows * context)
    return mq.collect_statistics(model, ids.tolist(), context), ids


def _logits(model, ids):
    return np.asarray(llama.forward(model, jnp.asarray(ids[None, :32]), "exact")[0])


@pytest.mark.parametrize("method", mq.METHODS)
def test_methods_quantize_every_projection(tiny_model, method):
    stats, ids = _stats(tiny_model)
    spec = mq.QuantSpec("tiny", method, "asym", 32, "sotu", 128)
    qw = mq.quantize_model(tiny_model, stats, spec)
    assert len(qw.kernels) == 7 * tiny_model.config.n_layers
    for name, q in qw.kernels.items():
        assert isinstance(q, quant.QuantizedTensor) and isinstance(q.scheme, quant.AsymUInt4)
    qm = mq.apply_weights(tiny_model, qw)
    ref, out = _logits(tiny_model, ids), _logits(qm, ids)
    assert np.all(np.isfinite(out))
    # one INT4 group per input of the tiny model: logits stay within 60% of the FP model's
    assert np.mean(np.abs(out - ref)) < 0.6 * np.mean(np.abs(ref))
    if method in ("clip", "gptq"):  # calibrated on these very tokens: better than RTN
        rtn = mq.apply_weights(tiny_model, mq.quantize_model(
            tiny_model, None, dataclasses.replace(spec, method="rtn")))
        assert np.mean((out - ref) ** 2) < np.mean((_logits(rtn, ids) - ref) ** 2)
    if method == "awq":  # folds: the norms changed, the FP function did not
        assert set(qw.params) == {f"layers.{i}.{n}.scale" for i in range(2)
                                  for n in ("attn_norm", "mlp_norm")}


def test_awq_fold_is_exact_without_quantization(tiny_model):
    """With the quantizer replaced by the identity (tiny step), folded norms and scaled kernels
    compute the original function."""
    stats, ids = _stats(tiny_model)
    spec = mq.QuantSpec("tiny", "awq", "asym", 32, "sotu", 128)
    qw = mq.quantize_model(tiny_model, stats, spec)
    # dequantized kernels (quantization error included) -> compare to RTN's error level
    fp = mq.apply_weights(tiny_model, qw)
    rtn = mq.apply_weights(tiny_model, mq.quantize_model(tiny_model, None,
                                                         dataclasses.replace(spec, method="rtn")))
    ref = _logits(tiny_model, ids)
    e_awq = np.mean((_logits(fp, ids) - ref) ** 2)
    e_rtn = np.mean((_logits(rtn, ids) - ref) ** 2)
    assert e_awq < 2.0 * e_rtn  # tiny random model: not worse than RTN by much


def test_save_load_round_trip_and_refusals(tiny_model, tmp_path):
    stats, ids = _stats(tiny_model)
    spec = mq.QuantSpec("tiny", "gptq", "signmag", 32, "sotu", 128)
    qw = mq.quantize_model(tiny_model, stats, spec)
    mq.save(tmp_path / "w", qw)
    back = mq.load(tmp_path / "w", model="tiny")
    assert back.spec == spec and set(back.kernels) == set(qw.kernels)
    for k, q in qw.kernels.items():
        assert np.array_equal(np.asarray(back.kernels[k].codes), np.asarray(q.codes))
        assert np.array_equal(np.asarray(back.kernels[k].scales), np.asarray(q.scales))
        assert back.kernels[k].scheme == q.scheme
    assert (tmp_path / "w" / "provenance.json").is_file()
    with pytest.raises(mq.WeightsError, match="--weights: .* holds weights for model 'tiny'"):
        mq.load(tmp_path / "w", model="smollm2-135m")
    with pytest.raises(mq.WeightsError, match="--weights: .* has no weights.safetensors"):
        mq.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "weights.safetensors").write_bytes(b"not a file")
    with pytest.raises(mq.WeightsError, match="--weights: cannot read"):
        mq.load(tmp_path / "bad")
    # the policy refuses weights of another scheme
    qm = mq.apply_weights(tiny_model, back)
    with pytest.raises(ValueError, match="weights"):
        numerics.check_weights_scheme(numerics.preset("mugi-asym"), back.spec)
    out = np.asarray(llama.forward(qm, jnp.asarray(ids[None, :32]), "mugi")[0])
    assert np.all(np.isfinite(out))


def test_bad_spec_and_calibration():
    with pytest.raises(ValueError, match="method"):
        mq.QuantSpec("tiny", "hqq", "asym", 32, "sotu", 128)
    with pytest.raises(ValueError, match="group"):
        mq.QuantSpec("tiny", "rtn", "asym", 48, "sotu", 128)

    class Tok:
        def encode(self, text):
            return list(text.encode())

    text = "x" * 20000
    with pytest.raises(ValueError, match="calib_tokens: need at least"):
        mq.calibration_ids(Tok(), text, 10)
    with pytest.raises(ValueError, match="overlap"):
        mq.calibration_ids(Tok(), text, 8000)
    ids = mq.calibration_ids(Tok(), "y" * 40000, 256)
    assert len(ids) == 256


def test_weights_for_checks_model_and_scheme(tiny_model, tmp_path):
    spec = mq.QuantSpec("tiny", "rtn", "signmag", 32, "sotu", 128)
    mq.save(tmp_path / "w", mq.quantize_model(tiny_model, None, spec))
    for name in ("mugi", "exact"):  # sign-magnitude projections, or FP (dequantized)
        m, info = mq.weights_for(tiny_model, None, "tiny", numerics.preset(name), tmp_path / "w")
        assert info["method"] == "rtn" and info["dir"] == str(tmp_path / "w")
        assert isinstance(m.layers[0].attn.q_proj.kernel.get_value(), quant.QuantizedTensor)
    with pytest.raises(mq.WeightsError, match="holds signmag weights but numerics 'mugi-asym'"):
        mq.weights_for(tiny_model, None, "tiny", numerics.preset("mugi-asym"), tmp_path / "w")
    with pytest.raises(mq.WeightsError, match="for model 'tiny', not 'other'"):
        mq.weights_for(tiny_model, None, "other", numerics.preset("mugi"), tmp_path / "w")
    # no directory, an RTN recipe (or none): the model is returned as is
    assert mq.weights_for(tiny_model, None, "tiny", numerics.preset("exact"))[1] is None


def test_cached_recipe_weights_are_never_reused_for_another_recipe(tiny_model, tmp_path, monkeypatch):
    """A cache directory whose file was made for another spec (here: asym weights where the
    signmag recipe's slug points) is rebuilt, not used."""
    from mugi_jax import data

    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path))
    policy = numerics.preset("mugi")  # recipe: AWQ signmag g32 on brown
    r = policy.weights
    want = mq.QuantSpec("tiny", r.method, r.scheme, r.group, r.calib_corpus, r.calib_tokens)
    other = dataclasses.replace(want, method="rtn", scheme="asym")
    where = mq.cache_dir(want)
    mq.save(where, mq.quantize_model(tiny_model, None, other))
    data.stamp_derived(where / mq.WEIGHTS_FILE)  # intact file, wrong contents
    built = []

    def fake_build(model, tok, spec, text, context=512, progress=False):
        built.append(spec)
        return mq.quantize_model(model, None, dataclasses.replace(spec, method="rtn")), {}

    monkeypatch.setattr(mq, "build", fake_build)
    monkeypatch.setattr(data, "corpus_text", lambda name, **kw: "")
    m, info = mq.weights_for(tiny_model, None, "tiny", policy)
    assert built == [want]  # rebuilt for the recipe's own spec
    assert m.layers[0].attn.q_proj.kernel.get_value().scheme == quant.SignMagnitudeInt4(group_size=32, axis=0)
