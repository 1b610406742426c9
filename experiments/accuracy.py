"""End-to-end accuracy per model family and nonlinear function: perplexity of SmolLM2-135M
(SiLU) and Gemma 3 270M (GELU-tanh) under each nonlinear approximation method (exact, VLP,
Mugi-L, PWL, Taylor) and under the full ``mugi`` preset (VLP nonlinear + INT4 Mugi GEMMs + INT4
KV cache), on each available corpus.

    python -m experiments.accuracy [--quick | --full] [--force] [--out results]

Mugi-L's rows are the VLP rows (its numerics are checked op by op to be VLP's: a physical table
instead of streaming, same kernels), not a second run.
Default (fits ``make demo``): the first 1024 tokens of each fetched corpus (Gemma: SOTU only),
context 512, every method; the ``mugi`` preset (with its calibrated INT4 weights) for SmolLM2 on
SOTU only.
``--full``: 4096 tokens of each corpus, the ``mugi`` and ``mugi-asym`` presets for both models
on each.  ``--quick``: SmolLM2 only, SOTU, 256 tokens, context 128, methods
exact/VLP/PWL/Taylor.
Token ids are evaluated exactly as the corpus tokenizes (no BOS, :func:`mugi_jax.eval.perplexity`).
Missing corpora or models are listed, never fetched (``mugi-jax data fetch NAME``).  See also
``experiments/llm_ppl.py`` (every preset, more tokens, SmolLM2).
"""

from __future__ import annotations

import time
from pathlib import Path

from mugi_jax.report.helpers import corpus_or_none, figure, table

#: The report's entry for this script (mugi_jax.report.registry discovers it).
EXPERIMENT = {
    "title": "End-to-end accuracy: perplexity per method and preset",
    "section": "Numerics", "needs": "model", "in_quick": True, "est_s": 300, "order": 30,
}

CORPORA = ("sotu", "brown", "austen")
#: (registry name, data artifact, the FFN's nonlinear function)
FAMILIES = (("smollm2-135m", "smollm2", "silu"), ("gemma3-270m", "gemma3", "gelu_tanh"))
METHODS = ("exact", "vlp", "mugi-l", "pwl", "taylor", "mugi (preset)")
#: whole presets (INT4 GEMMs and KV cache too), run only where ``preset_models/corpora`` say
PRESET_METHODS = ("mugi (preset)", "mugi-asym (preset)")
ALL_METHODS = METHODS + ("mugi-asym (preset)",)  # --full
_PRESET = {"exact": "exact", "vlp": "nonlinear-only", "mugi-l": "mugi-l", "pwl": "pwl",
           "taylor": "taylor", "mugi (preset)": "mugi", "mugi-asym (preset)": "mugi-asym"}


def settings(quick: bool, full: bool) -> dict:
    if quick:
        return {"corpora": ("sotu",), "max_tokens": 256, "context": 128, "batch": 2,
                "methods": ("exact", "vlp", "pwl", "taylor"), "preset_corpora": (),
                "families": FAMILIES[:1], "preset_models": ()}
    if full:
        return {"corpora": CORPORA, "max_tokens": 4096, "context": 512, "batch": 4,
                "methods": ALL_METHODS, "preset_corpora": CORPORA,
                "families": FAMILIES,
                "preset_models": tuple(f[0] for f in FAMILIES)}
    # Gemma (262k-token LM head) costs about twice SmolLM2 per token: SOTU only by default
    return {"corpora": CORPORA, "max_tokens": 1024, "context": 512, "batch": 2,
            "methods": METHODS, "preset_corpora": ("sotu",), "families": FAMILIES,
            "preset_models": ("smollm2-135m",), "model_corpora": {"gemma3-270m": ("sotu",)}}


PROMPT = "The capital of France is"
GREEDY_TOKENS = 12


def _weights_dir(name: str, method: str, weights: str | None) -> str | None:
    """``--weights DIR`` (SmolLM2-135M) replaces the ``mugi`` preset's own recipe."""
    return weights if method == "mugi (preset)" and name == "smollm2-135m" else None


