// CPU affine_coupling: y_b = (x_b + h_t) * s, s = sigmoid(h_s + 2) or exp(h_s), with the per-sample sum of log s;
// inverse; backward.
// Contract in ../kernels.h. The logdet partials use fixed chunks, so results never depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/common.h"

namespace flowkern {
namespace cpu {
namespace {

// Affine forward (INVERSE = false): o = (a + ht) * s;  inverse: o = a / s - ht.  Returns sum(log s).
template <typename T, bool INVERSE, bool EXP>
FK_INLINE T affine_chunk(const T* a, const T* ht, const T* hs, T* o, int64_t n) {
  T ld = 0;
#pragma omp simd reduction(+ : ld)
  for (int64_t e = 0; e < n; ++e) {
    const ScaleParts<T> sp = scale_parts<EXP>(hs[e]);
    o[e] = INVERSE ? a[e] * sp.inv_s - ht[e] : (a[e] + ht[e]) * sp.s;
    ld += sp.log_s;
  }
  return ld;
}

// Backward over n elements: dx_b = dh_t = g s, dh_s = (g y + gl) d(log s)/d(h_s).
template <typename T, bool EXP>
FK_INLINE void affine_bwd_chunk(const T* yb, const T* hs, const T* g, T gl, T* gx, T* ght, T* ghs, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) {
    const ScaleParts<T> sp = scale_parts<EXP>(hs[e]);
    gx[e] = g[e] * sp.s;
    ght[e] = g[e] * sp.s;
    ghs[e] = (g[e] * yb[e] + gl) * sp.dlog_s;
  }
}

// float instances: an AVX-512 build and AVX2 / baseline clones of each (target attributes take no templates: one
// function per variant); double (tests) stays plain
#define FK_COUPLING_F32(SUFFIX, ATTR)                                                                                 \
  ATTR float fwd_sigmoid_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {         \
    return affine_chunk<float, false, false>(a, ht, hs, o, n);                                                        \
  }                                                                                                                   \
  ATTR float inv_sigmoid_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {         \
    return affine_chunk<float, true, false>(a, ht, hs, o, n);                                                         \
  }                                                                                                                   \
  ATTR float fwd_exp_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {             \
    return affine_chunk<float, false, true>(a, ht, hs, o, n);                                                         \
  }                                                                                                                   \
  ATTR float inv_exp_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {             \
    return affine_chunk<float, true, true>(a, ht, hs, o, n);                                                          \
  }                                                                                                                   \
  ATTR void bwd_sigmoid_f32##SUFFIX(const float* yb, const float* hs, const float* g, float gl, float* gx, float* ght, \
                                    float* ghs, int64_t n) {                                                          \
    affine_bwd_chunk<float, false>(yb, hs, g, gl, gx, ght, ghs, n);                                                   \
  }                                                                                                                   \
  ATTR void bwd_exp_f32##SUFFIX(const float* yb, const float* hs, const float* g, float gl, float* gx, float* ght,     \
                                float* ghs, int64_t n) {                                                              \
    affine_bwd_chunk<float, true>(yb, hs, g, gl, gx, ght, ghs, n);                                                    \
  }
FK_COUPLING_F32(_avx512, FK_AVX512)
FK_COUPLING_F32(, FK_CLONES)
#undef FK_COUPLING_F32

template <bool INVERSE, bool EXP>
float chunk_any(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  const bool wide = has_avx512();
  if constexpr (EXP) {
    if constexpr (INVERSE) return (wide ? inv_exp_f32_avx512 : inv_exp_f32)(a, ht, hs, o, n);
    return (wide ? fwd_exp_f32_avx512 : fwd_exp_f32)(a, ht, hs, o, n);
  }
  if constexpr (INVERSE) return (wide ? inv_sigmoid_f32_avx512 : inv_sigmoid_f32)(a, ht, hs, o, n);
  return (wide ? fwd_sigmoid_f32_avx512 : fwd_sigmoid_f32)(a, ht, hs, o, n);
}
template <bool INVERSE, bool EXP>
double chunk_any(const double* a, const double* ht, const double* hs, double* o, int64_t n) {
  return affine_chunk<double, INVERSE, EXP>(a, ht, hs, o, n);
}
template <bool EXP>
void bwd_any(const float* yb, const float* hs, const float* g, float gl, float* gx, float* ght, float* ghs, int64_t n) {
  if (has_avx512())
    (EXP ? bwd_exp_f32_avx512 : bwd_sigmoid_f32_avx512)(yb, hs, g, gl, gx, ght, ghs, n);
  else
    (EXP ? bwd_exp_f32 : bwd_sigmoid_f32)(yb, hs, g, gl, gx, ght, ghs, n);
}
template <bool EXP>
void bwd_any(const double* yb, const double* hs, const double* g, double gl, double* gx, double* ght, double* ghs,
             int64_t n) {
  affine_bwd_chunk<double, EXP>(yb, hs, g, gl, gx, ght, ghs, n);
}

