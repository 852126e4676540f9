// CPU affine_coupling: y_b = (x_b + h_t) * s, s = sigmoid(h_s + 2) or exp(h_s), with the per-sample sum of log s;
// inverse; backward.
// Contract in ../kernels.h. The logdet partials use fixed chunks, so results never depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/common.h"

#if FK_HAVE_AVX512_BUILD
#include <immintrin.h>
#endif

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

// float instances: AVX2 / baseline clones of each, and the exp scale's AVX-512 build (target attributes take no
// templates: one function per variant); the sigmoid's AVX-512 build is below; double (tests) stays plain
#define FK_COUPLING_F32(SUFFIX, ATTR, KIND, EXP)                                                                      \
  ATTR float fwd_##KIND##_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {       \
    return affine_chunk<float, false, EXP>(a, ht, hs, o, n);                                                          \
  }                                                                                                                   \
  ATTR float inv_##KIND##_f32##SUFFIX(const float* a, const float* ht, const float* hs, float* o, int64_t n) {       \
    return affine_chunk<float, true, EXP>(a, ht, hs, o, n);                                                           \
  }                                                                                                                   \
  ATTR void bwd_##KIND##_f32##SUFFIX(const float* yb, const float* hs, const float* g, float gl, float* gx,           \
                                     float* ght, float* ghs, int64_t n) {                                             \
    affine_bwd_chunk<float, EXP>(yb, hs, g, gl, gx, ght, ghs, n);                                                     \
  }
FK_COUPLING_F32(_avx512, FK_AVX512, exp, true)
FK_COUPLING_F32(, FK_CLONES, exp, true)
FK_COUPLING_F32(, FK_CLONES, sigmoid, false)

#if FK_HAVE_AVX512_BUILD
// Glow's sigmoid scale on 16 lanes of AVX-512 instructions: the same quantities as sigmoid_parts (common.h), without
// its two divisions (half the generic loop's time): exp by a polynomial and scalef, 1 / (1 + e) and 1 / e by rcp14
// and a Newton step (2^-28), log1p(e) on [0, 1] as e q(e), q a degree-9 Chebyshev fit (1.7e-7 relative in float).
struct SigmoidParts16 {
  __m512 s, one_minus_s, inv_s, log_s;
};
FK_AVX512 FK_INLINE __m512 rcp16(__m512 w) {
  const __m512 r = _mm512_rcp14_ps(w);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(w, r, _mm512_set1_ps(1.0f)), r);
}
FK_AVX512 FK_INLINE SigmoidParts16 sigmoid_parts16(__m512 u) {
  const __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
  // e = exp(-|u|), -|u| clamped at -87 as exp_nonpos does; n = round(x / ln 2), r = x - n ln 2 in two parts
  const __m512 x = _mm512_max_ps(_mm512_or_ps(u, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);  // Cephes expf, as exp_nonpos
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 e = _mm512_scalef_ps(p, n);
  const __m512 w = _mm512_add_ps(e, _mm512_set1_ps(1.0f));
  const __m512 rw = rcp16(w), erw = _mm512_mul_ps(e, rw);  // 1 / (1 + e), e / (1 + e)
  __m512 q = _mm512_set1_ps(-3.214032156e-3f);
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(1.964914240e-2f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(-5.643497035e-2f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(1.053322032e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(-1.525144577e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(1.965148896e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(-2.494780868e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(3.332909942e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(-4.999985099e-1f));
  q = _mm512_fmadd_ps(q, e, _mm512_set1_ps(1.0f));
  const __m512 log_s = _mm512_fnmadd_ps(q, e, _mm512_min_ps(u, _mm512_setzero_ps()));  // min(u, 0) - log1p(e)
  return {_mm512_mask_blend_ps(neg, rw, erw), _mm512_mask_blend_ps(neg, erw, rw),
          _mm512_mask_blend_ps(neg, w, _mm512_mul_ps(w, rcp16(e))), log_s};
}

// The affine pass on 16 lanes, the tail masked: o = (a + ht) s (INVERSE: a / s - ht); returns sum log s, in a fixed
// order for a given n.
template <bool INVERSE>
FK_AVX512 FK_INLINE float sigmoid_chunk16(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  __m512 ld = _mm512_setzero_ps();
  for (int64_t e = 0; e < n; e += 16) {
    const __mmask16 m = n - e >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - e)) - 1);
    const __m512 u = _mm512_add_ps(_mm512_maskz_loadu_ps(m, hs + e), _mm512_set1_ps(2.0f));
    const SigmoidParts16 sp = sigmoid_parts16(u);
    const __m512 av = _mm512_maskz_loadu_ps(m, a + e), tv = _mm512_maskz_loadu_ps(m, ht + e);
    _mm512_mask_storeu_ps(o + e, m, INVERSE ? _mm512_fmsub_ps(av, sp.inv_s, tv)
                                            : _mm512_mul_ps(_mm512_add_ps(av, tv), sp.s));
    ld = _mm512_mask_add_ps(ld, m, ld, sp.log_s);
  }
  return _mm512_reduce_add_ps(ld);
}
FK_AVX512 float fwd_sigmoid_f32_avx512(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  return sigmoid_chunk16<false>(a, ht, hs, o, n);
}
FK_AVX512 float inv_sigmoid_f32_avx512(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  return sigmoid_chunk16<true>(a, ht, hs, o, n);
}
FK_AVX512 void bwd_sigmoid_f32_avx512(const float* yb, const float* hs, const float* g, float gl, float* gx,
                                      float* ght, float* ghs, int64_t n) {
  for (int64_t e = 0; e < n; e += 16) {
    const __mmask16 m = n - e >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - e)) - 1);
    const SigmoidParts16 sp = sigmoid_parts16(_mm512_add_ps(_mm512_maskz_loadu_ps(m, hs + e), _mm512_set1_ps(2.0f)));
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + e), gs = _mm512_mul_ps(gv, sp.s);
    _mm512_mask_storeu_ps(gx + e, m, gs);
    _mm512_mask_storeu_ps(ght + e, m, gs);
    const __m512 gy = _mm512_fmadd_ps(gv, _mm512_maskz_loadu_ps(m, yb + e), _mm512_set1_ps(gl));
    _mm512_mask_storeu_ps(ghs + e, m, _mm512_mul_ps(gy, sp.one_minus_s));
  }
}
#else
FK_COUPLING_F32(_avx512, FK_AVX512, sigmoid, false)  // never called: has_avx512() is false in such a build
#endif
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

