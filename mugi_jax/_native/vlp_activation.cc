// The VLP nonlinear unit (mugi_jax/nonlinear/vlp.py) as one pass over the input, for window
// groups along the last axis: entry rounding to BF16, the group's extreme normal magnitude, its
// window bottom, then one lookup per element in the unit's output table (operand, built by
// ``vlp.output_table`` for any registered function, any VLPConfig: every element rule, the
// linear tail and the NaN pass-through are already in the table).
//
// Why native: XLA:CPU runs the table gather as a scalar loop behind its fusions and reads the
// input once for the window reduction and again for the lookup; here each group's 256 inputs
// are rounded once into the output buffer (L1-resident), reduced and looked up in place.
//
// Bits equal the XLA path (tests/nonlinear/test_vlp_native.py): integer operations only; the
// FP32 -> BF16 rounding is ``formats.round_to_bf16`` on the bit pattern (RNE, NaN ->
// sign | 0x7FC0), so no FP unit mode (FTZ/DAZ, contraction) can change a result.
//
// Handler ``vlp_activation`` (XLA FFI target ``mugi_vlp_activation``):
//   operands: x (F32 or BF16, any shape; groups run along the last axis, one row = the last
//             axis), table (U16, flat; 65536 entries per window bottom, rows from
//             e_bottom = e_top - lut_exponents + 1; with group == 1 the 65536-entry table of
//             ``output_table(single=True)``)
//   result:   BF16 or F32 (the BF16 results widened exactly), the shape of x
//   attrs:    group (elements per window group, >= 1; the last group of a row may be shorter),
//             mantissa_bits, window, lut_exponents, e_top, build_min (0: "max", 1: "min")
// Threads: the groups are split into contiguous chunks claimed from an atomic counter by the
// calling thread and by tasks on XLA's intra-op pool; every group is computed by one thread
// with the same code, so results do not depend on the split or the thread count.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Params {
  int64_t n;            // row length (last axis)
  int64_t group;        // elements per group
  int64_t groups_per_row;
  int m_bits;
  int window;
  int e_lo_b;           // biased e_bottom
  int e_top_b;          // biased e_top
  bool build_min;
  bool f32;
  bool padded_table;    // the table holds one entry more than its rows (AVX2 gathers)
  const void* x;
  const uint16_t* table;
  void* out;            // BF16 or F32 (the BF16 result widened exactly)
  bool out_f32;
};

// FP32 bit pattern -> BF16 bit pattern, formats.round_to_bf16 (RNE, NaN -> sign | 0x7FC0).
inline uint16_t RoundToBf16(uint32_t b) {
  const bool is_nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(is_nan ? (((b >> 16) & 0x8000u) | 0x7FC0u) : rounded);
}

// vlp._round_magnitude: a 15-bit BF16 magnitude rounded half to even to M fraction bits.
inline int32_t RoundMagnitude(int32_t magnitude, int m_bits) {
  const int shift = 7 - m_bits;
  if (shift == 0) return magnitude;
  return (magnitude + ((1 << (shift - 1)) - 1) + ((magnitude >> shift) & 1)) >> shift;
}

// 16 lanes of 16 bits (GCC vector extension: SSE/AVX/NEON as the target has them; the
// element loops below do not auto-vectorize as 16-bit reductions).
typedef uint16_t U16x16 __attribute__((vector_size(32)));

// The largest (kMax) or smallest magnitude pattern among the normal elements
// (0x0080 <= |x| < 0x7F80) of the BF16 patterns o[0, len), as vlp._masked_extreme; without
// normal elements 0 (largest: the window bottom goes to e_bottom) or 0xFFFF (smallest: to
// e_top - W + 1).
template <bool kMax>
inline int32_t GroupExtremeNormal(const uint16_t* o, int64_t len) {
  constexpr uint16_t kNone = kMax ? 0 : 0xFFFF;
  const U16x16 none = U16x16{} + kNone;
  U16x16 acc = none;
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    U16x16 v;
    std::memcpy(&v, o + i, sizeof v);
    v &= 0x7FFF;
    v = (v >= 0x0080) & (v < 0x7F80) ? v : none;
    if (kMax) acc = acc > v ? acc : v;
    else acc = acc < v ? acc : v;
  }
  uint16_t extreme = kNone;
  auto pick = [&extreme](uint16_t v) {
    extreme = kMax ? (v > extreme ? v : extreme) : (v < extreme ? v : extreme);
  };
  for (int k = 0; k < 16; ++k) pick(acc[k]);
  for (; i < len; ++i) {
    const uint16_t mag = o[i] & 0x7FFF;
    pick(mag >= 0x0080 && mag < 0x7F80 ? mag : kNone);
  }
  return extreme;
}

