"""mugi_jax._native: compiling, caching and registering the C++ XLA FFI kernels, and the fallback.

The kernels' numerics are tested where they are used (e.g. tests/nonlinear/test_native_softmax.py
against the XLA path and the NumPy simulators); here the build machinery.  Where ``g++`` is on
PATH (every machine of this project's kind, and CI) compiling must work: those tests fail, not
skip, if it breaks.
"""

from __future__ import annotations

import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mugi_jax import _native

HAS_GXX = shutil.which("g++") is not None

# A minimal kernel (x + 1 on float32) in the shape every kernel source has.
_PLUS_ONE = r"""
#include <cstdint>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
static ffi::Error Impl(ffi::Buffer<ffi::F32> x, ffi::Result<ffi::Buffer<ffi::F32>> y) {
  for (size_t i = 0; i < x.element_count(); ++i) y->typed_data()[i] = x.typed_data()[i] + %s;
  return ffi::Error::Success();
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(%s, Impl, ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>()
                              .Ret<ffi::Buffer<ffi::F32>>());
"""


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A private source directory and cache; this process's answers for its names forgotten."""
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setattr(_native, "_SOURCE_DIR", src)
    monkeypatch.setenv("MUGI_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MUGI_JAX_NATIVE", raising=False)
    monkeypatch.setattr(_native, "_results", {})
    monkeypatch.setattr(_native, "_warned", set())
    return src


def _write_plus(src, name, handler, increment="1.0f"):
    (src / f"{name}.cc").write_text(_PLUS_ONE % (increment, handler))


def test_source_that_fails_to_compile_warns_once_and_falls_back(sources):
    (sources / "broken.cc").write_text("this is not C++;\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.register("broken", ["broken_handler"]) is False
        assert _native.register("broken", ["broken_handler"]) is False  # cached, no new warning
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "broken" in messages[0] and "XLA fallback" in messages[0]
    assert "\n" not in messages[0]
    if HAS_GXX:
        assert "failed on broken.cc" in messages[0]
        assert not list((sources.parent / "cache").glob("*.so"))  # nothing half-written cached


def test_missing_compiler_warns_once_and_falls_back(sources, monkeypatch):
    _write_plus(sources, "nocompiler", "nocompiler_handler")
    monkeypatch.setattr(_native, "COMPILER", "g++-that-does-not-exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.register("nocompiler", ["nocompiler_handler"]) is False
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no C++ compiler (g++-that-does-not-exist) found" in messages[0]


def test_environment_variable_disables(sources, monkeypatch):
    _write_plus(sources, "disabled", "disabled_handler")
    monkeypatch.setenv("MUGI_JAX_NATIVE", "0")
    assert not _native.enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.register("disabled", ["disabled_handler"]) is False
    assert not caught  # a deliberate choice: silent
    assert not (sources.parent / "cache").exists()  # nothing compiled
    monkeypatch.setenv("MUGI_JAX_NATIVE", "1")
    assert _native.enabled()


def test_cache_key_changes_with_everything_it_covers():
    base = _native._cache_key("source a", "g++ 12", "/include")
    assert base == _native._cache_key("source a", "g++ 12", "/include")
    assert base != _native._cache_key("source b", "g++ 12", "/include")
    assert base != _native._cache_key("source a", "g++ 13", "/include")
    assert base != _native._cache_key("source a", "g++ 12", "/other/include")


@pytest.mark.skipif(not HAS_GXX, reason="no g++ on PATH")
def test_kernel_compiles_registers_runs_and_is_cached(sources):
    """Compiles, registers and runs a kernel; a changed source gets a new library; a second
    process-level registration reuses the cached library without compiling."""
    cache = sources.parent / "cache"
    _write_plus(sources, "plus", "test_native_plus_one")
    assert _native.register("plus", ["test_native_plus_one"]) is True
    libraries = sorted(cache.glob("plus-*.so"))
    assert len(libraries) == 1
    x = jnp.arange(5, dtype=jnp.float32)
    call = jax.ffi.ffi_call("mugi_test_native_plus_one", jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_array_equal(np.asarray(jax.jit(call)(x)), np.arange(5) + 1.0)

    _native._results.clear()  # as a new process would: the cached library is used as is
    mtime = libraries[0].stat().st_mtime_ns
    assert _native.register("plus", ["test_native_plus_one"]) is True
    assert libraries[0].stat().st_mtime_ns == mtime

    _write_plus(sources, "plus", "test_native_plus_two", "2.0f")  # new source, new library
    _native._results.clear()
    _native._libraries.pop("plus", None)
    assert _native.register("plus", ["test_native_plus_two"]) is True
    assert len(list(cache.glob("plus-*.so"))) == 2
    call = jax.ffi.ffi_call("mugi_test_native_plus_two", jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_array_equal(np.asarray(jax.jit(call)(x)), np.arange(5) + 2.0)


def test_missing_handler_symbol_falls_back(sources):
    _write_plus(sources, "nosymbol", "nosymbol_present")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _native.register("nosymbol", ["nosymbol_absent"]) is False
    assert len(caught) == 1
    if HAS_GXX:
        assert "no handler symbol 'nosymbol_absent'" in str(caught[0].message)


@pytest.mark.skipif(not HAS_GXX, reason="no g++ on PATH")
def test_shipped_kernels_compile():
    """Every kernel source shipped in the package compiles and registers (the package's own
    sources, the user's cache)."""
    import importlib

    softmax_module = importlib.import_module("mugi_jax.nonlinear.softmax")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a compile failure's warning fails the test
        assert _native.register("softmax", [softmax_module._NATIVE_HANDLER]) is True
