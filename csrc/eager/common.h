// Shared by the torch-linked eager entry points (csrc/eager/*.cpp, module flowkern._C_eager): the same CPU kernels
// as flowkern._C, called from C++ with at::Tensor, so an eager CPU call (forward, autograd node, backward) costs one
// Python call instead of a dozen. flowkern/ops/ still owns every argument check and calls these only with valid,
// contiguous CPU tensors.
#pragma once
#include <torch/extension.h>

#include <string>

#include "kernels.h"

namespace flowkern {
namespace eager {

inline int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "flowkern: unsupported dtype ", t.scalar_type());
  }
}

// float64 for float64 data, float32 otherwise (kernels.h): matrices, partial sums, logdets, parameter gradients.
inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// t in the accumulation type, contiguous: itself when it already is (no copy, no op).
inline at::Tensor acc(const at::Tensor& t, at::ScalarType type) {
  return (t.scalar_type() == type && t.is_contiguous()) ? t : t.to(type).contiguous();
}

inline const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// A kernel's return code as the error flowkern/ops/ raises for the Python path (dispatch.py: _ext.check).
inline void check(int code, const char* kernel) {
  TORCH_CHECK(code == 0, "flowkern CPU kernel ", kernel, " refused its arguments (code ", code,
              "); please report this");
}

// Run a kernel without the GIL, as flowkern._C's bindings do (it touches only memory the caller keeps alive).
template <typename F>
int nogil(F&& kernel) {
  if (PyGILState_Check()) {
    pybind11::gil_scoped_release release;
    return kernel();
  }
  return kernel();
}

// Under create_graph=True a backward must itself be differentiable: the autograd nodes here then call back into
// Python (flowkern/ops/eager.py registers the function with set_double_backward), which computes the same
// gradients in torch ops. tensors: the node's saved tensors and incoming gradients (undefined: None); flags: the
// op's options. Returns one gradient per input (undefined where Python gave None). Defined in module.cpp.
std::vector<at::Tensor> double_backward(const std::string& op, const std::vector<at::Tensor>& tensors,
                                        const std::vector<bool>& flags);

}  // namespace eager
}  // namespace flowkern
