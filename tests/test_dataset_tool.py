"""Tests for dataset_tool.py: round trips, CIFAR-10, transforms and every bad input of issue "Foundation I" item 5."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

import dataset_tool
from dnnlib import util
from training.builtin_dataset import generate_builtin_images, generate_builtin_labels
from training.dataset import ImageFolderDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('DEGAN_CACHE_DIR', str(tmp_path / 'cache'))


def run_tool(capsys, *args):
    """Run the CLI in-process exactly as ``python dataset_tool.py`` does; return (exit code, stdout, stderr)."""
    code = 0
    try:
        util.run_cli(dataset_tool.main, [str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(err):
    """The single ``error:`` line of stderr (progress bars may precede it)."""
    lines = [line for line in err.replace('\r', '\n').splitlines() if line.startswith('error:')]
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    return lines[0]


def save(path, array, mode=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path, **kwargs)


def random_images(n, h, w, c=3, seed=0):
    shape = [n, h, w, c] if c > 1 else [n, h, w]
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def leftovers(directory):
    """Hidden temp files/folders the tool might have left next to --dest."""
    if not os.path.isdir(directory):
        return []
    return [f for f in os.listdir(directory) if f.startswith('.')]


# ---------------------------------------------------------------------------------------------
# Round trips.

def test_folder_to_zip_round_trip_with_labels(tmp_path, capsys):
    imgs = random_images(5, 16, 16)
    names = [f'cls/{i}.png' for i in range(5)]
    for name, img in zip(names, imgs):
        save(str(tmp_path / 'src' / name), img)
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [[n, i % 3] for i, n in enumerate(names)]}))
    (tmp_path / 'src' / 'readme.txt').write_text('ignored')
    (tmp_path / 'src' / '.DS_Store').write_bytes(b'\x00')
    code, out, err = run_tool(capsys, '--source', tmp_path / 'src', '--dest', tmp_path / 'out.zip')
    assert code == 0, err
    assert 'Wrote 5 images (16x16 RGB, with labels)' in out
    with zipfile.ZipFile(tmp_path / 'out.zip') as z:
        assert sorted(z.namelist()) == ['00000/img0000000%d.png' % i for i in range(5)] + ['dataset.json']
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        meta = json.loads(z.read('dataset.json'))
    assert meta['labels'] == [[f'00000/img0000000{i}.png', i % 3] for i in range(5)]
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert ds.has_onehot_labels and ds.label_shape == [3]
    for i in range(5):
        img, label = ds[i]
        assert np.array_equal(img, imgs[i].transpose(2, 0, 1))
        assert np.array_equal(label, np.eye(3, dtype=np.float32)[i % 3])
    assert leftovers(tmp_path) == []


def test_zip_to_folder_max_images_and_width_height(tmp_path, capsys):
    imgs = random_images(4, 16, 16, seed=1)
    with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as z:
        for i, img in enumerate(imgs):
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format='png')
            z.writestr(f'x/{i}.png', buf.getvalue())
    code, out, err = run_tool(capsys, '--source', tmp_path / 'src.zip', '--dest', tmp_path / 'out',
                              '--max-images', 3, '--width', 8, '--height', 8, '--resize-filter', 'box')
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / 'out')) == ['00000', 'dataset.json']
    assert json.loads((tmp_path / 'out' / 'dataset.json').read_text()) == {'labels': None}
    ds = ImageFolderDataset(str(tmp_path / 'out'))
    assert len(ds) == 3 and ds.resolution == 8
    # Box filter with an exact factor of 2 = the mean of 2x2 blocks (PIL rounds in fixed point).
    expected = imgs[:3].reshape(3, 8, 2, 8, 2, 3).astype(np.float64).mean(axis=(2, 4))
    got = np.stack([ds[i][0].transpose(1, 2, 0) for i in range(3)]).astype(np.float64)
    assert np.abs(got - expected).max() <= 1
    # An empty destination folder is fine too.
    (tmp_path / 'empty').mkdir()
    code, _, err = run_tool(capsys, '--source', tmp_path / 'src.zip', '--dest', tmp_path / 'empty')
    assert code == 0, err and len(ImageFolderDataset(str(tmp_path / 'empty'))) == 4


def test_builtin_source(tmp_path, capsys):
    code, out, err = run_tool(capsys, '--source', 'builtin:16', '--dest', tmp_path / 'b.zip', '--max-images', 10)
    assert code == 0, err
    ds = ImageFolderDataset(str(tmp_path / 'b.zip'), use_labels=True)
    expected, labels = generate_builtin_images(16, 10), generate_builtin_labels(10)
    assert len(ds) == 10
    for i in range(10):
        assert np.array_equal(ds[i][0], expected[i].transpose(2, 0, 1))
        assert ds.get_details(i).raw_label == labels[i]


# ---------------------------------------------------------------------------------------------
# CIFAR-10.

def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b'batch_label': b'fake', b'data': rng.integers(0, 256, size=[n, 3072], dtype=np.uint8),
            b'labels': rng.integers(0, 10, size=n).tolist()}


def _make_cifar(path, protocol=2, old_numpy_names=False, tamper=None):
    batches = {f'data_batch_{k}': _cifar_batch(3, k) for k in range(1, 6)}
    batches['test_batch'] = _cifar_batch(2, 9)
    with tarfile.open(path, 'w:gz') as tar:
        for name, batch in batches.items():
            data = pickle.dumps(batch, protocol=protocol)
            if old_numpy_names:  # as written by numpy 1.x (the real file's module names)
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            if tamper is not None and name == 'data_batch_2':
                data = tamper
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return batches


def _cifar_hwc(batch):
    return batch[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize('protocol,old_names', [(2, True), (5, False)])
def test_cifar_train_and_test(tmp_path, capsys, protocol, old_names):
    batches = _make_cifar(tmp_path / 'cifar-10-python.tar.gz', protocol, old_names)
    code, _, err = run_tool(capsys, '--source', tmp_path / 'cifar-10-python.tar.gz', '--dest', tmp_path / 'tr.zip')
    assert code == 0, err
    ds = ImageFolderDataset(str(tmp_path / 'tr.zip'), use_labels=True)
    images = np.concatenate([_cifar_hwc(batches[f'data_batch_{k}']) for k in range(1, 6)])
    labels = sum((batches[f'data_batch_{k}'][b'labels'] for k in range(1, 6)), [])
    assert len(ds) == 15 and ds.resolution == 32 and ds.label_dim == max(labels) + 1
    for i in range(15):
        assert np.array_equal(ds[i][0], images[i].transpose(2, 0, 1))
        assert ds.get_details(i).raw_label == labels[i]
    code, _, err = run_tool(capsys, '--source', tmp_path / 'cifar-10-python.tar.gz', '--dest', tmp_path / 'te.zip',
                            '--cifar-split', 'test')
    assert code == 0, err
    ds = ImageFolderDataset(str(tmp_path / 'te.zip'))
    assert len(ds) == 2 and np.array_equal(ds[1][0], _cifar_hwc(batches['test_batch'])[1].transpose(2, 0, 1))


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_cifar_refuses_code_in_pickles(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_cifar(tmp_path / 'c.tar.gz', tamper=pickle.dumps({b'data': _Evil()}))
    code, _, err = run_tool(capsys, '--source', 'c.tar.gz', '--dest', 'out.zip')
    assert code == 1 and 'data_batch_2' in error_line(err) and 'refusing' in err
    assert not (tmp_path / 'pwned').exists() and not (tmp_path / 'out.zip').exists()
    # A tarball without CIFAR batches is rejected by name.
    with tarfile.open(tmp_path / 'other.tar', 'w') as tar:
        tar.addfile(tarfile.TarInfo('hello'), io.BytesIO(b''))
    code, _, err = run_tool(capsys, '--source', 'other.tar', '--dest', 'out.zip')
    assert code == 1 and 'not a CIFAR-10 python tarball' in error_line(err)


# ---------------------------------------------------------------------------------------------
# Image kinds that are handled.

def test_grayscale_kept_or_converted(tmp_path, capsys):
    gray = random_images(2, 8, 8, c=1, seed=3)
    for i, g in enumerate(gray):
        save(str(tmp_path / 'g' / f'{i}.png'), g, 'L')
    code, out, err = run_tool(capsys, '--source', tmp_path / 'g', '--dest', tmp_path / 'g.zip')
    assert code == 0 and '8x8 grayscale' in out
    ds = ImageFolderDataset(str(tmp_path / 'g.zip'))
    assert ds.num_channels == 1 and np.array_equal(ds[1][0][0], gray[1])
    save(str(tmp_path / 'g' / '2.png'), random_images(1, 8, 8, seed=4)[0])
    code, out, err = run_tool(capsys, '--source', tmp_path / 'g', '--dest', tmp_path / 'mixed.zip')
    assert code == 0 and '8x8 RGB' in out and 'note: 2 grayscale images were converted to RGB' in err
    ds = ImageFolderDataset(str(tmp_path / 'mixed.zip'))
    assert ds.num_channels == 3 and np.array_equal(ds[0][0], np.stack([gray[0]] * 3))


def test_rgba_and_16bit(tmp_path, capsys):
    rgba = random_images(1, 8, 8, c=4, seed=5)[0]
    save(str(tmp_path / 'a' / 'x.png'), rgba, 'RGBA')
    save(str(tmp_path / 'a' / 'y.png'), rgba[..., :3])
    code, _, err = run_tool(capsys, '--source', tmp_path / 'a', '--dest', tmp_path / 'a.zip')
    assert code == 0 and 'note: 1 images with transparency were composited on black' in err
    expected = np.floor(rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255.0 + 0.5)
    ds = ImageFolderDataset(str(tmp_path / 'a.zip'))
    assert ds.num_channels == 3 and np.array_equal(ds[0][0].transpose(1, 2, 0), expected)

    v16 = np.random.default_rng(6).integers(0, 65536, size=[8, 8]).astype(np.uint16)
    save(str(tmp_path / 'h' / 'x.png'), v16)
    code, _, err = run_tool(capsys, '--source', tmp_path / 'h', '--dest', tmp_path / 'h.zip')
    assert code == 0 and 'note: 1 16-bit images were scaled to 8 bits' in err
    ds = ImageFolderDataset(str(tmp_path / 'h.zip'))
    assert ds.num_channels == 1 and np.array_equal(ds[0][0][0], np.round(v16 / 257.0))


# ---------------------------------------------------------------------------------------------
# Transforms.

def _ramp_image(h, w):
    """Distinct values per pixel: R = column, G = row, B = 100."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4, yy * 4, np.full_like(xx, 100)], axis=-1).astype(np.uint8)


