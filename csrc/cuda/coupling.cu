// coupling: the elementwise tail of Glow's affine/additive coupling layer. See ../kernels.h for the contract.
//
// Per sample n the transformed block x_b = x[n, Ca:] is contiguous (Cb*HW elements) and so are h_t = h[n, :Cb]
// and h_s = h[n, Cb:], so every kernel runs over a flat element index e in [0, Cb*HW). The passthrough
// channels [:, :Ca] are a strided copy (cudaMemcpy2DAsync), not a kernel.
// fwd/inv: grid (nk, B), block (k, n) handles elements [k*chunk, min((k+1)*chunk, Cb*HW)) of sample n and
// writes that chunk's sum of log s with a fixed-order block reduction: deterministic, no atomics.
#include <algorithm>
#include <climits>

#include "cuda/common.cuh"
#include "cuda/cuda_ops.h"

namespace flowkern {
namespace cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;                                   // elements in flight per thread (loads first)
constexpr int64_t kAdditiveChunk = kThreads * kUnroll * 4;   // additive has no log-det: the chunk is ours
constexpr int64_t kMaxBlocksPerSample = 4096;                // coupling_bwd grid-stride cap
constexpr int64_t kMaxGridY = 65535;

// s = sigmoid(u), 1 - s and log s, without overflow or cancellation: z = exp(-|u|) lies in (0, 1].
template <typename Acc>
__device__ __forceinline__ void sigmoid_parts(Acc u, Acc& s, Acc& one_minus_s, Acc& log_s, Acc& z) {
  z = fk_exp(u < Acc(0) ? u : -u);
  const Acc r = Acc(1) / (Acc(1) + z);
  s = u >= Acc(0) ? r : z * r;
  one_minus_s = u >= Acc(0) ? z * r : r;
  log_s = (u < Acc(0) ? u : Acc(0)) - fk_log1p(z);
}

// Forward (y_b = (x_b + h_t) * s) or inverse (x_b = y_b * (1 + exp(-u)) - h_t); additive: x_b +/- h.
template <typename T, bool kAffine, bool kInverse>
__global__ void __launch_bounds__(kThreads)
coupling_fwd_kernel(const T* __restrict__ in, const T* __restrict__ h, T* __restrict__ out,
                    acc_t<T>* __restrict__ ld_part, int64_t C, int64_t Ca, int64_t HW, int64_t chunk, int64_t nk,
                    int64_t B) {
  using Acc = acc_t<T>;
  const int64_t Cb = C - Ca, nb = Cb * HW;
  const int64_t hc = kAffine ? 2 * Cb : Cb;  // channels of h
  const int64_t k = blockIdx.x;
  const int64_t beg = k * chunk, end = min(beg + chunk, nb);
  for (int64_t n = blockIdx.y; n < B; n += gridDim.y) {
    const T* in_b = in + n * C * HW + Ca * HW;
    T* out_b = out + n * C * HW + Ca * HW;
    const T* ht = h + n * hc * HW;  // additive: h itself
    const T* hs = ht + nb;          // affine only
    Acc log_sum = Acc(0);
    for (int64_t e0 = beg + threadIdx.x; e0 < end; e0 += kThreads * kUnroll) {
      Acc v[kUnroll], t[kUnroll], u[kUnroll];
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        const int64_t e = e0 + r * kThreads;
        if (e < end) {
          v[r] = to_acc(in_b[e]);
          t[r] = to_acc(ht[e]);
          if constexpr (kAffine) u[r] = to_acc(hs[e]) + Acc(2);
        }
      }
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        const int64_t e = e0 + r * kThreads;
        if (e >= end) break;
        Acc o;
        if constexpr (kAffine) {
          Acc s, one_minus_s, log_s, z;
          sigmoid_parts(u[r], s, one_minus_s, log_s, z);
          // inverse: y_b / s written as y_b * (1 + exp(-u)), finite until exp(-u) itself overflows
          o = kInverse ? v[r] * (Acc(1) + fk_exp(-u[r])) - t[r] : (v[r] + t[r]) * s;
          log_sum += log_s;
        } else {
          o = kInverse ? v[r] - t[r] : v[r] + t[r];
        }
        out_b[e] = from_acc<T>(o);
      }
    }
    if constexpr (kAffine) {
      const Acc total = block_sum(log_sum);
      if (threadIdx.x == 0) ld_part[n * nk + k] = total;
    }
  }
}

// Affine backward, transformed channels only: dx_b = dy_b * s, dh_t = dy_b * s, dh_s = (dy_b*y_b + dld) (1-s).
// Grid (min(blocks, cap), min(B, 65535)), grid-stride in both dimensions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
coupling_bwd_kernel(const T* __restrict__ y, const T* __restrict__ h, const T* __restrict__ dy,
                    const acc_t<T>* __restrict__ dld, T* __restrict__ dx, T* __restrict__ dh, int64_t C, int64_t Ca,
                    int64_t HW, int64_t B) {
  using Acc = acc_t<T>;
  const int64_t Cb = C - Ca, nb = Cb * HW;
  for (int64_t n = blockIdx.y; n < B; n += gridDim.y) {
    const int64_t off_b = n * C * HW + Ca * HW;
    const T* y_b = y + off_b;
    const T* dy_b = dy + off_b;
    T* dx_b = dx + off_b;
    const T* hs = h + n * 2 * nb + nb;
    T* dht = dh + n * 2 * nb;
    T* dhs = dht + nb;
    const Acc g = dld != nullptr ? dld[n] : Acc(0);
    for (int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x; e < nb; e += (int64_t)gridDim.x * kThreads) {
      const Acc d = to_acc(dy_b[e]), yv = to_acc(y_b[e]);
      Acc s, one_minus_s, log_s, z;
      sigmoid_parts(to_acc(hs[e]) + Acc(2), s, one_minus_s, log_s, z);
      const T ds = from_acc<T>(d * s);
      dx_b[e] = ds;
      dht[e] = ds;
      dhs[e] = from_acc<T>((d * yv + g) * one_minus_s);
    }
  }
}

