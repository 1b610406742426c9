// BF16 activations x INT4 code weights on the Mugi VLP array's numerics (docs/numerics.md section 4),
// bit-identical to `gemm.matmul(..., mode="exact")` with an FP32 accumulator (and MixPE's exact
// products), for prefill-sized products.
//
// Operands: a (M, K) BF16 activations; codes (K, N) int8 (signed codes -8..7 of a symmetric or an
// offset-decomposed scheme, or unsigned codes 0..15); scales (G, N) FP32, already flushed (the
// caller's normalised weight); zeros (G, N) FP32 or an empty array (zero_point = 0); out (M, N) FP32.
// Groups of K / G consecutive k share a scale.
//
// Numerics, per output (m, n), computed by one thread in this order whatever the thread count:
//   a_k = float(a[m, k]) with BF16 subnormals read as zero (DAZ);
//   p_k = bf16_rne(a_k * q[k, n]) (round_products; else the exact FP32 product a_k * q, which a
//         normal a_k and |q| < 16 always give exactly) - a table lookup, see below;
//   per group g: acc = +0; for k in the group, increasing: acc = f32(acc + p_k);
//   y = flush(f32(acc * s_g)); zero_point 1 ("min" / the offset of an offset decomposition):
//   y = flush(f32(y + flush(f32(z_g * A_g)))); zero_point 2 ("int"): c = flush(f32(s_g * z_g)),
//   y = flush(f32(y - flush(f32(c * A_g)))), A_g = the activations of the group summed in
//   increasing k from +0 in FP32; out = f32(out + y) in increasing g from +0.
// Every add and multiply is a separate IEEE FP32 operation (no FMA: the build uses
// -ffp-contract=off and the code calls no fused intrinsic).  Subnormals: the kernel sets the x86
// MXCSR flush-to-zero and denormals-are-zero bits for its duration, as XLA:CPU computes its own
// exact kernel, and flushes explicitly after every dequantization step (the XLA kernel's fence).
// For the adds of the accumulation the MXCSR flush is exact: a sum of two FP32 values whose
// exact result is below 2^-126 in magnitude is representable (a multiple of 2^-149), so "flush
// the correctly rounded sum" has one meaning; the products p_k of a normal a_k are never
// subnormal.  The portable path flushes explicitly after every add as well.
//
// Products as a table lookup: for one activation a_k the products take at most 16 values, one per
// code.  table[j] = p(a_k, code with low 4 bits j) (signed codes: j sign-extended from 4 bits), so
// the low 4 bits of a code index its product; AVX-512's vpermps looks 16 of them up in one
// instruction from a 16-entry FP32 table held in one register.  The inner loop is, per k, per 16
// output columns: one load of 16 codes (widened to int32), and per activation row one vpermps and
// one vaddps into that row's accumulators (R rows x C vectors of accumulators in registers).
//
// Work split: the output is cut into (row chunk x column chunk) items claimed from an atomic
// counter by the calling thread and up to `threads - 1` tasks of the XLA FFI CPU thread pool
// (threads = 0: the pool's size).  Each item builds the tables of its rows for kChunk steps of k
// at a time and runs them over its columns; which thread runs an item changes no bit.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr float kTiny = 1.17549435e-38f;  // 2^-126, the smallest normal FP32
constexpr int64_t kChunk = 32;            // k steps per table build
constexpr int64_t kRowsPerItem = 32;      // rows of a work item (its tables: 32 x 32 x 64 B)
constexpr int64_t kPairsMinRows = 32;     // rows from which `auto` takes the pair path
constexpr int64_t kThreadedMin = int64_t{1} << 20;  // multiply-adds below which one thread runs

