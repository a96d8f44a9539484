"""StyleGAN2-ADA generator and discriminator, drop-in compatible with the official networks.

Everything here follows ``docs/stylegan2-arithmetic.md`` (cited by section below) to the letter:
constructor keywords, parameter/buffer names, shapes, registration and initialisation order,
the order of every cast, gain, clamp and reduction. Loading an official state dict with
``strict=True`` and running the same inputs therefore gives the same images and logits
(bitwise on CPU in float32). Equalised learning rate (docs/stylegan2-arithmetic.md §4) is used
everywhere: parameters are stored at unit scale and multiplied by their He-constant at run time.

Deliberate difference (docs/stylegan2-ada.md §15): a block built with ``use_fp16`` computes in
float32 when its input lives on the CPU, because half precision on the CPU is ~75× slower and
gains nothing. On CUDA it computes in float16 exactly as the reference. Tests (or anyone who
wants the reference's CPU behaviour) can force half precision on the CPU with::

    with networks.fp16_on_cpu(True):
        img = G(z, c)

or globally with ``networks.set_fp16_on_cpu(True)``. A training run chooses the dtype of those
blocks with ``--precision`` (float32, float16 or bfloat16 on any device): the process-wide
setting of :mod:`torch_utils.precision`, which, once set, replaces this default
(:func:`block_dtype`). bfloat16 blocks take the float32 paths where float16 has its own: no
max-abs prenormalisation (bfloat16 has float32's exponent range, so Σ w² cannot overflow), the
cheap demodulation coefficients on the CPU; channels_last stays a float16-only layout.

Deliberate difference for speed (CPU, fp32 or bf16 compute, non-fused modulated convolution, i.e.
G in training mode): the demodulation coefficients are computed as rsqrt(s² · (Σ_uv w²)ᵀ + 1e-8)
with one small matrix product instead of materialising the per-sample weights [N, O, I, k, k]
as the reference does (~0.8 s per 512-channel layer per batch of 16 on a 2-core CPU, as much as
the convolution itself). It is the same sum in a different order: outputs agree to ≤ 1e-6
relative, like the reference's own fused vs non-fused paths. The fused path (eval mode, G_ema,
generation), fp16 blocks and CUDA tensors use the reference order and are bitwise identical to
the reference. The reference order can be forced with ``networks.set_fast_demod(False)`` or
``with networks.fast_demod(False): ...``.

Hook point for CHAIN (no CHAIN code here): ``Conv2dLayer.post_conv`` (see its docstring).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional

import torch

import dnnlib
from torch_utils import misc, persistence, precision
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

# ---------------------------------------------------------------------------------------------
# Half precision on the CPU (docs/stylegan2-ada.md §15).

_FP16_ON_CPU = False


def set_fp16_on_cpu(enabled: bool) -> bool:
    """Globally allow (True) or forbid (False, default) float16 blocks on the CPU; returns the old value."""
    global _FP16_ON_CPU
    old = _FP16_ON_CPU
    _FP16_ON_CPU = bool(enabled)
    return old


@contextlib.contextmanager
def fp16_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Context manager: inside it, ``use_fp16`` blocks run in float16 on the CPU too (as upstream).

    Only the forward/backward calls made inside the context are affected; the decision is taken
    per block at run time, so the same network can be evaluated both ways.
    """
    old = set_fp16_on_cpu(enabled)
    try:
        yield
    finally:
        set_fp16_on_cpu(old)


# ---------------------------------------------------------------------------------------------
# Demodulation coefficients of the non-fused path (see the module docstring).

#: The cheap (on, default) or reference-order (off) non-fused demodulation coefficients.
_FAST_DEMOD = dnnlib.util.GlobalSwitch(True)
#: ``set_fast_demod(enabled) -> old value``; ``with fast_demod(False):`` reproduces the reference bitwise.
set_fast_demod = _FAST_DEMOD.set
fast_demod = _FAST_DEMOD.scope


