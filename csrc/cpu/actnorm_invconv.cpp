// CPU actnorm_invconv: the parameter algebra of ActNorm + invertible 1x1 conv (A = W diag(s), c = A b, the logdet and
// the parameter gradients) around channel_affine's kernels, in one call per pass: at Glow-step sizes the same
// algebra as a dozen torch ops cost the host more than the kernel itself. Contract in ../kernels.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/common.h"

namespace flowkern {
namespace cpu {
namespace {

// The affine map's parameters in one form for both parametrisations: s, W and log|det W| per pixel.
template <typename T>
struct Affine {
  std::vector<T> s, W;
  double ldw = 0;  // log|det W| per pixel
  // LU parametrisation: L (unit lower), U (upper, with its diagonal d = sign exp(log_s)) and P as row indices
  std::vector<T> L, U, d;
  std::vector<int64_t> perm;  // W[r] = (L U)[perm[r]]
};

// s, W and log|det W| from the params (see kernels.h); false if P is not a permutation matrix.
template <typename T>
bool affine_params(const ActNormInvConvParams& p, Affine<T>& a) {
  const int64_t C = p.C;
  a.s.resize(C);
  a.W.resize(C * C);
  if (p.lower == nullptr) {
    const T* s = static_cast<const T*>(p.s);
    const T* W = static_cast<const T*>(p.W);
    std::copy(s, s + C, a.s.begin());
    std::copy(W, W + C * C, a.W.begin());
    if (p.ldw != nullptr) a.ldw = static_cast<double>(*static_cast<const T*>(p.ldw));  // fwd only
    return true;
  }
  const T* log_scale = static_cast<const T*>(p.log_scale);
  const T* lower = static_cast<const T*>(p.lower);
  const T* upper = static_cast<const T*>(p.upper);
  const T* log_s = static_cast<const T*>(p.log_s);
  const T* sign = static_cast<const T*>(p.sign);
  const T* P = static_cast<const T*>(p.P);
  for (int64_t j = 0; j < C; ++j) a.s[j] = std::exp(log_scale[j]);
  a.perm.assign(C, -1);
  std::vector<bool> used(C, false);
  for (int64_t r = 0; r < C; ++r)
    for (int64_t m = 0; m < C; ++m) {
      const T v = P[r * C + m];
      if (v == T(0)) continue;
      if (v != T(1) || a.perm[r] >= 0 || used[m]) return false;
      a.perm[r] = m;
      used[m] = true;
    }
  for (int64_t r = 0; r < C; ++r)
    if (a.perm[r] < 0) return false;
  a.L.assign(C * C, T(0));
  a.U.assign(C * C, T(0));
  a.d.resize(C);
  for (int64_t i = 0; i < C; ++i) {
    for (int64_t k = 0; k < i; ++k) a.L[i * C + k] = lower[i * C + k];  // only the strict triangles are read
    a.L[i * C + i] = T(1);
    for (int64_t j = i + 1; j < C; ++j) a.U[i * C + j] = upper[i * C + j];
    a.d[i] = sign[i] * std::exp(log_s[i]);
    a.U[i * C + i] = a.d[i];
    a.ldw += static_cast<double>(log_s[i]);
  }
  for (int64_t r = 0; r < C; ++r) {  // W[r, j] = sum_{k <= min(m, j)} L[m, k] U[k, j], m = perm[r]
    const int64_t m = a.perm[r];
    T* w = &a.W[r * C];
    for (int64_t k = 0; k <= m; ++k) {
      const T l = a.L[m * C + k];
      for (int64_t j = k; j < C; ++j) w[j] += l * a.U[k * C + j];
    }
  }
  return true;
}

template <typename T>
int fwd(const ActNormInvConvParams& p) {
  const int64_t C = p.C;
  Affine<T> a;
  if (!affine_params(p, a)) return 2;
  const T* b = static_cast<const T*>(p.b);
  std::vector<T> A(C * C), c(C);
  double ld = 0;  // per pixel, summed in double: sum log|s| over up to a few hundred channels
  for (int64_t j = 0; j < C; ++j) ld += std::log(std::abs(static_cast<double>(a.s[j])));
  ld = static_cast<double>(p.HW) * (ld + a.ldw);
  for (int64_t i = 0; i < C; ++i) {
    T ci = 0;
    for (int64_t j = 0; j < C; ++j) {
      A[i * C + j] = a.W[i * C + j] * a.s[j];
      ci += A[i * C + j] * b[j];
    }
    c[i] = ci;
  }
  T* ldo = static_cast<T*>(p.ld);
  for (int64_t n = 0; n < p.B; ++n) ldo[n] = static_cast<T>(ld);
  ChannelAffineParams q;
  q.dtype = p.dtype;
  q.nthreads = p.nthreads;
  q.x = p.x;
  q.A = A.data();
  q.c = c.data();
  q.y = p.y;
  q.B = p.B;
  q.C = C;
  q.HW = p.HW;
  return channel_affine_fwd<Device::kCPU>(q);
}

// The LU factors' gradients from dW (W = P L U): M = P^T dW; d lower = strict lower part of M U^T; dU = L^T M:
// d upper = its strict upper part, d log_s = diag(dU) d + g (the logdet's sum log_s). Accumulated.
template <typename T>
void lu_backward(const ActNormInvConvParams& p, const Affine<T>& a, const std::vector<T>& dW, T g) {
  const int64_t C = p.C;
  std::vector<T> M(C * C);
  for (int64_t r = 0; r < C; ++r) std::copy(&dW[r * C], &dW[r * C] + C, &M[a.perm[r] * C]);
  T* dlower = static_cast<T*>(p.dlower);
  T* dupper = static_cast<T*>(p.dupper);
  T* dlog_s = static_cast<T*>(p.dlog_s);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t k = 0; k < i; ++k) {  // (M U^T)[i, k] = sum_{j >= k} M[i, j] U[k, j]
      T acc = 0;
      for (int64_t j = k; j < C; ++j) acc += M[i * C + j] * a.U[k * C + j];
      dlower[i * C + k] += acc;
    }
  std::vector<T> dU(C * C, T(0));
  for (int64_t i = 0; i < C; ++i)  // dU[k, j] = sum_{i >= k} L[i, k] M[i, j], rows in index order
    for (int64_t k = 0; k <= i; ++k) {
      const T l = a.L[i * C + k];
      for (int64_t j = k; j < C; ++j) dU[k * C + j] += l * M[i * C + j];
    }
  for (int64_t k = 0; k < C; ++k) {
    for (int64_t j = k + 1; j < C; ++j) dupper[k * C + j] += dU[k * C + j];
    dlog_s[k] += dU[k * C + k] * a.d[k] + g;
  }
}

template <typename T>
int bwd(const ActNormInvConvParams& p) {
  const int64_t C = p.C;
  Affine<T> a;
  if (!affine_params(p, a)) return 2;
  const std::vector<T>& s = a.s;
  const T* b = static_cast<const T*>(p.b);
  std::vector<T> A(C * C), dA(C * C, T(0)), dc(C, T(0));
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) A[i * C + j] = a.W[i * C + j] * s[j];
  if (p.dy != nullptr) {
    ChannelAffineParams q;
    q.dtype = p.dtype;
    q.nthreads = p.nthreads;
    q.x = p.x;
    q.dy = p.dy;
    q.A = A.data();
    q.dx = p.dx;
    q.dA = dA.data();
    q.dc = dc.data();
    q.B = p.B;
    q.C = C;
    q.HW = p.HW;
    q.chunk = p.chunk;
    if (const int err = channel_affine_bwd<Device::kCPU>(q)) return err;
  }
  T g = 0;
  if (p.dld != nullptr) {
    const T* dld = static_cast<const T*>(p.dld);
    for (int64_t n = 0; n < p.B; ++n) g += dld[n];
  }
  g *= static_cast<T>(p.HW);
  const bool lu = p.lower != nullptr;
  std::vector<T> dW(C * C), dsum(C, T(0)), dbsum(C, T(0));
  for (int64_t i = 0; i < C; ++i)  // row by row: every sum runs in index order
    for (int64_t j = 0; j < C; ++j) {
      const T d = dA[i * C + j] + dc[i] * b[j];  // c = A b adds dc b^T
      dsum[j] += d * a.W[i * C + j];
      dbsum[j] += A[i * C + j] * dc[i];
      dW[i * C + j] = d * s[j];
    }
  T* db = static_cast<T*>(p.db);
  for (int64_t j = 0; j < C; ++j) db[j] += dbsum[j];
  if (lu) {  // s = exp(log_scale): d log_scale = ds s, and the logdet's log s adds g
    T* dlog_scale = static_cast<T*>(p.dlog_scale);
    for (int64_t j = 0; j < C; ++j) dlog_scale[j] += dsum[j] * s[j] + g;
    lu_backward(p, a, dW, g);
    return 0;
  }
  T* ds = static_cast<T*>(p.ds);
  T* dWo = static_cast<T*>(p.dW);
  for (int64_t j = 0; j < C; ++j) ds[j] += dsum[j] + g / s[j];  // the logdet has log|s|
  for (int64_t i = 0; i < C * C; ++i) dWo[i] += dW[i];
  *static_cast<T*>(p.dldw) += g;
  return 0;
}

}  // namespace
}  // namespace cpu

int actnorm_invconv_fwd_cpu(const ActNormInvConvParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::fwd<decltype(t)>(p); });
}

int actnorm_invconv_bwd_cpu(const ActNormInvConvParams& p) {
  if (p.chunk <= 0) return 2;
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::bwd<decltype(t)>(p); });
}

}  // namespace flowkern
