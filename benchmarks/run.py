"""flowkern benchmark suite: `python benchmarks/run.py [--suite smoke|quick|full] [--out PATH]`.

Detects the device and runs every benchmark available there, flowkern and its pure-PyTorch baselines side by side
in one process: fused ops (vs eager and torch.compile of the reference), FlowStep / Glow-level training steps,
memory vs depth, memory vs clip length, and the large-image Glow workload. Shows progress (tqdm), prints markdown
tables, and writes JSON + markdown + PNG plots to benchmarks/results/<device>-<suite>-<date>.*
"""
import argparse
import json
import os
import re
import sys
import time

import torch
from tqdm import tqdm

from flowkern.memory import keep_freed_cpu_memory
from flowkern.ops import eager as eager_entry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling modules, without shadowing flowkern
import bench_actnorm_invconv  # noqa: E402
import bench_actnorm_invconv_lu  # noqa: E402
import bench_affine_coupling  # noqa: E402
import bench_kernel_resources  # noqa: E402
import bench_channel_affine  # noqa: E402
import bench_compat  # noqa: E402
import bench_memory  # noqa: E402
import bench_models  # noqa: E402
import bench_video_data  # noqa: E402
import fused_op_bench  # noqa: E402
import roofline  # noqa: E402
import timing  # noqa: E402

OP_BENCHMARKS = [bench_channel_affine, bench_actnorm_invconv, bench_actnorm_invconv_lu, bench_affine_coupling]
DEPTH = "Memory vs depth (one Glow level)"
GLOW_DEPTH = "Memory vs depth (3-level Glow, reduced size)"
PER_FRAME = "VideoFlow memory per extra frame (real peak, small model)"
CGLOW_PER_FRAME = "CGlow memory per extra frame (real peak, small model)"
RFN_CHECK = "RFN training step: real peak vs meta-device estimate (small model)"
RFN_PLAN = "RFN at the thesis's BAIR setting: what fits 32 GB and 80 GB (meta-device estimate)"
BAIR = "VideoFlow bair: memory vs clip length"
PLAN = "VideoFlow bair: memory plan (fitted to three measured steps)"
CHECK = "Meta-device estimate vs real measurement"
LARGE = "Large-image Glow (256x256, batch 8, hidden 256)"
RESOURCES = "GPU kernel resources per launch config (compiled for sm_80/sm_90, no GPU: flowkern.ops.gpu_compile)"
ROOFLINE = "Roofline model: fused ops at VideoFlow bair shapes on an H100 SXM (benchmarks/roofline.py, no timing)"

OP_COLUMNS = ["op", "shape", "pass", "backend", "eager_ms", "eager_tf32_ms", "compiled_ms", "flowkern_ms",
              "flowkern_reversible_ms", "flowkern_reversible_unchunked_ms", "speedup_vs_eager", "speedup_vs_eager_tf32",
              "speedup_vs_compiled", "reversible_overhead", "chunking_overhead", "flowkern_GBps", "fraction_of_copy_bw"]