// The passthrough channels [0, Ca) of each sample: out[n, :Ca] = in[n, :Ca] (the same copy in fwd, inv and bwd).
// Called inside the pass's parallel region (a work-shared loop, no barrier after it): one fork/join per pass.
template <typename T>
void copy_passthrough(const T* in, T* out, const AffineCouplingParams& p) {
  const int64_t sample = p.C * p.HW;
#pragma omp for schedule(static) nowait
  for (int64_t n = 0; n < p.B; ++n) std::memcpy(out + n * sample, in + n * sample, p.Ca * p.HW * sizeof(T));
}

// INVERSE = false: y_b = (x_b + h_t) * s;  true: x_b = y_b / s - h_t.  ld_part[n, k] = sum log s over chunk k;
// ld[n] = the sum of sample n's partials in chunk order (when asked for).
template <typename T, bool INVERSE>
int fwd_or_inv(const AffineCouplingParams& p) {
  if (p.chunk <= 0) return 2;
  const T* in = static_cast<const T*>(INVERSE ? p.y : p.x);
  T* out = static_cast<T*>(INVERSE ? p.x : p.y);
  const T* h = static_cast<const T*>(p.h);
  T* ld_part = static_cast<T*>(p.ld_part);
  T* ld = static_cast<T*>(p.ld);
  const int64_t C = p.C, HW = p.HW, Cb = C - p.Ca, E = Cb * HW, chunk = p.chunk, nk = (E + chunk - 1) / chunk;
  const int64_t Hc = p.affine ? 2 * Cb : Cb;
  std::vector<T> own_parts;  // the partials, when the caller wants only their per-sample sums
  if (p.affine && !ld_part) {
    if (!ld) return 2;
    own_parts.resize(p.B * nk);
    ld_part = own_parts.data();
  }
#pragma omp parallel num_threads(threads_for(p.B * C * HW, p.nthreads, kGrainElements))
  {
  copy_passthrough(in, out, p);
#pragma omp for schedule(static)
  for (int64_t t = 0; t < p.B * nk; ++t) {
    const int64_t n = t / nk, k = t % nk, e0 = k * chunk, e1 = std::min(e0 + chunk, E);
    const T* a = in + n * C * HW + p.Ca * HW + e0;
    T* o = out + n * C * HW + p.Ca * HW + e0;
    const T* ht = h + n * Hc * HW + e0;
    if (p.affine) {
      ld_part[n * nk + k] = p.exp_scale ? chunk_any<INVERSE, true>(a, ht, ht + E, o, e1 - e0)
                                        : chunk_any<INVERSE, false>(a, ht, ht + E, o, e1 - e0);
    } else {
#pragma omp simd
      for (int64_t e = 0; e < e1 - e0; ++e) o[e] = INVERSE ? a[e] - ht[e] : a[e] + ht[e];
    }
  }  // the loop's barrier: every partial is written
  if (p.affine && ld) {
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < p.B; ++n) {
      T sum = 0;
      for (int64_t k = 0; k < nk; ++k) sum += ld_part[n * nk + k];
      ld[n] = sum;
    }
  }
  }
  return 0;
}

template <typename T>
int bwd(const AffineCouplingParams& p) {
  const T* y = static_cast<const T*>(p.y);
  const T* h = static_cast<const T*>(p.h);
  const T* dy = static_cast<const T*>(p.dy);
  const T* dld = static_cast<const T*>(p.dld);
  T* dx = static_cast<T*>(p.dx);
  T* dh = static_cast<T*>(p.dh);
  const int64_t C = p.C, HW = p.HW, Cb = C - p.Ca, E = Cb * HW;
  const int64_t Hc = p.affine ? 2 * Cb : Cb;
  const int64_t blk = 4096, nblk = (E + blk - 1) / blk;
#pragma omp parallel num_threads(threads_for(p.B * C * HW, p.nthreads, kGrainElements))
  {
  copy_passthrough(dy, dx, p);
#pragma omp for schedule(static)
  for (int64_t t = 0; t < p.B * nblk; ++t) {
    const int64_t n = t / nblk, e0 = (t % nblk) * blk, e1 = std::min(e0 + blk, E);
    const int64_t off = n * C * HW + p.Ca * HW + e0;
    T* ght = dh + n * Hc * HW + e0;
    if (p.affine) {
      const T* hs = h + n * Hc * HW + E + e0;
      const T gl = dld ? dld[n] : T(0);
      if (p.exp_scale) {
        bwd_any<true>(y + off, hs, dy + off, gl, dx + off, ght, ght + E, e1 - e0);
      } else {
        bwd_any<false>(y + off, hs, dy + off, gl, dx + off, ght, ght + E, e1 - e0);
      }
    } else {
      std::memcpy(dx + off, dy + off, (e1 - e0) * sizeof(T));
      std::memcpy(ght, dy + off, (e1 - e0) * sizeof(T));
    }
  }
  }
  return 0;
}

}  // namespace
}  // namespace cpu

template <>
int affine_coupling_fwd<Device::kCPU>(const AffineCouplingParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::fwd_or_inv<decltype(t), false>(p); });
}

template <>
int affine_coupling_inv<Device::kCPU>(const AffineCouplingParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::fwd_or_inv<decltype(t), true>(p); });
}

template <>
int affine_coupling_bwd<Device::kCPU>(const AffineCouplingParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::bwd<decltype(t)>(p); });
}

}  // namespace flowkern
