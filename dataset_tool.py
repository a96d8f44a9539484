"""Convert images into a training dataset — StyleGAN2-ADA's dataset_tool.py (docs/stylegan2-ada.md §9).

Examples:

\b
  # The built-in generated low-shot dataset (100 portraits, 64x64) as a zip:
  python dataset_tool.py --source=builtin --dest=~/datasets/builtin.zip
\b
  # A folder of photos of mixed sizes, centre-cropped and resized to 256x256:
  python dataset_tool.py --source=~/photos --dest=~/datasets/photos256.zip \\
      --transform=center-crop --resolution=256x256
\b
  # CIFAR-10 (the python tarball from the CIFAR-10 web page), training or test split:
  python dataset_tool.py --source=cifar-10-python.tar.gz --dest=~/datasets/cifar10.zip
  python dataset_tool.py --source=cifar-10-python.tar.gz --dest=~/datasets/cifar10-test.zip --cifar-split=test

Sources: a folder (searched recursively) or a zip of images (PNG, JPEG, WebP, … — files
with other extensions are ignored; a dataset.json next to the images supplies labels: class
indices 0-99999 or lists of numbers, checked before anything is written),
cifar-10-python.tar.gz, or builtin / builtin:RES. Output (--dest): a .zip
(uncompressed) or a folder that must be absent or empty, holding NNNNN/imgNNNNNNNN.png
and dataset.json. Output is written to a temporary name and renamed at the end, so an
error never leaves a partial dataset behind.

Images: grayscale stays one channel when every image is grayscale (else becomes RGB),
transparency is composited on black, 16-bit values are scaled to 8 bits, palette/CMYK → RGB.
Without --transform/--resolution all images must have one size; the result must be
square with a power-of-two side. --transform=center-crop crops the largest centred
square and resizes it; --transform=center-crop-wide crops to the W:H aspect, resizes to
WxH and pastes it centred on a black max(W,H)-square canvas (letterbox).
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import lzma
import os
import pickle
import re
import sys
import tarfile
import zipfile
import zlib
from typing import Any, Callable, Optional

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

from dnnlib import util
from dnnlib.util import UserError
from training import builtin_dataset
from training.image_files import DatasetWriter, ImageSource, image_extensions, image_to_array, is_grayscale_mode, \
    labels_to_array

Size = tuple[int, int]  # (width, height)

# ---------------------------------------------------------------------------------------------
# Sources: a uniform view (count, header, decoded image, label) over folders, zips and arrays.


@dataclasses.dataclass
class _Header:
    width: int
    height: int
    grayscale: bool


class _FileSource:
    """Images of a folder or zip (via :class:`training.image_files.ImageSource`) in sorted order."""

    def __init__(self, path: str, max_images: Optional[int]):
        self.src = ImageSource(path)
        self.path = path
        self.names = self.src.image_names[:max_images]
        labels = self.src.read_labels()
        self.labels: list[Any] = [None] * len(self.names)
        self.num_unlabeled = 0
        if labels is not None:
            self.labels = [labels.get(n) for n in self.names]
            present = [(n, v) for n, v in zip(self.names, self.labels) if v is not None]
            if present:  # validate early: class range, one kind of label, finite numbers (names the file)
                labels_to_array([v for _, v in present], f'{path}/dataset.json', [n for n, _ in present])
            self.num_unlabeled = len(self.names) - len(present)

    def __len__(self) -> int:
        return len(self.names)

    def describe(self, i: int) -> str:
        return os.path.join(self.path, self.names[i])

    def header(self, i: int) -> _Header:
        data = self.src.read_bytes(self.names[i])
        try:
            img = PIL.Image.open(io.BytesIO(data))
        except Exception as e:
            why = 'unknown format' if isinstance(e, PIL.UnidentifiedImageError) else str(e)
            raise UserError(f'{self.describe(i)} is not a readable image ({why}); remove it from the source '
                            f'or replace it') from None
        return _Header(img.width, img.height, is_grayscale_mode(img.mode))

    def load(self, i: int) -> tuple[np.ndarray, Optional[str]]:
        return image_to_array(self.src.open_image(self.names[i]), self.describe(i))

    def close(self) -> None:
        self.src.close()


class _ArraySource:
    """Images already in memory (CIFAR-10, the built-in dataset): uint8 [N, H, W, C]."""

    def __init__(self, name: str, images: np.ndarray, labels: Optional[list[int]]):
        self.path = name
        self.images = images
        self.labels = labels if labels is not None else [None] * len(images)
        self.num_unlabeled = 0

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, i: int) -> str:
        return f'{self.path}[{i}]'

    def header(self, i: int) -> _Header:
        return _Header(self.images.shape[2], self.images.shape[1], self.images.shape[3] == 1)

    def load(self, i: int) -> tuple[np.ndarray, Optional[str]]:
        return self.images[i], None

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python tarball.

#: The only globals a CIFAR-10 batch pickle may reference: numpy array reconstruction. Loading a
#: pickle with the plain unpickler runs whatever code the file names, so a tampered download could
#: execute arbitrary commands; this allow-list makes a malicious file a one-line error instead.
_CIFAR_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_CIFAR_PICKLE_GLOBALS` (numpy 1.x and 2.x module names)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name} (only numpy arrays are allowed)')
        candidates = [module]
        if module.startswith('numpy.core.'):
            candidates.insert(0, 'numpy._core.' + module[len('numpy.core.'):])
        elif module.startswith('numpy._core.'):
            candidates.append('numpy.core.' + module[len('numpy._core.'):])
        for mod in candidates:
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f'cannot resolve {module}.{name}')


def _cifar_batch_names(names: list[str], split: str) -> list[str]:
    if split == 'test':
        return [n for n in names if os.path.basename(n) == 'test_batch']
    found = {}
    for n in names:
        m = re.fullmatch(r'data_batch_(\d+)', os.path.basename(n))
        if m:
            found[int(m.group(1))] = n
    return [found[k] for k in sorted(found)]


#: What reading a damaged compressed tarball raises: gzip/bz2/xz end-of-stream (EOFError — which
#: click would take for an aborted prompt: exit 130 and a blank line), bad data (zlib.error,
#: lzma.LZMAError, OSError such as gzip.BadGzipFile), broken tar headers (tarfile.TarError).
_DAMAGED_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, lzma.LZMAError, tarfile.TarError,
                                                             OSError)


def _damaged_archive(path: str, e: BaseException) -> UserError:
    if isinstance(e, OSError) and e.errno is not None:  # the system's error (permissions, I/O), not the data's
        return UserError(f'--source {path}: cannot read it ({e.strerror or e})')
    why = str(e) or type(e).__name__
    return UserError(f'--source {path} is truncated or corrupt ({why}); download cifar-10-python.tar.gz again '
                     f'(an interrupted download leaves such a file)')


def _is_tarfile(path: str) -> bool:
    """``tarfile.is_tarfile``, except that a damaged compressed tarball is a UserError, not an EOFError."""
    try:
        return tarfile.is_tarfile(path)
    except _DAMAGED_ARCHIVE_ERRORS as e:
        raise _damaged_archive(path, e) from None


def _read_cifar_batch(tar: tarfile.TarFile, member: str, where: str) -> tuple[np.ndarray, list[int]]:
    f = tar.extractfile(member)
    if f is None:
        raise UserError(f'{where}: {member} is not a regular file')
    try:
        data = f.read()
    except _DAMAGED_ARCHIVE_ERRORS as e:
        raise _damaged_archive(where, e) from None
    try:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding='bytes').load()
    except Exception as e:
        raise UserError(f'{where}: cannot read {member} as a CIFAR-10 batch ({e}); '
                        f'use the original cifar-10-python.tar.gz') from None
    if not isinstance(batch, dict):
        raise UserError(f'{where}: {member} is not a CIFAR-10 batch (not a dict)')
    batch = {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get('data'), batch.get('labels')
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and isinstance(labels, list) and len(labels) == data.shape[0]
            and all(isinstance(v, int) and 0 <= v <= 9 for v in labels)):
        raise UserError(f'{where}: {member} does not hold CIFAR-10 data (uint8 [N, 3072] and N labels 0-9)')
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), [int(v) for v in labels]


def _open_cifar(path: str, split: str, max_images: Optional[int]) -> _ArraySource:
    """Read ``cifar-10-batches-py/data_batch_1..5`` (train) or ``test_batch`` (test) from the tarball."""
    try:
        tar = tarfile.open(path)
    except _DAMAGED_ARCHIVE_ERRORS as e:
        raise _damaged_archive(path, e) from None
    with tar:
        try:
            names = [m.name for m in tar.getmembers() if m.isfile()]  # reads the whole archive
        except _DAMAGED_ARCHIVE_ERRORS as e:
            raise _damaged_archive(path, e) from None
        members = _cifar_batch_names(names, split)
        if not members:
            wanted = 'test_batch' if split == 'test' else 'data_batch_1..5'
            raise UserError(f'{path} is not a CIFAR-10 python tarball (no {wanted} inside); '
                            f'download cifar-10-python.tar.gz or pass a folder/zip of images')
        images, labels = [], []
        for member in members:
            imgs, labs = _read_cifar_batch(tar, member, path)
            images.append(imgs)
            labels += labs
            if max_images is not None and len(labels) >= max_images:
                break
    all_images = np.concatenate(images)[:max_images]
    return _ArraySource(os.path.basename(path), np.ascontiguousarray(all_images), labels[:max_images])


def open_source(source: str, max_images: Optional[int] = None, cifar_split: str = 'train') -> Any:
    """Open ``--source``: a folder, a zip, a CIFAR-10 python tarball, or ``builtin[:RES]``."""
    spec = builtin_dataset.parse_builtin_spec(source)
    if spec is not None and not os.path.exists(source):
        res = spec or builtin_dataset.DEFAULT_RESOLUTION
        count = builtin_dataset.DEFAULT_NUM_IMAGES if max_images is None else min(max_images, 100)
        images = builtin_dataset.generate_builtin_images(res, count)
        labels = builtin_dataset.generate_builtin_labels(count).tolist()
        return _ArraySource(source, images, labels)
    if not os.path.exists(source):
        raise UserError(f'--source {source} does not exist')
    if os.path.isdir(source) or zipfile.is_zipfile(source):
        return _FileSource(source, max_images)
    if _is_tarfile(source):
        return _open_cifar(source, cifar_split, max_images)
    raise UserError(f'--source {source} is not a folder, a zip, a CIFAR-10 python tarball or "builtin"')


# ---------------------------------------------------------------------------------------------
# Geometry.

def _pow2_at_most(n: int) -> int:
    return 1 << max(2, int(n).bit_length() - 1)


def _scan(src: Any, progress: bool) -> list[_Header]:
    """Read every header (size, grayscale) before writing anything; bad files fail here."""
    if isinstance(src, _ArraySource):
        return [src.header(0)] * len(src)
    headers = []
    with tqdm(total=len(src), desc='Scanning', unit='img', file=sys.stderr, disable=not progress, leave=False) as bar:
        for i in range(len(src)):  # the bar is closed before an error is printed
            headers.append(src.header(i))
            bar.update(1)
    return headers


def plan_output_size(headers: list[_Header], describe: Callable[[int], str], transform: Optional[str],
                     resolution: Optional[Size]) -> Size:
    """The output (width, height); errors for mixed sizes without a transform and bad results
    (docs/stylegan2-ada.md §9)."""
    if transform is not None and resolution is None:
        raise UserError(f'--transform={transform} needs --resolution=WxH (e.g. --resolution=256x256)')
    if resolution is None:
        w0, h0 = headers[0].width, headers[0].height
        for i, hd in enumerate(headers):
            if (hd.width, hd.height) != (w0, h0):
                s = _pow2_at_most(min(w0, h0, hd.width, hd.height))
                raise UserError(f'{describe(i)} is {hd.width}x{hd.height} but {describe(0)} is {w0}x{h0}; images of '
                                f'different sizes need --transform=center-crop --resolution=WxH (e.g. {s}x{s})')
        out = (w0, h0)
    elif transform == 'center-crop-wide':
        out = (max(resolution), max(resolution))
    else:
        out = resolution
    w, h = out
    if w != h or (w & (w - 1)) != 0:
        s = _pow2_at_most(min(w, h))
        hint = '' if transform else ' (add --transform=center-crop to crop instead of stretching)'
        raise UserError(f'the output images would be {w}x{h}, but training needs square images with a power-of-two '
                        f'side; pass --resolution={s}x{s}{hint}')
    return out


_FILTERS = {'box': PIL.Image.Resampling.BOX, 'lanczos': PIL.Image.Resampling.LANCZOS}


def _resize(img: np.ndarray, size: Size, resample: int) -> np.ndarray:
    """Resize uint8 [H, W, C] (C = 1 or 3) to (width, height) with PIL; no-op if the size matches."""
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    pil = PIL.Image.fromarray(img[:, :, 0], 'L') if img.shape[2] == 1 else PIL.Image.fromarray(img, 'RGB')
    out = np.asarray(pil.resize(tuple(size), resample=resample))
    return out[:, :, None] if out.ndim == 2 else out


def center_crop(img: np.ndarray, size: Size, resample: int) -> np.ndarray:
    """Crop the largest centred square, then resize it to ``size``."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return _resize(img[top:top + s, left:left + s], size, resample)


