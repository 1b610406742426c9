"""Nonlinear input distributions: BF16 exponent histograms of the softmax and SiLU inputs of every
SmolLM2-135M layer (activation capture on SOTU text), with the VLP unit's stored exponent range
and window drawn.

    python -m experiments.nonlinear_inputs [--quick] [--force] [--out results]

Softmax inputs are the attention scores minus their row maximum (what the exp table sees; masked
entries excluded); SiLU inputs are the gate pre-activations.  The default ``VLPConfig`` stores
exponents [e_top - L + 1, e_top] (L = 12) and streams a window of W = 8 exponents per tile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mugi_jax.report.helpers import corpus_or_none, figure, load_smollm2, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Nonlinear input distributions (SmolLM2 exponent histograms)",
    "section": "Numerics", "needs": "model", "in_quick": True, "est_s": 40, "order": 10,
}

EXP_LO, EXP_HI = -30, 8  # unbiased exponent range shown
OP_PATH = {"softmax": "attn.softmax", "silu": "mlp.act"}  # captured op of each function


def _exponents(x: np.ndarray) -> np.ndarray:
    """Unbiased exponents of the nonzero finite values of ``x`` rounded to BF16."""
    import ml_dtypes

    xb = np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    xb = xb[np.isfinite(xb) & (xb != 0)]
    return np.floor(np.log2(np.abs(xb))).astype(np.int64)


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from mugi_jax import eval as ev
    from mugi_jax import nonlinear as nl
    from mugi_jax.models.capture import capture_activations
    from mugi_jax.report.registry import Unavailable

    out_dir = Path(out_dir)
    model, tok, cfg = load_smollm2()
    text = corpus_or_none("sotu")
    if text is None:
        raise Unavailable("the sotu corpus is not fetched; run `mugi-jax data fetch sotu`")
    seq, batch = (128, 1) if quick else (512, 1)
    toks = np.asarray(ev.corpus_tokens(tok, text, seq * batch), np.int32)[: seq * batch].reshape(batch, seq)
    _, recs = capture_activations(model, toks, "exact", mode="full", include=("attn.softmax", "mlp.act"))
    vcfg = nl.VLPConfig()
    e_top, e_bot, w = vcfg.e_top, vcfg.e_top - vcfg.lut_exponents + 1, vcfg.window
    bins = np.arange(EXP_LO, EXP_HI + 1)
    rows, heat = [], {}
    for fn in ("softmax", "silu"):
        heat[fn] = []
        for layer in range(cfg.n_layers):
            x = np.asarray(recs[f"layers.{layer}.{OP_PATH[fn]}"], np.float32)
            if fn == "softmax":
                finite = np.isfinite(x)
                mx = np.max(np.where(finite, x, -np.inf), axis=-1, keepdims=True)
                x = np.where(finite, x - mx, np.nan)
                x = x[np.isfinite(x)]
            e = _exponents(x.reshape(-1))
            n_zero = x.size - e.size
            h = np.array([(np.clip(e, EXP_LO, EXP_HI) == b).sum() for b in bins], np.float64)
            heat[fn].append(h / max(h.sum(), 1))
            top = int(np.max(e)) if e.size else 0
            rows.append({"function": fn, "layer": layer, "elements": int(x.size), "zeros": int(n_zero),
                         "exp_min": int(e.min()) if e.size else 0, "exp_max": top,
                         "exp_median": float(np.median(e)) if e.size else 0.0,
                         "frac_in_stored_range": float(np.mean((e >= e_bot) & (e <= e_top))) if e.size else 0.0,
                         "frac_below_range": float(np.mean(e < e_bot)) if e.size else 0.0,
                         "frac_above_range": float(np.mean(e > e_top)) if e.size else 0.0,
                         "frac_in_top_window": float(np.mean((e <= min(top, e_top)) & (e > min(top, e_top) - w))) if e.size else 0.0})
    tables = [table(out_dir, "exponent_stats.csv", rows, f"Exponent statistics per layer (SmolLM2-135M, {batch}x{seq} SOTU tokens)")]
    figures = []
    with figure(out_dir / "exponent_histograms.png", 1, 2, figsize=(14, 5)) as (fig, ax):
        for k, fn in enumerate(("softmax", "silu")):
            im = ax[k].imshow(np.log10(np.array(heat[fn]) + 1e-6), aspect="auto", origin="lower",
                              extent=(EXP_LO - 0.5, EXP_HI + 0.5, -0.5, cfg.n_layers - 0.5), cmap="viridis", vmin=-6, vmax=0)
            ax[k].axvspan(e_bot - 0.5, e_top + 0.5, color="w", alpha=0.12)
            ax[k].axvline(e_bot - 0.5, color="w", ls="--", lw=1, label=f"stored range [{e_bot}, {e_top}]")
            ax[k].axvline(e_top + 0.5, color="w", ls="--", lw=1)
            ax[k].axvline(e_top - w + 0.5, color="r", ls=":", lw=1.2, label=f"top window (W = {w})")
            ax[k].set_xlabel("unbiased BF16 exponent" + (" of x - max(x)" if fn == "softmax" else ""))
            ax[k].set_ylabel("layer")
            ax[k].set_title(f"{fn} input exponents (log10 fraction)", fontsize=9)
            ax[k].legend(fontsize=7, loc="upper left")
            fig.colorbar(im, ax=ax[k])
    figures.append({"file": "exponent_histograms.png", "caption": "Per-layer exponent histograms of the nonlinear inputs with the stored range and window"})
    readings = []
    for fn in ("softmax", "silu"):
        sel = [r for r in rows if r["function"] == fn]
        tot = sum(r["elements"] - r["zeros"] for r in sel)
        inr = sum(r["frac_in_stored_range"] * (r["elements"] - r["zeros"]) for r in sel) / max(tot, 1)
        below = sum(r["frac_below_range"] * (r["elements"] - r["zeros"]) for r in sel) / max(tot, 1)
        above = sum(r["frac_above_range"] * (r["elements"] - r["zeros"]) for r in sel) / max(tot, 1)
        worst = min(sel, key=lambda r: r["frac_in_stored_range"])
        pct = lambda v: f"{100 * v:.3g}%"  # noqa: E731
        readings.append(f"{fn}: {pct(inr)} of nonzero inputs fall in the stored exponent range [{e_bot}, {e_top}], "
                        f"{pct(below)} below it (tail rule), {pct(above)} above it; worst layer {worst['layer']} "
                        f"({pct(worst['frac_in_stored_range'])} in range, exponents {worst['exp_min']}..{worst['exp_max']}).")
    return {"tables": tables, "figures": figures, "readings": readings, "comparisons": [], "headline": {},
            "config": {"tokens": [batch, seq], "corpus": "sotu", "vlp": {"e_top": e_top, "lut_exponents": vcfg.lut_exponents, "window": w}}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("nonlinear_inputs")
