"""Regenerate ``mugi_jax/data/cost/code_magnitudes_smollm2.csv`` (and the nonlinear cycle table).

Source: the real SmolLM2-135M-Instruct (``mugi-jax data fetch smollm2``; GGUF Q4_1, dequantized
to float32 by :func:`mugi_jax.models.load`), re-quantized to Mugi's sign-magnitude INT4:

- weights: every projection kernel (k, n) with ``SignMagnitudeInt4(group_size=64, axis=0)``
  (groups of 64 along the reduction k; 64 is the largest power of two dividing d = 576), and the
  tied embedding as the LM head (d, V);
- KV cache: K = x W_k and V = x W_v (pre-RoPE; RoPE rotates pairs of channels and changes the
  per-channel magnitudes only mildly) from the captured inputs of ``k_proj`` / ``v_proj`` on the
  first 256 tokens of the SOTU corpus, quantized per token over the whole head
  (``quantize_kv(SignMagnitudeInt4(group_size=None), "per_token")``);
- nonlinear: the captured softmax / SiLU inputs of every layer through
  :func:`mugi_jax.nonlinear.subscription_cycles` (default VLP config), mean cycles per tile with
  and without early termination, and per sign pass the counts of each element's contribution
  to the pass's sweep (0 = does not subscribe, else latched code + 1) for the analytic model
  (``nonlinear_cycles_smollm2.csv``).

Counts of |code| = 0..7 are written per (tensor, layer, k-class): the k-steps (input channels;
head channels for the KV cache) sorted by mean magnitude and split into 8 equal classes, so the
analytic model can condition the tile distribution on the k-step (outlier channels carry most
full-scale codes).  ``et_measured_smollm2.csv`` holds, per tensor, height and adders per row,
the measured mean cycles per k-step next to the i.i.d. and k-class analytic values.  Run (about 2 minutes)::

    .venv/bin/python scripts/gen_code_magnitudes.py
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "mugi_jax" / "data" / "cost" / "code_magnitudes_smollm2.csv"
OUT_NL = REPO / "mugi_jax" / "data" / "cost" / "nonlinear_cycles_smollm2.csv"
OUT_MEAS = REPO / "mugi_jax" / "data" / "cost" / "et_measured_smollm2.csv"
GROUP = 64
KBINS = 8
TOKENS = 256
WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> None:
    from mugi_jax import data, quant
    from mugi_jax import nonlinear as nl
    from mugi_jax.cost import early_termination as et
    from mugi_jax.models import capture_activations, load

    model, tok, cfg = load("smollm2-135m")
    scheme = quant.SignMagnitudeInt4(group_size=GROUP, axis=0)

    def binned(codes, kaxis: int) -> list[list[int]]:
        """Counts of |code| per class of k-steps: the k indices (input channels) sorted by their
        mean magnitude and split into KBINS equal classes (outlier channels end up together)."""
        m = np.abs(np.asarray(codes, np.int32))
        m = np.moveaxis(m, kaxis, 0).reshape(m.shape[kaxis], -1)  # (k, elements per k)
        order = np.argsort(m.mean(1), kind="stable")
        out = []
        for idx in np.array_split(order, KBINS):
            out.append(np.bincount(m[idx].reshape(-1), minlength=8)[:8].tolist())
        return out

    def measure(name: str, i: int, codes_kn) -> None:
        pm = np.asarray(binned(codes_kn, 0), np.float64)
        for h in et.HEIGHTS:
            if codes_kn.shape[1] < h:
                continue
            for a in et.ADDERS:
                meas.append((name, i, h, a, float(et.measured_cycles_per_kstep(codes_kn, h, a)),
                             float(et.expected_cycles_per_kstep(pm.sum(0), h, a)),
                             float(jnp.mean(et.expected_cycles_per_kstep(pm, h, a)))))

    meas: list[tuple] = []

    rows = []
    for i, layer in enumerate(model.layers):
        mods = {"q_proj": layer.attn.q_proj, "k_proj": layer.attn.k_proj, "v_proj": layer.attn.v_proj,
                "o_proj": layer.attn.o_proj, "gate_proj": layer.mlp.gate_proj,
                "up_proj": layer.mlp.up_proj, "down_proj": layer.mlp.down_proj}
        for name in WEIGHTS:
            codes = quant.quantize(mods[name].kernel[...], scheme).codes  # (k, n)
            rows += [(name, i, b, c) for b, c in enumerate(binned(codes, 0))]
            measure(name, i, codes)
    emb = jnp.asarray(model.embed[...]).T  # (d, V): the tied LM head
    codes = quant.quantize(emb, scheme).codes
    rows += [("embed", 0, b, c) for b, c in enumerate(binned(codes, 0))]

    text = data.corpus_text("sotu")
    ids = tok.encode(text[:20000], bos=True)[:TOKENS]
    _, recs = capture_activations(model, jnp.asarray([ids]), mode="full",
                                  include=("k_proj", "v_proj", "attn.softmax", "mlp.act"))
    kvs = quant.SignMagnitudeInt4(group_size=None)
    import importlib

    vlp_mod = importlib.import_module("mugi_jax.nonlinear.vlp")  # the module, not nonlinear.vlp()
    from mugi_jax.nonlinear.config import VLPConfig
    from mugi_jax.nonlinear.softmax import rows_last, shifted_input

    def pass_values(x, fn: str) -> list[int]:
        """Per element and sign pass (positive, negative), the value it adds to that pass's
        sweep: 0 if it does not subscribe to the pass, else latched code + 1; counts of 0..8."""
        xb = x.astype(jnp.bfloat16)
        if fn == "softmax":
            y, axis = rows_last(shifted_input(xb, -1))
            parts = vlp_mod.vlp_parts(y, "exp", VLPConfig(), axis)
        else:
            parts = vlp_mod.vlp_parts(xb, fn, VLPConfig(), -1)
        out = []
        for sign in (0, 1):
            v = jnp.where(parts.subscribes & (parts.sign == sign), parts.code + 1, 0).reshape(-1)
            out += np.bincount(np.asarray(v), minlength=9)[:9].tolist()
        return out

    nl_rows = []
    for i, layer in enumerate(model.layers):
        for name, lin, tensor in (("k_proj", layer.attn.k_proj, "k_cache"),
                                  ("v_proj", layer.attn.v_proj, "v_cache")):
            x = recs[f"layers.{i}.attn.{name}"]
            kv = (x @ lin.kernel[...]).reshape(-1, cfg.n_kv_heads, cfg.head_dim).transpose(1, 0, 2)
            codes = quant.quantize_kv(kv, kvs, "per_token").codes  # (g, tokens, dh)
            # on the array: k = dh (time), n = tokens (rows), one tile per (sequence, KV head)
            rows += [(tensor, i, b, c) for b, c in enumerate(binned(codes.transpose(2, 0, 1), 0))]
            # every head's (dh, tokens) tile grid; 256 tokens per head, so no H-row tile spans two heads
            measure(tensor, i, codes.transpose(2, 0, 1).reshape(cfg.head_dim, -1))
        for fn, key in (("softmax", "attn.softmax"), ("silu", "mlp.act")):
            x = jnp.asarray(recs[f"layers.{i}.{key}"], jnp.float32)
            if fn == "softmax":  # causal scores: masked entries are -inf; keep the last row block
                x = jnp.where(jnp.isfinite(x), x, -1e4)
            c_et = nl.subscription_cycles(x, fn, early_termination=True)
            c_full = nl.subscription_cycles(x, fn, early_termination=False)
            nl_rows.append((fn, i, float(jnp.mean(c_et)), float(jnp.mean(c_full)))
                           + tuple(pass_values(x, fn)))

    buf = io.StringIO()
    buf.write("# generated by scripts/gen_code_magnitudes.py from SmolLM2-135M-Instruct (GGUF Q4_1 -> f32 -> "
              f"sign-magnitude INT4, weights group {GROUP} along k, KV per token); counts of |code|\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tensor", "layer", "kbin"] + [f"n{i}" for i in range(8)])
    for name, i, b, c in rows:
        w.writerow([name, i, b] + c)
    OUT.write_text(buf.getvalue())
    buf = io.StringIO()
    buf.write("# generated by scripts/gen_code_magnitudes.py: mean cycles per (k-step, full row tile) of the real "
              "codes (measured, gemm.subscription_cycles) vs the analytic i.i.d. model (iid) and the k-class "
              "model (kbinned)\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["tensor", "layer", "height", "adders_per_row", "measured", "iid", "kbinned"])
    for r in meas:
        w.writerow(list(r[:4]) + [f"{v:.6g}" for v in r[4:]])
    OUT_MEAS.write_text(buf.getvalue())
    buf = io.StringIO()
    buf.write("# generated by scripts/gen_code_magnitudes.py: mean VLP nonlinear cycles per tile on captured "
              f"SmolLM2-135M inputs ({TOKENS} SOTU tokens), default VLPConfig\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fn", "layer", "mean_cycles_et", "mean_cycles_full"]
               + [f"{s}{v}" for s in ("pos", "neg") for v in range(9)])
    for r in nl_rows:
        w.writerow([r[0], r[1], f"{r[2]:.6g}", f"{r[3]:.6g}"] + list(r[4:]))
    OUT_NL.write_text(buf.getvalue())
    print(f"wrote {OUT} ({len(rows)} rows) and {OUT_NL} ({len(nl_rows)} rows)")


if __name__ == "__main__":
    main()