def center_crop_wide(img: np.ndarray, size: Size, resample: int) -> np.ndarray:
    """Crop the largest centred W:H rectangle, resize it to W×H, paste it centred on a black S×S canvas, S = max(W, H)."""
    h, w = img.shape[:2]
    tw, th = size
    if w * th > h * tw:  # wider than W:H: crop the sides
        cw, ch = max(1, round(h * tw / th)), h
    else:  # taller than W:H: crop top and bottom
        cw, ch = w, max(1, round(w * th / tw))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = _resize(img[top:top + ch, left:left + cw], size, resample)
    s = max(tw, th)
    canvas = np.zeros([s, s, img.shape[2]], dtype=np.uint8)
    y0, x0 = (s - th) // 2, (s - tw) // 2
    canvas[y0:y0 + th, x0:x0 + tw] = crop
    return canvas


def _transform(img: np.ndarray, transform: Optional[str], resolution: Optional[Size], resample: int) -> np.ndarray:
    if transform == 'center-crop':
        return center_crop(img, resolution, resample)
    if transform == 'center-crop-wide':
        return center_crop_wide(img, resolution, resample)
    if resolution is not None:
        return _resize(img, resolution, resample)
    return img


# ---------------------------------------------------------------------------------------------
# Conversion.

def _note(text: str) -> None:
    print(f'note: {text}', file=sys.stderr)


