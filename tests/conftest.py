"""Suite-wide ordering for ``make test`` (``pytest -n 2 --dist loadfile --no-loadscope-reorder``).

Files that hold a ``slow`` test (a real model, a corpus, a subprocess: one to four minutes of
work each) run first, the many short files after them: with whole files handed to the two
workers in this order, the long ones are spread over both workers from the start and the short
ones fill in at the end, instead of a long file starting last while the other worker idles.
Whole files per worker (``--dist loadfile``) also load each module-scoped real model (SmolLM2,
Gemma 3 and its NumPy reference) once, not once per worker.  Within a file the order is the
file's own.
"""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: otherwise as collected
