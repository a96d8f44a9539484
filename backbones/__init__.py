"""The backbone registry: ``--backbone=NAME`` → the package that provides everything backbone-specific.

Each entry maps a name to a module that defines ``BACKBONE``, an instance of
:class:`backbones.base.Backbone`. Adding a backbone is one package plus one line in
``BUILTIN``. Backbones outside this repository are registered with the environment variable
``DEGAN_BACKBONES='name=package.module[,name2=...]'`` (read by every entry point: train.py,
generate.py, calc_metrics.py) or, in Python, with :func:`register`; their module prefix is
then trusted for constructing classes by name (``dnnlib.util.get_obj_by_name``).

Snapshots store the backbone's *name*; loading one only imports registered modules, never a
module named by the file.
"""

from __future__ import annotations

import importlib
import os

from dnnlib import util
from dnnlib.util import UserError

#: Backbones that ship with degan.
BUILTIN: dict[str, str] = {
    'stylegan2': 'backbones.stylegan2',
    'fastgan': 'backbones.fastgan',
    'projected': 'backbones.projected',
    'insgen': 'backbones.insgen',
}
DEFAULT = 'stylegan2'
ENV_VAR = 'DEGAN_BACKBONES'

_registry: dict[str, str] = dict(BUILTIN)
_loaded: dict[str, object] = {}


def register(name: str, module: str) -> None:
    """Register a backbone module (it must define ``BACKBONE``) under ``name``."""
    if not name.isidentifier():
        raise UserError(f'backbone name "{name}" must be an identifier')
    _registry[name] = module
    _loaded.pop(name, None)
    util.trust_module_prefix(module.rpartition('.')[0] or module)


_registered_env: str = ''


def _register_from_environment() -> None:
    """Register the ``DEGAN_BACKBONES`` entries (again only when the variable changed)."""
    global _registered_env
    value = os.environ.get(ENV_VAR, '')
    if value == _registered_env:
        return
    for entry in filter(None, (part.strip() for part in value.split(','))):
        name, sep, module = entry.partition('=')
        if not sep or not module:
            raise UserError(f'{ENV_VAR}: "{entry}" is not of the form name=package.module')
        register(name.strip(), module.strip())
    _registered_env = value


def names() -> list[str]:
    """Registered backbone names, built-ins first."""
    _register_from_environment()
    return list(_registry)


def get(name: str):  # -> backbones.base.Backbone
    """The backbone registered as ``name`` (imports its module on first use)."""
    _register_from_environment()
    if name not in _registry:
        raise UserError(f'--backbone={name}: unknown backbone; registered: {", ".join(_registry)}')
    if name not in _loaded:
        module = importlib.import_module(_registry[name])
        backbone = getattr(module, 'BACKBONE', None)
        if backbone is None or getattr(backbone, 'name', None) != name:
            raise UserError(f'{_registry[name]} does not define BACKBONE with name "{name}"')
        _loaded[name] = backbone
    return _loaded[name]


def all_backbones() -> list:
    """Every registered backbone (for train.py's flag groups)."""
    return [get(name) for name in names()]
