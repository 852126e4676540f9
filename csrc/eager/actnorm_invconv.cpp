// actnorm_invconv's eager CPU entries, plain (s, b, W) and LU-parametrised (the layers' own parameters): forward and
// its autograd node in C++ around csrc/cpu/actnorm_invconv.cpp, which forms every derived tensor and every parameter
// gradient itself. The same passes and results as flowkern/ops/actnorm_invconv.py's CPU path.
#include "eager/common.h"

namespace flowkern {
namespace eager {
namespace {

// The parameters in the accumulation type, kept alive for the kernel call: plain (s, b, W, ldw) or LU (log_scale, b,
// lower, upper, log_s, sign, P).
struct KernelParams {
  std::vector<at::Tensor> held;
  ActNormInvConvParams p;
};

KernelParams plain_params(const at::Tensor& x, const at::Tensor& s, const at::Tensor& b, const at::Tensor& W,
                          const at::Tensor& ldw) {
  const auto t = acc_type(x);
  KernelParams k;
  k.held = {acc(s, t), acc(b, t), acc(W, t), acc(ldw, t)};
  k.p.s = k.held[0].data_ptr();
  k.p.b = k.held[1].data_ptr();
  k.p.W = k.held[2].data_ptr();
  k.p.ldw = k.held[3].data_ptr();
  return k;
}

// LU inputs in the order of ops.actnorm_invconv_lu: log_scale, bias, lower, upper, log_s, P, sign.
KernelParams lu_params(const at::Tensor& x, const std::vector<at::Tensor>& lu) {
  const auto t = acc_type(x);
  KernelParams k;
  for (const auto& v : lu) k.held.push_back(acc(v, t));
  k.p.log_scale = k.held[0].data_ptr();
  k.p.b = k.held[1].data_ptr();
  k.p.lower = k.held[2].data_ptr();
  k.p.upper = k.held[3].data_ptr();
  k.p.log_s = k.held[4].data_ptr();
  k.p.P = k.held[5].data_ptr();
  k.p.sign = k.held[6].data_ptr();
  return k;
}

void set_sizes(ActNormInvConvParams& p, const at::Tensor& x) {
  p.dtype = dtype_code(x);
  p.nthreads = at::get_num_threads();
  p.B = x.size(0), p.C = x.size(1), p.HW = x.size(2) * x.size(3);
}

std::pair<at::Tensor, at::Tensor> forward_pass(const at::Tensor& x, KernelParams&& k) {
  at::Tensor y = new_cpu(x.sizes(), x.scalar_type()), ld = new_cpu({x.size(0)}, acc_type(x));
  set_sizes(k.p, x);
  k.p.x = x.data_ptr();
  k.p.y = y.data_ptr();
  k.p.ld = ld.data_ptr();
  check(nogil([&] { return actnorm_invconv_fwd_cpu(k.p); }), "actnorm_invconv_fwd");
  return {y, ld};
}

// The backward pass from the input x: dx (undefined when dy is) and the parameter gradients, accumulated by the
// kernel into zeroed tensors of the accumulation type: (ds, db, dW, dldw) plain, (dlog_scale, db, dlower, dupper,
// dlog_s) LU.
std::vector<at::Tensor> backward_pass(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& dld,
                                      KernelParams&& k, bool lu) {
  const int64_t C = x.size(1);
  const auto t = acc_type(x);
  auto zeros = [t](at::IntArrayRef sizes) { return new_cpu(sizes, t, /*zero=*/true); };
  std::vector<at::Tensor> g;
  if (lu) {
    g = {zeros({C}), zeros({C}), zeros({C, C}), zeros({C, C}), zeros({C})};
    k.p.dlog_scale = g[0].data_ptr(), k.p.db = g[1].data_ptr(), k.p.dlower = g[2].data_ptr();
    k.p.dupper = g[3].data_ptr(), k.p.dlog_s = g[4].data_ptr();
  } else {
    g = {zeros({C}), zeros({C}), zeros({C, C}), zeros({})};
    k.p.ds = g[0].data_ptr(), k.p.db = g[1].data_ptr(), k.p.dW = g[2].data_ptr(), k.p.dldw = g[3].data_ptr();
  }
  at::Tensor dx = dy.defined() ? new_cpu(x.sizes(), x.scalar_type()) : at::Tensor();
  const at::Tensor dld_acc = dld.defined() ? acc(dld, t) : at::Tensor();
  set_sizes(k.p, x);
  k.p.x = x.data_ptr();
  k.p.dy = ptr_or_null(dy);
  k.p.dld = ptr_or_null(dld_acc);
  k.p.dx = dx.defined() ? dx.data_ptr() : nullptr;
  k.p.chunk = kCpuPixelChunk;
  check(actnorm_invconv_bwd_cpu(k.p), "actnorm_invconv_bwd");  // the engine's thread holds no GIL
  g.insert(g.begin(), dx);
  return g;
}

at::Tensor to_dtype(const at::Tensor& g, const at::Tensor& like) {
  return g.defined() ? g.to(like.scalar_type()) : g;
}

// The plain op's autograd node: inputs x, s, b, W, ldw. An output without a gradient stays undefined (a loss
// without y must not cost a kernel pass over zeros).
struct ActNormInvConvBackward final : torch::autograd::Node {
  torch::autograd::SavedVariable x, s, b, W, ldw;