def test_center_crop_geometry(tmp_path, capsys):
    save(str(tmp_path / 's' / 'wide.png'), _ramp_image(32, 48))  # 48 wide, 32 high
    save(str(tmp_path / 's' / 'tall.png'), _ramp_image(40, 32))
    code, out, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'c.zip',
                              '--transform', 'center-crop', '--resolution', '16x16', '--resize-filter', 'box')
    assert code == 0, err
    ds = ImageFolderDataset(str(tmp_path / 'c.zip'))  # sorted: tall.png, wide.png
    for i, (h, w) in enumerate([(40, 32), (32, 48)]):
        s = min(h, w)
        crop = _ramp_image(h, w)[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2].astype(np.float64)
        expected = crop.reshape(16, s // 16, 16, s // 16, 3).mean(axis=(1, 3))
        assert np.abs(ds[i][0].transpose(1, 2, 0) - expected).max() <= 1


def test_center_crop_wide_letterbox(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), _ramp_image(40, 64))  # wider than 2:1 after... 64:40 = 1.6
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'w.zip',
                            '--transform', 'center-crop-wide', '--resolution', '32x16', '--resize-filter', 'box')
    assert code == 0, err
    img = ImageFolderDataset(str(tmp_path / 'w.zip'))[0][0].transpose(1, 2, 0).astype(np.float64)
    assert img.shape == (32, 32, 3)
    # 64x40 is taller than 2:1, so rows are cropped to 64/2 = 32 (rows 4..36), then halved to 32x16.
    crop = _ramp_image(40, 64)[4:36].astype(np.float64)
    expected = crop.reshape(16, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.all(img[:8] == 0) and np.all(img[24:] == 0)  # black letterbox bands
    assert np.abs(img[8:24] - expected).max() <= 1


def test_resolution_stretch_note(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), _ramp_image(8, 16))
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', '--resolution', '8')
    assert code == 0 and 'stretched' in err and ImageFolderDataset(str(tmp_path / 'o.zip')).resolution == 8


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the fix, exit ≠ 0, nothing left behind.

