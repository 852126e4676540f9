// CPU kernels (OpenMP). See ../kernels.h for the contract. dtype: kF32 or kF64 only.
// nthreads: OpenMP threads to use (the caller passes torch.get_num_threads()).
// Each returns 0, or a nonzero code for an unsupported dtype (the Python side never sends one).
#pragma once
#include <cstdint>

namespace flowkern {
namespace cpu {

int channel_affine_fwd(int dtype, const void* x, const void* A, const void* c, void* y,
                       int64_t B, int64_t C, int64_t HW, int nthreads);
int channel_affine_bwd(int dtype, const void* x, const void* dy, const void* A, void* dx, void* dA_part,
                       void* dc_part, int64_t B, int64_t C, int64_t HW, int64_t chunk, int nthreads);

int coupling_fwd(int dtype, const void* x, const void* h, void* y, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, int nthreads);
int coupling_inv(int dtype, const void* y, const void* h, void* x, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, int nthreads);
int coupling_bwd(int dtype, const void* y, const void* h, const void* dy, const void* dld, void* dx, void* dh,
                 int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine, int nthreads);

}  // namespace cpu
}  // namespace flowkern
