import torch
import torch.distributed as dist
from torch import nn

from flowkern import ops
from flowkern.nn._checks import check_input


def _all_reduce(t: torch.Tensor, maximum: bool = False) -> torch.Tensor:
    """Sum (or maximum) over the ranks of torch.distributed when running distributed, in place; else t itself."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    return t


class ActNorm2d(nn.Module):
    """Per-channel affine y = s * (x + b) with data-dependent init (Glow).

    s = exp(log_scale), so it stays positive and invertible; logdet = H*W*sum(log s).
    On the first forward in training mode, b and s are set so that the batch has zero mean and unit variance per
    channel (a channel with (near-)zero variance keeps s = 1 instead of blowing up). Under torch.distributed the
    statistics are all-reduced, so every rank gets the same init. The `initialized` buffer is the truth: it is saved in
    the state_dict (loading a checkpoint never re-initialises), `mark_initialized()` sets it (e.g. for parameters
    set by hand), and `is_initialized()` reads it.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._init_seen = (None, -1, False)  # (buffer, its version, its value) when last read

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def is_initialized(self) -> bool:
        """The value of the `initialized` buffer. Reading a GPU buffer synchronises the device, so it is read again
        only when the buffer changed since the last read (another tensor, or its version counter moved)."""
        buf = self.initialized
        seen, version, value = self._init_seen
        if torch.compiler.is_compiling():  # a compiled graph guards on this Python value instead
            return value
        if seen is not buf or version != buf._version:
            value = bool(buf)
            self._init_seen = (buf, buf._version, value)
        return value

    def mark_initialized(self, value: bool = True) -> None:
        """Set the `initialized` buffer: True skips the data-dependent init (parameters set by hand or loaded)."""
        self.initialized.fill_(value)
        self._init_seen = (self.initialized, self.initialized._version, bool(value))  # no read back (meta device)

    def needs_init(self) -> bool:
        """Whether the next forward runs the data-dependent init (training mode, not yet initialised)."""
        return self.training and not self.is_initialized()

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init from batch x (B, C, H, W): per-channel mean and standard deviation in float64, by a
        scaled two-pass reduction (no cancellation for large offsets, no overflow for large values), all-reduced
        across ranks under torch.distributed."""
        name = type(self).__name__
        check_input(self, x)
        xd = x.detach().double().transpose(0, 1).reshape(self.num_channels, -1)
        finite = torch.isfinite(xd)
        # pass 0: count, non-finite count and the largest magnitude, which scales the data into [-1, 1]
        counts = _all_reduce(torch.stack([xd.new_full((self.num_channels,), xd.shape[1]), (~finite).sum(1).double()]))
        if counts[1].any():
            raise ValueError(f"{name}: data-dependent init got non-finite values (NaN/Inf) in the first batch")
        count = counts[0]
        if not count.all():
            raise ValueError(f"{name}: data-dependent init needs a non-empty first batch, got shape "
                             f"{tuple(x.shape)}")
        amax = _all_reduce(xd.abs().amax(1), maximum=True)
        xs = xd / torch.where(amax > 0, amax, torch.ones_like(amax))[:, None]
        mean_s = _all_reduce(xs.sum(1)) / count  # pass 1: the mean (of the scaled data)
        d = xs - mean_s[:, None]
        std = (_all_reduce((d * d).sum(1)) / count).sqrt() * amax  # pass 2: centred, so nothing cancels
        log_scale = torch.where(std > self.eps, -torch.log(std.clamp_min(self.eps)), torch.zeros_like(std))
        self.bias.copy_(-mean_s * amax)
        self.log_scale.copy_(log_scale)
        self.mark_initialized()

    def maybe_initialize(self, x: torch.Tensor) -> None:
        if self.needs_init():
            self.initialize(x)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_scale.sum()).to(ops.acc_dtype(x.dtype)).expand(x.shape[0])

    def forward(self, x, context=None):
        check_input(self, x)
        self.maybe_initialize(x)
        s = self.scale().view(1, -1, 1, 1)
        # (x + b) * s in one elementwise pass (a diagonal channel_affine would spend C^2 FMAs per pixel); ActNorm's
        # fused kernel is the one it shares with the 1x1 conv inside FlowStep (ops.actnorm_invconv)
        y = torch.addcmul(s * self.bias.view(1, -1, 1, 1), x, s)
        return y, self.logdet(x)

    def inverse(self, y, context=None):
        check_input(self, y)
        s = self.scale().view(1, -1, 1, 1)
        x = torch.addcmul(-self.bias.view(1, -1, 1, 1), y, 1.0 / s)  # y / s - b in one pass
        return x, -self.logdet(y)

    def extra_repr(self):
        return f"{self.num_channels}"


def mark_initialized(module: nn.Module) -> nn.Module:
    """Mark every ActNorm in `module` initialised (its data-dependent init will not run): for measuring a training
    step of a fresh model, whose first batch would otherwise be the init's. Returns module."""
    for m in module.modules():
        if isinstance(m, ActNorm2d):
            m.mark_initialized()
    return module
