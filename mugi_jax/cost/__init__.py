"""Cost model: cycles, energy, area, metrics and carbon of LLM inference on each design.

Structure (Timeloop-style, kept apart):

- architecture (:mod:`mugi_jax.hw`): what each design instantiates;
- workload (:mod:`mugi_jax.workloads`): op tables;
- mapping + cycles + event counts (:mod:`mugi_jax.cost.model`, :mod:`mugi_jax.cost.events`):
  pure functions over whole op tables, ``jax.jit``/``vmap``-ped; designs are flattened into
  numeric :class:`~mugi_jax.cost.model.ArchParams`, so one compiled function serves every design;
- metrics and carbon (:mod:`mugi_jax.cost.report`), presets (:mod:`mugi_jax.cost.presets`).

Entry points: :func:`evaluate` (one design x one workload) and :func:`sweep` (grids).  A sweep
groups workloads that differ only in sequence length (their tables nest, see
:func:`mugi_jax.workloads.op_table_family`), pads every array to fixed buckets so the compiled
function is reused across calls, and runs designs in vmapped chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mugi_jax import mesh as meshlib
from mugi_jax.cost.events import paper_charges
from mugi_jax.cost.model import (
    ArchParams, arch_params, gemm_row_counts, nonlinear_row_counts, prefix_family_totals, stack_params,
    table_arrays,
)
from mugi_jax.cost.presets import PAPER, PRESETS, REALISTIC, PaperModel, Preset, RealisticModel, get_preset
from mugi_jax.cost.report import Breakdown, Report, derive_report
from mugi_jax.hw.arch import Arch
from mugi_jax.hw.inventory import all_modules, module_figures
from mugi_jax.hw.memory import sram_figures
from mugi_jax.workloads import GEMM, OpTable, Workload, op_table, op_table_prefix_family

FIXED_GEMM_BUCKET = 32  # fixed (seq-len independent) GEMM rows, padded
FIXED_NL_BUCKET = 8  # fixed nonlinear rows, padded
DECODE_BUCKET = 1024  # attention-decode rows per block, padded to a multiple of this
SEQ_BUCKET = 8  # most sequence lengths per family (padded to a power of two up to this)
GROUP_BUCKET = 4  # families per call, padded
ARCH_CHUNK = 8  # designs per vmapped call


@jax.jit
def _chunk_totals(ps: ArchParams, fam: dict) -> dict:
    """ps: [A] designs; fam: [G, ...] prefix families -> sums with axes [A, G, S, ...]."""
    per_group = jax.vmap(prefix_family_totals, in_axes=(None,) + (0,) * 7)
    return jax.vmap(per_group, in_axes=(0,) + (None,) * 7)(
        ps, fam["fixed_gemm"], fam["gemm_reps"], fam["gemm"], fam["fixed_nl"], fam["nl_reps"],
        fam["nl"], fam["prefix"])


def _host(x: jax.Array) -> np.ndarray:
    return meshlib.to_host(x).astype(np.float64)


def _design_placement(mesh: jax.sharding.Mesh | None):
    """Designs per vmapped call and how a chunk of stacked design parameters is placed: one
    device, or the design axis split over every device of ``mesh`` (default: the mesh of an
    enclosing :func:`mugi_jax.mesh.using`)."""
    if mesh is None:
        mesh = meshlib.current()[0]
    if mesh is None:
        return ARCH_CHUNK, jnp.asarray
    designs = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))
    return ARCH_CHUNK * mesh.size, lambda x: meshlib.put(np.asarray(x), designs)


def _ceil_to(x: int, q: int) -> int:
    return -(-x // q) * q


def _check_preset(preset: Preset) -> None:
    if not isinstance(preset, Preset):
        raise ValueError(f"preset={preset!r}: implemented presets are {', '.join(PRESETS)}")


def stack_reports(reports: Sequence[Report], shape: tuple[int, ...]) -> Report:
    """Single reports (row-major over ``shape``) stacked into one report with leading axes ``shape``."""
    return jax.tree_util.tree_map(
        lambda *x: np.stack([np.asarray(v, np.float64) for v in x]).reshape(shape + np.shape(x[0])),
        *reports)


def _tokens(workload: Workload, preset: Preset) -> float:
    if workload.model.encoder:  # every input token is encoded once
        return float(workload.batch * workload.seq_len)
    steps = preset.decode.linear_decode_steps
    if steps is None:
        steps = workload.seq_len - workload.prefill_len
    return float(workload.batch * steps)


def _group_workloads(workloads: Sequence[Workload]):
    """Families of workloads differing only in seq_len: key -> [(position, seq_len)]."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for pos, w in enumerate(workloads):
        groups.setdefault((w.model, w.batch, w.prefill_len), []).append((pos, w.seq_len))
    # split families larger than SEQ_BUCKET
    out = []
    for key, members in groups.items():
        for i in range(0, len(members), SEQ_BUCKET):
            out.append((key, members[i:i + SEQ_BUCKET]))
    return out


