"""Shared timing for the ``bench_*`` benchmarks: interleaved runs, min and median, verdicts.

Every benchmark compares a candidate with what a user would otherwise run (the ``exact`` preset's
path, weights prepared once, outside the timed region).  On a shared machine the load changes
while a benchmark runs, so the compared callables are run interleaved (A B A B ...) after one
untimed warm-up call each (compilation), and both the minimum (the least disturbed run) and the
median are reported.  A verdict is ``PASS`` when both the ratio of minima and the ratio of
medians meet the goal, ``FAIL`` when neither does, and names the one that does otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = ["Timing", "interleaved", "ratio", "verdict", "load_average", "fmt_ratio", "stage_times"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall times (``samples``) and process CPU times (``cpu``, all threads) in seconds of the
    repeated calls of one callable.  CPU time counts the work done, so it moves less than wall
    time when other processes compete for the cores."""

    samples: tuple[float, ...]
    cpu: tuple[float, ...] = ()

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Time every callable ``repeats`` times, one round over all of them at a time (A B A B ...),
    after one untimed call each (compilation, warm-up).  Results are blocked on."""
    if repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {repeats}")
    for fn in fns.values():
        jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: Timing(tuple(samples[name]), tuple(cpu[name])) for name in fns}


def ratio(t: Timing, ref: Timing) -> tuple[float, float]:
    """``(min ratio, median ratio)`` of ``t`` against the baseline ``ref``."""
    return t.min / ref.min, t.median / ref.median


def verdict(ratios: tuple[float, float], goal: float) -> str:
    """``PASS`` when both the ratio of minima and the ratio of medians meet ``goal``, ``FAIL``
    when neither does, else which one does (the load moved during the run)."""
    r_min, r_med = ratios
    if r_min <= goal and r_med <= goal:
        return "PASS"
    if r_min <= goal:
        return "PASS(min only)"
    if r_med <= goal:
        return "PASS(median only)"
    return "FAIL"


def fmt_ratio(ratios: tuple[float, float]) -> str:
    return f"{ratios[0]:.2f}/{ratios[1]:.2f}"


def load_average() -> str:
    """The 1-minute load average (other processes on the machine), for the printed record."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - not available on every OS
        return "n/a"


def trace_events(fn: Callable[[], Any], repeats: int) -> list[dict]:
    """The events of a JAX profiler trace (Perfetto JSON) of ``repeats`` calls of ``fn``, after
    one untimed call (compilation and first-use work left out)."""
    import glob
    import gzip
    import json
    import tempfile

    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(repeats):
            jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{tmp}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def stage_times(fn: Callable[[], Any], repeats: int, hlo_text: str = "") -> list[dict]:
    """Time of each compiled stage (XLA:CPU thunk: one fusion, reduction, gather, ...) of
    ``fn``'s repeated calls, read from a JAX profiler trace: rows ``{"stage", "shape", "op",
    "calls", "min_us", "median_us"}``, slowest first.  ``hlo_text`` (the compiled module's
    ``as_text()``) names each stage's output shape and source op.  Conditionals (whose branches
    are timed as their own stages) and runtime bookkeeping are left out."""
    import re

    events = trace_events(fn, repeats)
    shapes = {m[1]: (m[2], m[3]) for m in re.finditer(
        r"%([\w.-]+) = (\S+) (?:fusion|gather|reduce|copy)\(.*?op_name=\"([^\"]*)\"", hlo_text)}
    durations: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and name in shapes:
            durations.setdefault(name, []).append(float(e["dur"]))
    rows = [{"stage": name, "shape": shapes[name][0], "op": shapes[name][1].split("/")[-1],
             "calls": len(d), "min_us": min(d), "median_us": statistics.median(d)}
            for name, d in durations.items()]
    return sorted(rows, key=lambda r: -r["min_us"])
