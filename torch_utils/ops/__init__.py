"""Custom ops of StyleGAN2-ADA (docs/stylegan2-arithmetic.md §1-§3, §9; docs/stylegan2-ada.md §7).

Public ops: ``upfirdn2d`` (setup_filter, upfirdn2d, filter2d, upsample2d, downsample2d),
``bias_act`` (bias_act, activation_funcs), ``conv2d_resample``, ``fma``. Each has a pure-PyTorch
reference path, the CPU default and the oracle in tests; ``_impl`` is the single place that
decides between it and the CUDA kernels. Below them, importing none of them: ``activations``
(the table of docs/stylegan2-arithmetic.md §2), ``cuda_plugin`` (build/load the plugin),
``cuda_kernels`` (the kernels with autograd) and ``cuda_selfcheck`` (self-check and readiness).
Import the submodules directly.
"""
