"""Memory measurement: bytes saved for backward (any device), CUDA peak bytes, and the CPU allocator setting."""
from typing import Callable

import torch


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