def greedy_texts(model, tok, name: str, presets, weights: str | None = None) -> list[dict]:  # noqa: ANN001
    """Greedy continuations of :data:`PROMPT` under the exact and the ``mugi`` numerics (the
    prompt gets a BOS where the tokenizer asks for one, as for Gemma)."""
    import jax

    from mugi_jax import numerics
    from mugi_jax.models import Sampler
    from mugi_jax.models.quantize import weights_for

    out = []
    for method in ("exact", "mugi (preset)"):
        if method in presets:
            pol = numerics.preset(_PRESET[method], numerics.family_of(model))
            qmodel, _ = weights_for(model, tok, name, pol, _weights_dir(name, method, weights))
            gen = Sampler(qmodel, tok, pol)(
                [PROMPT], GREEDY_TOKENS, key=jax.random.key(0), stop_at_eos=True)
            out.append({"model": name, "numerics": method, "prompt": PROMPT,
                        "continuation": gen.text[0]})
    return out


def _model_or_none(name: str, artifact: str):  # noqa: ANN202
    from mugi_jax import data, models

    try:
        data.model_path(artifact, fetch_missing=False)
    except Exception:  # noqa: BLE001 - not fetched or damaged: listed as missing
        return None
    return models.load(name)


def readings_from_rows(rows: list[dict], missing: list[str], quick: bool, s: dict) -> list[str]:
    """The computed readings of an accuracy table (one per model and corpus, plus the VLP
    ranking per function)."""
    readings = []
    for model, fn in sorted({(r["model"], r["function"]) for r in rows}):
        for c in s["corpora"]:
            sel = {r["numerics"]: r for r in rows if r["model"] == model and r["corpus"] == c}
            if "exact" not in sel:
                continue
            parts = [f"{n} {sel[n]['ppl']:.4g} ({sel[n]['ppl_vs_exact_pct']:+.2f}%)"
                     for n in ALL_METHODS if n in sel and n != "exact"]
            readings.append(f"{model} ({fn}) on {c}: exact {sel['exact']['ppl']:.4g}; "
                            + ", ".join(parts) + ".")
            if "mugi-l" in sel and sel["mugi-l"]["ppl"] == sel["vlp"]["ppl"]:
                readings.append(f"{model} on {c}: Mugi-L gives exactly the VLP perplexity (same "
                                "numerics, checked op by op, so the VLP run is not repeated; "
                                "Mugi-L differs in hardware cost only).")
            if "mugi (preset)" in sel:
                extra = 100 * (sel["mugi (preset)"]["ppl"] / sel["vlp"]["ppl"] - 1)
                readings.append(f"{model} on {c}: the `mugi` preset adds {extra:+.1f}% over VLP-only; "
                                "it differs from VLP-only only in its GEMMs (calibrated INT4 "
                                "sign-magnitude weights, BF16 activations, BF16 LM head) and the "
                                "KIVI INT4 KV cache, so this loss comes from the GEMM/KV "
                                "quantization, not from the nonlinear approximation.")
        approx = [n for n in ("vlp", "pwl", "taylor") if any(r["numerics"] == n and r["model"] == model
                                                            for r in rows)]
        if len(approx) > 1:
            def mean_abs(n: str) -> float:
                xs = [abs(r["ppl_vs_exact_pct"]) for r in rows if r["model"] == model and r["numerics"] == n]
                return sum(xs) / len(xs)
            order = sorted(approx, key=mean_abs)
            readings.append(f"{model} ({fn}): mean |perplexity change| over corpora - "
                            + ", ".join(f"{n} {mean_abs(n):.2f}%" for n in order)
                            + f"; {order[0]} is closest to exact.")
    if missing:
        names = sorted({m.split(" ")[0] for m in missing})
        readings.append("Not measured (not fetched): " + ", ".join(missing)
                        + f"; run `mugi-jax data fetch {' '.join(names)}`"
                        + (" (austen is fetched with apt-get: run `apt-get update` first on a fresh "
                           "system)." if "austen" in names else "."))
    if quick:
        readings.append("Quick mode: SmolLM2 only, 256 tokens of SOTU, context 128 (the default "
                        "report adds Gemma 3 270M on SOTU and uses 1024 tokens of each corpus, `--full` 4096).")
    return readings