def block_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """Compute dtype of a block (docs/stylegan2-arithmetic.md §9): float32 unless use_fp16 and not force_fp32;
    then the process' reduced dtype (``--precision``, torch_utils/precision.py) when one is set, else
    upstream's float16 — on the CPU only with ``fp16_on_cpu``, float32 otherwise."""
    if not use_fp16 or force_fp32:
        return torch.float32
    reduced = precision.reduced_dtype()
    if reduced is not None:
        return reduced
    if device.type != 'cpu' or _FP16_ON_CPU:
        return torch.float16
    return torch.float32


def _memory_format(channels_last: bool, dtype: torch.dtype) -> torch.memory_format:
    """channels_last is only used by fp16 blocks that actually run in fp16 (docs/stylegan2-arithmetic.md §9,
    layout only)."""
    return torch.channels_last if channels_last and dtype == torch.float16 else torch.contiguous_format


# ---------------------------------------------------------------------------------------------
# Functions.

def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x · rsqrt(mean(x², dim) + eps) (docs/stylegan2-arithmetic.md §5, "n2m")."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _prenormalize_fp16(weight: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/stylegan2-arithmetic.md §6 step 1: scale weight per output channel and styles per sample by their
    max-abs (fp16 guard)."""
    out_channels, in_channels, kh, kw = weight.shape
    w_max = weight.abs().amax(dim=[1, 2, 3], keepdim=True)
    weight = weight * (w_max.reciprocal() * (1 / math.sqrt(in_channels * kh * kw)))
    styles = styles / styles.abs().amax(dim=1, keepdim=True)
    return weight, styles


def _demod_coefs_nonfused(weight: torch.Tensor, styles: torch.Tensor, fast: bool) -> torch.Tensor:
    """dcoef[n,o] = rsqrt(Σ_{i,u,v} (weight[o,i,u,v]·styles[n,i])² + 1e-8), shape [N, O]
    (docs/stylegan2-arithmetic.md §6 step 3).

    Fast form: Σ_i styles[n,i]² · Σ_{u,v} weight[o,i,u,v]², one [N,I]×[I,O] product.
    Reference form: materialise the per-sample weights [N, O, I, kh, kw], as upstream.
    """
    if fast:
        return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    return (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding: int = 0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """Modulated convolution with optional demodulation and noise (docs/stylegan2-arithmetic.md §6).

    x [N, I, H, W] in the block dtype d; weight [O, I, kh, kw] float32; styles [N, I] float32.
    Modulate W_n = weight · s_n, demodulate by rsqrt(Σ W_n² + 1e-8), convolve (with up/down
    resampling through ``conv2d_resample``), add noise. ``fused_modconv`` runs it as one grouped
    convolution; otherwise the styles and dcoefs scale the activations around a shared conv.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])
    dtype = x.dtype

    if dtype == torch.float16 and demodulate:  # float16 only: bfloat16 has float32's exponent range
        weight, styles = _prenormalize_fp16(weight, styles)

    if not fused_modconv:
        # CPU fp32/bf16 only (the coefficients are float32 either way; bf16 has no reference to match
        # bitwise): on CUDA (where fp16 blocks would amplify a 1-ulp change) keep the reference order.
        fast = bool(_FAST_DEMOD) and dtype in (torch.float32, torch.bfloat16) and x.device.type == 'cpu'
        dcoefs = _demod_coefs_nonfused(weight, styles, fast) if demodulate else None
        x = x * styles.to(dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample.conv2d_resample(x=x, w=weight.to(dtype), f=resample_filter, up=up, down=down,
                                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(dtype).reshape(batch_size, -1, 1, 1), noise.to(dtype))
        if demodulate:
            return x * dcoefs.to(dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            return x.add_(noise.to(dtype))
        return x

    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch_size, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)  # in place: keeps x's dtype (docs/stylegan2-arithmetic.md §6 fused step 4)
    return x


def _setup_filter(f: Any) -> torch.Tensor:
    """The ``resample_filter`` buffer: setup_filter of the taps (docs/stylegan2-arithmetic.md §1.1;
    [1,3,3,1] → outer/64, [4, 4])."""
    return upfirdn2d.setup_filter(list(f) if isinstance(f, tuple) else f)


def _act_gain(activation: str) -> float:
    """Default gain of an activation (docs/stylegan2-arithmetic.md §2 table)."""
    return bias_act.activation_funcs[activation].def_gain


# ---------------------------------------------------------------------------------------------
# Basic layers (docs/stylegan2-arithmetic.md §4).

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Equalised-lr dense layer (docs/stylegan2-arithmetic.md §4.1): y = act(x · (W·lr/√in)ᵀ + b·lr)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = 'linear',
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}'


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Equalised-lr convolution with optional up/down resampling, bias, activation, clamp
    (docs/stylegan2-arithmetic.md §4.2).

    ``trainable=False`` (Freeze-D) registers weight and bias as buffers under the same names.

    Hook point ``post_conv`` (None by default; not in the state dict while None). When a later
    patch sets it to a callable/module ``g``, the forward becomes::

        y = conv2d_resample(x, W) ; y = y + b ; y = g(y) ; y = clamp(act(y) · gain)

    instead of the single fused ``bias_act(y, b, act, gain, clamp)``. With ``post_conv = None``
    the arithmetic is exactly the reference's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = 'linear', up: int = 1, down: int = 1, resample_filter: Any = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = _act_gain(activation)
        self.post_conv: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias_t = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer('weight', weight)
            if bias_t is not None:
                self.register_buffer('bias', bias_t)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample.conv2d_resample(x=x, w=w, f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=(self.up == 1))
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.post_conv is None:
            return bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)
        if b is not None:
            x = bias_act.bias_act(x, b)
        x = self.post_conv(x)
        return bias_act.bias_act(x, None, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, '
                f'up={self.up}, down={self.down}')


