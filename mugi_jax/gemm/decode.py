"""FP32 activations x BF16-held weights (the ``bf16`` weight residency) for decode steps.

XLA:CPU cannot consume BF16 weights inside a batch-1 dot: every BF16 form of its dot is 6-15x
slower than the FP32 one (``experiments/bench_decode_dot.py``), so a step on BF16-held weights
widened them to FP32 first.  :func:`bf16_weight_matmul` runs a product with few rows (a decode
step: one row per sequence, at most :data:`NATIVE_MAX_ROWS`) on the native kernel
``mugi_jax/_native/decode_gemv.cc`` on the CPU, which reads the BF16 weights as held (half the
bytes of FP32) and widens them in registers; larger products (prefill), other platforms, a
process with more than one device, and ``MUGI_JAX_NATIVE=0`` keep the XLA path
(``jnp.matmul`` of the FP32 activations and the widened weights at ``HIGHEST`` precision).

Numerics: both paths compute ``sum_k x[m, k] * float(w[k, n])`` in FP32 from the same BF16
weights and differ only in the order and grouping of the FP32 accumulation.  The native kernel
fixes it: per output, a sequential sum over ``k`` in increasing order, one fused multiply-add
rounded once per step, whatever the thread count; the XLA dot's order is XLA's.  Both are within
``gamma_K * sum_k |x w|`` (``gamma_K = K u / (1 - K u)``, ``u = 2^-24``) of the exact sum, so
they differ by at most twice that (tests/models/test_residency.py).

Sharding: the native call is only made in a single-device process.  With several devices
(e.g. weights split over the ``model`` mesh axis) the XLA path runs, which XLA's SPMD
partitioner splits without gathering the weights; a custom call would make it gather them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from mugi_jax import _native

__all__ = ["bf16_weight_matmul", "NATIVE_MAX_ROWS"]

#: Products with at most this many rows of activations (batch x tokens) use the native kernel.
NATIVE_MAX_ROWS = 8

_FAMILY, _HANDLER = "decode_gemv", "decode_gemv"


def _xla(x: Array, w: Array) -> Array:
    return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _native_call(x: Array, w: Array, threads: int = 0) -> Array:
    """The native kernel (``threads``: 0 = the XLA CPU thread pool, else exactly that many)."""
    return _native_jvp(x, w, threads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _native_jvp(x: Array, w: Array, threads: int) -> Array:
    return jax.ffi.ffi_call("mugi_" + _HANDLER,
                            jax.ShapeDtypeStruct(x.shape[:-1] + w.shape[-1:], jnp.float32),
                            vmap_method="sequential")(x, w, threads=np.int64(threads))


@_native_jvp.defjvp
def _native_jvp_rule(threads: int, primals: tuple, tangents: tuple) -> tuple:
    # the kernel has no derivative of its own; the product is linear, so XLA's products serve
    (x, w), (dx, dw) = primals, tangents
    return _native_jvp(x, w, threads), _xla(dx, w) + _xla(x, dw)


def native_available() -> bool:
    """Whether :func:`bf16_weight_matmul` may call the native kernel in this process (at trace
    time): one device, native kernels enabled and the kernel built and registered."""
    return jax.device_count() == 1 and _native.register(_FAMILY, (_HANDLER,))


def bf16_weight_matmul(x: Float[Array, "... k"], w: Array) -> Float[Array, "... n"]:
    """``x @ w`` in FP32 for a BF16 ``(k, n)`` weight ``w`` (see the module docstring for the
    path taken and its numerics)."""
    x = x.astype(jnp.float32)
    if w.dtype != jnp.bfloat16 or w.ndim != 2:
        raise ValueError(f"w: a (k, n) bfloat16 weight, got {w.dtype} {w.shape}")
    rows = math.prod(x.shape[:-1])
    if rows > NATIVE_MAX_ROWS or not native_available():
        return _xla(x, w)
    return jax.lax.platform_dependent(x, w, cpu=_native_call, default=_xla)
