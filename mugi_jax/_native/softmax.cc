// VLP softmax (mugi_jax/nonlinear/softmax.py, `_vlp_softmax`) as one XLA FFI CPU kernel.
//
// The same pipeline, bit for bit, as the XLA path: per row (softmax axis last)
//   0. (scaled / masked) x <- where(mask, f32(x) * scale, -inf): one FP32 multiply with
//      subnormal operands and results flushed, as XLA:CPU multiplies (its threads run with the
//      MXCSR FTZ and DAZ bits set; the kernel sets them itself while it works);
//   1. r = FTZ(bf16_rne(x)) as an FP32 pattern (FP32 input: integer rounding, NaN -> sign|0x7FC00000;
//      BF16 input: its pattern, NaN payloads kept);
//   2. m = row max of r; y = bf16_rne(r - m) (the FP32 difference, rounded on its pattern); the code
//      z is y's pattern, or for r == -inf (a mask) the mask code (y >> 6) & 0x201;
//   3. window groups of `group` consecutive heads at one (token, column): the group's extreme
//      (build max: largest, min: smallest) of the codes of negative normal y, mapped by the
//      `bottom_rows` table to the row of the exp table; e = table[row * 65536 + z] (flushed);
//   4. S = FP32 pairwise-tree sum of f32(e) (zero-padded to a power of two, v[:h] + v[h:]);
//   5. out = bf16_rne(FTZ(f32(e) / S)), 0 where e marks a masked input.
// Independent of the MXCSR FTZ/DAZ mode: every flush is explicit, the inputs of every FP operation
// are normal, zero, inf or NaN, a subnormal difference r - m (|d| >= 2^-133) and its flushed form
// (-0) read the same table entry (f(0); neither counts in the window), and a quotient of a BF16
// value by an FP32 sum is never within 2^-24 relative below 2^-126, so it rounds to a normal
// value under either mode or is flushed under both.
//
//
// Step 3 reads compact forms of the tables, built and checked against them in Python
// (`_compact_tables`): the entries of the regular codes (+0 and non-positive, non-NaN y) are a
// function of y's magnitude clamped to a short range (about 1500 entries a row instead of
// 65536), and for the presets' units a function of the magnitude rounded to M mantissa bits
// (at most 128 slots a row), which 32-lane word permutes (vpermi2w) look up in registers: a
// gather costs about 2 cycles an element on this machine whatever the table's size, the
// permutes a fraction of that.  Other codes (NaN y, masked inputs) read the full table.
//
// Work unit: one (batch, token, group of heads) = `group` rows; units are split over the XLA
// CPU thread pool, each output computed by exactly one unit (results independent of the split).
// Per row: the row maximum (with step 0), the codes (and the window keys), the lookup, the
// pairwise sum and the division: five vectorised passes over L1/L2-resident data.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint16_t kMaskedE = 0x8000;      // e of a masked -inf input whose y is -inf
constexpr uint16_t kMaskedNaN = 0x7FC1;    // e of a masked input whose y is NaN (| sign)
constexpr uint16_t kNegNormalLo = 0x8080;  // y patterns of negative normal numbers: [lo, hi)
constexpr uint16_t kNegNormalHi = 0xFF80;

inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Params {
  const void* x;
  bool x_is_f32;
  bool out_f32;               // the output as FP32 patterns (else BF16)
  float scale;                // step 0: x * scale when scaled
  bool scaled;
  const bool* mask;           // step 0: where(mask, x, -inf) when not null
  const int64_t* mask_batch;  // per batch index: offset of its mask
  int64_t mask_row, mask_col; // mask strides of the rows and softmax axes (0: broadcast)
  void* out;
  const uint16_t* table;      // (rows, 65536) or (65536,)
  const uint8_t* bottom_rows; // 65536 entries: table row of a group extreme; null: single row
  int64_t batch, heads, tokens, n;
  int64_t group;              // heads per window group (>= 1)
  bool build_max;
  // The compact form of the tables (null: the full tables only): per table row, the entries of
  // the regular codes' magnitudes (see compact_index), rows `width` apart, one entry of padding
  // at the end; per window key clamped to [k_lo, k_hi], its table row.
  const uint16_t* compact;
  const int32_t* compact_rows;
  uint32_t a_lo, a_hi, k_lo, k_hi, width;
  // The permute form (null: none; needs AVX-512): per table row 128 slots (see PermTables).
  const uint16_t* perm;
  uint32_t shift, ra_lo, ra_hi, nrows;
};

inline uint32_t rounded_f32(uint32_t v) {  // FTZ(bf16_rne(v)) as an FP32 pattern
  uint32_t r = (v + 0x7FFFu + ((v >> 16) & 1u)) & 0xFFFF0000u;
  r = (v & 0x7FFFFFFFu) > 0x7F800000u ? ((v & 0x80000000u) | 0x7FC00000u) : r;
  return (r & 0x7F800000u) == 0 ? (r & 0x80000000u) : r;
}
inline uint32_t rounded_bf16(uint16_t v) {  // FTZ(v) as an FP32 pattern (NaN payload kept)
  uint32_t r = uint32_t(v) << 16;
  return (r & 0x7F800000u) == 0 ? (r & 0x80000000u) : r;
}
inline int32_t order_key(uint32_t v) {  // integer order of non-NaN FP32 patterns
  return int32_t(v ^ ((uint32_t(int32_t(v) >> 31)) & 0x7FFFFFFFu));
}

inline uint32_t widened(uint32_t v) { return v; }
inline uint32_t widened(uint16_t v) { return uint32_t(v) << 16; }

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define MUGI_SOFTMAX_AVX512 1
#endif

