"""The fused ops on a GPU, both GPU backends side by side with the eager and compiled references (TF32 off in the
baselines, eager with TF32 on as well), at VideoFlow bair's levels (520 frames) and at batch 32: medians
(triton.testing.do_bench), GB/s, the fraction of the measured copy bandwidth and the roofline's prediction.
python benchmarks/gpu/ops.py OUT_PREFIX  ->  OUT_PREFIX.json, OUT_PREFIX.md. Needs only torch and triton."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the benchmarks folder


import bench_actnorm_invconv  # noqa: E402
import bench_affine_coupling  # noqa: E402
import bench_channel_affine  # noqa: E402
import fused_op_bench  # noqa: E402
import roofline  # noqa: E402
import timing  # noqa: E402
from flowkern import ops  # noqa: E402

BENCHES = {"channel_affine": bench_channel_affine, "actnorm_invconv": bench_actnorm_invconv,
           "affine_coupling": bench_affine_coupling}


def main(out):
    bw = timing.copy_bandwidth("cuda")
    env = timing.environment("cuda")
    env["copy_bandwidth_GBps"] = bw / 1e9
    print(f"{env['device']}: copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    predicted = {(r["op"], r["pass"], r["shape"]): r for r in roofline.run(bandwidth=bw)}
    timer = lambda fns: timing.median_times(fns, "cuda")  # noqa: E731
    rows = []
    for backend in ("triton", "cuda"):
        for name, bench in BENCHES.items():
            shapes = [s for s in fused_op_bench.SHAPES["cuda"]
                      if backend != "cuda" or name == "affine_coupling" or s[1] <= ops.max_channels("cuda")]
            for row in fused_op_bench.run(name, bench.case, "cuda", timer, suite="full", bandwidth=bw,
                                          backend=backend, shape_list=shapes):
                p = predicted.get((name, row["pass"], row["shape"]))
                if p is not None:
                    row["predicted_us"] = p.get("mem_us")
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    with open(out + ".json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    columns = ["op", "shape", "pass", "backend", "eager_ms", "eager_tf32_ms", "compiled_ms", "flowkern_ms",
               "predicted_us", "speedup_vs_eager", "speedup_vs_compiled", "flowkern_GBps", "fraction_of_copy_bw"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    with open(out + ".md", "w") as f:
        f.write(f"# Fused ops on {env['device']}\n\ncopy bandwidth {bw / 1e9:.0f} GB/s\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu-ops")
