# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of the numerics: VLP vs exact on real activations
#
# We run SmolLM2-135M on a few hundred tokens of State of the Union text, capture the inputs of
# the softmax and SiLU units of every layer, and compare Mugi's value-level-parallel (VLP) table
# approximation with the exact FP32 functions, PWL and Taylor on exactly those inputs.
#
# Set `MUGI_JAX_NOTEBOOK_SMALL=1` for a quick run (the test suite does).

# %%
import os

import jax.numpy as jnp
import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from mugi_jax import data, models
from mugi_jax import eval as ev
from mugi_jax import nonlinear as nl
from mugi_jax.models.capture import capture_activations

SMALL = os.environ.get("MUGI_JAX_NOTEBOOK_SMALL") == "1"
SEQ = 64 if SMALL else 256
LAYERS = (0, 15) if SMALL else (0, 10, 20, 29)

# %% [markdown]
# ## Capture real inputs

# %%
model, tok, cfg = models.load("smollm2-135m")
ids = np.asarray(ev.corpus_tokens(tok, data.corpus_text("sotu", fetch_missing=False), SEQ), np.int32)[None, :SEQ]
_, recs = capture_activations(model, ids, "exact", mode="full", include=("attn.softmax", "mlp.act"))
print(f"{len(recs)} captured tensors, e.g. layers.0.attn.softmax {recs['layers.0.attn.softmax'].shape}")

# %% [markdown]
# ## The four methods on the captured tensors
#
# Softmax is compared row-wise (probabilities); SiLU elementwise. Errors are against float64.

# %%
vlp = nl.VLPConfig()
methods = {"VLP (Mugi)": vlp, "PWL": nl.PWL(), "Taylor": nl.Taylor(), "exact FP32": nl.Exact()}


def ref_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
    e = np.where(np.isfinite(x), np.exp(x - m), 0.0)
    return e / e.sum(-1, keepdims=True)


rows = []
for layer in LAYERS:
    s = jnp.asarray(recs[f"layers.{layer}.attn.softmax"], jnp.float32)
    g = jnp.asarray(recs[f"layers.{layer}.mlp.act"], jnp.float32)
    p_ref = ref_softmax(s)
    g64 = np.asarray(g, np.float64)
    h_ref = g64 / (1 + np.exp(-g64))
    for name, approx in methods.items():
        p = np.asarray(nl.softmax(s, approx=approx), np.float64)
        h = np.asarray(nl.silu(g, approx=approx), np.float64)
        rows.append((layer, name, np.max(np.abs(p - p_ref)), np.mean(np.abs(h - h_ref)), np.max(np.abs(h - h_ref))))

print(f"{'layer':>5} {'method':12} {'softmax max|err|':>17} {'silu mean|err|':>15} {'silu max|err|':>14}")
for r in rows:
    print(f"{r[0]:5d} {r[1]:12} {r[2]:17.3e} {r[3]:15.3e} {r[4]:14.3e}")

# %% [markdown]
# ## Where the error comes from: input exponents vs the stored window
#
# VLP stores exponents `[e_top - L + 1, e_top]` and rounds the mantissa to `M` bits; the error of
# an element is set by its mantissa rounding, and elements outside the stored range take the tail
# rule.  Here are the exponents of `x - max(x)` for one layer's attention scores.

# %%
layer = LAYERS[-1]
x = np.asarray(recs[f"layers.{layer}.attn.softmax"], np.float32)
x = x - np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
x = x[np.isfinite(x) & (x != 0)]
e = np.floor(np.log2(np.abs(x))).astype(int)
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(e, bins=np.arange(e.min(), e.max() + 2) - 0.5)
ax.axvspan(vlp.e_top - vlp.lut_exponents + 0.5, vlp.e_top + 0.5, alpha=0.2, label="stored exponents")
ax.set_yscale("log"), ax.set_xlabel("exponent of x - max(x)"), ax.legend()
ax.set_title(f"layer {layer} softmax inputs")
inside = np.mean((e >= vlp.e_top - vlp.lut_exponents + 1) & (e <= vlp.e_top))
print(f"{inside:.2%} of layer {layer}'s nonzero softmax inputs are inside the stored range")

# %% [markdown]
# ## Element-level comparison
#
# VLP vs exact SiLU on one layer's gate pre-activations: the approximation error is a staircase
# set by the 3-bit mantissa.

# %%
g = jnp.asarray(recs[f"layers.{LAYERS[0]}.mlp.act"], jnp.float32).reshape(-1)[:4096]
h_v = np.asarray(nl.silu(g, approx=vlp), np.float64)
g64 = np.asarray(g, np.float64)
h_ref = g64 / (1 + np.exp(-g64))
fig, ax = plt.subplots(figsize=(7, 3))
ax.scatter(g64, h_v - h_ref, s=2)
ax.set_xlabel("SiLU input"), ax.set_ylabel("VLP - exact")
print(f"SiLU VLP max |err| on {g.size} real inputs: {np.max(np.abs(h_v - h_ref)):.3e}")