def _assert_failed(code, err, tmp_path, dest, *needles):
    assert code not in (0, None)
    line = error_line(err)
    for needle in needles:
        assert needle in line, line
    assert not os.path.lexists(dest)
    assert leftovers(os.path.dirname(dest)) == []
    return line


def test_truncated_image(tmp_path, capsys):
    imgs = random_images(4, 16, 16, seed=7)
    for i, img in enumerate(imgs):
        save(str(tmp_path / 's' / f'{i}.png'), img, compress_level=0)
    bad = tmp_path / 's' / '2.png'
    bad.write_bytes(bad.read_bytes()[:400])  # header intact: fails while writing, after two images
    dest = tmp_path / 'out' / 'o.zip'
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', dest)
    _assert_failed(code, err, tmp_path, str(dest), '2.png', 'remove or replace')
    assert not (tmp_path / 'out').exists()
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'folder')
    _assert_failed(code, err, tmp_path, str(tmp_path / 'folder'), '2.png')


def test_non_image_file_with_image_extension(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), random_images(1, 8, 8)[0])
    (tmp_path / 's' / 'b.jpg').write_text('this is text')
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip')
    _assert_failed(code, err, tmp_path, str(tmp_path / 'o.zip'), 'b.jpg', 'not a readable image', 'remove it')


