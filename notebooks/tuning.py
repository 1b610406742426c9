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
# # Tuning the VLP parameters by gradient descent
#
# The VLP unit has discrete knobs per layer and function: the top stored exponent `e_top`, the
# window `W` and the mantissa bits `M`.  `mugi_jax.tune` relaxes them (straight-through rounding)
# and tunes them per layer under a hardware budget, then verifies the discrete result on
# held-out text with the exact kernels.  Here: SmolLM2-135M on SOTU, the paper's budget
# (`M <= 3`, `W <= 8`).
#
# `MUGI_JAX_NOTEBOOK_SMALL=1`: 2 steps, short held-out split.

# %%
import os

import numpy as np

from mugi_jax import models
from mugi_jax.nonlinear import VLPConfig
from mugi_jax.tune import parse_budget, tune
from mugi_jax.tune import pipeline

SMALL = os.environ.get("MUGI_JAX_NOTEBOOK_SMALL") == "1"
STEPS = 2 if SMALL else 30
HELDOUT = 128 if SMALL else 1024

model, tok, cfg = models.load("smollm2-135m")
sp = pipeline.splits(tok, "sotu", calib_tokens=256, heldout_tokens=HELDOUT)
print("calibration tokens", sp.calib_range, "held-out tokens", sp.heldout_range)

# %% [markdown]
# ## Calibrate and tune

# %%
cal, cached = pipeline.cached_calibration(model, sp.calib, "smollm2-135m")
budget = parse_budget("mantissa_bits<=3,window<=8")
res = tune(model, sp.calib, budget, steps=STEPS, calibration=cal)
print(f"proxy {res.proxy:.4g} (start {res.proxy_start:.4g}), {res.model_evals} model evaluations, {res.seconds:.1f} s")
for row in res.config_table()[:: max(1, cfg.n_layers // 6)]:
    print(row)

# %% [markdown]
# ## Verify on held-out text (exact kernels)

# %%
default = [(VLPConfig(), VLPConfig())] * cfg.n_layers
ppl = {"exact FP32": pipeline.heldout_ppl(model, sp.heldout, None),
       "published default (e_top=3)": pipeline.heldout_ppl(model, sp.heldout, default),
       "tuned per layer": pipeline.heldout_ppl(model, sp.heldout, res.configs)}
for k, v in ppl.items():
    print(f"{k:30s} held-out perplexity {v:.4f}")

# %% [markdown]
# ## Which layers moved?

# %%
e_tops = np.array([[c.e_top for c in row] for row in res.configs])
print("softmax e_top per layer:", e_tops[:, 0].tolist())
print("SiLU    e_top per layer:", e_tops[:, 1].tolist())
