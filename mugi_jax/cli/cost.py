"""``mugi-jax cost ...``: the cost model from the command line.

    mugi-jax cost llm --arch mugi-256x8 --model llama2-70b-gqa --batch 8 --seq-len 4096 \
        --preset paper [--nodes 4x4] [--variant lut] [--kv-heads 8] --json

The ``cost`` group is a sub-app so that further commands (``cost gemm``, ...) register on
``cost_app`` without touching this one.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from mugi_jax.cli._common import CliError, app, print_json

cost_app = typer.Typer(
    name="cost",
    help="Cost model: cycles, energy, area, metrics and carbon of a design on a workload.",
    no_args_is_help=True,
)
app.add_typer(cost_app, name="cost")


def _choice(param: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise CliError(f"{param}={value!r} is not valid; valid values: {', '.join(allowed)}")
    return value


def llm_result(
    arch: str, model: str, batch: int = 8, seq_len: int = 4096, preset: str = "paper",
    nodes: str = "1x1", variant: Optional[str] = None, kv_heads: Optional[int] = None,
) -> dict[str, Any]:
    """The JSON object ``cost llm`` prints (also usable from Python)."""
    from mugi_jax.cost import PRESETS, evaluate
    from mugi_jax.hw import ARCH_NAMES, MESHES, get_arch
    from mugi_jax.workloads import MODEL_NAMES, Workload, get_model

    _choice("--arch", arch, ARCH_NAMES)
    _choice("--model", model, MODEL_NAMES)
    _choice("--preset", preset, tuple(PRESETS))
    _choice("--nodes", nodes, MESHES)
    if variant is not None and not arch.startswith("mugi-"):
        raise CliError(f"--variant applies to mugi-* designs only (got --arch {arch}); valid: vlp, lut")
    if variant is not None:
        _choice("--variant", variant, ("vlp", "lut"))
    if not 1 <= batch <= 1024:
        raise CliError(f"--batch={batch}: allowed range is 1..1024")
    try:
        workload = Workload(get_model(model, kv_heads), batch, seq_len)
        design = get_arch(arch, variant=variant, nodes=nodes)
    except ValueError as err:
        raise CliError(str(err).replace("seq_len=", "--seq-len=").replace("kv_heads=", "--kv-heads=")) from err
    report = evaluate(design, workload, preset)
    out: dict[str, Any] = {
        "arch": design.name, "variant": design.variant, "nodes": design.mesh.name,
        "model": model, "kv_heads": workload.model.kv_heads, "batch": batch, "seq_len": seq_len,
        "prefill_len": workload.prefill_len, "preset": preset,
    }
    out.update(report.to_dict())
    return out


@cost_app.command("llm")
def llm(
    arch: str = typer.Option(..., "--arch", help="Design, e.g. mugi-256x8, sa-16, simd-16, tensor-8x16x16."),
    model: str = typer.Option(..., "--model", help="Model, e.g. llama2-7b, llama2-70b-gqa, smollm2-135m."),
    batch: int = typer.Option(8, "--batch", help="Sequences decoded together."),
    seq_len: int = typer.Option(4096, "--seq-len", help="Maximum sequence length (prompt 64 + decode)."),
    preset: str = typer.Option("paper", "--preset", help="Cost-model preset."),
    nodes: str = typer.Option("1x1", "--nodes", help="Node mesh: 1x1, 2x1, 2x2, 4x4, 8x8."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Mugi sub-variant: vlp (default) or lut."),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", help="Override the model's KV heads (GQA sweep)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Cost of LLM inference (prefill + decode, all layers) on one design."""
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