// This thread's share [lo, hi) of n work items (schedule(static)'s split, made explicit): every pass gives a thread
// the same samples, and the backward walks its share in reverse. A backward right after the pass that produced its
// inputs (the forward's y and h, or reversible backprop's inverse) then starts on the data that pass touched last,
// still in this core's cache, instead of on the data a cyclic walk through more than the cache holds just evicted.
FK_INLINE void thread_share(int64_t n, int64_t& lo, int64_t& hi) {
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num(), q = n / nth, r = n % nth;
  lo = tid * q + std::min(tid, r);
  hi = lo + q + (tid < r ? 1 : 0);
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
  copy_passthrough(in, out, p);  // first: the transformed half is then what the pass touched last
  int64_t lo, hi;
  thread_share(p.B * nk, lo, hi);
  for (int64_t t = lo; t < hi; ++t) {
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
  }
  }
  if (p.affine && ld) {  // after the region, on one thread: B sums of nk numbers cost less than a barrier's wake-up
    for (int64_t n = 0; n < p.B; ++n) {
      T sum = 0;
      for (int64_t k = 0; k < nk; ++k) sum += ld_part[n * nk + k];
      ld[n] = sum;
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
  const int64_t blk = kCpuCouplingChunk, nblk = (E + blk - 1) / blk;  // fwd's split: a thread gets its samples back
#pragma omp parallel num_threads(threads_for(p.B * C * HW, p.nthreads, kGrainElements))
  {
  int64_t lo, hi;
  thread_share(p.B * nblk, lo, hi);
  for (int64_t t = hi - 1; t >= lo; --t) {  // in reverse: see thread_share
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
  copy_passthrough(dy, dx, p);  // last: it reads none of the data the pass before this one left in cache
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
