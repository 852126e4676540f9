// Helpers shared by the CPU kernels: portable vectorisation, the coupling's sigmoid math, dtype dispatch.
//
// FK_CLONES: build a function for x86-64-v3 (AVX2 + FMA) and the baseline, and pick one at load time (ifunc).
// FK_AVX512: the same function's AVX-512 build at full 512-bit width (gcc's x86-64-v4 alone prefers 256-bit vectors,
// half the FMA throughput of a core with two 512-bit FMA units), which a kernel calls where has_avx512() says the CPU
// runs it. A build thus runs everywhere (no -march=native, no SIGILL on older CPUs) and uses the widest vectors the
// CPU has, as torch's own CPU kernels do.
//
// exp_nonpos / log1p_unit: branch-free float exp on (-inf, 0] and log1p on [0, 1], written as plain arithmetic so
// `#pragma omp simd` loops that use them vectorise (glibc's vector libm needs -ffast-math, which we avoid).
// Max error is a few float ulps; the double overloads defer to libm (double is for tests).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define FK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define FK_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define FK_HAVE_AVX512_BUILD 1
#else
#define FK_CLONES
#define FK_AVX512
#define FK_HAVE_AVX512_BUILD 0
#endif
#define FK_INLINE __attribute__((always_inline)) inline

namespace flowkern {
namespace cpu {

// Whether the FK_AVX512 builds run here: the CPU has x86-64-v4's AVX-512 (F, BW, CD, DQ, VL) and the environment does
// not set FLOWKERN_CPU_AVX512=0 (which tests use to cover the other builds on an AVX-512 machine). Asked once.
inline bool has_avx512() {
#if FK_HAVE_AVX512_BUILD
  static const bool yes = [] {
    const char* env = std::getenv("FLOWKERN_CPU_AVX512");
    if (env && std::strcmp(env, "0") == 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return yes;
#else
  return false;
#endif
}

// The vector build the float kernels run: "avx512", "avx2" (x86-64-v3) or "baseline".
inline const char* cpu_vector_isa() {
#if FK_HAVE_AVX512_BUILD
  if (has_avx512()) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) return "avx2";
#endif
  return "baseline";
}

FK_INLINE float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;  // below that, exp underflows; 2^-126 scale stays a normal float
  // x = n ln2 + r, |r| <= ln2/2; n rounded with the 1.5*2^23 trick (vectorises without SSE4.1's roundps)
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;  // Cephes expf minimax polynomial
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * __builtin_bit_cast(float, bits);
}

FK_INLINE float log1p_unit(float t) {
  // log(1 + t) = 2 atanh(z), z = t / (2 + t) in [0, 1/3]: an odd series in z, exact to float rounding
  const float z = t / (2.0f + t), z2 = z * z;
  float q = 1.0f / 15.0f;
  q = q * z2 + 1.0f / 13.0f;
  q = q * z2 + 1.0f / 11.0f;
  q = q * z2 + 1.0f / 9.0f;
  q = q * z2 + 1.0f / 7.0f;
  q = q * z2 + 1.0f / 5.0f;
  q = q * z2 + 1.0f / 3.0f;
  q = q * z2 + 1.0f;
  return 2.0f * z * q;
}

FK_INLINE double exp_nonpos(double x) { return std::exp(x); }
FK_INLINE double log1p_unit(double t) { return std::log1p(t); }

// s = sigmoid(u) with 1 - s, 1 / s and log s, for the coupling's forward, inverse and backward alike. With
// e = exp(-|u|) in (0, 1]: s = 1/(1+e) (u >= 0) or e/(1+e) (u < 0), 1 - s is the other one (no cancellation),
// log s = min(u, 0) - log1p(e). Selects only, so `omp simd` loops vectorise; nothing overflows.
template <typename T>
struct SigmoidParts {
  T s, one_minus_s, inv_s, log_s;
};
template <typename T>
FK_INLINE SigmoidParts<T> sigmoid_parts(T u) {
  const bool neg = u < T(0);
  const T e = exp_nonpos(neg ? u : -u);
  const T r = T(1) / (T(1) + e);
  return {neg ? e * r : r, neg ? r : e * r, neg ? (T(1) + e) / e : T(1) + e, (neg ? u : T(0)) - log1p_unit(e)};
}

// The coupling's scale s from the network's h_s, with 1 / s, log s and d(log s)/d(h_s). kExp = false (Glow):
// s = sigmoid(h_s + 2). kExp = true: h_s is the log-scale itself (e.g. a tanh-clamped one), s = exp(h_s), formed from
// e = exp(-|h_s|) so the vectorised exp_nonpos serves both signs.
template <typename T>
struct ScaleParts {
  T s, inv_s, log_s, dlog_s;
};
template <bool kExp, typename T>
FK_INLINE ScaleParts<T> scale_parts(T h) {
  if constexpr (kExp) {
    const bool neg = h < T(0);
    const T e = exp_nonpos(neg ? h : -h);
    return {neg ? e : T(1) / e, neg ? T(1) / e : e, h, T(1)};
  } else {
    const SigmoidParts<T> sp = sigmoid_parts(h + T(2));
    return {sp.s, sp.inv_s, sp.log_s, sp.one_minus_s};
  }
}

// Threads for a parallel region over `work` units (elements, or FMAs for the matrix ops): one below `grain`, else
// nthreads. A small pass runs faster alone than its fork/join costs, and far faster than waking worker threads
// that another busy process has pre-empted (milliseconds per region when the cores are shared). torch's CPU ops use
// the same rule (at::internal::GRAIN_SIZE). Results never depend on it: every reduction has a fixed order.
constexpr int64_t kGrainElements = 32768;
constexpr int64_t kGrainFMAs = 1 << 18;
FK_INLINE int threads_for(int64_t work, int nthreads, int64_t grain) { return work >= grain ? nthreads : 1; }

// Calls f(T{}) with the element type of `dtype`; the CPU kernels take float32 and float64 only.
template <typename F>
FK_INLINE int dispatch_float(int dtype, F&& f) {
  if (dtype == kF32) return f(float{});
  if (dtype == kF64) return f(double{});
  return 1;
}

}  // namespace cpu
}  // namespace flowkern
