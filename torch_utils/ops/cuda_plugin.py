"""The CUDA plugin of upfirdn2d and bias_act: its sources, building/loading it, its ABI check.

Build behaviour: docs/stylegan2-ada.md §7 and §13 (issue "Custom CUDA ops"). The plugin is compiled
from ``ops_binding.cpp`` and the ``.cu`` kernels next to this file by
``torch_utils.custom_ops.get_plugin`` (which caches it on disk and in the process and raises
``PluginBuildError`` with a one-line reason when the toolchain is incomplete). ``get_plugin()``
here loads it once, refuses a stale build whose ABI version differs from ``ABI_VERSION``, and
keeps it for the kernel wrappers (``cuda_kernels``); whether a kernel may be used is decided by
``cuda_selfcheck``.
"""

from __future__ import annotations

import os
from typing import Any

from torch_utils import custom_ops

PLUGIN_NAME = 'degan_ops_plugin'
ABI_VERSION = 1  # must equal kAbiVersion in ops_binding.cpp
OPS_DIR = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SOURCES = ('ops_binding.cpp', 'upfirdn2d_kernel.cu', 'bias_act_kernel.cu')
PLUGIN_HEADERS = ('kernels.h', 'elem.cuh')

_plugin: Any = None


def _load_plugin() -> Any:
    """Build (or reuse) and import the plugin; raises on failure. Tests monkeypatch this."""
    return custom_ops.get_plugin(PLUGIN_NAME, PLUGIN_SOURCES, PLUGIN_HEADERS, source_dir=OPS_DIR)


def get_plugin() -> Any:
    """The loaded plugin (built on the first call); raises if it cannot be built or its ABI differs."""
    global _plugin
    if _plugin is None:
        module = _load_plugin()
        version = getattr(module, 'abi_version', None)
        if version != ABI_VERSION:
            raise RuntimeError(f'plugin ABI version {version} does not match cuda_plugin.py ({ABI_VERSION})')
        _plugin = module
    return _plugin


def forget_plugin() -> None:
    """Drop the loaded plugin, so the next ``get_plugin()`` loads it again (tests; a retry)."""
    global _plugin
    _plugin = None
