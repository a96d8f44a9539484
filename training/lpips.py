"""LPIPS v0.1 ('net-lin', VGG16): the perceptual distance of FastGAN's reconstruction loss.

FastGAN (Liu et al., ICLR 2021, Sec. 3.2) trains its discriminator's small decoders with
``lpips.PerceptualLoss(model='net-lin', net='vgg')`` of Zhang et al., "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018), version 0.1. degan computes
that distance itself, with no torchvision and no download. For images ``x, y`` in [-1, 1]:

1. Scaling layer (the v0.1 fix of v0.0's unscaled input), per RGB channel:
   ``x' = (x − shift) / scale`` with ``shift = (−.030, −.088, −.188)`` and
   ``scale = (.458, .448, .450)`` — ImageNet's mean / std re-expressed for the [-1, 1] range.
2. VGG16's convolutional trunk (3×3 convs with padding 1, ReLU after each, 2×2 max-pools),
   tapped after the ReLUs relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
3. Each tapped map ``f`` is unit-normalised over channels at every pixel:
   ``f / (‖f‖₂ + 1e-10)`` (the epsilon is added to the norm, not under the root).
4. ``d_l = mean_{h,w} Σ_c w_{l,c} · (f̂_x − f̂_y)²_{c,h,w}`` with the learned non-negative
   "lin" weights ``w_l`` (a 1×1 convolution to one channel, no bias; the reference's dropout
   in front of it is inactive at evaluation); the distance is ``Σ_l d_l``.

The reference returns ``[N, 1, 1, 1]``; :meth:`LPIPS.forward` returns the same numbers as
``[N]``. FastGAN sums them over the batch (``percept(rec, target).sum()``).

Weights (docs/data-and-weights.md §2: no PyPI package ships VGG16's ImageNet weights):

* VGG16 trunk: ``--lpips-vgg16=PATH``, a torchvision ``vgg16`` ImageNet state dict
  (``vgg16-397923af.pth``). Its keys ``features.{i}.weight`` / ``features.{i}.bias`` load 1:1
  into :attr:`LPIPS.features`, which keeps torchvision's layer indices (convs at 0, 2 | 5, 7 |
  10, 12, 14 | 17, 19, 21 | 24, 26, 28; pools at 4, 9, 16, 23; taps after 3, 8, 15, 22, 29).
  ``classifier.*`` keys are ignored.
* lin weights: the 7 KB ``weights/v0.1/vgg.pth`` shipped inside the PyPI package ``lpips``
  (install with ``pip install --no-deps lpips==0.1.4``), located with
  ``importlib.util.find_spec`` and never imported (importing it needs torchvision), or
  ``--lpips-lin=PATH``. Its keys ``lin{l}.model.1.weight`` ([1, C_l, 1, 1]) load into
  ``lins.{l}.weight``.

Both files are read with ``torch.load(weights_only=True)``: no code is executed.

:class:`L1Distance` is a cheap stand-in with the same interface (``--recon-loss=l1``). It is
**not** LPIPS and does not reproduce FastGAN; it exists for runs without the VGG16 file.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional, Sequence, Union

import torch

from dnnlib.util import UserError

VGG16_CHANNELS = (64, 128, 256, 512, 512)
CONVS_PER_BLOCK = (2, 2, 3, 3, 3)       # VGG16 configuration "D"
SHIFT = (-0.030, -0.088, -0.188)         # scaling layer of LPIPS v0.1
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10                         # added to the channel norm
LIN_PACKAGE = 'lpips'
LIN_FILE = os.path.join('weights', 'v0.1', 'vgg.pth')
VGG16_HINT = 'a torchvision vgg16 ImageNet state dict, e.g. vgg16-397923af.pth'
LIN_HINT = 'pip install --no-deps lpips==0.1.4 (it ships weights/v0.1/vgg.pth), or pass --lpips-lin=PATH'

Device = Union[torch.device, str]

# ---------------------------------------------------------------------------------------------
# The network.


def vgg16_trunk(channels: Sequence[int] = VGG16_CHANNELS) -> tuple[torch.nn.Sequential, tuple[int, ...]]:
    """VGG16's conv trunk up to relu5_3 with torchvision's indices, and the indices of the taps.

    Each block is ``(conv3×3 pad 1, ReLU) × n`` and blocks 1–4 are followed by a 2×2 max-pool;
    the tap of a block is its last ReLU (relu1_2 = 3, relu2_2 = 8, …, relu5_3 = 29).
    """
    layers: list[torch.nn.Module] = []
    taps: list[int] = []
    c_in = 3
    for block, (c_out, n) in enumerate(zip(channels, CONVS_PER_BLOCK)):
        if block > 0:
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        for _ in range(n):
            layers += [torch.nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), torch.nn.ReLU()]
            c_in = c_out
        taps.append(len(layers) - 1)
    return torch.nn.Sequential(*layers), tuple(taps)


def unit_normalize(f: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``f / (sqrt(Σ_c f²) + eps)`` at every pixel of an [N, C, H, W] map, as the reference.

    At a pixel where the whole vector is 0 the backward of ``sqrt`` is NaN, but every tap
    follows a ReLU, whose backward sets the gradient of those (non-positive) inputs to 0.
    """
    return f / (torch.sqrt(f.square().sum(dim=1, keepdim=True)) + eps)


