"""Compatibility adapters (flowkern.compat) against the code they stand in for: the same model, same weights, built
with the original code and with the adapter (plain, and with reversible=True); training-step time (the suite's
timer: medians of interleaved rounds) and the real peak memory of a training step (every tensor alive: CUDA's
allocator peak on a GPU, flowkern.memory.PeakMemory on CPU).

One function per adapter, each returning a list of table rows (dicts), one row per configuration:

    rosinality_rows(device, timer, suite="quick", progress=None)
        rosinality/glow-pytorch Glow (3 blocks at 32x32). The original is tests/compat/rosinality_reference.py, the
        test oracle that follows that code's maths (the original is not a package and is not installed).
    freia_rows(...), normflows_rows(...)
        FrEIA's SequenceINN and normflows' MultiscaleFlow, each with its own Glow-style blocks and with the adapter.

`count(suite)` is the number of rows (for a progress bar), `progress.update(1)` is called per row; `sections(...)` gives
benchmarks/run.py its (title, rows) pairs.
"""
import copy
import importlib.util
import os

import torch

import flowkern
from flowkern.memory import cuda_peak_bytes, peak_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 2**20


# ------------------------------------------------------------------------------------------------------ shared
def load_oracle(name: str):
    """A test oracle module, tests/compat/<name>.py, loaded by path (tests/ is not a package)."""
    path = os.path.join(ROOT, "tests", "compat", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"flowkern_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bytes(step, model, x) -> int:
    """Real peak bytes of step() with the model's parameters and x alive throughout."""
    if x.is_cuda:
        return cuda_peak_bytes(step) + sum(p.numel() * p.element_size() for p in model.parameters())
    return peak_memory(step, model, x).peak_bytes


def train_step(model, loss_fn):
    """One training step (forward, loss, backward, gradients dropped) as a closure for the timer."""
    def run():
        loss_fn(model).backward()
        for p in model.parameters():
            p.grad = None
    return run


def compare(variants: dict, loss_fn, x, timer, baseline: str = "original") -> dict:
    """{name: model} -> {<name>_ms, <name>_peak_MB} for each, plus speedups and memory ratios vs the baseline."""
    steps = {name: train_step(m, loss_fn) for name, m in variants.items()}
    times = timer(steps)
    row = {}
    for name in variants:
        row[f"{name}_ms"] = 1e3 * times[name]
    for name, m in variants.items():
        row[f"{name}_peak_MB"] = peak_bytes(steps[name], m, x) / MiB
    for name in variants:
        if name != baseline:
            row[f"{name}_speedup"] = times[baseline] / times[name]
            row[f"{name}_memory_ratio"] = row[f"{name}_peak_MB"] / row[f"{baseline}_peak_MB"]
    return row


# ------------------------------------------------------------------------------------ rosinality/glow-pytorch
ROSINALITY = {
    # suite: (batch, size, n_flow, n_block, filter_size); rows: affine=False (train.py's default) and affine=True
    "smoke": (2, 8, 1, 3, 16),
    "quick": (8, 32, 4, 3, 128),
    "full": (16, 32, 8, 3, 256),
}


def rosinality_rows(device, timer, suite: str = "quick", progress=None):
    """rosinality/glow-pytorch's Glow (3 channels, conv_lu, additive and affine couplings): the original's maths
    (oracle) vs flowkern.compat.rosinality.Glow loaded from its state_dict, plain and reversible=True."""
    from flowkern.compat import rosinality as compat
    ref = load_oracle("rosinality_reference")
    B, S, K, L, F = ROSINALITY[suite]
    n_bins = 2.0 ** 5
    rows = []
    for affine in ((False,) if suite == "smoke" else (False, True)):
        torch.manual_seed(0)
        original = ref.Glow(3, K, L, affine=affine, conv_lu=True, filter_size=F).to(device)
        image = torch.floor(torch.rand(B, 3, S, S, device=device) * 255 / 2 ** 3) / n_bins - 0.5
        x = image + torch.rand_like(image) / n_bins
        with torch.no_grad():
            original(x)  # ActNorm's data-dependent init, shared by every variant through the state_dict
        variants = {"original": original}
        for name, reversible in (("flowkern", False), ("flowkern_reversible", True)):
            m = compat.Glow(3, K, L, affine=affine, conv_lu=True, filter_size=F, reversible=reversible).to(device)
            m.load_state_dict(copy.deepcopy(original.state_dict()))
            variants[name] = m

        def loss_fn(model):
            log_p, logdet, _ = model(x)
            return compat.calc_loss(log_p, logdet.mean(), S, n_bins)[0]

        with flowkern.use_backend("auto"):
            backend = flowkern.backend.resolve(x)
            row = {"bench": "compat_train_step", "library": "rosinality/glow-pytorch", "model": "Glow",
                   "config": f"L={L} K={K} filter {F} {'affine' if affine else 'additive'} conv_lu",
                   "shape": f"{B}x3x{S}x{S}", "backend": backend}
            row.update(compare(variants, loss_fn, x, timer))
        rows.append(row)
        if progress is not None:
            progress.update(1)
    return rows


def rosinality_count(suite: str) -> int:
    return 1 if suite == "smoke" else 2


def count(suite: str) -> int:
    """Rows all the functions here produce for `suite`."""
    return rosinality_count(suite) + freia_count(suite) + normflows_count(suite)


def sections(device, timer, suite: str = "quick", progress=None):
    """(title, rows) per adapter, for benchmarks/run.py. An adapter whose package is not installed is left out with a
    note (its progress steps are still counted off)."""
    out = [("Compat: rosinality/glow-pytorch Glow, original vs flowkern.compat.rosinality",
            rosinality_rows(device, timer, suite, progress))]
    for name, title, rows_fn, n in (
            ("FrEIA", "Compat: FrEIA SequenceINN, its AllInOneBlock vs flowkern.compat.freia.GlowStep", freia_rows,
             freia_count),
            ("normflows", "Compat: normflows MultiscaleFlow, its GlowBlock vs flowkern.compat.normflows.GlowBlock",
             normflows_rows, normflows_count)):
        if importlib.util.find_spec(name) is None:
            print(f"compat benchmark: {name} is not installed, its rows are left out")
            if progress is not None:
                progress.update(n(suite))
            continue
        out.append((title, rows_fn(device, timer, suite, progress)))
    return out


# ------------------------------------------------------------------------------------------- FrEIA / normflows
# Shared by both: a 3-level Glow-style model of 3x32x32 images (squeeze, K steps, split; normflows' recipe for the
# normflows rows), batch 8, hidden 64 (quick) / 128 (full); the loss is the negative log-likelihood per dimension.
COMPAT_GLOW = {
    # suite: (batch, size, steps per level, hidden)
    "smoke": (2, 8, 1, 8),
    "quick": (8, 32, 4, 64),
    "full": (8, 32, 4, 128),
}
COMPAT_LEVELS = 3


def _dequantized(B, S, device):
    n_bins = 2.0 ** 5
    image = torch.floor(torch.rand(B, 3, S, S, device=device) * 255 / 2 ** 3) / n_bins - 0.5
    return image + torch.rand_like(image) / n_bins


def _freia_glow(S, K, hidden, block: str):
    """FrEIA GraphINN: per level IRevNetDownsampling (squeeze), K blocks, then a channel split whose half leaves as an
    output (all levels but the last). block: "original" (FrEIA's AllInOneBlock with Glow's coupling network: affine
    coupling, ActNorm-like global affine, fixed random permutation), "flowkern" (K GlowSteps) or
    "flowkern_reversible" (one GlowStep of K steps, reversible=True)."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    from flowkern.compat.freia import GlowStep

    def subnet(c_in, c_out):  # Glow's coupling network, as flowkern's (zero-initialised last conv)
        net = torch.nn.Sequential(torch.nn.Conv2d(c_in, hidden, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(hidden, hidden, 1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(hidden, c_out, 3, padding=1))
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.zeros_(net[-1].bias)
        return net

    nodes = [Ff.InputNode(3, S, S, name="x")]
    prev, outputs = nodes[0], []
    for level in range(COMPAT_LEVELS):
        nodes.append(Ff.Node(prev, Fm.IRevNetDownsampling, {}))
        if block == "original":
            for _ in range(K):
                nodes.append(Ff.Node(nodes[-1], Fm.AllInOneBlock, {"subnet_constructor": subnet,
                                                                   "affine_clamping": 2.0, "permute_soft": False}))
        elif block == "flowkern":
            for _ in range(K):
                nodes.append(Ff.Node(nodes[-1], GlowStep, {"hidden": hidden}))
        else:
            nodes.append(Ff.Node(nodes[-1], GlowStep, {"hidden": hidden, "steps": K, "reversible": True}))
        prev = nodes[-1]
        if level < COMPAT_LEVELS - 1:  # half the channels leave as this level's latent
            nodes.append(Ff.Node(nodes[-1], Fm.Split, {"n_sections": 2, "dim": 0}))
            outputs.append(Ff.OutputNode(nodes[-1].out1))
            prev = nodes[-1].out0
    outputs.append(Ff.OutputNode(prev))
    return Ff.GraphINN(nodes + outputs)


def _freia_loss(model, x):
    zs, log_jac = model(x)
    zs = zs if isinstance(zs, (list, tuple)) else [zs]
    nll = sum(0.5 * z.pow(2).flatten(1).sum(1) for z in zs) - log_jac
    return nll.mean() / x[0].numel()


def freia_rows(device, timer, suite: str = "quick", progress=None):
    """FrEIA: a 3-level Glow-style GraphINN built with FrEIA's own AllInOneBlock ("original") vs the same graph with
    flowkern.compat.freia.GlowStep (one per step; and one reversible GlowStep of K steps per level). The original
    and the adapter are different blocks (AllInOneBlock has a fixed permutation and a clamped affine map where Glow
    has a learned 1x1 conv and ActNorm), of the same size: same coupling networks and depth, no weights shared."""
    B, S, K, hidden = COMPAT_GLOW[suite]
    torch.manual_seed(0)
    x = _dequantized(B, S, device)
    variants = {}
    for name in ("original", "flowkern", "flowkern_reversible"):
        torch.manual_seed(0)
        model = _freia_glow(S, K, hidden, name).to(device).train()
        with torch.no_grad():
            model(x)  # ActNorm's data-dependent init (flowkern), outside what is measured
        variants[name] = model
    with flowkern.use_backend("auto"):
        backend = flowkern.backend.resolve(x)
        row = {"bench": "compat_train_step", "library": "FrEIA", "model": "GraphINN Glow-style",
               "config": f"L={COMPAT_LEVELS} K={K} hidden {hidden} (original: AllInOneBlock)",
               "shape": f"{B}x3x{S}x{S}", "backend": backend}
        row.update(compare(variants, lambda m: _freia_loss(m, x), x, timer))
    if progress is not None:
        progress.update(1)
    return [row]


def _normflows_glow(S, K, hidden):
    """normflows' Glow recipe (its README / examples/glow.ipynb): MultiscaleFlow of nf.flows.GlowBlock."""
    import normflows as nf
    L, q0, merges, flows = COMPAT_LEVELS, [], [], []
    for i in range(L):
        flows.append([nf.flows.GlowBlock(3 * 2 ** (L + 1 - i), hidden, split_mode="channel", scale=True)
                      for _ in range(K)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (3 * 2 ** (L - i), S // 2 ** (L - i), S // 2 ** (L - i))
        else:
            latent = (3 * 2 ** (L + 1), S // 2 ** L, S // 2 ** L)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def normflows_rows(device, timer, suite: str = "quick", progress=None):
    """normflows: its Glow recipe (MultiscaleFlow of nf.flows.GlowBlock, "original") vs the same model with every
    block converted to flowkern.compat.normflows.GlowBlock (same weights: convert_glow_blocks), and with each level's
    K blocks merged into one reversible flowkern block (GlowBlock.from_normflows(*blocks, reversible=True))."""
    from flowkern.compat.normflows import GlowBlock, convert_glow_blocks
    B, S, K, hidden = COMPAT_GLOW[suite]
    torch.manual_seed(0)
    x = _dequantized(B, S, device)
    original = _normflows_glow(S, K, hidden).to(device).train()
    with torch.no_grad():
        original.log_prob(x, None)  # normflows' ActNorm data-dependent init, shared through the conversion
    plain = convert_glow_blocks(copy.deepcopy(original))
    reversible = copy.deepcopy(original)
    for i, level in enumerate(reversible.flows):
        merged = GlowBlock.from_normflows(*level[:-1], reversible=True)
        reversible.flows[i] = torch.nn.ModuleList([merged, level[-1]])
    variants = {"original": original, "flowkern": plain, "flowkern_reversible": reversible}
    with flowkern.use_backend("auto"):
        backend = flowkern.backend.resolve(x)
        row = {"bench": "compat_train_step", "library": "normflows", "model": "MultiscaleFlow Glow",
               "config": f"L={COMPAT_LEVELS} K={K} hidden {hidden} sigmoid affine, LU",
               "shape": f"{B}x3x{S}x{S}", "backend": backend}
        row.update(compare(variants, lambda m: m.forward_kld(x) / x[0].numel(), x, timer))
    if progress is not None:
        progress.update(1)
    return [row]


def freia_count(suite: str) -> int:
    return 1


def normflows_count(suite: str) -> int:
    return 1


if __name__ == "__main__":  # python benchmarks/bench_compat.py [smoke|quick|full]
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import timing

    suite = sys.argv[1] if len(sys.argv) > 1 else "quick"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for title, rows in sections(dev, lambda fns: timing.median_times(fns, dev, rounds=15, budget_s=3.0), suite):
        print(title)
        for r in rows:
            print(r)