def check_dest_location(dest: str) -> None:
    """One-line UserError when ``--dest`` cannot be created, before any source is read: the
    nearest existing ancestor is not a folder (a path under a file), or is not writable."""
    parent = os.path.dirname(os.path.abspath(dest))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f'--dest {dest}: {parent} is a file, not a folder; choose another path')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'--dest {dest}: cannot write into {parent} (permission denied); choose a folder you can '
                        f'write to')


def _os_reason(e: OSError) -> str:
    """``strerror: file`` of an OSError (or its text)."""
    if e.strerror and e.filename:
        return f'{e.strerror}: {e.filename}'
    return e.strerror or str(e)


def convert_dataset(source: str, dest: str, max_images: Optional[int] = None, resize_filter: str = 'lanczos',
                    transform: Optional[str] = None, resolution: Optional[Size] = None, cifar_split: str = 'train',
                    progress: bool = True) -> dict:
    """Convert ``source`` into a dataset at ``dest`` (docs/stylegan2-ada.md §9); return a summary dict.

    All checks that need only headers (no images, unreadable files, mixed sizes, a non-square or
    non-power-of-two result, an existing ``dest``) run before anything is written.
    """
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not dest.lower().endswith('.zip')
                                      and not os.listdir(dest)):
        raise UserError(f'--dest {dest} already exists and is not empty; remove it or choose another path')
    check_dest_location(dest)
    src = open_source(source, max_images, cifar_split)
    try:
        if len(src) == 0:
            exts = ', '.join(e for e in ('.png', '.jpg', '.jpeg', '.webp', '.bmp') if e in image_extensions())
            raise UserError(f'--source {source} contains no images (looked for {exts}, … files)')
        headers = _scan(src, progress)
        out_w, out_h = plan_output_size(headers, src.describe, transform, resolution)
        channels = 1 if all(hd.grayscale for hd in headers) else 3
        try:
            counts = _write_all(src, dest, channels, transform, resolution, _FILTERS[resize_filter], progress)
        except OSError as e:  # reading the source raises UserErrors; this is the writing (nothing is left behind)
            raise UserError(f'--dest {dest}: cannot write the dataset ({_os_reason(e)}); choose a writable location '
                            f'with enough free space') from None
    finally:
        src.close()
    _print_notes(counts, src, channels, transform, resolution, headers)
    labeled = counts['labeled']
    kind = 'grayscale' if channels == 1 else 'RGB'
    print(f'Wrote {len(src)} images ({out_w}x{out_h} {kind}, {"with" if labeled else "no"} labels) to {dest}')
    return dict(num_images=len(src), resolution=out_w, channels=channels, labels=labeled, dest=dest)


