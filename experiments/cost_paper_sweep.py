"""Benchmark + result: the full paper-preset cost sweep, timed end to end (including compilation).

    python -m experiments.cost_paper_sweep            # prints the wall time, writes results/cost_paper_sweep/

Grid (issue 5): every design (24 single-node configurations: the CLI names plus Mugi's ``lut``
variants) x 4 Llama-2 models x 6 sequence lengths x 6 batch sizes; the mesh sweep (every
H x 8 / SA / SIMD design on 2x1, 2x2, 4x4, 8x8 meshes at batch 8, sequence 4096); and the GQA
sweep (Llama-2-70B with 8/16/32/64 KV heads, every design, batch 8, sequence 4096).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build_grids():
    from mugi_jax.hw import ARCH_NAMES, MESHES, get_arch
    from mugi_jax.workloads import BATCH_SIZES, GQA_KV_HEADS, SEQ_LENS, Workload, get_model

    archs = [get_arch(n) for n in ARCH_NAMES] + [get_arch(f"mugi-{h}x8", variant="lut") for h in (32, 64, 128, 256)]
    llama2 = ("llama2-7b", "llama2-13b", "llama2-70b", "llama2-70b-gqa")
    main = [Workload(get_model(m), b, s) for m in llama2 for s in SEQ_LENS for b in BATCH_SIZES]
    mesh_names = [n for n in ARCH_NAMES if n.startswith(("mugi", "carat", "sa-", "simd"))]
    mesh_archs = [get_arch(n, nodes=mesh) for n in mesh_names for mesh in MESHES[1:]]
    mesh_archs += [get_arch("tensor-8x16x16", nodes=mesh) for mesh in ("2x1", "2x2")]
    mesh_work = [Workload(get_model(m), 8, 4096) for m in llama2]
    gqa_work = [Workload(get_model("llama2-70b-gqa", kv_heads=g), 8, 4096) for g in GQA_KV_HEADS]
    return archs, main, mesh_archs, mesh_work, gqa_work


def run(out_dir: Path | None = None) -> dict:
    t0 = time.perf_counter()
    c0 = time.process_time()
    from mugi_jax.cost import sweep

    archs, main, mesh_archs, mesh_work, gqa_work = build_grids()
    r_main = sweep(archs, main)
    r_mesh = sweep(mesh_archs, mesh_work)
    r_gqa = sweep(archs, gqa_work)
    # sweep() returns host (NumPy) arrays: all device work is finished here
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n_eval = len(archs) * len(main) + len(mesh_archs) * len(mesh_work) + len(archs) * len(gqa_work)
    summary = {"wall_time_s": wall, "cpu_time_s": cpu, "evaluations": n_eval, "designs": len(archs),
               "mesh_designs": len(mesh_archs), "workloads": len(main)}
    if out_dir is not None:
        import numpy as np

        from mugi_jax.io import provenance, write_csv, write_json

        rows = []
        for grid, A, W in ((r_main, archs, main), (r_mesh, mesh_archs, mesh_work), (r_gqa, archs, gqa_work)):
            thr = np.asarray(grid.throughput_gflops)
            ee = np.asarray(grid.energy_efficiency)
            pe = np.asarray(grid.power_efficiency_gflops_per_j)
            en = np.asarray(grid.energy_j)
            t = np.asarray(grid.execution_time_s)
            area = np.asarray(grid.area_mm2)
            for i, a in enumerate(A):
                for j, w in enumerate(W):
                    rows.append({"arch": a.name, "variant": a.variant, "mesh": a.mesh.name,
                                 "model": w.model.name, "kv_heads": w.model.kv_heads, "batch": w.batch,
                                 "seq_len": w.seq_len, "execution_time_s": t[i, j],
                                 "throughput_gflops": thr[i, j], "energy_j": en[i, j],
                                 "energy_efficiency": ee[i, j], "power_efficiency_gflops_per_j": pe[i, j],
                                 "area_mm2": area[i, j]})
        write_csv(out_dir / "sweep.csv", rows)
        write_json(out_dir / "provenance.json", provenance({"preset": "paper", **summary}, seed=None, wall_time_s=wall))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/cost_paper_sweep"),
                        help="where to write sweep.csv + provenance.json")
    parser.add_argument("--no-write", action="store_true", help="time only, write nothing")
    args = parser.parse_args()
    if not args.no_write:
        from mugi_jax.report.helpers import script_out_dir

        script_out_dir(args.out)
    s = run(None if args.no_write else args.out)
    print(f"paper sweep: {s['evaluations']} evaluations ({s['designs']} designs x {s['workloads']} "
          f"workloads + mesh + GQA) in {s['wall_time_s']:.2f} s wall, {s['cpu_time_s']:.2f} s CPU "
          "(end to end, including JAX import and compilation)")


if __name__ == "__main__":
    main()