inline float Bits2F(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t F2Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// zero of the same sign for |x| < 2^-126 (NaN kept)
inline float Flush(float x) { return std::fabs(x) < kTiny ? std::copysign(0.0f, x) : x; }

// FP32 -> BF16 -> FP32, nearest even; NaN -> sign | 0x7FC0 (as formats.round_to_bf16)
inline float RoundBf16(float x) {
  const uint32_t b = F2Bits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return Bits2F(((b >> 16) & 0x8000u | 0x7FC0u) << 16);
  return Bits2F(((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16) << 16);
}

struct Problem {
  const uint16_t* a;
  const int8_t* codes;
  const uint8_t* pairs;  // (K / 2, 2 N) pair indices of the BF16 path, or nullptr
  const float* scales;
  const float* zeros;  // nullptr when zero_point == 0
  float* out;
  int64_t M, K, N, group, zero_point;
  bool unsigned_codes, round_products;
};

// The 16-entry product tables of rows [r0, r0 + rows) for k in [k0, k0 + kc): tables[(r * kc +
// kk) * 16 + j]; and the FP32 activations (flushed) in act[r * kc + kk].
void BuildTables(const Problem& p, int64_t r0, int64_t rows, int64_t k0, int64_t kc, float* tables,
                 float* act) {
  float codes_f[16];
  for (int j = 0; j < 16; ++j) codes_f[j] = static_cast<float>(p.unsigned_codes ? j : (j < 8 ? j : j - 16));
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* ar = p.a + (r0 + r) * p.K + k0;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const float x = Flush(Bits2F(static_cast<uint32_t>(ar[kk]) << 16));  // DAZ
      act[r * kc + kk] = x;
      float* t = tables + (r * kc + kk) * 16;
#if defined(__AVX512F__)
      const __m512 prod = _mm512_mul_ps(_mm512_set1_ps(x), _mm512_loadu_ps(codes_f));
      if (p.round_products) {
        const __m512i b = _mm512_castps_si512(prod);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
        __m512i r16 = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
        r16 = _mm512_and_si512(r16, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
        const __mmask16 nan = _mm512_cmp_ps_mask(prod, prod, _CMP_UNORD_Q);
        const __m512i qnan = _mm512_or_si512(
            _mm512_and_si512(b, _mm512_set1_epi32(static_cast<int>(0x80000000u))),
            _mm512_set1_epi32(0x7FC00000));
        _mm512_storeu_ps(t, _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, r16, qnan)));
      } else {
        _mm512_storeu_ps(t, prod);
      }
#else
      for (int j = 0; j < 16; ++j) {
        const float prod = x * codes_f[j];
        t[j] = p.round_products ? RoundBf16(prod) : prod;
      }
#endif
    }
  }
}

// The dequantization of one group sum and its addition into the output (section 4, no FMA).
inline float Dequant(float acc, float s, float z, float asum, int64_t zero_point, float out) {
  float y = Flush(acc * s);
  if (zero_point == 1) {
    y = Flush(y + Flush(z * asum));
  } else if (zero_point == 2) {
    const float c = Flush(s * z);
    y = Flush(y - Flush(c * asum));
  }
  return Flush(out + y);
}

#if defined(__AVX512F__)
inline __m512 FlushV(__m512 x) {
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __mmask16 small = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(kTiny), _CMP_LT_OQ);
  return _mm512_mask_and_ps(x, small, x, sign);
}

