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
// Work unit: one (batch, token, group of heads) = `group` rows; units are split over the XLA
// CPU thread pool, each output computed by exactly one unit (results independent of the split).

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

template <typename T> inline T widened_back(uint32_t v);
template <> inline uint32_t widened_back<uint32_t>(uint32_t v) { return v; }
template <> inline uint16_t widened_back<uint16_t>(uint32_t v) { return uint16_t(v >> 16); }
inline uint32_t widened(uint32_t v) { return v; }
inline uint32_t widened(uint16_t v) { return uint32_t(v) << 16; }

// Steps 1-2 for one row of n inputs: codes z[0..n).  Two passes over the (L1-resident) row:
// the maximum of the raw inputs (on order-preserving integer keys, which vectorise; NaN tracked
// apart), rounded once - rounding to BF16 and FTZ are monotone, so round(max x) = max round(x),
// and either zero is as good as the other (both give y = +-0, which read the same entry) - then
// the codes.
template <typename T, uint32_t (*Round)(T)>
inline float row_codes(const T* __restrict x, int64_t n, uint16_t* __restrict z) {
  int32_t kmax = INT32_MIN;
  uint32_t nan = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = widened(x[i]);
    int32_t k = order_key(v);
    kmax = k > kmax ? k : kmax;
    nan |= (v & 0x7FFFFFFFu) > 0x7F800000u;
  }
  const float m = u2f(nan ? 0x7FC00000u : Round(T(widened_back<T>(uint32_t(order_key(uint32_t(kmax)))))));
  for (int64_t i = 0; i < n; ++i) {
    uint32_t r = Round(x[i]);
    uint32_t d = f2u(u2f(r) - m);
    uint32_t y = (d + 0x7FFFu + ((d >> 16) & 1u)) >> 16;
    z[i] = uint16_t(r == 0xFF800000u ? ((y >> 6) & 0x201u) : y);
  }
  return m;
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
  std::vector<uint32_t> off;  // n table offsets (window rows)
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
  for (int64_t i = 0; i < half; ++i) tree[i] = e[i];  // first level: e[i] + e[i + half] (or 0)
  for (int64_t i = 0; i < n - half; ++i) tree[i] = tree[i] + e[i + half];
  for (int64_t i = n - half; i < half; ++i) tree[i] = tree[i] + 0.0f;
  return pairwise_sum_inplace(tree, half);
}

inline void lookup(const uint16_t* __restrict table, const uint32_t* __restrict off,
                   const uint16_t* __restrict z, float* __restrict e, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  // 32-bit gathers of the aligned word holding each entry, then the entry's half: in bounds
  // (the table has an even number of entries and is at least 4-byte aligned).
  const int* words = reinterpret_cast<const int*>(table);
  for (; i + 16 <= n; i += 16) {
    __m512i idx = _mm512_add_epi32(_mm512_loadu_si512(off + i),
                                   _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                       reinterpret_cast<const __m256i*>(z + i))));
    __m512i w = _mm512_i32gather_epi32(_mm512_srli_epi32(idx, 1), words, 4);
    __mmask16 odd = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1));
    __m512i lo = _mm512_slli_epi32(w, 16);
    __m512i hi = _mm512_and_si512(w, _mm512_set1_epi32(int(0xFFFF0000u)));
    _mm512_storeu_si512(e + i, _mm512_mask_blend_epi32(odd, lo, hi));
  }
#endif
  for (; i < n; ++i) e[i] = u2f(uint32_t(table[off[i] + z[i]]) << 16);
}

// off[i] <- bottom_rows[off[i]] << 16 (the start of the window's table row).
inline void window_rows(const uint8_t* __restrict bottom_rows, uint32_t* __restrict off, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const int* words = reinterpret_cast<const int*>(bottom_rows);  // 65536 bytes: in bounds
  for (; i + 16 <= n; i += 16) {
    __m512i key = _mm512_loadu_si512(off + i);
    __m512i w = _mm512_i32gather_epi32(_mm512_srli_epi32(key, 2), words, 4);
    __m512i shift = _mm512_slli_epi32(_mm512_and_si512(key, _mm512_set1_epi32(3)), 3);
    __m512i row = _mm512_and_si512(_mm512_srlv_epi32(w, shift), _mm512_set1_epi32(0xFF));
    _mm512_storeu_si512(off + i, _mm512_slli_epi32(row, 16));
  }
#endif
  for (; i < n; ++i) off[i] = uint32_t(bottom_rows[off[i]]) << 16;
}

// Step 5 for one row: uint16 BF16 patterns, or (uint32) the same values as FP32 patterns.
inline uint16_t out_bits(uint32_t ob, uint16_t*) { return uint16_t(ob); }
inline uint32_t out_bits(uint32_t ob, uint32_t*) { return ob << 16; }

