"""Package hygiene: no import cycle among mugi_jax's modules (module-level imports), and
numerics reaches its kernels by ordinary imports."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mugi_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level; ``lazy``: also inside functions)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in (ast.walk(tree) if lazy else tree.body):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # ``from pkg import sub`` depends on the submodule
                    sub = f"{node.module}.{a.name}"
                    if sub in files:
                        edges.add(sub)
                    elif node.module in files:
                        edges.add(node.module)
        graph[mod] = edges - {mod}
    return graph


def _without_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # a submodule importing a sibling through its package (``from mugi_jax.pkg import x``,
    # resolved above to the sibling) is fine; an edge to its own package's __init__ (which
    # imports the submodule back) is how Python packages work, not a cycle of code
    return {m: {e for e in es if not m.startswith(e + ".")} for m, es in graph.items()}


def _check_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_cycle():
    _check_acyclic(_without_parent_packages(_graph()))


#: Packages whose function-level (lazy) imports must not form a cycle either (the numerics stack:
#: e.g. nonlinear.vlp and nonlinear.softmax used to import each other inside functions).
NUMERICS_STACK = ("mugi_jax.nonlinear", "mugi_jax.numerics", "mugi_jax.models", "mugi_jax.tune",
                  "mugi_jax.sim", "mugi_jax.gemm", "mugi_jax.quant", "mugi_jax.formats")


def test_no_lazy_import_cycle_in_the_numerics_stack():
    graph = _without_parent_packages(_graph(lazy=True))
    inside = lambda m: m.startswith(NUMERICS_STACK)  # noqa: E731
    _check_acyclic({m: {e for e in es if inside(e)} for m, es in graph.items() if inside(m)})


def test_numerics_has_no_importlib():
    assert "importlib" not in (PKG / "numerics.py").read_text(encoding="utf-8")


def test_cost_models_import_without_a_cycle():
    """presets -> realistic -> conventions, lazily too (realistic used to import presets back
    inside a function for its default model)."""
    graph = _without_parent_packages(_graph(lazy=True))
    models = ("mugi_jax.cost.presets", "mugi_jax.cost.realistic", "mugi_jax.cost.conventions")
    sub = {m: {e for e in es if e in models} for m, es in graph.items() if m in models}
    assert "mugi_jax.cost.presets" not in sub["mugi_jax.cost.realistic"]
    _check_acyclic(sub)