// After the k steps of a register block: either the accumulators back to accbuf (the group
// continues in the next chunk) or the group's dequantization added into the output.
template <int R, int C>
inline void Finish(const Problem& p, __m512 (&acc)[R][C], const __mmask16 (&mask)[C], int64_t r0,
                   int64_t rloc, int64_t c0, bool last, float* accbuf, int64_t acc_stride,
                   const float* asum, int64_t g) {
  if (!last) {
    #pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 32
      for (int c = 0; c < C; ++c)
        _mm512_mask_storeu_ps(accbuf + (rloc + r) * acc_stride + c0 + 16 * c, mask[c], acc[r][c]);
    return;
  }
  #pragma GCC unroll 32
  for (int c = 0; c < C; ++c) {
    if (!mask[c]) continue;
    const int64_t col = c0 + 16 * c;
    const __m512 s = _mm512_maskz_loadu_ps(mask[c], p.scales + g * p.N + col);
    __m512 z = _mm512_setzero_ps(), cz = _mm512_setzero_ps();
    if (p.zero_point) {
      z = _mm512_maskz_loadu_ps(mask[c], p.zeros + g * p.N + col);
      cz = FlushV(_mm512_mul_ps(s, z));
    }
    #pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      float* o = p.out + (r0 + rloc + r) * p.N + col;
      __m512 y = FlushV(_mm512_mul_ps(acc[r][c], s));
      if (p.zero_point == 1) {
        y = FlushV(_mm512_add_ps(y, FlushV(_mm512_mul_ps(z, _mm512_set1_ps(asum[rloc + r])))));
      } else if (p.zero_point == 2) {
        y = FlushV(_mm512_sub_ps(y, FlushV(_mm512_mul_ps(cz, _mm512_set1_ps(asum[rloc + r])))));
      }
      const __m512 prev = _mm512_maskz_loadu_ps(mask[c], o);
      _mm512_mask_storeu_ps(o, mask[c], FlushV(_mm512_add_ps(prev, y)));
    }
  }
}

// R rows x C vectors of 16 columns: kc steps of k from the tables (acc from accbuf unless
// `first`), then either the group's dequantization into out (`last`) or acc back to accbuf.
template <int R, int C>
void Micro(const Problem& p, const float* tables, int64_t kc, int64_t r0, int64_t rloc, int64_t k0,
           int64_t c0, int64_t cols, bool first, bool last, float* accbuf, int64_t acc_stride,
           const float* asum, int64_t g) {
  __mmask16 mask[C];
  #pragma GCC unroll 32
  for (int c = 0; c < C; ++c) {
    const int64_t left = cols - 16 * c;
    mask[c] = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : (left <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << left) - 1));
  }
  __m512 acc[R][C];
  #pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 32
    for (int c = 0; c < C; ++c)
      acc[r][c] = first ? _mm512_setzero_ps()
                        : _mm512_maskz_loadu_ps(mask[c], accbuf + (rloc + r) * acc_stride + c0 + 16 * c);
  const int8_t* q = p.codes + k0 * p.N + c0;
  const float* t = tables + rloc * kc * 16;
  for (int64_t kk = 0; kk < kc; ++kk) {
    __m512i idx[C];
    #pragma GCC unroll 32
    for (int c = 0; c < C; ++c)
      idx[c] = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask[c], q + kk * p.N + 16 * c));
    #pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512 tab = _mm512_loadu_ps(t + (r * kc + kk) * 16);
      #pragma GCC unroll 32
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_permutexvar_ps(idx[c], tab));
    }
  }
  Finish<R, C>(p, acc, mask, r0, rloc, c0, last, accbuf, acc_stride, asum, g);
}

