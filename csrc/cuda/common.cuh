// Helpers shared by the CUDA kernels: element/accumulator types, conversions, the coupling's sigmoid math, dtype
// dispatch, reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace flowkern {
namespace cuda {

// Half inputs accumulate in float; double stays double (kernels.h).
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Float/double overloads so templated math picks the right precision.
__device__ __forceinline__ float fk_exp(float v) { return expf(v); }
__device__ __forceinline__ double fk_exp(double v) { return exp(v); }
__device__ __forceinline__ float fk_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double fk_log1p(double v) { return log1p(v); }

// s = sigmoid(u) with 1 - s, 1 / s and log s, for the coupling's forward, inverse and backward alike. With
// z = exp(-|u|) in (0, 1]: s = 1/(1+z) (u >= 0) or z/(1+z) (u < 0), 1 - s is the other one (no cancellation),
// log s = min(u, 0) - log1p(z); 1/s stays finite until exp(-u) itself overflows.
template <typename Acc>
struct SigmoidParts {
  Acc s, one_minus_s, inv_s, log_s;
};
template <typename Acc>
__device__ __forceinline__ SigmoidParts<Acc> sigmoid_parts(Acc u) {
  const bool neg = u < Acc(0);
  const Acc z = fk_exp(neg ? u : -u);
  const Acc r = Acc(1) / (Acc(1) + z);
  return {neg ? z * r : r, neg ? r : z * r, neg ? (Acc(1) + z) / z : Acc(1) + z, (neg ? u : Acc(0)) - fk_log1p(z)};
}

// The coupling's scale s from the network's h_s, with 1 / s, log s and d(log s)/d(h_s). kExp = false (Glow):
// s = sigmoid(h_s + 2). kExp = true: h_s is the log-scale itself (e.g. a tanh-clamped one), s = exp(h_s).
template <typename Acc>
struct ScaleParts {
  Acc s, inv_s, log_s, dlog_s;
};
template <bool kExp, typename Acc>
__device__ __forceinline__ ScaleParts<Acc> scale_parts(Acc h) {
  if constexpr (kExp) {
    // from e = exp(-|h|) as the sigmoid does: exp of a free sign makes the unrolled fp64 forward spill on sm_90
    const bool neg = h < Acc(0);
    const Acc e = fk_exp(neg ? h : -h);
    return {neg ? e : Acc(1) / e, neg ? Acc(1) / e : e, h, Acc(1)};
  } else {
    const SigmoidParts<Acc> sp = sigmoid_parts(h + Acc(2));
    return {sp.s, sp.inv_s, sp.log_s, sp.one_minus_s};
  }
}

// One dynamic shared-memory buffer for all kernels (declaring it with different types per template would clash).
template <typename Acc> __device__ __forceinline__ Acc* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char flowkern_smem[];
  return reinterpret_cast<Acc*>(flowkern_smem);
}

// Deterministic block sum (fixed shuffle tree, then warp 0 over the warp sums). Every thread must call it;
// the result is valid in thread 0. Ends with a barrier so it can be called again right away.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v) {
  __shared__ Acc scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? scratch[lane] : Acc(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();
  return v;
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Opt in to more than 48 KiB of dynamic shared memory. Done on every call: it is cheap and per device.
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (err != cudaSuccess) cudaGetLastError();  // not sticky: clear it, the caller reports it
  return err;
}

// Calls f(Tag<T>{}) with the element type of `dtype`.
template <typename T> struct Tag { using type = T; };
template <typename F>
inline int dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kF32: return f(Tag<float>{});
    case kF64: return f(Tag<double>{});
    case kF16: return f(Tag<__half>{});
    case kBF16: return f(Tag<__nv_bfloat16>{});
    default: return (int)cudaErrorInvalidValue;
  }
}

// Device-to-device copy of `count` contiguous elements; no-op when empty or in place.
inline cudaError_t copy_flat(void* dst, const void* src, int64_t count, size_t elem, cudaStream_t stream) {
  if (count <= 0 || dst == src) return cudaSuccess;
  return cudaMemcpyAsync(dst, src, (size_t)count * elem, cudaMemcpyDeviceToDevice, stream);
}

// Device-to-device strided copy of `rows` rows of `width` elements (passthrough channels); no-op when empty.
inline cudaError_t copy_rows(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t width,
                             int64_t rows, size_t elem, cudaStream_t stream) {
  if (width <= 0 || rows <= 0 || dst == src) return cudaSuccess;
  return cudaMemcpy2DAsync(dst, (size_t)dst_pitch * elem, src, (size_t)src_pitch * elem, (size_t)width * elem,
                           (size_t)rows, cudaMemcpyDeviceToDevice, stream);
}

}  // namespace cuda
}  // namespace flowkern
