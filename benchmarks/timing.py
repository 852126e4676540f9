"""Timing and environment helpers shared by the benchmarks. Medians of interleaved blocks of calls after warm-up; on
CUDA, triton.testing.do_bench (CUDA events, cache flushing) when available; every ratio is computed between timings
taken in the same run."""
import datetime
import platform
import statistics
import subprocess
import time

import torch


def median_times(fns: dict, device: str = "cpu", warmup: int = 3, rounds: int = 25, budget_s: float = 3.0,
                 min_rounds: int = 5, block_s: float = 2e-3, single_calls: bool = False) -> dict:
    """Median seconds per call of each fn in `fns` ({name: fn}), timed side by side.

    On CPU the candidates are interleaved (one block of calls of each per round, order rotating), so slow drifts of
    a shared machine hit all of them alike; medians over the rounds: at least min_rounds, then more while the time
    budget lasts (a median of a handful of rounds is noisy). A block is as many back-to-back calls as the fastest
    candidate needs to run block_s, the same count for every candidate, as torch.utils.benchmark's
    blocked_autorange times a statement: each block's first call runs on caches, TLBs and OpenMP workers the other
    candidate left cold (on a VM up to ~100 us even for a call that touches no data), and the same count spreads
    that equally over every candidate. single_calls=True times one call per block (the cold-start latency of a
    call that follows the other candidates). On CUDA each one goes through triton.testing.do_bench (CUDA events,
    L2 flush between calls) when available.
    """
    if device == "cuda":
        try:
            from triton.testing import do_bench
            return {k: do_bench(f, warmup=25, rep=100, return_mode="median") / 1e3 for k, f in fns.items()}
        except ImportError:
            pass
    names = list(fns)
    pilot = {}
    for k in names:
        for _ in range(warmup):
            fns[k]()
        _sync(device)
        t0 = time.perf_counter()
        fns[k]()
        _sync(device)
        pilot[k] = time.perf_counter() - t0
    calls = 1 if single_calls else max(1, min(200, round(block_s / max(min(pilot.values()), 1e-9))))
    times = {k: [] for k in names}
    start = time.perf_counter()
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / calls)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn, device: str = "cpu", **kw) -> float:
    return median_times({"f": fn}, device, **kw)["f"]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str = "cuda", nbytes: int = 1 << 30) -> float:
    """Measured device copy bandwidth in bytes/s (bytes read + bytes written), once per run."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device)
    return 2 * nbytes / t


def environment(device: str) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except OSError:
        env["git_commit"] = None
    if device == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            env["device"] = f"{names[0]} ({len(names)} cores)" if names else env["device"]
        except OSError:
            pass
        from flowkern import _ext
        env["cpu_vector_isa"] = _ext._C.cpu.vector_isa() if _ext.native_available() else None
    return env
