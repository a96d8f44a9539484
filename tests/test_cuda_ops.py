"""Custom CUDA ops: compile checks, CPU emulation of the kernels, self-check/fallback machinery,
plugin builder, and (on a GPU) parity with the reference ops.

Issue "Custom CUDA ops"; semantics in docs/stylegan2-arithmetic.md §1.2, §2, §9; build behaviour in
docs/stylegan2-ada.md §7, §13.

What runs where:
- every machine with nvcc: each ``torch_utils/ops/*.cu`` compiles with ``nvcc -c``; the same
  sources built with ``-DDEGAN_HOST_EMULATION`` run their tile/element code on the CPU and are
  checked against independent float64 formulas (the spec's upsample -> pad -> FIR -> downsample
  steps, and autograd derivatives of the activations);
- every machine with g++ and PyTorch headers: the binding compiles; with nvcc too, it links
  with the kernels into an importable extension whose signature matches what cuda_kernels.py calls;
- every machine: the autograd Functions, the self-check and the fallback run on CPU tensors
  through fake plugins (a Python mirror of the kernel formulas, and the emulated kernels);
- a CUDA machine (``@pytest.mark.gpu``): the real kernels against the reference over a grid.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from typing import Any, Optional

import numpy as np
import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import cuda_kernels as ck
from torch_utils.ops import cuda_plugin as cp
from torch_utils.ops import cuda_selfcheck as cs
from torch_utils.ops.activations import activation_funcs
from torch_utils.ops.bias_act import reference_bias_act
from torch_utils.ops.upfirdn2d import reference_upfirdn2d

OPS_DIR = cp.OPS_DIR
CU_FILES = sorted(glob.glob(os.path.join(OPS_DIR, '*.cu')))
BINDING = os.path.join(OPS_DIR, 'ops_binding.cpp')
# nvcc defines PyTorch adds to every extension build (the half/bf16 operator guards).
TORCH_NVCC_DEFINES = ['-D__CUDA_NO_HALF_OPERATORS__', '-D__CUDA_NO_HALF_CONVERSIONS__',
                      '-D__CUDA_NO_BFLOAT16_CONVERSIONS__', '-D__CUDA_NO_HALF2_OPERATORS__',
                      '--expt-relaxed-constexpr']
HAS_CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Tools.

def _nvcc() -> Optional[str]:
    found = shutil.which('nvcc')
    if found:
        return found
    home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH') or '/usr/local/cuda'
    cand = os.path.join(home, 'bin', 'nvcc')
    return cand if os.path.exists(cand) else None


def _nvcc_arch(nvcc: str) -> list[str]:
    """One real architecture this nvcc supports (sm_80 when available: nvcc 13 dropped < sm_75)."""
    try:
        listed = subprocess.run([nvcc, '--list-gpu-arch'], capture_output=True, text=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    archs = [a.split('_')[1] for a in listed if a.startswith('compute_')]
    pick = '80' if '80' in archs or not archs else archs[0]
    return [f'-gencode=arch=compute_{pick},code=sm_{pick}']


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _cuda_lib_dir(nvcc: str) -> Optional[str]:
    roots = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'),
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), '/usr/local/cuda']
    for root in filter(None, roots):
        for sub in ('lib64', 'lib', os.path.join('targets', 'x86_64-linux', 'lib')):
            if os.path.exists(os.path.join(root, sub, 'libcudart_static.a')):
                return os.path.join(root, sub)
    return None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """What ATen's suggest_memory_format() returns for a 4-D tensor."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension
    return cpp_extension.include_paths() + [sysconfig.get_paths()['include']]


def _have_torch_headers() -> bool:
    return any(os.path.exists(os.path.join(p, 'torch', 'extension.h')) for p in _torch_includes())


def _cxx() -> Optional[str]:
    return shutil.which(os.environ.get('CXX', 'g++')) or shutil.which('g++') or shutil.which('c++')


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason='nvcc (CUDA toolkit) not found on this machine')
needs_cxx_torch = pytest.mark.skipif(_cxx() is None or not _have_torch_headers(),
                                     reason='no C++ compiler or no PyTorch C++ headers')
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason='needs a CUDA device (GPU parity tests)')


