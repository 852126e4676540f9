import torch
import torch.distributed as dist
from torch import nn

from flowkern import ops
from flowkern.nn._checks import check_input


class ActNorm2d(nn.Module):
    """Per-channel affine y = s * (x + b) with data-dependent init (Glow).

    s = exp(log_scale), so it stays positive and invertible; logdet = H*W*sum(log s).
    On the first forward in training mode, b and s are set so that the batch has zero mean and unit variance per
    channel (a channel with (near-)zero variance keeps s = 1 instead of blowing up). Under torch.distributed the
    statistics are all-reduced, so every rank gets the same init. `initialized` is a buffer: it is saved in the
    state_dict, and loading a checkpoint never re-initialises.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # python mirror of the buffer: no device sync per forward

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init from batch x (B, C, H, W)."""
        check_input(x, self.num_channels, type(self).__name__)
        xd = x.detach().double().transpose(0, 1).reshape(self.num_channels, -1)
        stats = torch.stack([xd.sum(1), (xd * xd).sum(1), torch.full_like(xd[:, 0], xd.shape[1])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)  # same init on every rank
        if not torch.isfinite(stats).all():
            raise ValueError(f"{type(self).__name__}: data-dependent init got non-finite values (NaN/Inf) in the "
                             "first batch")
        count = stats[2]
        mean = stats[0] / count
        var = (stats[1] / count - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        log_scale = torch.where(std > self.eps, -torch.log(std.clamp_min(self.eps)), torch.zeros_like(std))
        self.bias.copy_(-mean)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)
        self._initialized = True

    def maybe_initialize(self, x: torch.Tensor) -> None:
        if self.training and not self._initialized:
            self.initialize(x)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2] * x.shape[3]
        return (hw * self.log_scale.sum()).to(ops.acc_dtype(x.dtype)).expand(x.shape[0])

    def forward(self, x, context=None):
        check_input(x, self.num_channels, type(self).__name__)
        self.maybe_initialize(x)
        s = self.scale().view(1, -1, 1, 1)
        b = self.bias.view(1, -1, 1, 1)
        if ops.uses_kernels(x):
            # one elementwise pass, s * x + s * b (a diagonal channel_affine would spend C^2 FMAs per pixel); the
            # fused kernel of ActNorm is the one it shares with the 1x1 conv inside FlowStep
            y = torch.addcmul(s * b, x, s)
        else:
            y = (x + b) * s  # the reference, as written in Glow
        return y, self.logdet(x)

    def inverse(self, y, context=None):
        check_input(y, self.num_channels, type(self).__name__)
        s = self.scale().view(1, -1, 1, 1)
        b = self.bias.view(1, -1, 1, 1)
        x = torch.addcmul(-b, y, 1.0 / s) if ops.uses_kernels(y) else y / s - b
        return x, -self.logdet(y)

    def extra_repr(self):
        return f"{self.num_channels}"
