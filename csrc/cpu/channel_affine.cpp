// CPU channel_affine: y = A x + c per pixel (ActNorm folded into the invertible 1x1 conv), and its backward.
// Contract in ../kernels.h. Work is split into fixed pixel tiles, so results never depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/common.h"

// Vectors cross function boundaries only in always_inline helpers (no call, so no ABI): gcc's note that their
// signatures would change the ABI between the builds does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace flowkern {
namespace cpu {
namespace {

constexpr int64_t kTile = 256;  // pixels per tile: C x kTile floats stay in L1/L2 for C <= 96

// out[i, 0:np] = bias[i] + sum_j M(i, j) * in[j, 0:np], rows of `in`/`out` strided by HW.
// M(i, j) = M[i*C + j], or M[j*C + i] when `transposed`.
// Register blocking: a 4- or 6-row x 2-vector accumulator block stays in vector registers across the whole j loop, so
// each x load feeds 4-6 FMAs; the ragged edges take a plain path.
// V: 8 floats (ymm in the AVX2 build, pairs of xmm in the baseline one) or 16 (zmm, the AVX-512 build): gcc keeps
// arrays of them in vector registers, which plain arrays with `omp simd` did not guarantee. Loads and stores go
// through load_v / store_v (unaligned: rows start anywhere; an aligned(4) typedef loses its attribute as a template
// argument).
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
template <typename V>
constexpr int64_t kLanes = sizeof(V) / sizeof(float);
template <typename V>
FK_INLINE V load_v(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
FK_INLINE void store_v(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// The sum of an 8-float vector's lanes, as a tree of half-width vector adds (the AVX2 / baseline builds; the AVX-512
// build sums 16 vectors at once, sum16_bitrev).
FK_INLINE float lane_sum(v4f v) { return (v[0] + v[2]) + (v[1] + v[3]); }
FK_INLINE float lane_sum(v8f v) {
  v4f lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  return lane_sum(lo + hi);
}

// The float main block: RB rows x 2 vectors of pixels of accumulators (2*RB vectors) live in registers across the j
// loop.
template <int RB, typename V>
FK_INLINE void affine_block_f32(const float* in, const float* M, const float* bias, float* out, int64_t C, int64_t HW,
                                int64_t i0, int64_t p0, bool transposed) {
  constexpr int64_t L = kLanes<V>;
  V acc[RB][2];
  for (int r = 0; r < RB; ++r) {
    const float b0 = bias ? bias[i0 + r] : 0.0f;
    acc[r][0] = acc[r][1] = V{} + b0;
  }
  const int64_t row = transposed ? 1 : C, col = transposed ? C : 1;  // M(i, j) = M[i*row + j*col]
  for (int64_t j = 0; j < C; ++j) {
    const V x0 = load_v<V>(in + j * HW + p0);
    const V x1 = load_v<V>(in + j * HW + p0 + L);
    for (int r = 0; r < RB; ++r) {
      const float a = M[(i0 + r) * row + j * col];
      acc[r][0] += a * x0;
      acc[r][1] += a * x1;
    }
  }
  for (int r = 0; r < RB; ++r) {
    store_v(out + (i0 + r) * HW + p0, acc[r][0]);
    store_v(out + (i0 + r) * HW + p0 + L, acc[r][1]);
  }
}

template <typename T, typename V = v8f>
FK_INLINE void affine_tile(const T* in, const T* M, const T* bias, T* out, int64_t C, int64_t HW, int64_t np,
                           bool transposed) {
  constexpr int64_t PB = std::is_same_v<T, float> ? 2 * kLanes<V> : 16;
  auto m = [&](int64_t i, int64_t j) { return transposed ? M[j * C + i] : M[i * C + j]; };
  // float: 6-row blocks where C allows (12 accumulators + 2 x vectors + 1 broadcast fill the 16 ymm registers of
  // the AVX2 build; the AVX-512 build keeps the shape at twice the width), else 4; double (tests) takes the plain loop
  // with 4-row blocks.
  const int64_t RB = (std::is_same_v<T, float> && C % 6 == 0) ? 6 : 4;
  const int64_t np_full = np - np % PB, C_full = C - C % RB;
  for (int64_t p0 = 0; p0 < np_full; p0 += PB) {
    for (int64_t i0 = 0; i0 < C_full; i0 += RB) {
      if constexpr (std::is_same_v<T, float>) {
        if (RB == 6)
          affine_block_f32<6, V>(in, M, bias, out, C, HW, i0, p0, transposed);
        else
          affine_block_f32<4, V>(in, M, bias, out, C, HW, i0, p0, transposed);
      } else {
        T acc[4][PB];
        for (int64_t r = 0; r < 4; ++r)
          for (int64_t p = 0; p < PB; ++p) acc[r][p] = bias ? bias[i0 + r] : T(0);
        for (int64_t j = 0; j < C; ++j) {
          const T* xj = in + j * HW + p0;
          for (int64_t r = 0; r < 4; ++r) {
            const T a = m(i0 + r, j);
#pragma omp simd
            for (int64_t p = 0; p < PB; ++p) acc[r][p] += a * xj[p];
          }
        }
        for (int64_t r = 0; r < 4; ++r)
          for (int64_t p = 0; p < PB; ++p) out[(i0 + r) * HW + p0 + p] = acc[r][p];
      }
    }
  }
  // edges: the last C % RB rows for the full pixel blocks, then every row for the last np % PB pixels
  auto edge = [&](int64_t i_begin, int64_t p_begin, int64_t p_end) {
    for (int64_t i = i_begin; i < C; ++i) {
      T* o = out + i * HW;
      const T b0 = bias ? bias[i] : T(0);
      for (int64_t p = p_begin; p < p_end; ++p) o[p] = b0;
      for (int64_t j = 0; j < C; ++j) {
        const T a = m(i, j);
        const T* xj = in + j * HW;
#pragma omp simd
        for (int64_t p = p_begin; p < p_end; ++p) o[p] += a * xj[p];
      }
    }
  };
  if (C_full < C) edge(C_full, 0, np_full);
  if (np_full < np) edge(0, np_full, np);
}

// dA[i, j] += sum_p dy[i, p] x[j, p] and dc[i] += sum_p dy[i, p] over np pixels (rows strided by HW).
// A small GEMM: output blocks with 8- or 16-pixel vector accumulators in registers (float 3 x 4 on 8 floats, 4 x 4
// on 16; double 4 x 2), one lane sum per entry per call. Fixed order: deterministic.
// float on 8 floats: 3 x 4 output blocks (12 registers, + 3 dy vectors + 1 x vector = 16): 7 loads per 12 FMAs.
template <typename V>
FK_INLINE void outer_block_f32(const float* const (&dyr)[3], const float* const (&xr)[4], float (&out)[3][4],
                               int64_t np_full) {
  constexpr int64_t L = kLanes<V>;
  V acc[3][4] = {};
  for (int64_t p0 = 0; p0 < np_full; p0 += L) {
    V d[3];
    for (int r = 0; r < 3; ++r) d[r] = load_v<V>(dyr[r] + p0);
    for (int q = 0; q < 4; ++q) {
      const V xv = load_v<V>(xr[q] + p0);
      for (int r = 0; r < 3; ++r) acc[r][q] += d[r] * xv;
    }
  }
  for (int r = 0; r < 3; ++r)
    for (int q = 0; q < 4; ++q) out[r][q] = lane_sum(acc[r][q]);
}

// The 16 sums of a[0..15] at once, by a transpose tree: each level adds the two halves of pairs of vectors (45 vector
// ops in all, against 16 lane sums' 128). Lane l of the result holds the sum of a[bitrev4(l)].
typedef int v16i __attribute__((vector_size(64)));
// One level: u's and v's lanes picked by lo, plus those picked by hi (a lane index >= 16 picks from v).
FK_INLINE v16f fold(v16f u, v16f v, v16i lo, v16i hi) {
  return __builtin_shuffle(u, v, lo) + __builtin_shuffle(u, v, hi);
}
FK_INLINE v16f sum16_bitrev(const v16f (&a)[16]) {
  constexpr v16i lo8{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};  // halves: 8-lane partials of u | v
  constexpr v16i hi8{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  constexpr v16i lo4{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};  // 4-lane partials
  constexpr v16i hi4{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
  constexpr v16i lo2{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};  // 2-lane partials
  constexpr v16i hi2{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
  constexpr v16i lo1{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};  // sums
  constexpr v16i hi1{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
  v16f b[8], c[4], d[2];
  for (int k = 0; k < 8; ++k) b[k] = fold(a[2 * k], a[2 * k + 1], lo8, hi8);
  for (int k = 0; k < 4; ++k) c[k] = fold(b[2 * k], b[2 * k + 1], lo4, hi4);
  for (int k = 0; k < 2; ++k) d[k] = fold(c[2 * k], c[2 * k + 1], lo2, hi2);
  return fold(d[0], d[1], lo1, hi1);
}
constexpr int kBitrev4[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

// AVX-512 (32 registers): 4 x 4 output blocks (16 accumulators + 4 dy vectors + 1 x vector): 8 loads per 16 FMAs,
// the 16 sums reduced together.
FK_INLINE void outer_block_f32(const float* const (&dyr)[4], const float* const (&xr)[4], float (&out)[4][4],
                               int64_t np_full) {
  v16f acc[16] = {};
  for (int64_t p0 = 0; p0 < np_full; p0 += 16) {
    v16f d[4];
    for (int r = 0; r < 4; ++r) d[r] = load_v<v16f>(dyr[r] + p0);
    for (int q = 0; q < 4; ++q) {
      const v16f xv = load_v<v16f>(xr[q] + p0);
      for (int r = 0; r < 4; ++r) acc[r * 4 + q] += d[r] * xv;
    }
  }
  const v16f sums = sum16_bitrev(acc);
  for (int l = 0; l < 16; ++l) out[kBitrev4[l] / 4][kBitrev4[l] % 4] = sums[l];
}

template <typename T, typename VF = v8f>
FK_INLINE void accumulate_outer(const T* dy, const T* x, T* dA, T* dc, int64_t C, int64_t HW, int64_t np) {
  constexpr bool kF32 = std::is_same_v<T, float>, kWide = kF32 && std::is_same_v<VF, v16f>;
  constexpr int64_t IB = kWide ? 4 : kF32 ? 3 : 4, JB = kF32 ? 4 : 2, V = kF32 ? kLanes<VF> : 8;
  const int64_t np_full = np - np % V;
  for (int64_t i = 0; i < C; ++i) {
    const T* dyi = dy + i * HW;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t p = 0; p < np; ++p) sum += dyi[p];
    dc[i] += sum;
  }
  for (int64_t i0 = 0; i0 < C; i0 += IB) {
    const int64_t ni = std::min(IB, C - i0);
    for (int64_t j0 = 0; j0 < C; j0 += JB) {
      const int64_t nj = std::min(JB, C - j0);
      const T* dyr[IB];
      const T* xr[JB];
      for (int64_t r = 0; r < IB; ++r) dyr[r] = dy + std::min(i0 + r, C - 1) * HW;  // clamped rows are discarded
      for (int64_t q = 0; q < JB; ++q) xr[q] = x + std::min(j0 + q, C - 1) * HW;
      T sums[IB][JB];
      if constexpr (kWide) {
        outer_block_f32(dyr, xr, sums, np_full);
      } else if constexpr (kF32) {
        outer_block_f32<VF>(dyr, xr, sums, np_full);
      } else {
        T acc[IB][JB][V] = {};
        for (int64_t p0 = 0; p0 < np_full; p0 += V)
          for (int64_t r = 0; r < IB; ++r)
            for (int64_t q = 0; q < JB; ++q)
#pragma omp simd
              for (int64_t v = 0; v < V; ++v) acc[r][q][v] += dyr[r][p0 + v] * xr[q][p0 + v];
        for (int64_t r = 0; r < IB; ++r)
          for (int64_t q = 0; q < JB; ++q) {
            sums[r][q] = 0;
            for (int64_t v = 0; v < V; ++v) sums[r][q] += acc[r][q][v];
          }
      }
      for (int64_t r = 0; r < ni; ++r)
        for (int64_t q = 0; q < nj; ++q) {
          T d = sums[r][q];
          for (int64_t p = np_full; p < np; ++p) d += dyr[r][p] * xr[q][p];
          dA[(i0 + r) * C + j0 + q] += d;
        }
    }
  }
}

// One backward chunk (sample n, pixels [c0, c1)): dx = A^T dy, and this chunk's dA and dc partials.
template <typename T, typename V = v8f>
FK_INLINE void bwd_chunk(const T* x, const T* dy, const T* A, T* dx, T* dA, T* dc, int64_t C, int64_t HW,
                         int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < C * C; ++i) dA[i] = T(0);
  for (int64_t i = 0; i < C; ++i) dc[i] = T(0);
  for (int64_t p0 = c0; p0 < c1; p0 += kTile) {
    const int64_t np = std::min(kTile, c1 - p0);
    const T* x_t = x + p0;
    const T* dy_t = dy + p0;
    affine_tile<T, V>(dy_t, A, nullptr, dx + p0, C, HW, np, /*transposed=*/true);
    accumulate_outer<T, V>(dy_t, x_t, dA, dc, C, HW, np);
  }
}

// float instances: an AVX-512 build on 16-float vectors and AVX2 / baseline clones on 8-float ones; double (tests)
// stays plain
FK_AVX512 void fwd_tile_f32_avx512(const float* x, const float* A, const float* c, float* y, int64_t C, int64_t HW,
                                   int64_t np) {
  affine_tile<float, v16f>(x, A, c, y, C, HW, np, false);
}
FK_CLONES void fwd_tile_f32(const float* x, const float* A, const float* c, float* y, int64_t C, int64_t HW,
                            int64_t np) {
  affine_tile<float, v8f>(x, A, c, y, C, HW, np, false);
}
FK_AVX512 void bwd_chunk_f32_avx512(const float* x, const float* dy, const float* A, float* dx, float* dA, float* dc,
                                    int64_t C, int64_t HW, int64_t c0, int64_t c1) {
  bwd_chunk<float, v16f>(x, dy, A, dx, dA, dc, C, HW, c0, c1);
}
FK_CLONES void bwd_chunk_f32(const float* x, const float* dy, const float* A, float* dx, float* dA, float* dc,
                             int64_t C, int64_t HW, int64_t c0, int64_t c1) {
  bwd_chunk<float, v8f>(x, dy, A, dx, dA, dc, C, HW, c0, c1);
}
void fwd_tile_any(const float* x, const float* A, const float* c, float* y, int64_t C, int64_t HW, int64_t np) {
  (has_avx512() ? fwd_tile_f32_avx512 : fwd_tile_f32)(x, A, c, y, C, HW, np);
}
void fwd_tile_any(const double* x, const double* A, const double* c, double* y, int64_t C, int64_t HW, int64_t np) {
  affine_tile<double>(x, A, c, y, C, HW, np, false);
}
void bwd_chunk_any(const float* x, const float* dy, const float* A, float* dx, float* dA, float* dc, int64_t C,
                   int64_t HW, int64_t c0, int64_t c1) {
  (has_avx512() ? bwd_chunk_f32_avx512 : bwd_chunk_f32)(x, dy, A, dx, dA, dc, C, HW, c0, c1);
}
void bwd_chunk_any(const double* x, const double* dy, const double* A, double* dx, double* dA, double* dc, int64_t C,
                   int64_t HW, int64_t c0, int64_t c1) {
  bwd_chunk<double>(x, dy, A, dx, dA, dc, C, HW, c0, c1);
}

template <typename T>
int fwd(const ChannelAffineParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t C = p.C, HW = p.HW, nq = (HW + kTile - 1) / kTile;
#pragma omp parallel for num_threads(threads_for(p.B * HW * C * C, p.nthreads, kGrainFMAs)) schedule(static)
  for (int64_t t = 0; t < p.B * nq; ++t) {
    const int64_t n = t / nq, p0 = (t % nq) * kTile, np = std::min(kTile, HW - p0);
    const int64_t off = n * C * HW + p0;
    fwd_tile_any(x + off, static_cast<const T*>(p.A), static_cast<const T*>(p.c), y + off, C, HW, np);
  }
  return 0;
}

template <typename T>
int bwd(const ChannelAffineParams& p) {
  if (p.chunk <= 0) return 2;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const int64_t C = p.C, HW = p.HW, chunk = p.chunk, nq = (HW + chunk - 1) / chunk, nk = p.B * nq;
  // Stage 1: one dA, dc partial per chunk (sample n, pixel range q), each written by one thread.
  std::vector<T> part(static_cast<size_t>(nk * (C * C + C)));
#pragma omp parallel for num_threads(threads_for(p.B * HW * C * C, p.nthreads, kGrainFMAs)) schedule(static)
  for (int64_t k = 0; k < nk; ++k) {
    const int64_t n = k / nq, c0 = (k % nq) * chunk, c1 = std::min(c0 + chunk, HW), off = n * C * HW;
    T* pk = part.data() + k * (C * C + C);
    bwd_chunk_any(x + off, dy + off, static_cast<const T*>(p.A), dx + off, pk, pk + C * C, C, HW, c0, c1);
  }
  // Stage 2: every dA/dc entry sums its partials in chunk order, whatever the thread count.
  T* dA = static_cast<T*>(p.dA);
  T* dc = static_cast<T*>(p.dc);
  const int64_t width = C * C + C;
#pragma omp parallel for num_threads(threads_for(nk * width, p.nthreads, kGrainElements)) schedule(static)
  for (int64_t e = 0; e < width; ++e) {
    T sum = 0;
    for (int64_t k = 0; k < nk; ++k) sum += part[k * width + e];
    (e < C * C ? dA[e] : dc[e - C * C]) += sum;
  }
  return 0;
}

}  // namespace
}  // namespace cpu

template <>
int channel_affine_fwd<Device::kCPU>(const ChannelAffineParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::fwd<decltype(t)>(p); });
}

template <>
int channel_affine_bwd<Device::kCPU>(const ChannelAffineParams& p) {
  return cpu::dispatch_float(p.dtype, [&](auto t) { return cpu::bwd<decltype(t)>(p); });
}

}  // namespace flowkern