@pytest.fixture(scope='module')
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Start every compile at once (two cores help) and collect the results.

    Keys: 'cu:<file>' -> CompletedProcess of ``nvcc -c``; 'emu' -> path of the host-emulation
    library (or an error string); 'binding' -> CompletedProcess of ``g++ -c``; 'objects'.
    """
    out = tmp_path_factory.mktemp('cuda_ops_build')
    procs: dict[str, tuple[subprocess.Popen, list[str]]] = {}

    def start(key: str, cmd: list[str]) -> None:
        procs[key] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), cmd)

    objects = []
    if NVCC:
        arch = _nvcc_arch(NVCC)
        probe = out / 'probe.cu'
        probe.write_text('__global__ void k(float* p) { p[threadIdx.x] = 1.f; }\n')
        start('probe', [NVCC, '-c', '-o', str(out / 'probe.o'), str(probe), '-std=c++17', *arch])
        for cu in CU_FILES:
            obj = str(out / (os.path.basename(cu) + '.o'))
            objects.append(obj)
            start('cu:' + os.path.basename(cu), [NVCC, '-c', '-o', obj, cu, '-std=c++17', '-O2', '-Xcompiler', '-fPIC',
                                                 *TORCH_NVCC_DEFINES, *arch])
        ptx_only = [a.replace('code=sm_', 'code=compute_') for a in arch]  # device code unused here: skip ptxas
        start('emu', [NVCC, '-shared', '-o', str(out / 'emu.so'), *CU_FILES, '-std=c++17', '-O2',
                      '-Xcompiler', '-fPIC', '-DDEGAN_HOST_EMULATION', *ptx_only])
    if _cxx() and _have_torch_headers():
        start('binding', [_cxx(), '-c', '-o', str(out / 'binding.o'), BINDING, '-std=c++17', '-O0', '-fPIC',
                          *[f'-isystem{p}' for p in _torch_includes()], '-DTORCH_EXTENSION_NAME=degan_ops_check',
                          '-DTORCH_API_INCLUDE_EXTENSION_H',
                          f'-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}'])
    result: dict[str, Any] = {'dir': out, 'objects': objects}
    for key, (proc, cmd) in procs.items():
        stdout, _ = proc.communicate(timeout=600)
        result[key] = subprocess.CompletedProcess(cmd, proc.returncode, stdout, '')
    return result


# ---------------------------------------------------------------------------------------------
# (1) Compile checks.

def _skip_if_nvcc_broken(builds: dict[str, Any]) -> None:
    probe = builds.get('probe')
    if probe is not None and probe.returncode != 0:
        pytest.skip(f'nvcc cannot compile a trivial kernel here (toolchain problem): {probe.stdout[-300:]}')


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize('cu', [os.path.basename(p) for p in CU_FILES])
def test_cu_file_compiles_with_nvcc(builds: dict[str, Any], cu: str) -> None:
    """Issue item 4: every .cu compiles with ``nvcc -c`` (PyTorch's half-operator guards on)."""
    _skip_if_nvcc_broken(builds)
    res = builds['cu:' + cu]
    assert res.returncode == 0, f'nvcc failed for {cu}:\n{res.stdout[-4000:]}'


def test_cu_files_include_only_cuda_headers() -> None:
    """Issue item 2: kernels use only CUDA / C headers, so the CPU PyTorch wheel can't break them."""
    allowed = {'cuda_runtime.h', 'cuda_fp16.h', 'cuda_bf16.h', 'kernels.h', 'elem.cuh', 'stdint.h', 'stddef.h', 'math.h', 'vector'}
    for path in CU_FILES + [os.path.join(OPS_DIR, 'kernels.h'), os.path.join(OPS_DIR, 'elem.cuh')]:
        with open(path) as f:
            includes = [ln.split()[1].strip('<>"') for ln in f if ln.strip().startswith('#include')]
        assert set(includes) <= allowed, f'{os.path.basename(path)} includes {set(includes) - allowed}'
    with open(BINDING) as f:
        text = f.read()
    assert 'cuda_runtime' not in text and 'ATen/cuda' not in text and 'c10/cuda' not in text


@pytest.mark.slow
@needs_cxx_torch
def test_binding_compiles_with_torch_headers(builds: dict[str, Any]) -> None:
    """Issue item 4: the binding compiles with only PyTorch's include paths (no CUDA headers)."""
    res = builds['binding']
    assert res.returncode == 0, f'g++ failed for ops_binding.cpp:\n{res.stdout[-4000:]}'


@needs_nvcc
@needs_cxx_torch
def test_binding_links_and_matches_backend_signature(builds: dict[str, Any]) -> None:
    """The binding + kernels link into an importable extension (CPU PyTorch is enough to import it);
    its ABI version is cuda_plugin.py's, its keyword names are what cuda_kernels.py passes, and CPU
    tensors are refused."""
    _skip_if_nvcc_broken(builds)
    if builds['binding'].returncode != 0 or any(builds['cu:' + os.path.basename(c)].returncode for c in CU_FILES):
        pytest.skip('a compile step failed (reported by the compile tests)')
    lib = _cuda_lib_dir(NVCC)
    if lib is None:
        pytest.skip('libcudart_static.a not found next to nvcc')
    torch_lib = os.path.join(os.path.dirname(torch.__file__), 'lib')
    so = str(builds['dir'] / 'degan_ops_check.so')
    res = _run([_cxx(), '-shared', '-o', so, str(builds['dir'] / 'binding.o'), *builds['objects'],
                f'-L{torch_lib}', '-lc10', '-ltorch', '-ltorch_cpu', '-ltorch_python', f'-L{lib}', '-lcudart_static',
                '-ldl', '-lrt', '-lpthread', f'-Wl,-rpath,{torch_lib}'])
    assert res.returncode == 0, res.stdout + res.stderr
    code = (
        'import importlib.util, sys, torch\n'
        f'spec = importlib.util.spec_from_file_location("degan_ops_check", {so!r})\n'
        'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n'
        'print(m.abi_version)\n'
        'print(m.upfirdn2d.__doc__.splitlines()[0]); print(m.bias_act.__doc__.splitlines()[0])\n'
        'try:\n    m.upfirdn2d(torch.zeros(1,1,4,4), torch.ones(2,2), 1,1,1,1,0,0,0,0,False,1.0,0)\n'
        'except RuntimeError as e:\n    print("ERR", e)\n'
        'try:\n    m.bias_act(torch.zeros(2,3), None, None, None, None, 0, 1, 0.2, 1.0, -1.0, 1, 0)\n'
        'except RuntimeError as e:\n    print("ERR", e)\n')
    res = _run([sys.executable, '-c', code])
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert int(lines[0]) == cp.ABI_VERSION
    assert lines[1].startswith('upfirdn2d(x: torch.Tensor, f: torch.Tensor, upx:')
    for name in ('upy', 'downx', 'downy', 'padx0', 'padx1', 'pady0', 'pady1', 'flip', 'gain', 'stream'):
        assert f'{name}:' in lines[1]
    assert lines[2].startswith('bias_act(x: torch.Tensor, b:')
    for name in ('xref', 'yref', 'dy', 'mode', 'act', 'alpha', 'gain', 'clamp', 'dim', 'stream'):
        assert f'{name}:' in lines[2]
    assert 'must be a CUDA tensor' in lines[3] and 'must be a CUDA tensor' in lines[4]


# ---------------------------------------------------------------------------------------------
# (2) The kernel code, run on the CPU through the host emulation, vs independent formulas.

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class Emulator:
    """ctypes access to the host-emulated kernels (the same tile/element code the GPU runs)."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        i32, i64, vp, f32 = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        self.lib.degan_upfirdn2d_emulate.argtypes = [vp, vp, vp, i32, i32, i64, i64, i32, i32, i32, i32,
                                                     ctypes.POINTER(i64), ctypes.POINTER(i64), i32, i32, i32, i32, i32,
                                                     i32, i32, i32, i32, f32, ctypes.POINTER(i32)]
        self.lib.degan_upfirdn2d_emulate.restype = i32
        self.lib.degan_upfirdn2d_smem_bytes.argtypes = [i64] + [i32] * 10
        self.lib.degan_upfirdn2d_smem_bytes.restype = i64
        self.lib.degan_bias_act_emulate.argtypes = [vp, vp, vp, vp, vp, vp, i32, i64, i64, i64, i32, i32, f32, f32, f32]
        self.lib.degan_bias_act_emulate.restype = i32

    def upfirdn2d_pass(self, x: torch.Tensor, f2: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                       pad0: tuple[int, int], out_hw: tuple[int, int], flip: bool, gain: float,
                       out_dtype: Optional[torch.dtype] = None,
                       y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
        """One kernel pass (2-D filter f2 [fh, fw]); returns (y, 1 if a specialisation ran)."""
        f2 = f2.float().contiguous()
        if y is None:
            y = torch.empty([x.shape[0], x.shape[1], *out_hw], dtype=out_dtype or x.dtype,
                            memory_format=_memory_format(x))
        xs = (ctypes.c_int64 * 4)(*x.stride())
        ys = (ctypes.c_int64 * 4)(*y.stride())
        spec = ctypes.c_int(-1)
        err = self.lib.degan_upfirdn2d_emulate(
            x.data_ptr(), y.data_ptr(), f2.data_ptr(), DTYPE_CODE[x.dtype], DTYPE_CODE[y.dtype], x.shape[0],
            x.shape[1], x.shape[2], x.shape[3], out_hw[0], out_hw[1], xs, ys, f2.shape[0], f2.shape[1], up[0], up[1],
            down[0], down[1], pad0[0], pad0[1], int(flip), gain, ctypes.byref(spec))
        if err:
            raise RuntimeError(f'emulated upfirdn2d returned error {err}')
        return y, spec.value

    def bias_act(self, x: torch.Tensor, b: Optional[torch.Tensor], xref: Optional[torch.Tensor],
                 yref: Optional[torch.Tensor], dy: Optional[torch.Tensor], mode: int, act: int, alpha: float,
                 gain: float, clamp: float, dim: int) -> torch.Tensor:
        """Mirror of ops_binding.cpp's bias_act around the emulated kernel."""
        if not (x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))):
            x = x.contiguous()  # the binding's test is is_non_overlapping_and_dense(); these two suffice here

        def like_x(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None or t.stride() == x.stride():
                return t
            return torch.empty_like(x).copy_(t)
        xref, yref, dy = like_x(xref), like_x(yref), like_x(dy)
        out = torch.empty_like(x)
        blen = x.shape[dim] if b is not None else 0
        bstride = x.stride(dim) if b is not None and blen > 1 else 1

        def ptr(t: Optional[torch.Tensor]) -> Optional[int]:
            return None if t is None else t.data_ptr()
        err = self.lib.degan_bias_act_emulate(ptr(x), ptr(b.contiguous() if b is not None else None), ptr(xref),
                                              ptr(yref), ptr(dy), out.data_ptr(), DTYPE_CODE[x.dtype], x.numel(),
                                              bstride, blen, mode, act, alpha, gain, clamp)
        if err:
            raise RuntimeError(f'emulated bias_act returned error {err}')
        return out


@pytest.fixture(scope='module')
def emu(builds: dict[str, Any]) -> Emulator:
    if NVCC is None:
        pytest.skip('nvcc not found: no host emulation of the kernels')
    _skip_if_nvcc_broken(builds)
    res = builds['emu']
    assert res.returncode == 0, f'host-emulation build failed:\n{res.stdout[-4000:]}'
    return Emulator(str(builds['dir'] / 'emu.so'))


def upfirdn2d_f64(x: np.ndarray, f: np.ndarray, up: tuple[int, int], down: tuple[int, int],
                  pad: tuple[int, int, int, int], flip: bool, gain: float) -> np.ndarray:
    """docs/stylegan2-arithmetic.md §1.2 step by step in float64 (independent of the kernel):
    zero-insertion upsample, pad/crop, FIR as true convolution (correlation if flip), decimate.
    A 1-D filter is separable: the two passes equal one pass with outer(f, f)."""
    f2 = np.outer(f, f) if f.ndim == 1 else f
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * uy, w * ux))
    u[:, :, ::uy, ::ux] = x
    u = np.pad(u, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    u = u[:, :, max(-py0, 0):u.shape[2] - max(-py1, 0), max(-px0, 0):u.shape[3] - max(-px1, 0)]
    g = f2 if flip else f2[::-1, ::-1]
    win = np.lib.stride_tricks.sliding_window_view(u, g.shape, axis=(2, 3))
    y = np.einsum('ncijab,ab->ncij', win, g)
    return y[:, :, ::dy, ::dx] * gain


def _out_hw(x_hw: tuple[int, int], fhw: tuple[int, int], up: tuple[int, int], down: tuple[int, int],
            pad: tuple[int, int, int, int]) -> tuple[int, int]:
    return ((x_hw[0] * up[1] + pad[2] + pad[3] - fhw[0]) // down[1] + 1,
            (x_hw[1] * up[0] + pad[0] + pad[1] - fhw[1]) // down[0] + 1)


def emulate_upfirdn2d(emu: Emulator, x: torch.Tensor, f: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                      pad: tuple[int, int, int, int], flip: bool, gain: float) -> tuple[torch.Tensor, int]:
    """Mirror of ops_binding.cpp's upfirdn2d around the emulated kernel (two passes if f is 1-D)."""
    fh, fw = (f.shape[0], f.shape[-1])
    out_hw = _out_hw((x.shape[2], x.shape[3]), (fh, fw), up, down, pad)
    if f.ndim == 2:
        return emu.upfirdn2d_pass(x, f, up, down, (pad[0], pad[2]), out_hw, flip, gain)
    tmp, _ = emu.upfirdn2d_pass(x, f.view(1, -1), (up[0], 1), (down[0], 1), (pad[0], 0), (x.shape[2], out_hw[1]),
                                flip, 1.0, out_dtype=torch.float32)
    y = torch.empty([x.shape[0], x.shape[1], *out_hw], dtype=x.dtype, memory_format=_memory_format(x))
    return emu.upfirdn2d_pass(tmp, f.view(-1, 1), (1, up[1]), (1, down[1]), (0, pad[2]), out_hw, flip, gain, y=y)


# (x shape, filter shape, up, down, padding, flip, gain): the StyleGAN2 cases, every factor
# 1..8 somewhere, 1..64-tap filters (1-D separable and 2-D), negative padding (crop).
UPFIRDN_GRID = [
    ((2, 3, 8, 8), (4, 4), (1, 1), (1, 1), (2, 1, 2, 1), False, 1.0),
    ((2, 3, 5, 7), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
    ((1, 4, 9, 8), (4, 4), (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),
    ((1, 2, 6, 6), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1), True, 4.0),
    ((2, 2, 7, 9), (7,), (3, 1), (1, 2), (-1, 2, 3, -2), True, 1.5),
    ((1, 3, 6, 5), (3, 5), (1, 2), (3, 1), (0, 4, -1, 1), True, 0.5),
    ((1, 1, 5, 4), (1, 1), (8, 5), (7, 4), (3, 0, 1, 2), False, 1.0),
    ((1, 2, 3, 4), (12,), (4, 6), (1, 1), (5, 6, 5, 6), False, 2.0),
    ((1, 1, 20, 17), (64,), (1, 1), (8, 6), (31, 32, 31, 32), False, 1.0),
    ((1, 1, 50, 40), (64, 64), (2, 1), (1, 2), (10, 20, 30, -4), True, 1.0),
    ((2, 1, 40, 70), (5, 3), (1, 1), (1, 1), (-3, -2, -1, -5), False, 0.25),
    ((3, 70, 3, 3), (4, 4), (1, 1), (1, 1), (2, 1, 2, 1), False, 1.0),
    ((1, 2, 37, 45), (2, 2), (7, 3), (2, 5), (1, 0, 0, 1), False, 1.0),
]


@pytest.mark.parametrize('case', UPFIRDN_GRID, ids=[f'{c[0]}-f{c[1]}-u{c[2]}-d{c[3]}-p{c[4]}' for c in UPFIRDN_GRID])
def test_emulated_upfirdn2d_matches_float64_formula(emu: Emulator, case: tuple) -> None:
    """The kernel's tiling/polyphase indexing equals the step-by-step definition of
    docs/stylegan2-arithmetic.md §1.2 (fp32)."""
    x_shape, f_shape, up, down, pad, flip, gain = case
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    x = torch.randn(x_shape, generator=gen)
    f = torch.rand(f_shape, generator=gen) + 0.1
    y, _ = emulate_upfirdn2d(emu, x, f, up, down, pad, flip, gain)
    want = upfirdn2d_f64(x.double().numpy(), f.double().numpy(), up, down, pad, flip, gain)
    assert y.shape == want.shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(y.double().numpy(), want, rtol=0, atol=2e-6 * scale)


def test_emulated_upfirdn2d_uses_specialisations_and_strides(emu: Emulator) -> None:
    """The 4x4 up/down-2 fast paths are taken for StyleGAN2's shapes and agree with the general
    path; channels_last and zero-stride (expanded) inputs are read through their strides."""
    gen = torch.Generator().manual_seed(1)
    f = torch.rand(4, 4, generator=gen)
    shapes = [((1, 1), (1, 1), (2, 1, 2, 1)), ((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1))]
    for up, down, pad in shapes:
        x = torch.randn(2, 5, 6, 6, generator=gen)
        y, spec = emulate_upfirdn2d(emu, x, f, up, down, pad, False, 1.0)
        assert spec == 1
        # The filter grown to 5x5 by a leading zero row/column (the trailing tap in correlation
            # order) with one less far padding gives the same result through the general path.
        f5 = torch.zeros(5, 5)
        f5[1:, 1:] = f
        y5, spec5 = emulate_upfirdn2d(emu, x, f5, up, down, (pad[0], pad[1] + 1, pad[2], pad[3] + 1), False, 1.0)
        assert spec5 == 0
        torch.testing.assert_close(y, y5, rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 6, 5, 7, generator=gen)
    y_ref, _ = emulate_upfirdn2d(emu, x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    y_cl, _ = emulate_upfirdn2d(emu, x.contiguous(memory_format=torch.channels_last), f, (2, 2), (1, 1), (2, 1, 2, 1),
                                False, 4.0)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl.contiguous(), y_ref, rtol=0, atol=0)
    row = torch.randn(1, 3, 1, 7, generator=gen)
    y_exp, _ = emulate_upfirdn2d(emu, row.expand(2, 3, 4, 7), f, (1, 1), (1, 1), (2, 1, 2, 1), False, 1.0)
    y_mat, _ = emulate_upfirdn2d(emu, row.expand(2, 3, 4, 7).contiguous(), f, (1, 1), (1, 1), (2, 1, 2, 1), False, 1.0)
    torch.testing.assert_close(y_exp, y_mat, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_emulated_upfirdn2d_low_precision_rounds_once(emu: Emulator, dtype: torch.dtype) -> None:
    """docs/stylegan2-arithmetic.md §1.2/§9: fp16/bf16 data are accumulated in fp32, multiplied by
    gain, and rounded once: the result is the correctly rounded float64 value except within an ulp
    at rounding ties."""
    gen = torch.Generator().manual_seed(2)
    configs = [((4, 4), (2, 2), (1, 1), (2, 1, 2, 1), 4.0), ((9,), (1, 1), (2, 2), (4, 4, 4, 4), 1.0)]
    for f_shape, up, down, pad, gain in configs:
        x = torch.randn(2, 3, 12, 12, generator=gen).to(dtype)
        f = torch.rand(f_shape, generator=gen) + 0.1
        y, _ = emulate_upfirdn2d(emu, x, f, up, down, pad, False, gain)
        assert y.dtype == dtype
        truth = torch.from_numpy(upfirdn2d_f64(x.double().numpy(), f.double().numpy(), up, down, pad, False, gain))
        rounded = truth.to(dtype)
        exact = (y == rounded).double().mean().item()
        ulp = (rounded.double().abs() * torch.finfo(dtype).eps).clamp_min(1e-30)
        assert ((y.double() - rounded.double()).abs() <= ulp * 1.001).all()
        assert exact > 0.97, f'only {exact:.3f} correctly rounded'


def test_emulated_upfirdn2d_limits(emu: Emulator) -> None:
    """Invalid factors are refused; the tile planner stays within 48 KiB of shared memory even
    for 64x64 filters with factor 8 (the launch would fail otherwise)."""
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match='error'):
        emu.upfirdn2d_pass(x, torch.ones(2, 2), (9, 1), (1, 1), (0, 0), (3, 3), False, 1.0)
    worst = 0
    for taps in (1, 4, 17, 64):
        for up in (1, 2, 8):
            for down in (1, 3, 8):
                for planes in (1, 7, 4096):
                    size = emu.lib.degan_upfirdn2d_smem_bytes(planes, 64, 64, 200, 200, taps, taps, up, up, down, down)
                    worst = max(worst, size)
    assert 0 < worst <= 48 * 1024


ACT_NAMES = list(activation_funcs)


def _act_f64(act: str, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Activations in float64 from their textbook definitions (docs/stylegan2-arithmetic.md §2)."""
    if act == 'linear':
        return s
    if act == 'relu':
        return torch.relu(s)
    if act == 'lrelu':
        return torch.where(s > 0, s, s * alpha)
    if act == 'tanh':
        return torch.tanh(s)
    if act == 'sigmoid':
        return 1 / (1 + torch.exp(-s))
    if act == 'elu':
        return torch.where(s >= 0, s, torch.exp(s) - 1)
    if act == 'selu':
        lam, a = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
        return lam * torch.where(s >= 0, s, a * (torch.exp(s) - 1))
    if act == 'softplus':
        return torch.log1p(torch.exp(s))
    if act == 'swish':
        return s / (1 + torch.exp(-s))
    raise KeyError(act)


def _act_derivs_f64(act: str, s: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = s.detach().double().requires_grad_(True)
    f = _act_f64(act, s, alpha)
    (d1,) = torch.autograd.grad(f.sum(), s, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), s, allow_unused=True)[0] if d1.requires_grad else None
    return f.detach(), d1.detach(), torch.zeros_like(s) if d2 is None else d2.detach()


@pytest.mark.parametrize('act', ACT_NAMES)
def test_emulated_bias_act_matches_float64_derivatives(emu: Emulator, act: str) -> None:
    """Kernel modes 0/1/2 (value, gain*f', gain*f'' with the strict clamp mask) vs autograd of
    the textbook activation in float64, for several gains/clamps and a channels_last layout."""
    code, def_gain = ck.ACT_CODES[act], activation_funcs[act].def_gain
    gen = torch.Generator().manual_seed(code)
    for gain, clamp, layout in [(def_gain, -1.0, 'nchw'), (1.7, 0.6, 'nchw'), (0.8, 1.2, 'cl')]:
        x = torch.randn(2, 5, 3, 4, generator=gen) * 2
        if layout == 'cl':
            x = x.contiguous(memory_format=torch.channels_last)
        b = torch.randn(5, generator=gen) * 0.5
        alpha = 0.3 if act == 'lrelu' else 0.0
        s = x.double() + b.double().view(1, -1, 1, 1)
        f, d1, d2 = _act_derivs_f64(act, s, alpha)
        y = emu.bias_act(x, b, None, None, None, 0, code, alpha, gain, clamp, 1)
        want_y = f * gain
        if clamp >= 0:
            want_y = want_y.clamp(-clamp, clamp)
        scale = want_y.abs().max().item()
        assert (y.double() - want_y).abs().max().item() <= 2e-6 * scale
        mask = (y.double().abs() < clamp) if clamp >= 0 else torch.ones_like(s, dtype=torch.bool)
        g = torch.randn(x.shape, generator=gen)
        dy = torch.randn(x.shape, generator=gen)
        dx = emu.bias_act(g, b, x, y, None, 1, code, alpha, gain, clamp, 1)
        want_dx = torch.where(mask, g.double() * gain * d1, torch.zeros_like(s))
        assert (dx.double() - want_dx).abs().max().item() <= 1e-5 * max(want_dx.abs().max().item(), 1e-3), 'mode 1'
        d2x = emu.bias_act(g, b, x, y, dy, 2, code, alpha, gain, clamp, 1)
        want_d2 = torch.where(mask, g.double() * dy.double() * gain * d2, torch.zeros_like(s))
        assert (d2x.double() - want_d2).abs().max().item() <= 1e-5 * max(want_d2.abs().max().item(), 1e-3), 'mode 2'


def test_emulated_bias_act_numerics(emu: Emulator) -> None:
    """docs/stylegan2-arithmetic.md §2 CUDA numerics: softplus is exact up to the linear switch at
    80; fp16 is computed in fp32 and rounded once; the bias follows axis `dim` in any dense layout;
    NaN propagates."""
    s = torch.tensor([-100.0, -20.0, 0.0, 19.0, 25.0, 79.0, 81.0, 200.0])
    y = emu.bias_act(s, None, None, None, None, 0, ck.ACT_CODES['softplus'], 0.0, 1.0, -1.0, 0)
    exact = torch.nn.functional.softplus(s.double(), threshold=1000)
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=1e-30)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 3, 5, generator=gen) * 3).half()
    b = torch.randn(3, generator=gen).half()
    y = emu.bias_act(x, b, None, None, None, 0, ck.ACT_CODES['tanh'], 0.0, 2.0, -1.0, 1)
    want = (torch.tanh(x.double() + b.double().view(1, 3, 1)) * 2.0).half()
    assert (y != want).float().mean().item() < 0.03
    assert ((y.double() - want.double()).abs() <= want.double().abs() * 2 ** -10 + 1e-7).all()
    x2 = torch.randn(6, 4, generator=gen).t()  # non-contiguous, bias along dim 0 (size 4)
    b2 = torch.randn(4, generator=gen)
    y2 = emu.bias_act(x2, b2, None, None, None, 0, ck.ACT_CODES['linear'], 0.0, 1.0, -1.0, 0)
    torch.testing.assert_close(y2, x2 + b2.view(4, 1), rtol=0, atol=1e-6)
    nan = emu.bias_act(torch.tensor([float('nan'), -1.0]), None, None, None, None, 0, 1, 0.0, 1.0, 0.5, 0)
    assert math.isnan(nan[0].item()) and nan[1].item() == 0.0


# ---------------------------------------------------------------------------------------------
# (3) Python layer on CPU tensors with fake plugins.

def _bias_view(b: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    return b.view([-1 if i == dim else 1 for i in range(x.ndim)])


class MirrorPlugin:
    """A Python stand-in for the compiled plugin: upfirdn2d forwards to the reference (so only the
    autograd wiring around it is under test), bias_act re-states the kernel's formulas
    (docs/stylegan2-arithmetic.md §2 table, derivatives from x or y) in torch; computes in float64
    for float64 input, else float32."""
    abi_version = cp.ABI_VERSION
    SELU_LA = 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717

    def __init__(self) -> None:
        self.calls: list[str] = []

    def upfirdn2d(self, x: torch.Tensor, f: torch.Tensor, upx: int, upy: int, downx: int, downy: int, padx0: int,
                  padx1: int, pady0: int, pady1: int, flip: bool, gain: float, stream: int) -> torch.Tensor:
        self.calls.append('upfirdn2d')
        with torch.no_grad():
            return reference_upfirdn2d(x, f.to(x.dtype) if x.dtype == torch.float64 else f, (upx, upy),
                                       (downx, downy), (padx0, padx1, pady0, pady1), flip, gain)

    def bias_act(self, x: torch.Tensor, b: Optional[torch.Tensor], xref: Optional[torch.Tensor],
                 yref: Optional[torch.Tensor], dy: Optional[torch.Tensor], mode: int, act: int, alpha: float,
                 gain: float, clamp: float, dim: int, stream: int) -> torch.Tensor:
        self.calls.append(f'bias_act{mode}')
        name = [k for k, v in ck.ACT_CODES.items() if v == act][0]
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            bias = 0 if b is None else _bias_view(b.to(ct), x, dim)
            if mode == 0:
                s = x.to(ct) + bias
                y = torch.where(s > 80, s, _act_f64(name, s, alpha)) if name == 'softplus' else _act_f64(name, s, alpha)
                y = y * gain
                return (y.clamp(-clamp, clamp) if clamp >= 0 else y).to(x.dtype)
            s = xref.to(ct) + bias if xref is not None else None
            v = yref.to(ct) / gain if yref is not None and gain != 0 else None
            d = self._deriv(name, mode, s, v, alpha)
            r = x.to(ct) * gain * d * (dy.to(ct) if mode == 2 else 1)
            if clamp >= 0:
                r = torch.where(yref.to(ct).abs() < clamp, r, torch.zeros_like(r))
            return r.to(x.dtype)

    def _deriv(self, act: str, mode: int, s: Optional[torch.Tensor], v: Optional[torch.Tensor], alpha: float) -> Any:
        one = 1.0
        if act == 'linear':
            return one if mode == 1 else 0.0
        if act == 'swish':
            q = torch.sigmoid(s)
            return q * (1 + s * (1 - q)) if mode == 1 else q * (1 - q) * (2 + s * (1 - 2 * q))
        if act in ('relu', 'lrelu'):
            neg = 0.0 if act == 'relu' else alpha
            return torch.where(v > 0, torch.ones_like(v), torch.full_like(v, neg)) if mode == 1 else torch.zeros_like(v)
        if act == 'tanh':
            return 1 - v * v if mode == 1 else -2 * v * (1 - v * v)
        if act == 'sigmoid':
            return v * (1 - v) if mode == 1 else v * (1 - v) * (1 - 2 * v)
        if act in ('elu', 'selu'):
            pos, off = (1.0, 1.0) if act == 'elu' else (1.0507009873554804934193349852946, self.SELU_LA)
            if mode == 1:
                return torch.where(v >= 0, torch.full_like(v, pos), v + off)
            return torch.where(v >= 0, torch.zeros_like(v), v + off)
        if act == 'softplus':
            q = -torch.expm1(-v)
            return q if mode == 1 else q * torch.exp(-v)
        raise KeyError(act)


class EmulatedPlugin:
    """The compiled kernels' CPU emulation behind the plugin interface (the binding's logic
    re-stated in Python around it)."""
    abi_version = cp.ABI_VERSION

    def __init__(self, emu: Emulator):
        self.emu = emu

    def upfirdn2d(self, x: torch.Tensor, f: torch.Tensor, upx: int, upy: int, downx: int, downy: int, padx0: int,
                  padx1: int, pady0: int, pady1: int, flip: bool, gain: float, stream: int) -> torch.Tensor:
        pad = (padx0, padx1, pady0, pady1)
        return emulate_upfirdn2d(self.emu, x, f, (upx, upy), (downx, downy), pad, flip, gain)[0]

    def bias_act(self, x: torch.Tensor, b: Optional[torch.Tensor], xref: Optional[torch.Tensor],
                 yref: Optional[torch.Tensor], dy: Optional[torch.Tensor], mode: int, act: int, alpha: float,
                 gain: float, clamp: float, dim: int, stream: int) -> torch.Tensor:
        return self.emu.bias_act(x, b, xref, yref, dy, mode, act, alpha, gain, clamp, dim)


@pytest.fixture
def cpu_kernels(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the backend at CPU tensors and let the test choose the plugin via the returned setter."""
    cs.reset()
    monkeypatch.setattr(ck, '_KERNEL_DEVICE_TYPE', 'cpu')
    monkeypatch.setattr(cs, '_cuda_available', lambda: True)
    monkeypatch.setattr(cs, '_check_device', lambda: torch.device('cpu'))

    def use(plugin: Any) -> Any:
        def load() -> Any:
            if isinstance(plugin, BaseException):
                raise plugin
            return plugin
        monkeypatch.setattr(cp, '_load_plugin', load)
        cs.reset()
        return plugin
    yield use
    cs.reset()


def _ready_quietly(op: str) -> tuple[bool, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ready = cs.is_ready(op)
    return ready, [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize('op', ck.OPS)
def test_self_check_passes_for_mirror_plugin(cpu_kernels: Any, op: str) -> None:
    """With a correct plugin the self-check (forward, gradients, second order vs the reference
    autograd) passes, so the gradient wiring (upfirdn2d's transposed padding, bias_act's
    'gradient from y' formulas and second-order Function) is right."""
    plugin = cpu_kernels(MirrorPlugin())
    ready, caught = _ready_quietly(op)
    assert cs.why_not_ready(op) == '' and ready and not caught
    assert any(c.startswith(op) for c in plugin.calls)
    assert ck.stats[f'{op}.kernel'] > 0 and ck.stats[f'{op}.fallback'] == 0


@pytest.mark.parametrize('op', ck.OPS)
def test_self_check_passes_for_emulated_kernels(cpu_kernels: Any, emu: Emulator, op: str) -> None:
    """The actual kernel code (host-emulated) passes the same self-check the GPU runs (fp32 and fp16)."""
    cpu_kernels(EmulatedPlugin(emu))
    assert cs.run_self_check(op, torch.device('cpu'), dtypes=(torch.float32, torch.float16)) == ''


def test_gradcheck_through_mirror_plugin(cpu_kernels: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Numerical gradcheck/gradgradcheck (float64) of the autograd Functions, independent of the
    reference: upfirdn2d with mixed factors and a separable filter; bias_act for a second-order
    activation from y (tanh, with clamp) and from x (swish), and lrelu."""
    cpu_kernels(MirrorPlugin())
    monkeypatch.setattr(ck, 'KERNEL_DTYPES', (torch.float32, torch.float64))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for f, up, down, pad in [(torch.rand(3, 2, generator=gen, dtype=torch.float64), (2, 1), (1, 3), (1, -1, 2, 0)),
                             (torch.rand(5, generator=gen, dtype=torch.float64), (1, 3), (2, 1), (2, 2, -1, 3))]:
        fn = lambda t: ck.upfirdn2d(t, f, up=up, down=down, padding=pad, flip_filter=True, gain=1.3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
    assert ck.stats['upfirdn2d.fallback'] == 0
    xb = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    for act, clamp in [('tanh', 0.9), ('swish', None), ('softplus', None), ('lrelu', None)]:
        fn = lambda t, u: ck.bias_act(t, u, dim=1, act=act, alpha=None, gain=1.5, clamp=clamp)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (xb, b))
        assert torch.autograd.gradgradcheck(fn, (xb, b))
    assert ck.stats['bias_act.fallback'] == 0


def test_bias_act_third_order_raises(cpu_kernels: Any) -> None:
    """Second order is supported; a third derivative raises instead of returning a silent zero."""
    cpu_kernels(MirrorPlugin())
    x = torch.randn(4, 3, requires_grad=True)
    y = ck.bias_act(x, None, dim=1, act='tanh')
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='third-order'):
        torch.autograd.grad(g2.sum(), x)
    # Second order without create_graph (R1, path length) is unaffected.
    (g,) = torch.autograd.grad(ck.bias_act(x, None, dim=1, act='tanh').sum(), x, create_graph=True)
    (g2_plain,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(g2_plain, g2.detach())


class _Broken(MirrorPlugin):
    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def upfirdn2d(self, x: torch.Tensor, f: torch.Tensor, *args: Any) -> torch.Tensor:
        y = super().upfirdn2d(x, f, *args)
        if self.what == 'gain':
            return y * 1.01
        if self.what == 'grad' and args[-3]:  # flip=True only in some forward cases and in gradients
            return y.flip(-1)
        if self.what == 'raise':
            raise RuntimeError('CUDA error: an illegal memory access was encountered')
        return y

    def bias_act(self, x: torch.Tensor, b: Optional[torch.Tensor], xref: Any, yref: Any, dy: Any, mode: int,
                 *args: Any) -> torch.Tensor:
        r = super().bias_act(x, b, xref, yref, dy, mode, *args)
        if self.what == 'grad2' and mode == 2:
            return r * 0.5
        if self.what == 'fp16' and x.dtype == torch.float16 and mode == 0:
            return (r.float() + 0.2).half()
        return r


@pytest.mark.parametrize('op,what,expect', [
    ('upfirdn2d', 'gain', 'self-check mismatch: upfirdn2d filter2d 4x4 [float32]: y'),
    ('upfirdn2d', 'grad', 'self-check mismatch'),
    ('upfirdn2d', 'raise', 'self-check raised RuntimeError: CUDA error: an illegal memory access'),
    ('bias_act', 'grad2', 'grad2_x'),
    ('bias_act', 'fp16', '[float16]: y'),
])
def test_failing_self_check_warns_once_and_falls_back(cpu_kernels: Any, op: str, what: str, expect: str) -> None:
    """A wrong kernel (forward, first-, second-order or fp16 only) or a crashing one is caught:
    one RuntimeWarning with the reason, is_ready stays False, and nothing is re-tried."""
    cpu_kernels(_Broken(what))
    ready, caught = _ready_quietly(op)
    assert not ready
    assert len(caught) == 1 and expect in str(caught[0].message), str(caught[0].message)
    assert 'falling back to the slow reference implementation' in str(caught[0].message)
    assert expect in cs.why_not_ready(op)
    ready2, caught2 = _ready_quietly(op)
    assert not ready2 and not caught2


def test_build_failure_warns_once_with_reason(cpu_kernels: Any) -> None:
    """A failed build (e.g. nvcc missing) disables both ops with the builder's reason; so does a
    stale plugin whose ABI version differs."""
    cpu_kernels(custom_ops.PluginBuildError('the CUDA toolkit (nvcc) was not found; install ...'))
    for op in ck.OPS:
        ready, caught = _ready_quietly(op)
        assert not ready and len(caught) == 1
        assert 'could not be built: the CUDA toolkit (nvcc) was not found' in str(caught[0].message)
    stale = MirrorPlugin()
    stale.abi_version = cp.ABI_VERSION + 1
    cpu_kernels(stale)
    ready, caught = _ready_quietly('bias_act')
    assert not ready and 'ABI version' in str(caught[0].message)


def test_cpu_machine_never_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CUDA: is_ready is False at once, the builder is never called, and the backend's
    ops on CPU tensors are the reference ops."""
    cs.reset()
    monkeypatch.setattr(cs, '_cuda_available', lambda: False)

    def forbidden() -> Any:
        raise AssertionError('must not build without CUDA')
    monkeypatch.setattr(cp, '_load_plugin', forbidden)
    for op in ck.OPS:
        assert cs.is_ready(op) is False
        assert cs.why_not_ready(op) == 'CUDA is not available'
    x = torch.randn(2, 3, 6, 6)
    f = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    y = ck.upfirdn2d(x, f, up=(2, 2), padding=(2, 1, 2, 1), gain=4.0)
    want = reference_upfirdn2d(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    b = torch.randn(3)
    torch.testing.assert_close(ck.bias_act(x, b, 1, 'lrelu', None, None, 0.5),
                               reference_bias_act(x, b, 1, 'lrelu', 0.2, math.sqrt(2), 0.5), rtol=0, atol=0)
    assert ck.stats['upfirdn2d.kernel'] == 0 and ck.stats['bias_act.kernel'] == 0
    cs.reset()


def test_uncovered_calls_fall_back_to_reference(cpu_kernels: Any) -> None:
    """float64, factor 9, a 65-tap filter and a filter needing a gradient go to the reference."""
    plugin = cpu_kernels(MirrorPlugin())
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    ck.upfirdn2d(x, torch.ones(2, 2, dtype=torch.float64), padding=(1, 0, 1, 0))
    x = x.float()
    ck.upfirdn2d(x, torch.ones(2, 2), up=(9, 1), padding=(1, 0, 1, 0))
    ck.upfirdn2d(x, torch.ones(65) / 65, padding=(32, 32, 32, 32))
    f = torch.ones(2, 2, requires_grad=True)
    y = ck.upfirdn2d(x, f, padding=(1, 0, 1, 0))
    y.sum().backward()
    assert f.grad is not None
    assert ck.stats['upfirdn2d.fallback'] == 4 and not plugin.calls
    ck.bias_act(torch.randn(3, 4, dtype=torch.float64), None, 1, 'relu')
    assert ck.stats['bias_act.fallback'] == 1


def test_activation_table_matches_reference() -> None:
    """The table of docs/stylegan2-arithmetic.md §2 has one source (activations, re-exported by
    bias_act) that the kernel wrappers read too; the kernel adds only its codes, which cover that
    table and equal kernels.h's enum."""
    from torch_utils.ops import bias_act as ref_module
    assert ck.activation_funcs is ref_module.activation_funcs
    assert set(ck.ACT_CODES) == set(ref_module.activation_funcs)
    assert sorted(ck.ACT_CODES.values()) == list(range(9))
    with open(os.path.join(OPS_DIR, 'kernels.h')) as f:
        enum = {name.lower(): int(v) for name, v in re.findall(r'\bkAct(\w+)\s*=\s*(\d+)', f.read())}
    assert enum == ck.ACT_CODES


def test_public_ops_hand_their_reference_to_the_kernels() -> None:
    """The CUDA side imports no public op: the kernels' fallback and the self-check's oracle are
    the reference paths that upfirdn2d.py and bias_act.py registered."""
    assert ck.reference('upfirdn2d') is reference_upfirdn2d
    assert ck.reference('bias_act') is reference_bias_act


@pytest.mark.parametrize('good', [True, False])
def test_resolve_impl_follows_self_check(cpu_kernels: Any, good: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """_impl.resolve_impl picks 'cuda' only after the self-check passed ('auto' and 'cuda'),
    'ref' otherwise (with one warning naming the reason when 'cuda' was asked for); CPU tensors
    always get 'ref' without building. A meta tensor stands in for a CUDA tensor here."""
    from torch_utils.ops import _impl
    monkeypatch.setattr(_impl, '_warned', set())
    cpu_kernels(MirrorPlugin() if good else _Broken('gain'))
    x = torch.empty(1, 1, 4, 4, device='meta')
    assert _impl.resolve_impl('upfirdn2d', torch.zeros(1, 1, 4, 4), 'cuda') == 'ref'
    assert cs._status['upfirdn2d'] is None  # nothing built or checked for a CPU tensor
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert _impl.resolve_impl('upfirdn2d', x, 'auto') == ('cuda' if good else 'ref')
        assert _impl.resolve_impl('upfirdn2d', x, 'cuda') == ('cuda' if good else 'ref')
        assert _impl.resolve_impl('upfirdn2d', x, 'cuda') == ('cuda' if good else 'ref')
        assert _impl.resolve_impl('upfirdn2d', x, 'ref') == 'ref'
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if good:
        assert messages == []
    else:
        assert len([m for m in messages if 'disabled' in m]) == 1  # the backend's own warning
        assert len([m for m in messages if "ops impl 'cuda' requested" in m]) == 1
        assert all('self-check mismatch' in m for m in messages)


def test_compare_and_tie_mask() -> None:
    """The self-check's comparison: normalised max error, non-finite pattern, None = zeros,
    and the clamp tie zone excluded only from gradients."""
    w = torch.tensor([1.0, -2.0, 4.0])
    assert cs.compare('y', w.clone(), w, 1e-4) == ''
    assert cs.compare('y', w + torch.tensor([0, 0, 3.9e-4]), w, 1e-4) == ''  # < 1e-4 of the max
    assert 'normalised max error' in cs.compare('y', w + torch.tensor([0, 0, 1e-3]), w, 1e-4)
    assert 'non-finite' in cs.compare('y', torch.tensor([1.0, float('nan'), 4.0]), w, 1e-4)
    assert cs.compare('g', None, torch.zeros(3), 1e-4) == ''
    assert 'normalised' in cs.compare('g', None, torch.tensor([0.0, 1.0, 0.0]), 1e-4)
    assert 'shape' in cs.compare('y', torch.zeros(2), w, 1e-4)
    case = cs._bias_act_case('linear', clamp=1.0)
    tie = cs._tie_mask(case, torch.tensor([[0.5, 1.0], [-1.0, 0.99]]), torch.float16)
    assert tie.tolist() == [[False, True], [True, False]]
    assert cs._mask_for('y', tie, 1) is None
    assert cs._mask_for('grad_b', tie, 1).tolist() == [True, True]


@pytest.mark.parametrize('context', ['no_grad', 'inference_mode'])
def test_first_call_inside_no_grad_or_inference_mode(cpu_kernels: Any, context: str) -> None:
    """generate.py and the metrics make their first op call under no_grad / inference_mode; the
    self-check must still run (and pass) there instead of disabling the kernel."""
    cpu_kernels(MirrorPlugin())
    x = torch.randn(2, 3)
    with (torch.no_grad() if context == 'no_grad' else torch.inference_mode()):
        ready, caught = _ready_quietly('bias_act')
        assert ready and not caught, cs.why_not_ready('bias_act')
        y = ck.bias_act(x, None, 1, 'lrelu')
    assert ck.stats['bias_act.kernel'] > 0
    torch.testing.assert_close(y, reference_bias_act(x, None, 1, 'lrelu', 0.2, math.sqrt(2), None))


def test_self_check_leaves_global_rng_alone(cpu_kernels: Any) -> None:
    """Training reproducibility: the self-check draws from its own generator."""
    cpu_kernels(MirrorPlugin())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert cs.is_ready('bias_act')
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# custom_ops: the builder.

TINY_PLUGIN = r'''
#include <Python.h>
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define STR2(a) #a
#define STR(a) STR2(a)
static struct PyModuleDef tiny = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
    PyObject* m = PyModule_Create(&tiny);
    if (m) PyModule_AddIntConstant(m, "answer", ANSWER);
    return m;
}
'''

needs_ninja_cxx = pytest.mark.skipif(_cxx() is None or shutil.which('ninja') is None,
                                     reason='ninja or a C++ compiler is missing')


@pytest.fixture
def ext_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'ext'))
    monkeypatch.setattr(custom_ops, 'verbosity', 'brief')
    monkeypatch.delenv('DEGAN_OPS_VERBOSITY', raising=False)
    custom_ops.clear_cache()
    yield tmp_path
    custom_ops.clear_cache()


@needs_ninja_cxx
def test_get_plugin_builds_caches_and_rebuilds_on_change(ext_dir: Any, capsys: pytest.CaptureFixture) -> None:
    """A real (C++-only) build through cpp_extension + ninja: brief messages, a digest-named build
    directory under TORCH_EXTENSIONS_DIR, in-process caching, a stale PyTorch lock file that does
    not hang the build, and a new directory when the source changes."""
    src = ext_dir / 'tiny.cpp'
    src.write_text(TINY_PLUGIN.replace('ANSWER', '42'))
    m = custom_ops.get_plugin('degan_tiny_a', ['tiny.cpp'], source_dir=str(ext_dir), with_cuda=False)
    assert m.answer == 42
    assert 'Setting up PyTorch plugin "degan_tiny_a"... Done.' in capsys.readouterr().out
    build_dirs = glob.glob(str(ext_dir / 'ext' / 'degan_tiny_a-*'))
    assert len(build_dirs) == 1 and os.path.exists(os.path.join(build_dirs[0], 'src', 'tiny.cpp'))
    assert custom_ops.get_plugin('degan_tiny_a', ['tiny.cpp'], source_dir=str(ext_dir), with_cuda=False) is m
    assert capsys.readouterr().out == ''
    open(os.path.join(build_dirs[0], 'lock'), 'w').close()  # left behind by a killed build
    src.write_text(TINY_PLUGIN.replace('ANSWER', '7'))
    m2 = custom_ops.get_plugin('degan_tiny_b', ['tiny.cpp'], source_dir=str(ext_dir), with_cuda=False)
    assert m2.answer == 7
    assert custom_ops.source_digest([str(src)]) != custom_ops.source_digest([str(src)], flags=['-DX'])


@pytest.mark.slow
@needs_ninja_cxx
def test_get_plugin_concurrent_processes_share_one_build(ext_dir: Any) -> None:
    """Two ranks starting at once: the file lock serialises them, both import the same build."""
    (ext_dir / 'tiny.cpp').write_text(TINY_PLUGIN.replace('ANSWER', '5'))
    code = ('import sys; sys.path.insert(0, sys.argv[1]); from torch_utils import custom_ops; '
            'm = custom_ops.get_plugin("degan_tiny_c", ["tiny.cpp"], source_dir=sys.argv[2], with_cuda=False); '
            'print("answer", m.answer, m.__file__)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DEGAN_OPS_VERBOSITY='none')
    procs = [subprocess.Popen([sys.executable, '-c', code, root, str(ext_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    files = {out.split()[-1] for out in outs}
    assert len(files) == 1 and all('answer 5' in out for out in outs)


@needs_ninja_cxx
def test_get_plugin_compile_error_is_one_clear_failure(ext_dir: Any, capsys: pytest.CaptureFixture) -> None:
    """A compiler error becomes PluginBuildError naming the error; 'Failed!' is printed once and
    the failure is remembered (no second build attempt in the process)."""
    (ext_dir / 'bad.cpp').write_text('int main( { return 0; }\n')
    with pytest.raises(custom_ops.PluginBuildError, match='error'):
        custom_ops.get_plugin('degan_tiny_bad', ['bad.cpp'], source_dir=str(ext_dir), with_cuda=False)
    out = capsys.readouterr().out
    assert 'Setting up PyTorch plugin "degan_tiny_bad"... Failed!' in out and 'reason:' in out
    with pytest.raises(custom_ops.PluginBuildError):
        custom_ops.get_plugin('degan_tiny_bad', ['bad.cpp'], source_dir=str(ext_dir), with_cuda=False)
    assert capsys.readouterr().out == ''


@pytest.mark.skipif(torch.version.cuda is not None, reason='this PyTorch has CUDA support')
def test_get_plugin_on_cpu_torch_says_why(ext_dir: Any, capsys: pytest.CaptureFixture) -> None:
    """The #1 upstream complaint: say plainly why nothing can be built, without a traceback wall."""
    with pytest.raises(custom_ops.PluginBuildError, match='CPU-only build'):
        custom_ops.get_plugin(cp.PLUGIN_NAME, cp.PLUGIN_SOURCES, cp.PLUGIN_HEADERS, source_dir=OPS_DIR)
    assert 'Failed!' in capsys.readouterr().out
    assert 'CPU-only build' in custom_ops.toolchain_problem()


# ---------------------------------------------------------------------------------------------
# (4) GPU: the real kernels against the reference.

def _gpu_upfirdn_case(case: tuple) -> cs.CheckCase:
    x_shape, f_shape, up, down, pad, flip, gain = case
    return cs._upfirdn_case('grid', x_shape, f_shape if f_shape != (4, 4) else 'fir4', up, down, pad, flip=flip,
                            gain=gain, order=2)


@pytest.fixture(scope='module')
def gpu_kernels() -> None:
    """Build the real plugin once; skip (with the reason) only when the toolchain is missing."""
    problem = custom_ops.toolchain_problem()
    if problem is not None:
        pytest.skip(f'cannot build the CUDA plugin on this GPU machine: {problem}')
    cs.reset()
    for op in ck.OPS:
        assert cs.is_ready(op), cs.why_not_ready(op)


@pytest.mark.gpu
@needs_gpu
def test_gpu_kernels_build_and_pass_self_check(gpu_kernels: None) -> None:
    for op in ck.OPS:
        assert cs.is_ready(op) and cs.why_not_ready(op) == ''


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', UPFIRDN_GRID, ids=[f'{c[0]}-f{c[1]}-u{c[2]}-d{c[3]}-p{c[4]}' for c in UPFIRDN_GRID])
def test_gpu_upfirdn2d_parity(gpu_kernels: None, case: tuple, dtype: torch.dtype) -> None:
    """Forward, gradient and gradient-of-gradient (fp32) vs the reference over the grid."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16 on this GPU')
    check = _gpu_upfirdn_case(case)
    if dtype != torch.float32:
        check = dataclasses.replace(check, order=1)
    before = ck.stats['upfirdn2d.kernel']
    reason = cs.check_case(check, dtype, torch.device('cuda'), ck.upfirdn2d, reference_upfirdn2d)
    assert reason == ''
    assert ck.stats['upfirdn2d.kernel'] > before


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('act', ACT_NAMES)
@pytest.mark.parametrize('variant', ['plain', 'clamp', 'channels_last', 'dim0'])
def test_gpu_bias_act_parity(gpu_kernels: None, act: str, dtype: torch.dtype, variant: str) -> None:
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('no bf16 on this GPU')
    kw: dict[str, Any] = {'order': 2 if dtype == torch.float32 else 1}
    if variant == 'clamp':
        kw.update(clamp=0.7, gain=1.3)
    elif variant == 'channels_last':
        kw.update(x_shape=(2, 6, 5, 3), channels_last=True)
    elif variant == 'dim0':
        kw.update(x_shape=(7, 33), dim=0, alpha=0.3)
    check = cs._bias_act_case(act, **kw)
    assert cs.check_case(check, dtype, torch.device('cuda'), ck.bias_act, reference_bias_act) == ''


@pytest.mark.gpu
@needs_gpu
def test_gpu_large_shapes_and_streams(gpu_kernels: None) -> None:
    """Tiling across many tiles and more than 65535 plane blocks (grid-y loop), a 256-px map,
    and a non-default stream."""
    dev = torch.device('cuda')
    f = cs._fir4().to(dev)
    for x in [torch.randn(2, 8, 256, 256, device=dev), torch.randn(70000, 1, 32, 32, device=dev, dtype=torch.float16)]:
        got = ck.upfirdn2d(x, f, up=(2, 2), padding=(2, 1, 2, 1), gain=4.0)
        want = reference_upfirdn2d(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
        assert cs.compare('y', got, want, cs.TOLERANCES[x.dtype]) == ''
    s = torch.cuda.Stream()
    x = torch.randn(4, 512, 8, 8, device=dev)
    b = torch.randn(512, device=dev)
    with torch.cuda.stream(s):
        got = ck.bias_act(x, b, 1, 'lrelu', None, None, 256.0)
    s.synchronize()
    assert cs.compare('y', got, reference_bias_act(x, b, 1, 'lrelu', 0.2, math.sqrt(2), 256.0), 1e-4) == ''
