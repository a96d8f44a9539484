"""LPIPS v0.1 VGG 'net-lin' (training/lpips.py), checked on tiny random "VGG16"s."""

import os

import pytest
import torch
import torch.nn.functional as F

from dnnlib.util import UserError
from training import lpips

TINY = (2, 3, 4, 4, 4)
FULL = (64, 128, 256, 512, 512)
# torchvision's vgg16.features: conv indices, the convs preceded by a max-pool, the tapped convs.
CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_BEFORE = (5, 10, 17, 24)
TAP_AFTER = (2, 7, 14, 21, 28)
PUBLISHED_SHIFT = (-0.030, -0.088, -0.188)
PUBLISHED_SCALE = (0.458, 0.448, 0.450)


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> lpips.LPIPS:
    """A tiny LPIPS with random weights: small positive biases so every tap has live units."""
    torch.manual_seed(seed)
    net = lpips.LPIPS(TINY)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith('lins.'):
                p.uniform_(0.1, 1.0)
            elif name.endswith('.bias'):
                p.uniform_(0.0, 0.2)
            else:
                p.normal_(0.0, 0.5)
    return net.to(dtype)


def images(n: int, size: int = 32, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def explicit_layer_distances(net: lpips.LPIPS, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Independent LPIPS: explicit conv/relu/pool walk over torchvision indices, explicit formulas."""
    sd = {f'features.{k}': v for k, v in net.features.state_dict().items()}
    # The reference holds the constants as float32 tensors; so does degan, even in a float64 net.
    shift = torch.tensor(PUBLISHED_SHIFT, dtype=torch.float32).to(x.dtype).view(1, 3, 1, 1)
    scale = torch.tensor(PUBLISHED_SCALE, dtype=torch.float32).to(x.dtype).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img - shift) / scale, []
        for i in CONV_IDX:
            if i in POOL_BEFORE:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h = F.relu(F.conv2d(h, sd[f'features.{i}.weight'], sd[f'features.{i}.bias'], padding=1))
            if i in TAP_AFTER:
                out.append(h)
        return out

    result = []
    for l, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / ((a ** 2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        b = b / ((b ** 2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        w = net.lins[l].weight.reshape(1, -1, 1, 1)
        per_pixel = (w * (a - b) ** 2).sum(dim=1)            # [N, H, W]
        result.append(per_pixel.mean(dim=(1, 2)))            # spatial average → [N]
    return result


def fake_torchvision_vgg(channels, seed: int = 3) -> dict:
    """A torchvision-style vgg16 state dict (features.* at torchvision's indices + classifier.*)."""
    g = torch.Generator().manual_seed(seed)
    sd, c_in = {}, 3
    convs = iter(CONV_IDX)
    for c_out, n in zip(channels, (2, 2, 3, 3, 3)):
        for _ in range(n):
            i = next(convs)
            sd[f'features.{i}.weight'] = torch.randn(c_out, c_in, 3, 3, generator=g)
            sd[f'features.{i}.bias'] = torch.randn(c_out, generator=g)
            c_in = c_out
    sd['classifier.0.weight'] = torch.randn(7, 5, generator=g)
    sd['classifier.6.bias'] = torch.randn(7, generator=g)
    return sd


def fake_lin(channels, seed: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f'lin{l}.model.1.weight': torch.rand(1, c, 1, 1, generator=g) for l, c in enumerate(channels)}


# ---------------------------------------------------------------------------------------------
# The distance.


def test_identity_symmetry_nonnegativity():
    net = tiny_net()
    x, y = images(3, seed=1), images(3, seed=2)
    assert net(x, x).abs().max() < 1e-12
    d_xy, d_yx = net(x, y), net(y, x)
    assert d_xy.shape == (3,)
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-6, atol=0)
    assert (d_xy > 0).all()


def test_matches_explicit_formula_float64():
    net = tiny_net(dtype=torch.float64)
    x, y = images(2, seed=5, dtype=torch.float64), images(2, seed=6, dtype=torch.float64)
    per_layer = explicit_layer_distances(net, x, y)
    assert all((d > 0).all() for d in per_layer)   # every layer really contributes
    torch.testing.assert_close(net(x, y), sum(per_layer), rtol=1e-10, atol=0)


def test_scaling_layer_constants_and_application():
    net = tiny_net()
    assert net.shift.flatten().tolist() == pytest.approx(PUBLISHED_SHIFT, abs=1e-7)
    assert net.scale.flatten().tolist() == pytest.approx(PUBLISHED_SCALE, abs=1e-7)
    seen = []
    net.features[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    shift = torch.tensor(PUBLISHED_SHIFT).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    scale = torch.tensor(PUBLISHED_SCALE).view(1, 3, 1, 1)
    net(shift, shift + scale)                           # x = shift → 0, y = shift + scale → 1
    (h,) = seen
    assert h[:2].abs().max() < 1e-6
    assert (h[2:] - 1).abs().max() < 1e-6


def test_batch_is_concatenation_of_single_samples():
    net = tiny_net()
    x, y = images(4, seed=7), images(4, seed=8)
    one_by_one = torch.cat([net(x[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(net(x, y), one_by_one, rtol=1e-5, atol=1e-7)
    # FastGAN's loss is the batch sum of these per-sample values.
    torch.testing.assert_close(net(x, y).sum(), one_by_one.sum(), rtol=1e-5, atol=1e-7)


def test_gradients_reach_inputs_not_parameters_and_eval_is_kept():
    net = tiny_net()
    net.train()
    assert not any(m.training for m in net.modules())
    x = images(2, seed=9).requires_grad_(True)
    y = images(2, seed=10)
    net(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())


def test_gradient_finite_when_a_tap_has_all_zero_pixels():
    net = tiny_net()
    with torch.no_grad():
        net.features[2].bias.fill_(-1e3)                # relu1_2 is 0 everywhere
    x = images(2, seed=11).requires_grad_(True)
    d = net(x, images(2, seed=12))
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()


def test_l1_distance_fallback():
    x, y = images(3, size=8, seed=13), images(3, size=8, seed=14)
    d = lpips.L1Distance()(x, y)
    assert d.shape == (3,)
    for i in range(3):
        assert d[i].item() == pytest.approx((x[i] - y[i]).abs().sum().item() / x[i].numel(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Loading.


def test_fake_files_load_one_to_one(tmp_path):
    vgg, lin = fake_torchvision_vgg(TINY), fake_lin(TINY)
    torch.save(vgg, tmp_path / 'vgg.pth')
    torch.save(lin, tmp_path / 'lin.pth')
    net = lpips.LPIPS(TINY)
    lpips.load_vgg16(net, str(tmp_path / 'vgg.pth'))
    lpips.load_lin(net, str(tmp_path / 'lin.pth'))
    for i in CONV_IDX:
        assert torch.equal(net.features[i].weight, vgg[f'features.{i}.weight'])
        assert torch.equal(net.features[i].bias, vgg[f'features.{i}.bias'])
    for l in range(5):
        assert torch.equal(net.lins[l].weight, lin[f'lin{l}.model.1.weight'])
    assert not any(p.requires_grad for p in net.parameters())


def test_load_lpips_full_size_from_fake_files(tmp_path):
    torch.save(fake_torchvision_vgg(FULL), tmp_path / 'vgg16.pth')
    torch.save(fake_lin(FULL), tmp_path / 'lin.pth')
    net = lpips.load_lpips(str(tmp_path / 'vgg16.pth'), str(tmp_path / 'lin.pth'))
    assert net.channels == FULL and not net.training
    x, y = images(1, size=16, seed=15), images(1, size=16, seed=16)
    assert net(x, y).shape == (1,)


def _drop(sd, key):
    sd = dict(sd)
    del sd[key]
    return sd


@pytest.mark.parametrize('which, mutate, key', [
    ('vgg', lambda sd: _drop(sd, 'features.12.bias'), 'features.12.bias'),
    ('vgg', lambda sd: {**sd, 'features.7.weight': torch.zeros(3, 3, 1, 1)}, 'features.7.weight'),
    ('vgg', lambda sd: {**sd, 'features.1.running_mean': torch.zeros(2)}, 'features.1.running_mean'),
    ('lin', lambda sd: _drop(sd, 'lin3.model.1.weight'), 'lin3.model.1.weight'),
    ('lin', lambda sd: {**sd, 'lin0.model.1.weight': torch.rand(2, 1, 1, 1)}, 'lin0.model.1.weight'),
    ('lin', lambda sd: {**sd, 'lin2.model.1.weight': -torch.rand(1, 4, 1, 1)}, 'lin2.model.1.weight'),
])
def test_bad_keys_or_shapes_name_file_and_key(tmp_path, which, mutate, key):
    sd = fake_torchvision_vgg(TINY) if which == 'vgg' else fake_lin(TINY)
    path = str(tmp_path / f'bad_{which}.pth')
    torch.save(mutate(sd), path)
    load = lpips.load_vgg16 if which == 'vgg' else lpips.load_lin
    with pytest.raises(UserError) as e:
        load(lpips.LPIPS(TINY), path)
    assert path in str(e.value) and key in str(e.value) and '\n' not in str(e.value)


class NotATensor:
    pass


@pytest.mark.parametrize('content', [[torch.zeros(1)], {'features.0.weight': NotATensor()}])
def test_non_state_dict_files_are_user_errors(tmp_path, content):
    path = str(tmp_path / 'odd.pth')
    torch.save(content, path)
    with pytest.raises(UserError, match='--lpips-vgg16'):
        lpips.load_vgg16(lpips.LPIPS(TINY), path)


def test_missing_files_name_the_flags(tmp_path, monkeypatch):
    with pytest.raises(UserError, match='--lpips-vgg16') as e:
        lpips.load_lpips(str(tmp_path / 'nope.pth'))
    assert 'torchvision vgg16' in str(e.value) and 'vgg16-397923af.pth' in str(e.value)
    existing = tmp_path / 'vgg16.pth'
    existing.write_bytes(b'')                           # the lin file is checked before reading it
    monkeypatch.setattr(lpips, 'find_lin_weights', lambda: None)
    for lin_path in (None, str(tmp_path / 'no_lin.pth')):
        with pytest.raises(UserError, match='--lpips-lin') as e:
            lpips.load_lpips(str(existing), lin_path)
        assert 'pip install --no-deps lpips==0.1.4' in str(e.value)


def test_real_lin_weights_from_installed_package():
    import importlib.util
    if importlib.util.find_spec('lpips') is None:
        pytest.skip('the lpips package is not installed')
    path = lpips.find_lin_weights()
    assert path is not None and path.endswith(os.path.join('weights', 'v0.1', 'vgg.pth'))
    raw = torch.load(path, map_location='cpu', weights_only=True)
    net = lpips.LPIPS()
    lpips.load_lin(net, path)
    assert [lin.weight.shape[1] for lin in net.lins] == list(FULL)
    for l in range(5):
        assert torch.equal(net.lins[l].weight, raw[f'lin{l}.model.1.weight'])
