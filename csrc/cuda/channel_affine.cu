// channel_affine: y = A x + c over the channels of every pixel (ActNorm folded into the invertible 1x1 conv),
// and its backward dx = A^T dy with dA = sum dy x^T and dc = sum dy reduced in two fixed-order stages. These FMA
// kernels serve C <= kCudaMaxChannels = 32; larger C runs on the Triton tensor-core kernel.
// See ../kernels.h for the contract.
//
// Both kernels stage A (C x C, accumulator type) in dynamic shared memory and stream [C][TP] pixel tiles of
// one sample through it. Tile loads are coalesced along pixels; in the matrix loops a warp covers 32
// consecutive pixels of one output channel, so A[i][j] is a shared-memory broadcast and the stores are
// coalesced. Each thread keeps a small register tile of outputs (rows x pixels) so one shared load of A or x
// feeds several FMAs. No atomics: every output element has exactly one writer and a fixed summation order.
#include <algorithm>
#include <type_traits>

#include "cuda/common.cuh"

namespace flowkern {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Pixels per tile. Shared memory at C = 32: float fwd 12.1 KiB, bwd 12.3 KiB; double fwd 16.3 KiB, bwd 12.5 KiB.
template <typename Acc> struct AffineTiles;
template <> struct AffineTiles<float> { static constexpr int kFwd = 64, kBwd = 32; };
template <> struct AffineTiles<double> { static constexpr int kFwd = 32, kBwd = 16; };

// Thread layout of the matrix loops over a TP-pixel tile: kLanes consecutive threads take consecutive pixels
// (kPP pixels each, kLanes apart), and the kGroups groups of them take interleaved channels.
template <int TP> struct PixelLayout {
  static constexpr int kLanes = TP < 32 ? TP : 32;
  static constexpr int kPP = TP / kLanes;
  static constexpr int kGroups = kThreads / kLanes;
  static_assert(TP % kLanes == 0 && kThreads % kLanes == 0, "tile width must be a power of two");
};

// MT = channel bucket: the kernels are instantiated for C <= 16 * MT, MT in {1, 2}, so the register tiles are sized
// to C without wasting work on small C. The __launch_bounds__ minimum block count gives ptxas a register budget
// (without one, sm_90 ptxas squeezed the kernels into 32 registers and spilled).
// with_channel_bucket(C, f) calls f(std::integral_constant<int, MT>) for C's bucket.
template <typename F>
auto with_channel_bucket(int64_t C, F&& f) {
  if (C <= 16) return f(std::integral_constant<int, 1>{});
  return f(std::integral_constant<int, 2>{});  // C <= kCudaMaxChannels = 32
}

// The register-tiled channel mix both kernels share: acc[r][q] += sum_k M[k*k_step + ch[r]*ch_step] *
// tile[k*pitch + lane + q*kLanes] over k < C (forward: rows of A times the x tile, k_step = 1, ch_step = C;
// backward: columns of A times the dy tile, k_step = C, ch_step = 1).
template <int R, int PP, int kLanes, typename Acc>
__device__ __forceinline__ void mix_channels(Acc (&acc)[R][PP], const Acc* M, int k_step, const int (&ch)[R],
                                             int ch_step, const Acc* tile, int pitch, int lane, int C) {
  for (int k = 0; k < C; ++k) {
    Acc v[PP];
#pragma unroll
    for (int q = 0; q < PP; ++q) v[q] = tile[k * pitch + lane + q * kLanes];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const Acc a = M[k * k_step + ch[r] * ch_step];
#pragma unroll
      for (int q = 0; q < PP; ++q) acc[r][q] += a * v[q];
    }
  }
}

// out[ch * HW + p] = acc[r][q] for channel ch = group + r*kGroups < C and pixel p = lane + q*kLanes < np.
template <int kLanes, int kGroups, int R, int PP, typename T, typename Acc>
__device__ __forceinline__ void store_tile(const Acc (&acc)[R][PP], T* out, int64_t HW, int group, int lane, int C,
                                           int np) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int ch = group + r * kGroups;
    if (ch >= C) break;
