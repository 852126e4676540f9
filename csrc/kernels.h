// The kernel contract shared by every backend (CPU here, CUDA in cuda/, Triton in flowkern/ops/triton/).
// All tensors are NCHW-contiguous; HW = H*W; pointers are raw, sizes are int64. The Python side
// (flowkern/ops/) checks device, dtype, contiguity and shapes before any pointer gets here.
//
// dtype codes: 0 = float32, 1 = float64, 2 = float16, 3 = bfloat16.
// x/y/h/dy/dx/dh have the code's dtype. Matrices, bias, partial sums and dld are float64 for code 1 and
// float32 otherwise (half inputs accumulate in float32).
//
// channel_affine  (ActNorm folded into the 1x1 conv: A = W diag(s), c = A b; inverse: A^-1, -b)
//   fwd: y[n,i,p]  = c[i] + sum_j A[i,j] x[n,j,p]            (c may be null: no bias)
//   bwd: dx[n,j,p] = sum_i A[i,j] dy[n,i,p]
//        dA_part[k,i,j] = sum_{p in chunk k} dy[n,i,p] x[n,j,p],  dc_part[k,i] = sum_{p in chunk k} dy[n,i,p]
//        chunk k = (n, q): sample n, pixels [q*chunk, min((q+1)*chunk, HW)); k = n*nq + q, nq = ceil(HW/chunk).
//        The caller sums the partials over k: deterministic, no atomics.
//
// coupling  (Glow affine coupling tail; Ca = passthrough channels, Cb = C - Ca transformed channels)
//   h has 2*Cb channels when affine (shift h_t = h[:, :Cb], pre-scale h_s = h[:, Cb:]), Cb when additive.
//   s = sigmoid(h_s + 2).
//   fwd: y[:, :Ca] = x[:, :Ca];  y_b = (x_b + h_t) * s   (additive: x_b + h)
//        ld_part[n,k] = sum of log s over elements [k*chunk, (k+1)*chunk) of sample n's Cb*HW block,
//        nk = ceil(Cb*HW/chunk). The caller sums over k. Additive: ld_part is not written (may be null).
//   inv: x[:, :Ca] = y[:, :Ca];  x_b = y_b / s - h_t      (additive: y_b - h); ld_part as in fwd (+log s).
//   bwd: given the forward's output y, h, upstream dy and dld (grad of the forward logdet, shape B, may be null):
//        dx[:, :Ca] = dy[:, :Ca];  dx_b = dy_b * s;  dh_t = dy_b * s;  dh_s = (dy_b * y_b + dld[n]) * (1 - s)
//        additive: dx_b = dy_b, dh = dy_b.
#pragma once
#include <cstdint>

namespace flowkern {
enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
}  // namespace flowkern
