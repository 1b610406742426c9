"""Benchmark: gemm.matmul (fast / exact) vs the jitted FP32 baseline ``a @ dequantize(w)``.

Run: ``python -m experiments.bench_gemm [--datapaths mugi,systolic,...] [--repeats N]``.
Prints, per shape and datapath mode, the wall time (median of ``--repeats``), its ratio to the
baseline ``a.astype(f32) @ quant.dequantize(w)`` timed in the same run (a hand-fused
``a @ (q s)`` is printed too), the peak memory XLA reserves for the compiled call (arguments +
outputs + temporaries, from ``compiled.memory_analysis()``), the error against float64
``a @ dequantize(w)`` normalised by ``|a| @ |w|``, and the fast-vs-exact deviation.  Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mugi_jax import gemm, quant

SHAPES = {
    "decode (8x4096)@(4096x4096)": (8, 4096, 4096, 128),
    "prefill (512x4096)@(4096x4096)": (512, 4096, 4096, 128),
    "SmolLM2 (8x576)@(576x1536)": (8, 576, 1536, 64),  # 576 is not a multiple of 128: g64
}
DATAPATHS = {
    "mugi": gemm.Mugi(),
    "mugi-bf16acc": gemm.Mugi(accumulator="bf16"),
    "mixpe": gemm.MixPE(),
    "systolic": gemm.SystolicMAC(),
    "carat": gemm.Carat(),
    "figna": gemm.FIGNA(),
}


_CPU: dict[int, float] = {}


def _time(fn, args, repeats: int) -> float:
    """Median wall time; the median process CPU time (all threads) goes to ``_CPU[id(fn)]``
    (steadier than wall time on a shared machine)."""
    jax.block_until_ready(fn(*args))  # compile + warm up
    ts, cs = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    _CPU[id(fn)] = statistics.median(cs)
    return statistics.median(ts)


def _peak_mib(fn, args) -> float:
    m = fn.lower(*args).compile().memory_analysis()
    if m is None:
        return float("nan")
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datapaths", default="mugi", help=f"comma list of {sorted(DATAPATHS)}")
    ap.add_argument("--modes", default="fast,exact")
    ap.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))),
                    help="comma list of shape indices (0 decode, 1 prefill, 2 SmolLM2)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    names = list(SHAPES)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{jax.devices()[0].device_kind}")
    print(f"{'shape':34s} {'datapath/mode':22s} {'time [ms]':>10s} {'ratio':>7s} "
          f"{'peak [MiB]':>11s} {'cpu [ms]':>9s} {'cpu ratio':>9s}")
    for idx in args.shapes.split(","):
        label = names[int(idx)]
        m, k, n, g = SHAPES[label]
        key_a, key_w = jax.random.split(jax.random.PRNGKey(0))
        a = jax.random.normal(key_a, (m, k), jnp.float32).astype(jnp.bfloat16)
        w = quant.quantize(jax.random.normal(key_w, (k, n), jnp.float32) * 0.02,
                           quant.SignMagnitudeInt4(group_size=g))
        base = jax.jit(lambda a, w: a.astype(jnp.float32) @ quant.dequantize(w))
        t_ref = _time(base, (a, w), args.repeats)
        c_ref = _CPU[id(base)]
        print(f"{label:34s} {'fp32 a @ dequantize(w)':22s} {t_ref * 1e3:10.2f} {1.0:7.2f} "
              f"{_peak_mib(base, (a, w)):11.1f} {c_ref * 1e3:9.1f} {1.0:9.2f}", flush=True)
        simple = jax.jit(lambda a, w: a.astype(jnp.float32) @ (
            w.codes.astype(jnp.float32).reshape(k // g, g, n) * w.scales[:, None]).reshape(k, n))
        t_simple = _time(simple, (a, w), args.repeats)
        c = _CPU[id(simple)]
        print(f"{'':34s} {'fp32 a @ (q s) fused':22s} {t_simple * 1e3:10.2f} "
              f"{t_simple / t_ref:7.2f} {_peak_mib(simple, (a, w)):11.1f} {c * 1e3:9.1f} "
              f"{c / c_ref:9.2f}", flush=True)
        ref64 = np.asarray(a, np.float64) @ np.asarray(quant.dequantize(w), np.float64)
        scale = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(quant.dequantize(w),
                                                                       np.float64))
        for dname in args.datapaths.split(","):
            dp = DATAPATHS[dname]
            outs = {}
            for mode in args.modes.split(","):
                fn = jax.jit(lambda a, w, dp=dp, mode=mode: gemm.matmul(a, w, dp, mode=mode))
                t = _time(fn, (a, w), args.repeats)
                outs[mode] = np.asarray(fn(a, w), np.float64)
                err = np.max(np.abs(outs[mode] - ref64) / scale)
                c = _CPU[id(fn)]
                print(f"{'':34s} {dname + '/' + mode:22s} {t * 1e3:10.2f} {t / t_ref:7.2f} "
                      f"{_peak_mib(fn, (a, w)):11.1f} {c * 1e3:9.1f} {c / c_ref:9.2f}   "
                      f"err vs fp64 {err:.2e}", flush=True)
            if {"fast", "exact"} <= set(outs):
                d = np.abs(outs["fast"] - outs["exact"])
                print(f"{'':34s} {dname + ' fast-exact':22s} max|d| {d.max():.3e}  "
                      f"max|d|/max|exact| {d.max() / np.abs(outs['exact']).max():.3e}  "
                      f"max|d|/(|a||w|) {np.max(d / scale):.3e}  "
                      f"bit-equal {np.mean(d == 0) * 100:.1f}%", flush=True)


if __name__ == "__main__":
    main()
