// CUDA runtime status, for the bindings (plain C++: no CUDA headers needed to include it).
#pragma once

namespace flowkern {
namespace cuda {

// Number of visible devices, or -1 with the reason in `why` (no driver, no device, ...).
int device_count(char* why, int why_len);
// The CUDA runtime's message for an error code a kernel returned.
const char* error_string(int code);

}  // namespace cuda
}  // namespace flowkern
