"""INT4 quantization schemes, the ``QuantizedTensor`` pytree, nibble packing and KV-cache groups.

A scheme is a small frozen config; ``quantize(w, scheme)`` returns a :class:`QuantizedTensor`
holding unpacked int8 ``codes``, per-group ``scales`` and (asymmetric schemes) ``zeros``.
Groups are ``group_size`` consecutive elements along ``axis`` (the GEMM reduction axis, so one
scale serves one partial sum); ``group_size=None`` is one group per channel (the whole axis).

Schemes (``s`` = scale of the group, ``q`` = integer code):

* :class:`SignMagnitudeInt4` - Mugi's format: sign + 3-bit magnitude, ``q in [-7, 7]``,
  ``w ~= s q`` with ``s = absmax / 7``.
* :class:`Int4` - two's complement, ``q in [-8, 7]``, ``w ~= s q``; ``calibration="absmax"``
  uses ``s = absmax / 7`` (``-8`` unused), ``"minmax"`` uses ``s = max(max/7, -min/8)`` so the
  whole asymmetric range is available.
* :class:`AsymUInt4` - unsigned ``q in [0, 15]`` with ``s = (max - min) / 15`` and either a float
  minimum (``zero_point="min"``, GGUF Q4_1 style: ``w ~= s q + m``) or an integer zero point
  (``zero_point="int"``, GPTQ/AWQ style: ``w ~= s (q - z)``, ``z = clip(round(-min/s), 0, 15)``).

Codes are computed with the *stored* scale (after rounding it to ``scale_dtype``), so
``dequantize`` reproduces exactly what a kernel sees.  ``rounding="nearest"`` is round half to
even; ``"stochastic"`` is ``floor(x + u)``, ``u ~ U[0, 1)``, and needs a PRNG key.

Error bound (nearest rounding, float32 scales, no clipping): ``|w - dequantize(q)| <= s / 2``
plus float32 rounding of the scale product.  An all-zero group has ``s = 0`` and codes 0.

Non-finite weights are rejected with ``ValueError`` when the input is concrete; under ``jit`` the
check cannot run and such a group gets a NaN scale (documented in docs/numerics.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from mugi_jax.formats import flush_subnormals

__all__ = [
    "Scheme", "SignMagnitudeInt4", "Int4", "AsymUInt4", "QuantizedTensor", "quantize",
    "dequantize", "quantize_kv", "pack_int4", "unpack_int4", "SCALE_DTYPES", "check_weights",
    "group_params", "encode", "decode", "assemble", "grouped", "ungrouped", "from_q4_1",
]

SCALE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Common fields of every INT4 scheme (frozen, hashable: usable as a static jit argument).

    Attributes:
      group_size: elements per quantization group along ``axis``; ``None`` = per channel.
      axis: the reduction axis the groups run along (negative values count from the end).
      rounding: ``"nearest"`` (half to even) or ``"stochastic"``.
      calibration: how the range of a group is measured (allowed values depend on the scheme).
      scale_dtype: storage format of scales (and float minima): float32, bfloat16 or float16.
    """

    group_size: int | None = 128
    axis: int = 0
    rounding: str = "nearest"
    calibration: str = "absmax"
    scale_dtype: str = "float32"

    # Subclasses override these class-level facts.
    qmin = -7
    qmax = 7
    calibrations = ("absmax",)
    symmetric = True

    def __post_init__(self) -> None:
        if self.group_size is not None and (
                not isinstance(self.group_size, (int, np.integer)) or self.group_size < 1):
            raise ValueError(f"group_size: must be a positive integer or None (per channel), "
                             f"got {self.group_size!r}")
        if not isinstance(self.axis, (int, np.integer)):
            raise ValueError(f"axis: must be an integer, got {self.axis!r}")
        if self.rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding: must be 'nearest' or 'stochastic', got {self.rounding!r}")
        if self.calibration not in self.calibrations:
            raise ValueError(f"calibration: {type(self).__name__} supports {self.calibrations}, "
                             f"got {self.calibration!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype: must be one of {tuple(SCALE_DTYPES)}, "
                             f"got {self.scale_dtype!r}")

    @property
    def magnitude_bits(self) -> int:
        """Bits a VLP sweep needs to cover every code magnitude (3 for levels -7..7, else 4)."""
        return max(abs(self.qmin), abs(self.qmax)).bit_length()


