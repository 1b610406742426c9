"""The native (C++ XLA FFI) VLP GEMM kernel ``mugi_jax/_native/vlp_gemm.cc`` for prefill-sized
products on the CPU.

It computes exact mode's numerics (docs/numerics.md section 4) with an FP32 accumulator, bit for
bit: products ``bf16(a q)`` (Mugi) or exact ``a q`` (MixPE) looked up from a 16-entry table per
activation (AVX-512 BF16: ``vpermw`` lookups added in order by ``vdpbf16ps``, whose add order is
checked on the CPU at first use; ``vpermps`` on FP32 tables for fewer rows; a portable scalar
loop without AVX-512), summed per output sequentially in ``k`` within each group, then
the group's dequantization and the sum over groups in order, every operation a separate IEEE
FP32 operation with subnormals flushed.  Exact mode's order is one admissible fast-mode order, so
fast mode uses it too where it is faster.  The weights are read as prepared (the int8 codes of
:class:`~mugi_jax.gemm.PreparedWeight`, no copy of their own: the low 4 bits of a code index its
product, so signed, offset-decomposed and unsigned codes need no re-layout).

:func:`fits` decides per call (at trace time) whether the kernel takes a product: an FP32
accumulator, a group of at least :data:`MIN_GROUP` along ``k``, at least :data:`MIN_ROWS` rows
(measured crossover with the XLA kernels: ``experiments.bench_gemm``), the kernel built
(``mugi_jax._native.register``) and ``MUGI_JAX_NATIVE`` not ``0``.  The call is
``lax.platform_dependent(cpu=native, default=XLA)``: other platforms keep the XLA kernels.

Sharding (``custom_partitioning``): the rows of ``a`` and the output columns keep their
sharding (each device runs the kernel on its shard, same bits, no collective).  A weight split
along ``k`` (row-parallel: O, down) cannot keep the sequential order across shards: the kernel
then asks for the whole ``k`` on every device (XLA gathers the weight shard, as the sequential
XLA kernel needs all of ``k`` too) and gives the single-device bits.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jaxtyping import Array

from mugi_jax import _native
from mugi_jax.gemm._weights import KN

__all__ = ["fits", "allowed", "xla_only", "native_available", "vlp_gemm", "MIN_ROWS", "MIN_GROUP", "METHODS"]

#: Products with fewer rows keep the XLA kernels (measured crossover, ``experiments.bench_gemm``).
MIN_ROWS = 8
#: Groups along ``k`` smaller than this keep the XLA kernels (a per-token V cache, groups of 1).
MIN_GROUP = 16

_FAMILY, _HANDLER = "vlp_gemm", "vlp_gemm"
#: zero-point kind -> the kernel's dequantization form (0: none; 1: ``+ f32(z A)``; 2: ``- f32(
#: f32(s z) A)``) and whether the codes are unsigned 0..15
_ZERO_POINT = {"none": (0, False), "offset": (1, False), "min": (1, True), "int": (2, True)}


def native_available() -> bool:
    """Whether the native kernel may be called in this process (at trace time)."""
    return _native.register(_FAMILY, (_HANDLER,))


_off = [0]  # > 0 inside xla_only()


@contextlib.contextmanager
def xla_only() -> Iterator[None]:
    """Within this block :func:`fits` is False: functions traced here take the XLA kernels (the
    benchmark's comparison; ``MUGI_JAX_NATIVE=0`` does the same for a whole process)."""
    _off[0] += 1
    try:
        yield
    finally:
        _off[0] -= 1


def allowed() -> bool:
    """Native kernels enabled (``MUGI_JAX_NATIVE``), not inside :func:`xla_only`, and this one
    built and registered."""
    return not _off[0] and native_available()


def fits(m: int, kn: KN, accumulator: str, mode: str = "exact") -> bool:
    """Whether :func:`vlp_gemm` takes ``(m, k) @ kn`` in ``mode`` (see the module docstring):
    both modes from :data:`MIN_ROWS` rows: measured faster than exact mode's XLA kernel and
    than fast mode's (per-group BF16 dots from 64 rows) at every such shape of
    ``experiments.bench_gemm``; exact mode's order is one fast mode may use."""
    del mode  # the same shapes in both modes (measured faster than either XLA kernel)
    return (accumulator == "fp32" and m >= MIN_ROWS and kn.group >= MIN_GROUP
            and kn.codes.ndim == 2 and kn.codes.dtype == jnp.int8
            and kn.zero_point in _ZERO_POINT and allowed())


#: The kernel's paths (``method``): the fastest exact one available, ``vpermps`` on FP32
#: tables, the portable scalar loop, the AVX512-BF16 pair path (``vpermw`` + ``vdpbf16ps``).
METHODS = {"auto": 0, "vpermps": 1, "scalar": 2, "pairs": 3}


def pair_indices(codes: Array) -> Array:
    """The pair path's indices, ``(k / 2, 2 n)`` uint8: for rows ``k, k + 1`` and column ``i``,
    byte ``2 i`` = ``16 + (q[k + 1, i] & 15)``, byte ``2 i + 1`` = ``q[k, i] & 15`` (the low
    4 bits of a code index its product; ``vdpbf16ps`` adds word ``2 i + 1`` first).  Derived
    per call (one pass over the int8 codes; not held)."""
    k, n = codes.shape
    low = codes.astype(jnp.uint8) & jnp.uint8(15)
    return jnp.stack([low[1::2] | jnp.uint8(16), low[0::2]], axis=-1).reshape(k // 2, 2 * n)


def _ffi(a: Array, codes: Array, scales: Array, zeros: Array, zero_point: str, product: str,
         threads: int, method: str) -> Array:
    form, unsigned = _ZERO_POINT[zero_point]
    k, n = codes.shape
    group = k // scales.shape[0]
    if product == "bf16" and group % 2 == 0 and method in ("auto", "pairs"):
        pairs = pair_indices(codes)
    else:
        pairs = jnp.zeros((0, 2 * n), jnp.uint8)
    return jax.ffi.ffi_call("mugi_" + _HANDLER,
                            jax.ShapeDtypeStruct((a.shape[0], n), jnp.float32),
                            vmap_method="sequential")(
        a, codes, pairs, scales, zeros, threads=np.int64(threads), zero_point=np.int64(form),
        unsigned_codes=unsigned, round_products=product == "bf16",
        method=np.int64(METHODS[method]))


def _partition(zero_point, product, threads, method, mesh, arg_shapes, result_shape):
    """Rows and output columns keep their sharding; ``k`` is whole on every device (the
    sequential order of a group sum cannot be split)."""
    from jax.sharding import NamedSharding, PartitionSpec

    a_shape, codes_shape = arg_shapes[0], arg_shapes[1]
    aspec = tuple(a_shape.sharding.spec) + (None,) * (2 - len(a_shape.sharding.spec))
    wspec = tuple(codes_shape.sharding.spec) + (None,) * (2 - len(codes_shape.sharding.spec))
    mesh = codes_shape.sharding.mesh
    n_axis = wspec[1]
    rows = None if _native.mesh_axes(aspec[0]) & _native.mesh_axes(n_axis) else aspec[0]
    a_sharding = NamedSharding(mesh, PartitionSpec(rows, None))
    w_sharding = NamedSharding(mesh, PartitionSpec(None, n_axis))
    out_sharding = NamedSharding(mesh, PartitionSpec(rows, n_axis))

    def lower(a, codes, scales, zeros):
        return _ffi(a, codes, scales, zeros, zero_point, product, threads, method)

    return mesh, lower, out_sharding, (a_sharding, w_sharding, w_sharding, w_sharding)


def _infer(zero_point, product, threads, method, mesh, arg_shapes, result_shape):
    return _partition(zero_point, product, threads, method, mesh, arg_shapes, result_shape)[2]


@functools.partial(custom_partitioning, static_argnums=(4, 5, 6, 7))
def _partitioned(a, codes, scales, zeros, zero_point, product, threads, method):
    return _ffi(a, codes, scales, zeros, zero_point, product, threads, method)


_partitioned.def_partition(partition=_partition, infer_sharding_from_operands=_infer,
                           sharding_rule="m k, k n, g n, g n -> m n")


@functools.lru_cache(maxsize=None)
def _batchable(zero_point: str, product: str, threads: int, method: str) -> Callable:
    """The partitioned kernel under ``vmap``: over the activations only, more rows; over the
    weights, a loop."""

    @jax.custom_batching.custom_vmap
    def call(a, codes, scales, zeros):
        return _partitioned(a, codes, scales, zeros, zero_point, product, threads, method)

    @call.def_vmap
    def _(axis_size, in_batched, a, codes, scales, zeros):
        if any(in_batched[1:]):
            args = [x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
                    for x, b in zip((a, codes, scales, zeros), in_batched)]
            return jax.lax.map(lambda xs: call(*xs), tuple(args)), True
        b, m, k = a.shape
        return call(a.reshape(b * m, k), codes, scales, zeros).reshape(b, m, -1), True

    return call


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _differentiable(a: Array, kn: KN, product: str, threads: int, method: str,
                    xla: Callable | None) -> Array:
    zeros = kn.scales if kn.zeros is None else kn.zeros  # unread when there is no zero point
    return _batchable(kn.zero_point, product, threads, method)(
        a.astype(jnp.bfloat16), kn.codes, kn.scales, zeros)


@_differentiable.defjvp
def _differentiable_jvp(product, threads, method, xla, primals, tangents):
    # the kernel has no derivative of its own: the XLA kernel's (the same function) serves
    if xla is None:
        raise NotImplementedError("vlp_gemm: differentiation needs the XLA kernel (xla=...)")
    out = _differentiable(*primals, product, threads, method, xla)
    return out, jax.jvp(xla, primals, tangents)[1]


def vlp_gemm(a: Array, kn: KN, product: str, threads: int = 0, method: str = "auto",
             xla: Callable | None = None) -> Array:
    """``a`` ``(m, k)`` BF16 times the normalised weight ``kn`` (scales already flushed) on the
    native kernel: exact mode's FP32-accumulator numerics.  ``threads``: 0 = the XLA CPU thread
    pool (results do not depend on it); ``method``: a key of :data:`METHODS` (every path gives
    the same bits; "auto" picks the fastest one available, the others are for tests); ``xla``:
    the XLA kernel of the same function ``xla(a, kn)``, whose derivative the call takes (under
    ``jax.grad`` / ``jvp``).  Call only where :func:`fits` (and on the CPU)."""
    return _differentiable(a, kn, product, threads, method, xla)
