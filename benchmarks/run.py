"""flowkern benchmark suite: `python benchmarks/run.py [--suite quick|full] [--out PATH]`.

Detects the device, runs every benchmark available there with flowkern and its pure-PyTorch baselines side by side,
shows progress, prints a markdown table, and writes JSON + markdown to benchmarks/results/<device>-<date>.*
"""
import argparse
import json
import os
import re
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling modules, without shadowing flowkern
import bench_ops  # noqa: E402
import timing  # noqa: E402

COLUMNS = ["op", "shape", "pass", "backend", "eager_ms", "compiled_ms", "flowkern_ms", "speedup_vs_eager",
           "speedup_vs_compiled", "flowkern_GBps", "fraction_of_copy_bw"]


def markdown_table(rows, columns):
    cols = [c for c in columns if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["quick", "full"], default="quick")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default=None, help="output path without extension (default benchmarks/results/...)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    args = p.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    env = timing.environment(device)
    quick = args.suite == "quick"
    rounds = 40 if quick else 200

    def timer(fns):
        return timing.median_times(fns, device, rounds=rounds, budget_s=3.0 if quick else 20.0)
    bandwidth = timing.copy_bandwidth(device) if device == "cuda" else None
    if bandwidth:
        env["copy_bandwidth_GBps"] = bandwidth / 1e9

    print(f"flowkern benchmarks: {env['device']} | torch {env['torch']} | triton {env['triton']} | "
          f"suite {args.suite}", flush=True)
    rows = []
    with tqdm(total=bench_ops.count(device), desc="fused ops", unit="case") as bar:
        rows += list(bench_ops.run(device, timer, quick, not args.no_compile, bar, bandwidth))

    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    out = args.out
    if out is None:
        name = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           f"{name}-{args.suite}-{env['date'][:10]}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump({"environment": env, "suite": args.suite, "results": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(f"# flowkern benchmarks: {env['device']}\n\n"
                f"torch {env['torch']}, triton {env['triton']}, commit {env['git_commit']}, {env['date']}, "
                f"suite {args.suite}. Times are medians; speedups = baseline time / flowkern time, same run.\n\n"
                + table + "\n")
    print(f"\nwrote {out}.json and {out}.md")
    return rows


if __name__ == "__main__":
    main()
