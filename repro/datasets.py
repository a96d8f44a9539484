"""Datasets by name: where each comes from, its name under ``--data-root``, how it is prepared,
and how a wrong or truncated copy is caught (docs/reproducing.md, "Datasets").

None of these datasets can be downloaded by degan (docs/README.md decision 9). The user puts
each *source* — the form in which it is distributed — under ``--data-root`` with the name
listed here (``100-shot-obama/``, ``cifar-10-python.tar.gz`` …). ``reproduce.py run`` checks it
(present, image count, checksum) before any training, then prepares the file a scale trains on
with ``dataset_tool.py`` into ``<outdir>/data/`` and records that command.

Checksums (:func:`checksum`): a file's MD5 or SHA-256; a folder or zip of images: the
``images-sha256`` of the image files in ``dataset_tool``'s sorted order (name and bytes of each,
plus ``dataset.json``) — independent of zip metadata and of how the folder was copied. Known
values are shipped in ``repro/checksums.json``; those no-one could check offline are ``null``
there, and a user records the values of their own copy with ``reproduce.py data --record=1``
(``<data-root>/degan-checksums.json``), after which every run checks against them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

from dnnlib import util
from dnnlib.util import UserError

CHECKSUMS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checksums.json')
USER_CHECKSUMS_NAME = 'degan-checksums.json'
IMAGES_SHA256 = 'images-sha256'

_DIFFAUG = ('the low-shot data release of DiffAugment (github.com/mit-han-lab/data-efficient-gans, README '
            '"100-shot generation"): download {zip} and unzip it')
_FASTGAN = ('the few-shot data release of FastGAN (github.com/odegeasslbc/FastGAN-pytorch, README "data"): '
            'the {what} folder')
_FFHQ = ('FFHQ (github.com/NVlabs/ffhq-dataset): the images1024x1024 folder (70,000 PNGs; or a folder of its '
         '256x256 versions)')


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset the tables train on.

    ``source``: its name under ``--data-root`` (folder, zip or tarball, as distributed);
    ``resolution``: the papers' training resolution; ``count``: images the source must hold
    (None: not checked); ``max_images``: use the first N images of the source (FFHQ subsets);
    ``subset``: ``train.py --subset`` (CIFAR 10 %/20 %); ``cifar_split``: the CIFAR tarball split;
    ``ref``: the dataset a ``*_test`` metric compares against; ``blocker``: why it cannot be
    prepared here yet (None: it can)."""
    name: str
    title: str
    source: str
    obtain: str
    resolution: int
    count: Optional[int] = None
    max_images: Optional[int] = None
    subset: Optional[int] = None
    cifar_split: Optional[str] = None
    ref: Optional[str] = None
    blocker: Optional[str] = None
    note: str = ''

    @property
    def checksum_key(self) -> str:
        """The entry of checksums.json: the source, limited to the images used."""
        return self.source if self.max_images is None else f'{self.source}[:{self.max_images}]'

    def prepared_name(self, resolution: int) -> str:
        stem = self.source.replace('.tar.gz', '').replace('-python', '')
        if self.cifar_split == 'test':
            stem += '-test'
        if self.max_images is not None:
            stem += f'-first{self.max_images}'
        return f'{stem}-{resolution}.zip'

    def dataset_tool_args(self, source_path: str, dest: str, resolution: int) -> list[str]:
        """``dataset_tool.py`` arguments that prepare this dataset at ``resolution``."""
        args = [f'--source={source_path}', f'--dest={dest}']
        if self.cifar_split is not None:
            if self.cifar_split == 'test':
                args.append('--cifar-split=test')
            if resolution != 32:
                args += ['--transform=center-crop', f'--resolution={resolution}x{resolution}']
            return args
        if self.max_images is not None:
            args.append(f'--max-images={self.max_images}')
        return args + ['--transform=center-crop', f'--resolution={resolution}x{resolution}']


def _lowshot(name: str, title: str, source: str, count: int) -> Dataset:
    return Dataset(name, title, source, _DIFFAUG.format(zip=f'{source}.zip'), 256, count=count)


def _fewshot(name: str, title: str, source: str, count: Optional[int]) -> Dataset:
    return Dataset(name, title, source, _FASTGAN.format(what=title), 1024, count=count,
                   note='the folder may hold the images directly or in a subfolder (FastGAN\'s img/)')


def _ffhq(n: int, label: str) -> Dataset:
    return Dataset(f'ffhq{label}', f'FFHQ-{label}', 'ffhq', _FFHQ, 256, max_images=n,
                   note=f'the first {n} images in sorted order (our reading of the FakeCLR subsets; not checked)')