def family_table(out_dir: Path, rows: list[dict], model: str, s: dict) -> dict:
    """One model's (family's) table: a row per method, a column per corpus, cells
    ``ppl (change vs exact)``."""
    mine = [r for r in rows if r["model"] == model]
    corpora = [c for c in s["corpora"] if any(r["corpus"] == c for r in mine)]
    out = []
    for n in ALL_METHODS:
        cells = {r["corpus"]: f"{r['ppl']:.2f} ({r['ppl_vs_exact_pct']:+.1f}%)"
                 for r in mine if r["numerics"] == n}
        if cells:
            out.append({"method": n, **{c: cells.get(c, "not run") for c in corpora}})
    fn = mine[0]["function"]
    return table(out_dir, f"accuracy_{model}.csv", out,
                 f"{model} ({fn}): perplexity per method and corpus, change vs exact "
                 f"({s['max_tokens']} tokens, context {s['context']})", ["method", *corpora])


def same_numerics(model, a, b) -> bool:  # noqa: ANN001
    """Whether policies ``a`` and ``b`` compute every op of ``model`` identically (a ``MugiL``
    unit is its ``VLPConfig``: same kernels, different hardware cost)."""
    from mugi_jax import numerics

    for path, kind in model.numerics_ops():
        x, y = a.op(path, kind), b.op(path, kind)
        if isinstance(x, numerics.Nonlinear) and isinstance(y, numerics.Nonlinear):
            unwrap = lambda n: getattr(n.approx, "config", n.approx)  # noqa: E731
            if unwrap(x) != unwrap(y) or x.bf16_input != y.bf16_input:
                return False
        elif x != y:
            return False
    return True


