"""Cycle counts of a systolic array with pipeline fill/drain skew (realistic preset).

An R x C array (R rows, C columns) computes ``(M x K) @ (K x N)`` in *folds* (the operand
blocks that fit the array), one after another.  Within a fold the operands enter skewed by one
cycle per row/column, so a fold costs its streaming time plus the fill/drain of the skew:

- output stationary (``os``): M on the rows, N on the columns, K streamed in time;
  ``folds = ceil(M/R) ceil(N/C)``, each ``K + (R - 1) + (C - 1)`` cycles (K partial-sum
  steps, the input wavefront reaching the last row and column, and the last output leaving);
- weight stationary (``ws``): K on the rows, N on the columns, M streamed in time;
  ``folds = ceil(K/R) ceil(N/C)``, each ``R + M + (R - 1) + (C - 1)`` cycles (R cycles to shift
  the weight block in, M inputs streamed, and the skew).

Total = ``batch x folds x per_fold - 1`` (the last fold's final cycle overlaps the first cycle
of the run: cycles are counted from 0).  This is the same schedule SCALE-Sim 3.0.0 simulates
cycle by cycle (``compute/systolic_compute_{os,ws}.py``: per fold the demand matrices hold T rows
plus an inter-fold gap of C - 1 (os) / R - 1 + R (ws) rows, then skewed by R - 1), and
``tests/cost/test_scalesim.py`` checks agreement on 25 GEMM shapes.  The paper preset's formula
``ceil(M/R) ceil(N/C) K`` (no skew) is the limit K >> R + C.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

DATAFLOWS: tuple[str, ...] = ("os", "ws")


def check_dataflow(dataflow: str) -> str:
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow={dataflow!r}: allowed values are {', '.join(DATAFLOWS)}")
    return dataflow


def systolic_cycles(
    m: Float[ArrayLike, "..."], k: Float[ArrayLike, "..."], n: Float[ArrayLike, "..."],
    rows: int | Float[ArrayLike, "..."], cols: int | Float[ArrayLike, "..."], dataflow: str = "os",
    batch: Float[ArrayLike, "..."] = 1.0,
) -> Float[Array, "..."]:
    """Compute cycles of ``batch`` GEMMs ``(m x k) @ (k x n)`` with fill/drain (module docstring).

    Elementwise over broadcastable arrays (vmap-free: plain array maths, jit-able).
    """
    check_dataflow(dataflow)
    m, k, n, b = (jnp.asarray(x, jnp.float32) for x in (m, k, n, batch))
    R, C = jnp.asarray(rows, jnp.float32), jnp.asarray(cols, jnp.float32)
    if dataflow == "os":
        folds = jnp.ceil(m / R) * jnp.ceil(n / C)
        per = k + R + C - 2.0
    else:
        folds = jnp.ceil(k / R) * jnp.ceil(n / C)
        per = R + m + R + C - 2.0
    return b * folds * per - 1.0


def systolic_paper_cycles(m, k, n, rows, cols, batch=1.0) -> Float[Array, "..."]:
    """The paper preset's systolic count ``batch ceil(m/W) ceil(n/H) k`` (no skew), for comparison."""
    m, k, n, b = (jnp.asarray(x, jnp.float32) for x in (m, k, n, batch))
    return b * jnp.ceil(m / jnp.minimum(cols, m)) * jnp.ceil(n / jnp.minimum(rows, n)) * k
