// flowkern._C: thin pybind11 wrappers over raw pointers (no torch, no logic). Checks live in flowkern/ops/.
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/cpu_ops.h"
#ifdef FLOWKERN_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace py = pybind11;
using u = uintptr_t;
#define P(a) reinterpret_cast<void*>(a)
#define CP(a) reinterpret_cast<const void*>(a)

PYBIND11_MODULE(_C, m) {
  m.doc() = "flowkern native kernels (CPU always; CUDA when built with nvcc)";
  m.attr("cuda_archs") = FLOWKERN_CUDA_ARCHS;
  py::module_ cpu = m.def_submodule("cpu", "OpenMP CPU kernels");
  // The GIL is released: kernels only touch raw memory the caller keeps alive.
  auto nogil = py::call_guard<py::gil_scoped_release>();
  cpu.def("channel_affine_fwd", [](int dt, u x, u A, u c, u y, int64_t B, int64_t C, int64_t HW, int nt) {
        return flowkern::cpu::channel_affine_fwd(dt, CP(x), CP(A), CP(c), P(y), B, C, HW, nt); }, nogil);
  cpu.def("channel_affine_bwd", [](int dt, u x, u dy, u A, u dx, u dA, u dc, int64_t B, int64_t C, int64_t HW,
                                   int64_t chunk, int nt) {
        return flowkern::cpu::channel_affine_bwd(dt, CP(x), CP(dy), CP(A), P(dx), P(dA), P(dc), B, C, HW, chunk, nt); },
        nogil);
  cpu.def("coupling_fwd", [](int dt, u x, u h, u y, u ld, int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine,
                             int64_t chunk, int nt) {
        return flowkern::cpu::coupling_fwd(dt, CP(x), CP(h), P(y), P(ld), B, C, Ca, HW, affine, chunk, nt); }, nogil);
  cpu.def("coupling_inv", [](int dt, u y, u h, u x, u ld, int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine,
                             int64_t chunk, int nt) {
        return flowkern::cpu::coupling_inv(dt, CP(y), CP(h), P(x), P(ld), B, C, Ca, HW, affine, chunk, nt); }, nogil);
  cpu.def("coupling_bwd", [](int dt, u y, u h, u dy, u dld, u dx, u dh, int64_t B, int64_t C, int64_t Ca, int64_t HW,
                             bool affine, int nt) {
        return flowkern::cpu::coupling_bwd(dt, CP(y), CP(h), CP(dy), CP(dld), P(dx), P(dh), B, C, Ca, HW, affine, nt); },
        nogil);

#ifdef FLOWKERN_WITH_CUDA
  m.attr("with_cuda") = true;
  py::module_ cu = m.def_submodule("cuda", "CUDA kernels, launched on the given stream");
  cu.def("channel_affine_fwd", [](int dt, u x, u A, u c, u y, int64_t B, int64_t C, int64_t HW, u s) {
        return flowkern::cuda::channel_affine_fwd(dt, CP(x), CP(A), CP(c), P(y), B, C, HW, s); }, nogil);
  cu.def("channel_affine_bwd", [](int dt, u x, u dy, u A, u dx, u dA, u dc, int64_t B, int64_t C, int64_t HW,
                                  int64_t chunk, u s) {
        return flowkern::cuda::channel_affine_bwd(dt, CP(x), CP(dy), CP(A), P(dx), P(dA), P(dc), B, C, HW, chunk, s); },
        nogil);
  cu.def("coupling_fwd", [](int dt, u x, u h, u y, u ld, int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine,
                            int64_t chunk, u s) {
        return flowkern::cuda::coupling_fwd(dt, CP(x), CP(h), P(y), P(ld), B, C, Ca, HW, affine, chunk, s); }, nogil);
  cu.def("coupling_inv", [](int dt, u y, u h, u x, u ld, int64_t B, int64_t C, int64_t Ca, int64_t HW, bool affine,
                            int64_t chunk, u s) {
        return flowkern::cuda::coupling_inv(dt, CP(y), CP(h), P(x), P(ld), B, C, Ca, HW, affine, chunk, s); }, nogil);
  cu.def("coupling_bwd", [](int dt, u y, u h, u dy, u dld, u dx, u dh, int64_t B, int64_t C, int64_t Ca, int64_t HW,
                            bool affine, u s) {
        return flowkern::cuda::coupling_bwd(dt, CP(y), CP(h), CP(dy), CP(dld), P(dx), P(dh), B, C, Ca, HW, affine, s); },
        nogil);
  cu.def("device_count", []() {
        char why[256] = {0};
        int n = flowkern::cuda::device_count(why, sizeof(why));
        return py::make_tuple(n, std::string(why)); });
  cu.def("error_string", [](int code) { return std::string(flowkern::cuda::error_string(code)); });
  cu.def("max_channels", &flowkern::cuda::max_channels);
#else
  m.attr("with_cuda") = false;
#endif
}
