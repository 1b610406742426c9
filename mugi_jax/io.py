"""Result files: atomic writes and provenance records.

Every experiment writes ``results/NAME/`` with its CSV/PNG outputs and a ``provenance.json``
(config, seed, package versions, git revision, wall time).  Files are written to a temporary file
in the same directory and renamed into place, so a crash never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PathError", "check_output_dir", "atomic_path", "write_bytes", "write_text", "write_json",
           "write_csv", "save_figure", "git_revision", "package_versions", "provenance"]

class PathError(ValueError):
    """A directory or file that cannot be used; the message names the flag or variable that set it."""


def check_output_dir(path: str | os.PathLike[str], label: str) -> Path:
    """Create directory ``path`` (with parents) and check that files can be written in it.

    Called before any work starts, so a bad ``--out`` fails at once instead of after the
    computation.  Raises :class:`PathError` ``"{label} {path}: why"`` (``label`` is the flag or
    environment variable as the user typed it, e.g. ``"--out"`` or ``"MUGI_JAX_DATA="``).
    """
    path = Path(path)
    shown = f"{label}{path}" if label.endswith("=") else f"{label} {path}"
    if path.exists() and not path.is_dir():
        raise PathError(f"{shown}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PathError(f"{shown}: cannot write there ({err.strerror or err})") from None
    return path


_TRACKED_PACKAGES = (
    "mugi-jax", "jax", "jaxlib", "flax", "optax", "equinox", "chex", "numpy", "ml_dtypes",
)


def is_writer() -> bool:
    """False on processes 1.. of a multi-process JAX run (``--distributed``): only process 0
    writes result files (all processes compute the same gathered results)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: an existing file's own mode, else
    0o666 less the umask (``mkstemp`` creates its file 0o600, which would otherwise stay)."""
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success (and
    only on the writing process: elsewhere the temporary file is discarded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if is_writer():
            os.chmod(tmp_path, _file_mode(path))
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy/jax scalars converted)."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "__dataclass_fields__"):
            return {k: getattr(o, k) for k in o.__dataclass_fields__}
        return str(o)

    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> Path:
    """Atomically write a list of dict rows as CSV (columns from the first row unless given)."""
    if not rows and fieldnames is None:
        raise ValueError(f"write_csv({path}): rows is empty and no fieldnames were given")
    fields = list(fieldnames if fieldnames is not None else rows[0].keys())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return write_text(path, buf.getvalue())


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Atomically save a matplotlib figure (format from the suffix of ``path``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The current git commit of the checkout (``-dirty`` appended if modified), or None."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def package_versions(names: Sequence[str] = _TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that determine numerical results."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config: Mapping[str, Any], seed: int | None, wall_time_s: float | None = None) -> dict[str, Any]:
    """The provenance record stored next to every result."""
    return {
        "config": dict(config),
        "seed": seed,
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "wall_time_s": wall_time_s,
    }
