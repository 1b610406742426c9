"""``mugi-jax cost ...``: the cost model from the command line.

    mugi-jax cost llm --arch mugi-256x8 --model llama2-70b-gqa --batch 8 --seq-len 4096 \
        --preset paper [--nodes 4x4] [--variant lut] [--kv-heads 8] --json

The ``cost`` group is a sub-app so that further commands (``cost gemm``, ...) register on
``cost_app`` without touching this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mugi_jax.cli._common import CliError, app, check_choice, check_int, print_json, status

#: Largest GEMM dimension / batch accepted (keeps every count well inside float32 and int64).
MAX_DIM = 1 << 24
MAX_GEMM_BATCH = 1 << 16
MAX_SEQ_LEN = 1 << 17

cost_app = typer.Typer(
    name="cost",
    help="Cost model: cycles, energy, area, metrics and carbon of a design on a workload.",
    no_args_is_help=True,
)
app.add_typer(cost_app, name="cost")


_choice = check_choice


def _check_arch(arch: str, names: tuple[str, ...]) -> None:
    """A built-in design name or a design file (``*.toml``, ``mugi-jax design show``)."""
    if arch.endswith(".toml"):
        return
    if arch not in names:
        raise CliError(f"--arch {arch!r}: not valid; valid values: {', '.join(names)}, or a design "
                       "file (*.toml, from `mugi-jax design show NAME`)")


def _finite(out: dict[str, Any]) -> dict[str, Any]:
    import math

    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise CliError(f"the shape is too large for the cost model ({', '.join(bad)} overflow); "
                       "use smaller --m/--k/--n/--batch")
    return out


def llm_result(
    arch: str, model: str, batch: int = 8, seq_len: int = 4096, preset: str = "paper",
    nodes: str = "1x1", variant: Optional[str] = None, kv_heads: Optional[int] = None,
) -> dict[str, Any]:
    """The JSON object ``cost llm`` prints (also usable from Python)."""
    from mugi_jax.cost import PRESETS
    from mugi_jax.hw import ARCH_NAMES, MESHES, get_arch
    from mugi_jax.workloads import MODEL_NAMES, Workload, get_model

    _check_arch(arch, ARCH_NAMES)
    if model not in MODEL_NAMES and not (model.endswith(".json") or Path(model).is_dir()):
        raise CliError(f"--model={model!r} is not valid; valid values: {', '.join(MODEL_NAMES)}, "
                       "or a path to a Hugging Face config.json (or its directory)")
    _choice("--preset", preset, tuple(PRESETS))
    _choice("--nodes", nodes, MESHES)
    if variant is not None and not arch.startswith("mugi-"):
        raise CliError(f"--variant applies to mugi-* designs only (got --arch {arch}; a design file "
                       "sets its variant field); valid: vlp, lut")
    if variant is not None:
        _choice("--variant", variant, ("vlp", "lut"))
    check_int("--batch", batch, 1, 1024)
    check_int("--seq-len", seq_len, 65, MAX_SEQ_LEN)  # after the 64-token prefill
    if kv_heads is not None:
        check_int("--kv-heads", kv_heads, 1)
    try:
        workload = Workload(get_model(model, kv_heads), batch, seq_len)
        design = get_arch(arch, variant=variant, nodes=nodes)
    except ValueError as err:
        raise CliError(str(err).replace("seq_len=", "--seq-len=").replace("kv_heads=", "--kv-heads=")
                       .replace("model=", "--model=")) from err
    report = PRESETS[preset].evaluate(design, workload)
    out: dict[str, Any] = {
        "arch": design.name, "variant": design.variant, "nodes": design.mesh.name,
        "model": model, "kv_heads": workload.model.kv_heads, "batch": batch, "seq_len": seq_len,
        "prefill_len": workload.prefill_len, "preset": preset,
    }
    out.update(report.to_dict())  # realistic: + TTFT, TPOT, pJ/FLOP and J/token with/without DRAM
    return out


@cost_app.command("llm")
def llm(
    arch: str = typer.Option(..., "--arch", help="Design, e.g. mugi-256x8, sa-16, simd-16, tensor-8x16x16."),
    model: str = typer.Option(..., "--model", help="Model: a name (llama2-7b, llama2-70b-gqa, gemma3-270m, "
                              "minilm-l6, ...) or a path to a Hugging Face config.json."),
    batch: int = typer.Option(8, "--batch", help="Sequences decoded together."),
    seq_len: int = typer.Option(4096, "--seq-len", help="Maximum sequence length (prompt 64 + decode)."),
    preset: str = typer.Option("paper", "--preset", help="Cost-model preset."),
    nodes: str = typer.Option("1x1", "--nodes", help="Node mesh: 1x1, 2x1, 2x2, 4x4, 8x8."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Mugi sub-variant: vlp (default) or lut."),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="Override the model's KV heads (GQA sweep)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Cost of LLM inference (prefill + decode, all layers) on one design."""
    with status(f"costing {model} on {arch}", enabled=not json_out):
        res = llm_result(arch, model, batch, seq_len, preset, nodes, variant, kv_heads)
    if json_out:
        print_json(res)
        return
    typer.echo(f"{res['arch']} [{res['variant']}] x{res['nodes']}  on  {model} (kv {res['kv_heads']}), "
               f"batch {batch}, seq {seq_len}, preset {preset}")
    rows = [
        ("execution time", res["execution_time_s"], "s"), ("  GEMM", res["gemm_time_s"], "s"),
        ("  nonlinear", res["nonlinear_time_s"], "s"), ("work", res["flops_g"], "GFLOP"),
        ("throughput", res["throughput_gflops"], "GFLOP/s"),
        ("dynamic energy", res["dynamic_energy_j"], "J"), ("leakage", res["leakage_w"], "W"),
        ("total energy", res["energy_j"], "J"),
        ("energy efficiency (paper)", res["energy_efficiency"], "GFLOP/s/J"),
        ("power efficiency", res["power_efficiency_gflops_per_j"], "GFLOP/J"),
        ("tokens/s", res["tokens_per_s"], ""), ("J/token", res["j_per_token"], "J"),
        ("area", res["area_mm2"], "mm^2"),
        ("operational carbon", res["operational_carbon_g"], "gCO2e"),
        ("embodied carbon", res["embodied_carbon_g"], "gCO2e"),
    ]
    for label, value, unit in rows:
        typer.echo(f"  {label:28s} {value:12.5g} {unit}")
    typer.echo("  breakdown (time s / dynamic energy J):")
    for cls, b in res["breakdown"].items():
        typer.echo(f"    {cls:12s} {b['time_s']:12.5g} {b['dynamic_energy_j']:12.5g}")


