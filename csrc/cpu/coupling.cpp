// CPU coupling tail: y_b = (x_b + h_t) * sigmoid(h_s + 2), per-sample sum of log-scale; inverse; backward.
// Contract in ../kernels.h. The logdet partials use fixed chunks, so results never depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu_ops.h"
#include "kernels.h"
#include "simd.h"

namespace flowkern {
namespace cpu {
namespace {

// Copy the passthrough channels [0, Ca) of each sample: out[n, :Ca] = in[n, :Ca].
template <typename T>
void copy_passthrough(const T* in, T* out, int64_t B, int64_t C, int64_t Ca, int64_t HW, int nt) {
  if (Ca == 0) return;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < B; ++n) std::memcpy(out + n * C * HW, in + n * C * HW, Ca * HW * sizeof(T));
}

// Affine forward (INVERSE = false): o = (a + ht) * s;  inverse: o = a / s - ht.  Returns sum(log s).
// With e = exp(-|u|) in (0, 1]:  s = 1/(1+e) (u >= 0) or e/(1+e) (u < 0);  log s = min(u, 0) - log1p(e).
// Written with selects only, so the loop vectorises; no exp of a positive argument, so nothing overflows.
template <typename T, bool INVERSE>
FK_INLINE T affine_chunk(const T* a, const T* ht, const T* hs, T* o, int64_t n) {
  T ld = 0;
#pragma omp simd reduction(+ : ld)
  for (int64_t e = 0; e < n; ++e) {
    const T u = hs[e] + T(2);
    const T au = u < T(0) ? -u : u;
    const T ex = exp_nonpos(-au);
    const T num = u < T(0) ? ex : T(1);  // s = num / (1 + ex)
    o[e] = INVERSE ? a[e] * (T(1) + ex) / num - ht[e] : (a[e] + ht[e]) * num / (T(1) + ex);
    ld += (u < T(0) ? u : T(0)) - log1p_unit(ex);
  }
  return ld;
}

// Backward over n elements: dx_b = dh_t = g s, dh_s = (g y + gl)(1 - s).
template <typename T>
FK_INLINE void affine_bwd_chunk(const T* yb, const T* hs, const T* g, T gl, T* gx, T* ght, T* ghs, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) {
    const T u = hs[e] + T(2);
    const T neg = u < T(0) ? T(1) : T(0);
    const T ex = exp_nonpos(neg > T(0) ? u : -u);
    const T inv = T(1) / (T(1) + ex);
    const T s = (neg * ex + (T(1) - neg)) * inv;
    const T one_minus_s = (neg + (T(1) - neg) * ex) * inv;  // exact complement, no cancellation
    gx[e] = g[e] * s;
    ght[e] = g[e] * s;
    ghs[e] = (g[e] * yb[e] + gl) * one_minus_s;
  }
}

// float instances get AVX2 clones; double (tests) stays plain
FK_CLONES float fwd_chunk_f32(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  return affine_chunk<float, false>(a, ht, hs, o, n);
}
FK_CLONES float inv_chunk_f32(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  return affine_chunk<float, true>(a, ht, hs, o, n);
}
FK_CLONES void bwd_chunk_f32(const float* yb, const float* hs, const float* g, float gl, float* gx, float* ght,
                             float* ghs, int64_t n) {
  affine_bwd_chunk<float>(yb, hs, g, gl, gx, ght, ghs, n);
}
template <bool INVERSE>
float chunk_any(const float* a, const float* ht, const float* hs, float* o, int64_t n) {
  return INVERSE ? inv_chunk_f32(a, ht, hs, o, n) : fwd_chunk_f32(a, ht, hs, o, n);
}
template <bool INVERSE>
double chunk_any(const double* a, const double* ht, const double* hs, double* o, int64_t n) {
  return affine_chunk<double, INVERSE>(a, ht, hs, o, n);
}
void bwd_any(const float* yb, const float* hs, const float* g, float gl, float* gx, float* ght, float* ghs, int64_t n) {
  bwd_chunk_f32(yb, hs, g, gl, gx, ght, ghs, n);
}
void bwd_any(const double* yb, const double* hs, const double* g, double gl, double* gx, double* ght, double* ghs,
             int64_t n) {
  affine_bwd_chunk<double>(yb, hs, g, gl, gx, ght, ghs, n);
}

// INVERSE = false: out_b = (in_b + h_t) * s;  true: out_b = in_b / s - h_t.  ld_part[n, k] = sum log s.
template <typename T, bool INVERSE>
void fwd_or_inv(const T* in, const T* h, T* out, T* ld_part, int64_t B, int64_t C, int64_t Ca, int64_t HW,
                bool affine, int64_t chunk, int nt) {
  copy_passthrough(in, out, B, C, Ca, HW, nt);
  const int64_t Cb = C - Ca, E = Cb * HW, nk = (E + chunk - 1) / chunk;
  const int64_t Hc = affine ? 2 * Cb : Cb;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < B * nk; ++t) {
    const int64_t n = t / nk, k = t % nk, e0 = k * chunk, e1 = std::min(e0 + chunk, E);
    const T* a = in + n * C * HW + Ca * HW + e0;
    T* o = out + n * C * HW + Ca * HW + e0;
    const T* ht = h + n * Hc * HW + e0;
    if (affine) {
      ld_part[n * nk + k] = chunk_any<INVERSE>(a, ht, ht + E, o, e1 - e0);
    } else {
#pragma omp simd
      for (int64_t e = 0; e < e1 - e0; ++e) o[e] = INVERSE ? a[e] - ht[e] : a[e] + ht[e];
    }
  }
}

