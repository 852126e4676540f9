"""The CPU kernels' vector builds (csrc/cpu/common.h): AVX-512 at full width where the CPU has it, else AVX2 + FMA or
the baseline. Each build a machine can run is checked against the float64 reference, so an AVX-512 machine also covers
the AVX2 build (FLOWKERN_CPU_AVX512=0, read once per process: hence a subprocess)."""
import os
import platform
import subprocess
import sys

import pytest

import flowkern  # noqa: F401  (builds on import errors are reported by test_dispatch)
from flowkern import _ext

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where _helpers lives

# Odd sizes and channel counts off the blocks' multiples (5, 33), the register blocks' own (12, 48), pixel counts
# below, at and above one 16- and 32-pixel block and one 256-pixel tile.
SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from _helpers import check_close
import flowkern
from flowkern import ops, _ext
torch.manual_seed(0)
for B, C, H, W in [(2, 5, 37, 41), (3, 12, 9, 9), (2, 48, 16, 16), (1, 33, 7, 5), (2, 24, 4, 8)]:
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    A = torch.randn(C, C, dtype=torch.float64) / C ** 0.5
    c = torch.randn(C, dtype=torch.float64)
    h = torch.randn(B, 2 * (C - C // 2), H, W, dtype=torch.float64)
    R = torch.randn(B, C, H, W, dtype=torch.float64)
    r = torch.randn(B, dtype=torch.float64)
    ins = [t.float().requires_grad_(True) for t in (x, A, c)]
    with flowkern.use_backend("cpu"):
        y = ops.channel_affine(*ins)
    ins64 = [t.clone().requires_grad_(True) for t in (x, A, c)]
    y64 = ops.channel_affine_ref(*ins64)
    check_close(y, y64, torch.float32, f"channel_affine y {C}")
    g = torch.autograd.grad((y.double() * R).sum(), ins)
    g64 = torch.autograd.grad((y64 * R).sum(), ins64)
    for name, a, b in zip(("dx", "dA", "dc"), g, g64):
        check_close(a, b, torch.float32, f"channel_affine {name} {C}")
    for scale in ("sigmoid", "exp"):
        hs = h if scale == "sigmoid" else h.tanh()
        xf, hf = x.float().requires_grad_(True), hs.float().requires_grad_(True)
        with flowkern.use_backend("cpu"):
            z, ld = ops.affine_coupling(xf, hf, scale=scale)
            xi, ldi = ops.affine_coupling_inverse(z.detach(), hf.detach(), scale=scale)
        x64, h64 = x.clone().requires_grad_(True), hs.clone().requires_grad_(True)
        z64, ld64 = ops.affine_coupling_ref(x64, h64, scale=scale)
        check_close(z, z64, torch.float32, f"coupling y {scale} {C}")
        check_close(ld, ld64, torch.float32, f"coupling logdet {scale} {C}")
        check_close(xi, x, torch.float32, f"coupling inverse {scale} {C}")
        check_close(ldi, -ld64, torch.float32, f"coupling inverse logdet {scale} {C}")
        g = torch.autograd.grad((z.double() * R).sum() + (ld.double() * r).sum(), (xf, hf))
        g64 = torch.autograd.grad((z64 * R).sum() + (ld64 * r).sum(), (x64, h64))
        for name, a, b in zip(("dx", "dh"), g, g64):
            check_close(a, b, torch.float32, f"coupling {name} {scale} {C}")
print(_ext._C.cpu.vector_isa())
"""


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def run_script(env_extra, cwd):
    """The script in a fresh interpreter, run from `cwd`: not the repository root, whose flowkern/ source folder (no
    built extension in a non-editable install) would shadow the installed package."""
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT, TESTS], capture_output=True, text=True, env=env, timeout=600,
                         cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_vector_isa_is_the_widest_the_cpu_has():
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or flags is None:
        pytest.skip("the vector builds are x86-64 Linux ones; this machine runs the plain build")
    isa = _ext._C.cpu.vector_isa()
    if os.environ.get("FLOWKERN_CPU_AVX512") == "0":
        assert isa != "avx512"
    elif {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        assert isa == "avx512"
    elif {"avx2", "fma", "bmi2"} <= flags:
        assert isa == "avx2"
    else:
        assert isa == "baseline"


def test_every_vector_build_matches_the_float64_reference(tmp_path):
    """The default build, then (where it differs) the one FLOWKERN_CPU_AVX512=0 leaves."""
    default = run_script({}, tmp_path)
    assert default == _ext._C.cpu.vector_isa()
    if default == "avx512":
        assert run_script({"FLOWKERN_CPU_AVX512": "0"}, tmp_path) in ("avx2", "baseline")
