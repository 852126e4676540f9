// flowkern._C: the params structs of kernels.h and every kernel, bound once for both devices. No torch, no logic:
// checks live in flowkern/ops/. Pointer fields are given from Python as integers (tensor.data_ptr(), 0 for null).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <unordered_map>

#include "cpu/common.h"
#include "kernels.h"
#ifdef FLOWKERN_WITH_CUDA
#include "cuda/status.h"
#endif

namespace py = pybind11;
using flowkern::ActNormInvConvParams;
using flowkern::AffineCouplingParams;
using flowkern::ChannelAffineParams;
using flowkern::Device;

// A params struct for Python: its fields as properties, and a constructor from keyword arguments (one call per launch:
// `ChannelAffineParams(x=ptr, B=2, ...)`, pointers as integer addresses, 0 for null; an unknown name raises).
template <typename S>
class ParamsClass {
 public:
  ParamsClass(py::module_& m, const char* name) : cls_(m, name) {
    cls_.def(py::init([setters = &setters_](py::kwargs kw) {
      S s;
      for (auto item : kw) {
        auto it = setters->find(item.first.cast<std::string>());
        if (it == setters->end()) throw py::key_error("no params field " + item.first.cast<std::string>());
        it->second(s, item.second);
      }
      return s;
    }));
  }
  template <typename Ptr>
  ParamsClass& pointer(const char* name, Ptr S::*field) {
    cls_.def_property(
        name, [field](const S& s) { return reinterpret_cast<uintptr_t>(s.*field); },
        [field](S& s, uintptr_t v) { s.*field = reinterpret_cast<Ptr>(v); });
    setters_[name] = [field](S& s, py::handle v) { s.*field = reinterpret_cast<Ptr>(v.cast<uintptr_t>()); };
    return *this;
  }
  template <typename T, typename Base>
  ParamsClass& value(const char* name, T Base::*field) {
    cls_.def_property(
        name, [field](const S& s) { return s.*field; }, [field](S& s, T v) { s.*field = v; });
    setters_[name] = [field](S& s, py::handle v) { s.*field = v.cast<T>(); };
    return *this;
  }

 private:
  py::class_<S> cls_;
  std::unordered_map<std::string, std::function<void(S&, py::handle)>> setters_;
};

