// Shared by the torch-linked eager entry points (csrc/eager/*.cpp, module flowkern._C_eager): the same CPU kernels
// as flowkern._C, called from C++ with at::Tensor, so an eager CPU call (forward, autograd node, backward) costs one
// Python call instead of a dozen. Every entry checks its arguments (check_data, check_param): flowkern/ops/ calls
// it first for contiguous float CPU tensors (eager.direct) and runs its own checks, which name the problem in the
// ops' terms, only when it refuses.
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

// flowkern/ops/ hands the entry points its calls before checking them, and they are importable on their own
// (flowkern._C_eager.*): every argument is checked here, cheaply, so a bad one raises instead of handing the kernels
// a bad pointer.
// `data`: the op's data tensors (x, h, ...): CPU, contiguous, non-empty, float32 or float64, one dtype, 4-D, one
// batch size and frame size.
inline void check_data(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> data) {
  const at::Tensor& first = *data.begin()->second;
  for (const auto& [name, t] : data) {
    TORCH_CHECK(t->defined(), "flowkern._C_eager.", op, ": ", name, " is undefined");
    TORCH_CHECK(t->device().is_cpu(), "flowkern._C_eager.", op, ": ", name, " must be a CPU tensor, got ", t->device());
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, "flowkern._C_eager.", op, ": ",
                name, " must be float32 or float64, got ", t->scalar_type());
    TORCH_CHECK(t->scalar_type() == first.scalar_type(), "flowkern._C_eager.", op, ": ", name, " is ",
                t->scalar_type(), " but ", data.begin()->first, " is ", first.scalar_type());
    TORCH_CHECK(t->dim() == 4, "flowkern._C_eager.", op, ": ", name, " must be 4-D (B, C, H, W), got ", t->sizes());
    TORCH_CHECK(t->is_contiguous(), "flowkern._C_eager.", op, ": ", name, " must be contiguous");
    TORCH_CHECK(t->numel() > 0, "flowkern._C_eager.", op, ": ", name, " is empty");
    TORCH_CHECK(t->size(0) == first.size(0) && t->size(2) == first.size(2) && t->size(3) == first.size(3),
                "flowkern._C_eager.", op, ": ", name, " has shape ", t->sizes(), ", ", data.begin()->first, " ",
                first.sizes());
  }
}

// A parameter: CPU, of the given shape (its dtype may differ: the kernels take it in the accumulation type, see
// acc()). An empty shape takes any one-element tensor (a logdet given as () or (1,)).
inline void check_param(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.is_floating_point(), "flowkern._C_eager.", op, ": ", name,
              " must be a floating-point CPU tensor");
  TORCH_CHECK(shape.empty() ? t.numel() == 1 : t.sizes() == shape, "flowkern._C_eager.", op, ": ", name,
              " has shape ", t.sizes(), ", expected ", shape.empty() ? "one element" : c10::str(shape));
}

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
