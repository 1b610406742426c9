"""Native (C++ XLA FFI) CPU kernels, compiled from the package's sources on first use and cached.

XLA:CPU runs a table gather as a scalar loop and cannot fuse some multi-pass kernels into one
pass over cache-resident data (see docs/nonlinear.md), so a few kernels also exist as C++ sources
next to this file (``<name>.cc``, one shared library each).  :func:`register` compiles a source
with ``g++`` the first time it is needed (a few seconds), caches the library under
``$MUGI_JAX_NATIVE_CACHE`` (default ``~/.cache/mugi-jax/native``) keyed by everything that could
change the machine code, loads it and registers its handlers as XLA FFI targets ``"mugi_<handler>"``
for the CPU platform.  Callers select the native target with ``jax.lax.platform_dependent(cpu=...,
default=<XLA path>)`` only when :func:`register` returned True; every native kernel returns the
same bits as its XLA path, which stays the fallback (no compiler, ``MUGI_JAX_NATIVE=0``, GPU/TPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["enabled", "register", "FLAGS", "cache_dir", "mesh_axes"]

#: Compiler flags.  ``-ffp-contract=off`` (no FMA contraction) and ``-fno-fast-math`` keep every
#: FP32 operation a correctly rounded IEEE operation, as XLA computes it.
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
         "-march=native")
COMPILER = "g++"

_SOURCE_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
_results: dict[str, bool] = {}           # kernel family -> register()'s answer in this process
_registered: set[str] = set()            # FFI targets registered in this process
_libraries: dict[str, ctypes.CDLL] = {}  # kept alive: XLA holds pointers into them
_warned: set[str] = set()


def enabled() -> bool:
    """False when the environment variable ``MUGI_JAX_NATIVE`` is ``0`` (force the XLA paths)."""
    return os.environ.get("MUGI_JAX_NATIVE", "1").strip() != "0"


def cache_dir() -> Path:
    """``$MUGI_JAX_NATIVE_CACHE`` or ``~/.cache/mugi-jax/native``."""
    return Path(os.environ.get("MUGI_JAX_NATIVE_CACHE")
                or Path.home() / ".cache" / "mugi-jax" / "native")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler_version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout


def _cache_key(source: str, compiler_version: str, include_dir: str) -> str:
    """sha256 of everything the library's machine code depends on."""
    import jaxlib

    h = hashlib.sha256()
    for part in (source, " ".join(FLAGS), compiler_version, jaxlib.__version__, include_dir,
                 _cpu_flags()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _build(name: str, compiler: str) -> Path:
    """The cached library of ``<name>.cc``, compiled first if missing.  Raises ``RuntimeError``
    with a one-line cause if it cannot be built."""
    import jax

    source_path = _SOURCE_DIR / f"{name}.cc"
    try:
        source = source_path.read_text()
    except OSError as e:
        raise RuntimeError(f"cannot read the kernel source {source_path}: {e.strerror}") from None
    include_dir = jax.ffi.include_dir()
    key = _cache_key(source, _compiler_version(compiler), include_dir)
    directory = cache_dir()
    library = directory / f"{name}-{key[:24]}.so"
    if library.exists():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{library.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise RuntimeError(f"cannot write the native kernel cache {directory} ({e.strerror}); "
                           "set MUGI_JAX_NATIVE_CACHE to a writable directory") from None
    try:
        done = subprocess.run([compiler, *FLAGS, f"-I{include_dir}", str(source_path), "-o", tmp],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            log = directory / f"{name}-{key[:24]}.log"
            log.write_text(done.stderr)
            first = next((ln for ln in done.stderr.splitlines() if "error" in ln),
                         done.stderr.strip().splitlines()[0] if done.stderr.strip() else "")
            raise RuntimeError(f"{compiler} failed on {source_path.name}: {first.strip()} "
                               f"(full log: {log})")
        os.chmod(tmp, 0o755)
        os.replace(tmp, library)  # atomic: concurrent processes see the old state or the whole
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def register(name: str, handlers: Sequence[str]) -> bool:
    """Compile (if its cached library is missing) and load ``<name>.cc``, and register each of
    its exported handler symbols ``h`` as the XLA FFI target ``"mugi_" + h`` on the CPU.

    Returns True when all handlers are registered.  Returns False when ``MUGI_JAX_NATIVE=0``
    (silently: a deliberate choice) or when the library cannot be built or loaded (with one
    warning per cause, naming it and the fix; never an exception).  The answer for ``name`` is
    cached for the process, except while disabled."""
    if not enabled():
        return False
    handlers = tuple(handlers)
    with _lock:
        if name in _results and (not _results[name]
                                 or all(f"mugi_{h}" in _registered for h in handlers)):
            return _results[name]
        ok = _register(name, handlers)
        _results[name] = ok
        return ok


def _register(name: str, handlers: tuple[str, ...]) -> bool:
    compiler = shutil.which(COMPILER)
    if compiler is None:
        _warn_once(f"mugi_jax: no C++ compiler ({COMPILER}) found: native kernels disabled, XLA "
                   f"fallback in use (install {COMPILER}, or set MUGI_JAX_NATIVE=0 to silence)")
        return False
    try:
        import jax

        library = _build(name, compiler)
        lib = _libraries.get(name) or ctypes.CDLL(str(library))
        _libraries[name] = lib
        for h in handlers:
            target = f"mugi_{h}"
            if target in _registered:
                continue
            try:
                symbol = getattr(lib, h)
            except AttributeError:
                raise RuntimeError(f"{library.name} has no handler symbol {h!r}") from None
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
            _registered.add(target)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        _warn_once(f"mugi_jax: native kernel {name!r} unavailable, XLA fallback in use: {e} "
                   "(set MUGI_JAX_NATIVE=0 to silence)")
        return False
    return True


def mesh_axes(entry: object) -> set:
    """The mesh axes one entry of a ``PartitionSpec`` names (``None``, a name or a tuple of
    names), for the kernels' ``custom_partitioning`` rules."""
    return set() if entry is None else set(entry if isinstance(entry, tuple) else (entry,))
