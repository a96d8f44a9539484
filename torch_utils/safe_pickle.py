"""Reading code-carrying pickles without running their code: an allow-list unpickler.

Upstream StyleGAN2-ADA snapshots (``network-snapshot-*.pkl``) store each network through its
``torch_utils.persistence``: a call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` holds
the class name, the full source of the defining module and the object's ``__dict__``. Plain
``pickle.load`` executes that source. The TensorFlow-era pickles hold
``dnnlib.tflib.network.Network`` objects whose state carries numpy variables and build source.

:func:`load` reads such a file with an unpickler whose ``find_class`` answers only an explicit
allow-list (:data:`ALLOWED`); every answer is a function or class of *this* module (or a plain
container) that records data and executes nothing from the file:

==============================================  ===============================================
global in the file                              what degan puts in its place
==============================================  ===============================================
torch_utils.persistence._reconstruct_persistent_obj  :class:`PersistentObject` (class name, state;
                                                the module source is hashed, never executed)
dnnlib.tflib.network.Network                    :class:`TFNetwork` (its pickled state)
dnnlib.util.EasyDict                            degan's ``dnnlib.util.EasyDict`` (a dict)
collections.OrderedDict, builtins.set/frozenset the containers themselves
_codecs.encode                                  latin-1 text → bytes only (protocol 2's bytes)
torch._utils._rebuild_tensor_v2 / _parameter    a CPU tensor (type-checked arguments, no hooks)
torch.storage._load_from_bytes                  the storage, read with ``torch.load(weights_only=True)``
numpy ndarray / dtype / scalar reconstruction   numeric arrays and numbers only
==============================================  ===============================================

Any other global is refused with :class:`UnsafePickleError` naming it, before anything of it is
imported. Persistent ids are refused too. The module knows nothing of any architecture; what the
records mean is decided by the readers in ``backbones/stylegan2/official.py``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import io
import pickle
import re
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Optional

import numpy as np
import torch

from dnnlib import util


class UnsafePickleError(util.UserError):
    """The pickle refers to something degan does not load (nothing of it was imported or run)."""


# ---------------------------------------------------------------------------------------------
# Stand-ins for the file's objects.

@dataclass
class PersistentObject:
    """What ``_reconstruct_persistent_obj(meta)`` would have built, as data.

    ``class_name`` is the class' name in its module (``'Generator'``); ``state`` the object's
    ``__dict__`` (for a ``torch.nn.Module``: ``_parameters``, ``_buffers``, ``_modules``, the
    ``_init_args`` / ``_init_kwargs`` that upstream's persistence records, plain attributes).
    ``module_src_sha1`` identifies the embedded source, which is never executed.
    """
    class_name: str
    state: dict
    module_src_sha1: str = ''

    def children(self) -> dict[str, Optional['PersistentObject']]:
        return dict(self.state.get('_modules') or {})

    def class_names(self) -> Iterator[tuple[str, str]]:
        """(dotted path, class name) of this object and every nested module, depth first."""
        def walk(prefix: str, obj: Any) -> Iterator[tuple[str, str]]:
            if isinstance(obj, PersistentObject):
                yield prefix, obj.class_name
                for name, child in obj.children().items():
                    yield from walk(f'{prefix}.{name}' if prefix else name, child)
            elif obj is not None:
                yield prefix, type(obj).__name__
        return walk('', self)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors ``torch.nn.Module.state_dict()`` would return, by dotted name."""
        out: dict[str, torch.Tensor] = {}

        def walk(prefix: str, obj: PersistentObject) -> None:
            non_persistent = set(obj.state.get('_non_persistent_buffers_set') or ())
            for group in ('_parameters', '_buffers'):
                for name, tensor in (obj.state.get(group) or {}).items():
                    if tensor is None or (group == '_buffers' and name in non_persistent):
                        continue
                    if not isinstance(tensor, torch.Tensor):
                        raise UnsafePickleError(f'{prefix}{name} is a {type(tensor).__name__}, not a tensor')
                    out[prefix + name] = tensor
            for name, child in obj.children().items():
                if isinstance(child, PersistentObject):
                    walk(f'{prefix}{name}.', child)

        walk('', self)
        return out

    def init_arguments(self) -> tuple[tuple, dict]:
        """The positional and keyword arguments upstream's persistence recorded at construction."""
        args = self.state.get('_init_args', ())
        kwargs = self.state.get('_init_kwargs', {})
        if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
            raise UnsafePickleError(f'{self.class_name}: its recorded constructor arguments are malformed')
        return tuple(args), dict(kwargs)


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('class_name'), str):
        raise UnsafePickleError('a persistent object of an unknown kind (only persistent classes are read)')
    state = meta.get('state')
    if not isinstance(state, dict):
        raise UnsafePickleError(f'persistent object {meta["class_name"]} carries no state dict')
    source = meta.get('module_src') or ''
    sha1 = hashlib.sha1(source.encode('utf-8', 'replace')).hexdigest() if isinstance(source, str) else ''
    return PersistentObject(class_name=meta['class_name'], state=state, module_src_sha1=sha1)