_CIFAR10 = 'CIFAR-10 python version (www.cs.toronto.edu/~kriz/cifar.html): cifar-10-python.tar.gz'
_CIFAR100 = 'CIFAR-100 python version (www.cs.toronto.edu/~kriz/cifar.html): cifar-100-python.tar.gz'
_NO_CIFAR100 = 'dataset_tool.py support for cifar-100-python.tar.gz (it reads CIFAR-10 only)'


def _cifar(name: str, title: str, source: str, obtain: str, subset: Optional[int] = None,
           split: str = 'train', ref: Optional[str] = None, blocker: Optional[str] = None) -> Dataset:
    return Dataset(name, title, source, obtain, 32, subset=subset, cifar_split=split, ref=ref, blocker=blocker,
                   count=None)


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    _lowshot('obama', '100-shot Obama', '100-shot-obama', 100),
    _lowshot('grumpy_cat', '100-shot Grumpy Cat', '100-shot-grumpy_cat', 100),
    _lowshot('panda', '100-shot Panda', '100-shot-panda', 100),
    _lowshot('animalface_cat', 'AnimalFace cat', 'AnimalFace-cat', 160),
    _lowshot('animalface_dog', 'AnimalFace dog', 'AnimalFace-dog', 389),
    _ffhq(100, '100'), _ffhq(1000, '1k'), _ffhq(2000, '2k'), _ffhq(5000, '5k'),
    _cifar('cifar10', 'CIFAR-10 (100 %)', 'cifar-10-python.tar.gz', _CIFAR10, ref='cifar10_test'),
    _cifar('cifar10_20pct', 'CIFAR-10 20 %', 'cifar-10-python.tar.gz', _CIFAR10, subset=10000, ref='cifar10_test'),
    _cifar('cifar10_10pct', 'CIFAR-10 10 %', 'cifar-10-python.tar.gz', _CIFAR10, subset=5000, ref='cifar10_test'),
    _cifar('cifar10_test', 'CIFAR-10 test split', 'cifar-10-python.tar.gz', _CIFAR10, split='test'),
    _cifar('cifar100', 'CIFAR-100 (100 %)', 'cifar-100-python.tar.gz', _CIFAR100, ref='cifar100_test',
           blocker=_NO_CIFAR100),
    _cifar('cifar100_20pct', 'CIFAR-100 20 %', 'cifar-100-python.tar.gz', _CIFAR100, subset=10000,
           ref='cifar100_test', blocker=_NO_CIFAR100),
    _cifar('cifar100_10pct', 'CIFAR-100 10 %', 'cifar-100-python.tar.gz', _CIFAR100, subset=5000,
           ref='cifar100_test', blocker=_NO_CIFAR100),
    _cifar('cifar100_test', 'CIFAR-100 test split', 'cifar-100-python.tar.gz', _CIFAR100, split='test',
           blocker=_NO_CIFAR100),
    _fewshot('shells', 'Shells', 'shells', 64),
    _fewshot('skulls', 'Skulls', 'skulls', 97),
    _fewshot('anime_face', 'AnimeFace', 'anime-face', 120),
    _fewshot('brecahad', 'BreCaHAD', 'brecahad', 162),
    _fewshot('messidor_set1', 'MessidorSet1', 'messidor-set1', None),
    _fewshot('pokemon', 'Pokemon', 'pokemon', 833),
    _fewshot('art_painting', 'ArtPainting', 'art-painting', 1000),
]}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise UserError(f'unknown dataset "{name}"; known: {", ".join(DATASETS)}')
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------
# Checksums.


def checksum(path: str, algorithm: str, max_images: Optional[int] = None) -> str:
    """The checksum of ``path``: ``md5`` / ``sha256`` of a file, or ``images-sha256`` of a folder
    or zip of images (first ``max_images`` in dataset_tool's sorted order)."""
    if algorithm in ('md5', 'sha256'):
        digest = hashlib.new(algorithm)
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        return digest.hexdigest()
    assert algorithm == IMAGES_SHA256, algorithm
    from training.image_files import ImageSource
    src = ImageSource(path)
    names = src.image_names[:max_images]
    if src.has_file('dataset.json'):
        names = names + ['dataset.json']
    digest = hashlib.sha256()
    for name in names:
        data = src.read_bytes(name)
        digest.update(name.encode('utf-8') + b'\0' + len(data).to_bytes(8, 'little'))
        digest.update(data)
    return digest.hexdigest()