def run(out_dir: Path, quick: bool = False, seed: int = 0, full: bool = False,
        weights: str | None = None) -> dict:
    from mugi_jax import eval as ev
    from mugi_jax import numerics
    from mugi_jax.models.quantize import weights_for

    out_dir = Path(out_dir)
    s = settings(quick, full)
    texts = {c: corpus_or_none(c) for c in s["corpora"]}
    missing = [c for c, t in texts.items() if t is None]
    rows: list[dict] = []
    greedy: list[dict] = []
    for name, artifact, fn in s["families"]:
        loaded = _model_or_none(name, artifact)
        if loaded is None:
            missing.append(f"{artifact} (model {name})")
            continue
        model, tok, _ = loaded
        for c, text in texts.items():
            if text is None or c not in s.get("model_corpora", {}).get(name, s["corpora"]):
                continue
            toks = ev.corpus_tokens(tok, text, s["max_tokens"])
            for method in s["methods"]:
                if method in PRESET_METHODS and (c not in s["preset_corpora"]
                                                 or name not in s["preset_models"]):
                    continue
                t0 = time.perf_counter()
                pol = numerics.preset(_PRESET[method], numerics.family_of(model))
                vlp = next((r for r in rows if r["model"] == name and r["corpus"] == c
                            and r["numerics"] == "vlp"), None)
                if method == "mugi-l" and vlp is not None and same_numerics(
                        model, pol, numerics.preset("nonlinear-only", numerics.family_of(model))):
                    # MugiL(c) runs VLPConfig c's kernels (a physical table: only the cost
                    # differs), checked op by op here: the VLP run's figures, not re-run
                    rows.append({**vlp, "numerics": method, "seconds": 0.0,
                                 "evaluated_as": "vlp (identical numerics)"})
                    continue
                # the preset's INT4 weights (its recipe, or --weights DIR)
                qmodel, _ = weights_for(model, tok, name, pol, _weights_dir(name, method, weights))
                r = ev.perplexity(qmodel, toks, pol, context=s["context"],
                                  max_tokens=s["max_tokens"], batch_size=s["batch"])
                rows.append({"model": name, "function": fn, "corpus": c, "numerics": method,
                             "kind": "preset" if method in PRESET_METHODS else "method",
                             "ppl": float(r["ppl"]), "nll": float(r["nll"]),
                             "predicted_tokens": int(r["predicted_tokens"]), "context": s["context"],
                             "seconds": time.perf_counter() - t0, "evaluated_as": method})
        if not quick:  # what a user sees: greedy text under exact (and mugi) numerics
            greedy += greedy_texts(model, tok, name, [m for m in s["methods"] if m not in PRESET_METHODS
                                                      or name in s["preset_models"]], weights)
        del model, tok, loaded
    if not rows:
        from mugi_jax.report.registry import Unavailable

        raise Unavailable(f"nothing to measure (not fetched: {', '.join(missing)}); run `mugi-jax data fetch`")
    for r in rows:
        ex = [x for x in rows if x["model"] == r["model"] and x["corpus"] == r["corpus"]
              and x["numerics"] == "exact"][0]
        r["ppl_vs_exact_pct"] = 100 * (r["ppl"] / ex["ppl"] - 1)
    models_done = sorted({r["model"] for r in rows})
    tables = [family_table(out_dir, rows, m, s) for m in models_done]
    tables.append(table(out_dir, "accuracy.csv", rows,
                        f"Perplexity per model, function and numerics ({s['max_tokens']} tokens, "
                        f"context {s['context']}), one row per run"))
    with figure(out_dir / "accuracy.png", 1, len(models_done), figsize=(5 * len(models_done), 4)) as (fig, axes):
        import numpy as np

        axes = np.atleast_1d(axes)
        for ax, model in zip(axes, models_done):
            names = [n for n in ALL_METHODS if any(r["model"] == model and r["numerics"] == n for r in rows)]
            got = [c for c in s["corpora"] if any(r["model"] == model and r["corpus"] == c for r in rows)]
            x = np.arange(len(names))
            for j, c in enumerate(got):
                vals = [next((r["ppl_vs_exact_pct"] for r in rows if r["model"] == model and r["corpus"] == c
                              and r["numerics"] == n), np.nan) for n in names]
                ax.bar(x + (j - (len(got) - 1) / 2) * 0.8 / len(got), vals, 0.8 / len(got), label=c)
            fn = next(r["function"] for r in rows if r["model"] == model)
            ax.set_xticks(x, names, fontsize=7), ax.set_title(f"{model} ({fn})", fontsize=9)
            ax.set_ylabel("perplexity change vs exact [%]"), ax.axhline(0, color="k", lw=0.6)
            ax.set_yscale("symlog", linthresh=1), ax.legend(fontsize=7)
    readings = readings_from_rows(rows, missing, quick, s)
    headline = {f"{r['model']}/{r['corpus']}/{r['numerics']}": r["ppl"] for r in rows}
    if greedy:
        tables.append(table(out_dir, "greedy.csv", greedy, f"Greedy continuation of {PROMPT!r} "
                            f"({GREEDY_TOKENS} new tokens) per model and numerics"))
        for g in greedy:
            headline[f"greedy/{g['model']}/{g['numerics']}"] = g["continuation"]
            readings.append(f"greedy {g['model']} [{g['numerics']}]: {PROMPT!r} -> {g['continuation']!r}")
    return {"tables": tables,
            "figures": [{"file": "accuracy.png",
                         "caption": "Perplexity change vs exact FP32 per model (function), numerics and corpus"}],
            "readings": readings, "comparisons": [],
            "headline": headline,
            "config": {"corpora": list(s["corpora"]), "missing": missing, "max_tokens": s["max_tokens"],
                       "context": s["context"], "batch_size": s["batch"], "numerics": list(s["methods"]),
                       "models": [f[0] for f in s["families"]], "full": full,
                       "weights": weights}}


if __name__ == "__main__":
    from mugi_jax.report import cli_main

    cli_main("accuracy")
