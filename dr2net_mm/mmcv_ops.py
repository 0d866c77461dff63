"""mmcv's compiled ops on CUDA, or explicit pure-PyTorch fallbacks for an mmcv built without them.

DINO calls two of mmcv's compiled CUDA ops whenever its tensors are on the GPU:

* ``mmcv.ops.MultiScaleDeformableAttention`` calls mmcv's kernel when CUDA is available and its
  input is on the GPU. mmcv ships the same computation in pure PyTorch
  (``multi_scale_deformable_attn_pytorch``, the path it takes on CPU); :func:`use_pytorch_deform_attn`
  makes the module take that path on the GPU too.
* mmdet's ``FocalLoss`` calls ``mmcv.ops.sigmoid_focal_loss`` for class-index targets on a CUDA
  prediction. mmdet's own CPU path computes the same loss in PyTorch: the targets one-hot over the
  C classes (the background index C gives a row of zeros), then ``py_sigmoid_focal_loss``,

      FL = -α_t (1 - p_t)^γ log p_t,   p = σ(pred),   p_t = p if target else 1 - p,
      α_t = α if target else 1 - α,

  with the same weighting and reduction. :func:`use_pytorch_focal_loss` makes mmdet take that path
  on the GPU too.

An mmcv built without CUDA ops (the shared wheel, a source build with no ``nvcc``) fails on CUDA
tensors without these. The fallbacks are slower and need more memory than mmcv's kernels, so they
are opt in and logged, for benchmarks and tests on such machines. Opt in with the environment
variable ``DR2NET_MMCV_PYTORCH_FALLBACK=1`` (read by ``import dr2net_mm``: both fallbacks) or call
:func:`use_pytorch_fallbacks` (or either function above) yourself.
"""
import logging
import os

ENV = 'DR2NET_MMCV_PYTORCH_FALLBACK'
_logger = logging.getLogger(__name__)


def fallback_requested(environ=None) -> bool:
    """Whether ``DR2NET_MMCV_PYTORCH_FALLBACK`` asks for the fallbacks: '1' yes; unset, '' or '0' no."""
    value = (os.environ if environ is None else environ).get(ENV, '')
    if value not in ('', '0', '1'):
        raise ValueError(f'{ENV}={value!r}: use 1 (pure-PyTorch deformable attention and sigmoid '
                         'focal loss on CUDA) or 0')
    return value == '1'


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with its CUDA ops."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def _check_reason(reason: str, caller: str) -> None:
    if not reason:
        raise ValueError(f'{caller} needs a reason to log, got an empty one')


def pytorch_deform_attn_active() -> bool:
    """Whether MultiScaleDeformableAttention takes the pure-PyTorch path on CUDA tensors."""
    from mmcv.ops import multi_scale_deform_attn
    return not multi_scale_deform_attn.IS_CUDA_AVAILABLE


def use_pytorch_deform_attn(reason: str) -> None:
    """Make ``MultiScaleDeformableAttention`` compute with mmcv's pure-PyTorch implementation on
    CUDA tensors too (it decides by the module-level flag ``IS_CUDA_AVAILABLE``); log why."""
    from mmcv.ops import multi_scale_deform_attn
    _check_reason(reason, 'use_pytorch_deform_attn')
    if pytorch_deform_attn_active():
        return
    multi_scale_deform_attn.IS_CUDA_AVAILABLE = False
    _logger.warning('mmcv MultiScaleDeformableAttention: pure-PyTorch fallback on CUDA (%s); '
                    'slower and larger than mmcv\'s CUDA kernel, see the GPU documentation '
                    '(docs/gpu.md)', reason)


def sigmoid_focal_loss_pytorch(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction='mean',
                               avg_factor=None):
    """mmdet's sigmoid focal loss for class-index ``target`` (N,) of ``pred`` (N, C), computed the
    way mmdet's ``FocalLoss`` does on CPU (module docstring) on any device: the drop-in for
    ``mmdet.models.losses.focal_loss.sigmoid_focal_loss``, the wrapper of mmcv's compiled op."""
    import torch.nn.functional as F
    from mmdet.models.losses import focal_loss
    num_classes = pred.size(1)
    one_hot = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
    return focal_loss.py_sigmoid_focal_loss(pred, one_hot, weight, gamma=gamma, alpha=alpha,
                                            reduction=reduction, avg_factor=avg_factor)


def pytorch_focal_loss_active() -> bool:
    """Whether mmdet's FocalLoss takes the PyTorch path on CUDA predictions."""
    from mmdet.models.losses import focal_loss
    return focal_loss.sigmoid_focal_loss is sigmoid_focal_loss_pytorch


def use_pytorch_focal_loss(reason: str) -> None:
    """Make mmdet's ``FocalLoss`` compute with its PyTorch path on CUDA predictions too (it calls the
    module-level ``sigmoid_focal_loss``, mmcv's op, there; this replaces that name); log why."""
    from mmdet.models.losses import focal_loss
    _check_reason(reason, 'use_pytorch_focal_loss')
    if pytorch_focal_loss_active():
        return
    focal_loss.sigmoid_focal_loss = sigmoid_focal_loss_pytorch
    _logger.warning('mmdet FocalLoss: PyTorch sigmoid focal loss on CUDA instead of mmcv\'s op (%s); '
                    'slower and larger than mmcv\'s CUDA kernel, see the GPU documentation '
                    '(docs/gpu.md)', reason)


def use_pytorch_fallbacks(reason: str) -> None:
    """Both fallbacks: deformable attention and sigmoid focal loss (what DINO needs on CUDA)."""
    use_pytorch_deform_attn(reason)
    use_pytorch_focal_loss(reason)


def apply_env_fallback() -> bool:
    """Switch the fallbacks on if ``DR2NET_MMCV_PYTORCH_FALLBACK=1``; return whether they are on."""
    if not fallback_requested():
        return False
    use_pytorch_fallbacks(f'{ENV}=1')
    return True


def status() -> dict:
    """What DINO's mmcv ops run on CUDA: mmcv's kernels or the fallbacks (for logs and summaries)."""
    import mmcv
    from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    return dict(mmcv=mmcv.__version__, compiled_with=get_compiler_version(),
                compiled_cuda=get_compiling_cuda_version(),
                deform_attn='pytorch fallback' if pytorch_deform_attn_active() else 'mmcv kernel',
                focal_loss='pytorch fallback' if pytorch_focal_loss_active() else 'mmcv kernel')


def check_deform_attn_on(device) -> None:
    """Fail with instructions if DINO's mmcv ops (deformable attention, sigmoid focal loss) cannot
    run on ``device`` (a CUDA device with an mmcv lacking CUDA ops and a fallback switched off)."""
    import torch
    if torch.device(device).type != 'cuda' or mmcv_has_cuda_ops():
        return
    missing = [name for name, active in (
        ('MultiScaleDeformableAttention', pytorch_deform_attn_active()),
        ('sigmoid_focal_loss', pytorch_focal_loss_active())) if not active]
    if missing:
        raise RuntimeError(f'device {device!r}: the installed mmcv has no CUDA ops, so DINO\'s '
                           f'{" and ".join(missing)} cannot run on CUDA tensors. Install mmcv with '
                           f'CUDA ops (docs/gpu.md), or set {ENV}=1 for the pure-PyTorch versions.')