class TFNetwork:
    """A TensorFlow-era ``dnnlib.tflib.network.Network`` as data: ``version``, ``name``,
    ``static_kwargs``, ``components`` (name → TFNetwork), ``build_func_name`` and ``variables``
    (list of (name, numpy array)). Its ``build_module_src`` is kept as text, never executed."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError('a TensorFlow network whose state is not a dict')
        self.state = state

    @property
    def version(self) -> int:
        return int(self.state.get('version', 0))

    @property
    def name(self) -> str:
        return str(self.state.get('name', ''))

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get('static_kwargs') or {})

    @property
    def build_func_name(self) -> str:
        return str(self.state.get('build_func_name', ''))

    @property
    def components(self) -> dict[str, 'TFNetwork']:
        return dict(self.state.get('components') or {})

    def variables(self, prefix: str = '') -> dict[str, np.ndarray]:
        """Own and components' variables by slash path (``mapping/Dense0/weight``)."""
        out = {prefix + str(name): _as_array(value) for name, value in self.state.get('variables') or []}
        for name, component in self.components.items():
            if isinstance(component, TFNetwork):
                out.update(component.variables(f'{prefix}{name}/'))
        return out


# ---------------------------------------------------------------------------------------------
# Tensors: the argument types are checked, backward hooks are dropped.

def _storage_from_bytes(blob: Any) -> Any:
    """A storage that upstream pickled as a legacy ``torch.save`` stream; torch's own
    ``weights_only`` loader reads it (no code runs)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise UnsafePickleError('a tensor storage that is not a byte string')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TypedStorage deprecation
        try:
            storage = torch.load(io.BytesIO(bytes(blob)), map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here is a corrupt file
            raise UnsafePickleError(f'a tensor storage cannot be read ({type(e).__name__}: {e})') from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f'a tensor storage holds a {type(storage).__name__}')
    return storage


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError('a tensor rebuilt from something that is not a storage')
    if not (isinstance(storage_offset, int) and _int_tuple(size) and _int_tuple(stride)):
        raise UnsafePickleError('a tensor with a malformed offset, size or stride')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                                   collections.OrderedDict())
        except RuntimeError as e:
            raise UnsafePickleError(f'a tensor does not fit its storage ({e})') from None


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError('a parameter rebuilt from something that is not a tensor')
    return data


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)


# ---------------------------------------------------------------------------------------------
# numpy: numeric arrays and scalars only (the TensorFlow pickles' variables).

NUMERIC_DTYPE = re.compile(r'^[<>|=]?[biuf]\d{1,2}$')


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` as ``_reconstruct``'s first argument."""


