"""FP32 activations x BF16-held weights (the ``bf16`` weight residency) for decode steps.

XLA:CPU cannot consume BF16 weights inside a batch-1 dot: every BF16 form of its dot is 6-15x
slower than the FP32 one (``experiments/bench_decode_dot.py``), so a step on BF16-held weights
widened them to FP32 first.  :func:`bf16_weight_matmul` runs a product with few rows (a decode
step: one row per sequence, at most :data:`NATIVE_MAX_ROWS`) on the native kernel
``mugi_jax/_native/decode_gemv.cc`` on the CPU, which reads the BF16 weights as held (half the
bytes of FP32) and widens them in registers; larger products (prefill), other platforms and
``MUGI_JAX_NATIVE=0`` keep the XLA path
(``jnp.matmul`` of the FP32 activations and the widened weights at ``HIGHEST`` precision).

Numerics: both paths compute ``sum_k x[m, k] * float(w[k, n])`` in FP32 from the same BF16
weights and differ only in the order and grouping of the FP32 accumulation.  The native kernel
fixes it: per output, a sequential sum over ``k`` in increasing order, one fused multiply-add
rounded once per step, subnormals flushed as XLA:CPU flushes them, whatever the thread count;
the XLA dot's order is XLA's.  Both are within ``gamma_K * sum_k |x w| + K 2^-126``
(``gamma_K = K u / (1 - K u)``, ``u = 2^-24``; the last term for flushed subnormals) of the
exact sum, so they differ by at most twice that (tests/models/test_residency.py).

Sharding (``custom_partitioning``): each device runs the kernel on its shard and the weights are
never gathered.  Weights split along ``n`` (column-parallel: Q/K/V, gate/up, the LM head's
vocabulary) give the single-device bits with no collective; weights split along ``k``
(row-parallel: O, down) give per-device partial sums added by a ``psum``, a different FP32
order (as XLA's partitioned dot has), within the same bound with ``K`` counting every term.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jaxtyping import Array, Float

from mugi_jax import _native

__all__ = ["bf16_weight_matmul", "NATIVE_MAX_ROWS"]

#: Products with at most this many rows of activations (batch x tokens) use the native kernel.
NATIVE_MAX_ROWS = 8

_FAMILY, _HANDLER = "decode_gemv", "decode_gemv"


def _xla(x: Array, w: Array) -> Array:
    return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _native_ffi(x: Array, w: Array, threads: int) -> Array:
    return jax.ffi.ffi_call("mugi_" + _HANDLER,
                            jax.ShapeDtypeStruct(x.shape[:-1] + w.shape[-1:], jnp.float32),
                            vmap_method="sequential")(x, w, threads=np.int64(threads))


def _partition(threads, mesh, arg_shapes, result_shape):
    """Each device multiplies its shard: ``n`` keeps the weight's split (no collective), a
    split ``k`` (row-parallel weights) gives partial sums added by ``psum`` (FP32 partial sums
    in another order, as XLA's partitioned dot adds them), the activations' leading axes keep
    theirs unless they use the weight's mesh axes.  The weights are never gathered."""
    from jax.sharding import NamedSharding, PartitionSpec

    x_shape, w_shape = arg_shapes
    ndim = len(x_shape.shape)
    xspec = tuple(x_shape.sharding.spec) + (None,) * (ndim - len(x_shape.sharding.spec))
    wspec = tuple(w_shape.sharding.spec) + (None,) * (2 - len(w_shape.sharding.spec))
    mesh = w_shape.sharding.mesh
    k_axis, n_axis = wspec
    used = _native.mesh_axes(k_axis) | _native.mesh_axes(n_axis)
    lead = tuple(None if _native.mesh_axes(a) & used else a for a in xspec[:-1])
    x_sharding = NamedSharding(mesh, PartitionSpec(*lead, k_axis))
    w_sharding = NamedSharding(mesh, PartitionSpec(k_axis, n_axis))
    y_sharding = NamedSharding(mesh, PartitionSpec(*lead, n_axis))

    def lower(x: Array, w: Array) -> Array:
        y = _native_ffi(x, w, threads)
        return y if k_axis is None else jax.lax.psum(y, k_axis)

    return mesh, lower, y_sharding, (x_sharding, w_sharding)


def _infer(threads, mesh, arg_shapes, result_shape):
    return _partition(threads, mesh, arg_shapes, result_shape)[2]


@functools.partial(custom_partitioning, static_argnums=(2,))
def _partitioned(x: Array, w: Array, threads: int) -> Array:
    return _native_ffi(x, w, threads)


_partitioned.def_partition(partition=_partition, infer_sharding_from_operands=_infer,
                           sharding_rule="... k, k n -> ... n")


@functools.lru_cache(maxsize=None)
def _batchable(threads: int) -> Callable:
    """The partitioned kernel under ``vmap``: over ``x`` only more rows (the kernel takes
    ``(..., k)``), over ``w`` a loop."""

    @jax.custom_batching.custom_vmap
    def call(x: Array, w: Array) -> Array:
        return _partitioned(x, w, threads)

    @call.def_vmap
    def _(axis_size, in_batched, x, w):
        if in_batched[1]:
            if not in_batched[0]:
                x = jnp.broadcast_to(x, (axis_size,) + x.shape)
            return jax.lax.map(lambda xw: call(*xw), (x, w)), True
        return call(x, w), in_batched[0]

    return call


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _native_call(x: Array, w: Array, threads: int = 0) -> Array:
    """The native kernel (``threads``: 0 = the XLA CPU thread pool, else exactly that many)."""
    return _batchable(threads)(x, w)


@_native_call.defjvp
def _native_call_jvp(threads: int, primals: tuple, tangents: tuple) -> tuple:
    # the kernel has no derivative of its own; the product is linear, so XLA's products serve
    (x, w), (dx, dw) = primals, tangents
    return _native_call(x, w, threads), _xla(dx, w) + _xla(x, dw)


def native_available() -> bool:
    """Whether :func:`bf16_weight_matmul` may call the native kernel in this process (at trace
    time): native kernels enabled and the kernel built and registered."""
    return _native.register(_FAMILY, (_HANDLER,))


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
