"""The files of a dataset: listing, reading, decoding and writing images and labels.

The lowest layer of the dataset code (docs/stylegan2-ada.md §9, §14). It knows the on-disk format
— a folder or an uncompressed zip of images (normally ``NNNNN/imgNNNNNNNN.png`` as written by
``dataset_tool.py``) plus an optional ``dataset.json`` of the form
``{"labels": [["00000/img00000000.png", 6], ...]}`` or ``{"labels": null}`` — and nothing
about the built-in dataset, torch or training. Layering::

    training/image_files.py       this module: file I/O only
    training/builtin_dataset.py   draws the built-in set, writes it with DatasetWriter
    training/dataset.py           Dataset classes, ``builtin[:RES]`` path resolution, dataset kwargs

Public pieces:

* :class:`ImageSource` — the sorted files of a folder or zip, read lazily (picklable into
  DataLoader workers); :meth:`ImageSource.content_digest` names its content (the key of the
  metrics' statistics cache).
* :func:`image_extensions`, :func:`is_image_file` — which files are images.
* :func:`decode_image`, :func:`image_to_array`, :func:`is_grayscale_mode` — decode any PIL image
  to uint8 HWC with 1 or 3 channels.
* :func:`labels_to_array` — ``dataset.json`` labels to class indices or label vectors.
* :class:`DatasetWriter`, :func:`encode_png`, :func:`dataset_image_name` — write a dataset
  zip/folder atomically (temp name + rename) in upstream's layout.

Every problem with the user's data raises :class:`dnnlib.util.UserError` with one line that
names the file and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Optional, Sequence, Union

import numpy as np
import PIL.Image

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

_digest_memo: dict[tuple, str] = {}


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
        out: dict[str, Any] = {}
        for fname, label in labels:
            name = fname.replace('\\', '/')
            if name in out:
                raise UserError(f'{where} lists {name} twice; give every file one label')
            out[name] = label
        return out

    def content_digest(self) -> str:
        """``'zip-<sha1>'`` / ``'dir-<sha1>'`` naming the *content* of the folder or zip.

        Zip: SHA-1 of the JSON of the sorted (name, size, CRC-32) of every member, from the
        central directory (nothing is decompressed). Folder: SHA-1 over, for every visible file
        in sorted order, the JSON of [name, size] followed by the SHA-1 of its bytes. Any changed,
        added, removed or renamed file changes the digest; the path does not enter it, so a
        moved copy has the same digest. A folder's digest is memoised per process by (path,
        names, sizes, mtimes). This is the content part of the metrics' statistics-cache key
        (the format is unchanged since the digest lived in ``metrics/metric_utils.py``).
        """
        if self.kind == 'zip':
            entries = sorted((i.filename, i.file_size, i.CRC) for i in self._get_zip().infolist() if not i.is_dir())
            return 'zip-' + hashlib.sha1(json.dumps(entries).encode()).hexdigest()
        stats = []
        for name in self.all_names:
            st = os.stat(os.path.join(self.path, name))
            stats.append((name, st.st_size, st.st_mtime_ns))
        memo_key = (os.path.abspath(self.path), tuple(stats))
        if memo_key not in _digest_memo:
            h = hashlib.sha1()
            for name, size, _ in stats:
                h.update(json.dumps([name, size]).encode())
                h.update(hashlib.sha1(self.read_bytes(name)).digest())
            _digest_memo[memo_key] = 'dir-' + h.hexdigest()
        return _digest_memo[memo_key]

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

#: The most classes a dataset may have: class labels are 0 … MAX_CLASSES − 1, and label vectors
#: have at most MAX_CLASSES numbers. A conditional network's label embedding has one row per class
#: (c_dim × w_dim weights), so a stray label of 10**9 would ask for terabytes; 100,000 classes
#: (ImageNet-21k has ~21,800) cost 200 MB at w_dim = 512.
MAX_CLASSES = 100_000


def labels_to_array(labels: Sequence[Any], where: str, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Turn a list of labels into int64 [N] (class indices) or float32 [N, D] (vectors).

    Integers (or integral floats) → class indices 0 … :data:`MAX_CLASSES` − 1; non-integral
    numbers → [N, 1] vectors; lists of numbers → [N, D] vectors of one common length D ≤
    :data:`MAX_CLASSES`. Every value must be finite. ``names`` (the image file of each label)
    lets the one-line UserError name the offending file; ``where`` names ``dataset.json``.
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def whose(i: int) -> str:
        return f'the label of {names[i]}' if names is not None else f'label #{i}'

    def shown(v: Any) -> str:
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
            v = int(v)
        text = json.dumps(v)
        return text if len(text) <= 40 else text[:37] + '...'

    def kind(v: Any) -> str:
        if number(v):
            return 'number'
        if isinstance(v, list) and all(number(x) for x in v):
            return 'list'
        return 'bad'

    kinds = [kind(v) for v in labels]
    for i, k in enumerate(kinds):
        if k == 'bad':
            raise UserError(f'{where}: {whose(i)} is {shown(labels[i])}; every label must be an integer '
                            f'class or a list of numbers')
        if k != kinds[0]:
            raise UserError(f'{where}: {whose(i)} is {"a list" if k == "list" else "a number"} but '
                            f'{whose(0)} is {"a list" if kinds[0] == "list" else "a number"}; all labels must be '
                            f'integer classes or all lists of numbers of one length')

    def class_range_error(i: int, value: float) -> UserError:
        if value < 0:
            return UserError(f'{where}: class labels must be ≥ 0 (found {shown(labels[i])}, {whose(i)})')
        return UserError(f'{where}: {whose(i)} is class {shown(labels[i])}, but class labels must be below '
                         f'{MAX_CLASSES} (at most {MAX_CLASSES} classes; one embedding row each); '
                         f'renumber the classes 0, 1, 2, …')

    def to_float64(values: Sequence[Any]) -> np.ndarray:
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float range, e.g. 10**400
            i = next(i for i, v in enumerate(labels) if any(isinstance(x, int) and abs(x) > 2 ** 1000
                                                             for x in (v if isinstance(v, list) else [v])))
            raise (class_range_error(i, labels[i]) if not isinstance(labels[i], list) else
                   UserError(f'{where}: {whose(i)} holds a number too large for a float')) from None

    def check_finite(arr: np.ndarray) -> None:
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f'{where}: {whose(i)} is {shown(labels[i])}; labels must be finite numbers')

    if not kinds or kinds[0] == 'number':
        arr = to_float64(labels)
        check_finite(arr[:, None])
        if np.all(arr == np.round(arr)):
            out_of_range = (arr < 0) | (arr >= MAX_CLASSES)
            if out_of_range.any():
                i = int(np.argmax(out_of_range))
                raise class_range_error(i, float(arr[i]))
            return arr.astype(np.int64)
        return arr.astype(np.float32)[:, None]
    lengths = sorted(set(len(v) for v in labels))
    if len(lengths) > 1:
        raise UserError(f'{where}: label vectors have different lengths {lengths}; all must have the same length')
    if lengths[0] > MAX_CLASSES:
        raise UserError(f'{where}: label vectors have {lengths[0]} numbers; at most {MAX_CLASSES} are supported')
    arr = to_float64(labels).reshape(len(labels), lengths[0])
    check_finite(arr)
    return arr.astype(np.float32)


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
        self._tmp = ''
        self._zip: Optional[zipfile.ZipFile] = None
        self._labels: list[tuple[str, LabelValue]] = []
        self._done = False
        parent = os.path.dirname(os.path.abspath(self.dest))
        try:  # an unwritable place (OSError) leaves nothing behind, not even the parents made here
            self._make_parents(parent)
            base = '.' + os.path.basename(self.dest) + '.'
            if self.is_zip:
                fd, self._tmp = tempfile.mkstemp(prefix=base, suffix='.tmp', dir=parent)
                os.close(fd)
                self._zip = zipfile.ZipFile(self._tmp, 'w', compression=zipfile.ZIP_STORED)
            else:
                self._tmp = tempfile.mkdtemp(prefix=base, suffix='.tmp', dir=parent)
            os.chmod(self._tmp, (0o777 if not self.is_zip else 0o666) & ~current_umask())
        except BaseException:
            self.abort()
            raise

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
            labels_to_array([label for _, label in self._labels], f'{self.dest}/dataset.json',
                            [name for name, _ in self._labels])  # never write labels that training refuses
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
        if self._tmp and os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp and os.path.exists(self._tmp):
            try:
                os.remove(self._tmp)
            except OSError:
                pass
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