def _write_all(src: Any, dest: str, channels: int, transform: Optional[str], resolution: Optional[Size],
               resample: int, progress: bool) -> dict:
    counts = {'alpha': 0, '16bit': 0, 'gray_to_rgb': 0}
    bar = tqdm(total=len(src), desc='Writing', unit='img', file=sys.stderr, disable=not progress)
    with bar, DatasetWriter(dest) as writer:
        for i in range(len(src)):
            img, note = src.load(i)
            if note:
                counts[note] += 1
            if img.shape[2] != channels:
                img = np.repeat(img, 3, axis=2)
                counts['gray_to_rgb'] += 1
            writer.add_image(_transform(img, transform, resolution, resample), label=src.labels[i])
            bar.update(1)
        counts['labeled'] = all(v is not None for v in src.labels)
    return counts


def _print_notes(counts: dict, src: Any, channels: int, transform: Optional[str], resolution: Optional[Size],
                 headers: list[_Header]) -> None:
    if counts['alpha']:
        _note(f'{counts["alpha"]} images with transparency were composited on black')
    if counts['16bit']:
        _note(f'{counts["16bit"]} 16-bit images were scaled to 8 bits')
    if counts['gray_to_rgb']:
        _note(f'{counts["gray_to_rgb"]} grayscale images were converted to RGB because other images are in colour')
    if src.num_unlabeled and not counts['labeled']:
        _note(f'dataset.json has no label for {src.num_unlabeled} of the images; wrote "labels": null')
    if resolution is not None and transform is None:
        rw, rh = resolution
        stretched = sum(1 for hd in headers if hd.width * rh != hd.height * rw)
        if stretched:
            _note(f'{stretched} images had a different aspect ratio than {rw}x{rh} and were stretched; '
                  f'use --transform=center-crop to crop instead')


