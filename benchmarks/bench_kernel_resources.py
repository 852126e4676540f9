"""Registers, spills, shared memory and occupancy of every GPU kernel, from compilation alone (no GPU needed).

One row per (arch, kernel, launch config): the Triton configs the dispatch can pick and the CUDA kernels of
csrc/cuda, compiled for sm_80 and sm_90 by flowkern.ops.gpu_compile (tests/ops/test_gpu_compile.py asserts on the
same rows). The first run compiles everything (minutes on 2 cores); later runs read Triton's and flowkern's caches.
"""
import sys

from flowkern.ops import gpu_compile

COLUMNS = ["arch", "source", "kernel", "config", "warps", "regs", "spill_bytes", "smem", "blocks_per_sm", "occupancy",
           "limiter", "dots", "smem_note"]


def run(archs=(80, 90)):
    rows = []
    for arch in archs:
        for name, resources in (("triton", gpu_compile.triton_resources), ("cuda", gpu_compile.cuda_resources)):
            try:
                found = resources(arch)
            except gpu_compile.CompilerMissing as e:  # say so in the table, never silently
                print(f"kernel resources: {name} sm_{arch} skipped: {e}", file=sys.stderr)
                rows.append({"arch": f"sm_{arch}", "source": name, "kernel": f"skipped: {e}"})
                continue
            for r in found:
                dots = sorted(set(r["dots"]))
                rows.append({**r, "arch": f"sm_{arch}", "kernel": r["kernel"].lstrip("_"),
                             "dots": " ".join(dots), "occupancy": round(r["occupancy"], 3)})
    return rows


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from run import markdown_table

    print(markdown_table(run(), COLUMNS))
