"""CHAIN (Ni & Koniusz, CVPR 2024): lipschitz-continuity-constrained normalisation for D.

Backbone-agnostic implementation of docs/methods.md §5 and §9.5–9.6. After a convolution of the
discriminator, CHAIN replaces batch-norm's two halves:

* **0MR** (zero-mean regulariser, replaces centering): the loss term
  ``λ(p+p0)·Σ_layers ‖μ(Y)‖²`` with ``μ_c`` the channel mean of the layer input over (b, h, w)
  (CHAIN Eq. (0MR), generalised with ``p0`` as in the official code, docs/methods.md §5.2);
* **ARMS** (adaptive RMS normalisation, replaces scaling):
  ``(1−M)⊙Y + M⊙Y·ψ_min/ψ`` with ``M ~ Bernoulli(p)`` per sample **and** channel
  (CHAIN Eq. (ARMS), docs/methods.md §5.1), non-expansive because ``ψ_min/ψ_c ≤ 1``.

Pieces
------
``ChainContext``
    The single per-D state: buffers ``p`` and ``ema_sign`` (float64, saved with D), the hyper-
    parameters, the label of the current D pass (``dreal`` / ``dfake`` / ``gfake``), the list
    of 0MR terms of that pass and the p controller ``update_p`` (docs/methods.md §9.6).
``Chain``
    The layer, variants ``chain`` (cumulative running statistics + custom backward,
    docs/methods.md §5.2) and ``chain_batch`` (the poster's pseudo-code, batch statistics).
    Buffers only, no parameters.
``ChainedConv``
    ``chain(conv(x))`` — a convenience wrapper for plain PyTorch conv stacks.

Ownership of the context
------------------------
Exactly one module owns the context as a registered submodule (the discriminator, as
``D.chain_ctx``), so ``p`` and ``ema_sign`` appear once in D's state dict and follow
``D.to(device)``. Every ``Chain`` layer holds a plain (unregistered) reference to it, so the
context is not duplicated in the state dict; ``copy.deepcopy(D)`` keeps the sharing (the copy's
layers point at the copy's context).

Adopting CHAIN in another PyTorch GAN (a few lines)::

    from patches.chain import Chain, ChainContext, ChainedConv

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.chain_ctx = ChainContext(tau=0.5, lambda_=20, p0=0, start_iter=5000)  # owned once
            self.conv1 = ChainedConv(nn.Conv2d(3, 64, 3, padding=1), Chain(64, self.chain_ctx))
            ...                                    # CHAIN after each conv, before its activation

    ctx = D.chain_ctx
    with ctx.pass_('dreal'):                       # real batch alone (never mixed with fakes)
        real_logits = D(x_real)
    loss_d = F.softplus(-real_logits).mean() + ctx.zero_mean_loss()
    with ctx.pass_('dfake'):
        fake_logits = D(x_fake.detach())
    loss_d = loss_d + F.softplus(fake_logits).mean() + ctx.zero_mean_loss()
    ...
    with ctx.pass_('gfake'):                       # G step: 0MR is zero for this pass
        g_logits = D(x_fake)
    ...
    ctx.update_p(real_logits, iteration)           # once per iteration, after the D step

Decisions where the paper and the official code are silent: patches/README.md.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Iterator, Optional

import torch

from torch_utils import distributed

from patches.overfit import sign_moments

LABELS = ('dreal', 'dfake', 'gfake')
VARIANTS = ('chain', 'chain_batch')
_VARIANT_ALIASES = {'chain': 'chain', 'cumulative': 'chain', 'chain_batch': 'chain_batch', 'batch': 'chain_batch'}


# ---------------------------------------------------------------------------------------------
# Context: pass label, 0MR terms, p controller (docs/methods.md §9.6).

class ChainContext(torch.nn.Module):
    """Shared CHAIN state of one discriminator (docs/methods.md §9.6, §5.2 ``update_p``).

    Buffers (saved with D): ``p`` (float64 0-dim, init 0) and ``ema_sign`` (float64 0-dim, init 0).
    Register it once in the owning D (``self.chain_ctx = ChainContext(...)``).

    Args:
        lambda_: 0MR weight λ (default 20, ``--chain-lambda``).
        p0: 0MR offset p0 (default 0, ``--chain-p0``); the 0MR weight is λ(p+p0).
        tau: target τ of the EMA of E[sign(D(x_real))] (default 0.5, ``--chain-tau``).
        dp: step Δp per iteration (default 0.001, ``--chain-dp``).
        start_iter: first iteration at which p adapts (default 5000, ``--chain-start``).
        ema_decay: decay of the sign EMA (default 0.9).
    """

    #: Statistic name under which a training loop may report ``extra_loss()`` (the summed 0MR term).
    extra_loss_name = 'CHAIN/0MR'

    def __init__(self, lambda_: float = 20.0, p0: float = 0.0, tau: float = 0.5, dp: float = 0.001,
                 start_iter: int = 5000, ema_decay: float = 0.9) -> None:
        super().__init__()
        if lambda_ < 0 or p0 < 0:
            raise ValueError('ChainContext: lambda_ and p0 must be >= 0')
        if not 0 <= tau <= 1 or dp <= 0 or start_iter < 0 or not 0 <= ema_decay < 1:
            raise ValueError('ChainContext: need 0 <= tau <= 1, dp > 0, start_iter >= 0, 0 <= ema_decay < 1')
        self.lambda_ = float(lambda_)
        self.p0 = float(p0)
        self.tau = float(tau)
        self.dp = float(dp)
        self.start_iter = int(start_iter)
        self.ema_decay = float(ema_decay)
        self.register_buffer('p', torch.zeros([], dtype=torch.float64))
        self.register_buffer('ema_sign', torch.zeros([], dtype=torch.float64))
        self.label: Optional[str] = None       # label of the pass in progress (None outside a pass)
        self.r1: bool = False                  # the pass in progress is an R1 (Dreg) pass
        self._terms: list[torch.Tensor] = []   # ‖μ‖² of every CHAIN layer in the last pass
        self._terms_label: Optional[str] = None
        self._terms_r1: bool = False
        self._p_key: Optional[tuple[int, int, str]] = None
        self._p_value: float = 0.0
        #: CHAIN layer calls per pass label (a training loop checks that its D really ran them).
        self.layer_calls: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ p as a Python float

    @property
    def p_value(self) -> float:
        """Current p as a Python float (cached; re-read only when the buffer changed)."""
        key = _tensor_key(self.p)
        if key is None or key != self._p_key:
            self._p_value = float(self.p)
            self._p_key = key
        return self._p_value

    @property
    def ema_value(self) -> float:
        """Current EMA a of E[sign(D(x_real))] (reads the buffer; for logging)."""
        return float(self.ema_sign)

    def set_p(self, value: float) -> None:
        """Overwrite p (clamped to [0, 1]); for tests, resume tools and manual schedules."""
        with torch.no_grad():
            self.p.fill_(min(max(float(value), 0.0), 1.0))
        self._p_key = None

    # ------------------------------------------------------------------ labelled passes

    @contextlib.contextmanager
    def pass_(self, label: str, r1: bool = False) -> Iterator['ChainContext']:
        """Label one D forward (docs/methods.md §9.6 step 1): ``with ctx.pass_('dreal'): logits = D(x)``.

        Clears the 0MR list on entry. ``r1=True`` marks the R1 (Dreg) pass, whose
        ``zero_mean_loss()`` is 0 (C4); it still runs CHAIN with the ``dreal`` buffers.
        The collected terms stay available after the block until the next pass begins.
        """
        if label not in LABELS:
            raise ValueError(f'ChainContext.pass_: label must be one of {LABELS}, got {label!r}')
        if self.label is not None:
            raise RuntimeError(f'ChainContext.pass_({label!r}) inside pass {self.label!r}: passes do not nest')
        self._terms = []
        self._terms_label = label
        self._terms_r1 = bool(r1)
        self.label, self.r1 = label, bool(r1)
        try:
            yield self
        finally:
            self.label, self.r1 = None, False

    def add_zero_mean_term(self, sq_norm: torch.Tensor) -> None:
        """Record one layer's ‖μ‖² for the pass in progress (called by ``Chain``)."""
        self._terms.append(sq_norm)

    def wants_zero_mean_terms(self) -> bool:
        """True while a pass is in progress whose 0MR term enters the loss (dreal/dfake, not R1)."""
        return self.label in ('dreal', 'dfake') and not self.r1

    def zero_mean_loss(self) -> torch.Tensor:
        """0MR of the last pass: λ(p+p0)·Σ_layers ‖μ‖² (CHAIN Eq. (0MR), docs/methods.md §5.2); 0 for gfake / R1.

        Differentiable w.r.t. the features (p is a constant). Computed (with zero weight) also
        when p = p0 = 0, so the graph is the same at every iteration.
        """
        if not self._terms or self._terms_label not in ('dreal', 'dfake') or self._terms_r1:
            return torch.zeros([], dtype=torch.float32, device=self.p.device)
        weight = self.lambda_ * (self.p_value + self.p0)
        return torch.stack([t.reshape([]) for t in self._terms]).sum() * weight

    def extra_loss(self) -> torch.Tensor:
        """Alias of ``zero_mean_loss`` (the loss' ``DiscriminatorPassContext`` hook)."""
        return self.zero_mean_loss()

    # ------------------------------------------------------------------ p controller

    def update_p(self, real_logits: Optional[torch.Tensor], iteration: int) -> float:
        """p controller (docs/methods.md §9.6 step 3, C2): call once per iteration after Dmain; returns p.

        For ``iteration >= start_iter``: a ← d·a + (1−d)·mean(sign(l_real)) with the mean taken
        over all (non-NaN) elements of all ranks (all-reduced sum and count), then
        p ← clip(p + Δp·sign(a − τ), 0, 1). Every rank must call it (collective).
        """
        moments = None if real_logits is None else sign_moments(real_logits)
        return self.update_p_from_moments(moments, iteration)

    def update_p_from_moments(self, moments: Optional[torch.Tensor], iteration: int) -> float:
        """``update_p`` from this rank's float64 [count, Σ sign] of the iteration's Dmain real logits
        (what ``patches.overfit.RealSignCollector`` gathers); collective like ``update_p``."""
        if moments is None or iteration < self.start_iter:
            return self.p_value
        stat = moments.detach().to(torch.float64).flip(0)  # [Σ sign, count]
        distributed.all_reduce_sum_(stat, what="CHAIN's sign statistic of the real logits")
        sign_sum, count, a_old, p_old = torch.cat([stat, torch.stack([self.ema_sign, self.p]).to(stat.device)]).tolist()
        if count <= 0:
            return self.p_value
        a = self.ema_decay * a_old + (1 - self.ema_decay) * (sign_sum / count)
        p = min(max(p_old + self.dp * _sign(a - self.tau), 0.0), 1.0)
        with torch.no_grad():
            self.ema_sign.fill_(a)
            self.p.fill_(p)
        self._p_value, self._p_key = p, _tensor_key(self.p)
        return p

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """Also accept the official code's name ``ema_Dreal`` for ``ema_sign`` (FastGAN-D_big state dicts)."""
        official = prefix + 'ema_Dreal'
        if official in state_dict and prefix + 'ema_sign' not in state_dict:
            state_dict[prefix + 'ema_sign'] = state_dict.pop(official)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f'lambda_={self.lambda_:g}, p0={self.p0:g}, tau={self.tau:g}, dp={self.dp:g}, '
                f'start_iter={self.start_iter}, ema_decay={self.ema_decay:g}')


