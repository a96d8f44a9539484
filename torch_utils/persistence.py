"""Safe network persistence: modules become plain data, and plain data becomes modules again.

Upstream StyleGAN2-ADA pickles the *source code* of every network class into its snapshots and
executes it on load. degan never does that (docs/README.md decision 4). Instead:

* ``@persistent_class`` records the constructor's keyword arguments of a network class as
  ``module.init_kwargs`` (JSON-able plain data) and registers the class under its dotted name.
* ``module_to_record(m)`` → ``{'class_name', 'init_kwargs', 'state_dict'}``: strings, numbers,
  lists, dicts and CPU tensors only, loadable with ``torch.load(weights_only=True)``.
* ``module_from_record(rec)`` rebuilds the module from the registry (degan's own classes only)
  and loads the state dict with ``strict=True``.
* ``save_snapshot`` / ``load_snapshot`` write and read such dicts atomically and safely.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
from typing import Any, Optional, TypeVar

import torch

from dnnlib import util

_registry: dict[str, type] = {}
T = TypeVar('T', bound=type)

SNAPSHOT_FORMAT = 'degan-snapshot'


def class_name_of(cls: type) -> str:
    """The dotted name under which ``cls`` is registered (``training.networks.Generator``)."""
    return f'{cls.__module__}.{cls.__qualname__}'


def persistent_class(cls: T) -> T:
    """Class decorator: record constructor arguments as ``self.init_kwargs`` and register the class.

    Positional arguments are converted to keywords using the signature, so a record never depends
    on argument order. The recorded values must be JSON-able (checked at construction time).
    """
    assert issubclass(cls, torch.nn.Module)
    signature = inspect.signature(cls.__init__)
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        recorded: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            elif kind == inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f'{cls.__name__}: *args cannot be recorded in a snapshot')
            else:
                recorded[name] = value
        try:
            init_kwargs = util.to_jsonable(copy.deepcopy(recorded))
        except TypeError as e:
            raise TypeError(f'{cls.__name__}: constructor arguments must be plain data for snapshots: {e}') from None
        original_init(self, *args, **kwargs)
        if type(self) is cls:  # the most derived persistent class records its own arguments
            self.init_kwargs = init_kwargs

    cls.__init__ = __init__  # type: ignore[method-assign]
    _registry[class_name_of(cls)] = cls
    return cls


def is_persistent(obj: Any) -> bool:
    """True if ``obj`` is an instance of a registered class (it can be stored in a snapshot)."""
    return class_name_of(type(obj)) in _registry and hasattr(obj, 'init_kwargs')


def lookup_class(class_name: str) -> type:
    """degan's network class registered under ``class_name`` (imported from degan's own module)."""
    return _lookup(class_name)


def _lookup(class_name: str) -> type:
    if class_name not in _registry:
        util.get_obj_by_name(class_name)  # imports degan's own module, which registers the class
    if class_name not in _registry:
        raise util.UserError(f'"{class_name}" is not a degan network class; cannot rebuild it')
    return _registry[class_name]


def module_to_record(module: torch.nn.Module) -> dict[str, Any]:
    """Plain-data record of a persistent module: class name, init kwargs and CPU state dict."""
    if not is_persistent(module):
        raise TypeError(f'{type(module).__name__} is not decorated with @persistent_class')
    state = {k: v.detach().to('cpu', copy=True) for k, v in module.state_dict().items()}
    return dict(class_name=class_name_of(type(module)), init_kwargs=copy.deepcopy(module.init_kwargs), state_dict=state)


def module_from_record(record: dict[str, Any], device: torch.device | str = 'cpu',
                       **override_kwargs: Any) -> torch.nn.Module:
    """Rebuild a module from ``module_to_record``'s output; loads weights with ``strict=True``.

    ``override_kwargs`` replace constructor arguments (e.g. ``num_fp16_res=0``) when they do not
    change parameter shapes.
    """
    cls = _lookup(record['class_name'])
    kwargs = dict(record['init_kwargs'])
    kwargs.update(override_kwargs)
    module = cls(**kwargs)
    module.load_state_dict(record['state_dict'], strict=True)
    return module.to(device)


def save_snapshot(data: dict[str, Any], path: str) -> None:
    """Atomically write a snapshot dict (plain data + tensors) with ``torch.save``.

    The temp file is renamed onto ``path`` only after a complete write, so an interrupted save
    never corrupts or replaces an existing snapshot.
    """
    data = dict(data)
    data.setdefault('format', SNAPSHOT_FORMAT)
    with util.atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:  # through a Python file, a full disk is OSError(ENOSPC), not a bare RuntimeError
            torch.save(data, f)


def _load_error_reason(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line — without torch's advice to
    retry with ``weights_only=False`` (which would run whatever code the file names)."""
    text = str(error)
    found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
    if found:
        return f'it refers to {found.group(1)}, which a degan snapshot never holds; nothing of it was run'
    first = text.strip().splitlines()[0] if text.strip() else ''
    if (isinstance(error, (KeyError, EOFError)) or not first or 'weights_only' in text
            or 'PytorchStreamReader' in text or 'zip archive' in text):
        return f'truncated, corrupt or not a torch file ({type(error).__name__})'
    return f'{type(error).__name__}: {first}'


def load_snapshot(path: str, map_location: Optional[str | torch.device] = 'cpu', mmap: bool = False) -> dict[str, Any]:
    """Load a snapshot with ``weights_only=True``: no code is executed while loading. ``mmap``: the
    tensors stay in the file until touched (for a look at the config without reading the weights)."""
    if not os.path.isfile(path):
        raise util.UserError(f'snapshot not found: {path}')
    if path.endswith('.pkl'):
        raise util.UserError(f'{path}: a network pickle is read through training.snapshot_io.read or legacy.py '
                             '(never with plain unpickling: it carries executable code)')
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a usable snapshot"
        raise util.UserError(f'{path}: not a readable degan snapshot ({_load_error_reason(e)})') from None
    if not isinstance(data, dict) or data.get('format') != SNAPSHOT_FORMAT:
        raise util.UserError(f'{path}: not a degan snapshot (missing format tag)')
    return data