class _DtypeRecord:
    """``numpy.dtype(code, align, copy)`` followed by its pickled state (byte order first)."""

    def __init__(self, code: Any, *_ignored: Any) -> None:
        if not isinstance(code, str) or not NUMERIC_DTYPE.match(code):
            raise UnsafePickleError(f'numpy dtype {code!r} is not a plain number type')
        self.code, self.byteorder = code, '='

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ('<', '>', '|', '='):
            self.byteorder = state[1]

    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.code.lstrip('<>|='))
        return dtype if self.byteorder in ('|', '=') else dtype.newbyteorder(self.byteorder)


class _ArrayRecord:
    """``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` and its state."""

    def __init__(self, cls: Any, *_ignored: Any) -> None:
        if cls is not _NdarrayClass:
            raise UnsafePickleError('an array of a class other than numpy.ndarray')
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError('a numpy array with a malformed state')
        _version, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _DtypeRecord) or not _int_tuple(shape) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError('a numpy array that is not a plain numeric array')
        flat = np.frombuffer(bytes(raw), dtype=dtype.dtype())
        if flat.size != int(np.prod(shape)):
            raise UnsafePickleError(f'a numpy array of shape {tuple(shape)} holds {flat.size} values')
        self.array = flat.reshape(shape, order='F' if is_fortran else 'C').astype(dtype.dtype().newbyteorder('='))


def _numpy_scalar(dtype: Any, raw: Any) -> float | int | bool:
    if not isinstance(dtype, _DtypeRecord) or not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError('a numpy scalar that is not a plain number')
    values = np.frombuffer(bytes(raw), dtype=dtype.dtype())
    if values.size != 1:
        raise UnsafePickleError('a malformed numpy scalar')
    return values[0].item()


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, _ArrayRecord) and value.array is not None:
        return value.array
    if isinstance(value, (int, float)):
        return np.asarray(value, dtype=np.float32)
    raise UnsafePickleError(f'a TensorFlow variable holds a {type(value).__name__}, not an array')


def _latin1_bytes(text: Any, encoding: Any = 'latin1') -> bytes:
    """``_codecs.encode(str, 'latin1')``: how protocol 0-2 pickles spell a byte string."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise UnsafePickleError('_codecs.encode is read only as protocol 2\'s latin-1 byte strings')
    return text.encode('latin1')


# ---------------------------------------------------------------------------------------------
# The allow-list and the unpickler.

def _numpy_globals() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {('numpy', 'ndarray'): _NdarrayClass, ('numpy', 'dtype'): _DtypeRecord}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out[(module, '_reconstruct')] = _ArrayRecord
        out[(module, 'scalar')] = _numpy_scalar
    return out


ALLOWED: dict[tuple[str, str], Any] = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_persistent_obj,
    ('dnnlib.tflib.network', 'Network'): TFNetwork,
    ('dnnlib.util', 'EasyDict'): util.EasyDict,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('_codecs', 'encode'): _latin1_bytes,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
    **_numpy_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` answers :data:`ALLOWED` only; persistent ids are refused."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 files name Python 2's modules (``__builtin__.set``); rename as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f'the pickle refers to {module}.{name}, which degan does not load '
                                    '(it is not on the allow-list; nothing of it was imported or run)') from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError('the pickle uses persistent ids (a torch.save file?), which this reader refuses')


class PickleReadError(util.UserError):
    """The file is not a readable pickle (truncated, corrupt, or another format)."""


def load(file: BinaryIO, name: str = 'pickle') -> Any:
    """Unpickle ``file`` through :class:`RestrictedUnpickler`; errors name ``name``."""
    try:
        return RestrictedUnpickler(file).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f'{name}: {e}') from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError, RecursionError) as e:
        raise PickleReadError(f'{name}: not a readable pickle, or truncated ({type(e).__name__}: {e})') from None


def load_path(path: str) -> Any:
    with open(path, 'rb') as f:
        return load(f, name=path)


def looks_like_pickle(path: str) -> bool:
    """True if the file starts with a pickle protocol marker (protocol 2–5), not a zip archive."""
    with open(path, 'rb') as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def allowed_globals() -> list[str]:
    """The dotted names a pickle may refer to (for documentation and error messages)."""
    return sorted(f'{module}.{name}' for module, name in ALLOWED)
