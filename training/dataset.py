"""Training datasets: the StyleGAN2-ADA dataset format, read and written.

The format (stylegan2-ada.md §9, §14): a folder or an uncompressed zip of images (normally
``NNNNN/imgNNNNNNNN.png`` as written by ``dataset_tool.py``), square with a power-of-two
side, 1 (grayscale) or 3 (RGB) channels, plus an optional ``dataset.json`` of the form
``{"labels": [["00000/img00000000.png", 6], ...]}`` or ``{"labels": null}``. Integer labels
are class indices (one-hot encoded on read); lists of numbers are label vectors.

Public pieces:

* :class:`Dataset` / :class:`ImageFolderDataset` — upstream-compatible training datasets
  (``max_size`` seeded subset, ``xflip`` doubling, labels). ``path='builtin'`` or
  ``'builtin:32'`` reads the generated low-shot dataset of :mod:`training.builtin_dataset`.
* :class:`ImageSource`, :func:`open_image_source`, :func:`list_image_files` — list and read the
  images of a folder or zip (shared by ``dataset_tool.py`` and the metrics code).
* :func:`image_to_array` — decode any PIL image to uint8 HWC with 1 or 3 channels.
* :class:`DatasetWriter` — write a dataset zip/folder atomically (temp name + rename).

Every problem with the user's data raises :class:`dnnlib.util.UserError` with one line that
names the file and the fix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch

import dnnlib
from dnnlib.util import UserError, current_umask

LabelValue = Union[int, Sequence[float], None]

# ---------------------------------------------------------------------------------------------
# Which files are images.

_IMAGE_EXTENSIONS: Optional[frozenset[str]] = None


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (``'.png'``, ``'.jpg'``, …) that PIL can open (not save-only formats)."""
    global _IMAGE_EXTENSIONS
    if _IMAGE_EXTENSIONS is None:
        PIL.Image.init()
        readable = set(PIL.Image.OPEN)
        _IMAGE_EXTENSIONS = frozenset(ext.lower() for ext, fmt in PIL.Image.registered_extensions().items()
                                      if fmt in readable)
    return _IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    """Hidden files/folders (``.DS_Store``, ``._x.png`` AppleDouble files, temp files) and ``__MACOSX/``."""
    return any(part.startswith('.') or part == '__MACOSX' for part in name.split('/'))


def is_image_file(name: str) -> bool:
    """True for a visible file whose extension PIL can read (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, …)."""
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in image_extensions()


# ---------------------------------------------------------------------------------------------
# Reading a folder or a zip.

