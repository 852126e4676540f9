// CPU actnorm_invconv: the parameter algebra of ActNorm + invertible 1x1 conv (A = W diag(s), c = A b, the logdet and
// the parameter gradients) around channel_affine's kernels, in one call per pass: at Glow-step sizes the same
// algebra as a dozen torch ops cost the host more than the kernel itself. Contract in ../kernels.h.
#include <cmath>
#include <vector>

#include "cpu/common.h"

namespace flowkern {
namespace cpu {
namespace {

template <typename T>
int fwd(const ActNormInvConvParams& p) {
  const int64_t C = p.C;
  const T* s = static_cast<const T*>(p.s);
  const T* b = static_cast<const T*>(p.b);
  const T* W = static_cast<const T*>(p.W);
  std::vector<T> A(C * C), c(C);
  double ld = 0;  // per pixel, summed in double: sum log|s| over up to a few hundred channels
  for (int64_t j = 0; j < C; ++j) ld += std::log(std::abs(static_cast<double>(s[j])));
  ld = static_cast<double>(p.HW) * (ld + static_cast<double>(*static_cast<const T*>(p.ldw)));
  for (int64_t i = 0; i < C; ++i) {
    T ci = 0;
    for (int64_t j = 0; j < C; ++j) {
      A[i * C + j] = W[i * C + j] * s[j];
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

template <typename T>
int bwd(const ActNormInvConvParams& p) {
  const int64_t C = p.C;
  const T* s = static_cast<const T*>(p.s);
  const T* b = static_cast<const T*>(p.b);
  const T* W = static_cast<const T*>(p.W);
  std::vector<T> A(C * C), dA(C * C, T(0)), dc(C, T(0));
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) A[i * C + j] = W[i * C + j] * s[j];
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
  T* ds = static_cast<T*>(p.ds);
  T* db = static_cast<T*>(p.db);
  T* dW = static_cast<T*>(p.dW);
  std::vector<T> dsum(C, T(0)), dbsum(C, T(0));
  for (int64_t i = 0; i < C; ++i)  // row by row: every sum runs in index order
    for (int64_t j = 0; j < C; ++j) {
      const T d = dA[i * C + j] + dc[i] * b[j];  // c = A b adds dc b^T
      dsum[j] += d * W[i * C + j];
      dbsum[j] += A[i * C + j] * dc[i];
      dW[i * C + j] += d * s[j];
    }
  for (int64_t j = 0; j < C; ++j) {
    ds[j] += dsum[j] + g / s[j];  // the logdet has log|s|
    db[j] += dbsum[j];
  }
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
