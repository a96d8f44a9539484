"""dnnlib.util file helpers: atomic writes keep the old file on failure and get the usual mode."""

import os
import stat

import pytest

from dnnlib import util


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'out.json'
    util.atomic_write_json(str(path), {'a': 1})
    util.atomic_write_json(str(path), {'a': 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert os.listdir(tmp_path) == ['out.json']


def test_atomic_path_failure_keeps_old_file(tmp_path):
    path = tmp_path / 'snap.pt'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError):
        with util.atomic_path(str(path)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'half')
            raise RuntimeError('crash mid-write')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['snap.pt']


@pytest.mark.parametrize('mask', [0o022, 0o077, 0o002])
def test_atomic_path_file_mode_follows_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = tmp_path / 'img.png'
        with util.atomic_path(str(path)) as tmp:
            open(tmp, 'wb').close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