def markdown_table(rows, columns=None):
    columns = columns or list(dict.fromkeys(k for r in rows for k in r if k != "bench"))
    cols = [c for c in columns if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def taken(out: str) -> bool:
    return os.path.exists(out + ".md") or os.path.exists(out + ".json")


def free_name(out: str) -> str:
    """out, or out-2, out-3, ...: the first whose results do not exist yet (a second run the same day keeps the
    first)."""
    k, name = 1, out
    while taken(name):
        k += 1
        name = f"{out}-{k}"
    return name


def default_budget(device):
    """The device's memory on GPU. On CPU the clip-length benchmark measures a GPU training step's tensors on the
    meta device, so the default budget is that of an 80 GB GPU."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    return 80 * 10**9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["smoke", "quick", "full"], default="quick",
                   help="smoke: tiny sizes (tests); quick: minutes on a 2-core CPU (default); full: for a GPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default=None, help="output path without extension (default benchmarks/results/...)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="GB for the longest-clip estimate (default: the GPU's memory; 80 GB on CPU)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc as it is (by default the CPU run keeps freed memory, see "
                        "flowkern.memory.keep_freed_cpu_memory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results at --out (by default a run never replaces another: the default name "
                        "takes a free suffix, an --out that holds results is refused)")
    p.add_argument("--single-calls", action="store_true",
                   help="CPU: time one call per candidate per round instead of a block of back-to-back calls (the "
                        "cold-start latency of a call that follows the other candidates; see timing.median_times)")
    p.add_argument("--only", nargs="*", default=None,
                   choices=["ops", "train", "depth", "clip", "rfn", "large", "data", "compat", "roofline",
                            "resources"])
    args = p.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    suite = args.suite
    env = timing.environment(device)
    if device == "cpu":
        env["cpu_timing"] = "single calls" if args.single_calls else "blocks of back-to-back calls"
    if device == "cpu" and not args.default_malloc:
        # every variant runs in this one process, so all of them get the same allocator
        env["cpu_allocator"] = "freed memory kept" if keep_freed_cpu_memory() else "default"
    if device == "cpu":
        st = eager_entry.status()
        env["cpu_eager_entry"] = ("flowkern._C_eager" if st["available"] and st["enabled"]
                                  else f"Python ({st['reason']})")
    rounds = {"smoke": 3, "quick": 40, "full": 200}[suite]
    budget_s = {"smoke": 0.2, "quick": 3.0, "full": 20.0}[suite]
    min_rounds = {"smoke": 1, "quick": 15, "full": 25}[suite]

    def timer(fns):
        return timing.median_times(fns, device, warmup=1 if suite == "smoke" else 3, rounds=rounds,
                                   budget_s=budget_s, min_rounds=min_rounds, single_calls=args.single_calls)

    bandwidth = timing.copy_bandwidth(device) if device == "cuda" else None
    if bandwidth:
        env["copy_bandwidth_GBps"] = bandwidth / 1e9
    budget = args.memory_budget * 10**9 if args.memory_budget else default_budget(device)
    compile_baseline = not args.no_compile and suite != "smoke"
    want = set(args.only or ["ops", "train", "depth", "clip", "rfn", "large", "data", "compat", "roofline"])
    print(f"flowkern benchmarks: {env['device']} | torch {env['torch']} | triton {env['triton']} | suite {suite}",
          flush=True)

    out = args.out
    if out is None:
        name = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()[:40]
        out = free_name(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                     f"{name}-{suite}-{env['date'][:10]}"))
    elif taken(out) and not args.overwrite:
        p.error(f"--out: {out}.md or {out}.json exists: choose another --out, or pass --overwrite")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    sections = {}
    took, clock = {}, [time.perf_counter()]

    def lap(part):  # the wall time of each part: the README's run-time claim comes from here
        now = time.perf_counter()
        took[part], clock[0] = now - clock[0], now

    total = (len(OP_BENCHMARKS) * fused_op_bench.count(device, suite) if "ops" in want else 0) + (
        bench_models.count(suite) if "train" in want else 0) + len({"depth", "clip", "rfn", "large"} & want) + (
        bench_video_data.count(suite) if "data" in want else 0) + (bench_compat.count(suite) if "compat" in want else 0)
    with tqdm(total=total, desc="benchmarks", unit="case") as bar:
        if "ops" in want:
            sections["Fused ops"] = [row for bench in OP_BENCHMARKS for row in bench.run(
                device, timer, suite=suite, compile_baseline=compile_baseline, progress=bar, bandwidth=bandwidth)]
            lap("ops")
        if "train" in want:
            sections["Training step (FlowStep / Glow level, VideoFlow-BAIR sizes)"] = list(
                bench_models.run(device, timer, suite, compile_baseline, bar))
            lap("train")
        if "depth" in want:
            sections[DEPTH] = bench_memory.memory_vs_depth(device, suite)
            sections[GLOW_DEPTH] = bench_memory.glow_vs_depth(device, suite)
            bar.update(1)
            lap("depth")
        if "clip" in want:
            sections[PER_FRAME] = bench_memory.videoflow_per_frame(device, suite)
            sections[CGLOW_PER_FRAME] = bench_memory.cglow_per_frame(device, suite)
            sections[BAIR], sections[PLAN], sections[CHECK] = bench_memory.videoflow_bair_estimate(
                device, suite, budget)
            bar.update(1)
            lap("clip")
        if "rfn" in want:
            sections[RFN_CHECK], sections[RFN_PLAN] = bench_memory.rfn_memory(device, suite)
            bar.update(1)
            lap("rfn")
        if "large" in want:
            rows = bench_memory.large_image(device, suite)
            if rows:
                sections[LARGE] = rows
            rows = bench_memory.glow_batch64(device, suite)
            if rows:
                sections["Glow 64x64, batch 64, L=3, K=32, hidden 512"] = rows
            bar.update(1)
            lap("large")
        if "data" in want:
            sections["Video loader (VideoFolder, mp4 clips)"] = bench_video_data.run(suite, progress=bar)
            lap("data")
        if "compat" in want:  # each adapter against the code it stands in for; skipped where that is not installed
            for title, rows in bench_compat.sections(device, timer, suite, progress=bar):
                sections[title] = rows
            lap("compat")
    if "roofline" in want:  # a model, no timing: costs nothing, so every suite has it
        sections[ROOFLINE] = roofline.run()
        lap("roofline")
    if "resources" in (args.only or ([] if suite == "smoke" else ["resources"])):  # compiles: not in the smoke suite
        sections[RESOURCES] = bench_kernel_resources.run()
        lap("resources")
    env["run_seconds"] = took

    plots = []
    for title, key, columns, ylabel, fname, rows_of in (
            (DEPTH, "K", ["plain_peak_MB", "checkpoint_peak_MB", "reversible_peak_MB"], "peak MiB of a training step",
             "depth", None),
            (BAIR, "T", ["plain_GB", "flowkern_GB"], "peak GB of a training step" + (
                "" if device == "cuda" else " (estimate, meta device)"), "clip", lambda r: r["batch"] == 8),
            (LARGE, "K", ["plain_GB", "reversible_GB"], "peak GB of a training step" + (
                "" if device == "cuda" else " (estimate, meta device)"), "large", None)):
        rows = [r for r in sections.get(title, []) if rows_of is None or rows_of(r)]
        if rows:
            path = f"{out}-{fname}.png"
            bench_memory.plot(rows, path, key, columns, ylabel, f"{title} ({device})")
            plots.append(os.path.basename(path))
    unit = ("real peak of a training step: every tensor alive in forward and backward (" +
            ("torch.cuda.max_memory_allocated" if device == "cuda" else "flowkern.memory.PeakMemory") +
            "); rows marked 'estimate (meta device)' run the same tracker on shapes alone; *_saved_MB: bytes saved for "
            "backward, a lower bound")
    text = [f"# flowkern benchmarks: {env['device']}", "",
            f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, commit {env['git_commit']}, "
            f"{env['date']}, suite `{suite}`, {env['cpu_threads']} CPU threads. Times are medians of interleaved "
            "rounds" + (f" ({env['cpu_timing']} per candidate and round)" if env.get("cpu_timing") else "") +
            "; speedups = baseline time / flowkern time, measured in the same run. Memory: " + unit + "."]
    text.append(f"Run time: {sum(took.values()) / 60:.1f} min (" +
                ", ".join(f"{part} {s / 60:.1f}" for part, s in took.items()) + ").")
    if env.get("cpu_allocator"):
        text.append(f"CPU allocator: glibc malloc, {env['cpu_allocator']} (`--default-malloc` to leave it as is).")
    if env.get("cpu_eager_entry"):
        text.append(f"Eager CPU calls of the fused ops enter through: {env['cpu_eager_entry']}.")
    if bandwidth:
        text.append(f"Measured device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write).")
    if device == "cuda":
        text.append("fp32 convolutions and matmuls run with TF32 off (eager, compiled and flowkern alike); "
                    "eager_tf32_ms is the eager reference with TF32 on.")
    for title, rows in sections.items():
        text += ["", f"## {title}", "", markdown_table(rows, OP_COLUMNS if title.startswith(("Fused", "Training"))
                                                       else roofline.COLUMNS if title == ROOFLINE
                                                       else bench_kernel_resources.COLUMNS if title == RESOURCES
                                                       else None)]
    text += [""] + [f"![{p}]({p})" for p in plots]
    md = "\n".join(text) + "\n"
    print("\n" + md)
    with open(out + ".json", "w") as f:
        json.dump({"environment": env, "suite": suite, "sections": sections}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(md)
    print(f"wrote {out}.json, {out}.md" + "".join(f", {p}" for p in plots))
    return sections


if __name__ == "__main__":
    main()