#pragma unroll
    for (int q = 0; q < PP; ++q) {
      const int p = lane + q * kLanes;
      if (p < np) out[(int64_t)ch * HW + p] = from_acc<T>(acc[r][q]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forward. Grid (ceil(HW/TP), min(B, 65535)): block = one pixel tile of one sample (loops over samples when
// B > 65535). Shared memory: A [C][C], c [C], x tile [C][TP].
template <typename T, int TP, int MT>
__global__ void __launch_bounds__(kThreads, 4)
channel_affine_fwd_kernel(const T* __restrict__ x, const acc_t<T>* __restrict__ A, const acc_t<T>* __restrict__ c,
                          T* __restrict__ y, int C, int64_t HW, int64_t B) {
  using Acc = acc_t<T>;
  using L = PixelLayout<TP>;
  constexpr int kRows = 16 * MT / L::kGroups;  // output channels per thread: covers C <= 16*MT in one pass
  static_assert(kRows >= 1 && kRows * L::kGroups == 16 * MT, "layout does not cover the channel bucket");

  Acc* As = dynamic_smem<Acc>();  // [C][C]
  Acc* cs = As + C * C;           // [C]
  Acc* xs = cs + C;               // [C][TP]
  const int tid = threadIdx.x;
  for (int e = tid; e < C * C; e += kThreads) As[e] = A[e];
  for (int i = tid; i < C; i += kThreads) cs[i] = c != nullptr ? c[i] : Acc(0);

  const int lane = tid % L::kLanes, group = tid / L::kLanes;
  // Rows past C are clamped to C - 1 (valid memory, result discarded) so the inner loop has no branches.
  int row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) row[r] = min(group + r * L::kGroups, C - 1);

  const int64_t p0 = (int64_t)blockIdx.x * TP;
  const int np = (int)min((int64_t)TP, HW - p0);  // valid pixels in this tile (>= 1)
  for (int64_t n = blockIdx.y; n < B; n += gridDim.y) {
    const T* xn = x + n * C * HW + p0;
    T* yn = y + n * C * HW + p0;
    __syncthreads();  // A, c staged; the previous sample's tile is consumed
    for (int e = tid; e < C * TP; e += kThreads) {
      const int j = e / TP, p = e % TP;
      xs[e] = p < np ? to_acc(xn[(int64_t)j * HW + p]) : Acc(0);
    }
    __syncthreads();

    Acc acc[kRows][L::kPP];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int q = 0; q < L::kPP; ++q) acc[r][q] = cs[row[r]];
    mix_channels<kRows, L::kPP, L::kLanes>(acc, As, 1, row, C, xs, TP, lane, C);
    store_tile<L::kLanes, L::kGroups>(acc, yn, HW, group, lane, C, np);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward, stage 1. Grid (G): block g takes the TP-pixel tiles g, g + G, g + 2G, ... of all B * ceil(HW/TP)
// tiles (persistent: G = min(kCudaBwdParts, tiles) is a fixed constant, not the GPU's size, so the sums are the
// same on every GPU) and writes its dA, dc partial to row g. Shared memory: A [C][C], dy tile [C][TP+1], x tile
// [C][TP+1] (the +1 pad keeps the dA loop, which reads 16 channel rows at one pixel, free of bank conflicts).
template <typename T, int TP, int MT>
__global__ void __launch_bounds__(kThreads, 4)
channel_affine_bwd_kernel(const T* __restrict__ x, const T* __restrict__ dy, const acc_t<T>* __restrict__ A,
                          T* __restrict__ dx, acc_t<T>* __restrict__ dA_part, acc_t<T>* __restrict__ dc_part,
                          int C, int64_t HW, int64_t tiles) {
  using Acc = acc_t<T>;
  using L = PixelLayout<TP>;
  constexpr int kPitch = TP + 1;
  constexpr int kCols = 16 * MT / L::kGroups;  // dx channels per thread: covers C <= 16*MT in one pass
  static_assert(kCols >= 1 && kCols * L::kGroups == 16 * MT, "layout does not cover the channel bucket");
  static_assert(kThreads == 256, "the dA micro-tiles assume a 16 x 16 thread grid");

  Acc* As = dynamic_smem<Acc>();  // [C][C]
  Acc* dys = As + C * C;          // [C][kPitch]
  Acc* xs = dys + C * kPitch;     // [C][kPitch]
  const int tid = threadIdx.x;
  for (int e = tid; e < C * C; e += kThreads) As[e] = A[e];

  const int64_t ntp = ceil_div(HW, (int64_t)TP);  // tiles per sample
  // dx: kLanes threads over pixels, groups over interleaved input channels j (clamped like the forward).
  const int lane = tid % L::kLanes, group = tid / L::kLanes;
  int col[kCols];
#pragma unroll
  for (int r = 0; r < kCols; ++r) col[r] = min(group + r * L::kGroups, C - 1);

  // dA: a 16 x 16 thread grid; thread (ti, tj) owns entries (ti + 16a, tj + 16b), a, b < MT.
  const int ti = tid / 16, tj = tid % 16;
  int irow[MT], jrow[MT];
#pragma unroll
  for (int a = 0; a < MT; ++a) {
    irow[a] = min(ti + 16 * a, C - 1);
    jrow[a] = min(tj + 16 * a, C - 1);
  }
  Acc dA[MT][MT];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < MT; ++b) dA[a][b] = Acc(0);
  Acc dc = Acc(0);  // thread i < C owns dc[i]

  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t n = t / ntp, p0 = (t - n * ntp) * TP;
    const int np = (int)min((int64_t)TP, HW - p0);  // valid pixels in this tile (>= 1)
    const T* xn = x + n * C * HW;
    const T* dyn = dy + n * C * HW;
    T* dxn = dx + n * C * HW;
    __syncthreads();  // A staged (first tile); the previous tile is consumed
    for (int e = tid; e < C * TP; e += kThreads) {
      const int ch = e / TP, p = e % TP;
      const int64_t off = (int64_t)ch * HW + p0 + p;
      const bool ok = p < np;
      dys[ch * kPitch + p] = ok ? to_acc(dyn[off]) : Acc(0);
      xs[ch * kPitch + p] = ok ? to_acc(xn[off]) : Acc(0);
    }
    __syncthreads();

    // dx[j][p] = sum_i A[i][j] dy[i][p]
    {
      Acc acc[kCols][L::kPP];
#pragma unroll
      for (int r = 0; r < kCols; ++r)
#pragma unroll
        for (int u = 0; u < L::kPP; ++u) acc[r][u] = Acc(0);
      mix_channels<kCols, L::kPP, L::kLanes>(acc, As, C, col, 1, dys, kPitch, lane, C);
      store_tile<L::kLanes, L::kGroups>(acc, dxn + p0, HW, group, lane, C, np);
    }

    // dA[i][j] += sum_p dy[i][p] x[j][p]; dc[i] += sum_p dy[i][p] (fixed order: pixel by pixel)
    for (int p = 0; p < np; ++p) {
      Acc dv[MT], xv[MT];
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        dv[a] = dys[irow[a] * kPitch + p];
        xv[a] = xs[jrow[a] * kPitch + p];
      }
#pragma unroll
      for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int b = 0; b < MT; ++b) dA[a][b] += dv[a] * xv[b];
    }
    if (tid < C)
      for (int p = 0; p < np; ++p) dc += dys[tid * kPitch + p];
  }

  Acc* dA_k = dA_part + (int64_t)blockIdx.x * C * C;
