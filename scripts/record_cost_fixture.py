"""Record ``mugi-jax cost llm/gemm --json`` for every built-in design and preset into
``tests/cost/data/cost_cli_fixture.json`` (tests/cost/test_cost_fixture.py checks them bit for bit).

Run it only to re-baseline after a change that is *meant* to move cost figures; say why in the
commit.  ``python scripts/record_cost_fixture.py``
"""

from __future__ import annotations

import json
from pathlib import Path

from mugi_jax.io import write_text

OUT = Path(__file__).resolve().parent.parent / "tests" / "cost" / "data" / "cost_cli_fixture.json"


def cases() -> list[tuple[str, dict]]:
    """(command, keyword arguments of its result function) for every built-in design and preset."""
    from mugi_jax.hw import ARCH_NAMES

    out: list[tuple[str, dict]] = []
    designs = [(a, None) for a in ARCH_NAMES] + [(a, "lut") for a in ARCH_NAMES if a.startswith("mugi-")]
    for arch, variant in designs:
        out.append(("llm", dict(arch=arch, model="llama2-70b-gqa", batch=8, seq_len=4096,
                                preset="paper", variant=variant)))
        out.append(("llm", dict(arch=arch, model="smollm2-135m", batch=2, seq_len=160,
                                preset="paper", nodes="2x2", variant=variant)))
        out.append(("llm", dict(arch=arch, model="gemma3-270m", batch=2, seq_len=160,
                                preset="realistic", variant=variant)))
        if variant is None:
            for preset in ("paper", "realistic"):
                out.append(("gemm", dict(arch=arch, m=8, k=576, n=1536, preset=preset)))
    return out


def run(command: str, kw: dict) -> dict:
    from mugi_jax.cli.cost import gemm_result, llm_result

    return llm_result(**kw) if command == "llm" else gemm_result(**kw)


def main() -> None:
    rec = [{"command": c, "args": kw, "result": run(c, kw)} for c, kw in cases()]
    write_text(OUT, json.dumps(rec, indent=1, sort_keys=True) + "\n")
    print(f"{len(rec)} cases -> {OUT}")


if __name__ == "__main__":
    main()
