"""Memory accounting that works on any device."""
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
