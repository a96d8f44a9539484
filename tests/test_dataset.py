"""Tests for training/dataset.py, training/image_files.py and training/builtin_dataset.py (issue "Foundation I",
items 4–5)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib import util
from dnnlib.util import UserError
from training import builtin_dataset
from training.builtin_dataset import ensure_builtin_dataset, generate_builtin_images, generate_builtin_labels
from training.dataset import IMAGE_FILES_CLASS, IMAGE_FOLDER_CLASS, ImageFilesDataset, ImageFolderDataset, \
    image_files_kwargs, image_folder_kwargs, list_image_files, open_image_source, reference_dataset_kwargs
from training.image_files import DatasetWriter, image_to_array


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Keep the built-in zip out of the user's cache."""
    monkeypatch.setenv('DEGAN_CACHE_DIR', str(tmp_path / 'cache'))


def _save_png(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path)


def _make_folder(root, n=6, res=8, seed=0, labels=None):
    """A folder of random RGB PNGs under nested names; returns the images in sorted-name order."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=[n, res, res, 3], dtype=np.uint8)
    names = [f'{"b" if i % 2 else "a"}/img{i:03d}.png' for i in range(n)]
    for name, img in zip(names, images):
        _save_png(os.path.join(root, name), img)
    if labels is not None:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': [[name, lab] for name, lab in zip(names, labels)]}, f)
    order = sorted(range(n), key=lambda i: names[i])
    return images[order], [names[i] for i in order], None if labels is None else [labels[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Built-in dataset.

def test_builtin_deterministic_shape_and_fast():
    t0 = time.process_time()
    a = generate_builtin_images(64, 100)
    elapsed = time.process_time() - t0
    b = generate_builtin_images(64, 100)
    assert a.shape == (100, 64, 64, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert elapsed < 2.0, f'generating 100 64x64 images took {elapsed:.2f} s of CPU'
    # Image i does not depend on how many images are drawn; another seed gives other images.
    assert np.array_equal(generate_builtin_images(64, 7), a[:7])
    assert not np.array_equal(generate_builtin_images(64, 7, seed=1), a[:7])


def test_builtin_golden_checksum():
    # Guards bit-identity across machines/numpy versions. If the drawing is changed on purpose,
    # bump BUILTIN_VERSION (so stale cached zips are not reused) and update this checksum.
    digest = hashlib.sha256(generate_builtin_images(16, 8).tobytes()).hexdigest()
    assert builtin_dataset.BUILTIN_VERSION == 1
    assert digest == GOLDEN_SHA256_16x8


GOLDEN_SHA256_16x8 = 'bfa9848f2ae8104bdbdbd7f0373a75c58dc0673c009482e47c48f8c75c62ffad'


def test_builtin_images_are_structured_and_varied():
    imgs = generate_builtin_images(32, 100).astype(np.float64)
    flat = imgs.reshape(100, -1)
    # Every image has content (not flat) and no two images are identical.
    assert flat.std(axis=1).min() > 25
    assert len({row.tobytes() for row in imgs.astype(np.uint8)}) == 100
    # Consistent layout: the mean image is itself structured (a face in the middle, unlike the
    # mean of images with random layouts, which would be nearly flat).
    mean = imgs.mean(axis=0).mean(axis=2)
    assert mean.std() > 15
    # Controlled variation: pixels differ substantially across images everywhere.
    assert imgs.std(axis=0).mean() > 30


def test_builtin_labels_match_hair_colour():
    res, n = 32, 100
    imgs = generate_builtin_images(res, n).astype(np.float64)
    labels = generate_builtin_labels(n)
    assert labels.shape == (n,) and labels.dtype == np.int64 and set(labels.tolist()) == {0, 1, 2, 3}
    # The hair sits above the eyes in the middle of the image: rows 22–32 %, columns 40–60 %.
    region = imgs[:, int(0.22 * res):int(0.32 * res), int(0.4 * res):int(0.6 * res)].mean(axis=(1, 2, 3))
    brightness = [region[labels == k].mean() for k in range(4)]
    assert brightness[0] < brightness[1] < brightness[2]  # black < brown < blond


def test_builtin_rejects_bad_resolution():
    for res in (0, 3, 48, 2048):
        with pytest.raises(UserError, match='power of two'):
            generate_builtin_images(res, 2)


def test_ensure_builtin_dataset_written_once(tmp_path, monkeypatch):
    path = ensure_builtin_dataset(16, 100)
    assert path.startswith(str(tmp_path / 'cache' / 'datasets')) and os.path.isfile(path)
    stat = os.stat(path)
    monkeypatch.setattr(builtin_dataset, 'generate_builtin_images', lambda *a, **k: pytest.fail('regenerated'))
    assert ensure_builtin_dataset(16, 100) == path
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    assert '00000/img00000000.png' in names and '00000/img00000099.png' in names and 'dataset.json' in names
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith('.tmp')]


def test_builtin_through_image_folder_dataset():
    expected = generate_builtin_images(16, 100)
    labels = generate_builtin_labels(100)
    ds = ImageFolderDataset('builtin:16', use_labels=True)
    assert len(ds) == 100 and ds.name == 'builtin16' and ds.resolution == 16 and ds.num_channels == 3
    assert ds.has_labels and ds.has_onehot_labels and ds.label_shape == [4]
    for i in (0, 57, 99):
        img, label = ds[i]
        assert np.array_equal(img, expected[i].transpose(2, 0, 1))
        assert np.array_equal(label, np.eye(4, dtype=np.float32)[labels[i]])
    # 'builtin' takes the requested resolution; a contradicting one is a one-line error.
    assert ImageFolderDataset('builtin', resolution=16).name == 'builtin'
    assert ImageFolderDataset('builtin', resolution=16).resolution == 16
    with pytest.raises(UserError, match='resolution=32'):
        ImageFolderDataset('builtin:16', resolution=32)
    assert list_image_files('builtin:16')[:2] == ['00000/img00000000.png', '00000/img00000001.png']


# ---------------------------------------------------------------------------------------------
# ImageFolderDataset.

def test_folder_order_pixels_and_onehot_labels(tmp_path):
    images, names, labels = _make_folder(tmp_path / 'd', n=6, labels=[2, 0, 1, 2, 0, 1])
    (tmp_path / 'd' / 'notes.txt').write_text('not an image')
    (tmp_path / 'd' / '.DS_Store').write_bytes(b'\0\1')
    assert list_image_files(str(tmp_path / 'd')) == names
    ds = ImageFolderDataset(str(tmp_path / 'd'), use_labels=True)
    assert ds.name == 'd' and len(ds) == 6 and ds.image_shape == [3, 8, 8] and ds.label_dim == 3
    for i in range(6):
        img, label = ds[i]
        assert img.dtype == np.uint8 and np.array_equal(img, images[i].transpose(2, 0, 1))
        assert label.dtype == np.float32 and np.array_equal(label, np.eye(3)[labels[i]])
        assert ds.get_details(i).raw_label == labels[i]
    # Without use_labels the label vector is empty.
    ds = ImageFolderDataset(str(tmp_path / 'd'))
    assert not ds.has_labels and ds.label_dim == 0 and ds[0][1].shape == (0,)


def test_vector_labels(tmp_path):
    vecs = [[0.5, -1.0], [1.5, 2.0], [0.0, 0.25]]
    _, _, labels = _make_folder(tmp_path / 'd', n=3, labels=vecs)
    ds = ImageFolderDataset(str(tmp_path / 'd'), use_labels=True)
    assert ds.label_shape == [2] and not ds.has_onehot_labels
    for i in range(3):
        assert np.array_equal(ds.get_label(i), np.array(labels[i], dtype=np.float32))


def test_xflip_doubles_with_mirrored_copies(tmp_path):
    images, _, _ = _make_folder(tmp_path / 'd', n=4, labels=[0, 1, 2, 3])
    ds = ImageFolderDataset(str(tmp_path / 'd'), xflip=True, use_labels=True)
    assert len(ds) == 8
    for i in range(4):
        assert np.array_equal(ds[i][0], images[i].transpose(2, 0, 1))
        mirrored = ds[i + 4][0]
        assert np.array_equal(mirrored, images[i][:, ::-1].transpose(2, 0, 1))
        assert ds.get_details(i + 4).xflip and not ds.get_details(i).xflip
        assert ds.get_details(i + 4).raw_idx == i
        assert np.array_equal(ds[i + 4][1], ds[i][1])


def test_max_size_subset_is_seeded_sorted_and_deterministic(tmp_path):
    n, k = 20, 7
    _make_folder(tmp_path / 'd', n=n, res=4)
    path = str(tmp_path / 'd')
    a = ImageFolderDataset(path, max_size=k, random_seed=3)
    b = ImageFolderDataset(path, max_size=k, random_seed=3)
    c = ImageFolderDataset(path, max_size=k, random_seed=4)
    ids = [a.get_details(i).raw_idx for i in range(len(a))]
    assert len(a) == k and ids == sorted(ids) and len(set(ids)) == k
    assert ids == [b.get_details(i).raw_idx for i in range(k)]
    assert ids != [c.get_details(i).raw_idx for i in range(k)]
    # Upstream semantics: a seeded permutation (legacy RandomState), first k, sorted.
    assert ids == sorted(np.random.RandomState(3).permutation(n)[:k].tolist())
    assert len(ImageFolderDataset(path, max_size=n + 5)) == n
    both = ImageFolderDataset(path, max_size=k, random_seed=3, xflip=True)
    assert len(both) == 2 * k and [both.get_details(i).raw_idx for i in range(2 * k)] == ids * 2


def test_zip_equals_folder_and_pickles(tmp_path):
    images, names, _ = _make_folder(tmp_path / 'd', n=5, labels=[0, 1, 0, 1, 1])
    zpath = tmp_path / 'd.zip'
    with zipfile.ZipFile(zpath, 'w') as z:
        for name in names + ['dataset.json']:
            z.write(tmp_path / 'd' / name, name)
    dz = ImageFolderDataset(str(zpath), use_labels=True)
    dd = ImageFolderDataset(str(tmp_path / 'd'), use_labels=True)
    assert dz.name == 'd' and len(dz) == len(dd) == 5
    for i in range(5):
        assert np.array_equal(dz[i][0], dd[i][0]) and np.array_equal(dz[i][1], dd[i][1])
    clone = pickle.loads(pickle.dumps(dz))
    assert np.array_equal(clone[3][0], images[3].transpose(2, 0, 1))


def test_dataloader_worker_reads_zip(tmp_path):
    images, names, _ = _make_folder(tmp_path / 'd', n=6)
    zpath = tmp_path / 'd.zip'
    with zipfile.ZipFile(zpath, 'w') as z:
        for name in names:
            z.write(tmp_path / 'd' / name, name)
    ds = ImageFolderDataset(str(zpath), xflip=True)
    ds[0]  # open the zip in this process first; the worker must open its own handle
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, shuffle=False)
    got = torch.cat([x for x, _ in loader]).numpy()
    expected = np.concatenate([images, images[:, :, ::-1]]).transpose(0, 3, 1, 2)
    assert got.shape == (12, 3, 8, 8) and np.array_equal(got, expected)


def test_grayscale_dataset_and_gray_in_rgb(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=[8, 8], dtype=np.uint8)
    _save_png(str(tmp_path / 'g' / 'a.png'), gray, 'L')
    ds = ImageFolderDataset(str(tmp_path / 'g'))
    assert ds.num_channels == 1 and np.array_equal(ds[0][0][0], gray)
    rgb = rng.integers(0, 256, size=[8, 8, 3], dtype=np.uint8)
    _save_png(str(tmp_path / 'm' / 'a.png'), rgb)
    _save_png(str(tmp_path / 'm' / 'b.png'), gray, 'L')
    ds = ImageFolderDataset(str(tmp_path / 'm'))
    assert ds.num_channels == 3 and np.array_equal(ds[1][0], np.stack([gray] * 3))


# ---------------------------------------------------------------------------------------------
# Image decoding.

def test_image_to_array_modes():
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, size=[5, 6, 4], dtype=np.uint8)
    arr, note = image_to_array(PIL.Image.fromarray(rgba, 'RGBA'))
    expected = np.floor(rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255 + 0.5)
    assert note == 'alpha' and arr.shape == (5, 6, 3) and np.array_equal(arr, expected)

    v16 = rng.integers(0, 65536, size=[5, 6]).astype(np.uint16)
    buf = io.BytesIO()
    PIL.Image.fromarray(v16).save(buf, format='png')
    arr, note = image_to_array(PIL.Image.open(io.BytesIO(buf.getvalue())))
    assert note == '16bit' and arr.shape == (5, 6, 1)
    assert np.array_equal(arr[..., 0], np.round(v16 / 257.0))

    pal = PIL.Image.fromarray(rng.integers(0, 256, size=[5, 6, 3], dtype=np.uint8)).convert('P')
    arr, note = image_to_array(pal)
    assert note is None and np.array_equal(arr, np.asarray(pal.convert('RGB')))

    bits = PIL.Image.fromarray(rng.integers(0, 2, size=[5, 6], dtype=np.uint8) * 255).convert('1')
    arr, _ = image_to_array(bits)
    assert arr.shape == (5, 6, 1) and set(np.unique(arr).tolist()) <= {0, 255}


# ---------------------------------------------------------------------------------------------
# Bad datasets.

def test_bad_datasets_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'missing'))
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('x')
    with pytest.raises(UserError, match='no image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    _save_png(str(tmp_path / 'wide' / 'a.png'), np.zeros([8, 16, 3], np.uint8))
    with pytest.raises(UserError, match=r'16x8.*dataset_tool\.py.*--transform=center-crop') as e:
        ImageFolderDataset(str(tmp_path / 'wide'))
    assert '\n' not in str(e.value)
    _save_png(str(tmp_path / 'odd' / 'a.png'), np.zeros([12, 12, 3], np.uint8))
    with pytest.raises(UserError, match=r'power-of-two.*--resolution=8x8'):
        ImageFolderDataset(str(tmp_path / 'odd'))
    _make_folder(tmp_path / 'ok', n=2)
    with pytest.raises(UserError, match='resolution=16'):
        ImageFolderDataset(str(tmp_path / 'ok'), resolution=16)
    (tmp_path / 'file.bin').write_bytes(b'abc')
    with pytest.raises(UserError, match='neither a folder nor a zip'):
        ImageFolderDataset(str(tmp_path / 'file.bin'))


def test_corrupt_image_read_during_training_names_file(tmp_path):
    _, names, _ = _make_folder(tmp_path / 'd', n=3)
    bad = tmp_path / 'd' / names[1]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    ds = ImageFolderDataset(str(tmp_path / 'd'))
    ds[0]
    with pytest.raises(UserError, match=names[1].replace('/', '.')):
        ds[1]
    _save_png(str(tmp_path / 'd' / names[2]), np.zeros([4, 4, 3], np.uint8))
    with pytest.raises(UserError, match='4x4 but the dataset is 8x8'):
        ImageFolderDataset(str(tmp_path / 'd'))[2]


def test_bad_labels(tmp_path):
    _make_folder(tmp_path / 'd', n=3)
    (tmp_path / 'd' / 'dataset.json').write_text(json.dumps({'labels': [['a/img000.png', 1]]}))
    with pytest.raises(UserError, match=r'no label for a/img002\.png'):
        ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).label_shape
    (tmp_path / 'd' / 'dataset.json').write_text('{not json')
    with pytest.raises(UserError, match='not valid JSON'):
        ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).label_shape
    (tmp_path / 'd' / 'dataset.json').write_text(json.dumps({'labels': None}))
    assert not ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).has_labels


def _write_labels(folder, pairs):
    with open(os.path.join(folder, 'dataset.json'), 'w') as f:
        f.write(json.dumps({'labels': pairs}))  # allow_nan: NaN / Infinity as Python writes them


@pytest.mark.parametrize('bad, message', [
    # A class index of 10**9 once made train.py --cond=1 allocate a 10**9-row label embedding.
    (10 ** 9, 'the label of b/img001.png is class 1000000000, but class labels must be below 100000 '
              '(at most 100000 classes; one embedding row each); renumber the classes 0, 1, 2, …'),
    (1e9, 'the label of b/img001.png is class 1000000000, but class labels must be below 100000'),
    (100000, 'the label of b/img001.png is class 100000, but class labels must be below 100000'),
    (10 ** 400, 'the label of b/img001.png is class 1000000000000000000000000000000000000..., but class labels must '
                'be below 100000'),  # beyond float range: no OverflowError traceback
    (-1, 'class labels must be ≥ 0 (found -1, the label of b/img001.png)'),
    (float('inf'), 'the label of b/img001.png is Infinity; labels must be finite numbers'),
    (float('nan'), 'the label of b/img001.png is NaN; labels must be finite numbers'),
    ([0.5, 1], 'the label of b/img001.png is a list but the label of a/img000.png is a number; all labels must '
               'be integer classes or all lists of numbers of one length'),
    ('cat', 'the label of b/img001.png is "cat"; every label must be an integer class or a list of numbers'),
    (True, 'the label of b/img001.png is true; every label must be an integer class'),
])
@pytest.mark.parametrize('container', ['folder', 'zip'])
def test_bad_labels_name_dataset_json_and_the_file(tmp_path, bad, message, container):
    _, names, _ = _make_folder(tmp_path / 'd', n=3)
    labels = {'a/img000.png': 0, 'a/img002.png': 2, 'b/img001.png': bad}
    _write_labels(tmp_path / 'd', [[n, labels[n]] for n in names])
    path = tmp_path / 'd'
    if container == 'zip':
        path = tmp_path / 'd.zip'
        with zipfile.ZipFile(path, 'w') as z:
            for name in names + ['dataset.json']:
                z.write(tmp_path / 'd' / name, name)
    where = f'{path}/dataset.json'
    with pytest.raises(UserError) as info:
        ImageFolderDataset(str(path), use_labels=True).label_shape
    assert str(info.value).startswith(f'{where}: {message}') and '\n' not in str(info.value)


def test_label_limits_and_duplicates(tmp_path):
    _, names, _ = _make_folder(tmp_path / 'd', n=3)
    # The largest class index allowed, and vectors: accepted (one-hot of 100000 is 400 kB a label).
    _write_labels(tmp_path / 'd', [[n, v] for n, v in zip(names, [0, 99999, 3])])
    ds = ImageFolderDataset(str(tmp_path / 'd'), use_labels=True)
    assert ds.label_shape == [100000] and ds.get_label(1)[99999] == 1
    _write_labels(tmp_path / 'd', [[n, [0.5, -1e3]] for n in names])
    assert ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).label_shape == [2]
    _write_labels(tmp_path / 'd', [[n, [0.0, float('nan')]] for n in names])
    with pytest.raises(UserError, match=r'the label of a/img000\.png is \[0\.0, NaN\]; labels must be finite'):
        ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).label_shape
    # A file listed twice is ambiguous (which label?).
    _write_labels(tmp_path / 'd', [[n, 0] for n in names] + [[names[1], 1]])
    with pytest.raises(UserError, match=f'dataset.json lists {names[1]} twice; give every file one label'):
        ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).label_shape
    # Without use_labels the labels are not read (as upstream).
    assert not ImageFolderDataset(str(tmp_path / 'd')).has_labels


def test_writer_refuses_labels_training_would_refuse(tmp_path):
    with pytest.raises(UserError, match=r'out\.zip/dataset\.json: the label of 00000/img00000001\.png is class '
                                        r'1000000000'):
        with DatasetWriter(str(tmp_path / 'out.zip')) as w:
            w.add_image(np.zeros([4, 4, 3], np.uint8), label=0)
            w.add_image(np.zeros([4, 4, 3], np.uint8), label=10 ** 9)
    assert os.listdir(tmp_path) == []


def test_writer_in_an_unwritable_place_leaves_nothing(tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(OSError):
        DatasetWriter(str(tmp_path / 'file' / 'sub' / 'out.zip'))
    assert os.listdir(tmp_path) == ['file']


def test_writer_is_atomic(tmp_path):
    dest = tmp_path / 'new' / 'sub' / 'out.zip'
    with pytest.raises(RuntimeError):
        with DatasetWriter(str(dest)) as w:
            w.add_image(np.zeros([4, 4, 3], np.uint8), label=1)
            raise RuntimeError('boom')
    assert not (tmp_path / 'new').exists()  # nothing left, not even the parent folders it created
    with DatasetWriter(str(tmp_path / 'folder')) as w:
        w.add_image(np.full([4, 4, 3], 7, np.uint8), label=1)
        w.add_image(np.full([4, 4], 9, np.uint8), label=0)
    ds = ImageFolderDataset(str(tmp_path / 'folder'), use_labels=True)
    assert sorted(os.listdir(tmp_path)) == ['folder']
    assert ds[1][0].shape == (3, 4, 4) and int(ds[1][0][0, 0, 0]) == 9 and ds.label_shape == [2]
    with open_image_source(str(tmp_path / 'folder')) as src:
        assert src.image_names == ['00000/img00000000.png', '00000/img00000001.png']


# ---------------------------------------------------------------------------------------------
# Content digest (the metrics' statistics-cache key), kwargs for the metrics, generated-image sets.

def _folder_digest_by_hand(root) -> str:
    """The documented folder formula: SHA-1 over sorted visible files of json([name, size]) + SHA-1(bytes)."""
    names = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/')
            if not any(part.startswith('.') or part == '__MACOSX' for part in rel.split('/')):
                names.append(rel)
    h = hashlib.sha1()
    for name in sorted(names):
        data = open(os.path.join(root, name), 'rb').read()
        h.update(json.dumps([name, len(data)]).encode())
        h.update(hashlib.sha1(data).digest())
    return 'dir-' + h.hexdigest()


def test_content_digest_of_a_folder_follows_the_content_not_the_path(tmp_path):
    images, names, _ = _make_folder(tmp_path / 'd', n=4, labels=[0, 1, 0, 1])
    (tmp_path / 'd' / '.DS_Store').write_bytes(b'ignored')
    digest = ImageFolderDataset(str(tmp_path / 'd')).content_digest()
    assert digest == _folder_digest_by_hand(tmp_path / 'd')  # the key format of existing caches
    assert ImageFilesDataset(str(tmp_path / 'd')).content_digest() == digest
    os.rename(tmp_path / 'd', tmp_path / 'moved')
    assert ImageFolderDataset(str(tmp_path / 'moved')).content_digest() == digest

    # One pixel of one image changes (same name, same size): another digest. The memo is keyed by
    # mtime, so give the rewritten file a distinct one whatever the file system's resolution.
    path = tmp_path / 'moved' / names[1]
    before = os.stat(path)
    changed = images[1].copy()
    changed[0, 0, 0] ^= 1
    _save_png(str(path), changed)
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    new = ImageFolderDataset(str(tmp_path / 'moved')).content_digest()
    assert new != digest and new == _folder_digest_by_hand(tmp_path / 'moved')

    # The labels are content too.
    (tmp_path / 'moved' / 'dataset.json').write_text(json.dumps({'labels': None}))
    assert ImageFolderDataset(str(tmp_path / 'moved')).content_digest() not in (digest, new)


def test_content_digest_of_a_zip_is_its_central_directory(tmp_path):
    with DatasetWriter(str(tmp_path / 'a.zip')) as w:
        for v in range(3):
            w.add_image(np.full([4, 4, 3], v, np.uint8))
    with zipfile.ZipFile(tmp_path / 'a.zip') as z:
        entries = sorted((i.filename, i.file_size, i.CRC) for i in z.infolist() if not i.is_dir())
    digest = ImageFolderDataset(str(tmp_path / 'a.zip')).content_digest()
    assert digest == 'zip-' + hashlib.sha1(json.dumps(entries).encode()).hexdigest()
    with DatasetWriter(str(tmp_path / 'a.zip'), exist_ok=True) as w:
        for v in (0, 1, 3):
            w.add_image(np.full([4, 4, 3], v, np.uint8))
    assert ImageFolderDataset(str(tmp_path / 'a.zip')).content_digest() != digest


def test_dataset_kwargs_name_the_classes():
    assert util.get_obj_by_name(IMAGE_FOLDER_CLASS) is ImageFolderDataset
    assert IMAGE_FOLDER_CLASS == 'training.dataset.ImageFolderDataset'  # stored in old snapshots
    assert util.get_obj_by_name(IMAGE_FILES_CLASS) is ImageFilesDataset
    kwargs = image_folder_kwargs('builtin:8', use_labels=True)
    ds = util.construct_class_by_name(**kwargs)
    assert isinstance(ds, ImageFolderDataset) and ds.resolution == 8 and ds.has_labels
    assert reference_dataset_kwargs(None) is None and image_files_kwargs(None) is None
    assert dict(reference_dataset_kwargs('ref.zip')) == dict(class_name=IMAGE_FOLDER_CLASS, path='ref.zip',
                                                             max_size=None, xflip=False)
    assert isinstance(util.construct_class_by_name(**image_files_kwargs('builtin:8')), ImageFilesDataset)


def test_image_files_dataset_reads_any_size_without_labels(tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, [6, 10, 3], dtype=np.uint8)
    gray = rng.integers(0, 256, [7, 7], dtype=np.uint8)
    _save_png(str(tmp_path / 'g' / 'a.png'), rgb)
    _save_png(str(tmp_path / 'g' / 'b' / 'c.png'), gray)
    (tmp_path / 'g' / 'notes.txt').write_text('not an image')
    ds = ImageFilesDataset(str(tmp_path / 'g'))
    assert len(ds) == 2 and not ds.has_labels and ds.label_dim == 0
    img, label = ds[0]
    assert img.dtype == np.uint8 and np.array_equal(img, rgb.transpose(2, 0, 1)) and label.shape == (0,)
    assert np.array_equal(ds[1][0], gray[None])
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(UserError, match='^--gen-data=.*empty: no image files found$'):
        ImageFilesDataset(str(tmp_path / 'empty'))


def test_dataset_modules_import_in_layers():
    """image_files knows nothing of the built-in set or the Dataset classes; builtin_dataset nothing of the latter."""
    code = ('import sys, training.{0}; '
            'print(sorted(m for m in sys.modules if m.startswith("training.")))')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    loaded = {}
    for mod in ('image_files', 'builtin_dataset'):
        out = subprocess.run([sys.executable, '-c', code.format(mod)], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=120).stdout
        loaded[mod] = json.loads(out.strip().replace("'", '"'))
    assert loaded['image_files'] == ['training.image_files']
    assert loaded['builtin_dataset'] == ['training.builtin_dataset', 'training.image_files']
