"""Error of every nonlinear method (VLP, Mugi-L, PWL, Taylor, exact FP32) against float64.

Run: ``python -m experiments.nonlinear_error [--out results/nonlinear_error] [--seed 0]``.

(a) Sweep: every BF16 value in each function's working range (exp: [-20, 0], the softmax range
    after max subtraction; SiLU/GELU: [-8, 8]); VLP with a per-element window (window_group=1,
    the best case for the window) and with tiles of 256 consecutive sorted values.
(b) Distributions (synthetic; captured LLM activations will be added by the LLM issue):
    softmax of attention-like logits N(0, s^2) for s in {1, 3} (error of the probabilities),
    SiLU/GELU on N(0, 1) and Student-t(3) pre-activations.
Writes ``errors.csv`` (max/mean absolute and relative error per case and method),
``error_vs_input_{fn}.png``, ``exponent_hist_{case}.png`` (histogram of the VLP input exponents
with the stored range and the most frequent window drawn on it) and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mugi_jax import formats, io
from mugi_jax import nonlinear as nl

BF16 = np.dtype(ml_dtypes.bfloat16)
CFG = nl.VLPConfig()
RANGES = {"exp": (-20.0, 0.0), "silu": (-8.0, 8.0), "gelu": (-8.0, 8.0)}


def methods(window_group: int = 256) -> dict[str, object]:
    cfg = nl.VLPConfig(window_group=window_group)
    return {"vlp": cfg, "mugi_l": nl.MugiL(cfg), "vlp_m4": nl.VLPConfig(mantissa_bits=4,
                                                                         window_group=window_group),
            "pwl": nl.PWL(), "taylor": nl.Taylor(), "exact_fp32": nl.Exact()}


def bf16_in_range(lo: float, hi: float) -> np.ndarray:
    v = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(BF16)
    f = v.astype(np.float32)
    keep = np.isfinite(f) & (f >= lo) & (f <= hi)
    return np.unique(f[keep]).astype(BF16)  # sorted, +0 once


def truth(fn: str, x: np.ndarray) -> np.ndarray:
    return nl.reference_f64(fn, np.asarray(x, dtype=np.float64))


def errors(approx: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a = np.asarray(approx, dtype=np.float64)
    err = np.abs(a - ref)
    big = np.abs(ref) > 1e-30
    rel = err[big] / np.abs(ref[big])
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "max_rel": float(rel.max()) if rel.size else 0.0,
            "mean_rel": float(rel.mean()) if rel.size else 0.0, "n": int(a.size)}


def sweep(rows: list[dict], curves: dict) -> None:
    for fn, (lo, hi) in RANGES.items():
        x = bf16_in_range(lo, hi)
        xj = formats.from_numpy(x)
        ref = truth(fn, x.astype(np.float64))
        curves[fn] = {"x": x.astype(np.float64), "ref": ref}
        for group, label in ((1, "g1"), (256, "g256")):
            for name, approx in methods(group).items():
                if group == 1 and name in ("pwl", "taylor", "exact_fp32"):
                    continue
                out = np.asarray(nl.activation(xj, fn, approx)).astype(np.float64)
                key = f"{name}" if name in ("pwl", "taylor", "exact_fp32") else f"{name}_{label}"
                curves[fn][key] = out
                rows.append({"case": f"sweep_{fn}", "function": fn, "method": key, **errors(out, ref)})


def softmax_f64(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def distributions(rows: list[dict], hists: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for scale in (1.0, 3.0):
        x = (rng.standard_normal((4, 256, 256)) * scale).astype(np.float32)
        xb = x.astype(BF16)
        ref = softmax_f64(x.astype(np.float64))  # truth of the FP32 input (BF16 entry rounding counts)
        case = f"softmax_logits_N(0,{scale:g}^2)"
        for name, approx in methods().items():
            out = np.asarray(nl.softmax(jnp.asarray(x), approx=approx)).astype(np.float64)
            rows.append({"case": case, "function": "softmax", "method": name, **errors(out, ref)})
        y = (xb.astype(np.float64) - xb.astype(np.float64).max(-1, keepdims=True))
        hists[case] = (y, "exp", -2)  # softmax groups: rows at one column
    for dist, sample in (("N(0,1)", lambda: rng.standard_normal((512, 1536))),
                         ("t3", lambda: rng.standard_t(3, (512, 1536)))):
        x = sample().astype(np.float32)
        xb = x.astype(BF16).astype(np.float64)
        for fn in ("silu", "gelu"):
            ref = truth(fn, x.astype(np.float64))  # truth of the FP32 input
            case = f"{fn}_{dist}"
            for name, approx in methods().items():
                out = np.asarray(nl.activation(jnp.asarray(x), fn, approx)).astype(np.float64)
                rows.append({"case": case, "function": fn, "method": name, **errors(out, ref)})
            hists[case] = (xb, fn, -1)


def plot_curves(out: Path, curves: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    for fn, c in curves.items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, y in c.items():
            if key in ("x", "ref"):
                continue
            err = np.abs(y - c["ref"]) + 1e-12
            ax.semilogy(c["x"], err, lw=0.7, label=key)
        ax.set_xlabel("input x (every BF16 value in the range)")
        ax.set_ylabel("absolute error |approx(x) - f(x)| (+1e-12, log)")
        ax.set_title(f"{fn}: absolute error vs input")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  title="method", title_fontsize=7)
        name = f"error_vs_input_{fn}.png"
        io.save_figure(fig, out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    return files


def plot_hists(out: Path, hists: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    for case, (vals, fn, group_axis) in hists.items():
        xb = formats.from_numpy(vals.astype(np.float32).astype(BF16))
        e, _ = formats.round_mantissa(xb, CFG.mantissa_bits)
        kind = np.asarray(formats.classify(xb))
        e = np.asarray(e)[kind == formats.Kind.NORMAL]
        # window bottoms per group, from the unit's own rule (rounded exponents of normal values)
        e_all = np.where(np.asarray(formats.classify(xb)) == formats.Kind.NORMAL,
                         np.asarray(formats.round_mantissa(xb, CFG.mantissa_bits)[0]), -(10**6))
        g = np.moveaxis(e_all, group_axis, -1)
        size = min(CFG.window_group, g.shape[-1])
        g = g[..., : (g.shape[-1] // size) * size]
        gmax = g.reshape(g.shape[:-1] + (-1, size)).max(-1)
        top = np.minimum(gmax, CFG.e_top)
        bottom = np.maximum(top - CFG.window + 1, CFG.e_bottom).astype(int).ravel()
        mode_bottom = int(np.bincount(bottom - bottom.min()).argmax() + bottom.min())
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.arange(e.min() - 0.5, e.max() + 1.5)
        ax.hist(e, bins=bins, color="0.6")
        ax.axvspan(CFG.e_bottom - 0.5, CFG.e_top + 0.5, color="tab:blue", alpha=0.12,
                   label=f"stored exponents [{CFG.e_bottom}, {CFG.e_top}]")
        ax.axvspan(mode_bottom - 0.5, mode_bottom + CFG.window - 0.5, color="tab:orange", alpha=0.25,
                   label=f"most frequent window [{mode_bottom}, {mode_bottom + CFG.window - 1}]")
        ax.set_yscale("log")
        ax.set_xlabel("rounded exponent e' of the VLP input (M=3)")
        ax.set_ylabel("count [values] (log)")
        ax.set_title(case)
        ax.legend(fontsize=7)
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in case)
        name = f"exponent_hist_{safe}.png"
        io.save_figure(fig, out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/nonlinear_error")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mugi_jax.report.helpers import script_out_dir

    script_out_dir(args.out)
    t0 = time.time()
    out = Path(args.out)
    rows: list[dict] = []
    curves: dict = {}
    hists: dict = {}
    sweep(rows, curves)
    distributions(rows, hists, args.seed)
    io.write_csv(out / "errors.csv", rows)
    files = plot_curves(out, curves) + plot_hists(out, hists)
    io.write_json(out / "provenance.json", io.provenance(
        {"config": CFG, "ranges": RANGES, "files": ["errors.csv", *files]}, args.seed,
        wall_time_s=time.time() - t0))
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':{width}s} {'method':16s} {'max_abs':>10s} {'mean_abs':>10s} {'max_rel':>10s} {'mean_rel':>10s}")
    for r in rows:
        print(f"{r['case']:{width}s} {r['method']:16s} {r['max_abs']:10.3g} {r['mean_abs']:10.3g} "
              f"{r['max_rel']:10.3g} {r['mean_rel']:10.3g}")
    print(f"wrote {out}/ ({len(files)} figures) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
