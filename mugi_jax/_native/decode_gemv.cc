// Batch-small matrix product y = x w for decode steps: FP32 activations x (M, K) (M small, e.g. one
// row per generated sequence), BF16 weights w (K, N) read as they are held (the `bf16` weight
// residency, row-major (in, out)), FP32 result y (M, N).
//
// Numerics (independent of the thread count, the chunking and the instruction set):
//   every output y[m, n] is computed by one thread as
//       acc = +0.0f;  for k = 0 .. K-1:  acc = fma(x[m, k], float(w[k, n]), acc);  y[m, n] = acc
//   i.e. a sequential sum over k in increasing order, each step one fused multiply-add rounded
//   once to FP32 (round to nearest even).  float(w) widens a BF16 exactly (its bits shifted left
//   by 16).  Subnormals are flushed as XLA:CPU's own arithmetic flushes them: on x86 the MXCSR
//   flush-to-zero and denormals-are-zero bits are set for the duration of the call (whatever
//   the calling or pool thread had) and restored after, so every thread computes the same
//   recurrence.  The AVX-512, AVX2/FMA and portable (std::fma) paths give the same bits.
//   Error bound: |y - sum_k x w| <= gamma_K * sum_k |x w| + K * 2^-126, gamma_K = K u / (1 - K u),
//   u = 2^-24 (K rounded steps, the products exact inside each FMA; the last term covers
//   flushed subnormals).
//
// Memory: a chunk of output columns [c0, c1) accumulates in y itself; four rows of w are read
// per pass (w[k .. k+3, c0 .. c1), each a contiguous run of BF16), so the weights stream once,
// in order, and the accumulators are read and written once per four rows.  The weights are
// read as held, (K, N) row-major: no layout of its own (the XLA fallback reads the same array).
//
// Threads: the output columns are cut into chunks (as many as the threads, more where a
// chunk's accumulators would exceed kAccFloats); the calling thread and up to `threads - 1`
// tasks on the XLA FFI CPU thread pool (attribute threads = 0: the pool's size, one thread for
// products under kThreadedMin) claim chunks from an atomic counter.  Which thread computes a
// chunk changes nothing in its bits (each column's recurrence runs in one thread, in the order
// above).

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using Vec = __m512;
inline Vec Load(const uint16_t* p) {  // 16 BF16 widened to FP32 (bits shifted left by 16)
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec Splat(float v) { return _mm512_set1_ps(v); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec Load32(const float* p) { return _mm512_loadu_ps(p); }
#define MUGI_VECTOR 1
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;
using Vec = __m256;
inline Vec Load(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec Splat(float v) { return _mm256_set1_ps(v); }
inline Vec Zero() { return _mm256_setzero_ps(); }
inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec Load32(const float* p) { return _mm256_loadu_ps(p); }
#define MUGI_VECTOR 1
#else
constexpr int64_t kLanes = 8;
#endif

// accumulators of one chunk (64 KiB, kept in L2; they live in the output buffer y)
constexpr int64_t kAccFloats = 16384;
// products below this many multiply-adds run on the calling thread alone: waking a pool thread
// costs more than it saves on a decoder layer's projections (measured: 2 threads made
// SmolLM2's 210 per-step GEMVs slower, the LM head faster)
constexpr int64_t kThreadedMin = int64_t{1} << 21;
constexpr int64_t kMaxRows = 8;       // rows of x per pass over a chunk's weights

inline float Widen(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// y[r0 .. r0+rows, c0 .. c0+width) for rows <= kMaxRows, rows * width <= kAccFloats: for each k
// in increasing order, the row segment w[k, c0 .. c0+width) (contiguous) updates every row's
// accumulators.
void Block(const float* x, const uint16_t* w, float* y, int64_t K, int64_t N, int64_t r0,
           int64_t rows, int64_t c0, int64_t width) {
  float* acc = y + r0 * N + c0;  // row r's accumulators: acc[r * N + c]
  for (int64_t r = 0; r < rows; ++r) std::memset(acc + r * N, 0, sizeof(float) * width);
#if defined(MUGI_VECTOR)
  const int64_t vec = width - width % kLanes;
#else
  const int64_t vec = 0;
#endif
  int64_t k = 0;
#if defined(MUGI_VECTOR)
  // four rows of w per pass over the accumulators (the same recurrence, in the same order:
  // acc = fma(x[k+3], w[k+3], fma(x[k+2], w[k+2], fma(x[k+1], w[k+1], fma(x[k], w[k], acc)))))
  for (; k + 4 <= K; k += 4) {
    const uint16_t* w0 = w + k * N + c0;
    const uint16_t* w1 = w0 + N;
    const uint16_t* w2 = w1 + N;
    const uint16_t* w3 = w2 + N;
    if (rows == 1) {
      const float* xr = x + r0 * K + k;
      const Vec x0 = Splat(xr[0]), x1 = Splat(xr[1]), x2 = Splat(xr[2]), x3 = Splat(xr[3]);
      for (int64_t c = 0; c < vec; c += kLanes) {
        Vec a = Load32(acc + c);
        a = Fma(x0, Load(w0 + c), a);
        a = Fma(x1, Load(w1 + c), a);
        a = Fma(x2, Load(w2 + c), a);
        a = Fma(x3, Load(w3 + c), a);
        Store(acc + c, a);
      }
    } else {
      for (int64_t c = 0; c < vec; c += kLanes) {
        const Vec v0 = Load(w0 + c), v1 = Load(w1 + c), v2 = Load(w2 + c), v3 = Load(w3 + c);
        for (int64_t r = 0; r < rows; ++r) {
          const float* xr = x + (r0 + r) * K + k;
          Vec a = Load32(acc + r * N + c);
          a = Fma(Splat(xr[0]), v0, a);
          a = Fma(Splat(xr[1]), v1, a);
          a = Fma(Splat(xr[2]), v2, a);
          a = Fma(Splat(xr[3]), v3, a);
          Store(acc + r * N + c, a);
        }
      }
    }
    for (int64_t kk = k; kk < k + 4; ++kk) {  // the columns past the last full vector
      const uint16_t* wr = w + kk * N + c0;
      for (int64_t c = vec; c < width; ++c) {
        const float wf = Widen(wr[c]);
        for (int64_t r = 0; r < rows; ++r)
          acc[r * N + c] = std::fma(x[(r0 + r) * K + kk], wf, acc[r * N + c]);
      }
    }
  }
#endif
  for (; k < K; ++k) {  // the last K % 4 rows (all of them without a vector unit)
    const uint16_t* wr = w + k * N + c0;
#if defined(MUGI_VECTOR)
    if (rows == 1) {
      const Vec xv = Splat(x[r0 * K + k]);
      for (int64_t c = 0; c < vec; c += kLanes)
        Store(acc + c, Fma(xv, Load(wr + c), Load32(acc + c)));
    } else {
      for (int64_t c = 0; c < vec; c += kLanes) {
        const Vec wv = Load(wr + c);
        for (int64_t r = 0; r < rows; ++r)
          Store(acc + r * N + c,
                Fma(Splat(x[(r0 + r) * K + k]), wv, Load32(acc + r * N + c)));
      }
    }
#endif
    for (int64_t c = vec; c < width; ++c) {
      const float wf = Widen(wr[c]);
      for (int64_t r = 0; r < rows; ++r)
        acc[r * N + c] = std::fma(x[(r0 + r) * K + k], wf, acc[r * N + c]);
    }
  }
}

struct Work {
  const float* x;
  const uint16_t* w;
  float* y;
  int64_t M, K, N, chunks, width, rows;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
#if defined(__SSE__)
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);  // flush subnormals as XLA:CPU does: FTZ (bit 15), DAZ (bit 6)
#endif
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t c0 = c * width;
      const int64_t cw = N - c0 < width ? N - c0 : width;
      for (int64_t r0 = 0; r0 < M; r0 += rows)
        Block(x, w, y, K, N, r0, M - r0 < rows ? M - r0 : rows, c0, cw);
      done.fetch_add(1, std::memory_order_release);
    }
#if defined(__SSE__)
    _mm_setcsr(csr);
#endif
  }
};

ffi::Error DecodeGemv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                      ffi::ResultBuffer<ffi::F32> y, int64_t threads) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (wd.size() != 2 || xd.size() < 1)
    return ffi::Error::InvalidArgument("decode_gemv: w must be (K, N) and x (..., K)");
  const int64_t K = wd[0], N = wd[1];
  if (xd.back() != K)
    return ffi::Error::InvalidArgument("decode_gemv: x's last axis does not match w's first");
  int64_t M = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) M *= xd[i];
  if (static_cast<int64_t>(y->element_count()) != M * N)
    return ffi::Error::InvalidArgument("decode_gemv: y must hold (..., N)");
  if (M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(y->typed_data(), 0, sizeof(float) * M * N);
    return ffi::Error::Success();
  }
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->w = reinterpret_cast<const uint16_t*>(w.typed_data());
  work->y = y->typed_data();
  work->M = M;
  work->K = K;
  work->N = N;
  // threads taking part: `threads` if positive, else the pool's size (one, the caller, for
  // small products: scheduling would cost more than it saves)
  int64_t total = threads > 0 ? threads : pool.num_threads();
  if (threads <= 0 && M * K * N < kThreadedMin) total = 1;
  if (total < 1) total = 1;
  // chunks: as many as the threads, more where a chunk's accumulators would not fit in L1
  work->rows = M < kMaxRows ? M : kMaxRows;
  const int64_t max_width = kAccFloats / work->rows / kLanes * kLanes;
  int64_t chunks = (N + max_width - 1) / max_width;
  if (chunks < total) chunks = total;
  int64_t width = (N + chunks - 1) / chunks;
  width = (width + kLanes - 1) / kLanes * kLanes;
  work->width = width;
  work->chunks = (N + width - 1) / width;
  int64_t helpers = total - 1;
  if (helpers > work->chunks - 1) helpers = work->chunks - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();  // the caller claims chunks too, so it never waits on a helper that has not started
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(decode_gemv, DecodeGemv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