#if defined(__AVX512BF16__)
// Pairs of k on AVX512-BF16: for k, k + 1 one 32-entry BF16 table (a_k's 16 products in words
// 0-15, a_{k+1}'s in words 16-31), `vpermw` with the prepared pair indices (word 2i + 1: code of
// (k, column i); word 2i: 16 + code of (k + 1, column i)) gives the 32 products in the layout of
// `vdpbf16ps`, which adds them to the FP32 accumulator as acc = (acc + word 2i+1) + word 2i, each
// add rounded to nearest even with subnormal results flushed (Intel SDM pseudo-code; checked on
// this CPU by DotOrderOk() before it is used): the sequential order in k.  Products times 1 are
// exact.
template <int R, int C>
void MicroPairs(const Problem& p, const uint16_t* tables_bf16, int64_t kc, int64_t r0, int64_t rloc,
                int64_t k0, int64_t c0, int64_t cols, bool first, bool last, float* accbuf,
                int64_t acc_stride, const float* asum, int64_t g) {
  __mmask16 mask[C];
  __mmask32 mask2[C];
  #pragma GCC unroll 32
  for (int c = 0; c < C; ++c) {
    const int64_t left = cols - 16 * c;
    mask[c] = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : (left <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << left) - 1));
    mask2[c] = left >= 16 ? static_cast<__mmask32>(0xFFFFFFFFu)
                          : (left <= 0 ? static_cast<__mmask32>(0) : static_cast<__mmask32>((1u << (2 * left)) - 1));
  }
  __m512 acc[R][C];
  #pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 32
    for (int c = 0; c < C; ++c)
      acc[r][c] = first ? _mm512_setzero_ps()
                        : _mm512_maskz_loadu_ps(mask[c], accbuf + (rloc + r) * acc_stride + c0 + 16 * c);
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
  const uint8_t* q = p.pairs + (k0 / 2) * 2 * p.N + 2 * c0;
  const uint16_t* t = tables_bf16 + rloc * (kc / 2) * 32;
  for (int64_t kp = 0; kp < kc / 2; ++kp) {
    __m512i idx[C];
    #pragma GCC unroll 32
    for (int c = 0; c < C; ++c)
      idx[c] = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask2[c], q + kp * 2 * p.N + 32 * c));
    #pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512i tab = _mm512_loadu_si512(t + (r * (kc / 2) + kp) * 32);
      #pragma GCC unroll 32
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)_mm512_permutexvar_epi16(idx[c], tab), ones);
    }
  }
  Finish<R, C>(p, acc, mask, r0, rloc, c0, last, accbuf, acc_stride, asum, g);
}

template <int C>
void MicroPairsRows(int rows, const Problem& p, const uint16_t* tables, int64_t kc, int64_t r0,
                    int64_t rloc, int64_t k0, int64_t c0, int64_t cols, bool first, bool last,
                    float* accbuf, int64_t acc_stride, const float* asum, int64_t g) {
  switch (rows) {
    case 8: MicroPairs<8, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 7: MicroPairs<7, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 6: MicroPairs<6, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 5: MicroPairs<5, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 4: MicroPairs<4, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 3: MicroPairs<3, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 2: MicroPairs<2, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    default: MicroPairs<1, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
  }
}

// Whether vdpbf16ps adds a pair as the sequential order needs (acc + odd word, then + even word,
// each rounded to nearest even, subnormal results flushed): adversarial lanes (ties, cancellation,
// one-ulp neighbours) against scalar FP32 adds.  Run once per process.
bool DotOrderOk() {
  uint32_t state = 12345u;
  auto next = [&state]() { state = state * 1664525u + 1013904223u; return state >> 8; };
  for (int it = 0; it < 2048; ++it) {
    alignas(64) float acc[16];
    alignas(64) uint16_t prod[32];
    for (int j = 0; j < 16; ++j) {
      const int e = static_cast<int>(next() % 40) - 20 - (it % 7 == 0 ? 110 : 0);
      acc[j] = std::ldexp(static_cast<float>(next() % (1u << 24)) / (1 << 23), e) * ((next() & 1) ? 1.f : -1.f);
      for (int h = 0; h < 2; ++h) {
        const int e2 = e - static_cast<int>(next() % 30) + 2;
        float v = std::ldexp(static_cast<float>(next() % 256 + 128) / 128.f, e2) * ((next() & 1) ? 1.f : -1.f);
        if (next() % 8 == 0) v = -acc[j];
        prod[2 * j + h] = static_cast<uint16_t>(F2Bits(RoundBf16(v)) >> 16);
      }
      acc[j] = Flush(acc[j]);
    }
    __m512i pv;
    std::memcpy(&pv, prod, 64);
    alignas(64) float out[16];
    _mm512_store_ps(out, _mm512_dpbf16_ps(_mm512_load_ps(acc), (__m512bh)pv,
                                          (__m512bh)_mm512_set1_epi16(0x3F80)));
    for (int j = 0; j < 16; ++j) {
      const float want = Flush(Flush(acc[j] + Bits2F(static_cast<uint32_t>(prod[2 * j + 1]) << 16)) +
                               Bits2F(static_cast<uint32_t>(prod[2 * j]) << 16));
      if (F2Bits(want) != F2Bits(out[j]) && !(std::isnan(want) && std::isnan(out[j]))) return false;
    }
  }
  return true;
}
#endif