def _tensor_key(t: torch.Tensor) -> Optional[tuple[int, int, str]]:
    """Identity + in-place version of a tensor (no device sync); None if unavailable."""
    try:
        return (id(t), int(t._version), str(t.device))
    except (AttributeError, RuntimeError):
        return None


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------------------------------------
# ARMS pieces.

def draw_mask(batch: int, channels: int, p: float, device: torch.device) -> torch.Tensor:
    """Bernoulli(p) mask M = [U ≤ p] of shape [B, C, 1, 1] (bool), U ~ U[0,1) FP32 (docs/methods.md §9.5 step 3)."""
    return torch.rand([batch, channels, 1, 1], device=device) <= p


def zero_mean_sq_norm(y: torch.Tensor) -> torch.Tensor:
    """‖μ‖² = Σ_c (mean_{b,h,w} Y_bchw)² (CHAIN Eq. (0MR) without its weight, docs/methods.md §5.1)."""
    return y.mean(dim=(0, 2, 3)).square().sum()


def channel_mean_square(y: torch.Tensor) -> torch.Tensor:
    """mean_{b,h,w} Y² per channel, [1, C, 1, 1]. Differentiable.

    ``square().mean()``: with torch 2.13 on the CPU it is 2–6× faster than the batched dot
    product ``einsum('bchw,bchw->c')`` that degan used before (that reduction over b, h, w
    becomes a badly shaped ``bmm``; bench/fastgan_speed.py).
    """
    return y.square().mean(dim=(0, 2, 3), keepdim=True)


