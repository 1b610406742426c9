"""Approximation error per method (VLP, Mugi-L, PWL, Taylor, exact FP32) and function.

    python -m experiments.approx_error [--quick] [--force] [--out results]

Wraps ``experiments/nonlinear_error.py`` (its BF16 sweeps and, in the full run, the synthetic
input distributions); quick mode runs the sweeps only.
"""

from __future__ import annotations

from pathlib import Path

from mugi_jax.io import write_csv
from mugi_jax.report.helpers import table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "Approximation error per method and function",
    "section": "Numerics", "needs": "", "in_quick": True, "est_s": 30, "order": 20,
}

SHOWN = ("vlp_g256", "mugi_l_g256", "vlp_m4_g256", "vlp", "mugi_l", "vlp_m4", "pwl", "taylor", "exact_fp32")


FUNCTION_NAMES = {"exp": "exp", "silu": "SiLU", "gelu": "GELU (erf)", "softmax": "softmax"}
HIST_INPUTS = {
    "softmax_logits_N(0,1^2)": "softmax of N(0, 1) logits (4 x 256 x 256): the exp unit's inputs x - max(x)",
    "softmax_logits_N(0,3^2)": "softmax of N(0, 3^2) logits (4 x 256 x 256): the exp unit's inputs x - max(x)",
    "silu_N(0,1)": "SiLU of N(0, 1) inputs (512 x 1536)",
    "silu_t3": "SiLU of Student-t (3 degrees of freedom) inputs (512 x 1536, heavy tails)",
    "gelu_N(0,1)": "GELU of N(0, 1) inputs (512 x 1536)",
    "gelu_t3": "GELU of Student-t (3 degrees of freedom) inputs (512 x 1536, heavy tails)",
}


def caption(file: str, ne) -> str:  # noqa: ANN001
    """The caption of one figure of ``nonlinear_error`` (written per figure kind, not from the name)."""
    if file.startswith("error_vs_input_"):
        fn = file.removeprefix("error_vs_input_").removesuffix(".png")
        lo, hi = ne.RANGES[fn]
        return (f"{FUNCTION_NAMES.get(fn, fn)}: absolute error against the float64 function for every "
                f"BF16 input in [{lo:g}, {hi:g}] (log scale), per method: VLP and Mugi-L with per-value "
                "(g1) and 256-value (g256) windows, VLP with 4 mantissa bits, PWL, Taylor, exact FP32")
    for case, what in HIST_INPUTS.items():
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in case)
        if file == f"exponent_hist_{safe}.png":
            return (f"Exponents entering the VLP unit, {what}: histogram of the rounded exponents "
                    "(3 mantissa bits), the exponent range the table stores (blue) and the most "
                    "frequent window of a 256-value group (orange)")
    raise ValueError(f"no caption written for figure {file!r}; add one to experiments/approx_error.py")


def run(out_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    from experiments import nonlinear_error as ne

    out_dir = Path(out_dir)
    rows: list[dict] = []
    curves: dict = {}
    hists: dict = {}
    ne.sweep(rows, curves)
    if not quick:
        ne.distributions(rows, hists, seed)
    write_csv(out_dir / "errors.csv", rows)
    files = ne.plot_curves(out_dir, curves) + (ne.plot_hists(out_dir, hists) if hists else [])
    summary_rows = [r for r in rows if r["method"] in SHOWN]
    tables = [table(out_dir, "errors_summary.csv", [{k: r[k] for k in ("case", "function", "method", "max_abs", "mean_abs", "mean_rel")}
                                                    for r in summary_rows], "Error vs float64 per case and method (window group 256)"),
              {"file": "errors.csv", "title": "All methods and window groups"}]
    readings = []
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = {r["method"].removesuffix("_g256"): r for r in rows if r["case"] == case}
        if not {"vlp", "pwl", "taylor"} <= set(sel):
            continue
        v, p, t = sel["vlp"], sel["pwl"], sel["taylor"]
        best = min(("vlp", "pwl", "taylor"), key=lambda m: sel[m]["mean_abs"])
        readings.append(f"{case}: mean |error| VLP {v['mean_abs']:.3g}, PWL {p['mean_abs']:.3g}, Taylor {t['mean_abs']:.3g} "
                        f"(max VLP {v['max_abs']:.3g}, PWL {p['max_abs']:.3g}, Taylor {t['max_abs']:.3g}); lowest mean: {best}."
                        + (" Mugi-L has identical numerics to VLP (same errors)." if sel.get("mugi_l", {}).get("max_abs") == v["max_abs"] else ""))
    figures = [{"file": f, "caption": caption(f, ne)} for f in files]
    return {"tables": tables, "figures": figures, "readings": readings, "comparisons": [], "headline": {},
            "config": {"distributions": not quick, "config": getattr(ne, "CFG", None)}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("approx_error")