class LPIPS(torch.nn.Module):
    """LPIPS v0.1, VGG16 'net-lin': per-sample distance ``[N]`` between images in [-1, 1].

    ``channels`` are the widths of VGG16's five blocks; smaller ones build a net of the same
    topology (for tests). Parameters: ``features.{i}.weight/bias`` (torchvision's names) and
    ``lins.{l}.weight`` ([1, C_l, 1, 1]). The constants ``shift`` / ``scale`` are
    non-persistent buffers, rounded to float32 as in the reference (also in a float64 net). The module is frozen and always in eval mode; gradients flow to
    the inputs only. Weights start random (PyTorch's default init, lin weights made
    non-negative); :func:`load_lpips` fills them from the two files.
    """

    def __init__(self, channels: Sequence[int] = VGG16_CHANNELS) -> None:
        super().__init__()
        assert len(channels) == len(CONVS_PER_BLOCK)
        self.channels = tuple(int(c) for c in channels)
        self.register_buffer('shift', torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features, self.taps = vgg16_trunk(self.channels)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.channels)
        with torch.no_grad():
            for lin in self.lins:
                lin.weight.abs_()
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> 'LPIPS':
        """Stay in eval mode whatever ``mode`` says (the distance is a fixed function)."""
        return super().train(False)

    def tapped_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Scaling layer, then the five tapped VGG16 maps (relu1_2 … relu5_3) of ``x``."""
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``[N]`` between ``x`` and ``y`` ([N, 3, H, W] in [-1, 1], H, W ≥ 16).

        Both batches go through VGG16 as one batch (same values as two calls: there is no
        batch statistic in the net).
        """
        assert x.shape == y.shape and x.ndim == 4 and x.shape[1] == 3, (x.shape, y.shape)
        n = x.shape[0]
        total = x.new_zeros(n)
        for f, lin in zip(self.tapped_features(torch.cat([x, y])), self.lins):
            f = unit_normalize(f)
            total = total + lin((f[:n] - f[n:]).square()).mean(dim=(1, 2, 3))
        return total


class L1Distance(torch.nn.Module):
    """NOT LPIPS: per-sample ``mean |x − y|`` over C, H, W, shape ``[N]`` like :class:`LPIPS`.

    A cheap fallback (``--recon-loss=l1``) for runs without the VGG16 file; FastGAN's results
    are not expected to carry over.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``mean_{c,h,w} |x − y|`` for each sample."""
        assert x.shape == y.shape, (x.shape, y.shape)
        return (x - y).abs().flatten(1).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# Finding and loading the weights.


def find_lin_weights() -> Optional[str]:
    """Path of ``weights/v0.1/vgg.pth`` inside the installed ``lpips`` package, or None.

    The package is located with ``importlib.util.find_spec``, not imported.
    """
    try:
        spec = importlib.util.find_spec(LIN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, LIN_FILE)
        if os.path.isfile(path):
            return path
    return None


def read_state_dict(path: str, flag: str) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` onto the CPU; it must be a dict of tensors."""
    try:
        data: Any = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a truncated file, not a torch file, or objects weights_only refuses
        raise UserError(f'{flag}={path}: cannot read it as a tensor state dict ({type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""})') from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f'{flag}={path}: expected a state dict of tensors, got {type(data).__name__}')
    return data


def check_keys(path: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """UserError naming ``path`` and the first missing, unexpected or mis-shaped key."""
    for key, ref in want.items():
        if key not in got:
            raise UserError(f'{path}: missing key {key!r} (shape {list(ref.shape)})')
        if got[key].shape != ref.shape:
            raise UserError(f'{path}: key {key!r} has shape {list(got[key].shape)}, expected {list(ref.shape)}')
    for key in got:
        if key not in want:
            raise UserError(f'{path}: unexpected key {key!r}')


def load_vgg16(net: LPIPS, path: str) -> None:
    """Copy a torchvision ``vgg16`` state dict's ``features.*`` into ``net.features`` (1:1)."""
    sd = read_state_dict(path, '--lpips-vgg16')
    sd = {k: v for k, v in sd.items() if not k.startswith('classifier.')}
    want = {f'features.{k}': v for k, v in net.features.state_dict().items()}
    check_keys(path, sd, want)
    net.features.load_state_dict({k[len('features.'):]: v for k, v in sd.items()})


def load_lin(net: LPIPS, path: str) -> None:
    """Copy the lpips package's ``lin{l}.model.1.weight`` into ``net.lins[l].weight``."""
    sd = read_state_dict(path, '--lpips-lin')
    want = {f'lin{l}.model.1.weight': lin.weight for l, lin in enumerate(net.lins)}
    check_keys(path, sd, want)
    for key, w in sd.items():
        if (w < 0).any():
            raise UserError(f'{path}: key {key!r} has negative values; LPIPS lin weights are non-negative')
    for l, lin in enumerate(net.lins):
        lin.weight.data.copy_(sd[f'lin{l}.model.1.weight'])


def load_lpips(vgg16_path: str, lin_path: Optional[str] = None, device: Device = 'cpu') -> LPIPS:
    """Full-size :class:`LPIPS` with VGG16 from ``vgg16_path`` (``--lpips-vgg16``) and the lin
    weights from ``lin_path`` (``--lpips-lin``; default: the installed lpips package's file)."""
    if not vgg16_path or not os.path.isfile(vgg16_path):
        raise UserError(f'--lpips-vgg16: file not found: {vgg16_path!r}; LPIPS needs {VGG16_HINT} '
                        '(nothing is downloaded)')
    if lin_path is None:
        lin_path = find_lin_weights()
        if lin_path is None:
            raise UserError(f'--lpips-lin: the LPIPS v0.1 lin weights were not found; {LIN_HINT}')
    elif not os.path.isfile(lin_path):
        raise UserError(f'--lpips-lin: file not found: {lin_path!r}; {LIN_HINT}')
    net = LPIPS()
    load_vgg16(net, vgg16_path)
    load_lin(net, lin_path)
    return net.to(device)
