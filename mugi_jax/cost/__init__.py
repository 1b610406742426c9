"""Cost model: cycles, energy, area, metrics and carbon of LLM inference on each design.

Structure (Timeloop-style, kept apart):

- architecture (:mod:`mugi_jax.hw`): what each design instantiates;
- workload (:mod:`mugi_jax.workloads`): op tables;
- mapping + cycles + event counts (:mod:`mugi_jax.cost.model`, :mod:`mugi_jax.cost.events`):
  pure functions over whole op tables, ``jax.jit``/``vmap``-ped, designs flattened into numeric
  :class:`~mugi_jax.cost.model.ArchParams` so that one compiled call covers a sweep;
- metrics and carbon (:mod:`mugi_jax.cost.report`), presets (:mod:`mugi_jax.cost.presets`).

Entry points: :func:`evaluate` (one design x one workload) and :func:`sweep` (grids).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mugi_jax.cost.model import ArchParams, arch_params, stack_params, table_arrays, table_totals
from mugi_jax.cost.presets import PAPER, PRESETS, Preset, get_preset
from mugi_jax.cost.report import Breakdown, Report, derive_report
from mugi_jax.hw.arch import Arch
from mugi_jax.workloads import OpTable, Workload, op_table

ROW_BUCKET = 2048  # tables are padded to a multiple of this to limit recompilation


@jax.jit
def _totals_single(p: ArchParams, t: dict) -> dict:
    return table_totals(p, t)


@jax.jit
def _totals_grid(ps: ArchParams, ts: dict) -> dict:
    """ps: designs stacked on axis 0; ts: tables stacked on axis 0 -> sums with axes [A, W]."""
    per_table = jax.vmap(table_totals, in_axes=(None, 0))
    return jax.lax.map(lambda p: per_table(p, ts), ps)


def _padded(table: OpTable, rows: int | None = None) -> OpTable:
    target = rows if rows is not None else -(-table.rows // ROW_BUCKET) * ROW_BUCKET
    return table.pad_to(target)


def _tokens(workload: Workload, preset: Preset) -> float:
    steps = preset.decode.linear_decode_steps
    if steps is None:
        steps = workload.seq_len - workload.prefill_len
    return float(workload.batch * steps)


def _report(totals: dict, p: ArchParams, tokens, preset: Preset) -> Report:
    return derive_report(
        totals, leakage_w=p.leakage_w, area_mm2=p.area_mm2, frequency_hz=p.frequency_hz,
        tokens=jnp.asarray(tokens, jnp.float32),
        carbon_intensity_g_per_kwh=preset.carbon_intensity_g_per_kwh,
        embodied_g_per_mm2=preset.embodied_g_per_mm2, lifetime_s=preset.lifetime_s,
    )


def _check_preset(preset: Preset) -> None:
    if preset.name != "paper":  # only the paper row model exists so far (issue 6 adds more)
        raise ValueError(f"preset={preset.name!r}: implemented presets are {', '.join(PRESETS)}")


def evaluate(arch: Arch, workload: Workload, preset: str | Preset = "paper") -> Report:
    """Cost of running ``workload`` (prefill + decode, all layers) on ``arch`` under ``preset``."""
    pr = get_preset(preset)
    _check_preset(pr)
    p = arch_params(arch, pr.missing_attribute)
    t = {k: jnp.asarray(v) for k, v in table_arrays(_padded(op_table(workload, pr.decode))).items()}
    totals = _totals_single(p, t)
    return _report(totals, p, _tokens(workload, pr), pr)


def sweep(
    archs: Sequence[Arch], workloads: Sequence[Workload], preset: str | Preset = "paper"
) -> Report:
    """Every design x every workload in one jitted call: a Report with leading axes [A, W]."""
    pr = get_preset(preset)
    _check_preset(pr)
    if not archs or not workloads:
        raise ValueError("sweep needs at least one arch and one workload")
    tables = [op_table(w, pr.decode) for w in workloads]
    rows = -(-max(t.rows for t in tables) // ROW_BUCKET) * ROW_BUCKET
    cols = [table_arrays(t.pad_to(rows)) for t in tables]
    ts = {k: jnp.asarray(np.stack([c[k] for c in cols])) for k in cols[0]}
    ps = stack_params([arch_params(a, pr.missing_attribute) for a in archs])
    totals = _totals_grid(ps, ts)
    tokens = jnp.asarray([_tokens(w, pr) for w in workloads], jnp.float32)[None, :]
    expand = ArchParams(*(v[:, None] for v in ps))
    return _report(totals, expand, tokens, pr)


def report_at(report: Report, *index: int) -> Report:
    """One entry of a swept report (e.g. ``report_at(r, a, w)``)."""
    return jax.tree_util.tree_map(lambda x: x[index], report)


__all__ = [
    "PAPER", "PRESETS", "ArchParams", "Breakdown", "Preset", "Report", "arch_params", "evaluate",
    "get_preset", "report_at", "sweep",
]
