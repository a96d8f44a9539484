"""Training datasets (upstream's ``Dataset`` / ``ImageFolderDataset``), the built-in set by name,
and the ``dataset_kwargs`` that name them (docs/stylegan2-ada.md §9, §14).

The top layer of the dataset code::

    training/image_files.py       file I/O: ImageSource, decoding, labels, DatasetWriter
    training/builtin_dataset.py   the built-in set (written with DatasetWriter)
    training/dataset.py           this module: Dataset classes, ``builtin[:RES]`` paths, kwargs

Neither lower module imports this one. Public pieces:

* :class:`Dataset` / :class:`ImageFolderDataset` — upstream-compatible training datasets
  (``max_size`` seeded subset, ``xflip`` doubling, labels). ``path='builtin'`` or
  ``'builtin:32'`` reads the generated low-shot dataset of :mod:`training.builtin_dataset`.
  Snapshots store the class path ``training.dataset.ImageFolderDataset`` in
  ``training_set_kwargs``; it must keep resolving.
* :class:`ImageFilesDataset` — the images of a folder/zip of *generated* samples, any size,
  no labels (``calc_metrics.py --gen-data``).
* :func:`image_folder_kwargs`, :func:`reference_dataset_kwargs`, :func:`image_files_kwargs` —
  ``dataset_kwargs`` (``class_name`` + constructor arguments, upstream's protocol) for the
  metrics, which never name a dataset class themselves (``metrics.metric_utils.MetricDataset``
  is what they need from one; both classes here provide it, including ``content_digest()``).
* :func:`resolve_dataset_path`, :func:`open_image_source`, :func:`list_image_files`,
  :func:`require_existing_paths` — paths that may name the built-in set.

Every problem with the user's data raises :class:`dnnlib.util.UserError` with one line that
names the file and the fix.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from training import builtin_dataset
from training.image_files import ImageSource, image_to_array, labels_to_array

#: Class paths for ``dataset_kwargs['class_name']`` (stored in snapshots: keep them resolving).
IMAGE_FOLDER_CLASS = 'training.dataset.ImageFolderDataset'
IMAGE_FILES_CLASS = 'training.dataset.ImageFilesDataset'

# ---------------------------------------------------------------------------------------------
# Paths: a folder, a zip, or the built-in dataset.


def resolve_dataset_path(path: str, resolution: Optional[int] = None) -> str:
    """Map ``'builtin'`` / ``'builtin:RES'`` to the cached built-in zip; other paths pass through.

    An existing file or folder named ``builtin`` wins over the built-in dataset. ``'builtin'``
    without a resolution takes ``resolution`` when given, else 64.
    """
    spec = builtin_dataset.parse_builtin_spec(path)
    if spec is None or os.path.exists(path):
        return os.fspath(path)
    res = spec or resolution or builtin_dataset.DEFAULT_RESOLUTION
    return builtin_dataset.ensure_builtin_dataset(resolution=res)


def open_image_source(path: str, resolution: Optional[int] = None) -> ImageSource:
    """An :class:`~training.image_files.ImageSource` for a folder, a zip, or ``builtin[:RES]``."""
    return ImageSource(resolve_dataset_path(path, resolution))


def list_image_files(path: str) -> list[str]:
    """Sorted relative names (``/``-separated) of the images in a folder, a zip, or ``builtin[:RES]``.

    Hidden files and ``__MACOSX/`` are skipped; other non-image files are ignored.
    """
    with open_image_source(path) as src:
        return list(src.image_names)


def require_existing_paths(paths: Sequence[tuple[str, Optional[str]]]) -> None:
    """One-line UserError for the first (flag, path) whose path does not exist. Dataset flags
    (``--data``, ``--ref-data``) also accept the built-in dataset, ``builtin[:RES]``."""
    for flag, path in paths:
        if path is None or os.path.exists(path):
            continue
        if flag in ('--data', '--ref-data') and builtin_dataset.parse_builtin_spec(path) is not None:
            continue
        raise UserError(f'{flag}={path}: no such file or folder')


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

        # Subset: a seeded shuffle, first max_size, back in sorted order (docs/stylegan2-ada.md §14).
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
        is_builtin = builtin_dataset.parse_builtin_spec(self._path) is not None and not os.path.exists(self._path)
        self._source = open_image_source(self._path, resolution)
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

    def content_digest(self) -> str:
        """A string naming the files' content, not the path (see :meth:`ImageSource.content_digest`).

        ``max_size``, ``xflip``, ``resolution``, ``use_labels`` are not part of it: the metrics'
        statistics cache keys them separately (from the ``dataset_kwargs``).
        """
        return self._source.content_digest()

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
        return labels_to_array([labels[f] for f in self._image_fnames], where, self._image_fnames)


class ImageFilesDataset(torch.utils.data.Dataset):
    """The images of a folder, a zip or ``builtin[:RES]`` in sorted order — generated samples for
    ``calc_metrics.py --gen-data``. Any size, 1 or 3 channels per image, no labels.

    Item ``i`` is (uint8 [C, H, W], empty float32 label). Provides the whole
    ``metrics.metric_utils.MetricDataset`` protocol (``has_labels`` is False).
    """

    def __init__(self, path: str):
        self._path = os.fspath(path)
        self._source = open_image_source(self._path)
        self._names = list(self._source.image_names)
        if not self._names:
            raise UserError(f'--gen-data={path}: no image files found')

    @property
    def path(self) -> str:
        return self._path

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        return self._source.load_image(self._names[idx]).transpose(2, 0, 1).copy(), self.get_label(idx)

    @property
    def has_labels(self) -> bool:
        return False

    @property
    def label_dim(self) -> int:
        return 0

    def get_label(self, idx: int) -> np.ndarray:
        return np.zeros([0], dtype=np.float32)

    def content_digest(self) -> str:
        return self._source.content_digest()

    def close(self) -> None:
        self._source.close()


# ---------------------------------------------------------------------------------------------
# dataset_kwargs: how callers name these classes to the metrics and the training loop.


def image_folder_kwargs(path: str, **options: Any) -> dnnlib.EasyDict:
    """``dataset_kwargs`` of an :class:`ImageFolderDataset`: ``class_name``, ``path`` and ``options``
    (``resolution``, ``use_labels``, ``xflip``, ``max_size``, …)."""
    return dnnlib.EasyDict(class_name=IMAGE_FOLDER_CLASS, path=path, **options)


def reference_dataset_kwargs(path: Optional[str]) -> Optional[dnnlib.EasyDict]:
    """``--ref-data``: the whole set, no mirroring; None when the flag is not given."""
    if path is None:
        return None
    return image_folder_kwargs(path, max_size=None, xflip=False)


def image_files_kwargs(path: Optional[str]) -> Optional[dnnlib.EasyDict]:
    """``--gen-data``: an :class:`ImageFilesDataset`; None when the flag is not given."""
    if path is None:
        return None
    return dnnlib.EasyDict(class_name=IMAGE_FILES_CLASS, path=path)
