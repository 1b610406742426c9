"""Weight residency (``prepare(model, policy, residency)``, ``--weight-residency``): ``int4`` and
``bf16`` under ``mugi`` give the prepared model's logits bit for bit with fewer resident bytes;
``bf16`` under ``exact`` is the model with every projection weight rounded to BF16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mugi_jax import numerics, quant
from mugi_jax.models import forward, prepare
from mugi_jax.models.llama import resident_bytes


def _tokens(vocab):
    return jax.random.randint(jax.random.key(4), (1, 6), 0, vocab)


def test_mugi_residencies_are_bit_identical_and_smaller(tiny_model):
    policy = numerics.preset("mugi")
    toks = _tokens(tiny_model.config.vocab_size)
    ready = prepare(tiny_model, policy)
    want, _ = forward(ready, toks, policy)
    for residency in ("int4", "bf16"):
        held = prepare(tiny_model, policy, residency)
        got, _ = forward(held, toks, policy)
        np.testing.assert_array_equal(got, want)
        assert resident_bytes(held) < resident_bytes(ready)
    int4 = prepare(tiny_model, policy, "int4")
    assert isinstance(int4.layers[0].mlp.up_proj.kernel.get_value(), quant.QuantizedTensor)
    assert int4.lm_head.kernel.get_value().dtype == jnp.bfloat16


def test_exact_bf16_residency_rounds_the_weights_once(tiny_model):
    toks = _tokens(tiny_model.config.vocab_size)
    got, _ = forward(prepare(tiny_model, "exact", "bf16"), toks, "exact")
    rounded = nnx.clone(tiny_model)
    for block in rounded.layers:
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
                    block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            lin.kernel = nnx.Param(lin.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    ref = prepare(rounded, "exact")
    ref.lm_head.kernel = nnx.Param(ref.lm_head.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    want, _ = forward(ref, toks, "exact")
    np.testing.assert_array_equal(got, want)
    fp32, _ = forward(prepare(tiny_model, "exact"), toks, "exact")
    assert not np.array_equal(got, fp32)  # an opt-in change of numerics
    assert resident_bytes(prepare(tiny_model, "exact", "bf16")) < resident_bytes(prepare(tiny_model, "exact"))


def test_bad_residency(tiny_model):
    with pytest.raises(ValueError, match="keeps no INT4"):
        prepare(tiny_model, "exact", "int4")
    with pytest.raises(ValueError, match="must be one of prepared, bf16, int4"):
        prepare(tiny_model, "exact", "fp8")


def test_cli_int4_residency_needs_an_int4_preset():
    from typer.testing import CliRunner

    from mugi_jax.cli import app
    from mugi_jax.cli._common import CliError

    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--weight-residency", "int4"])
    assert isinstance(r.exception, CliError)  # exit code 2 at the command line
    assert "--weight-residency int4: numerics 'exact' keeps no INT4" in str(r.exception)
