"""The sigmoid focal-loss fallback (``dr2net_mm.mmcv_ops``) through mmdet's real dispatch, on CPU.

mmdet's ``FocalLoss`` takes mmcv's compiled op when ``torch.cuda.is_available() and pred.is_cuda``.
Here a CPU tensor that says it is on CUDA (``OnCuda``) and a patched ``torch.cuda.is_available``
send it down that branch; mmcv has no CPU kernel for the op, so without the fallback it fails as it
does on a GPU with a CPU-ops mmcv. With the fallback the loss and its gradients must equal mmdet's
CPU path (a plain tensor, same numbers) within 1e-6.
"""
import logging
import sys

import pytest
import torch
from mmdet.models.losses import FocalLoss, focal_loss
from mmdet.models.losses import sigmoid_focal_loss as mmdet_sigmoid_focal_loss  # bound at mmdet's import

from dr2net_mm import mmcv_ops
from tool_runs import run_tool

NUM_CLASSES = 5


class OnCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True: what mmdet's FocalLoss asks before calling mmcv."""

    @property
    def is_cuda(self):
        return True


@pytest.fixture
def cuda_dispatch(monkeypatch):
    """mmdet's FocalLoss sees a CUDA machine and calls mmcv's op there, as mmdet does unpatched (also
    where DR2NET_MMCV_PYTORCH_FALLBACK=1 switched the fallback on at import); restored afterwards."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(focal_loss, 'sigmoid_focal_loss', mmdet_sigmoid_focal_loss)


def inputs(seed=0, n=40):
    """DINO's call: logits (N, C), class indices with background (= C) rows, per-row weights."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, NUM_CLASSES, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, NUM_CLASSES + 1, (n, ), generator=generator)
    target[:3] = NUM_CLASSES  # background rows are always there
    weight = torch.rand(n, generator=generator, dtype=torch.float64)
    return pred, target, weight


def loss_and_grad(pred, target, weight, fake_cuda, **kwargs):
    leaf = (pred.clone().as_subclass(OnCuda) if fake_cuda else pred.clone()).requires_grad_(True)
    loss = FocalLoss(gamma=2.0, alpha=0.25, loss_weight=2.0)(leaf, target, weight, **kwargs)
    (grad, ) = torch.autograd.grad(loss.sum(), leaf)
    return loss.as_subclass(torch.Tensor).detach(), grad.as_subclass(torch.Tensor)


@pytest.mark.parametrize('kwargs', [dict(avg_factor=17.0), dict(reduction_override='sum'),
                                    dict(reduction_override='none')], ids=['avg', 'sum', 'none'])
def test_focal_loss_fallback_matches_mmdet_cpu_path_through_the_cuda_dispatch(cuda_dispatch, kwargs):
    pred, target, weight = inputs()
    mmcv_ops.use_pytorch_focal_loss('test')
    assert mmcv_ops.pytorch_focal_loss_active()
    loss, grad = loss_and_grad(pred, target, weight, True, **kwargs)
    ref_loss, ref_grad = loss_and_grad(pred, target, weight, False, **kwargs)
    assert loss.shape == ref_loss.shape and grad.shape == ref_grad.shape
    assert (loss - ref_loss).abs().max() <= 1e-6, (loss, ref_loss)
    assert (grad - ref_grad).abs().max() <= 1e-6
    assert grad.abs().sum() > 0 and ref_loss.abs().sum() > 0  # a real loss, not zeros on both sides


def test_focal_loss_cuda_dispatch_without_fallback_reaches_mmcv_and_fails(cuda_dispatch):
    """The fake really takes mmdet's CUDA branch: mmcv's op, with no kernel for these tensors (an
    mmcv with CPU ops: no CPU implementation; mmcv's Python layer alone: no compiled op at all)."""
    pred, target, weight = inputs()
    assert not mmcv_ops.pytorch_focal_loss_active()
    with pytest.raises(RuntimeError, match='sigmoid_focal_loss_forward'):
        loss_and_grad(pred, target, weight, True, avg_factor=17.0)


def test_focal_loss_fallback_logs_once_and_needs_a_reason(cuda_dispatch, caplog):
    with caplog.at_level(logging.WARNING, logger='dr2net_mm.mmcv_ops'):
        mmcv_ops.use_pytorch_focal_loss('a test reason')
        mmcv_ops.use_pytorch_focal_loss('a test reason')  # once on, nothing more is logged
    assert [r.getMessage().count('a test reason') for r in caplog.records] == [1]
    with pytest.raises(ValueError, match='reason'):
        mmcv_ops.use_pytorch_focal_loss('')


def test_env_switches_both_fallbacks_on_at_import_and_the_check_passes():
    """DR2NET_MMCV_PYTORCH_FALLBACK=1 in a fresh process: on a GPU machine with a CPU-ops mmcv
    (mmcv's flag says CUDA, no CUDA ops) DINO's ops are covered and tools/benchmark.py's check passes."""
    code = '''
from mmcv.ops import multi_scale_deform_attn as attn
attn.IS_CUDA_AVAILABLE = True  # as on a GPU machine
import dr2net_mm, dr2net_mm.mmcv_ops as m
m.mmcv_has_cuda_ops = lambda: False
m.check_deform_attn_on("cuda")
print("STATUS", m.status()["deform_attn"], "|", m.status()["focal_loss"])
'''
    out = run_tool([sys.executable, '-c', code], env={mmcv_ops.ENV: '1'})
    assert 'STATUS pytorch fallback | pytorch fallback' in out
    assert 'mmdet FocalLoss: PyTorch sigmoid focal loss on CUDA' in out
    out = run_tool([sys.executable, '-c', code], env={mmcv_ops.ENV: '0'}, fails=True)
    assert "MultiScaleDeformableAttention and sigmoid_focal_loss cannot run on CUDA" in out
