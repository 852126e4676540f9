// flowkern._C: the params structs of kernels.h and every kernel, bound once for both devices. No torch, no logic:
// checks live in flowkern/ops/. Pointer fields are set from Python as integers (tensor.data_ptr(), 0 for null).
#include <pybind11/pybind11.h>

#include <string>

#include "kernels.h"
#ifdef FLOWKERN_WITH_CUDA
#include "cuda/status.h"
#endif

namespace py = pybind11;
using flowkern::AffineCouplingParams;
using flowkern::ChannelAffineParams;
using flowkern::Device;

// A pointer field of a params struct, read and written from Python as an integer address.
template <typename S, typename Ptr>
void def_pointer(py::class_<S, flowkern::LaunchParams>& cls, const char* name, Ptr S::*field) {
  cls.def_property(
      name, [field](const S& s) { return reinterpret_cast<uintptr_t>(s.*field); },
      [field](S& s, uintptr_t v) { s.*field = reinterpret_cast<Ptr>(v); });
}

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

  py::class_<flowkern::LaunchParams>(m, "LaunchParams")
      .def_readwrite("dtype", &flowkern::LaunchParams::dtype)
      .def_readwrite("nthreads", &flowkern::LaunchParams::nthreads)
      .def_readwrite("stream", &flowkern::LaunchParams::stream);

  py::class_<ChannelAffineParams, flowkern::LaunchParams> ca(m, "ChannelAffineParams");
  ca.def(py::init<>());
  for (auto [name, field] : {std::pair{"x", &ChannelAffineParams::x}, {"A", &ChannelAffineParams::A},
                             {"c", &ChannelAffineParams::c}, {"dy", &ChannelAffineParams::dy}})
    def_pointer(ca, name, field);
  for (auto [name, field] : {std::pair{"y", &ChannelAffineParams::y}, {"dx", &ChannelAffineParams::dx},
                             {"dA_part", &ChannelAffineParams::dA_part}, {"dc_part", &ChannelAffineParams::dc_part}})
    def_pointer(ca, name, field);
  ca.def_readwrite("B", &ChannelAffineParams::B)
      .def_readwrite("C", &ChannelAffineParams::C)
      .def_readwrite("HW", &ChannelAffineParams::HW)
      .def_readwrite("chunk", &ChannelAffineParams::chunk);

  py::class_<AffineCouplingParams, flowkern::LaunchParams> ac(m, "AffineCouplingParams");
  ac.def(py::init<>());
  for (auto [name, field] : {std::pair{"h", &AffineCouplingParams::h}, {"dy", &AffineCouplingParams::dy},
                             {"dld", &AffineCouplingParams::dld}})
    def_pointer(ac, name, field);
  for (auto [name, field] : {std::pair{"x", &AffineCouplingParams::x}, {"y", &AffineCouplingParams::y},
                             {"ld_part", &AffineCouplingParams::ld_part}, {"dx", &AffineCouplingParams::dx},
                             {"dh", &AffineCouplingParams::dh}})
    def_pointer(ac, name, field);
  ac.def_readwrite("B", &AffineCouplingParams::B)
      .def_readwrite("C", &AffineCouplingParams::C)
      .def_readwrite("Ca", &AffineCouplingParams::Ca)
      .def_readwrite("HW", &AffineCouplingParams::HW)
      .def_readwrite("chunk", &AffineCouplingParams::chunk)
      .def_readwrite("affine", &AffineCouplingParams::affine);

  py::module_ cpu = m.def_submodule("cpu", "OpenMP CPU kernels");
  def_kernels<Device::kCPU>(cpu);
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