# ---------------------------------------------------------------------------------------------
# Mapping network (docs/stylegan2-arithmetic.md §5).

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """z (+ embedded c) → w: 2nd-moment normalisation, lr-multiplied FC stack, w_avg, truncation
    (docs/stylegan2-arithmetic.md §5)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = 'lrelu', lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def _embed_inputs(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
        """docs/stylegan2-arithmetic.md §5 step 1: n2m(z) concatenated with n2m(embed(c))."""
        x = None
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        return x

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> torch.Tensor:
        x = self._embed_inputs(z, c)
        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        # docs/stylegan2-arithmetic.md §5 step 3: track w_avg (training mode only), before broadcast and truncation.
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            assert self.w_avg_beta is not None, 'truncation needs w_avg (w_avg_beta is None)'
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f'z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}'


# ---------------------------------------------------------------------------------------------
# Synthesis network (docs/stylegan2-arithmetic.md §7).

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3×3 conv (optionally ×2 upsampling) + noise + bias + lrelu·√2·gain + clamp
    (docs/stylegan2-arithmetic.md §7.1)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = 'lrelu', resample_filter: Any = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = _act_gain(activation)

        # Registration/initialisation order (docs/stylegan2-arithmetic.md §7.1): affine.weight, weight, noise_const.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def _noise(self, batch_size: int, device: torch.device, noise_mode: str) -> Optional[torch.Tensor]:
        """docs/stylegan2-arithmetic.md §7.1 step 2: random [N,1,res,res] draw, the stored noise_const, or nothing;
        × noise_strength."""
        if not self.use_noise or noise_mode == 'none':
            return None
        if noise_mode == 'random':
            return torch.randn([batch_size, 1, self.resolution, self.resolution], device=device) * self.noise_strength
        return self.noise_const * self.noise_strength

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = 'random', fused_modconv: bool = True,
                gain: float = 1) -> torch.Tensor:
        assert noise_mode in ('random', 'const', 'none'), noise_mode
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_resolution, in_resolution])
        styles = self.affine(w)
        noise = self._noise(x.shape[0], x.device, noise_mode)
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, '
                f'up={self.up}, activation={self.activation}')


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated 1×1 conv without demodulation, + bias, clamp (docs/stylegan2-arithmetic.md §7.2); the gain goes on
    the styles."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, out_channels={self.out_channels}'


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: [const | conv0 ↑2] → conv1 → torgb / skip
    (docs/stylegan2-arithmetic.md §7.3)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = 'skip', resample_filter: Any = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 **layer_kwargs: Any):
        assert architecture in ('orig', 'skip', 'resnet'), architecture
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                force_fp32: bool = False, fused_modconv: Optional[bool] = None,
                **layer_kwargs: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        batch_size = ws.shape[0]
        dtype = block_dtype(self.use_fp16, force_fp32, ws.device)
        memory_format = _memory_format(self.channels_last, dtype)
        if fused_modconv is None:  # docs/stylegan2-arithmetic.md §7.3 step 1, decided per block
            fused_modconv = (not self.training) and (dtype == torch.float32 or batch_size == 1)
        w_idx = 0

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([batch_size, 1, 1, 1])
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, ws[:, 0], fused_modconv=fused_modconv, **layer_kwargs)
            w_idx = 1
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, ws[:, 0], fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, ws[:, 1], fused_modconv=fused_modconv, gain=math.sqrt(0.5), **layer_kwargs)
            x = y + x
            w_idx = 2
        else:
            x = self.conv0(x, ws[:, 0], fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, ws[:, 1], fused_modconv=fused_modconv, **layer_kwargs)
            w_idx = 2

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, ws[:, w_idx], fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f'resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}'


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    """ch(res) = min(channel_base // res, channel_max) (docs/stylegan2-arithmetic.md §7.4, §8.4)."""
    return min(channel_base // res, channel_max)


def _fp16_resolution(img_resolution_log2: int, num_fp16_res: int) -> int:
    """Lowest resolution computed in fp16: max(2^(log2 R + 1 − num_fp16_res), 8) (docs/stylegan2-arithmetic.md §7.4)."""
    return max(2 ** (img_resolution_log2 + 1 - num_fp16_res), 8)


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """Blocks b4 … bR; ws split so that a block's torgb shares w with the next conv0
    (docs/stylegan2-arithmetic.md §7.4)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs: Any):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, img_resolution
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(round(math.log2(img_resolution)))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        fp16_resolution = _fp16_resolution(self.img_resolution_log2, num_fp16_res)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = _channels(res // 2, channel_base, channel_max) if res > 4 else 0
            out_channels = _channels(res, channel_base, channel_max)
            is_last = (res == img_resolution)
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(self, ws: torch.Tensor, **block_kwargs: Any) -> torch.Tensor:
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, cur_ws, **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return f'w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}'


@persistence.persistent_class
class Generator(torch.nn.Module):
    """G(z, c) = synthesis(mapping(z, c, ψ, cutoff)) (docs/stylegan2-arithmetic.md §7.5). Synthesis is built first
    (init order)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, synthesis_kwargs: Optional[dict] = None):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, **synthesis_kwargs: Any) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ---------------------------------------------------------------------------------------------