def gemm_result(
    arch: str, m: int, k: int, n: int, dataflow: str = "os", preset: str = "realistic",
    batch: int = 1, role: str = "proj_q", memory: str = "ddr4", nodes: str = "1x1",
) -> dict[str, Any]:
    """The JSON object ``cost gemm`` prints: one GEMM ``batch x (m x k) @ (k x n)``.

    ``preset="realistic"``: :func:`mugi_jax.cost.realistic.gemm_cost` (fill/drain, DRAM roofline,
    dequantization, overlap); ``preset="paper"``: the paper row model (``dataflow`` ignored: its
    count has no dataflow).  ``energy_j`` = dynamic (+ DRAM in realistic) + leakage over the cycles.
    """
    from mugi_jax.cost import PRESETS, RealisticModel
    from mugi_jax.cost.memory import MEMORY_SYSTEMS, get_memory
    from mugi_jax.cost.realistic import ROLES
    from mugi_jax.cost.systolic import DATAFLOWS
    from mugi_jax.hw import ARCH_NAMES, MESHES, get_arch

    _check_arch(arch, ARCH_NAMES)
    _choice("--dataflow", dataflow, DATAFLOWS)
    _choice("--preset", preset, tuple(PRESETS))
    _choice("--role", role, ROLES)
    _choice("--memory", memory, tuple(MEMORY_SYSTEMS))
    _choice("--nodes", nodes, MESHES)
    for name, v in (("--m", m), ("--k", k), ("--n", n)):
        check_int(name, v, 1, MAX_DIM)
    check_int("--batch", batch, 1, MAX_GEMM_BATCH)
    try:
        design = get_arch(arch, nodes=nodes)
    except ValueError as err:
        raise CliError(str(err)) from err
    out: dict[str, Any] = {"arch": design.name, "nodes": design.mesh.name, "m": m, "k": k, "n": n,
                           "batch": batch, "preset": preset}
    model = PRESETS[preset]
    if preset == "realistic":
        model = RealisticModel(memory=get_memory(memory), dataflow=dataflow)
        out.update(dataflow=dataflow, role=role, memory=memory)
    out.update(model.gemm(design, m, k, n, batch, role))
    return _finite(out)


@cost_app.command("gemm")
def gemm_cmd(
    arch: str = typer.Option(..., "--arch", help="Design, e.g. sa-16, mugi-256x8, tensor-8x16x16."),
    m: int = typer.Option(..., "--m", help="Rows of the activation operand (tokens)."),
    k: int = typer.Option(..., "--k", help="Reduction length."),
    n: int = typer.Option(..., "--n", help="Output channels (columns of the weight operand)."),
    dataflow: str = typer.Option("os", "--dataflow", help="Systolic dataflow: os or ws."),
    preset: str = typer.Option("realistic", "--preset", help="Cost-model preset: realistic or paper."),
    batch: int = typer.Option(1, "--batch", help="Independent GEMMs of this shape."),
    role: str = typer.Option("proj_q", "--role", help="GEMM role (sets Mugi's data-driven cycles per "
                             "k-step; qkt/pv read the KV cache from DRAM)."),
    memory: str = typer.Option("ddr4", "--memory", help="DRAM: ddr4 (128 GB/s), lpddr5, hbm2, hbm3."),
    nodes: str = typer.Option("1x1", "--nodes", help="Node mesh: 1x1, 2x1, 2x2, 4x4, 8x8."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Cost of one GEMM (m x k) @ (k x n) on one design."""
    with status(f"costing the GEMM on {arch}", enabled=not json_out):
        res = gemm_result(arch, m, k, n, dataflow, preset, batch, role, memory, nodes)
    if json_out:
        print_json(res)
        return
    typer.echo(f"{res['arch']}  ({batch} x {m}x{k} @ {k}x{n}), preset {preset}")
    for key in ("cycles", "compute_cycles", "dram_cycles", "time_s", "dram_bytes", "dynamic_energy_j",
                "dram_energy_j", "leakage_energy_j", "energy_j", "flops"):
        if key in res:
            typer.echo(f"  {key:18s} {res[key]:14.6g}")
