"""mmcv's compiled ops on CUDA, or an explicit pure-PyTorch fallback for a CPU build of mmcv.

DINO's multi-scale deformable attention (``mmcv.ops.MultiScaleDeformableAttention``) calls mmcv's
compiled kernel whenever CUDA is available and its input is on the GPU. An mmcv built without CUDA
ops (the shared wheel, or a source build with no ``nvcc``) then fails on CUDA tensors. mmcv ships the
same computation in pure PyTorch (``multi_scale_deformable_attn_pytorch``, the path it takes on
CPU). ``use_pytorch_deform_attn`` makes the module take that path on the GPU too: slower and more
memory-hungry than the kernel, so it is opt in and logged, for benchmarks and tests on such machines.

Opt in with the environment variable ``DR2NET_MMCV_PYTORCH_FALLBACK=1`` (read by ``import dr2net_mm``)
or by calling :func:`use_pytorch_deform_attn` yourself.
"""
import logging
import os

ENV = 'DR2NET_MMCV_PYTORCH_FALLBACK'
_logger = logging.getLogger(__name__)


def fallback_requested(environ=None) -> bool:
    """Whether ``DR2NET_MMCV_PYTORCH_FALLBACK`` asks for the fallback: '1' yes; unset, '' or '0' no."""
    value = (os.environ if environ is None else environ).get(ENV, '')
    if value not in ('', '0', '1'):
        raise ValueError(f'{ENV}={value!r}: use 1 (pure-PyTorch deformable attention on CUDA) or 0')
    return value == '1'


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with its CUDA ops."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def pytorch_deform_attn_active() -> bool:
    """Whether MultiScaleDeformableAttention takes the pure-PyTorch path on CUDA tensors."""
    from mmcv.ops import multi_scale_deform_attn
    return not multi_scale_deform_attn.IS_CUDA_AVAILABLE


def use_pytorch_deform_attn(reason: str) -> None:
    """Make ``MultiScaleDeformableAttention`` compute with mmcv's pure-PyTorch implementation on
    CUDA tensors too (it decides by the module-level flag ``IS_CUDA_AVAILABLE``); log why."""
    from mmcv.ops import multi_scale_deform_attn
    if not reason:
        raise ValueError('use_pytorch_deform_attn needs a reason to log, got an empty one')
    if pytorch_deform_attn_active():
        return
    multi_scale_deform_attn.IS_CUDA_AVAILABLE = False
    _logger.warning('mmcv MultiScaleDeformableAttention: pure-PyTorch fallback on CUDA (%s); '
                    'slower and larger than mmcv\'s CUDA kernel, see README "GPU"', reason)


def apply_env_fallback() -> bool:
    """Switch the fallback on if ``DR2NET_MMCV_PYTORCH_FALLBACK=1``; return whether it is on."""
    if not fallback_requested():
        return False
    use_pytorch_deform_attn(f'{ENV}=1')
    return True


def check_deform_attn_on(device) -> None:
    """Fail with instructions if DINO's deformable attention cannot run on ``device`` (a CUDA device
    with an mmcv lacking CUDA ops and no fallback switched on)."""
    import torch
    if torch.device(device).type != 'cuda' or mmcv_has_cuda_ops() or pytorch_deform_attn_active():
        return
    raise RuntimeError(f'device {device!r}: the installed mmcv has no CUDA ops, so DINO\'s '
                       'MultiScaleDeformableAttention cannot run on CUDA tensors. Install mmcv with '
                       f'CUDA ops (README "GPU"), or set {ENV}=1 for mmcv\'s pure-PyTorch version.')