def sweep(
    archs: Sequence[Arch], workloads: Sequence[Workload], preset: str | Preset = "paper",
    mesh: jax.sharding.Mesh | None = None,
) -> Report:
    """Every design x every workload: a :class:`Report` with leading axes [len(archs), len(workloads)].

    ``preset`` is a name of :data:`PRESETS` or a cost-model object (``PaperModel()``,
    ``RealisticModel(memory=...)``): its ``sweep`` runs.  With a device ``mesh`` (default: the
    mesh of an enclosing :func:`mugi_jax.mesh.using`) the paper model's vmapped design axis is
    split over all of its devices (chunks of ``ARCH_CHUNK`` designs per device); each design's
    sums stay on one device, so the results are bit-identical."""
    pr = get_preset(preset)
    _check_preset(pr)
    if not archs or not workloads:
        raise ValueError("sweep needs at least one arch and one workload")
    if mesh is None:
        return pr.sweep(archs, workloads)
    with meshlib.using(mesh, meshlib.current()[1]):
        return pr.sweep(archs, workloads)


def _sweep_paper(archs: Sequence[Arch], workloads: Sequence[Workload], pr: Preset) -> Report:
    """The paper row model over a grid (see the module docstring)."""
    fams = _group_workloads(workloads)
    built = []
    for (model, batch, prefill), members in fams:
        seqs = sorted({s for _, s in members})
        built.append((op_table_prefix_family(model, batch, seqs, prefill, pr.decode), seqs, members))
    c_max = max(DECODE_BUCKET, _ceil_to(max(f.c_max for f, *_ in built), DECODE_BUCKET))
    n_seq = SEQ_BUCKET
    n_groups = _ceil_to(len(built), GROUP_BUCKET)
    # decode blocks per family: (QK^T, PV) and softmax per attention group (sliding-window models
    # have two groups); families with fewer are padded with zero-repeat blocks (exact zeros)
    n_gemm_blocks = max([2] + [f.gemm_blocks.rows // f.c_max for f, *_ in built if f.c_max])
    n_nl_blocks = n_gemm_blocks // 2

    def blocks(t: OpTable, n_blocks: int, c: int) -> dict:
        if t.rows and len(set(t.op_class.tolist())) != 1:
            raise AssertionError("every attention-decode block row must have the same op class")
        have = t.rows // c if c else 0
        empty = OpTable(*(col[:0] for col in t))
        per = [OpTable(*(col[i * c:(i + 1) * c] for col in t)).pad_to(c_max) if i < have
               else empty.pad_to(c_max) for i in range(n_blocks)]
        cols = [table_arrays(b) for b in per]
        return {k: np.stack([cc[k] for cc in cols]) for k in cols[0]}

    def fixed_part(f, mask: np.ndarray, bucket: int, n_seqs: int):
        idx = np.flatnonzero(mask)
        if len(idx) > bucket:
            raise AssertionError(f"{len(idx)} fixed rows exceed the bucket of {bucket}")
        rows = OpTable(*(col[idx] for col in f.fixed)).pad_to(bucket)
        reps = np.zeros((n_seq, bucket), np.float32)
        reps[:n_seqs, : len(idx)] = f.fixed_reps[:, idx]
        return table_arrays(rows), reps

    fam_arrays = []
    for f, seqs, _ in built:
        is_gemm = f.fixed.kind == GEMM
        fg, rg = fixed_part(f, is_gemm, FIXED_GEMM_BUCKET, len(seqs))
        fn, rn = fixed_part(f, ~is_gemm, FIXED_NL_BUCKET, len(seqs))
        prefix = np.zeros(n_seq, np.int32)
        prefix[: len(seqs)] = f.prefix
        fam_arrays.append({
            "fixed_gemm": fg, "gemm_reps": rg, "gemm": blocks(f.gemm_blocks, n_gemm_blocks, f.c_max),
            "fixed_nl": fn, "nl_reps": rn, "nl": blocks(f.nl_blocks, n_nl_blocks, f.c_max), "prefix": prefix,
        })
    fam_arrays += [fam_arrays[0]] * (n_groups - len(fam_arrays))
    # every call has the same shapes ([ARCH_CHUNK] designs x [GROUP_BUCKET] families), so the
    # kernel compiles once per decode-row bucket and is reused by every chunk and every sweep
    fams_dev = [
        jax.tree_util.tree_map(lambda *x: jnp.asarray(np.stack(x)), *fam_arrays[g:g + GROUP_BUCKET])
        for g in range(0, n_groups, GROUP_BUCKET)
    ]
    params = [arch_params(a, pr.missing_attribute) for a in archs]
    chunk, place = _design_placement(None)
    n_arch = _ceil_to(len(params), chunk)
    params += [params[0]] * (n_arch - len(params))
    rows_out = []
    for i in range(0, n_arch, chunk):
        ps = jax.tree_util.tree_map(place, stack_params(params[i:i + chunk]))
        rows_out.append([_chunk_totals(ps, fam) for fam in fams_dev])
    # post-processing in NumPy float64 (no per-shape compilation, exact enough for the sums)
    totals = {
        k: np.concatenate([np.concatenate([_host(c[k]) for c in row], axis=1)
                           for row in rows_out])[: len(archs)]
        for k in rows_out[0][0]
    }

    # gather [A, G, S] -> [A, W] in the caller's workload order
    g_idx = np.zeros(len(workloads), np.int32)
    s_idx = np.zeros(len(workloads), np.int32)
    for g, (_, seqs, members) in enumerate(built):
        for pos, s in members:
            g_idx[pos], s_idx[pos] = g, seqs.index(s)
    totals = {k: v[:, g_idx, s_idx] for k, v in totals.items()}
    ps = stack_params(params[: len(archs)])
    col = lambda v: np.asarray(v, np.float64)[:, None]  # noqa: E731
    tokens = np.asarray([_tokens(w, pr) for w in workloads], np.float64)[None, :]
    report = derive_report(
        totals, leakage_w=col(ps.leakage_w), area_mm2=col(ps.area_mm2),
        frequency_hz=col(ps.frequency_hz), tokens=tokens,
        carbon_intensity_g_per_kwh=pr.carbon_intensity_g_per_kwh,
        embodied_g_per_mm2=pr.embodied_g_per_mm2, lifetime_s=pr.lifetime_s, xp=np,
    )
    return report


def report_at(report: Report, *index: int) -> Report:
    """One entry of a swept report (e.g. ``report_at(r, a, w)``)."""
    return jax.tree_util.tree_map(lambda x: x[index], report)


def energy_by_module(arch: Arch, workload: Workload, preset: str | Preset = "paper") -> dict[str, float]:
    """Whole-run on-chip energy [J] of each module of ``arch``: dynamic (its charges x the run's
    event counts) plus leakage x execution time; SRAM macros (accesses + leakage) by name, the NoC
    routers as ``noc``.  The values sum to :func:`evaluate`'s ``energy_j`` (float64 here, the
    kernel sums in float32).  Paper preset only (the realistic preset has its own row model).
    """
    pr = get_preset(preset)
    _check_preset(pr)
    if not isinstance(pr, PaperModel):
        raise ValueError(f"preset={pr.name!r}: energy_by_module supports the paper preset only")
    p = arch_params(arch, pr.missing_attribute)
    table = op_table(workload, pr.decode)
    cols = table_arrays(table)
    is_gemm = table.kind == GEMM
    g, nl = gemm_row_counts(p, cols), nonlinear_row_counts(p, cols)
    rep = table.repeat.astype(np.float64)

    def total(key: str) -> float:
        per_row = [np.where(is_gemm, np.asarray(c[key], np.float64), 0.0) if key in c else 0.0
                   for c in (g,)] + [np.where(~is_gemm, np.asarray(c[key], np.float64), 0.0)
                                     if key in c else 0.0 for c in (nl,)]
        return float(np.sum(rep * (per_row[0] + per_row[1])))

    time_s = total("cycles") / float(p.frequency_hz)
    mods = {m.name: m for m in all_modules(arch)}
    out: dict[str, float] = {name: 0.0 for name in mods}
    for base, charges in paper_charges(arch).items():
        count = total(base)
        for name, per in charges.items():
            out[name] += count * per * module_figures(mods[name], pr.missing_attribute).energy_pj * 1e-12
    for name, mod in mods.items():
        leak_w = mod.instances * arch.nodes * module_figures(mod, pr.missing_attribute).leakage_mw / 1e3
        out[name] += leak_w * time_s
    for sram in arch.srams:
        fig = sram_figures(sram)
        out[sram.name] = (total(f"{sram.name}_r") * fig.read_energy_pj + total(f"{sram.name}_w")
                          * fig.write_energy_pj) * 1e-12 + fig.leakage_mw / 1e3 * arch.nodes * time_s
    noc = [n for n, m in mods.items() if m.role == "noc"]
    if noc:
        for n in noc:
            out.pop(n)
        out["noc"] = total("router_bits") * float(p.e_router_bit) * 1e-12 + sum(
            mods[n].instances * arch.nodes * module_figures(mods[n], pr.missing_attribute).leakage_mw / 1e3
            for n in noc) * time_s
    return out


def evaluate(arch: Arch, workload: Workload, preset: str | Preset = "paper") -> Report:
    """Cost of running ``workload`` (prefill + decode, all layers) on ``arch`` under ``preset``
    (a name or a cost-model object).  The paper model's path is a 1 x 1 sweep, so single results
    and grids agree."""
    pr = get_preset(preset)
    _check_preset(pr)
    return pr.evaluate(arch, workload)


__all__ = [
    "PAPER", "PRESETS", "REALISTIC", "ArchParams", "Breakdown", "PaperModel", "Preset",
    "RealisticModel", "Report", "arch_params", "energy_by_module", "evaluate", "stack_reports",
    "get_preset", "report_at", "sweep",
]