def test_mixed_sizes_without_transform(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), random_images(1, 16, 16)[0])
    save(str(tmp_path / 's' / 'b.png'), random_images(1, 16, 24)[0])
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip')
    _assert_failed(code, err, tmp_path, str(tmp_path / 'o.zip'), 'b.png', '24x16', '--transform=center-crop',
                   '--resolution=')


def test_empty_folder(tmp_path, capsys):
    (tmp_path / 's').mkdir()
    (tmp_path / 's' / 'notes.txt').write_text('x')
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip')
    _assert_failed(code, err, tmp_path, str(tmp_path / 'o.zip'), 'contains no images')


@pytest.mark.parametrize('size,args,needle', [
    ((16, 8), [], '--resolution=8x8'),  # non-square (W x H = 16 x 8)
    ((12, 12), [], '--resolution=8x8'),  # not a power of two
    ((16, 16), ['--resolution', '16x8'], '16x8'),  # non-square requested
    ((16, 16), ['--transform', 'center-crop-wide', '--resolution', '24x12'], '24x24'),
])
def test_bad_result_geometry(tmp_path, capsys, size, args, needle):
    save(str(tmp_path / 's' / 'a.png'), random_images(1, size[1], size[0])[0])
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', *args)
    _assert_failed(code, err, tmp_path, str(tmp_path / 'o.zip'), 'power-of-two', needle)