// o[i] = t[o[i]] for i < len.  With AVX2 and a table with one spare entry after its last row,
// eight 32-bit gathers at byte offset 2 * o[i] (the low half is the entry; reading t[o[i] + 1]
// stays in bounds), about 1.5x faster than scalar loads on the machines measured.
inline void Lookup(const uint16_t* t, uint16_t* o, int64_t len, bool padded) {
  int64_t i = 0;
#ifdef __AVX2__
  if (padded) {
    const int* base = reinterpret_cast<const int*>(t);
    const __m256i low = _mm256_set1_epi32(0xFFFF);
    for (; i + 16 <= len; i += 16) {
      const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<__m128i*>(o + i)));
      const __m256i hi =
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<__m128i*>(o + i + 8)));
      const __m256i a = _mm256_and_si256(_mm256_i32gather_epi32(base, lo, 2), low);
      const __m256i b = _mm256_and_si256(_mm256_i32gather_epi32(base, hi, 2), low);
      // packus interleaves 128-bit lanes: a0-3 b0-3 a4-7 b4-7; the permute restores the order
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), packed);
    }
  }
#else
  (void)padded;
#endif
  for (; i < len; ++i) o[i] = t[o[i]];
}

// Groups [first, last) of the flattened (rows, groups_per_row) grid.
void RunGroups(const Params& p, int64_t first, int64_t last) {
  // BF16 results are computed in place; F32 ones in a group-sized buffer, then widened.
  std::unique_ptr<uint16_t[]> scratch(p.out_f32 ? new uint16_t[p.group] : nullptr);
  for (int64_t gi = first; gi < last; ++gi) {
    const int64_t row = gi / p.groups_per_row;
    const int64_t start = row * p.n + (gi % p.groups_per_row) * p.group;
    const int64_t len = std::min(p.group, row * p.n + p.n - start);
    uint16_t* o = p.out_f32 ? scratch.get() : static_cast<uint16_t*>(p.out) + start;
    // Entry: the BF16 patterns, written where the results go.
    if (p.f32) {
      const uint32_t* xs = static_cast<const uint32_t*>(p.x) + start;
      for (int64_t i = 0; i < len; ++i) {
        uint32_t b;
        std::memcpy(&b, xs + i, 4);
        o[i] = RoundToBf16(b);
      }
    } else {
      std::memcpy(o, static_cast<const uint16_t*>(p.x) + start, 2 * len);
    }
    uint32_t row_start = 0;
    if (p.group > 1) {
      // Extreme magnitude of the group's normal elements (0x0080 <= |x| < 0x7F80); rounding to
      // M bits is monotone, so its rounded exponent is the extreme rounded exponent.
      const int w = p.window;
      const int32_t extreme =
          p.build_min ? GroupExtremeNormal<false>(o, len) : GroupExtremeNormal<true>(o, len);
      const int32_t e_ext = RoundMagnitude(extreme, p.m_bits) >> p.m_bits;
      const int32_t bottom = p.build_min
                                 ? std::min(std::max(e_ext, p.e_lo_b), p.e_top_b - w + 1)
                                 : std::min(std::max(e_ext - (w - 1), p.e_lo_b), p.e_top_b - w + 1);
      row_start = static_cast<uint32_t>(bottom - p.e_lo_b) << 16;
    }
    Lookup(p.table + row_start, o, len, p.padded_table);
    if (p.out_f32) {
      uint32_t* wide = static_cast<uint32_t*>(p.out) + start;
      for (int64_t i = 0; i < len; ++i) wide[i] = static_cast<uint32_t>(o[i]) << 16;
    }
  }
}

