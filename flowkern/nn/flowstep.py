import contextlib

import torch
from torch import nn

from flowkern import ops
from flowkern.nn._checks import check_input
from flowkern.ops.checks import no_autocast
from flowkern.nn.actnorm import ActNorm2d
from flowkern.nn.coupling import AffineCoupling
from flowkern.nn.invconv import InvConv1x1, InvConv1x1LU


class FlowStep(nn.Module):
    """One Glow step: ActNorm2d -> invertible 1x1 conv (LU or plain) -> affine/additive coupling.

    ActNorm and the 1x1 conv run as one per-pixel affine map (ops.actnorm_invconv: one pass over x on the kernel
    backends, the unfused reference on "torch"); the coupling's tail is ops.affine_coupling.
    """

    def __init__(self, num_channels: int, hidden: int = 512, context_channels: int = 0, affine: bool = True,
                 lu: bool = True, net: str = "glow", scale: str = "sigmoid"):
        super().__init__()
        self.num_channels = num_channels
        self.actnorm = ActNorm2d(num_channels)
        self.invconv = InvConv1x1LU(num_channels) if lu else InvConv1x1(num_channels)
        self.coupling = AffineCoupling(num_channels, hidden, context_channels, affine, net, scale)
        self._derived_key, self._derived = None, None  # see derived()

    def _affine_params(self):
        return (self.actnorm.log_scale, self.actnorm.bias) + tuple(self.invconv.parameters())

    def _use_derived(self) -> bool:
        """Whether a call can take the cached derived tensors: no parameter gradient needed, and not traced by
        torch.compile (a compiled graph forms them itself; the cache's key reads version counters)."""
        if torch.compiler.is_compiling():
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self._affine_params()))

    @torch.no_grad()
    def derived(self, dtype: torch.dtype, inverse: bool = False) -> dict:
        """The affine map's parameter-derived tensors in `dtype`, formed once per parameter version, without grad:
        A = W diag(s) and c = A b (forward), A^-1 and -b (inverse), and log|det| per pixel. Between optimizer steps
        (sampling, evaluation, the inverse passes of reversible backprop) no call re-forms them; a changed parameter
        (new tensor or in-place update: its version counter moves) invalidates them."""
        params = self._affine_params()
        # a module.to() swaps a parameter's storage without moving its version: the data pointer tells
        key = (dtype,) + tuple((id(p), p.data_ptr(), p._version) for p in params)
        an, ic = self.actnorm, self.invconv
        # exact flow algebra, also when called under autocast; normal tensors, also under inference_mode (a later
        # call with grad for the input may save them for backward, which inference tensors refuse); and no graph:
        # inference_mode(False) turns grad mode back on, so no_grad comes after it
        with no_autocast(an.bias), torch.inference_mode(False), torch.no_grad():
            if self._derived_key != key:
                s, W, b = an.scale().to(dtype), ic.weight().to(dtype), an.bias.to(dtype)
                A = (W * s).contiguous()  # W diag(s)
                self._derived = {"s": s, "W": W, "A": A, "c": A @ b, "nb": -b,
                                 "ld": (an.log_scale.sum() + ic.logdet_per_pixel()).to(dtype)}
                self._derived_key = key
            d = self._derived
            if inverse and "A_inv" not in d:
                d["A_inv"] = (ic.weight_inverse().to(dtype) / d["s"][:, None]).contiguous()  # diag(1/s) W^-1
        return d

    def _lu_factors(self):
        """The affine map's parameters as ops.actnorm_invconv_lu takes them (an LU conv), else None."""
        an, ic = self.actnorm, self.invconv
        if not isinstance(ic, InvConv1x1LU):
            return None
        return an.log_scale, an.bias, ic.lower, ic.upper, ic.log_s, ic.P, ic.sign_s

    def _affine(self, x):
        """ActNorm + 1x1 conv: (x', logdet)."""
        self.actnorm.maybe_initialize(x)
        if self._use_derived():
            d = self.derived(ops.acc_dtype(x.dtype))
            return ops.channel_affine(x, d["A"], d["c"]), self._logdet(x, d)
        factors = self._lu_factors()
        if factors is not None:  # the op forms s and W from the factors (on the CPU: in its kernel, gradients too)
            return ops.actnorm_invconv_lu(x, *factors)
        return ops.actnorm_invconv(x, self.actnorm.scale(), self.actnorm.bias, self.invconv.weight(),
                                   logdet_w=self.invconv.logdet_per_pixel())

    @staticmethod
    def _logdet(x, d, sign=1.0):
        return (sign * x.shape[2] * x.shape[3] * d["ld"]).expand(x.shape[0])

    def _affine_inverse(self, y):
        """Inverse of ActNorm + 1x1 conv: (x, logdet)."""
        if self._use_derived():
            d = self.derived(ops.acc_dtype(y.dtype), inverse=True)
            return ops.channel_affine(y, d["A_inv"], d["nb"]), self._logdet(y, d, -1.0)
        an, ic = self.actnorm, self.invconv
        return ops.actnorm_invconv_inverse(y, an.scale(), an.bias, ic.weight(), logdet_w=ic.logdet_per_pixel(),
                                           W_inv=ic.weight_inverse())

    def forward(self, x, context=None):
        check_input(self, x)
        y, ld = self._affine(x)
        y, ld2 = self.coupling(y, context)
        return y, ld + ld2

    def inverse(self, y, context=None):
        check_input(self, y)
        x, ld2 = self.coupling.inverse(y, context)
        x, ld = self._affine_inverse(x)
        return x, ld + ld2

    def reversible_backward(self, y, context, dy, dlogdet, context_grad: bool, autocast=contextlib.nullcontext):
        """Backward of this step from its output alone (used by flowkern.reversible).

        The coupling network reads the passthrough half, which the step leaves unchanged (x'_a = y_a), so it runs
        once here, with grad, on y_a: its h inverts the coupling and the affine map, giving the coupling's input x'
        and the step's input x. The backward passes need no forward pass: the coupling's tail from y and h, the
        affine map's from x (ops.*_backward); dh is pushed through the network (to y_a, the context and its weights),
        and the affine map's parameter gradients through the parameter algebra (LU weight, exp). Cost: one network
        forward + backward, as with checkpointing. `autocast()` re-enters the forward's autocast state around the
        network's forward only: gradients are taken outside it, so backward runs in the forward's dtypes.
        Returns (x, dx, dcontext or None, {param: grad}).
        """
        cp, an, ic = self.coupling, self.actnorm, self.invconv
        factors = self._lu_factors()
        ya = y[:, :cp.ca].detach().requires_grad_(True)
        c = context.detach().requires_grad_(True) if context_grad else context
        with torch.enable_grad():
            if factors is None:  # the affine map's parameters, as formed (an LU conv's op takes its factors)
                s, W, logdet_w = an.scale(), ic.weight(), ic.logdet_per_pixel()
            with autocast():
                h = cp._h(ya, c)
        with torch.no_grad(), autocast():
            xc, _ = ops.affine_coupling_inverse(y, h, cp.affine, cp.op_scale)  # the coupling's input x'
            x, _ = self._affine_inverse(xc)
        g_xc, g_h = ops.affine_coupling_backward(y, h, dy, dlogdet, cp.affine, cp.op_scale)
        nn_params = [p for p in cp.parameters() if p.requires_grad]
        g_nn = torch.autograd.grad(h, [ya] + ([c] if context_grad else []) + nn_params, g_h, allow_unused=True)
        g_xc[:, :cp.ca] += g_nn[0]  # the network read x'_a too
        grads = dict(zip(nn_params, g_nn[2 if context_grad else 1:]))
        if factors is not None:
            dx, *g_aff = ops.actnorm_invconv_lu_backward(x, g_xc, dlogdet, *factors)
            grads.update((p, g.to(p.dtype)) for p, g in zip(factors, g_aff) if p.requires_grad)
            return x, dx, (g_nn[1] if context_grad else None), grads
        dx, ds, db, dW, dlogdet_w = ops.actnorm_invconv_backward(x, g_xc, dlogdet, s, an.bias, W)
        aff_params = [p for m in (an, ic) for p in m.parameters() if p.requires_grad]
        outs = [(t, g) for t, g in ((s, ds), (an.bias, db), (W, dW), (logdet_w, dlogdet_w)) if t.requires_grad]
        g_aff = torch.autograd.grad([t for t, _ in outs], aff_params, [g.to(t.dtype) for t, g in outs],
                                    allow_unused=True)
        grads.update(zip(aff_params, g_aff))
        return x, dx, (g_nn[1] if context_grad else None), grads
