"""A float32 dot compiled with a given input precision: flowkern.ops.gpu_compile.probe_dot_precisions compiles it to
check that its TTIR parser reads each precision back right on the installed Triton. Not used at run time."""
import triton
import triton.language as tl


@triton.jit
def probe_dot_kernel(a_ptr, c_ptr, PRECISION: tl.constexpr):
    r = tl.arange(0, 16)
    a = tl.load(a_ptr + r[:, None] * 16 + r[None, :])
    tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, a, input_precision=PRECISION))
