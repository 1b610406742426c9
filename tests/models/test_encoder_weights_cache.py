"""Encoder AWQ weights are cached on disk like the decoders' (``quantize.cached_encoder_weights``):
a second build loads bit-identical weights; the key covers the model's parameters, the
calibration ids and the recipe; a damaged file is rebuilt (tiny random encoder)."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from mugi_jax import numerics
from mugi_jax.models import quantize as mq
from mugi_jax.models.bert import Bert
from mugi_jax.models.config import BertConfig

CFG = BertConfig(vocab_size=61, dim=64, n_layers=1, n_heads=2, head_dim=32, ffn_dim=128,
                 max_positions=128, max_seq_len=128)
RECIPE = numerics.WeightRecipe(method="awq", scheme="signmag", group=32, calib_tokens=256)


def _same(a: mq.QuantizedWeights, b: mq.QuantizedWeights) -> bool:
    if a.kernels.keys() != b.kernels.keys() or a.params.keys() != b.params.keys():
        return False
    return all(np.array_equal(np.asarray(getattr(a.kernels[k], f)), np.asarray(getattr(b.kernels[k], f)))
               for k in a.kernels for f in ("codes", "scales")) and \
        all(np.array_equal(np.asarray(a.params[k]), np.asarray(b.params[k])) for k in a.params)


def test_encoder_weights_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MUGI_JAX_DATA", str(tmp_path))
    model = Bert(CFG, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(3, CFG.vocab_size, 256).tolist()
    built, hit = mq.cached_encoder_weights(model, ids, RECIPE)
    assert not hit and built.spec.model.startswith("encoder-")
    wfile = mq.cache_dir(built.spec) / mq.WEIGHTS_FILE
    assert wfile.is_file() and (wfile.parent / mq.PROVENANCE_FILE).is_file()
    again, hit = mq.cached_encoder_weights(model, ids, RECIPE)
    assert hit and _same(built, again)
    # the key covers the calibration ids, the recipe and the parameters
    other_ids = mq.cached_encoder_weights(model, ids[::-1], RECIPE)
    other_recipe = mq.cached_encoder_weights(model, ids, dataclasses.replace(RECIPE, group=64))
    changed = Bert(CFG, rngs=nnx.Rngs(1))
    other_model = mq.cached_encoder_weights(changed, ids, RECIPE)
    for qw, hit in (other_ids, other_recipe, other_model):
        assert not hit and qw.spec != built.spec
    # a damaged file is rebuilt, to the same weights
    wfile.write_bytes(wfile.read_bytes()[:-7] + b"damaged")
    rebuilt, hit = mq.cached_encoder_weights(model, ids, RECIPE)
    assert not hit and _same(built, rebuilt)