// y codes that read the compact table: +0 and the non-positive, non-NaN patterns (y <= 0, -inf
// included).  The others (NaN y, the masked inputs' codes) read the full table.
inline bool regular_code(uint32_t z) {
  return z == 0 || ((z & 0x8000u) != 0 && (z & 0x7FFFu) <= 0x7F80u);
}
// Index of a regular code's magnitude a in a compact table row: 0 for zero and subnormal y
// (they read f(0)), else 1 + clamp(a, a_lo, a_hi) - a_lo (the entries below a_lo equal a_lo's,
// those above a_hi equal a_hi's: checked when the tables are built).
inline uint32_t compact_index(uint32_t a, const Params& p) {
  if (a < 0x80u) return 0;
  a = a < p.a_lo ? p.a_lo : a;
  a = a > p.a_hi ? p.a_hi : a;
  return a - p.a_lo + 1;
}
// The table row of a window group's extreme key.
inline uint16_t key_row(uint32_t key, const Params& p) {
  if (p.compact == nullptr) return p.bottom_rows[key];
  key = key < p.k_lo ? p.k_lo : key;
  key = key > p.k_hi ? p.k_hi : key;
  return uint16_t(p.compact_rows[key - p.k_lo]);
}
// Step 2 on one element: the code of r (an FTZ(bf16) FP32 pattern) against the row maximum m.
inline uint32_t code_of(uint32_t r, float m) {
  uint32_t d = f2u(u2f(r) - m);
  uint32_t y = (d + 0x7FFFu + ((d >> 16) & 1u)) >> 16;
  return r == 0xFF800000u ? ((y >> 6) & 0x201u) : y;
}
// e of code z (as an FP32 pattern) in table row `row` (0 when not windowed): regular codes from
// the compact table when there is one, the others from the full table.
inline uint32_t entry_of(uint32_t z, uint32_t row, const Params& p) {
  if (p.compact != nullptr && regular_code(z))
    return uint32_t(p.compact[row * p.width + compact_index(z & 0x7FFFu, p)]) << 16;
  return uint32_t(p.table[(size_t(row) << 16) + z]) << 16;
}

#if MUGI_SOFTMAX_AVX512
inline __m512i splat(uint32_t v) { return _mm512_set1_epi32(int(v)); }
inline __m512i order_key16(__m512i v) {  // order_key on 16 lanes
  return _mm512_xor_si512(v, _mm512_and_si512(_mm512_srai_epi32(v, 31), splat(0x7FFFFFFFu)));
}
inline __mmask16 is_nan16(__m512i v) {
  return _mm512_cmpgt_epu32_mask(_mm512_and_si512(v, splat(0x7FFFFFFFu)), splat(0x7F800000u));
}
inline __m512i ftz16(__m512i r) {  // exponent 0: keep the sign only
  return _mm512_mask_and_epi32(r, _mm512_testn_epi32_mask(r, splat(0x7F800000u)), r,
                               splat(0x80000000u));
}
inline __m512i rounded_f32_16(__m512i v) {  // rounded_f32 on 16 lanes
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), splat(1));
  __m512i r = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(v, splat(0x7FFFu)), lsb),
                               splat(0xFFFF0000u));
  r = _mm512_mask_mov_epi32(r, is_nan16(v),
                            _mm512_or_si512(_mm512_and_si512(v, splat(0x80000000u)),
                                            splat(0x7FC00000u)));
  return ftz16(r);
}
inline __m512i load_bf16_16(const uint16_t* x) {  // 16 BF16 patterns as FP32 patterns
  return _mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))), 16);
}
inline __m512i code16(__m512i r, __m512 m) {  // code_of on 16 lanes
  __m512i d = _mm512_castps_si512(_mm512_sub_ps(_mm512_castsi512_ps(r), m));
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(d, 16), splat(1));
  __m512i y = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(d, splat(0x7FFFu)), lsb), 16);
  return _mm512_mask_mov_epi32(y, _mm512_cmpeq_epi32_mask(r, splat(0xFF800000u)),
                               _mm512_and_si512(_mm512_srli_epi32(y, 6), splat(0x201u)));
}
// The compact-table entries of 16 codes (FP32 patterns) at row offsets `off` (row x width);
// `special`: the lanes whose code is not regular (their entries are read from the full table).
inline __m512i compact16(__m512i z, __m512i off, const Params& p, __mmask16& special) {
  __m512i a = _mm512_and_si512(z, splat(0x7FFFu));
  __mmask16 regular = _mm512_cmpeq_epi32_mask(z, _mm512_setzero_si512()) |
                      (_mm512_test_epi32_mask(z, splat(0x8000u)) &
                       _mm512_cmple_epu32_mask(a, splat(0x7F80u)));
  special = __mmask16(~regular);
  __m512i idx = _mm512_min_epu32(_mm512_max_epu32(a, splat(p.a_lo)), splat(p.a_hi));
  idx = _mm512_sub_epi32(idx, splat(p.a_lo - 1));
  idx = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(a, splat(0x80u)), idx);
  idx = _mm512_add_epi32(idx, off);
  // 32-bit reads at 2-byte steps: the entry in the low half (the table has one entry of padding)
  __m512i w = _mm512_i32gather_epi32(idx, reinterpret_cast<const int*>(p.compact), 2);
  return _mm512_slli_epi32(w, 16);
}
#endif

// Steps 0-1 and the row maximum for one row of n inputs: returns m (an FP32 value) and, when
// step 0 applies (scaled or masked), writes its results to v (FTZ/DAZ set by the caller).  The
// maximum is taken on the raw values on order-preserving integer keys (NaN tracked apart) and
// rounded once: rounding to BF16 and FTZ are monotone, so round(max x) = max round(x), and
// either zero is as good as the other (both give y = +-0, which read the same entry).
template <typename T>
float row_max(const T* __restrict x, int64_t n, const Params& p, const bool* __restrict mrow,
              float* __restrict v) {
  const bool step0 = p.scaled || mrow != nullptr;
  const float scale = p.scale, ninf = u2f(0xFF800000u);
  const uint8_t* __restrict mb = reinterpret_cast<const uint8_t*>(mrow);
  const bool row_masked = mrow != nullptr && p.mask_col == 0 && !mb[0];
  const bool per_col = mrow != nullptr && p.mask_col == 1;
  int32_t kmax = INT32_MIN;
  uint32_t nan = 0;
  int64_t i = 0;
  if (row_masked) {
    std::fill(v, v + n, ninf);
    return ninf;
  }
#if MUGI_SOFTMAX_AVX512
  {
    __m512i vk = splat(0x80000000u);
    __mmask16 vn = 0;
    const __m512 vs = _mm512_set1_ps(scale), vinf = _mm512_set1_ps(ninf);
    for (; i + 16 <= n; i += 16) {
      __m512i u;
      if constexpr (sizeof(T) == 4)
        u = _mm512_loadu_si512(x + i);
      else
        u = load_bf16_16(reinterpret_cast<const uint16_t*>(x + i));
      if (step0) {
        __m512 f = _mm512_castsi512_ps(u);
        if (p.scaled) f = _mm512_mul_ps(f, vs);
        if (per_col) {
          __mmask16 keep = _mm_test_epi8_mask(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(mb + i)), _mm_set1_epi8(-1));
          f = _mm512_mask_mov_ps(vinf, keep, f);
        }
        _mm512_storeu_ps(v + i, f);
        u = _mm512_castps_si512(f);
      }
      vk = _mm512_max_epi32(vk, order_key16(u));
      vn |= is_nan16(u);
    }
    kmax = _mm512_reduce_max_epi32(vk);
    nan = vn != 0;
  }