class ImageSource:
    """The files of a dataset folder or zip, listed in a deterministic (sorted) order.

    Names are relative paths with ``/`` separators (the keys used by ``dataset.json``). A zip
    is opened lazily, once per process, so an ``ImageSource`` can be pickled into DataLoader
    worker processes (fork or spawn) and each worker reads through its own file handle.
    """

    def __init__(self, path: str):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise UserError(f'dataset path "{path}" does not exist')
        self.path = path
        if os.path.isdir(path):
            self.kind = 'dir'
            names = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                rel = os.path.relpath(root, path)
                for fname in files:
                    names.append(fname if rel == '.' else os.path.join(rel, fname).replace(os.sep, '/'))
        elif zipfile.is_zipfile(path):
            self.kind = 'zip'
            names = [n for n in self._get_zip().namelist() if not n.endswith('/')]
        else:
            raise UserError(f'dataset path "{path}" is neither a folder nor a zip file; '
                            f'convert it with dataset_tool.py --source=... --dest=dataset.zip')
        self.all_names: list[str] = sorted(n for n in names if not _is_hidden(n))
        self.image_names: list[str] = [n for n in self.all_names if is_image_file(n)]
        self._names_set = frozenset(self.all_names)

    _zip: Optional[zipfile.ZipFile] = None
    _zip_pid: Optional[int] = None

    def _get_zip(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as e:
                raise UserError(f'cannot open zip "{self.path}": {e}; rebuild it with dataset_tool.py') from None
            self._zip_pid = os.getpid()
        return self._zip

    def has_file(self, name: str) -> bool:
        return name in self._names_set

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of one member."""
        try:
            if self.kind == 'dir':
                with open(os.path.join(self.path, name), 'rb') as f:
                    return f.read()
            return self._get_zip().read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f'cannot read "{name}" in {self.path}: {e}') from None

    def open_image(self, name: str) -> PIL.Image.Image:
        """Open and fully decode one image; a corrupt/truncated/non-image file → UserError naming it."""
        return decode_image(self.read_bytes(name), f'{self.path}/{name}')

    def load_image(self, name: str) -> np.ndarray:
        """One image as uint8 [H, W, C], C ∈ {1, 3} (see :func:`image_to_array`)."""
        return image_to_array(self.open_image(name), f'{self.path}/{name}')[0]

    def read_labels(self) -> Optional[dict[str, Any]]:
        """The ``labels`` of ``dataset.json`` as {name: label}, or None if absent / null."""
        if not self.has_file('dataset.json'):
            return None
        where = f'{self.path}/dataset.json'
        try:
            data = json.loads(self.read_bytes('dataset.json').decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f'{where} is not valid JSON ({e}); fix or delete it') from None
        labels = data.get('labels') if isinstance(data, dict) else 0
        if labels is None:
            return None
        if not isinstance(labels, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                  for p in labels):
            raise UserError(f'{where}: "labels" must be null or a list of [file name, label] pairs')
        return {fname.replace('\\', '/'): label for fname, label in labels}

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._zip = None
        self._zip_pid = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def __enter__(self) -> 'ImageSource':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def resolve_dataset_path(path: str, resolution: Optional[int] = None) -> str:
    """Map ``'builtin'`` / ``'builtin:RES'`` to the cached built-in zip; other paths pass through.

    An existing file or folder named ``builtin`` wins over the built-in dataset. ``'builtin'``
    without a resolution takes ``resolution`` when given, else 64.
    """
    from training import builtin_dataset
    spec = builtin_dataset.parse_builtin_spec(path)
    if spec is None or os.path.exists(path):
        return os.fspath(path)
    res = spec or resolution or builtin_dataset.DEFAULT_RESOLUTION
    return builtin_dataset.ensure_builtin_dataset(resolution=res)


def open_image_source(path: str) -> ImageSource:
    """An :class:`ImageSource` for a folder, a zip, or ``builtin[:RES]``."""
    return ImageSource(resolve_dataset_path(path))


def list_image_files(path: str) -> list[str]:
    """Sorted relative names (``/``-separated) of the images in a folder, a zip, or ``builtin[:RES]``.

    Hidden files and ``__MACOSX/`` are skipped; other non-image files are ignored.
    """
    with open_image_source(path) as src:
        return list(src.image_names)


# ---------------------------------------------------------------------------------------------
# Decoding.

_GRAY_MODES = frozenset(['1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N'])
_SIXTEEN_BIT_MODES = frozenset(['I', 'I;16', 'I;16L', 'I;16B', 'I;16N'])


def decode_image(data: bytes, name: str) -> PIL.Image.Image:
    """Open and fully decode an image from bytes; any failure → UserError naming the file."""
    try:
        img = PIL.Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors, ...
        why = 'not an image file PIL can read' if isinstance(e, PIL.UnidentifiedImageError) else str(e)
        raise UserError(f'cannot read image {name}: {why}; remove or replace the file') from None
    return img


def is_grayscale_mode(mode: str) -> bool:
    """True for PIL modes that :func:`image_to_array` turns into one channel."""
    return mode in _GRAY_MODES


def _composite_on_black(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Round(values · alpha / 255) in integers: premultiply onto a black background."""
    out = (values.astype(np.uint32) * alpha.astype(np.uint32)[..., None] + 127) // 255
    return out.astype(np.uint8)


def image_to_array(img: PIL.Image.Image, name: str = 'image') -> tuple[np.ndarray, Optional[str]]:
    """Convert a decoded PIL image to uint8 [H, W, C] with C = 1 (grayscale) or 3 (RGB).

    Returns ``(array, note)``; ``note`` says what was changed: ``'alpha'`` (RGBA/LA/palette
    transparency composited on black), ``'16bit'`` (16-bit values v scaled to round(v / 257))
    or None. Palette, CMYK, YCbCr, … become RGB; bilevel becomes 0/255 grayscale.
    """
    mode = img.mode
    if mode == 'RGB':
        return np.asarray(img, dtype=np.uint8), None
    if mode == 'L':
        return np.asarray(img, dtype=np.uint8)[..., None], None
    if mode in _SIXTEEN_BIT_MODES:
        v = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return ((2 * v + 257) // 514).astype(np.uint8)[..., None], '16bit'
    if mode == '1':
        return np.asarray(img.convert('L'), dtype=np.uint8)[..., None], None
    if mode in ('LA', 'La'):
        la = np.asarray(img.convert('LA'), dtype=np.uint8)
        return _composite_on_black(la[..., :1], la[..., 1]), 'alpha'
    if mode == 'P' and 'transparency' in img.info or mode in ('RGBA', 'RGBa', 'PA'):
        rgba = np.asarray(img.convert('RGBA'), dtype=np.uint8)
        return _composite_on_black(rgba[..., :3], rgba[..., 3]), 'alpha'
    try:
        return np.asarray(img.convert('RGB'), dtype=np.uint8), None
    except (ValueError, OSError) as e:
        raise UserError(f'image {name} has unsupported mode {mode} ({e}); convert it to 8-bit RGB') from None


# ---------------------------------------------------------------------------------------------
# Labels.

def labels_to_array(labels: Sequence[Any], where: str) -> np.ndarray:
    """Turn a list of labels into int64 [N] (class indices) or float32 [N, D] (vectors).

    Integers (or integral floats) → class indices ≥ 0; non-integral numbers → [N, 1] vectors;
    lists of numbers → [N, D] vectors of one common length D.
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if all(number(v) for v in labels):
        arr = np.array(labels, dtype=np.float64)
        if np.all(arr == np.round(arr)):
            if arr.min(initial=0) < 0:
                raise UserError(f'{where}: class labels must be ≥ 0 (found {int(arr.min())})')
            return arr.astype(np.int64)
        return arr.astype(np.float32)[:, None]
    if all(isinstance(v, list) and all(number(x) for x in v) for v in labels):
        lengths = sorted(set(len(v) for v in labels))
        if len(lengths) != 1:
            raise UserError(f'{where}: label vectors have different lengths {lengths}; all must have the same length')
        return np.array(labels, dtype=np.float32).reshape(len(labels), lengths[0])
    raise UserError(f'{where}: every label must be an integer class or a list of numbers')


# ---------------------------------------------------------------------------------------------
# Datasets.

class Dataset(torch.utils.data.Dataset):
    """Base dataset (upstream-compatible): seeded ``max_size`` subset, ``xflip`` doubling, labels.

    Subclasses implement ``_load_raw_image(raw_idx) -> uint8 [C, H, W]`` and
    ``_load_raw_labels() -> int64 [N] | float32 [N, D] | None``. Item ``idx`` is raw image
    ``_raw_idx[idx]``, mirrored horizontally if ``_xflip[idx]``.
    """

    def __init__(self, name: str, raw_shape: Sequence[int], max_size: Optional[int] = None,
                 use_labels: bool = False, xflip: bool = False, random_seed: int = 0):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels: Optional[np.ndarray] = None
        self._label_shape: Optional[list[int]] = None

        # Subset: a seeded shuffle, first max_size, back in sorted order (stylegan2-ada.md §14).
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None:
            if max_size < 1:
                raise UserError(f'{name}: max_size must be at least 1 (got {max_size})')
            if self._raw_idx.size > max_size:
                np.random.RandomState(random_seed).shuffle(self._raw_idx)
                self._raw_idx = np.sort(self._raw_idx[:max_size])

        # X-flip doubling: the second half are mirrored copies of the first.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self) -> np.ndarray:
        if self._raw_labels is None:
            raw = self._load_raw_labels() if self._use_labels else None
            if raw is None:
                raw = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert isinstance(raw, np.ndarray) and raw.shape[0] == self._raw_shape[0]
            assert raw.dtype in (np.float32, np.int64) and (raw.dtype == np.float32 or raw.ndim == 1)
            self._raw_labels = raw
        return self._raw_labels

    def close(self) -> None:
        """Release file handles (reopened on demand)."""

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        raise NotImplementedError

    def _load_raw_labels(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [C, H, W] image, float32 label vector of length ``label_dim``)."""
        image = self._load_raw_image(int(self._raw_idx[idx]))
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert list(image.shape) == self.image_shape
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        """Float32 label of item ``idx``: one-hot for class labels, the vector otherwise."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx: int) -> dnnlib.EasyDict:
        """``raw_idx``, ``xflip`` and the ``raw_label`` (class index or vector) of item ``idx``."""
        return dnnlib.EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=bool(self._xflip[idx] != 0),
                               raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self) -> str:
        return self._name

    @property
    def image_shape(self) -> list[int]:
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        assert len(self.image_shape) == 3
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        assert len(self.image_shape) == 3 and self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self) -> list[int]:
        if self._label_shape is None:
            raw = self._get_raw_labels()
            if raw.dtype == np.int64:
                self._label_shape = [int(raw.max(initial=-1)) + 1]
            else:
                self._label_shape = list(raw.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._get_raw_labels().dtype == np.int64


def _convert_hint(path: str, side: int) -> str:
    good = 1 << max(2, int(np.floor(np.log2(max(side, 4)))))
    return (f'convert it with: python dataset_tool.py --source={path} --dest=dataset.zip '
            f'--transform=center-crop --resolution={good}x{good}')


class ImageFolderDataset(Dataset):
    """Images from a folder, a zip, or the built-in dataset (``'builtin'``, ``'builtin:32'``).

    Files are taken in sorted order of their relative paths. The first image fixes the
    shape; it must be square with a power-of-two side (else a UserError points to
    ``dataset_tool.py``). A grayscale image in an RGB dataset is replicated to 3 channels;
    any other shape mismatch, or a corrupt file, raises a UserError naming the file when read.
    """

    def __init__(self, path: str, resolution: Optional[int] = None, *, name: Optional[str] = None,
                 max_size: Optional[int] = None, use_labels: bool = False, xflip: bool = False,
                 random_seed: int = 0, **super_kwargs: Any):
        self._path = os.fspath(path)
        from training import builtin_dataset
        spec = builtin_dataset.parse_builtin_spec(self._path)
        is_builtin = spec is not None and not os.path.exists(self._path)
        self._source = ImageSource(resolve_dataset_path(self._path, resolution))
        if name is None:
            name = (self._path.replace(':', '') if is_builtin else
                    os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0])
        self._image_fnames = self._source.image_names
        if not self._image_fnames:
            raise UserError(f'no image files found in "{self._path}"; expected PNG/JPEG files '
                            f'(e.g. the output of dataset_tool.py)')
        first = image_to_array(self._source.open_image(self._image_fnames[0]), self._describe(0))[0]
        h, w, c = first.shape
        if h != w or (h & (h - 1)) != 0:
            raise UserError(f'dataset "{self._path}" has {w}x{h} images but training needs square images with a '
                            f'power-of-two side; {_convert_hint(self._path, min(h, w))}')
        if resolution is not None and h != resolution:
            raise UserError(f'dataset "{self._path}" has {h}x{h} images but resolution={resolution} was requested; '
                            f'use a {resolution}x{resolution} dataset or convert this one with dataset_tool.py '
                            f'--resolution={resolution}x{resolution}')
        super().__init__(name=name, raw_shape=[len(self._image_fnames), c, h, w], max_size=max_size,
                         use_labels=use_labels, xflip=xflip, random_seed=random_seed, **super_kwargs)

    @property
    def path(self) -> str:
        """The path as given (``'builtin'`` stays ``'builtin'``)."""
        return self._path

    def _describe(self, raw_idx: int) -> str:
        return f'{self._source.path}/{self._image_fnames[raw_idx]}'

    def close(self) -> None:
        source = self.__dict__.get('_source')
        if source is not None:
            source.close()

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        where = self._describe(raw_idx)
        image = image_to_array(self._source.open_image(self._image_fnames[raw_idx]), where)[0]
        c, h, w = self._raw_shape[1:]
        if image.shape[:2] != (h, w):
            raise UserError(f'image {where} is {image.shape[1]}x{image.shape[0]} but the dataset is {w}x{h}; '
                            f'rebuild the dataset with dataset_tool.py --transform=center-crop --resolution={w}x{h}')
        if image.shape[2] != c:
            if image.shape[2] == 1 and c == 3:
                image = np.repeat(image, 3, axis=2)
            else:
                raise UserError(f'image {where} is RGB but the dataset is grayscale (its first image is); '
                                f'rebuild the dataset with dataset_tool.py')
        return image.transpose(2, 0, 1)

    def _load_raw_labels(self) -> Optional[np.ndarray]:
        labels = self._source.read_labels()
        if labels is None:
            return None
        where = f'{self._source.path}/dataset.json'
        missing = [f for f in self._image_fnames if f not in labels]
        if missing:
            raise UserError(f'{where} has no label for {missing[0]} ({len(missing)} images lack one); '
                            f'add labels for every image or set "labels" to null')
        return labels_to_array([labels[f] for f in self._image_fnames], where)


# ---------------------------------------------------------------------------------------------
# Writing.

def dataset_image_name(idx: int) -> str:
    """Upstream's layout: ``NNNNN/imgNNNNNNNN.png`` with the folder ``idx // 1000``."""
    return f'{idx // 1000:05d}/img{idx:08d}.png'


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W], [H, W, 1] or [H, W, 3] → PNG bytes with ``compress_level=0`` (as upstream)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    assert image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] == 3)
    buf = io.BytesIO()
    PIL.Image.fromarray(image, 'L' if image.ndim == 2 else 'RGB').save(buf, format='png', compress_level=0)
    return buf.getvalue()