# ---------------------------------------------------------------------------------------------
# Command line.

def _parse_resolution(ctx: Any, param: Any, value: Optional[str]) -> Optional[Size]:
    """``'256x256'`` or ``'256'`` → (256, 256)."""
    if value is None:
        return None
    m = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', value)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise click.BadParameter(f'"{value}" is not WxH with positive integers (e.g. 256x256)')
    w = int(m.group(1))
    return (w, int(m.group(2)) if m.group(2) is not None else w)


def _merge_width_height(resolution: Optional[Size], width: Optional[int], height: Optional[int]) -> Optional[Size]:
    """Combine upstream's ``--width/--height`` with ``--resolution``."""
    if width is None and height is None:
        return resolution
    if width is None or height is None:
        raise UserError('--width and --height must be given together (or use --resolution=WxH)')
    if width < 1 or height < 1:
        raise UserError('--width and --height must be positive')
    if resolution is not None and resolution != (width, height):
        raise UserError(f'--resolution={resolution[0]}x{resolution[1]} contradicts --width={width} --height={height}; '
                        f'give only one of them')
    return (width, height)


@click.command(help=__doc__)
@click.option('--source', help='Folder, zip, cifar-10-python.tar.gz, or builtin / builtin:RES', metavar='PATH',
              required=True)
@click.option('--dest', help='Output .zip or folder (must not exist, or be an empty folder)', metavar='PATH',
              required=True)
@click.option('--max-images', help='Use at most this many images (the first ones in sorted order)',
              type=click.IntRange(min=1), metavar='INT')
@click.option('--resize-filter', help='Filter for resizing [default: lanczos]',
              type=click.Choice(['box', 'lanczos']), default='lanczos')
@click.option('--transform', help='Crop before resizing (needs --resolution)',
              type=click.Choice(['center-crop', 'center-crop-wide']))
@click.option('--resolution', help='Output size, e.g. 256x256', metavar='WxH', callback=_parse_resolution)
@click.option('--width', help='Output width (upstream spelling; or use --resolution)', type=int)
@click.option('--height', help='Output height (upstream spelling; or use --resolution)', type=int)
@click.option('--cifar-split', help='Which CIFAR-10 split to convert [default: train]',
              type=click.Choice(['train', 'test']), default='train')
def main(source: str, dest: str, max_images: Optional[int], resize_filter: str, transform: Optional[str],
         resolution: Optional[Size], width: Optional[int], height: Optional[int], cifar_split: str) -> None:
    resolution = _merge_width_height(resolution, width, height)
    convert_dataset(os.path.expanduser(source), os.path.expanduser(dest), max_images=max_images,
                    resize_filter=resize_filter, transform=transform, resolution=resolution, cifar_split=cifar_split)


if __name__ == '__main__':
    util.run_cli(main)
