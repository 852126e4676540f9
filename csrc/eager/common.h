// Shared by the torch-linked eager entry points (csrc/eager/*.cpp, module flowkern._C_eager): the same CPU kernels
// as flowkern._C, called from C++ with at::Tensor, so an eager CPU call (forward, autograd node, backward) costs one
// Python call instead of a dozen. Every entry checks its arguments (check_data, check_param): flowkern/ops/ calls
// it first for CPU tensors (eager.fast) and runs its own path, whose checks name the problem in the ops' terms, only
// when it answers None (a call it does not take) or raises (a malformed one).
#pragma once
#include <ATen/EmptyTensor.h>
#include <torch/extension.h>

#include <cstring>
#include <optional>
#include <string>
#include <tuple>

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

// A new contiguous CPU tensor (zeroed if asked), allocated without a trip through the dispatcher: at::empty_like's
// and at::zeros' few microseconds of dispatch grow several-fold on caches a kernel just swept (a cold coupling
// forward at 1x2x1x1: 48 -> 44 us with its two allocations made here).
inline at::Tensor new_cpu(at::IntArrayRef sizes, at::ScalarType type, bool zero = false) {
  at::Tensor t(at::detail::empty_cpu(sizes, type));
  if (zero && t.nbytes()) std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

inline const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Whether a tensor carries a forward-mode AD tangent: the kernels have no formula for it, the op's reference does
// (check_data answers false for such data tensors; entries test their parameters with this).
inline bool has_tangent(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (t->_fw_grad(0).defined()) return true;
  return false;
}

// flowkern/ops/ hands the entry points its calls before checking them (eager.fast), and they are importable on their
// own (flowkern._C_eager.*): every argument is checked here, cheaply, before a kernel sees a pointer.
// `data`: the op's data tensors (x, h, ...). Returns false for a call these entries do not take, which the entry
// answers with None and flowkern/ops/ converts or dispatches: a tensor not on the CPU, not float32/float64, of
// another dtype than the first, not contiguous, empty, or carrying a forward-mode tangent (those the Python path
// handles; an exception here would cost ~10 us per call). Raises, naming the tensor, for a call that is malformed:
// not 4-D, or another batch or frame size than the first.
inline bool check_data(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> data) {
  const at::Tensor& first = *data.begin()->second;
  for (const auto& [name, t] : data) {
    TORCH_CHECK(t->defined(), "flowkern._C_eager.", op, ": ", name, " is undefined");
    if (!t->device().is_cpu() || (t->scalar_type() != at::kFloat && t->scalar_type() != at::kDouble) ||
        t->scalar_type() != first.scalar_type() || !t->is_contiguous() || t->numel() == 0 || has_tangent({t}))
      return false;
  }
  for (const auto& [name, t] : data) {
    TORCH_CHECK(t->dim() == 4, "flowkern._C_eager.", op, ": ", name, " must be 4-D (B, C, H, W), got ", t->sizes());
    TORCH_CHECK(t->size(0) == first.size(0) && t->size(2) == first.size(2) && t->size(3) == first.size(3),
                "flowkern._C_eager.", op, ": ", name, " has shape ", t->sizes(), ", ", data.begin()->first, " ",
                first.sizes());
  }
  return true;
}

// An entry's answer: (y, logdet), or None for a call it does not take (check_data).
using Result = std::optional<std::tuple<at::Tensor, at::Tensor>>;

// Whether the call records an autograd node: grad mode on and an input that requires grad.
inline bool records(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs)
    if (t->requires_grad()) return true;
  return false;
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

// A C++ autograd node of ours, as torch's own ops make theirs (a Node subclass whose apply() calls the backward
// kernel; created with make_node, linked with link_node). At Glow-step sizes an autograd::Function's generic
// machinery (an AutogradContext, its saved_data map, the output wrapping and the grad materialisation) costs
// several times the node itself, on cold caches after a kernel streamed megabytes. Torch 2.12 moved nodes from
// std::shared_ptr to c10::intrusive_ptr: make_node builds whichever this torch uses.
template <typename N>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>) {
    return c10::make_intrusive<N>();
  } else {
    return std::shared_ptr<N>(new N(), [](auto* node) { deleteNode(node); });  // torch's deleter: no deep recursion
  }
}

// The node's inputs' gradient edges, and the node as the grad_fn of its outputs (output i: the node's input i).
template <typename Ptr>
void link_node(const Ptr& node, std::initializer_list<const at::Tensor*> inputs,
               std::initializer_list<at::Tensor*> outputs) {
  torch::autograd::edge_list edges;
  for (const at::Tensor* t : inputs) edges.push_back(torch::autograd::impl::gradient_edge(*t));
  node->set_next_edges(std::move(edges));
  for (at::Tensor* t : outputs) torch::autograd::create_gradient_edge(*t, node);
}

// Under create_graph=True a backward must itself be differentiable: the autograd nodes here then call back into
// Python (flowkern/ops/eager.py registers the function with set_double_backward), which computes the same
// gradients in torch ops. tensors: the node's saved tensors and incoming gradients (undefined: None); flags: the
// op's options. Returns one gradient per input (undefined where Python gave None). Defined in module.cpp.
std::vector<at::Tensor> double_backward(const std::string& op, const std::vector<at::Tensor>& tensors,
                                        const std::vector<bool>& flags);

}  // namespace eager
}  // namespace flowkern