template <typename T>
void bwd(const T* y, const T* h, const T* dy, const T* dld, T* dx, T* dh, int64_t B, int64_t C, int64_t Ca,
         int64_t HW, bool affine, int nt) {
  copy_passthrough(dy, dx, B, C, Ca, HW, nt);
  const int64_t Cb = C - Ca, E = Cb * HW;
  const int64_t Hc = affine ? 2 * Cb : Cb;
  const int64_t blk = 4096, nblk = (E + blk - 1) / blk;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < B * nblk; ++t) {
    const int64_t n = t / nblk, e0 = (t % nblk) * blk, e1 = std::min(e0 + blk, E);
    const int64_t off = n * C * HW + Ca * HW + e0;
    T* ght = dh + n * Hc * HW + e0;
    if (affine) {
      bwd_any(y + off, h + n * Hc * HW + E + e0, dy + off, dld ? dld[n] : T(0), dx + off, ght, ght + E, e1 - e0);
    } else {
      std::memcpy(dx + off, dy + off, (e1 - e0) * sizeof(T));
      std::memcpy(ght, dy + off, (e1 - e0) * sizeof(T));
    }
  }
}

}  // namespace

#define FK_DISPATCH(CALL_F32, CALL_F64) \
  if (dtype == kF32) {                  \
    CALL_F32;                           \
  } else if (dtype == kF64) {           \
    CALL_F64;                           \
  } else {                              \
    return 1;                           \
  }                                     \
  return 0;

int coupling_fwd(int dtype, const void* x, const void* h, void* y, void* ld, int64_t B, int64_t C, int64_t Ca,
                 int64_t HW, bool affine, int64_t chunk, int nt) {
  if (chunk <= 0) return 2;
  FK_DISPATCH((fwd_or_inv<float, false>((const float*)x, (const float*)h, (float*)y, (float*)ld, B, C, Ca, HW,
                                        affine, chunk, nt)),
              (fwd_or_inv<double, false>((const double*)x, (const double*)h, (double*)y, (double*)ld, B, C, Ca, HW,
                                         affine, chunk, nt)))
}

int coupling_inv(int dtype, const void* y, const void* h, void* x, void* ld, int64_t B, int64_t C, int64_t Ca,
                 int64_t HW, bool affine, int64_t chunk, int nt) {
  if (chunk <= 0) return 2;
  FK_DISPATCH((fwd_or_inv<float, true>((const float*)y, (const float*)h, (float*)x, (float*)ld, B, C, Ca, HW,
                                       affine, chunk, nt)),
              (fwd_or_inv<double, true>((const double*)y, (const double*)h, (double*)x, (double*)ld, B, C, Ca, HW,
                                        affine, chunk, nt)))
}

int coupling_bwd(int dtype, const void* y, const void* h, const void* dy, const void* dld, void* dx, void* dh,
                 int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine, int nt) {
  FK_DISPATCH((bwd<float>((const float*)y, (const float*)h, (const float*)dy, (const float*)dld, (float*)dx,
                          (float*)dh, B, C, Ca, HW, affine, nt)),
              (bwd<double>((const double*)y, (const double*)h, (const double*)dy, (const double*)dld, (double*)dx,
                           (double*)dh, B, C, Ca, HW, affine, nt)))
}

}  // namespace cpu
}  // namespace flowkern
