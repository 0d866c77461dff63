"""The four ActivityNet TAD configs (conventional, with_cp, Dr²Net, frozen backbone): what each sets,
and each trained for 2 iterations and validated once through a real MMEngine Runner on generated tiny
videos, with Video Swin-T as configured (pretrained loading off, clips shortened to 16 frames of
32×32, fp32: AMP needs a GPU)."""
import copy
import os

import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from dr2net_mm.tad.demo_data import make_demo_tad  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'conventional': 'tad_swin_t_anet.py', 'cp': 'tad_swin_t_cp_anet.py',
           'dr2net': 'tad_dr2net_swin_t_anet.py', 'frozen': 'tad_swin_t_frozen_anet.py'}


def load(kind: str) -> Config:
    return Config.fromfile(os.path.join(ROOT, 'configs', CONFIGS[kind]))


@pytest.mark.parametrize('kind', list(CONFIGS))
def test_config_sets_the_intended_backbone_head_data_and_metric(kind):
    cfg = load(kind)
    assert cfg.default_scope == 'mmaction'
    assert cfg.custom_imports.imports == ['dr2net_mm', 'dr2net_mm.tad']
    assert cfg.model.type == 'TemporalActionDetector'
    assert cfg.model.head.type == 'ActionFormerHead' and cfg.model.head.num_classes == 200
    backbone = cfg.model.backbone
    assert backbone.type == ('Dr2NetSwin3D' if kind == 'dr2net' else 'SwinTransformer3D')
    assert backbone.arch == 'tiny' and backbone.pretrained is None
    assert 'kinetics400' in backbone.init_cfg.checkpoint and backbone.init_cfg.prefix == 'backbone.'
    assert backbone.get('with_cp', False) is (kind == 'cp')
    assert cfg.model.get('freeze_backbone', False) is (kind == 'frozen')
    hooks = [h for h in cfg.get('custom_hooks', []) if h.type == 'AlphaBetaHook']
    if kind == 'dr2net':
        assert (backbone.alpha, backbone.beta, backbone.reversible) == (1.0, 0.1, True)
        (hook, ) = hooks
        assert tuple(hook.start) == (1.0, 0.1) and tuple(hook.end) == (0.3, 0.7)
    else:
        assert not hooks and 'alpha' not in backbone
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.type == 'ActivityNetTADDataset'
        assert dataset.pipeline[0] == dict(type='DecodeWholeVideo', num_frames=512)
        assert dataset.pipeline[-1] == dict(type='PackTADInputs')
    assert cfg.val_evaluator.type == 'ActivityNetDetectionMetric'
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('tad_configs')
    return root, make_demo_tad(str(root), num_train=4, num_val=2, frames=64, size=32)


def tiny_run_config(kind: str, root, ann_file: str, work_dir: str) -> Config:
    """The config on the tiny set: 16-frame 32×32 clips, one epoch of 2 iterations (batch 2), one
    validation, 3 classes, no pretrained file, fp32; (α, β) reach (0.3, 0.7) after half an epoch."""
    cfg = load(kind)
    cfg.work_dir = work_dir
    cfg.model.backbone.init_cfg = None
    cfg.model.head.num_classes = 3
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(batch_size=2, num_workers=0, persistent_workers=False)
        dataset = cfg[loader].dataset
        dataset.update(ann_file=ann_file, filename_tmpl='{}.mp4',
                       data_prefix=dict(video=str(root / 'videos')))
        pipeline = copy.deepcopy(dataset.pipeline)
        pipeline[0]['num_frames'] = 16
        dataset.pipeline = [step for step in pipeline if step['type'] not in
                            ('Resize', 'RandomCrop', 'CenterCrop')]
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.train_cfg.update(max_epochs=1, val_begin=2)  # validated once by the test, after training
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint.update(interval=1, save_best=None)
    for hook in cfg.get('custom_hooks', []):
        hook.update(end_epoch=0.5, interval=1)
    cfg.randomness = dict(seed=0)
    return cfg


# ~12 s each: the conventional and with_cp runs (the same model but for checkpointing) go to `slow`
RUNS = [pytest.param(kind, marks=[pytest.mark.slow] if kind in ('conventional', 'cp') else [])
        for kind in CONFIGS]


@pytest.mark.parametrize('kind', RUNS)
def test_config_trains_two_iterations_and_validates_through_the_runner(kind, tiny_set, tmp_path):
    from mmengine.runner import Runner
    root, ann_file = tiny_set
    torch.set_num_threads(1)
    runner = Runner.from_cfg(tiny_run_config(kind, root, ann_file, str(tmp_path / kind)))
    runner.model.init_weights()  # (the runner's own call is then a no-op): the start weights
    backbone = runner.model.backbone
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    runner.train()
    metrics = runner.val()
    assert runner.iter == 2
    assert set(metrics) == {'tad/mAP@0.5', 'tad/mAP@0.75', 'tad/mAP@0.95', 'tad/mAP'}
    assert all(0 <= v <= 1 for v in metrics.values())
    moved = [not torch.equal(p, before[n]) for n, p in backbone.named_parameters()]
    assert any(moved) is (kind != 'frozen')
    if kind == 'dr2net':
        assert backbone.coefficients == pytest.approx((0.3, 0.7))
        assert backbone.reconstruction_errors() == [0.0] * 4
    assert os.path.isfile(tmp_path / kind / 'epoch_1.pth')