@dataclasses.dataclass(frozen=True)
class SignMagnitudeInt4(Scheme):
    """Sign + 3-bit magnitude (Mugi): levels -7..7, ``s = absmax / 7``."""


@dataclasses.dataclass(frozen=True)
class Int4(Scheme):
    """Two's-complement INT4: levels -8..7 (``calibration`` "absmax" or "minmax")."""

    qmin = -8
    qmax = 7
    calibrations = ("absmax", "minmax")


@dataclasses.dataclass(frozen=True)
class AsymUInt4(Scheme):
    """Asymmetric unsigned INT4: levels 0..15 with a float minimum or an integer zero point."""

    calibration: str = "minmax"
    zero_point: Literal["min", "int"] = "min"

    qmin = 0
    qmax = 15
    calibrations = ("minmax",)
    symmetric = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.zero_point not in ("min", "int"):
            raise ValueError(f"zero_point: must be 'min' or 'int', got {self.zero_point!r}")


class QuantizedTensor(eqx.Module):
    """An INT4-quantized tensor (a pytree: works under jit and vmap).

    ``codes`` has the shape of the original tensor (int8, unpacked); ``scales`` (and ``zeros``)
    have that shape with the group axis shrunk to the number of groups.  ``zeros`` is ``None``
    for symmetric schemes, the float minimum for ``zero_point="min"`` and the int8 zero point for
    ``zero_point="int"``.
    """

    codes: Int[Array, "..."]
    scales: Float[Array, "..."]
    zeros: Array | None
    scheme: Scheme = eqx.field(static=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def axis(self) -> int:
        """The group axis as a non-negative index."""
        return _normalise_axis(self.scheme.axis, self.codes.ndim)

    @property
    def group_size(self) -> int:
        """Elements per group along :attr:`axis` (the axis length for per-channel schemes)."""
        return self.codes.shape[self.axis] // self.scales.shape[self.axis]

    @property
    def storage_bytes(self) -> int:
        """Bytes to store the tensor: 4 bits per code (packed), scales and zeros at their widths
        (an integer zero point also takes 4 bits)."""
        n_codes = math.prod(self.codes.shape)
        total = math.ceil(n_codes * 4 / 8)
        total += math.prod(self.scales.shape) * jnp.dtype(self.scales.dtype).itemsize
        if self.zeros is not None:
            n_zeros = math.prod(self.zeros.shape)
            if jnp.issubdtype(self.zeros.dtype, jnp.integer):
                total += math.ceil(n_zeros * 4 / 8)
            else:
                total += n_zeros * jnp.dtype(self.zeros.dtype).itemsize
        return total

    def dequantize(self, dtype: jnp.dtype = jnp.float32) -> Array:
        return dequantize(self, dtype)


def _normalise_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: {axis} is out of range for a {ndim}-d tensor "
                         f"(allowed {-ndim}..{ndim - 1})")
    return axis % ndim


def grouped(x: Array, axis: int, group_size: int) -> Array:
    """(..., L, ...) -> (..., L // g, g, ...): the group index stays at ``axis`` and the
    within-group index is ``axis + 1`` (a reshape only - no transpose, so it fuses)."""
    return x.reshape(*x.shape[:axis], x.shape[axis] // group_size, group_size, *x.shape[axis + 1:])


def ungrouped(x: Array, axis: int) -> Array:
    return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])