constexpr int kR = 4;  // rows per register block
constexpr int kC = 4;  // 16-column vectors per register block
// The pair path's register block: 8 rows x 3 vectors, 24 accumulators + 3 index vectors + the
// lookup and the constant 1 in the 32 ZMM registers (measured 1.6-1.8x faster than 4 x 4 at the
// SmolLM2 prefill shapes: each index vector serves 8 rows).  The loops over a block's rows and
// vectors carry `#pragma GCC unroll`: GCC left the 24-iteration loops of Finish rolled, which
// kept the accumulators in memory and stored every one of them after each vdpbf16ps.
constexpr int kRP = 8;
constexpr int kCP = 3;

template <int C>
void MicroRows(int rows, const Problem& p, const float* tables, int64_t kc, int64_t r0, int64_t rloc,
               int64_t k0, int64_t c0, int64_t cols, bool first, bool last, float* accbuf,
               int64_t acc_stride, const float* asum, int64_t g) {
  switch (rows) {
    case 4: Micro<4, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 3: Micro<3, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    case 2: Micro<2, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
    default: Micro<1, C>(p, tables, kc, r0, rloc, k0, c0, cols, first, last, accbuf, acc_stride, asum, g); break;
  }
}
#endif

// Portable path: the same order with scalar operations and explicit flushes after every add.
void ScalarBlock(const Problem& p, const float* tables, int64_t kc, int64_t r0, int64_t rows,
                 int64_t k0, int64_t c0, int64_t cols, bool first, bool last, float* accbuf,
                 int64_t acc_stride, const float* asum, int64_t g) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* t = tables + r * kc * 16;
    for (int64_t c = c0; c < c0 + cols; ++c) {
      float acc = first ? 0.0f : accbuf[r * acc_stride + c];
      for (int64_t kk = 0; kk < kc; ++kk)
        acc = Flush(acc + t[kk * 16 + (p.codes[(k0 + kk) * p.N + c] & 15)]);
      if (!last) {
        accbuf[r * acc_stride + c] = acc;
        continue;
      }
      float* o = p.out + (r0 + r) * p.N + c;
      *o = Dequant(acc, p.scales[g * p.N + c], p.zero_point ? p.zeros[g * p.N + c] : 0.0f, asum[r],
                   p.zero_point, *o);
    }
  }
}

// method: 0 = the fastest exact one this CPU and problem allow, 1 = vpermps (FP32 tables),
// 2 = the portable scalar path
enum Method : int64_t { kAuto = 0, kVpermps = 1, kScalar = 2, kPairs = 3 };