#endif
  // (the tail, or the whole row without AVX-512: one branch-free loop per case, which
  // vectorise)
  if (!step0) {
    for (; i < n; ++i) {
      uint32_t u = widened(x[i]);
      int32_t k = order_key(u);
      kmax = k > kmax ? k : kmax;
      nan |= (u & 0x7FFFFFFFu) > 0x7F800000u;
    }
  } else {
    if (p.scaled)
      for (int64_t k0 = i; k0 < n; ++k0) v[k0] = u2f(widened(x[k0])) * scale;
    else
      for (int64_t k0 = i; k0 < n; ++k0) v[k0] = u2f(widened(x[k0]));
    if (per_col)
      for (int64_t k0 = i; k0 < n; ++k0) v[k0] = mb[k0] ? v[k0] : ninf;
    for (; i < n; ++i) {
      uint32_t u = f2u(v[i]);
      int32_t k = order_key(u);
      kmax = k > kmax ? k : kmax;
      nan |= (u & 0x7FFFFFFFu) > 0x7F800000u;
    }
  }
  if (nan) return u2f(0x7FC00000u);
  const uint32_t top = uint32_t(order_key(uint32_t(kmax)));
  return u2f(sizeof(T) == 2 && !step0 ? rounded_bf16(uint16_t(top >> 16)) : rounded_f32(top));
}

// Step 2 on one row: the codes z[0..n) of the inputs (FP32 patterns, or BF16 when T is
// uint16_t); `ext`: when not null, each column's window key is merged in (build max: the
// largest, min: the smallest code of a negative normal y; others leave it).
template <typename T>
void row_codes(const T* __restrict x, int64_t n, float m, uint16_t* __restrict z,
               uint32_t* __restrict ext, bool build_max) {
  int64_t i = 0;
#if MUGI_SOFTMAX_AVX512
  const __m512 vm = _mm512_set1_ps(m);
  const __m512i fill = splat(build_max ? 0u : 0xFFFFu);
  for (; i + 16 <= n; i += 16) {
    __m512i r;
    if constexpr (sizeof(T) == 4)
      r = rounded_f32_16(_mm512_loadu_si512(x + i));
    else
      r = ftz16(load_bf16_16(reinterpret_cast<const uint16_t*>(x + i)));
    __m512i zz = code16(r, vm);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(z + i), _mm512_cvtepi32_epi16(zz));
    if (ext != nullptr) {
      __mmask16 neg_normal = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(zz, splat(kNegNormalLo)),
                                                     splat(kNegNormalHi - kNegNormalLo));
      __m512i key = _mm512_mask_mov_epi32(fill, neg_normal, zz);
      __m512i old = _mm512_loadu_si512(ext + i);
      _mm512_storeu_si512(ext + i, build_max ? _mm512_max_epu32(old, key)
                                             : _mm512_min_epu32(old, key));
    }
  }
#endif
  const int64_t start = i;
  for (; i < n; ++i) {  // (one branch-free loop per step: they vectorise without AVX-512)
    uint32_t r;
    if constexpr (sizeof(T) == 4)
      r = rounded_f32(x[i]);
    else
      r = rounded_bf16(x[i]);
    z[i] = uint16_t(code_of(r, m));
  }
  if (ext != nullptr) {
    const uint32_t fill = build_max ? 0u : 0xFFFFu;
    for (i = start; i < n; ++i) {
      uint32_t zi = z[i];
      uint32_t key = uint16_t(zi - kNegNormalLo) < uint16_t(kNegNormalHi - kNegNormalLo) ? zi : fill;
      ext[i] = build_max ? (key > ext[i] ? key : ext[i]) : (key < ext[i] ? key : ext[i]);
    }
  }
}

#if MUGI_SOFTMAX_AVX512
// e of 32 codes (BF16 patterns) by in-register permutes of the rows' slot tables (p.perm): the
// slot of a regular code is 0 for zero and subnormal magnitudes a, else 1 + clamp(ra, ra_lo,
// ra_hi) - ra_lo with ra = a rounded half to even at bit `shift` (the table rows are functions of
// it: checked when the tables are built); up to 128 slots per row, rows picked per lane by
// `rows` (null: row 0).  `special`: the lanes whose code is not regular.
struct PermTables {
  __m512i t[8][4];
  int nrows, pairs;
  __m512i bias, shift, ra_lo, ra_hi, base;
  // the slot tables: `table` holds nrows rows of 128 BF16 patterns
  PermTables(const Params& p, const uint16_t* table) {
    nrows = int(p.nrows);
    pairs = p.ra_hi - p.ra_lo + 2 > 64 ? 2 : 1;
    load(table);
    bias = _mm512_set1_epi16(short(p.shift == 0 ? 0 : (1 << (p.shift - 1)) - 1));
    shift = _mm512_set1_epi16(short(p.shift));
    ra_lo = _mm512_set1_epi16(short(p.ra_lo));
    ra_hi = _mm512_set1_epi16(short(p.ra_hi));
    base = _mm512_set1_epi16(short(p.ra_lo - 1));
  }
  void load(const uint16_t* table) {
    for (int r = 0; r < nrows; ++r)
      for (int k = 0; k < 2 * pairs; ++k) t[r][k] = _mm512_loadu_si512(table + r * 128 + k * 32);
  }
  // The slots of 32 codes; `special`: the lanes whose code is not regular.
  __m512i slots(__m512i z, __mmask32& special) const {
    const __m512i mag = _mm512_set1_epi16(0x7FFF);
    __m512i a = _mm512_and_si512(z, mag);
    __mmask32 regular = _mm512_cmpeq_epi16_mask(z, _mm512_setzero_si512()) |
                        (_mm512_test_epi16_mask(z, _mm512_set1_epi16(short(0x8000))) &
                         _mm512_cmple_epu16_mask(a, _mm512_set1_epi16(0x7F80)));
    special = __mmask32(~regular);
    __m512i odd = _mm512_and_si512(_mm512_srlv_epi16(a, shift), _mm512_set1_epi16(1));
    __m512i ra = _mm512_srlv_epi16(_mm512_add_epi16(_mm512_add_epi16(a, bias), odd), shift);
    __m512i slot = _mm512_sub_epi16(_mm512_min_epu16(_mm512_max_epu16(ra, ra_lo), ra_hi), base);
    return _mm512_maskz_mov_epi16(_mm512_cmpge_epu16_mask(a, _mm512_set1_epi16(0x80)), slot);
  }
  // The entries of 32 slots (< 128), rows picked per lane by `rows` (null: row 0).
  __m512i select(__m512i slot, const uint16_t* rows) const {
    __mmask32 high = _mm512_test_epi16_mask(slot, _mm512_set1_epi16(64));
    __m512i rid = rows ? _mm512_loadu_si512(rows) : _mm512_setzero_si512();
    __m512i e = _mm512_setzero_si512();
    for (int r = 0; r < nrows; ++r) {
      __m512i v = _mm512_permutex2var_epi16(t[r][0], slot, t[r][1]);
      if (pairs == 2)
        v = _mm512_mask_blend_epi16(high, v, _mm512_permutex2var_epi16(t[r][2], slot, t[r][3]));
      e = nrows == 1 ? v
                     : _mm512_mask_mov_epi16(e, _mm512_cmpeq_epi16_mask(rid, _mm512_set1_epi16(short(r))), v);
    }
    return e;
  }
};
#endif

