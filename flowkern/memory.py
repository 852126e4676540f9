"""Memory measurement: the real peak of a training step on any device (PeakMemory), bytes saved for backward, CUDA peak
bytes, a planner that fits a budget (MemoryPlan), and the CPU allocator setting."""
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def saved_tensor_bytes(fn: Callable, *args, include_leaves: bool = False, **kwargs) -> int:
    """Bytes that autograd holds for backward while running fn(*args, **kwargs), each storage counted once.

    Counted through torch.autograd.graph.saved_tensors_hooks, so it works on CPU as on GPU, and on the meta device
    (shapes only, no compute: how models too large for the machine are measured). Leaf tensors that
    require grad (parameters, inputs) are held anyway and are left out unless include_leaves=True: what remains
    is the activation memory that reversible backprop is about.
    """
    storages = {}

    def pack(t):
        if include_leaves or not (t.is_leaf and t.requires_grad):
            st = t.untyped_storage()
            storages[st._cdata] = st.nbytes()  # the StorageImpl: views share it; works on the meta device too
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(storages.values())


def cuda_peak_bytes(fn: Callable, *args, device=None, **kwargs) -> int:
    """Peak CUDA memory allocated while running fn (e.g. a forward + backward), above what was allocated before."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def keep_freed_cpu_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default glibc returns large freed blocks to the OS (munmap, heap trimming), so a training loop that frees
    and reallocates the same activations every step pays page faults on every step: on a 2-core CPU that was
    25-35% of a Glow step, and more in reversible mode, which frees activations as it goes. With this setting the
    process keeps its peak heap, as PyTorch's CUDA caching allocator (or jemalloc/tcmalloc) does. It is a
    process-wide setting, so the library never calls it by itself; the benchmark runner and the training command
    do. Returns True if it took effect (Linux with glibc), False elsewhere.
    """
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
    # blocks up to 32 MB (glibc's largest mmap threshold) come from the heap, and the heap is never trimmed
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    return ok


class PeakMemory(TorchDispatchMode):
    """The peak bytes of all tensor storages alive during a region, on any device (the meta device included): what a
    training step costs as a user feels it, forward, backward and its transients, and gradients included.

        with PeakMemory(model, x) as mem:      # model's parameters and x count as alive from the start
            loss(model(x)).backward()
        mem.peak_bytes, mem.breakdown()        # breakdown at the peak: params / grads / inputs / saved / temporaries

    Every tensor an op creates is followed (a dispatch mode) until its storage is freed; views share their storage and
    count once. At the peak, storages are told apart as the given modules' parameters, the gradients those
    parameters hold after the region, the given input tensors, storages autograd saved for backward (activations),
    and the rest (temporaries). torch's MemTracker does the same but refuses a module called twice in one step.
    """

    def __init__(self, *tracked):
        super().__init__()
        self._params, self._inputs = [], []
        for t in tracked:
            if isinstance(t, torch.nn.Module):
                self._params += list(t.parameters())
            elif isinstance(t, torch.Tensor):
                self._inputs.append(t)
        self._records = []  # [nbytes, born, died, storage key]: one per storage seen
        self._live = {}  # storage key -> record index
        self._saved = set()
        self._seq = self._now = 0
        self.peak_bytes = 0
        self._peak_seq = 0
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    # ---- storage bookkeeping
    def _track(self, t: torch.Tensor):
        st = t.untyped_storage()
        key = st._cdata
        if key in self._live:
            return self._live[key]
        self._seq += 1
        idx = len(self._records)
        self._records.append([st.nbytes(), self._seq, None, key])
        self._live[key] = idx
        self._now += st.nbytes()
        if self._now > self.peak_bytes:
            self.peak_bytes, self._peak_seq = self._now, self._seq
        weakref.finalize(st, self._free, idx)
        return idx

    def _free(self, idx):
        rec = self._records[idx]
        if rec[2] is None:
            self._seq += 1
            rec[2] = self._seq
            self._now -= rec[0]
            if self._live.get(rec[3]) == idx:
                del self._live[rec[3]]

    def _pack(self, t):
        if isinstance(t, torch.Tensor):
            self._saved.add(self._track(t))
        return t

    # ---- the dispatch mode
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def __enter__(self):
        for t in self._params + [p.grad for p in self._params if p.grad is not None] + self._inputs:
            self._track(t)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        self._grads = {self._track(p.grad) for p in self._params if p.grad is not None}
        return out

    def breakdown(self) -> dict:
        """Bytes alive at the peak, by kind (params, grads, inputs, saved for backward, temporaries)."""
        params = {self._track(p) for p in self._params}
        inputs = {self._track(t) for t in self._inputs}
        out = dict.fromkeys(("params", "grads", "inputs", "saved", "temporaries"), 0)
        for idx, (nbytes, born, died, _) in enumerate(self._records):
            if born <= self._peak_seq and (died is None or died > self._peak_seq):
                kind = ("params" if idx in params else "grads" if idx in self._grads else
                        "inputs" if idx in inputs else "saved" if idx in self._saved else "temporaries")
                out[kind] += nbytes
        return out


def peak_memory(fn: Callable, *tracked) -> PeakMemory:
    """Run fn() under PeakMemory(*tracked) and return the tracker (peak_bytes, breakdown())."""
    with PeakMemory(*tracked) as mem:
        fn()
    return mem


@dataclass
class MemoryPlan:
    """Peak bytes of a video model's training step as fixed + per_clip * batch + per_frame * batch * frames, fitted
    from three measured steps: what fits a budget at other batch sizes and clip lengths.

        plan = MemoryPlan.fit(lambda b, t: peak_memory(step(b, t), model).peak_bytes, batch=2, frames=(8, 16))
        plan.longest_clip(80e9, batch=8), plan.largest_batch(80e9, frames=13)
    """

    fixed: float  # parameters, gradients, whatever does not grow with the data
    per_clip: float  # per clip whatever its length (e.g. a per-frame recomputed transient over the batch)
    per_frame: float  # per frame of every clip (inputs, latents, their gradients, ...)

    @classmethod
    def fit(cls, measure: Callable[[int, int], float], batch: int = 2, frames=(8, 16)) -> "MemoryPlan":
        """measure(batch, frames) -> peak bytes, called at (batch, t0), (batch, t1) and (2 * batch, t0)."""
        t0, t1 = frames
        p00, p01, p10 = measure(batch, t0), measure(batch, t1), measure(2 * batch, t0)
        per_frame = max(0.0, (p01 - p00) / (batch * (t1 - t0)))
        per_clip = max(0.0, (p10 - p00) / batch - per_frame * t0)
        return cls(fixed=p00 - batch * (per_clip + per_frame * t0), per_clip=per_clip, per_frame=per_frame)

    def peak(self, batch: int, frames: int) -> float:
        return self.fixed + batch * (self.per_clip + self.per_frame * frames)

    def longest_clip(self, budget: float, batch: int) -> int:
        """The most frames per clip whose step fits `budget` bytes at `batch` clips (0 if none)."""
        room = budget - self.fixed - batch * self.per_clip
        if room < 0:
            return 0
        return int(room // (batch * self.per_frame)) if self.per_frame > 0 else 2**31 - 1

    def largest_batch(self, budget: float, frames: int) -> int:
        """The most clips of `frames` frames whose step fits `budget` bytes (0 if none)."""
        room = budget - self.fixed
        per = self.per_clip + self.per_frame * frames
        return max(0, int(room // per)) if per > 0 else 2**31 - 1