struct Work {
  Problem p;
  int64_t row_items, col_items, col_width;
  int64_t method;  // resolved: kPairs, kVpermps or kScalar
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Item(int64_t item) {
    const int64_t r0 = (item / col_items) * kRowsPerItem;
    const int64_t rows = std::min(kRowsPerItem, p.M - r0);
    const int64_t c0 = (item % col_items) * col_width;
    const int64_t cols = std::min(col_width, p.N - c0);
    if (cols <= 0 || rows <= 0) return;
    const int64_t kc_max = std::min(kChunk, p.group);
    std::vector<float> tables(static_cast<size_t>(rows * kc_max * 16));
    std::vector<float> act(static_cast<size_t>(rows * kc_max));
    std::vector<float> asum(static_cast<size_t>(rows));
    std::vector<float> accbuf(p.group > kChunk ? static_cast<size_t>(rows * cols) : 0);
    std::vector<uint16_t> tables_bf16(method == kPairs ? static_cast<size_t>(rows * kc_max * 16) : 0);
    for (int64_t r = 0; r < rows; ++r)
      std::memset(p.out + (r0 + r) * p.N + c0, 0, sizeof(float) * cols);
    const int64_t groups = p.K / p.group;
    for (int64_t g = 0; g < groups; ++g) {
      std::fill(asum.begin(), asum.end(), 0.0f);
      for (int64_t k0 = g * p.group; k0 < (g + 1) * p.group; k0 += kChunk) {
        const int64_t kc = std::min(kChunk, (g + 1) * p.group - k0);
        const bool first = k0 == g * p.group, last = k0 + kc == (g + 1) * p.group;
        BuildTables(p, r0, rows, k0, kc, tables.data(), act.data());
        if (p.zero_point)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t kk = 0; kk < kc; ++kk) asum[r] = Flush(asum[r] + act[r * kc + kk]);
        // accbuf is indexed [row in item][column - c0]: shift the column origin
        float* accb = accbuf.empty() ? nullptr : accbuf.data() - c0;
#if defined(__AVX512BF16__)
        if (method == kPairs) {
          // the BF16 tables of the pairs: a_k's products in words 0-15, a_{k+1}'s in 16-31
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t kp = 0; kp < kc / 2; ++kp) {
              const float* src = tables.data() + (r * kc + 2 * kp) * 16;
              uint16_t* dst = tables_bf16.data() + (r * (kc / 2) + kp) * 32;
              const __m256i lo = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(src)), 16));
              const __m256i hi = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(src + 16)), 16));
              _mm512_storeu_si512(dst, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
            }
          for (int64_t rl = 0; rl < rows; rl += kRP) {
            const int rr = static_cast<int>(std::min<int64_t>(kRP, rows - rl));
            for (int64_t cb = c0; cb < c0 + cols; cb += 16 * kCP)
              MicroPairsRows<kCP>(rr, p, tables_bf16.data(), kc, r0, rl, k0, cb, c0 + cols - cb, first,
                                 last, accb, cols, asum.data(), g);
          }
          continue;
        }
#endif
#if defined(__AVX512F__)
        if (method == kVpermps) {
          for (int64_t rl = 0; rl < rows; rl += kR) {
            const int rr = static_cast<int>(std::min<int64_t>(kR, rows - rl));
            for (int64_t cb = c0; cb < c0 + cols; cb += 16 * kC)
              MicroRows<kC>(rr, p, tables.data(), kc, r0, rl, k0, cb, c0 + cols - cb, first, last,
                            accb, cols, asum.data(), g);
          }
          continue;
        }
#endif
        ScalarBlock(p, tables.data(), kc, r0, rows, k0, c0, cols, first, last, accb, cols,
                    asum.data(), g);
      }
    }
  }

  void Run() {
#if defined(__SSE__)
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);  // FTZ (bit 15) and DAZ (bit 6), as XLA:CPU computes
#endif
    const int64_t items = row_items * col_items;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      Item(i);
      done.fetch_add(1, std::memory_order_release);
    }
#if defined(__SSE__)
    _mm_setcsr(csr);
#endif
  }
};

