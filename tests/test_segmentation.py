"""Semantic segmentation with mmseg: the UPerNet configs with Dr2NetSwin-T and Dr2NetViT-S train and
validate (mIoU) through tools/train.py on ADE20K-layout demo data, tools/test.py evaluates their
checkpoints, and at (α, β) = (1, 0) with the reversible mode off each segmentor computes the same
logits as its stock-mmseg baseline config with the same weights."""
import os
import re
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope

from dr2net_mm.demo.data import (DEMO_SEG_CLASSES, ade20k_ids, make_demo_ade20k,
                                 write_swin_official_checkpoint, write_vit_timm_checkpoint)
from dr2net_mm.models.vit_checkpoint import checkpoint_filter_fn
from tool_runs import run_tool as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
DEMO_CONFIGS = {'swin': 'configs/demo/upernet_dr2net_swin_t_demo.py',
                'vit': 'configs/demo/upernet_dr2net_vit_s_demo.py'}


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('seg')
    data_root = str(root / 'ade') + '/'
    make_demo_ade20k(data_root, num_train=4, num_val=2, image_size=(128, 128))
    write_swin_official_checkpoint(data_root + 'swin_t.pth')
    write_vit_timm_checkpoint(data_root + 'vit_s.pth')
    return dict(root=root, data_root=data_root)


def small_config(demo, name: str) -> str:
    """The demo config on the 4+2-image set: 3 iterations, validation at the end."""
    checkpoint = demo['data_root'] + ('swin_t.pth' if name == 'swin' else 'vit_s.pth')
    path = demo['root'] / f'{name}_small.py'
    path.write_text(f"_base_ = {os.path.join(ROOT, DEMO_CONFIGS[name])!r}\n"
                    f"data_root = {demo['data_root']!r}\n"
                    "train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))\n"
                    "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
                    "test_dataloader = val_dataloader\n"
                    f"model = dict(backbone=dict(init_cfg=dict(checkpoint={checkpoint!r})))\n"
                    "train_cfg = dict(max_iters=3, val_interval=3)\n"
                    "default_hooks = dict(logger=dict(interval=1), "
                    "checkpoint=dict(interval=3))\n"
                    "custom_hooks = [dict(type='AlphaBetaHook', end_iter=2, interval=1)]\n")
    return str(path)


