"""A BERT sentence embedding does not depend on how far its batch is padded, under VLP too.

Padding query rows share the softmax's VLP window groups with the valid rows (groups are up to
256 query rows of one head at one key column - the encoder's array mapping).  If a padding row
had finite scores at the valid keys, its largest magnitude could raise the group's window and
clamp the valid rows' small exponents, so the same text would embed differently in a batch with
a longer text.  A padding query therefore sees only itself (tiny random encoder; a narrow window
makes the effect large)."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mugi_jax import numerics
from mugi_jax.models.bert import Bert, encode
from mugi_jax.models.config import BertConfig
from mugi_jax.nonlinear import VLPConfig

CFG = BertConfig(vocab_size=97, dim=48, n_layers=2, n_heads=4, head_dim=12, ffn_dim=96,
                 max_positions=128, max_seq_len=128)


def test_embedding_does_not_depend_on_padding() -> None:
    model = Bert(CFG, rngs=nnx.Rngs(0))
    narrow = numerics.preset("exact").prepend(numerics.Rule(
        re.escape("layers.") + r"\d+" + re.escape(".attn.softmax"),
        numerics.Nonlinear(VLPConfig(window=2, e_top=4), bf16_input=True)), name="narrow")
    ids = np.random.default_rng(0).integers(5, CFG.vocab_size, 20)
    out = {}
    for pad in (24, 96):
        toks = np.zeros((1, pad), np.int32)
        toks[0, :20] = ids
        valid = np.arange(pad)[None] < 20
        for name, pol in (("exact", "exact"), ("narrow", narrow)):
            out[name, pad] = np.asarray(encode(model, jnp.asarray(toks), jnp.asarray(valid), pol))
    # XLA's dots are not row-count invariant (see docs/models.md): the exact embeddings differ in
    # the last bits; VLP may only amplify that a little, never by a window shift
    exact_diff = np.max(np.abs(out["exact", 24] - out["exact", 96]))
    assert exact_diff < 1e-6
    np.testing.assert_allclose(out["narrow", 24], out["narrow", 96], atol=1e-5)