ffi::Error VlpGemm(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::S8> codes,
                   ffi::Buffer<ffi::U8> pairs, ffi::Buffer<ffi::F32> scales,
                   ffi::Buffer<ffi::F32> zeros, ffi::ResultBuffer<ffi::F32> out, int64_t threads,
                   int64_t zero_point, bool unsigned_codes, bool round_products, int64_t method) {
  auto ad = a.dimensions();
  auto qd = codes.dimensions();
  auto sd = scales.dimensions();
  if (ad.size() != 2 || qd.size() != 2 || sd.size() != 2)
    return ffi::Error::InvalidArgument("vlp_gemm: a (M, K), codes (K, N), scales (G, N) expected");
  const int64_t M = ad[0], K = ad[1], N = qd[1], G = sd[0];
  if (qd[0] != K || sd[1] != N || G <= 0 || K % G != 0)
    return ffi::Error::InvalidArgument("vlp_gemm: operand shapes do not match");
  if (zero_point < 0 || zero_point > 2)
    return ffi::Error::InvalidArgument("vlp_gemm: zero_point must be 0, 1 or 2");
  if (zero_point != 0 && static_cast<int64_t>(zeros.element_count()) != G * N)
    return ffi::Error::InvalidArgument("vlp_gemm: zeros must be (G, N)");
  if (static_cast<int64_t>(out->element_count()) != M * N)
    return ffi::Error::InvalidArgument("vlp_gemm: out must be (M, N)");
  if (M == 0 || N == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  Problem& p = work->p;
  p.a = reinterpret_cast<const uint16_t*>(a.typed_data());
  p.codes = codes.typed_data();
  p.scales = scales.typed_data();
  p.zeros = zero_point ? zeros.typed_data() : nullptr;
  p.out = out->typed_data();
  p.M = M;
  p.K = K;
  p.N = N;
  p.group = K / G;
  p.zero_point = zero_point;
  p.unsigned_codes = unsigned_codes;
  p.round_products = round_products;
  if (method < kAuto || method > kPairs)
    return ffi::Error::InvalidArgument("vlp_gemm: method must be 0 (auto), 1, 2 or 3");
  // the pair path needs BF16 products, an even group and the pair indices (K / 2, 2 N)
  const bool pairs_given = static_cast<int64_t>(pairs.element_count()) == K * N && K % 2 == 0;
  p.pairs = pairs_given ? pairs.typed_data() : nullptr;
  bool pairs_ok = false;
#if defined(__AVX512BF16__)
  static const bool dot_order_ok = DotOrderOk();
  pairs_ok = dot_order_ok && round_products && p.group % 2 == 0 && pairs_given;
#endif
#if defined(__AVX512F__)
  const int64_t vector_method = kVpermps;
#else
  const int64_t vector_method = kScalar;
#endif
  // the pair path builds a BF16 table per pair of k: from kPairsMinRows rows it is the faster
  // one (measured; below, vpermps on the FP32 tables)
  if (method == kAuto) method = pairs_ok && M >= kPairsMinRows ? kPairs : vector_method;
  if (method == kPairs && !pairs_ok)
    return ffi::Error::InvalidArgument("vlp_gemm: the pair path is not available here");
  if (method == kVpermps) method = vector_method;
  work->method = method;
  int64_t total = threads > 0 ? threads : pool.num_threads();
  if (threads <= 0 && M * K * N < kThreadedMin) total = 1;
  if (total < 1) total = 1;
  work->row_items = (M + kRowsPerItem - 1) / kRowsPerItem;
  // columns split until there are at least two items per thread (in whole 64-column blocks)
  int64_t col_items = 1;
  while (work->row_items * col_items < 2 * total && (N + col_items) / (col_items + 1) >= 64)
    ++col_items;
  // whole register blocks of columns per item (48 on the pair path, 64 on the others)
#if defined(__AVX512F__)
  const int64_t unit = method == kPairs ? 16 * kCP : 16 * kC;
#else
  const int64_t unit = 64;
#endif
  int64_t width = (N + col_items - 1) / col_items;
  width = (width + unit - 1) / unit * unit;
  work->col_width = width;
  work->col_items = (N + width - 1) / width;
  const int64_t items = work->row_items * work->col_items;
  int64_t helpers = std::min(total - 1, items - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();  // the caller claims items too, so it never waits on a helper that has not started
  while (work->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(vlp_gemm, VlpGemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("zero_point")
                                  .Attr<bool>("unsigned_codes")
                                  .Attr<bool>("round_products")
                                  .Attr<int64_t>("method"));