template <typename T, bool kInverse>
int launch_fwd(const void* in, const void* h, void* out, void* ld_part, int64_t B, int64_t C, int64_t Ca,
               int64_t HW, bool affine, int64_t chunk, cudaStream_t stream) {
  using Acc = acc_t<T>;
  if (B == 0 || HW == 0) return (int)cudaSuccess;
  cudaError_t err = copy_rows(out, C * HW, in, C * HW, Ca * HW, B, sizeof(T), stream);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return (int)err;
  }
  const int64_t nb = (C - Ca) * HW;
  if (nb == 0) return (int)cudaGetLastError();  // Ca == C: no transformed channels, ld_part has no columns
  if (!affine) chunk = kAdditiveChunk;
  const int64_t nk = ceil_div(nb, chunk);
  if (nk > INT_MAX) return (int)cudaErrorInvalidValue;
  const dim3 grid((unsigned)nk, (unsigned)std::min<int64_t>(B, kMaxGridY));
  const T* in_t = static_cast<const T*>(in);
  const T* h_t = static_cast<const T*>(h);
  T* out_t = static_cast<T*>(out);
  Acc* ld = static_cast<Acc*>(ld_part);
  if (affine)
    coupling_fwd_kernel<T, true, kInverse><<<grid, kThreads, 0, stream>>>(in_t, h_t, out_t, ld, C, Ca, HW, chunk,
                                                                          nk, B);
  else
    coupling_fwd_kernel<T, false, kInverse><<<grid, kThreads, 0, stream>>>(in_t, h_t, out_t, nullptr, C, Ca, HW,
                                                                           chunk, nk, B);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_bwd(const void* y, const void* h, const void* dy, const void* dld, void* dx, void* dh, int64_t B,
               int64_t C, int64_t Ca, int64_t HW, bool affine, cudaStream_t stream) {
  using Acc = acc_t<T>;
  if (B == 0 || HW == 0) return (int)cudaSuccess;
  const int64_t Cb = C - Ca, nb = Cb * HW;
  cudaError_t err;
  if (affine) {
    err = copy_rows(dx, C * HW, dy, C * HW, Ca * HW, B, sizeof(T), stream);  // dx[:, :Ca] = dy[:, :Ca]
  } else {
    // Additive: dx = dy everywhere and dh = dy[:, Ca:]; both are plain copies.
    err = copy_flat(dx, dy, B * C * HW, sizeof(T), stream);
    if (err == cudaSuccess)
      err = copy_rows(dh, nb, static_cast<const T*>(dy) + Ca * HW, C * HW, nb, B, sizeof(T), stream);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    return (int)err;
  }
  if (!affine || nb == 0) return (int)cudaGetLastError();
  const dim3 grid((unsigned)std::min<int64_t>(ceil_div(nb, kThreads), kMaxBlocksPerSample),
                  (unsigned)std::min<int64_t>(B, kMaxGridY));
  coupling_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(y), static_cast<const T*>(h), static_cast<const T*>(dy), static_cast<const Acc*>(dld),
      static_cast<T*>(dx), static_cast<T*>(dh), C, Ca, HW, B);
  return (int)cudaGetLastError();
}

// Shared argument checks; chunk only matters for the affine log-det partials.
inline bool valid_sizes(int64_t B, int64_t C, int64_t Ca, int64_t HW) {
  return B >= 0 && C >= 1 && Ca >= 0 && Ca <= C && HW >= 0;
}

}  // namespace

int coupling_fwd(int dtype, const void* x, const void* h, void* y, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, uintptr_t stream) {
  if (!valid_sizes(B, C, Ca, HW) || (affine && chunk < 1)) return (int)cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_fwd<T, false>(x, h, y, ld_part, B, C, Ca, HW, affine, chunk, as_stream(stream));
  });
}

int coupling_inv(int dtype, const void* y, const void* h, void* x, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, uintptr_t stream) {
  if (!valid_sizes(B, C, Ca, HW) || (affine && chunk < 1)) return (int)cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_fwd<T, true>(y, h, x, ld_part, B, C, Ca, HW, affine, chunk, as_stream(stream));
  });
}

int coupling_bwd(int dtype, const void* y, const void* h, const void* dy, const void* dld, void* dx, void* dh,
                 int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine, uintptr_t stream) {
  if (!valid_sizes(B, C, Ca, HW)) return (int)cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_bwd<T>(y, h, dy, dld, dx, dh, B, C, Ca, HW, affine, as_stream(stream));
  });
}

}  // namespace cuda
}  // namespace flowkern
