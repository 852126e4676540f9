// Runtime status queries: let the Python side explain why CUDA kernels are unavailable instead of failing on the
// first launch.
#include <cuda_runtime.h>

#include <cstdio>

#include "cuda/status.h"

namespace flowkern {
namespace cuda {

int device_count(char* why, int why_len) {
  const bool can_write = why != nullptr && why_len > 0;
  if (can_write) why[0] = '\0';
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky (no driver / no device): clear it so later calls do not report it
    if (can_write) std::snprintf(why, (size_t)why_len, "%s: %s", cudaGetErrorName(err), cudaGetErrorString(err));
    return -1;
  }
  if (n == 0 && can_write) std::snprintf(why, (size_t)why_len, "no CUDA device visible");
  return n;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace flowkern
