// flowkern._C_eager: the module, and the double-backward callback the autograd nodes share (common.h).
#include "eager/common.h"

namespace py = pybind11;

namespace flowkern {
namespace eager {
namespace {
// Leaked on purpose: a Python object must not be released by a static destructor after the interpreter is gone.
py::object* g_double_backward = nullptr;
}  // namespace

std::vector<at::Tensor> double_backward(const std::string& op, const std::vector<at::Tensor>& tensors,
                                        const std::vector<bool>& flags) {
  py::gil_scoped_acquire gil;
  TORCH_CHECK(g_double_backward != nullptr, "flowkern._C_eager: no double-backward function registered");
  py::list args;
  for (const auto& t : tensors) args.append(t.defined() ? py::cast(t) : py::none());
  py::list opts;
  for (bool f : flags) opts.append(f);
  py::object out = (*g_double_backward)(op, args, opts);
  std::vector<at::Tensor> grads;
  for (py::handle g : out) grads.push_back(g.is_none() ? at::Tensor() : g.cast<at::Tensor>());
  return grads;
}

void def_affine_coupling(py::module_& m);  // affine_coupling.cpp
void def_actnorm_invconv(py::module_& m);  // actnorm_invconv.cpp

}  // namespace eager
}  // namespace flowkern

PYBIND11_MODULE(_C_eager, m) {
  m.doc() = "flowkern's CPU kernels behind torch-linked eager entry points (autograd nodes in C++)";
  m.attr("torch_version") = FLOWKERN_TORCH_VERSION;  // the torch it was built against (setup.py)
  m.def("set_double_backward", [](py::function f) {
    delete flowkern::eager::g_double_backward;
    flowkern::eager::g_double_backward = new py::object(std::move(f));
  });
  flowkern::eager::def_affine_coupling(m);
  flowkern::eager::def_actnorm_invconv(m);
}