struct Shared {
  Params p;
  int64_t total_groups;
  int64_t chunk;        // groups per chunk
  int64_t chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

void Work(Shared& s) {
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.chunks) return;
    RunGroups(s.p, c * s.chunk, std::min(s.total_groups, (c + 1) * s.chunk));
    s.done.fetch_add(1, std::memory_order_release);
  }
}

// Below this many elements one thread does it all (a task hand-off costs microseconds).
constexpr int64_t kParallelElements = 1 << 16;

ffi::Error VlpActivation(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::U16> table,
                         ffi::Result<ffi::AnyBuffer> out, int64_t group,
                         int64_t mantissa_bits, int64_t window, int64_t lut_exponents,
                         int64_t e_top, int64_t build_min) {
  const bool f32 = x.element_type() == ffi::DataType::F32;
  if (!f32 && x.element_type() != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("vlp_activation: x must be F32 or BF16");
  }
  const bool out_f32 = out->element_type() == ffi::DataType::F32;
  if (!out_f32 && out->element_type() != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("vlp_activation: the result must be BF16 or F32");
  }
  if (group < 1 || mantissa_bits < 1 || mantissa_bits > 7 || window < 1 ||
      lut_exponents < window) {
    return ffi::Error::InvalidArgument("vlp_activation: bad configuration attributes");
  }
  const int64_t rows_needed = group == 1 ? 1 : lut_exponents - window + 1;
  if (static_cast<int64_t>(table.element_count()) < (rows_needed << 16)) {
    return ffi::Error::InvalidArgument("vlp_activation: table has " +
                                       std::to_string(table.element_count()) +
                                       " entries, needs " + std::to_string(rows_needed << 16));
  }
  const int64_t total = static_cast<int64_t>(x.element_count());
  const bool padded_table =
      static_cast<int64_t>(table.element_count()) > (rows_needed << 16);
  if (total == 0) return ffi::Error::Success();
  auto dims = x.dimensions();
  const int64_t n = dims.size() == 0 ? 1 : dims.back();
  auto s = std::make_shared<Shared>();
  Params& p = s->p;
  p.n = n;
  p.group = group;
  p.groups_per_row = (n + group - 1) / group;
  p.m_bits = static_cast<int>(mantissa_bits);
  p.window = static_cast<int>(window);
  p.e_lo_b = static_cast<int>(e_top - lut_exponents + 1 + 127);
  p.e_top_b = static_cast<int>(e_top + 127);
  p.build_min = build_min != 0;
  p.f32 = f32;
  p.padded_table = padded_table;
  p.x = x.untyped_data();
  p.table = table.typed_data();
  p.out = out->untyped_data();
  p.out_f32 = out_f32;
  s->total_groups = (total / n) * p.groups_per_row;

  const int64_t threads = total < kParallelElements ? 0 : pool.num_threads();
  if (threads <= 0) {
    RunGroups(p, 0, s->total_groups);
    return ffi::Error::Success();
  }
  // A few chunks per thread: a thread slowed by other work leaves its share to the others.
  s->chunks = std::min<int64_t>(s->total_groups, 4 * (threads + 1));
  s->chunk = (s->total_groups + s->chunks - 1) / s->chunks;
  s->chunks = (s->total_groups + s->chunk - 1) / s->chunk;
  for (int64_t t = 0; t < std::min<int64_t>(threads, s->chunks - 1); ++t) {
    pool.Schedule([s]() { Work(*s); });
  }
  Work(*s);
  // Every chunk is claimed; wait for the ones other threads are still running (tasks that
  // start later find nothing to do, and hold the shared state until they return).
  while (s->done.load(std::memory_order_acquire) < s->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(vlp_activation, VlpActivation,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U16>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("group")
                                  .Attr<int64_t>("mantissa_bits")
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("lut_exponents")
                                  .Attr<int64_t>("e_top")
                                  .Attr<int64_t>("build_min"));
