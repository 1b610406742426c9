"""The body of ``mugi-jax tour``: a small, deterministic tour of formats and INT4 quantization."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mugi_jax import formats, quant

DEMO_VALUES = (0.0, 1.0, -1.5, 0.3, 3.14159, 1e-39, 65504.0, float("inf"), float("nan"))


def run(seed: int = 0) -> dict[str, Any]:
    """Compute the tour's figures (pure; same seed -> same output)."""
    x = jnp.asarray(DEMO_VALUES, jnp.float32).astype(jnp.bfloat16)
    f = formats.decompose(x)
    e3, j3 = formats.round_mantissa(x, 3)
    values = []
    for i, v in enumerate(DEMO_VALUES):
        values.append({
            "input": v, "bf16": float(x[i].astype(jnp.float32)),
            "sign": int(f.sign[i]), "exponent": int(f.exponent[i]),
            "mantissa": int(f.mantissa[i]), "kind": formats.Kind(int(f.kind[i])).name,
            "vlp_exponent_3b": int(e3[i]), "vlp_code_3b": int(j3[i]),
        })
    w = jax.random.normal(jax.random.PRNGKey(seed), (576, 1536), jnp.float32) * 0.02
    schemes = {
        "sign-magnitude int4 g64": quant.SignMagnitudeInt4(group_size=64),
        "int4 g64 (minmax)": quant.Int4(group_size=64, calibration="minmax"),
        "asym uint4 g32 (Q4_1)": quant.AsymUInt4(group_size=32, scale_dtype="float16"),
        "sign-magnitude int4 per-channel": quant.SignMagnitudeInt4(group_size=None),
    }
    rows = []
    for name, scheme in schemes.items():
        q = quant.quantize(w, scheme)
        err = quant.dequantize(q) - w
        rows.append({
            "scheme": name,
            "rmse": float(jnp.sqrt(jnp.mean(err**2))),
            "max_abs_error": float(jnp.max(jnp.abs(err))),
            "sqnr_db": float(10 * jnp.log10(jnp.sum(w**2) / jnp.sum(err**2))),
            "storage_bytes": q.storage_bytes,
            "bits_per_weight": 8 * q.storage_bytes / w.size,
        })
    return {"seed": seed, "weight_shape": list(w.shape), "bf16_fields": values,
            "quantization": rows, "fp32_bytes": int(np.prod(w.shape)) * 4}


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="BF16 fields and VLP input rounding (M = 3 bits, round half to even)")
    for col in ("input", "bf16", "sign", "exponent", "mantissa", "kind", "VLP (e, j)"):
        t.add_column(col)
    for r in result["bf16_fields"]:
        t.add_row(f"{r['input']:g}", f"{r['bf16']:g}", str(r["sign"]), str(r["exponent"]),
                  str(r["mantissa"]), r["kind"], f"({r['vlp_exponent_3b']}, {r['vlp_code_3b']})")
    console.print(t)
    q = Table(title=f"INT4 quantization of a {tuple(result['weight_shape'])} N(0, 0.02^2) weight")
    for col in ("scheme", "RMSE", "max |err|", "SQNR dB", "bits/weight"):
        q.add_column(col)
    for r in result["quantization"]:
        q.add_row(r["scheme"], f"{r['rmse']:.3e}", f"{r['max_abs_error']:.3e}",
                  f"{r['sqnr_db']:.2f}", f"{r['bits_per_weight']:.3f}")
    console.print(q)
