"""Every CUDA and Triton kernel pass once, at sizes that exercise their edges, checked against the reference: the
program compute-sanitizer runs (memcheck, racecheck, synccheck) in benchmarks/gpu/session.sh. Prints one line per
case and exits 1 on a wrong result. KERNELS_ONCE_DEVICE=cpu (with TRITON_INTERPRET=1) dry-runs it on a CPU, with the
CPU kernels standing in for CUDA's."""
import os
import sys

import torch

import flowkern
from flowkern import ops
from flowkern.ops import dispatch

# (B, C, H, W): odd pixel counts; C at the CUDA channel_affine buckets (<= 16, <= 32) and above it (Triton only);
# 600 x 12 x 8 x 8 has more 32-pixel tiles than the CUDA backward's 512 persistent blocks
SHAPES = [(3, 5, 7, 9), (2, 12, 16, 17), (600, 12, 8, 8), (4, 24, 9, 11), (2, 32, 5, 5), (2, 48, 8, 8), (1, 256, 3, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
DEVICE = os.environ.get("KERNELS_ONCE_DEVICE", "cuda")
BACKENDS = ("cuda", "triton") if DEVICE == "cuda" else ("cpu", "triton")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def case(backend, shape, dtype):
    B, C, H, W = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(shape, device=DEVICE, generator=g).to(dtype).requires_grad_(True)
    h = torch.randn(B, 2 * (C - C // 2), H, W, device=DEVICE, generator=g).to(dtype).requires_grad_(True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    A = (torch.randn(C, C, device=DEVICE, generator=g, dtype=acc) / C ** 0.5).requires_grad_(True)
    c = torch.randn(C, device=DEVICE, generator=g, dtype=acc).requires_grad_(True)

    def passes(name):
        with flowkern.use_backend(name):
            y = ops.channel_affine(x, A, c)
            z, ld = ops.affine_coupling(y, h)
            back, _ = ops.affine_coupling_inverse(z.detach(), h.detach())
        loss = (z.double() * 0.37).sum() + ld.double().sum()
        return [y, z, ld, back] + list(torch.autograd.grad(loss, [x, A, c, h]))

    got, want = passes(backend), passes("torch")
    errs = [rel(a, b) for a, b in zip(got, want)]
    return max(errs)


def main():
    bad = 0
    for backend in BACKENDS:
        for shape in SHAPES:
            if backend == "cuda" and shape[1] > ops.max_channels("cuda"):
                continue
            for dtype in DTYPES:
                if backend == "cpu" and dtype in (torch.float16, torch.bfloat16):
                    continue
                err = case(backend, shape, dtype)
                ok = err <= TOL[dtype]
                bad += not ok
                print(f"{backend:6s} {'x'.join(map(str, shape)):12s} {str(dtype)[6:]:8s} max rel err {err:.2e} "
                      f"{'ok' if ok else 'WRONG'}", flush=True)
    dispatch.MAX_LAUNCH_BATCH = 7  # the batch split, on both GPU backends
    for backend in BACKENDS:
        err = case(backend, (20, 12, 5, 6), torch.float32)
        bad += err > TOL[torch.float32]
        print(f"{backend:6s} batch split 20 in launches of 7: max rel err {err:.2e}")
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
