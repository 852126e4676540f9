// affine_coupling's eager CPU entry: forward (and its autograd node) in C++ around the kernels of
// csrc/cpu/affine_coupling.cpp; the same passes, partial sums and results as flowkern/ops/affine_coupling.py's path.
#include "eager/common.h"

namespace flowkern {
namespace eager {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// y = coupling(x, h) and the per-sample logdet, which the kernel sums from its fixed partials (as on the Python path).
std::pair<at::Tensor, at::Tensor> forward_pass(const at::Tensor& x, const at::Tensor& h, bool affine, bool exp_scale) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Ca = C / 2;
  at::Tensor y = at::empty_like(x);
  const auto ld_options = x.options().dtype(acc_type(x));
  at::Tensor ld = affine ? at::empty({B}, ld_options) : at::zeros({B}, ld_options);
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

struct AffineCouplingFunction : public torch::autograd::Function<AffineCouplingFunction> {
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& h, bool affine,
                             bool exp_scale) {
    auto [y, ld] = forward_pass(x, h, affine, exp_scale);
    ctx->save_for_backward({y, h});  // y and h suffice (ops/affine_coupling.py)
    ctx->saved_data["affine"] = affine;
    ctx->saved_data["exp_scale"] = exp_scale;
    return {y, ld};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &h = saved[1];
    const bool affine = ctx->saved_data["affine"].toBool(), exp_scale = ctx->saved_data["exp_scale"].toBool();
    const at::Tensor dy = grads[0].contiguous(), dld = grads[1].contiguous();
    if (at::GradMode::is_enabled()) {  // create_graph=True: the backward in differentiable torch ops
      auto g = double_backward("affine_coupling", {y, h, dy, dld}, {affine, exp_scale});
      return {g[0], g[1], at::Tensor(), at::Tensor()};
    }
    at::Tensor dx = at::empty_like(y), dh = at::empty_like(h);
    AffineCouplingParams p;
    p.dtype = dtype_code(y);
    p.nthreads = at::get_num_threads();
    p.y = y.data_ptr();
    p.h = h.data_ptr();
    p.dy = dy.data_ptr();
    p.dld = dld.data_ptr();
    p.dx = dx.data_ptr();
    p.dh = dh.data_ptr();
    p.B = y.size(0), p.C = y.size(1), p.Ca = y.size(1) / 2, p.HW = y.size(2) * y.size(3);
    p.affine = affine, p.exp_scale = exp_scale;
    check(affine_coupling_bwd<Device::kCPU>(p), "affine_coupling_bwd");  // the engine's thread holds no GIL
    return {dx, dh, at::Tensor(), at::Tensor()};
  }
};

// x (B, C, H, W) and h (B, 2*Cb or Cb, H, W), contiguous CPU tensors of one dtype, B*C*H*W > 0, checked here
// (flowkern/ops/ calls this first and runs its Python checks when it refuses). An autograd node when grad mode is on
// and an input requires grad.
std::vector<at::Tensor> affine_coupling(const at::Tensor& x, const at::Tensor& h, bool affine, bool exp_scale) {
  check_data("affine_coupling", {{"x", &x}, {"h", &h}});
  const int64_t cb = x.size(1) - x.size(1) / 2;
  TORCH_CHECK(x.size(1) >= 2 && h.size(1) == (affine ? 2 * cb : cb), "flowkern._C_eager.affine_coupling: h has ",
              h.size(1), " channels, expected ", affine ? 2 * cb : cb, " for x's ", x.size(1));
  if (at::GradMode::is_enabled() && (x.requires_grad() || h.requires_grad()))
    return AffineCouplingFunction::apply(x, h, affine, exp_scale);
  auto [y, ld] = forward_pass(x, h, affine, exp_scale);
  return {y, ld};
}

}  // namespace

void def_affine_coupling(pybind11::module_& m) {
  m.def("affine_coupling", &affine_coupling, "(y, logdet) of the coupling; see flowkern.ops.affine_coupling");
}

}  // namespace eager
}  // namespace flowkern