def require_existing_paths(paths: Sequence[tuple[str, Optional[str]]]) -> None:
    """One-line UserError for the first (flag, path) whose path does not exist. Dataset flags
    (``--data``, ``--ref-data``) also accept the built-in dataset, ``builtin[:RES]``."""
    from training import builtin_dataset
    for flag, path in paths:
        if path is None or os.path.exists(path):
            continue
        if flag in ('--data', '--ref-data') and builtin_dataset.parse_builtin_spec(path) is not None:
            continue
        raise UserError(f'{flag}={path}: no such file or folder')


class DatasetWriter:
    """Write a dataset (``.zip`` → ZIP_STORED archive, else a folder) atomically.

    Everything goes to a hidden temporary file/folder next to ``dest`` and is renamed onto
    ``dest`` by :meth:`commit` (called by ``__exit__`` on success); :meth:`abort` (or an
    exception inside ``with``) removes it, so no partial dataset is ever left behind. ``dest``
    must not exist (a folder may exist if empty) unless ``exist_ok`` (then it is replaced).
    """

    def __init__(self, dest: str, exist_ok: bool = False):
        self.dest = os.path.normpath(os.fspath(dest))
        self.is_zip = self.dest.lower().endswith('.zip')
        self._check_dest(exist_ok)
        self._created_dirs: list[str] = []
        parent = os.path.dirname(os.path.abspath(self.dest))
        self._make_parents(parent)
        base = '.' + os.path.basename(self.dest) + '.'
        if self.is_zip:
            fd, self._tmp = tempfile.mkstemp(prefix=base, suffix='.tmp', dir=parent)
            os.close(fd)
            self._zip: Optional[zipfile.ZipFile] = zipfile.ZipFile(self._tmp, 'w', compression=zipfile.ZIP_STORED)
        else:
            self._tmp = tempfile.mkdtemp(prefix=base, suffix='.tmp', dir=parent)
            self._zip = None
        os.chmod(self._tmp, (0o777 if not self.is_zip else 0o666) & ~current_umask())
        self._labels: list[tuple[str, LabelValue]] = []
        self._done = False

    def _check_dest(self, exist_ok: bool) -> None:
        if exist_ok or not os.path.lexists(self.dest):
            return
        if os.path.isdir(self.dest) and not self.is_zip and not os.listdir(self.dest):
            return
        raise UserError(f'--dest {self.dest} already exists and is not empty; remove it or choose another path')

    def _make_parents(self, parent: str) -> None:
        missing = []
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(missing):
            os.mkdir(d)
            self._created_dirs.append(d)

    @property
    def num_images(self) -> int:
        return len(self._labels)

    def _write(self, name: str, data: bytes) -> None:
        if self._zip is not None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            self._zip.writestr(info, data)
        else:
            path = os.path.join(self._tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def add_image(self, image: np.ndarray, label: LabelValue = None) -> str:
        """Append one uint8 HWC/HW image (and its label: class int, list of floats, or None); return its name."""
        name = dataset_image_name(len(self._labels))
        self._write(name, encode_png(image))
        self._labels.append((name, label))
        return name

    def commit(self) -> None:
        """Write ``dataset.json`` and move the result onto ``dest``."""
        if any(label is None for _, label in self._labels) or not self._labels:
            labels: Optional[list] = None
        else:
            labels = [[name, label] for name, label in self._labels]
        self._write('dataset.json', json.dumps({'labels': labels}).encode('utf-8'))
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            os.replace(self._tmp, self.dest)
        else:
            if os.path.isdir(self.dest) and not os.listdir(self.dest):
                os.rmdir(self.dest)
            elif os.path.lexists(self.dest):  # exist_ok: replace
                shutil.rmtree(self.dest) if os.path.isdir(self.dest) else os.remove(self.dest)
            os.rename(self._tmp, self.dest)
        self._done = True

    def abort(self) -> None:
        """Remove everything written so far (and any parent folders this writer created)."""
        if self._done:
            return
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif os.path.exists(self._tmp):
            os.remove(self._tmp)
        for d in reversed(self._created_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._done = True

    def __enter__(self) -> 'DatasetWriter':
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def iter_dataset_images(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, uint8 [H, W, C]) for every image of a folder/zip/``builtin`` in sorted order."""
    with open_image_source(path) as src:
        for name in src.image_names:
            yield name, src.load_image(name)