// Every kernel of one device, same names and signatures on cpu and cuda. The GIL is released: kernels only touch
// memory the caller keeps alive.
template <Device D>
void def_kernels(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("channel_affine_fwd", &flowkern::channel_affine_fwd<D>, nogil);
  m.def("channel_affine_bwd", &flowkern::channel_affine_bwd<D>, nogil);
  m.def("affine_coupling_fwd", &flowkern::affine_coupling_fwd<D>, nogil);
  m.def("affine_coupling_inv", &flowkern::affine_coupling_inv<D>, nogil);
  m.def("affine_coupling_bwd", &flowkern::affine_coupling_bwd<D>, nogil);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "flowkern native kernels (CPU always; CUDA when built with nvcc)";
  m.attr("cuda_archs") = FLOWKERN_CUDA_ARCHS;
  m.attr("cuda_max_channels") = flowkern::kCudaMaxChannels;
  m.attr("cuda_bwd_parts") = flowkern::kCudaBwdParts;

  // The fields of every params struct (kernels.h), by the same names. The ParamsClass objects live as long as the
  // module: their constructors look fields up in them.
  static ParamsClass<ChannelAffineParams> ca(m, "ChannelAffineParams");
  ca.value("dtype", &flowkern::LaunchParams::dtype).value("nthreads", &flowkern::LaunchParams::nthreads)
      .value("stream", &flowkern::LaunchParams::stream)
      .pointer("x", &ChannelAffineParams::x).pointer("A", &ChannelAffineParams::A).pointer("c", &ChannelAffineParams::c)
      .pointer("y", &ChannelAffineParams::y).pointer("dy", &ChannelAffineParams::dy)
      .pointer("dx", &ChannelAffineParams::dx).pointer("dA", &ChannelAffineParams::dA)
      .pointer("dc", &ChannelAffineParams::dc).pointer("dA_part", &ChannelAffineParams::dA_part)
      .pointer("dc_part", &ChannelAffineParams::dc_part)
      .value("B", &ChannelAffineParams::B).value("C", &ChannelAffineParams::C).value("HW", &ChannelAffineParams::HW)
      .value("chunk", &ChannelAffineParams::chunk).value("parts", &ChannelAffineParams::parts);
  static ParamsClass<AffineCouplingParams> ac(m, "AffineCouplingParams");
  ac.value("dtype", &flowkern::LaunchParams::dtype).value("nthreads", &flowkern::LaunchParams::nthreads)
      .value("stream", &flowkern::LaunchParams::stream)
      .pointer("x", &AffineCouplingParams::x).pointer("y", &AffineCouplingParams::y)
      .pointer("h", &AffineCouplingParams::h).pointer("ld_part", &AffineCouplingParams::ld_part)
      .pointer("ld", &AffineCouplingParams::ld)
      .pointer("dy", &AffineCouplingParams::dy).pointer("dld", &AffineCouplingParams::dld)
      .pointer("dx", &AffineCouplingParams::dx).pointer("dh", &AffineCouplingParams::dh)
      .value("B", &AffineCouplingParams::B).value("C", &AffineCouplingParams::C).value("Ca", &AffineCouplingParams::Ca)
      .value("HW", &AffineCouplingParams::HW).value("chunk", &AffineCouplingParams::chunk)
      .value("affine", &AffineCouplingParams::affine).value("exp_scale", &AffineCouplingParams::exp_scale);

  static ParamsClass<ActNormInvConvParams> ai(m, "ActNormInvConvParams");
  ai.value("dtype", &flowkern::LaunchParams::dtype).value("nthreads", &flowkern::LaunchParams::nthreads)
      .value("stream", &flowkern::LaunchParams::stream)
      .pointer("x", &ActNormInvConvParams::x).pointer("s", &ActNormInvConvParams::s)
      .pointer("b", &ActNormInvConvParams::b).pointer("W", &ActNormInvConvParams::W)
      .pointer("ldw", &ActNormInvConvParams::ldw).pointer("y", &ActNormInvConvParams::y)
      .pointer("ld", &ActNormInvConvParams::ld).pointer("dy", &ActNormInvConvParams::dy)
      .pointer("dld", &ActNormInvConvParams::dld).pointer("dx", &ActNormInvConvParams::dx)
      .pointer("ds", &ActNormInvConvParams::ds).pointer("db", &ActNormInvConvParams::db)
      .pointer("dW", &ActNormInvConvParams::dW).pointer("dldw", &ActNormInvConvParams::dldw)
      .pointer("log_scale", &ActNormInvConvParams::log_scale).pointer("lower", &ActNormInvConvParams::lower)
      .pointer("upper", &ActNormInvConvParams::upper).pointer("log_s", &ActNormInvConvParams::log_s)
      .pointer("sign", &ActNormInvConvParams::sign).pointer("P", &ActNormInvConvParams::P)
      .pointer("dlog_scale", &ActNormInvConvParams::dlog_scale).pointer("dlower", &ActNormInvConvParams::dlower)
      .pointer("dupper", &ActNormInvConvParams::dupper).pointer("dlog_s", &ActNormInvConvParams::dlog_s)
      .value("B", &ActNormInvConvParams::B).value("C", &ActNormInvConvParams::C)
      .value("HW", &ActNormInvConvParams::HW).value("chunk", &ActNormInvConvParams::chunk);

  py::module_ cpu = m.def_submodule("cpu", "OpenMP CPU kernels");
  def_kernels<Device::kCPU>(cpu);
  // CPU only: the GPU backends form actnorm_invconv from channel_affine's kernels (kernels.h)
  cpu.def("actnorm_invconv_fwd", &flowkern::actnorm_invconv_fwd_cpu, py::call_guard<py::gil_scoped_release>());
  cpu.def("actnorm_invconv_bwd", &flowkern::actnorm_invconv_bwd_cpu, py::call_guard<py::gil_scoped_release>());
  cpu.attr("coupling_chunk") = flowkern::kCpuCouplingChunk;
  cpu.attr("pixel_chunk") = flowkern::kCpuPixelChunk;
  cpu.def("vector_isa", []() { return std::string(flowkern::cpu::cpu_vector_isa()); },
          "the vector build the float kernels run here: avx512, avx2 or baseline (FLOWKERN_CPU_AVX512=0: not avx512)");
#ifdef FLOWKERN_WITH_CUDA
  m.attr("with_cuda") = true;
  py::module_ cu = m.def_submodule("cuda", "CUDA kernels, launched on params.stream");
  def_kernels<Device::kCUDA>(cu);
  cu.def("device_count", []() {
    char why[256] = {0};
    int n = flowkern::cuda::device_count(why, sizeof(why));
    return py::make_tuple(n, std::string(why));
  });
  cu.def("error_string", [](int code) { return std::string(flowkern::cuda::error_string(code)); });
#else
  m.attr("with_cuda") = false;
#endif
}