def count_images(path: str) -> int:
    from training.image_files import ImageSource
    return len(ImageSource(path).image_names)


def known_checksums() -> dict[str, dict]:
    """``repro/checksums.json``: ``{key: {algorithm, value (None = unknown), provenance}}``."""
    with open(CHECKSUMS_FILE, encoding='utf-8') as f:
        return json.load(f)['checksums']


def user_checksums(data_root: str) -> dict[str, dict]:
    path = os.path.join(data_root, USER_CHECKSUMS_NAME)
    try:
        with open(path, encoding='utf-8') as f:
            return dict(json.load(f).get('checksums', {}))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: cannot read it ({e}); fix or delete it, then record again with '
                        f'reproduce.py data --record=1') from None


def default_algorithm(path: str) -> str:
    return IMAGES_SHA256 if os.path.isdir(path) or path.endswith('.zip') else 'sha256'


@dataclasses.dataclass
class SourceCheck:
    """The state of one dataset source under ``--data-root``."""
    dataset: Dataset
    path: str
    present: bool
    status: str = 'missing'          # missing | ok | recorded-ok | unknown | mismatch | wrong-count
    algorithm: Optional[str] = None
    value: Optional[str] = None
    expected: Optional[str] = None
    message: str = ''


def check_source(ds: Dataset, data_root: str, compute: bool = True) -> SourceCheck:
    """Presence, image count and checksum of ``ds``'s source (the checksum only when ``compute``)."""
    path = os.path.join(data_root, ds.source)
    if not os.path.exists(path):
        return SourceCheck(ds, path, False, message=missing_message(ds, data_root))
    result = SourceCheck(ds, path, True, status='unknown')
    if ds.count is not None and ds.cifar_split is None:
        n = count_images(path)
        if n != ds.count:
            result.status = 'wrong-count'
            result.message = (f'{path} holds {n} images, {ds.title} has {ds.count}: the copy is incomplete or '
                              f'another set; get it again from {ds.obtain}')
            return result
    known = known_checksums().get(ds.checksum_key) or {}
    recorded = user_checksums(data_root).get(ds.checksum_key) or {}
    entry = known if known.get('value') else recorded
    result.algorithm = entry.get('algorithm') or known.get('algorithm') or default_algorithm(path)
    if not compute:
        return result
    result.value = checksum(path, result.algorithm, ds.max_images)
    if not entry.get('value'):
        result.message = (f'{ds.checksum_key}: no checksum known; record yours with '
                          f'reproduce.py data --data-root={data_root} --record=1')
        return result
    result.expected = entry['value']
    if result.value != result.expected:
        where = 'repro/checksums.json' if entry is known else os.path.join(data_root, USER_CHECKSUMS_NAME)
        result.status = 'mismatch'
        result.message = (f'{path}: {result.algorithm} is {result.value}, {where} expects {result.expected}: '
                          f'the file is wrong or truncated; get it again from {ds.obtain}')
    else:
        result.status = 'ok' if entry is known else 'recorded-ok'
    return result


def missing_message(ds: Dataset, data_root: str) -> str:
    """One line: which file is missing, where users get it, the dataset_tool command."""
    path = os.path.join(data_root, ds.source)
    dest = 'OUTDIR/data/' + ds.prepared_name(ds.resolution)
    example = ' '.join(['python dataset_tool.py'] + ds.dataset_tool_args(path, dest, ds.resolution))
    return (f'dataset {ds.name} ({ds.title}): {path} not found. Get it from {ds.obtain}, and put it at that path '
            f'(--data-root={data_root}); reproduce.py then prepares it with: {example}')


def record_checksums(checks: list[SourceCheck], data_root: str) -> str:
    """Write the checksums of present sources that repro/checksums.json does not know into
    ``<data-root>/degan-checksums.json``; returns its path."""
    path = os.path.join(data_root, USER_CHECKSUMS_NAME)
    entries = user_checksums(data_root)
    known = known_checksums()
    for check in checks:
        key = check.dataset.checksum_key
        if check.present and check.value and not (known.get(key) or {}).get('value'):
            entries[key] = dict(algorithm=check.algorithm, value=check.value, provenance='recorded by the user')
    try:
        util.atomic_write_json(path, dict(format='degan-checksums/1', checksums=entries))
    except OSError as e:
        raise UserError(f'cannot write {path} ({e.strerror or e}); make --data-root writable') from None
    return path