template <typename O>
inline void divide_row(const float* __restrict e, float total, O* __restrict o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t eb = f2u(e[i]);
    uint32_t qb = f2u(e[i] / total);
    qb = (qb & 0x7F800000u) == 0 ? (qb & 0x80000000u) : qb;  // FTZ
    uint32_t ob = (qb + 0x7FFFu + ((qb >> 16) & 1u)) >> 16;  // RNE
    ob = (qb & 0x7FFFFFFFu) > 0x7F800000u ? (((qb >> 16) & 0x8000u) | 0x7FC0u) : ob;
    bool masked = eb == (uint32_t(kMaskedE) << 16) || (eb & 0x7FFF0000u) == (uint32_t(kMaskedNaN) << 16);
    o[i] = out_bits(masked ? 0u : ob, o);
  }
}

inline float as_f32(float v) { return v; }
inline float as_f32(uint16_t v) { return u2f(uint32_t(v) << 16); }

// Step 0 on one row into v (MXCSR FTZ/DAZ set by the caller): x * scale, -inf where the mask
// is false.  The mask's softmax-axis stride is 0 (one flag per row) or 1.
template <typename T>
inline void scaled_masked(const T* __restrict x, int64_t n, const Params& p,
                          const bool* __restrict m, float* __restrict v) {
  const float scale = p.scale, ninf = u2f(0xFF800000u);
  if (p.scaled)
    for (int64_t i = 0; i < n; ++i) v[i] = as_f32(x[i]) * scale;
  else
    for (int64_t i = 0; i < n; ++i) v[i] = as_f32(x[i]);
  if (m == nullptr) return;
  if (p.mask_col == 0) {
    if (!m[0]) std::fill(v, v + n, ninf);
    return;
  }
  const uint8_t* __restrict mb = reinterpret_cast<const uint8_t*>(m);
  for (int64_t i = 0; i < n; ++i) v[i] = mb[i] ? v[i] : ninf;
}