// Step 3 on one row: e[i] (f32) of codes z[0..n); `rows`: per column its table row (null: 0).
// With the permute form, `slots` (when not null) gets the slots of the 32-lane blocks
// (0x8000: a special lane); the lookup returns where those blocks end.
int64_t row_lookup(const uint16_t* __restrict z, const uint16_t* __restrict rows, const Params& p,
                   float* __restrict e, int64_t n, uint16_t* __restrict slots = nullptr) {
  int64_t i = 0, blocks = 0;
#if MUGI_SOFTMAX_AVX512
  if (p.perm != nullptr) {
    const PermTables pt(p, p.perm);
    for (; i + 32 <= n; i += 32) {
      __mmask32 special;
      __m512i slot = pt.slots(_mm512_loadu_si512(z + i), special);
      __m512i ev = pt.select(slot, rows ? rows + i : nullptr);
      if (slots != nullptr)  // special lanes marked
        _mm512_storeu_si512(slots + i, _mm512_mask_mov_epi16(slot, special,
                                                             _mm512_set1_epi16(short(0x8000))));
      _mm512_storeu_si512(e + i, _mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm512_castsi512_si256(ev)), 16));
      _mm512_storeu_si512(e + i + 16, _mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(ev, 1)), 16));
      for (uint32_t sp = special; sp != 0; sp &= sp - 1) {  // rare: NaN y, masked inputs
        int64_t k = i + __builtin_ctz(sp);
        e[k] = u2f(entry_of(z[k], rows ? rows[k] : 0u, p));
      }
    }
    blocks = i;
  } else if (p.compact != nullptr) {
    for (; i + 16 <= n; i += 16) {
      __m512i zz = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(z + i)));
      __m512i o = rows ? _mm512_mullo_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                             reinterpret_cast<const __m256i*>(rows + i))), splat(p.width))
                       : _mm512_setzero_si512();
      __mmask16 special;
      __m512i ev = compact16(zz, o, p, special);
      _mm512_storeu_si512(e + i, ev);
      for (unsigned sp = special; sp != 0; sp &= sp - 1) {  // rare: NaN y, masked inputs
        int64_t k = i + __builtin_ctz(sp);
        e[k] = u2f(entry_of(z[k], rows ? rows[k] : 0u, p));
      }
    }
  } else {
    // 32-bit gathers of the aligned word holding each entry, then the entry's half: in bounds
    // (the table has an even number of entries and is at least 4-byte aligned).
    const int* words = reinterpret_cast<const int*>(p.table);
    for (; i + 16 <= n; i += 16) {
      __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(z + i)));
      if (rows)
        idx = _mm512_add_epi32(idx, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                        reinterpret_cast<const __m256i*>(rows + i))), 16));
      __m512i w = _mm512_i32gather_epi32(_mm512_srli_epi32(idx, 1), words, 4);
      __mmask16 odd = _mm512_test_epi32_mask(idx, splat(1));
      __m512i lo = _mm512_slli_epi32(w, 16);
      __m512i hi = _mm512_and_si512(w, splat(0xFFFF0000u));
      _mm512_storeu_si512(e + i, _mm512_mask_blend_epi32(odd, lo, hi));
    }
  }
#endif
  for (; i < n; ++i) e[i] = u2f(entry_of(z[i], rows ? rows[i] : 0u, p));
  return blocks;
}

// Per column of [0, n): the window key -> its table row.
void window_rows(const uint32_t* __restrict ext, uint16_t* __restrict rows, const Params& p,
                 int64_t n) {
  int64_t i = 0;
#if MUGI_SOFTMAX_AVX512
  for (; i + 16 <= n; i += 16) {
    __m512i row;
    if (p.compact != nullptr) {
      __m512i key = _mm512_min_epu32(_mm512_max_epu32(_mm512_loadu_si512(ext + i),
                                                      splat(p.k_lo)), splat(p.k_hi));
      row = _mm512_i32gather_epi32(_mm512_sub_epi32(key, splat(p.k_lo)), p.compact_rows, 4);
    } else {
      const int* words = reinterpret_cast<const int*>(p.bottom_rows);  // 65536 bytes: in bounds
      __m512i key = _mm512_loadu_si512(ext + i);
      __m512i w = _mm512_i32gather_epi32(_mm512_srli_epi32(key, 2), words, 4);
      __m512i shift = _mm512_slli_epi32(_mm512_and_si512(key, splat(3)), 3);
      row = _mm512_and_si512(_mm512_srlv_epi32(w, shift), splat(0xFF));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + i), _mm512_cvtepi32_epi16(row));
  }
#endif
  for (; i < n; ++i) rows[i] = key_row(ext[i], p);
}

// Pairwise-tree levels on v[0..size) (size a power of two; overwritten).
inline float pairwise_sum_inplace(float* v, int64_t size) {
  while (size > 1) {
    size >>= 1;
    for (int64_t i = 0; i < size; ++i) v[i] = v[i] + v[i + size];
  }
  return v[0];
}

struct Scratch {
  std::vector<float> v;       // one row of step 0's result
  std::vector<uint16_t> z;    // group x n codes
  std::vector<uint32_t> ext;  // n window keys
  std::vector<uint16_t> rows;  // n table rows (window rows)
  std::vector<uint16_t> slots;  // n permute slots (quotient tables)
  std::vector<float> e;       // one row of f32(e)
  std::vector<float> tree;    // the pairwise sum's levels (a power of two / 2)
  std::vector<int64_t> lo, hi;  // per row of the unit: its live span
};