  std::string name() const override { return "flowkern::ActNormInvConvBackward"; }
  void release_variables() override {
    for (auto* v : {&x, &s, &b, &W, &ldw}) v->reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor xv = x.unpack(), sv = s.unpack(), bv = b.unpack(), Wv = W.unpack(), ldwv = ldw.unpack();
    const at::Tensor dy = grads[0].defined() ? grads[0].contiguous() : grads[0];
    if (at::GradMode::is_enabled())  // create_graph=True: gradients in differentiable torch ops
      return double_backward("actnorm_invconv", {xv, sv, bv, Wv, ldwv, dy, grads[1]}, {});
    auto g = backward_pass(xv, dy, grads[1], plain_params(xv, sv, bv, Wv, ldwv), false);
    return {g[0], to_dtype(g[1], sv), to_dtype(g[2], bv), to_dtype(g[3], Wv), to_dtype(g[4], ldwv)};
  }
};

// The LU op's node: inputs x, log_scale, bias, lower, upper, log_s; P and sign are constants (saved, no edges).
struct ActNormInvConvLUBackward final : torch::autograd::Node {
  torch::autograd::SavedVariable x, log_scale, bias, lower, upper, log_s, P, sign;

  std::string name() const override { return "flowkern::ActNormInvConvLUBackward"; }
  void release_variables() override {
    for (auto* v : {&x, &log_scale, &bias, &lower, &upper, &log_s, &P, &sign}) v->reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::vector<at::Tensor> v;  // x, then the seven LU inputs
    for (auto* saved : {&x, &log_scale, &bias, &lower, &upper, &log_s, &P, &sign}) v.push_back(saved->unpack());
    const at::Tensor dy = grads[0].defined() ? grads[0].contiguous() : grads[0];
    std::vector<bool> wanted;
    for (int i = 0; i < 6; ++i) wanted.push_back(task_should_compute_output(i));
    if (at::GradMode::is_enabled()) {
      v.push_back(dy);
      v.push_back(grads[1]);
      auto out = double_backward("actnorm_invconv_lu", v, wanted);
      out.resize(6);  // P and sign: no edges
      return out;
    }
    const std::vector<at::Tensor> lu(v.begin() + 1, v.end());
    auto g = backward_pass(v[0], dy, grads[1], lu_params(v[0], lu), true);
    torch::autograd::variable_list out;
    for (int i = 0; i < 6; ++i) out.push_back(wanted[i] ? to_dtype(g[i], v[i]) : at::Tensor());
    return out;
  }
};

// x (B, C, H, W) and the layer's parameters. None for a call check_data leaves to flowkern/ops/ (or a parameter with
// a forward-mode tangent); raises for a malformed one. An autograd node when grad mode is on and an input requires
// grad.
Result actnorm_invconv(const at::Tensor& x, const at::Tensor& s, const at::Tensor& b, const at::Tensor& W,
                       const at::Tensor& ldw) {
  if (!check_data("actnorm_invconv", {{"x", &x}})) return std::nullopt;
  const int64_t C = x.size(1);
  check_param("actnorm_invconv", "s", s, {C}), check_param("actnorm_invconv", "b", b, {C});
  check_param("actnorm_invconv", "W", W, {C, C}), check_param("actnorm_invconv", "ldw", ldw, {});
  if (has_tangent({&s, &b, &W, &ldw})) return std::nullopt;
  auto [y, ld] = forward_pass(x, plain_params(x, s, b, W, ldw));
  if (records({&x, &s, &b, &W, &ldw})) {
    auto node = make_node<ActNormInvConvBackward>();
    link_node(node, {&x, &s, &b, &W, &ldw}, {&y, &ld});
    node->x = torch::autograd::SavedVariable(x, false), node->s = torch::autograd::SavedVariable(s, false);
    node->b = torch::autograd::SavedVariable(b, false), node->W = torch::autograd::SavedVariable(W, false);
    node->ldw = torch::autograd::SavedVariable(ldw, false);
  }
  return std::make_tuple(y, ld);
}

Result actnorm_invconv_lu(const at::Tensor& x, const at::Tensor& log_scale, const at::Tensor& bias,
                          const at::Tensor& lower, const at::Tensor& upper, const at::Tensor& log_s,
                          const at::Tensor& P, const at::Tensor& sign) {
  if (!check_data("actnorm_invconv_lu", {{"x", &x}})) return std::nullopt;
  const int64_t C = x.size(1);
  const char* op = "actnorm_invconv_lu";
  check_param(op, "log_scale", log_scale, {C}), check_param(op, "bias", bias, {C});
  check_param(op, "lower", lower, {C, C}), check_param(op, "upper", upper, {C, C});
  check_param(op, "log_s", log_s, {C}), check_param(op, "P", P, {C, C}), check_param(op, "sign", sign, {C});
  if (has_tangent({&log_scale, &bias, &lower, &upper, &log_s, &P, &sign})) return std::nullopt;
  auto [y, ld] = forward_pass(x, lu_params(x, {log_scale, bias, lower, upper, log_s, P, sign}));
  if (records({&x, &log_scale, &bias, &lower, &upper, &log_s})) {
    auto node = make_node<ActNormInvConvLUBackward>();
    link_node(node, {&x, &log_scale, &bias, &lower, &upper, &log_s}, {&y, &ld});
    auto* n = node.get();
    for (auto [saved, t] : {std::pair{&n->x, &x}, {&n->log_scale, &log_scale}, {&n->bias, &bias}, {&n->lower, &lower},
                            {&n->upper, &upper}, {&n->log_s, &log_s}, {&n->P, &P}, {&n->sign, &sign}})
      *saved = torch::autograd::SavedVariable(*t, false);
  }
  return std::make_tuple(y, ld);
}

}  // namespace

void def_actnorm_invconv(pybind11::module_& m) {
  m.def("actnorm_invconv", &actnorm_invconv,
        "(y, logdet), or None for a call left to flowkern.ops.actnorm_invconv (see there)");
  m.def("actnorm_invconv_lu", &actnorm_invconv_lu,
        "(y, logdet), or None for a call left to flowkern.ops.actnorm_invconv_lu (see there)");
}

}  // namespace eager
}  // namespace flowkern
