// The kernel contract shared by every backend: CPU (cpu/<op>.cpp), CUDA (cuda/<op>.cu) and Triton
// (flowkern/ops/triton/<op>.py). One params struct per op carries every argument of that op's kernels; each kernel
// reads its inputs from it and fills outputs the caller allocated. The Python side (flowkern/ops/<op>.py) checks
// device, dtype, contiguity and shapes, allocates every output, and fills the struct before any pointer gets here.
//
// Tensors are NCHW-contiguous; HW = H*W; sizes are int64. Data tensors (x, y, h, dy, dx, dh) have `dtype`.
// Matrices, biases, partial sums and dld are float64 when dtype is float64 and float32 otherwise (half types
// accumulate in float32). Reductions go through fixed per-chunk partials (chunks a function of the shape only) that
// the kernel then sums in a fixed order: no atomics, bitwise-reproducible results, independent of thread count,
// timing and GPU model.
#pragma once
#include <cstdint>

namespace flowkern {

enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
enum class Device { kCPU, kCUDA };

// Where and how a kernel runs; the CPU kernels read nthreads, the CUDA kernels stream.
struct LaunchParams {
  int dtype = kF32;
  int nthreads = 1;      // OpenMP threads (the caller passes torch.get_num_threads())
  uintptr_t stream = 0;  // the caller's cudaStream_t (torch.cuda.current_stream().cuda_stream)
};

// channel_affine: ActNorm folded into the invertible 1x1 conv, A = W diag(s), c = A b (inverse: A^-1, -b).
//   fwd: y[n,i,p]  = c[i] + sum_j A[i,j] x[n,j,p]            (c may be null: no bias)
//   bwd: dx[n,j,p] = sum_i A[i,j] dy[n,i,p]
//        dA[i,j] += sum_{n,p} dy[n,i,p] x[n,j,p],  dc[i] += sum_{n,p} dy[n,i,p]   (accumulated: the caller zeroes
//        them, and a batch split into several launches adds up)
//        Two stages, each in a fixed order: partial sums over pixel ranges, then their sum in index order.
//        CPU: chunk k = (n, q), sample n, pixels [q*chunk, min((q+1)*chunk, HW)), partials in its own memory.
//        GPU: `parts` partial rows in the caller's scratch dA_part/dc_part; CUDA block g owns the pixel tiles
//        g, g + parts, ...; Triton row k = chunk (n, q) as on the CPU (parts = B * nq).
struct ChannelAffineParams : LaunchParams {
  const void* x = nullptr;   // (B, C, HW)
  const void* A = nullptr;   // (C, C)
  const void* c = nullptr;   // (C,) or null                              fwd
  void* y = nullptr;         // (B, C, HW) out                            fwd
  const void* dy = nullptr;  // (B, C, HW)                                bwd
  void* dx = nullptr;        // (B, C, HW) out                            bwd
  void* dA = nullptr;        // (C, C) accumulated                        bwd
  void* dc = nullptr;        // (C,) accumulated                          bwd
  void* dA_part = nullptr;   // (parts, C, C) scratch, GPU                bwd
  void* dc_part = nullptr;   // (parts, C) scratch, GPU                   bwd
  int64_t B = 0, C = 0, HW = 0;
  int64_t chunk = 0;         // pixels per partial (CPU, Triton)          bwd
  int64_t parts = 0;         // partial rows in the scratch (GPU)         bwd
};

// affine_coupling: the Glow coupling's elementwise tail. Ca = passthrough channels, Cb = C - Ca transformed.
//   h has 2*Cb channels when affine (shift h_t = h[:, :Cb], pre-scale h_s = h[:, Cb:]), Cb when additive (h_t only).
//   s = sigmoid(h_s + 2) (Glow), or with exp_scale s = exp(h_s): h_s is then the log-scale itself.
//   fwd: y[:, :Ca] = x[:, :Ca];  y_b = (x_b + h_t) * s   (additive: x_b + h_t)
//        ld_part[n,k] = sum of log s over elements [k*chunk, (k+1)*chunk) of sample n's Cb*HW block,
//        nk = ceil(Cb*HW/chunk). Additive: ld_part is not written (may be null).
//        CPU only: with ld set, ld[n] = the sum of sample n's partials in the order k = 0 .. nk-1 (ld_part may then
//        be null: the kernel keeps the partials itself), so a call needs no reduction op after it.
//   inv: x[:, :Ca] = y[:, :Ca];  x_b = y_b / s - h_t      (additive: y_b - h_t); ld_part as in fwd (+log s).
//   bwd: from the forward's output y, h, upstream dy and dld (grad of the forward logdet, (B,), may be null):
//        dx[:, :Ca] = dy[:, :Ca];  dx_b = dh_t = dy_b * s;  dh_s = (dy_b * y_b + dld[n]) * d(log s)/d(h_s),
//        that is (1 - s) for the sigmoid and 1 for exp_scale.
//        additive: dx_b = dh_t = dy_b.
struct AffineCouplingParams : LaunchParams {
  void* x = nullptr;         // (B, C, HW): read by fwd, written by inv
  void* y = nullptr;         // (B, C, HW): written by fwd, read by inv and bwd
  const void* h = nullptr;   // (B, 2*Cb or Cb, HW)
  void* ld_part = nullptr;   // (B, nk) out, affine fwd/inv
  void* ld = nullptr;        // (B,) out, affine fwd/inv, CPU only (or null)
  const void* dy = nullptr;  // (B, C, HW)                                bwd
  const void* dld = nullptr; // (B,) or null                              bwd
  void* dx = nullptr;        // (B, C, HW) out                            bwd
  void* dh = nullptr;        // like h, out                               bwd
  int64_t B = 0, C = 0, Ca = 0, HW = 0;
  int64_t chunk = 0;         // elements per logdet partial               fwd/inv (affine)
  bool affine = true;
  bool exp_scale = false;    // affine: s = exp(h_s), h_s the log-scale, instead of sigmoid(h_s + 2)
};

// actnorm_invconv (CPU): ActNorm then the invertible 1x1 conv, y = W diag(s) (x + b) per pixel, with its parameter
// algebra in the kernel (A = W diag(s), c = A b), so one call does a whole pass: the GPU backends run channel_affine's
// kernels with that algebra in torch ops instead. s, b, W, ldw, ld and the parameter gradients are in the
// accumulation type (float64 for float64 data, else float32).
//   fwd: y = A x + c;  ld[n] = HW * (sum_j log|s[j]| + ldw[0])
//   bwd (from the input x): dx = A^T dy (dy may be null: dx is not written, dA = dc = 0); dA = sum dy x^T + dc b^T,
//        dc = sum dy, g = HW * sum_n dld[n] (dld may be null: g = 0);
//        ds[j] += sum_i dA[i,j] W[i,j] + g / s[j];  db += A^T dc;  dW += dA diag(s);  dldw[0] += g
//        (accumulated, like channel_affine's dA: the caller zeroes them, a split batch adds up)
//   LU parametrisation (lower not null): ActNorm's log_scale and InvConv1x1LU's factors replace s, W and ldw:
//        s = exp(log_scale), W = P (I + strict lower part of lower) (strict upper part of upper + diag(sign e^log_s)),
//        log|det W| = sum log_s (P must be a permutation matrix: error 2 otherwise). bwd accumulates dlog_scale,
//        dlower, dupper (their strict triangles) and dlog_s instead of ds, dW and dldw: the whole Glow step's
//        parameter algebra runs in the kernel, none of it in torch ops.
struct ActNormInvConvParams : LaunchParams {
  const void* x = nullptr;   // (B, C, HW)
  const void* s = nullptr;   // (C,)
  const void* b = nullptr;   // (C,)
  const void* W = nullptr;   // (C, C)
  const void* ldw = nullptr; // scalar: log|det W| per pixel                fwd
  void* y = nullptr;         // (B, C, HW) out                              fwd
  void* ld = nullptr;        // (B,) out                                    fwd
  const void* dy = nullptr;  // (B, C, HW) or null                          bwd
  const void* dld = nullptr; // (B,) or null                                bwd
  void* dx = nullptr;        // (B, C, HW) out (unless dy is null)          bwd
  void* ds = nullptr;        // (C,) accumulated                            bwd
  void* db = nullptr;        // (C,) accumulated                            bwd
  void* dW = nullptr;        // (C, C) accumulated                          bwd
  void* dldw = nullptr;      // scalar, accumulated                         bwd
  const void* log_scale = nullptr;  // (C,)      LU parametrisation, all six or none
  const void* lower = nullptr;      // (C, C)
  const void* upper = nullptr;      // (C, C)
  const void* log_s = nullptr;      // (C,)
  const void* sign = nullptr;       // (C,)
  const void* P = nullptr;          // (C, C)
  void* dlog_scale = nullptr;       // (C,) accumulated                   bwd, LU
  void* dlower = nullptr;           // (C, C) accumulated                 bwd, LU
  void* dupper = nullptr;           // (C, C) accumulated                 bwd, LU
  void* dlog_s = nullptr;           // (C,) accumulated                   bwd, LU
  int64_t B = 0, C = 0, HW = 0;
  int64_t chunk = 0;         // pixels per partial of dA, dc (as channel_affine's) bwd
};

// Every kernel: 0 on success, else an error code (CUDA: the launch's cudaError_t; CPU: 1 = unsupported dtype,
// 2 = invalid sizes). CUDA kernels launch asynchronously on p.stream.
template <Device D> int channel_affine_fwd(const ChannelAffineParams& p);
template <Device D> int channel_affine_bwd(const ChannelAffineParams& p);
template <Device D> int affine_coupling_fwd(const AffineCouplingParams& p);
template <Device D> int affine_coupling_inv(const AffineCouplingParams& p);
template <Device D> int affine_coupling_bwd(const AffineCouplingParams& p);
int actnorm_invconv_fwd_cpu(const ActNormInvConvParams& p);  // CPU only (see above)
int actnorm_invconv_bwd_cpu(const ActNormInvConvParams& p);

// Largest C the CUDA channel_affine kernels take. Above 32 channels FMA-only kernels cannot keep up with memory in
// fp32 (C = 96 would need more than the H100's FMA peak at copy bandwidth): larger C runs on the Triton kernel,
// which uses tensor cores at fp32 accuracy (tf32x3).
constexpr int64_t kCudaMaxChannels = 32;

// Partial rows of the CUDA channel_affine backward: a fixed constant (about 4 blocks per SM on an H100), so the
// reduction order, and hence the result bit for bit, is the same on every GPU.
constexpr int64_t kCudaBwdParts = 512;

// The CPU kernels' fixed work splits, so results never depend on the thread count: elements per affine_coupling
// logdet partial (its chunk), and pixels per channel_affine / actnorm_invconv backward partial. flowkern/ops/ and
// csrc/eager/ pass these (Python reads them as flowkern._C.cpu.coupling_chunk and .pixel_chunk).
constexpr int64_t kCpuCouplingChunk = 4096;
constexpr int64_t kCpuPixelChunk = 1024;

}  // namespace flowkern
