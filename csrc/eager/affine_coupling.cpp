// affine_coupling's eager CPU entry: forward (and its autograd node) in C++ around the kernels of
// csrc/cpu/affine_coupling.cpp; the same passes, partial sums and results as flowkern/ops/affine_coupling.py's path.
#include "eager/common.h"

namespace flowkern {
namespace eager {
namespace {

// y = coupling(x, h) and the per-sample logdet, which the kernel sums from its fixed partials (as on the Python path).
std::pair<at::Tensor, at::Tensor> forward_pass(const at::Tensor& x, const at::Tensor& h, bool affine, bool exp_scale) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Ca = C / 2;
  at::Tensor y = new_cpu(x.sizes(), x.scalar_type()), ld = new_cpu({B}, acc_type(x), /*zero=*/!affine);
  AffineCouplingParams p;
  p.dtype = dtype_code(x);
  p.nthreads = at::get_num_threads();
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.h = h.data_ptr();
  p.ld = affine ? ld.data_ptr() : nullptr;
  p.B = B, p.C = C, p.Ca = Ca, p.HW = HW, p.chunk = kCpuCouplingChunk, p.affine = affine, p.exp_scale = exp_scale;
  check(nogil([&] { return affine_coupling_fwd<Device::kCPU>(p); }), "affine_coupling_fwd");
  return {y, ld};
}

// The coupling's autograd node: dx, dh from the saved y and h (y and h suffice: ops/affine_coupling.py).
struct AffineCouplingBackward final : torch::autograd::Node {
  torch::autograd::SavedVariable y, h;
  bool affine = true, exp_scale = false;

  std::string name() const override { return "flowkern::AffineCouplingBackward"; }
  void release_variables() override {
    y.reset_data();
    h.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor yv = y.unpack(getptr()), hv = h.unpack();
    // An output that got no gradient: zeros for dy, no term for the logdet (the kernel reads dld only if given)
    const at::Tensor dy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(yv);
    at::Tensor dld = grads[1].defined() ? grads[1].contiguous() : at::Tensor();
    if (at::GradMode::is_enabled()) {  // create_graph=True: the backward in differentiable torch ops
      if (!dld.defined()) dld = new_cpu({yv.size(0)}, acc_type(yv), /*zero=*/true);
      return double_backward("affine_coupling", {yv, hv, dy, dld}, {affine, exp_scale});
    }
    at::Tensor dx = new_cpu(yv.sizes(), yv.scalar_type()), dh = new_cpu(hv.sizes(), hv.scalar_type());
    AffineCouplingParams p;
    p.dtype = dtype_code(yv);
    p.nthreads = at::get_num_threads();
    p.y = yv.data_ptr();
    p.h = hv.data_ptr();
    p.dy = dy.data_ptr();
    p.dld = ptr_or_null(dld);
    p.dx = dx.data_ptr();
    p.dh = dh.data_ptr();
    p.B = yv.size(0), p.C = yv.size(1), p.Ca = yv.size(1) / 2, p.HW = yv.size(2) * yv.size(3);
    p.affine = affine, p.exp_scale = exp_scale;
    check(affine_coupling_bwd<Device::kCPU>(p), "affine_coupling_bwd");  // the engine's thread holds no GIL
    return {dx, dh};
  }
};

// x (B, C, H, W) and h (B, 2*Cb or Cb, H, W); scale "sigmoid" or "exp". None for a call check_data leaves to
// flowkern/ops/; raises for a malformed one. An autograd node when grad mode is on and an input requires grad.
Result affine_coupling(const at::Tensor& x, const at::Tensor& h, bool affine, const std::string& scale) {
  if (!check_data("affine_coupling", {{"x", &x}, {"h", &h}})) return std::nullopt;
  TORCH_CHECK(scale == "sigmoid" || scale == "exp", "flowkern._C_eager.affine_coupling: scale must be \"sigmoid\" or "
              "\"exp\", got \"", scale, "\"");
  const bool exp_scale = scale == "exp";
  const int64_t cb = x.size(1) - x.size(1) / 2;
  TORCH_CHECK(x.size(1) >= 2 && h.size(1) == (affine ? 2 * cb : cb), "flowkern._C_eager.affine_coupling: h has ",
              h.size(1), " channels, expected ", affine ? 2 * cb : cb, " for x's ", x.size(1));
  auto [y, ld] = forward_pass(x, h, affine, exp_scale);
  if (records({&x, &h})) {
    auto node = make_node<AffineCouplingBackward>();
    link_node(node, {&x, &h}, {&y, &ld});
    node->y = torch::autograd::SavedVariable(y, /*is_output=*/true);
    node->h = torch::autograd::SavedVariable(h, /*is_output=*/false);
    node->affine = affine, node->exp_scale = exp_scale;
  }
  return std::make_tuple(y, ld);
}

}  // namespace

void def_affine_coupling(pybind11::module_& m) {
  m.def("affine_coupling", &affine_coupling,
        "(y, logdet) of the coupling, or None for a call left to flowkern.ops.affine_coupling (see there)");
}

}  // namespace eager
}  // namespace flowkern