// Step 4 on e[0..n) (left intact): pairwise tree, zero-padded to a power of two; tree has room
// for half of that power of two.
inline float pairwise_sum(const float* __restrict e, int64_t n, float* __restrict tree) {
  int64_t size = 1;
  while (size < n) size <<= 1;
  if (size == 1) return e[0];
  int64_t half = size >> 1;
  for (int64_t i = 0; i < n - half; ++i) tree[i] = e[i] + e[i + half];  // first level
  for (int64_t i = n - half; i < half; ++i) tree[i] = e[i] + 0.0f;       // (or e[i] + 0)
  return pairwise_sum_inplace(tree, half);
}

// Step 5 for one row: uint16 BF16 patterns, or (uint32) the same values as FP32 patterns.
inline uint16_t out_bits(uint32_t ob, uint16_t*) { return uint16_t(ob); }
inline uint32_t out_bits(uint32_t ob, uint32_t*) { return ob << 16; }

#if MUGI_SOFTMAX_AVX512
// Step 5 on 16 lanes: the BF16 output patterns (in 32-bit lanes) of e / total.
inline __m512i quotient16(__m512 ev, __m512 vt) {
    __m512i eb = _mm512_castps_si512(ev);
    __m512i qb = ftz16(_mm512_castps_si512(_mm512_div_ps(ev, vt)));
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(qb, 16), splat(1));
    __m512i ob = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(qb, splat(0x7FFFu)), lsb), 16);
    ob = _mm512_mask_mov_epi32(ob, is_nan16(qb),
                               _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(qb, 16),
                                                                splat(0x8000u)), splat(0x7FC0u)));
    __mmask16 masked = _mm512_cmpeq_epi32_mask(eb, splat(uint32_t(kMaskedE) << 16)) |
                       _mm512_cmpeq_epi32_mask(_mm512_and_si512(eb, splat(0x7FFF0000u)),
                                               splat(uint32_t(kMaskedNaN) << 16));
    return _mm512_maskz_mov_epi32(__mmask16(~masked), ob);
}
#endif

// Step 5 on one element: the BF16 output pattern of e / total.
inline uint32_t quotient(float e, float total) {
  uint32_t eb = f2u(e);
  uint32_t qb = f2u(e / total);
  qb = (qb & 0x7F800000u) == 0 ? (qb & 0x80000000u) : qb;  // FTZ
  uint32_t ob = (qb + 0x7FFFu + ((qb >> 16) & 1u)) >> 16;  // RNE
  ob = (qb & 0x7FFFFFFFu) > 0x7F800000u ? (((qb >> 16) & 0x8000u) | 0x7FC0u) : ob;
  bool masked = eb == (uint32_t(kMaskedE) << 16) || (eb & 0x7FFF0000u) == (uint32_t(kMaskedNaN) << 16);
  return masked ? 0u : ob;
}

template <typename O>
inline void divide_row(const float* __restrict e, float total, O* __restrict o, int64_t n) {
  int64_t i = 0;
#if MUGI_SOFTMAX_AVX512
  const __m512 vt = _mm512_set1_ps(total);
  for (; i + 16 <= n; i += 16) {
    __m512i ob = quotient16(_mm512_loadu_ps(e + i), vt);
    if constexpr (sizeof(O) == 2)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), _mm512_cvtepi32_epi16(ob));
    else
      _mm512_storeu_si512(o + i, _mm512_slli_epi32(ob, 16));
  }
#endif
  for (; i < n; ++i) o[i] = out_bits(quotient(e[i], total), o);
}

#if MUGI_SOFTMAX_AVX512
// Step 5 on n (a multiple of 32) elements by quotient tables: per table row and slot of the
// permute form, the output of its entry / total (one division a slot instead of one an
// element: step 5 is a function of e), looked up by the elements' slots (from row_lookup;
// 0x8000: a special lane, which divides its own e).  `rows`: per column its table row (null: 0).
template <typename O>
void divide_row_slots(const Params& p, const uint16_t* __restrict slots,
                      const uint16_t* __restrict rows, const float* __restrict e, float total,
                      O* __restrict o, int64_t n) {
  alignas(64) uint16_t q[8 * 128];
  const __m512 vt = _mm512_set1_ps(total);
  const uint32_t nslots = p.ra_hi - p.ra_lo + 2 > 64 ? 128 : 64;
  for (uint32_t r = 0; r < p.nrows; ++r)
    for (uint32_t k = 0; k < nslots; k += 16) {
      __m512i t = _mm512_cvtepu16_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.perm + r * 128 + k)));
      __m512i ob = quotient16(_mm512_castsi512_ps(_mm512_slli_epi32(t, 16)), vt);
      _mm256_store_si256(reinterpret_cast<__m256i*>(q + r * 128 + k), _mm512_cvtepi32_epi16(ob));
    }
  const PermTables qt(p, q);
  for (int64_t i = 0; i < n; i += 32) {
    __m512i sl = _mm512_loadu_si512(slots + i);
    __mmask32 special = _mm512_test_epi16_mask(sl, _mm512_set1_epi16(short(0x8000)));
    __m512i ob = qt.select(_mm512_and_si512(sl, _mm512_set1_epi16(127)), rows ? rows + i : nullptr);
    if constexpr (sizeof(O) == 2) {
      _mm512_storeu_si512(o + i, ob);
    } else {
      _mm512_storeu_si512(o + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(ob)), 16));
      _mm512_storeu_si512(o + i + 16, _mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(ob, 1)), 16));
    }
    for (uint32_t sp = special; sp != 0; sp &= sp - 1) {  // rare: NaN y, masked inputs
      int64_t k = i + __builtin_ctz(sp);
      o[k] = out_bits(quotient(e[k], total), o);
    }
  }
}
#endif

// The span [lo, hi) of a mask row (n flags) holding every flag that is set, widened to whole
// 16-element blocks (clamped to n); lo == hi: none is set.
inline void mask_span(const bool* m, int64_t n, int64_t& lo, int64_t& hi) {
  const uint8_t* mb = reinterpret_cast<const uint8_t*>(m);
  int64_t first = 0, last = n;
#if MUGI_SOFTMAX_AVX512
  // 64 flags at a time from each end (causal rows: a long run of zeros at the end)
  for (; first + 64 <= n; first += 64) {
    uint64_t set = _mm512_test_epi8_mask(_mm512_loadu_si512(mb + first), _mm512_set1_epi8(-1));
    if (set) {
      first += __builtin_ctzll(set);
      break;
    }
  }
  while (first < n && !mb[first]) ++first;  // none in the whole blocks: the rest
  if (first == n) {
    lo = hi = 0;
    return;
  }
  for (; last - 64 >= first; last -= 64) {
    uint64_t set = _mm512_test_epi8_mask(_mm512_loadu_si512(mb + last - 64), _mm512_set1_epi8(-1));
    if (set) {
      last -= __builtin_clzll(set);
      break;
    }
  }
  while (!mb[last - 1]) --last;
  lo = first & ~int64_t(15);
  hi = std::min(n, (last + 15) & ~int64_t(15));
  return;
#endif
  for (; first + 8 <= n; first += 8) {
    uint64_t w;
    std::memcpy(&w, mb + first, 8);
    if (w) break;
  }
  while (first < n && !mb[first]) ++first;
  if (first == n) {
    lo = hi = 0;
    return;
  }
  for (; last - 8 >= first; last -= 8) {
    uint64_t w;
    std::memcpy(&w, mb + last - 8, 8);
    if (w) break;
  }
  while (!mb[last - 1]) --last;
  lo = first & ~int64_t(15);
  hi = std::min(n, (last + 15) & ~int64_t(15));
}