def batch_arms_full(y: torch.Tensor, eps: float) -> torch.Tensor:
    """ARMS with M = 1, batch statistics: Y·ψ_min/ψ, ψ_c = sqrt(mean Y² + ε), ψ_min detached (docs/methods.md §5.2)."""
    psi = (channel_mean_square(y) + eps).sqrt()
    return y * (psi.detach().min() / psi)


class _MaskedCumulativeARMS(torch.autograd.Function):
    """(1−M)⊙Y + M⊙Z(Y) with Z = Ŷ·s, Ŷ = Y/sqrt(v+ε), s = sqrt(min v) — the official ``chain``
    forward and custom backward (docs/methods.md §5.2), fused into one per-(sample, channel) scaling.

    Forward: out = Y·F with F[b,c] = s/sqrt(v_c+ε) where M[b,c], else 1.

    Backward with incoming g. The official layer applies its custom backward to the whole of Z
    and the mask outside it, so Z receives g_Z = M⊙g and emits, for **every** element,
    (g_Z·s − u⊙Ŷ)/sqrt(v+ε), where φ_c = mean_{b,h,w}(Ŷ⊙g_Z·s) and u ← d·u + (1−d)·φ (the
    ``grad_var_<label>`` buffer). Adding the unmasked branch (1−M)⊙g gives in closed form

        dY = g⊙F − (u/(v+ε))⊙Y,     φ_c = s/sqrt(v_c+ε) · mean_{b,h,w}(M⊙Y⊙g).

    v, s, u and M are constants; the formula is linear in g and Y and written with
    differentiable ops, so ``create_graph=True`` (R1, C4) works.

    The function also returns the channel mean μ of Y ([1, C, 1, 1], the 0MR statistic), so the
    0MR gradient g_μ/(B·H·W) is added in the same pass as dY instead of being accumulated into
    Y's gradient by autograd afterwards (one full-size add less per layer and pass).

    Only the **first** backward call through one application is the official formula (and
    updates u). A later call through the same node — the re-entry of a double backward, when the
    R1 penalty reaches the output through a downstream derivative, or a repeated
    ``retain_graph`` backward — returns the plain vector-Jacobian product g⊙F of the forward: the
    −u⊙Ŷ term does not scale with g (it is emitted even for g = 0), so repeating it would inject
    the projection a second time.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, mask: torch.Tensor, inv_std: torch.Tensor,  # type: ignore[override]
                s: torch.Tensor, grad_var: torch.Tensor, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
        scale = inv_std * s
        factor = torch.where(mask, scale, torch.ones_like(scale))
        ctx.save_for_backward(y, factor, mask, inv_std, scale)
        ctx.grad_var = grad_var
        ctx.decay = decay
        ctx.first_done = False
        return y * factor, y.mean(dim=(0, 2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, g: torch.Tensor, g_mean: torch.Tensor):  # type: ignore[override]
        y, factor, mask, inv_std, scale = ctx.saved_tensors
        b, c, h, w = y.shape
        g_mean = g_mean / (b * h * w)  # d mean / dY, broadcast over (b, h, w)
        if ctx.first_done:  # re-entry: plain vector-Jacobian product of the forward (v, s, M constant)
            return torch.addcmul(g_mean, g, factor), None, None, None, None, None
        ctx.first_done = True
        with torch.no_grad():
            masked_dot = (torch.einsum('bchw,bchw->bc', y.detach(), g.detach()) * mask.view(b, c)).sum(0)
            phi = scale.view(c) * masked_dot / (b * h * w)
            u = ctx.decay * ctx.grad_var.to(phi.dtype) + (1 - ctx.decay) * phi.view(1, c, 1, 1)
            ctx.grad_var.copy_(u)
        if torch.is_grad_enabled():  # create_graph (R1): differentiable ops
            dy = torch.addcmul(g_mean, g, factor) - y * (u * inv_std.square())
        else:  # g⊙F + g_μ/(BHW) − (u/(v+ε))⊙Y with one temporary
            dy = torch.addcmul(g_mean, g, factor).addcmul_(y, u * inv_std.square(), value=-1)
        return dy, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# The layer (docs/methods.md §9.5).

class Chain(torch.nn.Module):
    """CHAIN layer: 0MR term + ARMS, placed after a conv (bias included), before the activation.

    Args:
        num_features: channel count C of the input [B, C, H, W].
        context: the D's ``ChainContext`` (held unregistered; D must register it once).
        variant: ``'chain'`` (cumulative, default of the official code) or ``'chain_batch'``
            (poster pseudo-code); ``'cumulative'`` / ``'batch'`` are accepted aliases.
        decay: EMA decay of the running variances and gradient coefficients (0.9).
        eps: ε in sqrt(· + ε) (1e-5).

    Buffers (cumulative only): ``running_var_real``, ``running_var_fake`` (ones [1,C,1,1]),
    ``grad_var_dreal``, ``grad_var_dfake``, ``grad_var_gfake`` (zeros [1,C,1,1]).
    """

    def __init__(self, num_features: int, context: ChainContext, variant: str = 'chain',
                 decay: float = 0.9, eps: float = 1e-5) -> None:
        super().__init__()
        if variant not in _VARIANT_ALIASES:
            raise ValueError(f'Chain: variant must be one of {VARIANTS}, got {variant!r}')
        if not isinstance(context, ChainContext):
            raise TypeError('Chain: context must be a ChainContext')
        self.num_features = int(num_features)
        self.variant = _VARIANT_ALIASES[variant]
        self.decay = float(decay)
        self.eps = float(eps)
        object.__setattr__(self, '_context', context)  # plain reference: not a submodule
        if self.variant == 'chain':
            shape = [1, self.num_features, 1, 1]
            self.register_buffer('running_var_real', torch.ones(shape))
            self.register_buffer('running_var_fake', torch.ones(shape))
            for label in LABELS:
                self.register_buffer(f'grad_var_{label}', torch.zeros(shape))

    @property
    def context(self) -> ChainContext:
        return self._context

    def forward(self, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """docs/methods.md §9.5: 0MR term of the input; identity if p == 0; else (1−M)Y + M·Z, cast to Y's dtype.

        ``mask`` (bool or 0/1, broadcastable to [B, C, 1, 1]) replaces the random draw (tests).
        """
        if y.ndim != 4 or y.shape[1] != self.num_features:
            raise ValueError(f'Chain: expected [B, {self.num_features}, H, W], got {list(y.shape)}')
        ctx = self._context
        if ctx.label is not None:
            ctx.layer_calls[ctx.label] += 1
        y32 = y.to(torch.promote_types(y.dtype, torch.float32))
        p = ctx.p_value
        if p == 0 or not (self.training and ctx.label is not None):
            if ctx.wants_zero_mean_terms():
                ctx.add_zero_mean_term(zero_mean_sq_norm(y32))
            return y if p == 0 else self._expected(y32, p).to(y.dtype)
        if mask is None:
            mask = draw_mask(y.shape[0], y.shape[1], p, y.device)
        mask = mask.to(device=y.device, dtype=torch.bool).expand(y.shape[0], y.shape[1], 1, 1)
        if self.variant == 'chain_batch':
            if ctx.wants_zero_mean_terms():
                ctx.add_zero_mean_term(zero_mean_sq_norm(y32))
            psi = (channel_mean_square(y32) + self.eps).sqrt()
            factor = torch.where(mask, psi.detach().min() / psi, torch.ones_like(psi))
            return (y32 * factor).to(y.dtype)
        out, mean = self._cumulative(y32, ctx.label, mask)
        if ctx.wants_zero_mean_terms():
            ctx.add_zero_mean_term(mean.square().sum())
        return out.to(y.dtype)

    # ------------------------------------------------------------------ variants

    def _cumulative(self, y: torch.Tensor, label: str, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward of ``chain``: update v of label', then the masked ARMS with the custom backward
        (docs/methods.md §5.2); returns (output, channel mean μ of Y for the 0MR term)."""
        v_buf = self.running_var_real if label == 'dreal' else self.running_var_fake
        with torch.no_grad():
            v_buf.mul_(self.decay).add_(channel_mean_square(y.detach()).to(v_buf.dtype), alpha=1 - self.decay)
        v = v_buf.detach().to(y.dtype).clone()
        inv_std = (v + self.eps).rsqrt()
        s = v.min().sqrt()
        return _MaskedCumulativeARMS.apply(y, mask, inv_std, s, getattr(self, f'grad_var_{label}'), self.decay)

    def _expected(self, y: torch.Tensor, p: float) -> torch.Tensor:
        """Eval / unlabelled forward (C5): (1−p)·Y + p·ARMS_{M=1}(Y), no buffer updates."""
        if self.variant == 'chain_batch':
            z = batch_arms_full(y, self.eps)
        else:
            label = self._context.label
            v = (self.running_var_fake if label in ('dfake', 'gfake') else self.running_var_real).to(y.dtype)
            z = y * (v.min().sqrt() / (v + self.eps).sqrt())
        return y * (1 - p) + z * p

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """Drop the official code's per-layer copies of the context (``<layer>.shared_context.p`` /
        ``.ema_Dreal``: its layers register the shared context as a submodule, so its state dicts
        repeat those two buffers under every layer); the owner's context holds them once."""
        for name in ('p', 'ema_Dreal'):
            state_dict.pop(f'{prefix}shared_context.{name}', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f'num_features={self.num_features}, variant={self.variant}, decay={self.decay:g}, eps={self.eps:g}'


class ChainedConv(torch.nn.Module):
    """``chain(conv(x))``: CHAIN directly after a convolution (bias included), docs/methods.md §5.2 placement."""

    def __init__(self, conv: torch.nn.Module, chain: Chain) -> None:
        super().__init__()
        self.conv = conv
        self.chain = chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chain(self.conv(x))


def chain_layers(module: torch.nn.Module) -> list[Chain]:
    """All CHAIN layers inside ``module`` (e.g. for logging or per-layer inspection)."""
    return [m for m in module.modules() if isinstance(m, Chain)]