#pragma unroll
  for (int a = 0; a < MT; ++a) {
    const int i = ti + 16 * a;
#pragma unroll
    for (int b = 0; b < MT; ++b) {
      const int j = tj + 16 * b;
      if (i < C && j < C) dA_k[i * C + j] = dA[a][b];
    }
  }
  if (tid < C) dc_part[(int64_t)blockIdx.x * C + tid] = dc;
}

// Backward, stage 2: entry e of [dA | dc] adds its G partials in row order (fixed order: deterministic).
template <typename Acc>
__global__ void channel_affine_bwd_reduce_kernel(const Acc* __restrict__ dA_part, const Acc* __restrict__ dc_part,
                                                 Acc* __restrict__ dA, Acc* __restrict__ dc, int C, int G) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  const int CC = C * C;
  if (e >= CC + C) return;
  const bool is_dA = e < CC;
  const Acc* src = is_dA ? dA_part + e : dc_part + (e - CC);
  const int stride = is_dA ? CC : C;
  Acc sum = Acc(0);
  for (int g = 0; g < G; ++g) sum += src[(int64_t)g * stride];
  (is_dA ? dA[e] : dc[e - CC]) += sum;
}

// ---------------------------------------------------------------------------------------------------------
// Launchers.

template <typename T>
int launch_fwd(const ChannelAffineParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, C = p.C, HW = p.HW;
  constexpr int TP = AffineTiles<Acc>::kFwd;
  if (B == 0 || HW == 0) return (int)cudaSuccess;
  const auto kernel = with_channel_bucket(C, [](auto mt) { return channel_affine_fwd_kernel<T, TP, mt.value>; });
  const size_t smem = sizeof(Acc) * (size_t)(C * C + C + C * TP);
  const cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return (int)err;
  const dim3 grid((unsigned)ceil_div(HW, TP), (unsigned)std::min<int64_t>(B, 65535));
  kernel<<<grid, kThreads, smem, as_stream(p.stream)>>>(static_cast<const T*>(p.x), static_cast<const Acc*>(p.A),
                                                        static_cast<const Acc*>(p.c), static_cast<T*>(p.y), (int)C,
                                                        HW, B);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_bwd(const ChannelAffineParams& p) {
  using Acc = acc_t<T>;
  const int64_t B = p.B, C = p.C, HW = p.HW;
  constexpr int TP = AffineTiles<Acc>::kBwd;
  if (B == 0 || HW == 0) return (int)cudaSuccess;
  const int64_t tiles = B * ceil_div(HW, (int64_t)TP);
  const int G = (int)std::min<int64_t>(std::min<int64_t>(p.parts, kCudaBwdParts), tiles);
  const auto kernel = with_channel_bucket(C, [](auto mt) { return channel_affine_bwd_kernel<T, TP, mt.value>; });
  const size_t smem = sizeof(Acc) * (size_t)(C * C + 2 * C * (TP + 1));
  const cudaError_t err = allow_dynamic_smem(kernel, smem);
  if (err != cudaSuccess) return (int)err;
  cudaStream_t stream = as_stream(p.stream);
  kernel<<<G, kThreads, smem, stream>>>(static_cast<const T*>(p.x), static_cast<const T*>(p.dy),
                                       static_cast<const Acc*>(p.A), static_cast<T*>(p.dx),
                                       static_cast<Acc*>(p.dA_part), static_cast<Acc*>(p.dc_part), (int)C, HW, tiles);
  const int width = (int)(C * C + C);
  channel_affine_bwd_reduce_kernel<Acc><<<(width + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      static_cast<const Acc*>(p.dA_part), static_cast<const Acc*>(p.dc_part), static_cast<Acc*>(p.dA),
      static_cast<Acc*>(p.dc), (int)C, G);
  return (int)cudaGetLastError();
}

}  // namespace
}  // namespace cuda

template <>
int channel_affine_fwd<Device::kCUDA>(const ChannelAffineParams& p) {
  if (p.C < 1 || p.C > kCudaMaxChannels || p.B < 0 || p.HW < 0) return (int)cudaErrorInvalidValue;
  return cuda::dispatch_dtype(p.dtype, [&](auto tag) { return cuda::launch_fwd<typename decltype(tag)::type>(p); });
}

template <>
int channel_affine_bwd<Device::kCUDA>(const ChannelAffineParams& p) {
  if (p.C < 1 || p.C > kCudaMaxChannels || p.B < 0 || p.HW < 0 || p.parts < 1) return (int)cudaErrorInvalidValue;
  return cuda::dispatch_dtype(p.dtype, [&](auto tag) { return cuda::launch_bwd<typename decltype(tag)::type>(p); });
}

}  // namespace flowkern
