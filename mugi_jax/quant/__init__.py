"""INT4 quantization: schemes, the ``QuantizedTensor`` pytree, round-to-nearest quantization,
nibble packing and KV-cache groups (:mod:`mugi_jax.quant.core`), and the calibrated weight
quantizers - clipping search, GPTQ, AWQ (:mod:`mugi_jax.quant.calibrated`).  Guide:
docs/numerics.md section 2."""

from mugi_jax.quant.calibrated import (AWQ_GRID, CLIP_GRID, Calibration, awq, awq_scales, clip,
                                       gptq, output_error)
from mugi_jax.quant.core import (SCALE_DTYPES, AsymUInt4, Int4, QuantizedTensor, Scheme,
                                 SignMagnitudeInt4, assemble, check_weights, decode, dequantize,
                                 encode, from_q4_1, group_params, grouped, pack_int4, quantize, quantize_kv,
                                 ungrouped, unpack_int4)

__all__ = [
    "Scheme", "SignMagnitudeInt4", "Int4", "AsymUInt4", "QuantizedTensor", "quantize",
    "dequantize", "quantize_kv", "pack_int4", "unpack_int4", "SCALE_DTYPES", "check_weights",
    "group_params", "encode", "decode", "assemble", "grouped", "ungrouped", "from_q4_1",
    "clip", "gptq", "awq", "awq_scales", "output_error", "Calibration", "CLIP_GRID", "AWQ_GRID",
]
