"""flowkern.memory: the peak-memory tracker and saved-bytes counter measure what they claim, on known allocations."""
import torch

from flowkern.memory import PeakMemory, peak_memory

MB = 2**20


def test_peak_follows_allocations_and_frees():
    def region():
        a = torch.empty(MB, dtype=torch.uint8)  # 1 MiB
        b = a.view(1024, 1024)[:10]  # a view: no new storage
        del a, b
        c = torch.empty(2 * MB, dtype=torch.uint8)  # 2 MiB after the first was freed
        d = torch.empty(MB // 2, dtype=torch.uint8)
        return c, d

    mem = peak_memory(region)
    assert mem.peak_bytes == 2 * MB + MB // 2


def test_breakdown_tells_params_grads_inputs_saved_and_temporaries_apart():
    lin = torch.nn.Linear(256, 256, bias=False)  # 256 KiB of weights
    x = torch.randn(512, 256)  # 512 KiB input
    with PeakMemory(lin, x) as mem:
        h = torch.tanh(lin(x))  # saved for backward: tanh's output (512 KiB)
        h.sum().backward()
    kinds = mem.breakdown()
    assert kinds["params"] == 256 * 256 * 4 and kinds["inputs"] == 512 * 256 * 4
    assert kinds["saved"] >= 512 * 256 * 4
    assert sum(kinds.values()) == mem.peak_bytes
    assert lin.weight.grad is not None


def test_meta_device_is_measured_from_shapes():
    def region():
        w = torch.empty(1000, 1000, device="meta", requires_grad=True)
        (w * 2).sum().backward()
    assert peak_memory(region).peak_bytes >= 2 * 1000 * 1000 * 4


def test_memory_plan_recovers_a_linear_cost_and_fits_budgets():
    from flowkern.memory import MemoryPlan
    cost = lambda b, t: 1000 + b * (50 + 7 * t)  # noqa: E731
    plan = MemoryPlan.fit(cost, batch=2, frames=(4, 9))
    assert (plan.fixed, plan.per_clip, plan.per_frame) == (1000, 50, 7)
    assert plan.peak(3, 10) == cost(3, 10)
    T = plan.longest_clip(5000, batch=4)
    assert cost(4, T) <= 5000 < cost(4, T + 1)
    B = plan.largest_batch(5000, frames=13)
    assert cost(B, 13) <= 5000 < cost(B + 1, 13)
    assert plan.longest_clip(900, batch=1) == 0 and plan.largest_batch(900, frames=1) == 0