// Codes of row j (z[j * n ...]) and its live span [lo, hi): outside it every input is -inf by
// the mask, so its output is +0 and its e is -0 (y = -inf - max is -inf, the mask code 0x0200,
// outside every window), or, where the maximum is NaN or -inf, y is NaN, whose masked e is a
// NaN - but then a live y is NaN too (every y is), the sum is NaN either way and every output
// is NaN or a masked +0.  So only the span is read and coded (its codes outside are not used).
// `ext`: the unit's window keys (null: not windowed).
void unit_codes(const Params& p, int64_t b, int64_t t, int64_t h, int64_t j, Scratch& s,
                uint32_t* ext, int64_t& lo, int64_t& hi) {
  const int64_t n = p.n;
  const int64_t offset = ((b * p.heads + h) * p.tokens + t) * n;
  uint16_t* z = &s.z[j * n];
  lo = 0;
  hi = n;
  const bool* m = p.mask == nullptr ? nullptr
                                    : p.mask + p.mask_batch[b] + (h * p.tokens + t) * p.mask_row;
  if (m != nullptr && p.mask_col == 1) mask_span(m, n, lo, hi);
  if (hi == lo) {  // a fully masked row: the whole row (its y are NaN: the generic path)
    lo = 0;
    hi = n;
  }
  const int64_t len = hi - lo;
  if (t + 1 < p.tokens) {
    // The next unit reads this head's row of the next token, n elements further on: prefetch
    // about this row's span of it (a causal span grows by one), which the hardware prefetcher
    // misses when rows are read in part and the group's rows lie far apart.
    const char* next = static_cast<const char*>(p.x) +
                       (offset + n + lo) * (p.x_is_f32 ? 4 : 2);
    const int64_t bytes = std::min(n - lo, len + 16) * (p.x_is_f32 ? 4 : 2);
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(next + k);
  }
  const bool* ml = m == nullptr ? m : (p.mask_col == 1 ? m + lo : m);
  float* v = s.v.data();
  uint32_t* el = ext == nullptr ? nullptr : ext + lo;
  if (p.x_is_f32) {
    const uint32_t* x = static_cast<const uint32_t*>(p.x) + offset + lo;
    float mx = row_max(x, len, p, ml, v);
    if (p.scaled || m != nullptr)
      row_codes(reinterpret_cast<const uint32_t*>(v), len, mx, z + lo, el, p.build_max);
    else
      row_codes(x, len, mx, z + lo, el, p.build_max);
  } else {
    const uint16_t* x = static_cast<const uint16_t*>(p.x) + offset + lo;
    float mx = row_max(x, len, p, ml, v);
    if (p.scaled || m != nullptr)
      row_codes(reinterpret_cast<const uint32_t*>(v), len, mx, z + lo, el, p.build_max);
    else
      row_codes(x, len, mx, z + lo, el, p.build_max);
  }
}

// Step 5 for one row o[0..n): zeros outside the live span [lo, hi), e[0..hi - lo) divided
// inside it, its first `blocks` elements by quotient tables (s.slots).
template <typename O>
void output_row(const Params& p, const Scratch& s, const uint16_t* rows, const float* e,
                float total, O* o, int64_t lo, int64_t hi, int64_t blocks) {
  std::fill(o, o + lo, O(0));
  std::fill(o + hi, o + p.n, O(0));
#if MUGI_SOFTMAX_AVX512
  if (blocks > 0) divide_row_slots(p, s.slots.data(), rows, e, total, o + lo, blocks);
#endif
  divide_row(e + blocks, total, o + lo + blocks, hi - lo - blocks);
}

void run_unit(const Params& p, int64_t unit, Scratch& s) {
  const int64_t n = p.n, ngroups = (p.heads + p.group - 1) / p.group;
  const int64_t g = unit % ngroups, t = (unit / ngroups) % p.tokens, b = unit / (ngroups * p.tokens);
  const int64_t h0 = g * p.group, h1 = std::min(p.heads, h0 + p.group), rows = h1 - h0;
  auto offset = [&](int64_t h) { return ((b * p.heads + h) * p.tokens + t) * n; };

  int64_t* lo = s.lo.data();
  int64_t* hi = s.hi.data();
  const bool windowed = p.bottom_rows != nullptr;
  uint32_t* __restrict ext = windowed ? s.ext.data() : nullptr;
  uint16_t* __restrict wrows = windowed ? s.rows.data() : nullptr;
  if (windowed) {
    // keys: the codes of negative normal y; else the empty-group fill (max: 0, min: 0xFFFF).
    // Outside a row's live span its codes are 0x0200: the fill, which the rows' union of
    // spans starts from.
    std::fill(ext, ext + n, p.build_max ? 0u : 0xFFFFu);
  }
  int64_t span_lo = n, span_hi = 0;  // the union of the rows' live spans
  for (int64_t j = 0; j < rows; ++j) {
    unit_codes(p, b, t, h0 + j, j, s, ext, lo[j], hi[j]);
    span_lo = std::min(span_lo, lo[j]);
    span_hi = std::max(span_hi, hi[j]);
  }
  if (windowed) window_rows(ext + span_lo, wrows + span_lo, p, span_hi - span_lo);

  for (int64_t j = 0; j < rows; ++j) {
    float* e = s.e.data();
    const float masked_e = u2f(uint32_t(kMaskedE) << 16);  // e of code 0x0200 in every row
    std::fill(e, e + lo[j], masked_e);
    std::fill(e + hi[j], e + n, masked_e);
    const int64_t len = hi[j] - lo[j];
    const uint16_t* rj = wrows ? wrows + lo[j] : nullptr;
    // quotient tables where they take far fewer divisions than the row (decode rows) and one
    // or two table rows (with 5 the per-row permutes cost more than the divisions they save:
    // 0.31 against 0.34 ms, SmolLM2's decode on one thread)
    const bool by_slots = p.perm != nullptr && p.nrows <= 2 && len >= 2 * int64_t(p.nrows) * 128;
    const int64_t blocks = row_lookup(&s.z[j * n + lo[j]], rj, p, e + lo[j], len,
                                      by_slots ? s.slots.data() : nullptr);
    const float total = pairwise_sum(e, n, s.tree.data());
    if (p.out_f32)
      output_row(p, s, rj, e + lo[j], total, static_cast<uint32_t*>(p.out) + offset(h0 + j),
                 lo[j], hi[j], by_slots ? blocks : 0);
    else
      output_row(p, s, rj, e + lo[j], total, static_cast<uint16_t*>(p.out) + offset(h0 + j),
                 lo[j], hi[j], by_slots ? blocks : 0);
  }
}