// The span [lo, hi) of a mask row (n flags) holding every flag that is set, widened to whole
// 16-element blocks (clamped to n); lo == hi: none is set.
inline void mask_span(const bool* m, int64_t n, int64_t& lo, int64_t& hi) {
  const uint8_t* mb = reinterpret_cast<const uint8_t*>(m);
  int64_t first = 0, last = n;
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
void unit_codes(const Params& p, int64_t b, int64_t t, int64_t h, int64_t j, Scratch& s,
                int64_t& lo, int64_t& hi) {
  const int64_t n = p.n;
  const int64_t offset = ((b * p.heads + h) * p.tokens + t) * n;
  uint16_t* z = &s.z[j * n];
  lo = 0;
  hi = n;
  if (!p.scaled && p.mask == nullptr) {
    if (p.x_is_f32)
      row_codes<uint32_t, rounded_f32>(static_cast<const uint32_t*>(p.x) + offset, n, z);
    else
      row_codes<uint16_t, rounded_bf16>(static_cast<const uint16_t*>(p.x) + offset, n, z);
    return;
  }
  const bool* m = p.mask == nullptr ? nullptr
                                    : p.mask + p.mask_batch[b] + (h * p.tokens + t) * p.mask_row;
  if (m != nullptr && p.mask_col == 1) mask_span(m, n, lo, hi);
  if (hi == lo) {  // a fully masked row: the whole row (its y are NaN: the generic path)
    lo = 0;
    hi = n;
  }
  const int64_t len = hi - lo;
  float* v = s.v.data();
  if (p.x_is_f32)
    scaled_masked(static_cast<const float*>(p.x) + offset + lo, len, p, m == nullptr ? m : m + lo,
                  v);
  else
    scaled_masked(static_cast<const uint16_t*>(p.x) + offset + lo, len, p,
                  m == nullptr ? m : m + lo, v);
  row_codes<uint32_t, rounded_f32>(reinterpret_cast<const uint32_t*>(v), len, z + lo);
}

void run_unit(const Params& p, int64_t unit, Scratch& s) {
  const int64_t n = p.n, ngroups = (p.heads + p.group - 1) / p.group;
  const int64_t g = unit % ngroups, t = (unit / ngroups) % p.tokens, b = unit / (ngroups * p.tokens);
  const int64_t h0 = g * p.group, h1 = std::min(p.heads, h0 + p.group), rows = h1 - h0;
  auto offset = [&](int64_t h) { return ((b * p.heads + h) * p.tokens + t) * n; };

  int64_t* lo = s.lo.data();
  int64_t* hi = s.hi.data();
  int64_t span_lo = n, span_hi = 0;  // the union of the rows' live spans
  for (int64_t j = 0; j < rows; ++j) {
    unit_codes(p, b, t, h0 + j, j, s, lo[j], hi[j]);
    span_lo = std::min(span_lo, lo[j]);
    span_hi = std::max(span_hi, hi[j]);
  }

  uint32_t* __restrict off = s.off.data();
  if (p.bottom_rows == nullptr) {
    std::fill(off, off + n, 0u);
  } else {
    // keys: the codes of negative normal y; else the empty-group fill (max: 0, min: 0xFFFF).
    // Outside a row's live span its codes are 0x0200: the fill, skipped.
    const uint32_t fill = p.build_max ? 0u : 0xFFFFu;
    std::fill(off + span_lo, off + span_hi, fill);
    for (int64_t j = 0; j < rows; ++j) {
      const uint16_t* __restrict zj = &s.z[j * n];
      if (p.build_max) {
        for (int64_t i = lo[j]; i < hi[j]; ++i) {
          uint32_t zi = zj[i];
          uint32_t key = uint16_t(zi - kNegNormalLo) < uint16_t(kNegNormalHi - kNegNormalLo) ? zi : 0u;
          off[i] = key > off[i] ? key : off[i];
        }
      } else {
        for (int64_t i = lo[j]; i < hi[j]; ++i) {
          uint32_t zi = zj[i];
          uint32_t key =
              uint16_t(zi - kNegNormalLo) < uint16_t(kNegNormalHi - kNegNormalLo) ? zi : 0xFFFFu;
          off[i] = key < off[i] ? key : off[i];
        }
      }
    }
    window_rows(p.bottom_rows, off + span_lo, span_hi - span_lo);
  }

  for (int64_t j = 0; j < rows; ++j) {
    float* e = s.e.data();
    const float masked_e = u2f(uint32_t(kMaskedE) << 16);  // e of code 0x0200 in every row
    std::fill(e, e + lo[j], masked_e);
    std::fill(e + hi[j], e + n, masked_e);
    lookup(p.table, off + lo[j], &s.z[j * n + lo[j]], e + lo[j], hi[j] - lo[j]);
    const float total = pairwise_sum(e, n, s.tree.data());
    if (p.out_f32) {
      uint32_t* o = static_cast<uint32_t*>(p.out) + offset(h0 + j);
      std::fill(o, o + lo[j], 0u);
      std::fill(o + hi[j], o + n, 0u);
      divide_row(e + lo[j], total, o + lo[j], hi[j] - lo[j]);
    } else {
      uint16_t* o = static_cast<uint16_t*>(p.out) + offset(h0 + j);
      std::fill(o, o + lo[j], uint16_t(0));
      std::fill(o + hi[j], o + n, uint16_t(0));
      divide_row(e + lo[j], total, o + lo[j], hi[j] - lo[j]);
    }
  }
}

void run_units(const Params& p, int64_t begin, int64_t end) {
  int64_t pow2 = 1;
  while (pow2 < p.n) pow2 <<= 1;
  Scratch s;
  if (p.scaled || p.mask != nullptr) s.v.resize(size_t(p.n));
  s.z.resize(size_t(std::min(p.group, p.heads) * p.n));
  s.off.resize(size_t(p.n));
  s.e.resize(size_t(p.n));
  s.lo.resize(size_t(std::min(p.group, p.heads)));
  s.hi.resize(size_t(std::min(p.group, p.heads)));
  s.tree.resize(size_t(std::max<int64_t>(1, pow2 / 2)));
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
    for (;;) {
      int64_t c = next.fetch_add(1);
      if (c >= chunks) return;
      run_units(p, c * chunk, std::min(units, (c + 1) * chunk));
      std::lock_guard<std::mutex> lock(mu);
      if (++done == chunks) cv.notify_all();
    }
  }
};

ffi::Error SoftmaxImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::U16> table,
                       ffi::Buffer<ffi::U8> bottom_rows, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::PRED> mask, ffi::Result<ffi::AnyBuffer> out,
                       int64_t tokens, int64_t group, bool build_max, bool windowed, bool scaled,
                       bool masked) {
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
  if (windowed) {
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
extern "C" void softmax_vlp_plain(const void* x, int x_is_f32, uint16_t* out,
                                  const uint16_t* table, const uint8_t* bottom_rows,
                                  int64_t batch, int64_t heads, int64_t tokens, int64_t n,
                                  int64_t group, int build_max, int ftz_daz) {
  Params p{x, x_is_f32 != 0, false, 1.0f, false, nullptr, nullptr, 0, 0, out, table, bottom_rows,
           batch, heads, tokens, n, group, build_max != 0};
#if defined(__SSE__)
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(ftz_daz ? (saved | 0x8040u) : (saved & ~0x8040u));
#endif
  const int64_t ngroups = (heads + group - 1) / group;
  run_units(p, 0, batch * tokens * ngroups);
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
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("tokens")
                                  .Attr<int64_t>("group")
                                  .Attr<bool>("build_max")
                                  .Attr<bool>("windowed")
                                  .Attr<bool>("scaled")
                                  .Attr<bool>("masked"));
