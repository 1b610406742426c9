"""Benchmark: gemm.matmul (fast / exact) against what the ``exact`` preset runs.

Run: ``python -m experiments.bench_gemm [--datapaths mugi,systolic,...] [--shapes 0,1,...]
[--repeats N]``.

Baseline: the ``exact`` preset's projection, a jitted ``jnp.matmul(a.astype(f32), w_f32,
precision=HIGHEST)`` on FP32 weights prepared once (here ``quant.dequantize(w)``, computed
outside the timed region).  Candidates get their weights prepared once too
(``gemm.prepare_weight``).  The calls are timed interleaved (baseline, fast, exact, baseline, ...;
see ``experiments/_benchlib.py``) and printed as min and median wall time, the ratio of minima /
ratio of medians, the median CPU-time ratio, and verdicts against the goals: fast mode no slower
than exact mode and at most 4x the baseline.  Where fast and exact mode lower to the identical
program (the same StableHLO text: below 64 rows fast mode runs exact mode's kernel), the fast
row says "same kernel" instead of a fast-vs-exact verdict, since their timing difference is
noise; a verdict is printed whenever the programs differ.  Where ``gemm.matmul`` runs the
native kernel (``mugi_jax.gemm.native``), the rows ``.../fast xla`` and ``.../exact xla`` time
the XLA kernel of the same mode (traced under ``native.xla_only()``), interleaved with the
rest.  Also printed: the error against float64
``a @ dequantize(w)`` normalised by ``|a| @ |w|`` and the fast-vs-exact deviation.  Not a test.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments._benchlib import fmt_ratio, interleaved, load_average, ratio, verdict
from mugi_jax import gemm, quant
from mugi_jax.gemm import native

# The activations computed inside the timed call, by a table gather times a second input (what
# the model feeds the down projection: the VLP SiLU's table lookup times the up projection), so
# that a kernel which lets XLA fuse its producer into work done per activation term shows it.
FUSED = "SmolLM2 prefill down g32, fused gather x up"
SHAPES = {  # label: (m, k, n, group); the g32 rows are what the mugi preset runs
    "SmolLM2 prefill q/o g32 (512x576)@(576x576)": (512, 576, 576, 32),
    "SmolLM2 prefill k/v g32 (512x576)@(576x192)": (512, 576, 192, 32),
    "SmolLM2 prefill up g32 (512x576)@(576x1536)": (512, 576, 1536, 32),
    "SmolLM2 prefill down g32 (512x1536)@(1536x576)": (512, 1536, 576, 32),
    "SmolLM2 decode b1 up g32 (1x576)@(576x1536)": (1, 576, 1536, 32),
    "SmolLM2 decode b1 down g32 (1x1536)@(1536x576)": (1, 1536, 576, 32),
    "SmolLM2 prefill q/o (512x576)@(576x576)": (512, 576, 576, 64),
    "SmolLM2 prefill up (512x576)@(576x1536)": (512, 576, 1536, 64),
    "SmolLM2 prefill down (512x1536)@(1536x576)": (512, 1536, 576, 128),
    "SmolLM2 decode b1 up (1x576)@(576x1536)": (1, 576, 1536, 64),
    "SmolLM2 decode b8 (8x576)@(576x1536)": (8, 576, 1536, 64),
    "SmolLM2 decode b8 down (8x1536)@(1536x576)": (8, 1536, 576, 128),
    "(64x1536)@(1536x576)": (64, 1536, 576, 128),
    "decode (8x4096)@(4096x4096)": (8, 4096, 4096, 128),
    "prefill (512x4096)@(4096x4096)": (512, 4096, 4096, 128),
    FUSED: (512, 1536, 576, 32),
    # a 7B model's batch-1 decode: one row, long reductions (fast mode's XLA kernel reduces a
    # group at once here, not by the sequential scan)
    "7B decode b1 (1x4096)@(4096x4096)": (1, 4096, 4096, 128),
    "7B decode b1 down (1x11008)@(11008x4096)": (1, 11008, 4096, 128),
}
DATAPATHS = {
    "mugi": gemm.Mugi(),
    "mugi-bf16acc": gemm.Mugi(accumulator="bf16"),
    "mixpe": gemm.MixPE(),
    "systolic": gemm.SystolicMAC(),
    "carat": gemm.Carat(),
    "figna": gemm.FIGNA(),
}
GOAL_VS_BASELINE = 4.0  # fast mode / prepared FP32 matmul
GOAL_VS_EXACT = 1.0  # fast mode / exact mode


def _fused_producer(m: int, k: int) -> tuple:
    """``(make, inputs)``: ``make(x, up)`` = a 64K-entry BF16 table indexed by the bits of
    ``x`` (a stand-in for the VLP SiLU's lookup, random positive entries) times ``up``,
    rounded to BF16."""
    kx, ku, kt = jax.random.split(jax.random.PRNGKey(1), 3)
    table = jax.random.uniform(kt, (1 << 16,), jnp.float32, 0.0, 4.0).astype(jnp.bfloat16)
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
    up = jax.random.normal(ku, (m, k), jnp.float32)

    def make(x, up):
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.int32)
        return (table[bits].astype(jnp.float32) * up).astype(jnp.bfloat16)

    return make, (x, up)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datapaths", default="mugi", help=f"comma list of {sorted(DATAPATHS)}")
    ap.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))),
                    help="comma list of shape indices: " + ", ".join(
                        f"{i} {s}" for i, s in enumerate(SHAPES)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-error", action="store_true", help="skip the float64 error columns")
    args = ap.parse_args(argv)
    names = list(SHAPES)
    try:
        idxs = [int(i) for i in args.shapes.split(",")]
        labels = [names[i] for i in idxs]
    except (ValueError, IndexError):
        ap.error(f"--shapes: expected a comma list of indices 0..{len(SHAPES) - 1}, "
                 f"got {args.shapes!r}")
    dnames = args.datapaths.split(",")
    for d in dnames:
        if d not in DATAPATHS:
            ap.error(f"--datapaths: unknown {d!r}; valid: {', '.join(DATAPATHS)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; interleaved, "
          f"{args.repeats} repeats; load average at start {load_average()}")
    print(f"{'shape':44s} {'candidate':22s} {'min ms':>8s} {'med ms':>8s} "
          f"{'x base min/med':>14s} {'cpu x':>6s} verdicts")
    rows = []
    for label in labels:
        m, k, n, g = SHAPES[label]
        key_a, key_w = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(key_a, (m, k), jnp.float32).astype(jnp.bfloat16)
        w = quant.quantize(jax.random.normal(key_w, (k, n), jnp.float32) * 0.02,
                           quant.SignMagnitudeInt4(group_size=g))
        w_f32 = jax.block_until_ready(quant.dequantize(w))  # prepared once, as the preset does
        producer = _fused_producer(m, k) if label == FUSED else None
        inputs = (a,) if producer is None else producer[1]
        if producer is not None:
            a = jax.block_until_ready(jax.jit(producer[0])(*inputs))  # for the error columns
        make = (lambda x: x) if producer is None else producer[0]
        base = jax.jit(lambda xs, w: jnp.matmul(make(*xs).astype(jnp.float32), w,
                                                precision=jax.lax.Precision.HIGHEST))
        fns = {"fp32 exact preset": lambda: base(inputs, w_f32)}
        calls = {}
        for dname in dnames:
            dp = DATAPATHS[dname]
            for mode in ("fast", "exact"):
                pw = gemm.prepare_weight(w, dp, mode)
                print(f"{'':44s} {dname}/{mode}: prepared weight {pw.nbytes / (k * n):.2f} "
                      f"bytes/weight (FP32 baseline 4.00)")
                fn = jax.jit(lambda xs, w, dp=dp, mode=mode: gemm.matmul(make(*xs), w, dp,
                                                                         mode=mode))
                lowered = fn.lower(inputs, pw)
                calls[f"{dname}/{mode}"] = (fn, pw, lowered.as_text())
                fns[f"{dname}/{mode}"] = (lambda fn=fn, pw=pw: fn(inputs, pw))
                if "mugi_vlp_gemm" in calls[f"{dname}/{mode}"][2]:
                    # gemm.matmul took the native kernel: time the XLA kernel of this mode too
                    with native.xla_only():
                        lowered = jax.jit(lambda xs, w, dp=dp, mode=mode: gemm.matmul(
                            make(*xs), w, dp, mode=mode)).lower(inputs, pw)
                    xla = lowered.compile()
                    calls[f"{dname}/{mode} xla"] = (xla, pw, lowered.as_text())
                    fns[f"{dname}/{mode} xla"] = (lambda xla=xla, pw=pw: xla(inputs, pw))
        times = interleaved(fns, args.repeats)
        ref = times["fp32 exact preset"]
        if not args.no_error:
            a64 = np.asarray(a, np.float64)
            wd = np.asarray(w_f32, np.float64)
            ref64, scale = a64 @ wd, np.abs(a64) @ np.abs(wd)
        for cname, t in times.items():
            r = ratio(t, ref)
            cpu = t.cpu_median / ref.cpu_median
            row = {"shape": label, "candidate": cname, "min_ms": t.min * 1e3,
                   "median_ms": t.median * 1e3, "ratio_min": r[0], "ratio_median": r[1],
                   "cpu_ratio": cpu}
            notes = ""
            if cname.endswith("/fast") or cname.endswith("/fast xla"):
                ex = times[cname.replace("/fast", "/exact")]
                rx = ratio(t, ex)
                row["vs_exact"] = rx
                # identical lowered programs compile to the same executable: no verdict on noise
                row["same_kernel"] = calls[cname][2] == calls[cname.replace("/fast", "/exact")][2]
                vx = "same kernel" if row["same_kernel"] else verdict(rx, GOAL_VS_EXACT)
                notes = (f"vs exact {fmt_ratio(rx)} {vx}; "
                         f"vs base {verdict(r, GOAL_VS_BASELINE)} (goal <= {GOAL_VS_BASELINE:g})")
            if cname in calls and not args.no_error:
                fn, pw, _ = calls[cname]
                out = np.asarray(fn(inputs, pw), np.float64)
                row["err"] = float(np.max(np.abs(out - ref64) / scale))
                notes += f"  err {row['err']:.1e}"
            print(f"{label if cname == 'fp32 exact preset' else '':44s} {cname:22s} "
                  f"{t.min * 1e3:8.2f} {t.median * 1e3:8.2f} {fmt_ratio(r):>14s} {cpu:6.2f} "
                  f"{notes}", flush=True)
            rows.append(row)
    print(f"load average at end {load_average()}; ratios: min/median of interleaved runs")
    return rows


if __name__ == "__main__":
    main()