def _is_concrete(x: Array) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _round(x: Array, rounding: str, key: PRNGKeyArray | None) -> Array:
    if rounding == "nearest":
        return jnp.round(x)  # half to even
    return jnp.floor(x + jax.random.uniform(key, x.shape, dtype=x.dtype))


def check_weights(w: ArrayLike, scheme: Scheme, name: str = "w") -> tuple[Array, int, int]:
    """Validate a tensor to quantize with ``scheme``: returns it as an array, the group axis
    (non-negative) and the group size.  Raises ``TypeError``/``ValueError`` naming ``name``."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"scheme: expected SignMagnitudeInt4, Int4 or AsymUInt4, got {scheme!r}")
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {w.dtype}")
    if w.ndim == 0:
        raise ValueError(f"{name}: expected at least one dimension, got a scalar")
    axis = _normalise_axis(scheme.axis, w.ndim)
    length = w.shape[axis]
    group = length if scheme.group_size is None else scheme.group_size
    if length % group:
        raise ValueError(f"group_size: {group} does not divide axis {scheme.axis} of length "
                         f"{length}; use a divisor of {length} or None (per channel)")
    if _is_concrete(w) and not bool(jnp.all(jnp.isfinite(w))):
        bad = int(jnp.sum(~jnp.isfinite(w)))
        raise ValueError(f"{name}: contains {bad} non-finite values (NaN/inf); only finite "
                         "weights can be quantized")
    return w, axis, group


def quantize(w: Float[ArrayLike, "..."], scheme: Scheme,
             key: PRNGKeyArray | None = None) -> QuantizedTensor:
    """Quantize ``w`` with ``scheme`` (round to nearest over each group's full range); see the
    module docstring for the formulas.

    Raises ``TypeError`` for non-floating ``w``, ``ValueError`` when ``group_size`` does not divide
    the length of ``axis``, when ``w`` holds NaN/inf (checked on concrete inputs), or when
    stochastic rounding is requested without a ``key``.
    """
    w, axis, group = check_weights(w, scheme)
    if scheme.rounding == "stochastic" and key is None:
        raise ValueError("key: stochastic rounding needs a PRNG key (quantize(w, scheme, key=...))")
    g = grouped(w.astype(jnp.float32), axis, group)
    red = axis + 1  # the within-group axis
    lo, hi = jnp.min(g, red, keepdims=True), jnp.max(g, red, keepdims=True)
    scale, zeros = group_params(lo, hi, scheme)
    return assemble(encode(g, scale, zeros, scheme, key), scale, zeros, scheme, axis)


def group_params(lo: Array, hi: Array, scheme: Scheme) -> tuple[Array, Array | None]:
    """Scale (float32, already rounded to ``scheme.scale_dtype``) and zero (the stored float
    minimum, the integer zero point as float32, or ``None``) of groups whose values span
    ``[lo, hi]`` (broadcastable shapes).  Calibrated quantizers call this with a shrunk range
    (clipping search) or on updated weights (GPTQ)."""
    sdt = SCALE_DTYPES[scheme.scale_dtype]
    if scheme.symmetric:
        if scheme.calibration == "absmax":
            scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) / scheme.qmax
        else:  # minmax for two's complement: use the whole [-8, 7] range
            scale = jnp.maximum(jnp.maximum(hi / scheme.qmax, lo / scheme.qmin), 0.0)
        return scale.astype(sdt).astype(jnp.float32), None
    if scheme.zero_point == "int":
        lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)  # zero must be representable exactly
    scale = ((hi - lo) / scheme.qmax).astype(sdt).astype(jnp.float32)
    if scheme.zero_point == "min":
        return scale, lo.astype(sdt).astype(jnp.float32)
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale, jnp.clip(jnp.round(-lo / safe), scheme.qmin, scheme.qmax)


def encode(x: Array, scale: Array, zeros: Array | None, scheme: Scheme,
           key: PRNGKeyArray | None = None) -> Array:
    """Integer codes (as float32) of ``x`` under group parameters broadcast against it:
    ``round(x / s)``, ``round((x - m) / s)`` or ``round(x / s) + z``, clipped to the scheme's
    levels; a zero scale gives code 0 (``z`` for an integer zero point, so it decodes to 0)."""
    safe = jnp.where(scale > 0, scale, 1.0)
    if scheme.symmetric:
        codes = _round(x / safe, scheme.rounding, key)
    elif scheme.zero_point == "min":
        codes = _round((x - zeros) / safe, scheme.rounding, key)
    else:
        codes = _round(x / safe, scheme.rounding, key) + zeros
    codes = jnp.where(scale > 0, jnp.clip(codes, scheme.qmin, scheme.qmax), 0)
    if zeros is not None and scheme.zero_point == "int":
        codes = jnp.where(scale > 0, codes, zeros)
    return codes


def decode(codes: Array, scale: Array, zeros: Array | None, scheme: Scheme) -> Array:
    """Float32 values of ``codes`` under broadcastable group parameters (:func:`dequantize`'s
    formula).  The flush between multiply and add is the FTZ rule and also stops XLA from
    contracting ``q * s + m`` into one FMA, so the result is the documented two-rounding value."""
    if scheme.symmetric:
        return codes * scale
    if scheme.zero_point == "min":
        return flush_subnormals(codes * scale) + zeros
    return (codes - zeros) * scale


def assemble(codes: Array, scale: Array, zeros: Array | None, scheme: Scheme,
             axis: int) -> QuantizedTensor:
    """A :class:`QuantizedTensor` from grouped codes and parameters (group index at ``axis``,
    within-group index at ``axis + 1``, as :func:`quantize` lays them out)."""
    sdt = SCALE_DTYPES[scheme.scale_dtype]
    codes = ungrouped(codes.astype(jnp.int8), axis)
    scales = ungrouped(scale.astype(sdt), axis)
    if zeros is not None:
        zeros = ungrouped(zeros.astype(jnp.int8 if scheme.zero_point == "int" else sdt), axis)
    return QuantizedTensor(codes=codes, scales=scales, zeros=zeros, scheme=scheme)


def dequantize(q: QuantizedTensor, dtype: jnp.dtype = jnp.float32) -> Array:
    """Reconstruct the tensor in float32 (``s q``, ``s q + m`` or ``s (q - z)``), then cast."""
    axis, group = q.axis, q.group_size
    codes = grouped(q.codes.astype(jnp.float32), axis, group)
    scale = grouped(q.scales.astype(jnp.float32), axis, 1)
    zeros = None if q.zeros is None else grouped(q.zeros.astype(jnp.float32), axis, 1)
    w = decode(codes, scale, zeros, q.scheme)
    return ungrouped(w, axis).astype(dtype)


def quantize_kv(cache: Float[ArrayLike, "... tokens head_dim"],
                scheme: Scheme = AsymUInt4(group_size=None),
                granularity: Literal["per_token", "per_channel"] = "per_token",
                key: PRNGKeyArray | None = None) -> QuantizedTensor:
    """Quantize a K or V cache laid out ``(..., tokens, head_dim)``.

    ``per_token``: each token's vector gets its own scale(s), groups of ``scheme.group_size``
    along ``head_dim`` (``None`` = the whole head).  ``per_channel``: each channel gets its own
    scale(s), groups along ``tokens`` (KIVI-style for K).  The scheme's ``axis`` is replaced.
    """
    axis = {"per_token": -1, "per_channel": -2}.get(granularity)
    if axis is None:
        raise ValueError(f"granularity: must be 'per_token' or 'per_channel', got {granularity!r}")
    cache = jnp.asarray(cache)
    if cache.ndim < 2:
        raise ValueError(f"cache: expected (..., tokens, head_dim), got shape {cache.shape}")
    return quantize(cache, dataclasses.replace(scheme, axis=axis), key)


def pack_int4(codes: Int[ArrayLike, "..."], axis: int = -1) -> Int[Array, "..."]:
    """Pack pairs of 4-bit codes along ``axis`` into uint8: element ``2i`` in the low nibble,
    ``2i+1`` in the high nibble.  Codes may be signed (-8..7) or unsigned (0..15)."""
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes: expected an integer array, got {codes.dtype}")
    axis = _normalise_axis(axis, codes.ndim)
    if codes.shape[axis] % 2:
        raise ValueError(f"codes: axis {axis} has odd length {codes.shape[axis]}; "
                         "packing needs an even length")
    if _is_concrete(codes) and codes.size and (int(codes.min()) < -8 or int(codes.max()) > 15):
        raise ValueError("codes: values must lie in -8..7 (signed) or 0..15 (unsigned)")
    nib = (jnp.moveaxis(codes, axis, -1).astype(jnp.int32) & 0xF).astype(jnp.uint8)
    packed = nib[..., 0::2] | (nib[..., 1::2] << 4)
    return jnp.moveaxis(packed, -1, axis)


def unpack_int4(packed: Int[ArrayLike, "..."], signed: bool, axis: int = -1) -> Int[Array, "..."]:
    """Inverse of :func:`pack_int4`; ``signed`` sign-extends nibbles to -8..7, else 0..15."""
    packed = jnp.asarray(packed)
    if packed.dtype != jnp.uint8:
        raise TypeError(f"packed: expected uint8, got {packed.dtype}")
    axis = _normalise_axis(axis, packed.ndim)
    p = jnp.moveaxis(packed, axis, -1).astype(jnp.int32)
    pair = jnp.stack([p & 0xF, p >> 4], axis=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])
    if signed:
        pair = jnp.where(pair >= 8, pair - 16, pair)
    return jnp.moveaxis(pair.astype(jnp.int8), -1, axis)


Q4_1_BLOCK = 32  # weights per GGUF Q4_1 block
Q4_1_BLOCK_BYTES = 20  # fp16 d, fp16 m, 16 bytes of nibbles


def from_q4_1(raw: Int[ArrayLike, "out nbytes"], n_in: int) -> QuantizedTensor:
    """A GGUF ``Q4_1`` tensor as stored, as an ``(in, out)`` :class:`QuantizedTensor` of
    ``AsymUInt4(group_size=32, axis=0, scale_dtype="float16")`` (min form): no re-quantization.

    ``raw``: the tensor's bytes, one row per output channel (``n_in / 32`` blocks of 20 bytes:
    ``d`` and ``m`` as float16, then 16 bytes whose low nibbles are weights 0..15 of the block
    and high nibbles weights 16..31), as ``gguf.GGUFReader`` gives them.  Weight ``j`` of a
    block is ``d * q_j + m``, exactly the scheme's ``s q + m``."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise ValueError(f"raw: expected a 2-D uint8 array (rows of Q4_1 blocks), got "
                         f"{raw.dtype} {raw.shape}")
    if n_in % Q4_1_BLOCK or raw.shape[1] != n_in // Q4_1_BLOCK * Q4_1_BLOCK_BYTES:
        raise ValueError(f"n_in: {n_in} inputs need {n_in // Q4_1_BLOCK} blocks of "
                         f"{Q4_1_BLOCK_BYTES} bytes per row (and a multiple of {Q4_1_BLOCK}); "
                         f"rows have {raw.shape[1]} bytes")
    blocks = raw.reshape(raw.shape[0], n_in // Q4_1_BLOCK, Q4_1_BLOCK_BYTES)
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0]
    m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    qs = blocks[..., 4:]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(raw.shape[0], n_in)
    return QuantizedTensor(codes=jnp.asarray(codes.T, jnp.int8), scales=jnp.asarray(d.T),
                           zeros=jnp.asarray(m.T),
                           scheme=AsymUInt4(group_size=Q4_1_BLOCK, axis=0, scale_dtype="float16"))
