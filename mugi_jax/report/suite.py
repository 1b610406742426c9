"""Run the whole suite and write ``report.md`` (every table and figure, with computed readings)."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mugi_jax.io import check_output_dir, git_revision, write_text
from mugi_jax.report.registry import (BY_NAME, EXPERIMENTS, Outcome, is_complete, read_summary,
                                      run_experiment)

MAX_TABLE_ROWS = 30


def run_suite(out: str | Path = "results", quick: bool = False, force: bool = False, seed: int = 0,
              names: Sequence[str] | None = None, progress: bool = True,
              full: bool = False, weights: str | Path | None = None) -> list[Outcome]:
    """Run every (or the named) experiment into ``out/NAME`` and write ``out/report.md``.
    ``weights``: a quantized-weights directory for the experiments that take one.

    In ``quick`` mode, experiments not marked ``in_quick`` are only reported if a result is
    already present.
    """
    out = Path(out)
    for n in names or ():
        if n not in BY_NAME:
            raise ValueError(f"unknown experiment {n!r}; valid: {', '.join(BY_NAME)}")
    check_output_dir(out, "out")  # a bad results directory fails now, not after the work
    exps = [e for e in EXPERIMENTS if names is None or e.name in names]
    outcomes: list[Outcome] = []
    t_start = time.perf_counter()

    def one(e) -> Outcome:
        if quick and not e.in_quick and not force:
            if is_complete(out / e.name, True):
                return Outcome(e.name, "skipped", 0.0, read_summary(out / e.name), "already present")
            return Outcome(e.name, "not-run", 0.0, None,
                           f"not part of --quick (about {e.est_s / 60:.0f} min); run "
                           f"`mugi-jax experiment {e.name}` or `mugi-jax report`")
        return run_experiment(e.name, out, quick=quick, force=force, seed=seed, full=full,
                              weights=weights)

    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr)
        with Progress(TextColumn("[bold]{task.description:<24}"), BarColumn(),
                      TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("report", total=len(exps))
            for e in exps:
                bar.update(task, description=e.name)
                oc = one(e)
                outcomes.append(oc)
                bar.console.print(f"  {e.name:<22} {oc.status:<11} {oc.seconds:6.1f}s"
                                  + (f"  {oc.message[:100]}" if oc.message else ""))
                bar.advance(task)
    else:
        outcomes = [one(e) for e in exps]
    render_report(out, outcomes, quick=quick, wall_s=time.perf_counter() - t_start, full=full)
    return outcomes


# ---------------------------------------------------------------------------------------------
def _fmt(v: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v.replace("|", "\\|")
    if v.strip().lstrip("-").isdigit():
        return v
    if math.isnan(x):
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.3e}"
    return f"{x:.4g}"


#: Units of the result columns, by exact name, then by suffix (rendered as ``name [unit]``).
_UNITS = {
    "seconds": "s", "nll": "nats/token", "context": "tokens", "predicted_tokens": "tokens",
    "seq_len": "tokens", "height": "rows", "cycles": "cycles", "gflop": "GFLOP",
    "measured": "cycles/k-step", "analytic_kbinned": "cycles/k-step", "analytic_iid": "cycles/k-step",
    "analytic_iid_pooled": "cycles/k-step", "monte_carlo_iid_pooled": "cycles/k-step",
    "mean_cycles_et": "cycles/tile", "mean_cycles_full": "cycles/tile",
    "throughput_gflops": "GFLOP/s", "nl_gflops": "GFLOP/s", "energy_efficiency": "GFLOP/s/J",
    "energy_efficiency_paper": "GFLOP/s/J", "nl_energy_efficiency": "GFLOP/s/J",
    "gflop_per_j": "GFLOP/J", "nl_gflop_per_j": "GFLOP/J", "pj_per_flop": "pJ/FLOP",
    "pj_per_flop_onchip": "pJ/FLOP", "j_per_token": "J/token", "j_per_token_onchip": "J/token",
    "tokens_per_s": "tokens/s", "speedup": "x", "elements": "values", "zeros": "values",
}
_SUFFIX_UNITS = (("_pct", "%"), ("_share", "fraction"), ("_fraction", "fraction"),
                 ("_efficiency", "fraction"), ("_carbon_g", "gCO2e"), ("_mm2", "mm^2"),
                 ("_mw", "mW"), ("_w", "W"), ("_j", "J"), ("_s", "s"))


def column_unit(name: str) -> str | None:
    """The unit of a result column (None: a name, a count of its own kind, or dimensionless)."""
    if name in _UNITS:
        return _UNITS[name]
    if name.endswith("_pct"):
        return "%"
    if name.startswith(("frac_", "saving")):
        return "fraction"
    if "_vs_" in name or name.endswith("_over_design"):
        return "x"
    return next((u for suf, u in _SUFFIX_UNITS if name.endswith(suf)), None)


def csv_to_markdown(path: Path, max_rows: int = MAX_TABLE_ROWS) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return "_(empty)_\n"
    head, body = rows[0], rows[1:]
    shown = [f"{h} [{u}]" if (u := column_unit(h)) else h for h in head]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(head)]
    for r in body[:max_rows]:
        lines.append("| " + " | ".join(_fmt(c) for c in r) + " |")
    text = "\n".join(lines) + "\n"
    if len(body) > max_rows:
        text += f"\n_{len(body) - max_rows} more rows in [{path.parent.name}/{path.name}]({path.parent.name}/{path.name})._\n"
    return text


def _accuracy_headline(acc: dict) -> list[str]:
    """What the Mugi numerics cost a real model: perplexity and greedy text (from ``accuracy``)."""
    lines = ["", "## Accuracy cost of the Mugi numerics (SmolLM2-135M)", ""]
    head = acc.get("headline", {}) if acc.get("status") == "ok" else {}
    model = "smollm2-135m"  # headline keys are MODEL/CORPUS/NUMERICS and greedy/MODEL/NUMERICS
    corpora = [k.split("/")[1] for k in head
               if k.startswith(f"{model}/") and k.endswith("/exact")]
    if not corpora:
        return lines + ["_Not available: the `accuracy` experiment has no result here._"]
    cfg = acc.get("config", {})
    lines += [f"Perplexity over the first {cfg.get('max_tokens', '?')} tokens, context "
              f"{cfg.get('context', '?')} (change vs exact FP32). `vlp` = VLP softmax and SiLU "
              "only; `mugi (preset)` = the whole Mugi datapath: VLP nonlinear units plus INT4 "
              "weights (re-quantized from the GGUF's Q4_1) and an INT4 KV cache.", "",
              "| corpus | exact | vlp (nonlinear only) | mugi (preset) |", "|---|---|---|---|"]
    for c in corpora:
        ex = head[f"{model}/{c}/exact"]
        cells = []
        for n in ("vlp", "mugi (preset)"):
            v = head.get(f"{model}/{c}/{n}")
            cells.append("not run (full report only)" if v is None
                         else f"{v:.4g} ({100 * (v / ex - 1):+.1f}%)")
        lines.append(f"| {c} | {ex:.4g} | " + " | ".join(cells) + " |")
    greedy = {k.removeprefix(f"greedy/{model}/"): v for k, v in head.items()
              if k.startswith(f"greedy/{model}/")}
    if greedy:
        lines += ["", "Greedy continuation of \"The capital of France is\":", ""]
        lines += [f"- {n}: `{json.dumps(t)}`" for n, t in greedy.items()]  # JSON: newlines show as escapes
    return lines


def render_report(out: str | Path, outcomes: Sequence[Outcome] | None = None, quick: bool = False,
                  wall_s: float | None = None, full: bool = False) -> Path:
    """Write ``out/report.md`` from the results present under ``out`` (deterministic content)."""
    out = Path(out)
    by = {o.name: o for o in outcomes or ()}
    summaries = {e.name: (by[e.name].summary if e.name in by else read_summary(out / e.name))
                 for e in EXPERIMENTS}
    lines = ["# mugi-jax reproduction report", ""]
    computed = sum(float((summaries.get(e.name) or {}).get("wall_time_s") or 0.0) for e in EXPERIMENTS)
    lines += [
        "Generated by `mugi-jax report" + (" --quick" if quick else " --full" if full else "") + "`"
        + f"; git revision `{git_revision() or 'unknown'}`; the results shown took {computed:.0f} s to "
        "compute (sum of the experiments' wall times in provenance.json)"
        + (f", this invocation {wall_s:.0f} s (present results are skipped)." if wall_s is not None else "."),
        "Every reading below is computed from the result files next to this report and compared "
        "with the paper's published numbers (constants in `mugi_jax/report/paper.py`, with their "
        "source). " + ("**Quick mode**: small token counts and grids; the model-based "
                       "numbers (perplexity, histograms) come from far fewer tokens than the full report." if quick else ""),
        "",
        "## Headline comparisons with the paper", "",
        "| quantity | published | ours | verdict | experiment |", "|---|---|---|---|---|",
    ]
    from mugi_jax.report.paper import PAPER, REFERENCE_SOURCE

    n_cmp = 0
    seen: set[str] = set()
    cmps = []
    for e in EXPERIMENTS:
        s = summaries.get(e.name) or {}
        for c in s.get("comparisons", []) if s.get("status") == "ok" else []:
            if c["key"] in seen:  # the same quantity from a second experiment: listed once
                continue
            seen.add(c["key"])
            cmps.append((PAPER[c["key"]].source == REFERENCE_SOURCE if c["key"] in PAPER else True, e.name, c))
    for is_ref, name, c in sorted(cmps, key=lambda t: t[0]):  # paper numbers first (stable)
        desc = PAPER[c["key"]].description if c["key"] in PAPER else c["key"]
        if is_ref:
            desc += " (reference measurement, not a paper number)"
        lines.append(f"| {desc} | {c['paper']:.4g} | {c['ours']:.4g} | {c['verdict']} | [{name}](#{name}) |")
        n_cmp += 1
    if n_cmp == 0:
        lines.append("| (no comparisons available) | | | | |")
    srcs = sorted({PAPER[c["key"]].source for _, _, c in cmps
                   if c["key"] in PAPER and PAPER[c["key"]].source != REFERENCE_SOURCE})
    if srcs:
        lines += ["", "Sources of the published numbers: " + "; ".join(srcs) + "."]
    lines += _accuracy_headline(summaries.get("accuracy") or {})
    lines += ["", "## Status", "", "| experiment | status | run time [s] | note |", "|---|---|---|---|"]
    for e in EXPERIMENTS:
        s = summaries.get(e.name) or {}
        o = by.get(e.name)
        status = o.status if o else s.get("status", "missing")
        secs = s.get("wall_time_s", o.seconds if o else float("nan"))
        note = (o.message if o else s.get("message", "")) or ("quick settings" if s.get("quick") else "")
        lines.append(f"| [{e.name}](#{e.name}) | {status} | "
                     f"{secs if isinstance(secs, str) else f'{secs:.1f}'} | {note[:160]} |")
    section = None
    for e in EXPERIMENTS:
        if e.section != section:
            section = e.section
            lines += ["", f"## {section}"]
        s = summaries.get(e.name) or {}
        lines += ["", f"### {e.name}", "", f"**{e.title}.**" + (
            f" Script: `python -m experiments.{e.name}`; files in [`{e.name}/`]({e.name}/).")]
        if s.get("status") != "ok":
            o = by.get(e.name)
            msg = (o.message if o else s.get("message")) or "no result present"
            lines += ["", f"_Not available: {msg}_"]
            continue
        if s.get("quick"):
            lines += ["", "_Quick settings._"]
        if s.get("readings"):
            lines += ["", "Reading:", ""] + [f"- {r}" for r in s["readings"]]
        for t in s.get("tables", []):
            p = out / e.name / t["file"]
            if p.exists():
                lines += ["", f"*{t['title']}* ([csv]({e.name}/{t['file']}))", "", csv_to_markdown(p)]
        for fgr in s.get("figures", []):
            if (out / e.name / fgr["file"]).exists():
                lines += ["", f"![{fgr['caption']}]({e.name}/{fgr['file']})", "", f"*{fgr['caption']}*"]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
