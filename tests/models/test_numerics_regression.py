"""Behaviour preservation: SmolLM2-135M logits on one short SOTU window under every numerics preset.

The fingerprints below were recorded before the numerics API was rewritten as rules over named ops
(issue 14; the mugi presets on main at 07b09d8, after issue 15 moved them to GPTQ-ready g32
weights, a KIVI cache and a BF16 head); every preset must still give bit-identical logits (the
SHA-256 of the float32 logits bytes, plus a few values so a failure says how far off it is).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WINDOW = 32

#: preset -> (sha256 of the float32 logits (1, WINDOW, vocab), logits[0, -1, :4], logits.sum())
FINGERPRINTS = {
    "exact": (
        "d1c11ebda3e8323ea3a6823a5cdc5b37b8906fcaad8cb7f9fee62bfac2bd0cf0",
        [2.9546172618865967, -2.564588785171509, 2.2377877235412598, -2.696159601211548], -2021725.101820625),
    "nonlinear-only": (
        "845dc519cb5999afe9357c8ce111259c2e5391c09711c67a471e063b7891bf10",
        [3.399765968322754, -2.1366443634033203, 2.7616822719573975, -2.2838070392608643], -1880045.5075415266),
    "pwl": (
        "4cfb4b7f529161a15aec71c68d106328007ac12b431a871347974fa2a87d0b23",
        [3.1686501502990723, -2.890578269958496, 1.9465124607086182, -2.7132973670959473], -2201959.9572267774),
    "taylor": (
        "06fd0de9f25d57f9c09596ce929b0a9b2e84e4d3f12505fb90c41fc35b0ba505",
        [2.6300861835479736, -2.08138108253479, 2.669074058532715, -2.157928228378296], -443064.013468039),
    # Mugi-L differs from VLP in cost only (added after the rewrite: same fingerprint as VLP)
    "mugi-l": (
        "845dc519cb5999afe9357c8ce111259c2e5391c09711c67a471e063b7891bf10",
        [3.399765968322754, -2.1366443634033203, 2.7616822719573975, -2.2838070392608643], -1880045.5075415266),
    "mugi": (
        "61ee22ce09ed7c623603a884d5d29dd4aeb7dcf519e775970ca097d49ef16008",
        [3.427853584289551, -1.3317325115203857, 3.3751602172851562, -0.6448194980621338], 1639166.287301181),
    "mugi-exact": (
        "61ee22ce09ed7c623603a884d5d29dd4aeb7dcf519e775970ca097d49ef16008",
        [3.427853584289551, -1.3317325115203857, 3.3751602172851562, -0.6448194980621338], 1639166.287301181),
    "mugi-asym": (
        "57419166888ddd85bad676a910b85638249d35d1851d612f9145e9f30c98d247",
        [2.8053131103515625, -2.8242573738098145, 2.0078067779541016, -3.0011470317840576], -2160486.790008381),
}


@pytest.fixture(scope="module")
def smollm2_window():
    from mugi_jax import data, eval as ev, models

    try:
        model, tok, _ = models.load("smollm2-135m")
        text = data.corpus_text("sotu")
    except data.DataError as err:  # pragma: no cover - data not fetched
        pytest.skip(str(err))
    ids = ev.corpus_tokens(tok, text, WINDOW)
    return model, np.asarray([ids[:WINDOW]], np.int32)


def fingerprint(model, tokens, name):
    from mugi_jax import models, numerics

    policy = numerics.preset(name)
    logits, _ = models.forward(models.prepare(model, policy), tokens, policy)
    arr = np.ascontiguousarray(np.asarray(logits, np.float32))
    return (hashlib.sha256(arr.tobytes()).hexdigest(), [float(v) for v in arr[0, -1, :4]],
            float(arr.astype(np.float64).sum()))


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_preset_logits_bit_identical(smollm2_window, name):
    model, tokens = smollm2_window
    digest, head, total = fingerprint(model, tokens, name)
    want_digest, want_head, want_total = FINGERPRINTS[name]
    assert (head, total) == (want_head, want_total) and digest == want_digest, (name, head, total)


def test_every_preset_has_a_fingerprint():
    from mugi_jax import numerics

    assert set(FINGERPRINTS) == set(numerics.PRESETS)