# Discriminator (docs/stylegan2-arithmetic.md §8).

@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """[fromrgb] → conv0 → conv1 ↓2 (+ resnet skip ↓2) (docs/stylegan2-arithmetic.md §8.1); Freeze-D via
    ``freeze_layers``."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int, architecture: str = 'resnet', activation: str = 'lrelu',
                 resample_filter: Any = (1, 3, 3, 1), conv_clamp: Optional[float] = None, use_fp16: bool = False,
                 fp16_channels_last: bool = False, freeze_layers: int = 0):
        assert in_channels in (0, tmp_channels), (in_channels, tmp_channels)
        assert architecture in ('orig', 'skip', 'resnet'), architecture
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', _setup_filter(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:  # each layer takes the next index; trainable iff index ≥ freeze_layers
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        common = dict(conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor],
                force_fp32: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        device = (x if x is not None else img).device
        dtype = block_dtype(self.use_fp16, force_fp32, device)
        memory_format = _memory_format(self.channels_last, dtype)
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        if self.architecture == 'resnet':
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img

    def extra_repr(self) -> str:
        return f'resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}'


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Append the per-group feature std (docs/stylegan2-arithmetic.md §8.2). Group j = samples {j, j+n, j+2n, …}
    (strided)."""

    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        F = self.num_channels
        c = C // F
        y = x.reshape(G, -1, F, c, H, W)      # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)                 # deviation from the group mean
        y = y.square().mean(dim=0)            # biased variance over the group [n, F, c, H, W]
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])             # [n, F]
        y = y.reshape(-1, F, 1, 1).repeat(G, 1, H, W)  # sample s gets stat[s mod n]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f'group_size={self.group_size}, num_channels={self.num_channels}'


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """4×4 head: [fromrgb] → mbstd → conv → fc → out → projection on cmap (docs/stylegan2-arithmetic.md §8.3),
    always fp32."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = 'resnet', mbstd_group_size: Optional[int] = 4, mbstd_num_channels: int = 1,
                 activation: str = 'lrelu', conv_clamp: Optional[float] = None):
        assert architecture in ('orig', 'skip', 'resnet'), architecture
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: Optional[torch.Tensor], cmap: Optional[torch.Tensor],
                force_fp32: bool = False) -> torch.Tensor:
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:  # conditioning by projection
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, cmap_dim={self.cmap_dim}, architecture={self.architecture}'


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """D(img, c): blocks bR … b8, label mapping (cmap), epilogue b4 (docs/stylegan2-arithmetic.md §8.4). Returns logits
    [N, 1]."""

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = 'resnet',
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: Optional[float] = None, cmap_dim: Optional[int] = None,
                 block_kwargs: Optional[dict] = None, mapping_kwargs: Optional[dict] = None,
                 epilogue_kwargs: Optional[dict] = None, chain_kwargs: Optional[dict] = None):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, img_resolution
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(round(math.log2(img_resolution)))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        fp16_resolution = _fp16_resolution(self.img_resolution_log2, num_fp16_res)
        ch = lambda res: _channels(res, channel_base, channel_max)  # noqa: E731
        if cmap_dim is None:
            cmap_dim = ch(4)
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = ch(res) if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, ch(res), ch(res // 2), resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=(res >= fp16_resolution),
                                       **(block_kwargs or {}), **common)
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(ch(4), cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}), **common)
        if chain_kwargs is not None:
            self._attach_chain(**chain_kwargs)

    def _attach_chain(self, variant: str = 'chain', resolutions: Optional[list[int]] = None, place: str = 'C1C2CS',
                      **context_kwargs: Any) -> None:
        """CHAIN in D (docs/methods.md §6, C1): after conv0 (C1), conv1 (C2) and skip (CS) of the chosen
        blocks, between bias and activation (``Conv2dLayer.post_conv``); never fromrgb or b4.

        Adds buffers only (``chain_ctx.p``, ``chain_ctx.ema_sign``, ``*.post_conv.running_var_*``,
        ``*.post_conv.grad_var_*``); no initialisation draws, so parameters equal a plain D's.
        """
        from patches.chain import Chain, ChainContext
        resolutions = list(self.block_resolutions) if resolutions is None else list(resolutions)
        unknown = sorted(set(resolutions) - set(self.block_resolutions))
        if unknown:
            raise ValueError(f'CHAIN resolutions {unknown} are not discriminator blocks {self.block_resolutions}')
        self.chain_ctx = ChainContext(**context_kwargs)
        layer_names = {'C1': 'conv0', 'C2': 'conv1', 'CS': 'skip'}
        wanted = [layer_names[place[i:i + 2]] for i in range(0, len(place), 2)]
        for res in resolutions:
            block = getattr(self, f'b{res}')
            for name in wanted:
                layer = getattr(block, name, None)
                if layer is not None:
                    layer.post_conv = Chain(layer.out_channels, self.chain_ctx, variant=variant)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor], return_feats: bool = False,
                **block_kwargs: Any) -> Any:
        """Logits [N, 1]; with ``return_feats`` also the features entering the epilogue b4,
        [N, C₄, 4, 4] (InsGen's contrastive feature, docs/insgen.md §1)."""
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        out = self.b4(x, img, cmap)
        return (out, x) if return_feats else out
