// CUDA kernels. See ../kernels.h for the contract. dtype: kF32, kF16, kBF16 (kF64 also accepted, for tests).
// stream: the caller's cudaStream_t as an integer (torch.cuda.current_stream().cuda_stream).
// Each launches asynchronously on that stream and returns the cudaError_t of the launch (0 = cudaSuccess),
// or cudaErrorInvalidValue for an unsupported dtype / size.
#pragma once
#include <cstdint>

namespace flowkern {
namespace cuda {

int channel_affine_fwd(int dtype, const void* x, const void* A, const void* c, void* y,
                       int64_t B, int64_t C, int64_t HW, uintptr_t stream);
int channel_affine_bwd(int dtype, const void* x, const void* dy, const void* A, void* dx, void* dA_part,
                       void* dc_part, int64_t B, int64_t C, int64_t HW, int64_t chunk, uintptr_t stream);

int coupling_fwd(int dtype, const void* x, const void* h, void* y, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, uintptr_t stream);
int coupling_inv(int dtype, const void* y, const void* h, void* x, void* ld_part, int64_t B, int64_t C,
                 int64_t Ca, int64_t HW, bool affine, int64_t chunk, uintptr_t stream);
int coupling_bwd(int dtype, const void* y, const void* h, const void* dy, const void* dld, void* dx, void* dh,
                 int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine, uintptr_t stream);

// Runtime status: number of visible devices, or -1 with the reason in `why` (no driver, no device, ...).
int device_count(char* why, int why_len);
const char* error_string(int code);
// Largest C the channel_affine kernels take (the C x C matrix lives in shared memory).
int64_t max_channels();

}  // namespace cuda
}  // namespace flowkern