def test_existing_dest(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), random_images(1, 8, 8)[0])
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('mine')
    (tmp_path / 'old.zip').write_bytes(b'old')
    for dest in (tmp_path / 'full', tmp_path / 'old.zip'):
        code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', dest)
        assert code == 1 and str(dest) in error_line(err) and 'remove it or choose another path' in err
    assert (tmp_path / 'full' / 'keep.txt').read_text() == 'mine' and (tmp_path / 'old.zip').read_bytes() == b'old'
    assert leftovers(tmp_path) == []


def test_flag_errors(tmp_path, capsys):
    save(str(tmp_path / 's' / 'a.png'), random_images(1, 8, 8)[0])
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', '--resolution', 'big')
    assert code == 2 and '--resolution' in error_line(err)
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', '--transform',
                            'center-crop')
    assert code == 1 and 'needs --resolution' in error_line(err)
    code, _, err = run_tool(capsys, '--source', tmp_path / 'nope', '--dest', tmp_path / 'o.zip')
    assert code == 1 and 'nope does not exist' in error_line(err)
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip', '--width', '8')
    assert code == 1 and '--height' in error_line(err)
    assert not (tmp_path / 'o.zip').exists()


def test_script_exit_code_and_stderr(tmp_path):
    """The real script: a bad input prints one error line (no traceback) and exits non-zero."""
    save(str(tmp_path / 's' / 'a.png'), random_images(1, 8, 8)[0])
    (tmp_path / 's' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'dataset_tool.py'), '--source', str(tmp_path / 's'),
                           '--dest', str(tmp_path / 'o.zip')], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1
    assert 'broken.png' in error_line(proc.stderr)
    assert not (tmp_path / 'o.zip').exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Issue 18 item 6: unwritable --dest, absurd labels, a truncated CIFAR download.

def test_dest_under_a_file(tmp_path, capsys):
    (tmp_path / 'afile').write_text('mine')
    for dest in (tmp_path / 'afile' / 'o.zip', tmp_path / 'afile' / 'sub' / 'out'):
        code, _, err = run_tool(capsys, '--source', 'builtin:16', '--max-images', 2, '--dest', dest)
        assert code == 1
        assert error_line(err) == f'error: --dest {dest}: {tmp_path / "afile"} is a file, not a folder; choose ' \
                                  f'another path'
    assert os.listdir(tmp_path) == ['afile'] and (tmp_path / 'afile').read_text() == 'mine'


def test_dest_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    ro = tmp_path / 'ro'
    ro.mkdir()
    real_access = os.access
    # As root chmod does not stop writes, so the permission check is simulated; below, a real one.
    monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    for dest in (ro / 'o.zip', ro / 'new' / 'deeper' / 'out'):
        code, _, err = run_tool(capsys, '--source', 'builtin:16', '--max-images', 2, '--dest', dest)
        assert code == 1
        assert error_line(err) == f'error: --dest {dest}: cannot write into {ro} (permission denied); choose a ' \
                                  f'folder you can write to'
    assert os.listdir(ro) == []


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root may write into read-only folders')
def test_dest_in_a_really_read_only_folder(tmp_path, capsys):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_tool(capsys, '--source', 'builtin:16', '--max-images', 2, '--dest', ro / 'o.zip')
        assert code == 1 and 'permission denied' in error_line(err)
    finally:
        ro.chmod(0o755)