// Per-thread scratch for units of p.
void init_scratch(const Params& p, Scratch& s) {
  int64_t pow2 = 1;
  while (pow2 < p.n) pow2 <<= 1;
  const size_t rows = size_t(std::min(p.group, p.heads));
  if (p.scaled || p.mask != nullptr) s.v.resize(size_t(p.n));
  s.z.resize(rows * size_t(p.n));
  if (p.bottom_rows != nullptr) {
    s.ext.resize(size_t(p.n));
    s.rows.resize(size_t(p.n));
  }
  s.e.resize(size_t(p.n));
  if (p.perm != nullptr) s.slots.resize(size_t(p.n));
  s.lo.resize(rows);
  s.hi.resize(rows);
  s.tree.resize(size_t(std::max<int64_t>(1, pow2 / 2)));
}

void run_units(const Params& p, int64_t begin, int64_t end, Scratch& s) {
#if defined(__SSE__)
  // XLA:CPU's multiply flushes subnormal operands and results (FTZ | DAZ): step 0 does too,
  // on any thread; every later step gives the same bits under either mode (see the top)
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040u);
#endif
  for (int64_t u = begin; u < end; ++u) run_unit(p, u, s);
#if defined(__SSE__)
  _mm_setcsr(saved);
#endif
}

// Shared by the calling thread and the tasks it schedules: chunks are claimed from a counter,
// so the caller finishes the work itself if the pool never runs a task (no deadlock), and it
// returns only when every claimed chunk is done.
struct Shared {
  Params p;
  std::vector<int64_t> mask_batch;  // p.mask_batch points here
  int64_t units, chunk, chunks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;

  void work() {
    Scratch s;  // allocated by the first chunk this thread claims
    for (;;) {
      int64_t c = next.fetch_add(1);
      if (c >= chunks) return;
      if (s.e.empty()) init_scratch(p, s);
      run_units(p, c * chunk, std::min(units, (c + 1) * chunk), s);
      std::lock_guard<std::mutex> lock(mu);
      if (++done == chunks) cv.notify_all();
    }
  }
};

ffi::Error SoftmaxImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::U16> table,
                       ffi::Buffer<ffi::U8> bottom_rows, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::U16> compact,
                       ffi::Buffer<ffi::S32> compact_rows, ffi::Result<ffi::AnyBuffer> out,
                       int64_t tokens, int64_t group, bool build_max, bool windowed, bool scaled,
                       bool masked, bool compacted, int64_t a_lo, int64_t a_hi, int64_t k_lo,
                       int64_t k_hi, int64_t shift, int64_t ra_lo, int64_t ra_hi) {
  // x: (batch..., rows, n), the softmax axis last; rows = heads x tokens, head-major; window
  // groups along heads (at one token and column).
  auto dims = x.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("softmax: x must be (batch..., rows, n)");
  if (x.element_type() != ffi::F32 && x.element_type() != ffi::BF16)
    return ffi::Error::InvalidArgument("softmax: x must be float32 or bfloat16");
  if (out->element_type() != ffi::F32 && out->element_type() != ffi::BF16)
    return ffi::Error::InvalidArgument("softmax: the output must be float32 or bfloat16");
  const size_t nd = dims.size();
  const int64_t n = dims[nd - 1], rows = dims[nd - 2];
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < nd; ++i) batch *= dims[i];
  if (tokens < 1 || rows % tokens != 0)
    return ffi::Error::InvalidArgument("softmax: tokens must divide the rows");
  const int64_t heads = rows / tokens;
  if (group < 1) return ffi::Error::InvalidArgument("softmax: group must be >= 1");
  if (batch * heads * tokens * n == 0) return ffi::Error::Success();
  const int64_t table_rows = int64_t(table.element_count()) / 65536;
  if (table_rows < 1 || int64_t(table.element_count()) % 65536 != 0)
    return ffi::Error::InvalidArgument("softmax: the table must be (rows, 65536)");
  // The compact tables (when compacted): `table_rows` rows of `width` entries and one of
  // padding, then (shift >= 0) the permute form's `table_rows` rows of 128 slots; with windows,
  // one table row per key of [k_lo, k_hi].
#if MUGI_SOFTMAX_AVX512
  const bool use_compact = compacted;
#else
  const bool use_compact = false;  // scalar lookups: the full table's are as fast