# 1. Demo data ------------------------------------------------------------------------------------
def test_demo_set_has_the_ade20k_layout_and_class_ids(tmp_path):
    root = make_demo_ade20k(str(tmp_path / 'a'), num_train=3, num_val=2, image_size=(64, 96))
    for split, count in (('training', 3), ('validation', 2)):
        images = sorted(os.listdir(os.path.join(root, 'images', split)))
        labels = sorted(os.listdir(os.path.join(root, 'annotations', split)))
        assert images == [f'{i:06d}.jpg' for i in range(count)]
        assert labels == [f'{i:06d}.png' for i in range(count)]
    label = cv2.imread(os.path.join(root, 'annotations', 'training', '000000.png'),
                       cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and label.shape == (64, 96)
    ids = ade20k_ids()
    assert ids == {'sky': 3, 'grass': 10, 'building': 2, 'tree': 5, 'car': 21}  # ADE20K's ids
    assert set(np.unique(label)) <= {0, *ids.values()}
    assert label[0].max() == 0 and {ids['sky'], ids['grass']} <= set(np.unique(label))
    # deterministic: the same arguments give the same bytes
    again = make_demo_ade20k(str(tmp_path / 'b'), num_train=3, num_val=2, image_size=(64, 96))
    for sub in ('images/validation/000001.jpg', 'annotations/validation/000001.png'):
        with open(os.path.join(root, sub), 'rb') as f1, open(os.path.join(again, sub), 'rb') as f2:
            assert f1.read() == f2.read()


def test_mmseg_reads_the_demo_set_with_the_demo_classes(demo):
    from mmseg.datasets import ADE20KDataset
    cfg = Config.fromfile(os.path.join(ROOT, DEMO_CONFIGS['swin']))
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = ADE20KDataset(data_root=demo['data_root'],
                                data_prefix=cfg.val_dataloader.dataset.data_prefix,
                                metainfo=cfg.val_dataloader.dataset.metainfo,
                                pipeline=cfg.test_pipeline)
        sample = dataset[0]
    assert dataset.metainfo['classes'] == DEMO_SEG_CLASSES
    labels = sample['data_samples'].gt_sem_seg.data
    # ADE20K ids -> 0..4 (reduce_zero_label, then the label map); "other" (0) -> 255 (ignored)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    assert (labels[:, 0] == 255).all() and (labels < 5).any()


# 2. Training and evaluation through the tools ----------------------------------------------------
@pytest.mark.parametrize('name', ['swin', 'vit'])
def test_config_trains_and_validates_miou_then_test_tool_evaluates(demo, name):
    work_dir = str(demo['root'] / f'work_{name}')
    out = run([sys.executable, 'tools/train.py', small_config(demo, name), '--work-dir', work_dir])
    assert re.search(r'Iter\(train\) \[3/3\].*alpha: 0\.3000\s+beta: 0\.7000', out)
    miou = re.findall(r'Iter\(val\) \[2/2\]\s+aAcc: ([\d.]+)\s+mIoU: ([\d.]+)', out)
    assert miou and 0 <= float(miou[-1][1]) <= 100
    for cls in DEMO_SEG_CLASSES:  # the per-class table
        assert re.search(rf'\|\s+{cls}\s+\|', out)
    checkpoint = os.path.join(work_dir, 'iter_3.pth')
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert state['backbone.beta'].item() == pytest.approx(0.7)
    out = run([sys.executable, 'tools/test.py', small_config(demo, name), checkpoint,
               '--work-dir', str(demo['root'] / f'test_{name}')])
    # the same weights and (α, β) from the checkpoint: the same mIoU as the validation
    assert re.findall(r'mIoU: ([\d.]+)', out)[-1] == miou[-1][1]


# 3. Equivalence with the stock mmseg configs -----------------------------------------------------
def build_segmentor(config: str, **backbone):
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    cfg.model.backbone.init_cfg = None
    cfg.model.pretrained = None
    cfg.model.backbone.update(backbone)
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        torch.manual_seed(0)
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
        model.init_weights()
    return model.eval()


REFERENCE_MODE = dict(alpha=1.0, beta=0.0, reversible=False)


def load_swin_baseline(dr2net, state):
    """Dr2NetSwin keeps SwinTransformer's layout: the baseline's state dict loads strictly (α, β,
    absent from it, keep their values)."""
    dr2net.load_state_dict(state, strict=True)


def load_vit_baseline(dr2net, state):
    """The baseline's checkpoint as a user has it (mmseg's ViT layout under ``backbone.``) converted
    for Dr2NetViT; the neck and heads load as they are."""
    dr2net.backbone.load_state_dict(checkpoint_filter_fn({'state_dict': state}, dr2net.backbone,
                                                         prefix='backbone.'), strict=True)
    heads = {k: v for k, v in state.items() if not k.startswith('backbone.')}
    missing, unexpected = dr2net.load_state_dict(heads, strict=False)
    assert all(k.startswith('backbone.') for k in missing) and not unexpected


@pytest.mark.parametrize('size', [(128, 128), (96, 160)])
@pytest.mark.parametrize('baseline_config, dr2net_config, load', [
    ('upernet_swin_t_ade20k.py', 'upernet_dr2net_swin_t_ade20k.py', load_swin_baseline),
    ('upernet_vit_s_ade20k.py', 'upernet_dr2net_vit_s_ade20k.py', load_vit_baseline),
], ids=['swin', 'vit'])
def test_dr2net_segmentor_at_alpha1_beta0_equals_the_stock_mmseg_segmentor(
        baseline_config, dr2net_config, load, size):
    baseline = build_segmentor(baseline_config)
    dr2net = build_segmentor(dr2net_config, **REFERENCE_MODE)
    load(dr2net, baseline.state_dict())
    assert (dr2net.backbone.alpha.item(), dr2net.backbone.beta.item()) == (1.0, 0.0)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = baseline(images, mode='tensor')
        got = dr2net(images, mode='tensor')
    assert expected.shape == (2, 150, size[0] // 4, size[1] // 4)
    difference = (got - expected).abs().max().item()
    print(f'{dr2net_config} {size}: max |logits - stock logits| = {difference:.3g}')  # pytest -s
    # measured: 0 for Swin-T, 2e-6 for ViT-S (different attention kernels)
    assert difference <= 1e-4


def test_reversible_training_step_matches_the_reference_mode_inside_the_segmentor():
    """The Dr²Net segmentor at (0.3, 0.7): the reversible backward gives the reference-mode loss
    and gradients (the same model, ordinary autograd)."""
    from dr2net_mm.benchmark import segmentor_batch
    grads = {}
    for reversible in (False, True):
        model = build_segmentor('upernet_dr2net_swin_t_ade20k.py', alpha=0.3, beta=0.7,
                                reversible=reversible, drop_path_rate=0.0)
        model.train()
        for module in model.modules():  # dropout off: a deterministic comparison
            if isinstance(module, torch.nn.Dropout2d):
                module.p = 0.0
        model.data_preprocessor.size = (64, 64)  # the config pads to its 512² crop otherwise
        batch = model.data_preprocessor(segmentor_batch(2, 64, 150), True)
        assert batch['inputs'].shape[-2:] == (64, 64)
        losses = model(**batch, mode='loss')
        loss = losses['decode.loss_ce'] + losses['aux.loss_ce']
        loss.backward()
        grads[reversible] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()
                                             if n.startswith('backbone.') and p.grad is not None})
    (loss_ref, ref), (loss_rev, rev) = grads[False], grads[True]
    assert loss_rev == pytest.approx(loss_ref.item(), rel=1e-6)
    assert ref.keys() == rev.keys() and len(ref) > 100
    worst = max(((rev[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item() for n in ref)
    assert worst < 1e-4


def test_demo_refuses_fewer_iterations_than_the_warmup(capsys):
    import runpy
    main = runpy.run_path(os.path.join(ROOT, 'tools', 'demo_seg.py'), run_name='demo_seg')['main']
    with pytest.raises(SystemExit):
        main(['--iters', '5'])
    assert '--iters 5: need more than the 20 warm-up iterations' in capsys.readouterr().err