def test_write_failure_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from training import image_files
    write = image_files.DatasetWriter._write

    def full_disk(self, name, data):
        if name.endswith('img00000001.png'):
            raise OSError(28, 'No space left on device', name)
        write(self, name, data)
    monkeypatch.setattr(image_files.DatasetWriter, '_write', full_disk)
    for dest in (tmp_path / 'o.zip', tmp_path / 'out'):
        code, _, err = run_tool(capsys, '--source', 'builtin:16', '--max-images', 3, '--dest', dest)
        assert code == 1
        assert error_line(err) == (f'error: --dest {dest}: cannot write the dataset (No space left on device: '
                                   f'00000/img00000001.png); choose a writable location with enough free space')
        assert not dest.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize('bad, needle', [
    (10 ** 9, 'the label of b.png is class 1000000000, but class labels must be below 100000 (at most 100000 '
              'classes; one embedding row each); renumber the classes 0, 1, 2, …'),
    (-3, 'class labels must be ≥ 0 (found -3, the label of b.png)'),
    ([1, 2], 'the label of b.png is a list but the label of a.png is a number; all labels must be integer classes '
             'or all lists of numbers of one length'),
    (float('inf'), 'the label of b.png is Infinity; labels must be finite numbers'),
])
def test_absurd_labels_are_refused_before_writing(tmp_path, capsys, bad, needle):
    for i, name in enumerate(('a.png', 'b.png', 'c.png')):
        save(str(tmp_path / 's' / name), random_images(1, 8, 8, seed=i)[0])
    (tmp_path / 's' / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 0], ['b.png', bad], ['c.png', 1]]}))
    code, _, err = run_tool(capsys, '--source', tmp_path / 's', '--dest', tmp_path / 'o.zip')
    assert code == 1 and error_line(err) == f'error: {tmp_path / "s"}/dataset.json: {needle}'
    assert not (tmp_path / 'o.zip').exists() and leftovers(tmp_path) == []


def _truncated_cifar(tmp_path, fraction=0.5, compressed=True):
    full = tmp_path / 'full.tar.gz'
    _make_cifar(full)
    data = full.read_bytes()
    if not compressed:
        import gzip
        data = gzip.decompress(data)
    path = tmp_path / ('cifar-10-python.tar.gz' if compressed else 'cifar-10-python.tar')
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


@pytest.mark.parametrize('fraction', [0.5, 0.9, 0.002])
def test_truncated_cifar_download(tmp_path, capsys, fraction):
    path = _truncated_cifar(tmp_path, fraction)
    code, out, err = run_tool(capsys, '--source', path, '--dest', tmp_path / 'o.zip')
    assert code == 1, (code, err)
    assert err.strip() == (f'error: --source {path} is truncated or corrupt (Compressed file ended before the '
                           f'end-of-stream marker was reached); download cifar-10-python.tar.gz again (an '
                           f'interrupted download leaves such a file)')
    assert not (tmp_path / 'o.zip').exists() and leftovers(tmp_path) == []


def test_truncated_uncompressed_tar(tmp_path, capsys):
    path = _truncated_cifar(tmp_path, compressed=False)
    code, _, err = run_tool(capsys, '--source', path, '--dest', tmp_path / 'o.zip')
    assert code == 1 and error_line(err).startswith(f'error: --source {path} is truncated or corrupt (')


def test_truncated_cifar_script_exit_code(tmp_path):
    """The real script: exit 1 and the error line (it was exit 130 and a blank line)."""
    path = _truncated_cifar(tmp_path)
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'dataset_tool.py'), '--source', str(path),
                           '--dest', str(tmp_path / 'o.zip')], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(f'error: --source {path} is truncated or corrupt')
    assert proc.stderr.count('\n') == 1


def test_run_cli_eof_error_is_not_ctrl_c(capsys):
    """Why the truncated download exited 130: click turns an EOFError escaping a command into the
    Abort of an interrupted prompt, which run_cli took for Ctrl-C. Now any such EOFError is exit 1
    with an error line; Ctrl-C stays 130."""
    import click

    @click.command()
    @click.option('--what', default='eof')
    def command(what):
        if what == 'eof':
            raise EOFError('Compressed file ended before the end-of-stream marker was reached')
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as info:
        util.run_cli(command, [])
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert [line for line in err.splitlines() if line] == [
        'error: unexpected end of a file (Compressed file ended before the end-of-stream marker was reached): it is '
        'truncated or corrupt; replace it (e.g. download or copy it again)']
    with pytest.raises(SystemExit) as info:
        util.run_cli(command, ['--what=ctrl-c'])
    assert info.value.code == 130 and 'error' not in capsys.readouterr().err