#endif
  const int64_t width = a_hi - a_lo + 2;
  const bool use_perm = use_compact && shift >= 0;
  if (use_compact) {
    if (a_lo < 0x80 || a_hi < a_lo || a_hi > 0x7F80 ||
        int64_t(compact.element_count()) != table_rows * width + 1 + (use_perm ? table_rows * 128 : 0))
      return ffi::Error::InvalidArgument("softmax: the compact table does not match its range");
    if (use_perm && (shift > 7 || ra_lo < 0 || ra_hi < ra_lo || ra_hi - ra_lo + 2 > 128 ||
                     ra_hi > 0x7FFF || table_rows > 8))
      return ffi::Error::InvalidArgument("softmax: the permute tables do not match their range");
    if (windowed) {
      if (k_lo < 0 || k_hi < k_lo || k_hi > 0xFFFF ||
          int64_t(compact_rows.element_count()) != k_hi - k_lo + 1)
        return ffi::Error::InvalidArgument("softmax: compact_rows does not match its range");
      const int32_t* cr = compact_rows.typed_data();
      for (int64_t i = 0; i <= k_hi - k_lo; ++i)
        if (cr[i] < 0 || cr[i] >= table_rows)
          return ffi::Error::InvalidArgument("softmax: compact_rows points past the table");
    }
  } else if (windowed) {  // only the full tables: every key's row is checked
    if (bottom_rows.element_count() != 65536)
      return ffi::Error::InvalidArgument("softmax: bottom_rows must have 65536 entries");
    const uint8_t* br = bottom_rows.typed_data();
    uint8_t top = 0;
    for (int i = 0; i < 65536; ++i) top = br[i] > top ? br[i] : top;  // vectorises
    if (top >= table_rows)
      return ffi::Error::InvalidArgument("softmax: bottom_rows points past the table");
  }

  if (scaled && scale.element_count() != 1)
    return ffi::Error::InvalidArgument("softmax: scale must have one element");
  // mask: x's rank, each axis x's length or 1 (broadcast)
  auto mdims = mask.dimensions();
  auto shared = std::make_shared<Shared>();
  std::vector<int64_t>& mask_batch = shared->mask_batch;
  int64_t mask_row = 0, mask_col = 0;
  if (masked) {
    if (mdims.size() != nd) return ffi::Error::InvalidArgument("softmax: mask must have x's rank");
    std::vector<int64_t> stride(nd, 0);
    int64_t st = 1;
    for (size_t k = nd; k-- > 0;) {
      if (mdims[k] != dims[k] && mdims[k] != 1)
        return ffi::Error::InvalidArgument("softmax: mask must broadcast to x");
      stride[k] = mdims[k] == 1 ? 0 : st;
      st *= mdims[k];
    }
    mask_row = stride[nd - 2];
    mask_col = stride[nd - 1];
    mask_batch.assign(size_t(batch), 0);
    for (int64_t b = 0; b < batch; ++b) {  // batch index -> mask offset (row-major digits)
      int64_t rest = b, off = 0;
      for (size_t k = nd - 2; k-- > 0;) {
        off += (rest % dims[k]) * stride[k];
        rest /= dims[k];
      }
      mask_batch[size_t(b)] = off;
    }
  }

  Params& p = shared->p;
  p.x = x.untyped_data();
  p.x_is_f32 = x.element_type() == ffi::F32;
  p.scaled = scaled;
  p.scale = scaled ? scale.typed_data()[0] : 1.0f;
  p.mask = masked ? mask.typed_data() : nullptr;
  p.mask_batch = mask_batch.data();
  p.mask_row = mask_row;
  p.mask_col = mask_col;
  p.out = out->untyped_data();
  p.out_f32 = out->element_type() == ffi::F32;
  p.table = table.typed_data();
  p.bottom_rows = windowed ? bottom_rows.typed_data() : nullptr;
  p.compact = use_compact ? compact.typed_data() : nullptr;
  p.compact_rows = use_compact && windowed ? compact_rows.typed_data() : nullptr;
  p.a_lo = uint32_t(a_lo);
  p.a_hi = uint32_t(a_hi);
  p.k_lo = uint32_t(k_lo);
  p.k_hi = uint32_t(k_hi);
  p.width = uint32_t(width);
#if MUGI_SOFTMAX_AVX512
  p.perm = use_perm ? compact.typed_data() + table_rows * width + 1 : nullptr;
#else
  p.perm = nullptr;
#endif
  p.shift = uint32_t(shift < 0 ? 0 : shift);
  p.ra_lo = uint32_t(ra_lo);
  p.ra_hi = uint32_t(ra_hi);
  p.nrows = uint32_t(table_rows);
  p.batch = batch;
  p.heads = heads;
  p.tokens = tokens;
  p.n = n;
  p.group = group;
  p.build_max = build_max;

  const int64_t ngroups = (p.heads + group - 1) / group;
  shared->units = batch * tokens * ngroups;
  const int64_t elements = batch * heads * tokens * n;
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (elements < (1 << 15)) threads = 1;  // small inputs: scheduling costs more than it saves
  // About 4 chunks per thread (load balance on a shared machine), each a whole number of units.
  int64_t chunks = std::min<int64_t>(shared->units, threads == 1 ? 1 : 4 * threads);
  shared->chunk = (shared->units + chunks - 1) / chunks;
  shared->chunks = (shared->units + shared->chunk - 1) / shared->chunk;
  for (int64_t i = 1; i < std::min(threads, shared->chunks); ++i)
    pool.Schedule([shared] { shared->work(); });
  shared->work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done == shared->chunks; });
  return ffi::Error::Success();
}

}  // namespace

// The kernel on plain buffers, on the calling thread, with the MXCSR flush-to-zero and
// denormals-are-zero bits set as asked (then restored): lets tests check that no result depends
// on the mode XLA's threads run in.  x: (batch, heads x tokens, n) head-major rows.
// compact / compact_rows null: the full tables only, perm null: no permute form (else as the
// FFI handler's operands).
extern "C" void softmax_vlp_plain(const void* x, int x_is_f32, uint16_t* out,
                                  const uint16_t* table, const uint8_t* bottom_rows,
                                  const uint16_t* compact, const int32_t* compact_rows,
                                  const uint16_t* perm, int64_t table_rows, int64_t a_lo,
                                  int64_t a_hi, int64_t k_lo, int64_t k_hi, int64_t shift,
                                  int64_t ra_lo, int64_t ra_hi, int64_t batch, int64_t heads,
                                  int64_t tokens, int64_t n, int64_t group, int build_max,
                                  int ftz_daz) {
  Params p{x, x_is_f32 != 0, false, 1.0f, false, nullptr, nullptr, 0, 0, out, table, bottom_rows,
           batch, heads, tokens, n, group, build_max != 0, compact, compact_rows,
           uint32_t(a_lo), uint32_t(a_hi), uint32_t(k_lo), uint32_t(k_hi),
           uint32_t(a_hi - a_lo + 2), perm, uint32_t(shift), uint32_t(ra_lo), uint32_t(ra_hi),
           uint32_t(table_rows)};
#if !MUGI_SOFTMAX_AVX512
  p.perm = nullptr;
#endif
#if defined(__SSE__)
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(ftz_daz ? (saved | 0x8040u) : (saved & ~0x8040u));
#endif
  const int64_t ngroups = (heads + group - 1) / group;
  Scratch s;
  init_scratch(p, s);
  run_units(p, 0, batch * tokens * ngroups, s);
#if defined(__SSE__)
  _mm_setcsr(saved);
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(softmax_vlp, SoftmaxImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U16>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::U16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("tokens")
                                  .Attr<int64_t>("group")
                                  .Attr<bool>("build_max")
                                  .Attr<bool>("windowed")
                                  .Attr<bool>("scaled")
                                  .Attr<bool>("masked")
                                  .Attr<bool>("compacted")
                                  .Attr<int64_t>("a_lo")
                                  .Attr<int64_t>("a_hi")
                                  .Attr<int64_t>("k_lo")
                                  .Attr<int64_t>("k_hi")
                                  .Attr<int64_t>("shift")
                                  .Attr<int64_t>("ra_lo")
                                  .Attr<int64_t>("ra_hi"));
