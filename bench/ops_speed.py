"""Reference vs CUDA speed of upfirdn2d and bias_act, and of one 256-px training step.

Issue "Custom CUDA ops", item 5. Prints two tables:

1. per op, for the shapes a 256-px StyleGAN2 (``--cfg=auto``: channel_base 16384, channel_max
   512, batch 16 on one GPU) runs: reference time, CUDA-kernel time and speedup, each for the
   forward pass and for forward + backward;
2. one full training iteration at 256 px (all four phases Gmain, Greg, Dmain, Dreg of
   ``training.loss.StyleGAN2Loss`` + optimizer steps, fp16 in the 4 highest resolutions,
   conv_clamp 256) with ``--ops=ref`` vs ``--ops=cuda``.

On a machine without CUDA it prints the reference timings only and says so (the CPU default
batch is 2 and the training step defaults to 32 px so the script finishes in minutes).

    python bench/ops_speed.py                      # everything, defaults for this machine
    python bench/ops_speed.py --batch=16 --iters=50 --train-res=256
    python bench/ops_speed.py --no-train
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/common.py puts the repo root on the path

import common  # noqa: E402
from torch_utils.ops import cuda_kernels, cuda_selfcheck  # noqa: E402
from torch_utils.ops.bias_act import reference_bias_act  # noqa: E402
from torch_utils.ops.upfirdn2d import reference_upfirdn2d  # noqa: E402

CHANNEL_BASE, CHANNEL_MAX = 16384, 512  # --cfg=auto below 512 px (docs/stylegan2-ada.md §2)


def channels(res: int) -> int:
    return min(CHANNEL_BASE // res, CHANNEL_MAX)


def fir4(device: torch.device) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    return torch.outer(k, k) / 64


def op_cases(batch: int, device: torch.device) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, op, kwargs) for the upfirdn2d / bias_act calls of a 256-px G and D.

    G: a 4x4 FIR after every stride-2 transposed conv (input r+1 square, padding 1, gain 4), the
    skip image upsampled by 2 (3 channels), lrelu + bias + clamp 256 after every conv, the mapping
    FC lrelu. D: a 4x4 FIR before every stride-2 conv (padding 2), the residual skip
    downsampled by 2, lrelu + bias + clamp after every conv.
    """
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ('mapping fc lrelu [N,512]', 'bias_act', dict(shape=[batch, 512], act='lrelu', clamp=None)),
    ]
    for res in (8, 16, 32, 64, 128, 256):
        c = channels(res)
        cases += [
            (f'G up-conv FIR {res}px C={c}', 'upfirdn2d',
             dict(shape=[batch, c, res + 1, res + 1], up=1, down=1, padding=(1, 1, 1, 1), gain=4.0)),
            (f'G skip img up2 {res}px', 'upfirdn2d',
             dict(shape=[batch, 3, res // 2, res // 2], up=2, down=1, padding=(2, 1, 2, 1), gain=4.0)),
            (f'G conv lrelu {res}px C={c}', 'bias_act', dict(shape=[batch, c, res, res], act='lrelu', clamp=256.0)),
            (f'D down-conv FIR {res}px C={c}', 'upfirdn2d',
             dict(shape=[batch, c, res, res], up=1, down=1, padding=(2, 2, 2, 2), gain=1.0)),
            (f'D skip down2 {res}px C={c}', 'upfirdn2d',
             dict(shape=[batch, c, res, res], up=1, down=2, padding=(1, 1, 1, 1), gain=1.0)),
        ]
    return cases


def time_it(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds (synchronised on CUDA)."""
    return common.time_it(fn, device, warmup=warmup, repeats=iters)[0] * 1e3


def make_runner(op: str, kw: dict[str, Any], impl: str, device: torch.device, dtype: torch.dtype,
                backward: bool) -> Callable[[], Any]:
    x = torch.randn(kw['shape'], device=device, dtype=dtype, requires_grad=backward)
    if op == 'upfirdn2d':
        f = fir4(device)
        up, down = (kw['up'],) * 2, (kw['down'],) * 2
        fn = cuda_kernels.upfirdn2d if impl == 'cuda' else reference_upfirdn2d

        def forward() -> torch.Tensor:
            return fn(x, f, up=up, down=down, padding=kw['padding'], flip_filter=False, gain=kw['gain'])
    else:
        b = torch.randn([kw['shape'][1]], device=device, dtype=dtype, requires_grad=backward)
        fn = cuda_kernels.bias_act if impl == 'cuda' else reference_bias_act

        def forward() -> torch.Tensor:
            return fn(x, b, dim=1, act=kw['act'], alpha=0.2, gain=math.sqrt(2), clamp=kw['clamp'])
    if not backward:
        def run() -> Any:
            with torch.no_grad():
                return forward()
        return run
    def run_bwd() -> Any:
        y = forward()
        y.backward(torch.ones_like(y))
    return run_bwd


def op_table(args: argparse.Namespace, device: torch.device, use_cuda: bool) -> None:
    dtype = torch.float16 if args.fp16 else torch.float32
    print(f'\nPer-op time, batch {args.batch}, {str(dtype).replace("torch.", "")}, median of {args.iters} '
          f'(ms; fwd = forward only, f+b = forward + backward)')
    head = f'{"op / shape":40s} {"ref fwd":>9s} {"ref f+b":>9s}'
    if use_cuda:
        head += f' {"cuda fwd":>9s} {"cuda f+b":>9s} {"speedup":>8s}'
    print(head)
    print('-' * len(head))
    totals = [0.0, 0.0, 0.0, 0.0]
    for label, op, kw in op_cases(args.batch, device):
        row = [time_it(make_runner(op, kw, 'ref', device, dtype, bwd), device, args.iters) for bwd in (False, True)]
        if use_cuda:
            row += [time_it(make_runner(op, kw, 'cuda', device, dtype, bwd), device, args.iters)
                    for bwd in (False, True)]
        totals = [t + r for t, r in zip(totals, row + [0.0] * (4 - len(row)))]
        line = f'{label:40s} {row[0]:9.3f} {row[1]:9.3f}'
        if use_cuda:
            line += f' {row[2]:9.3f} {row[3]:9.3f} {row[1] / row[3]:7.2f}x'
        print(line, flush=True)
    line = f'{"total":40s} {totals[0]:9.3f} {totals[1]:9.3f}'
    if use_cuda:
        line += f' {totals[2]:9.3f} {totals[3]:9.3f} {totals[1] / totals[3]:7.2f}x'
    print(line)


def build_networks(res: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D as train.py --cfg=auto builds them below 512 px (map 2, fp16 in 4 top resolutions)."""
    from training import networks
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=CHANNEL_BASE, channel_max=CHANNEL_MAX, num_fp16_res=4,
                                                 conv_clamp=256))
    D = networks.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=CHANNEL_BASE,
                               channel_max=CHANNEL_MAX, num_fp16_res=4, conv_clamp=256,
                               epilogue_kwargs=dict(mbstd_group_size=4))
    return G.train().requires_grad_(False).to(device), D.train().requires_grad_(False).to(device)


def train_step_time(impl: str, args: argparse.Namespace, device: torch.device) -> float:
    """Median time (ms) of one iteration: Gmain, Greg, Dmain, Dreg phases and both optimizer steps."""
    from torch_utils.ops import _impl
    from training.loss import StyleGAN2Loss
    old = _impl.set_default_impl(impl)
    try:
        torch.manual_seed(0)
        G, D = build_networks(args.train_res, device)
        loss = StyleGAN2Loss(device=device, G=G, D=D, r1_gamma=1.0)
        opt_G = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99))
        opt_D = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99))
        reals = torch.randn([args.batch, 3, args.train_res, args.train_res], device=device)
        c = torch.zeros([args.batch, 0], device=device)

        def step() -> None:
            phases = (('Gmain', G, opt_G), ('Greg', G, opt_G), ('Dmain', D, opt_D), ('Dreg', D, opt_D))
            for phase, module, opt in phases:
                module.requires_grad_(True)
                opt.zero_grad(set_to_none=True)
                z = torch.randn([args.batch, G.z_dim], device=device)
                loss.accumulate_gradients(phase, reals, c, z, c, gain=1.0, cur_nimg=0)
                module.requires_grad_(False)
                opt.step()
        return time_it(step, device, args.train_iters, warmup=1)
    finally:
        _impl.set_default_impl(old)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=None, help='default: 16 on CUDA, 2 on CPU')
    parser.add_argument('--iters', type=int, default=None, help='timed repetitions per op (default 50 CUDA / 3 CPU)')
    parser.add_argument('--fp16', action='store_true', help='time the ops in float16 (the fp16 blocks)')
    parser.add_argument('--train-res', type=int, default=None,
                        help='training-step resolution (default 256 CUDA / 32 CPU)')
    parser.add_argument('--train-iters', type=int, default=None, help='timed training steps (default 10 CUDA / 1 CPU)')
    parser.add_argument('--no-train', action='store_true', help='skip the training-step comparison')
    parser.add_argument('--no-ops', action='store_true', help='skip the per-op table')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == 'cuda'
    args.batch = args.batch or (16 if on_cuda else 2)
    args.iters = args.iters or (50 if on_cuda else 3)
    args.train_res = args.train_res or (256 if on_cuda else 32)
    args.train_iters = args.train_iters or (10 if on_cuda else 1)

    print(f'torch {torch.__version__}, device {device}'
          + (f' ({torch.cuda.get_device_name(device)})' if on_cuda else ''))
    use_cuda = False
    if on_cuda:
        ready = {op: cuda_selfcheck.is_ready(op) for op in cuda_kernels.OPS}
        for op, ok in ready.items():
            print(f'  {op}: {"CUDA kernel ready (built, self-check passed)" if ok else cuda_selfcheck.why_not_ready(op)}')
        use_cuda = all(ready.values())
    else:
        print('CUDA is unavailable: reference timings only (no CUDA kernel can run here).')

    if not args.no_ops:
        op_table(args, device, use_cuda)
    if not args.no_train:
        print(f'\nTraining iteration at {args.train_res} px, batch {args.batch} (Gmain+Greg+Dmain+Dreg + Adam), '
              f'median of {args.train_iters}:')
        t_ref = train_step_time('ref', args, device)
        print(f'  --ops=ref : {t_ref:10.1f} ms')
        if use_cuda:
            t_cuda = train_step_time('cuda', args, device)
            print(f'  --ops=cuda: {t_cuda:10.1f} ms   speedup {t_ref / t_cuda:.2f}x')
        else:
            print('  --ops=cuda: n/a (CUDA kernels unavailable)')


if __name__ == '__main__':
    main()
