"""The four A2D-Sentences RVOS configs (conventional, with_cp, Dr²Net, frozen backbone): what each
sets, and each trained for 2 iterations and validated once through a real MMEngine Runner on a
generated tiny set, with Video Swin-T and the multimodal transformer as configured (pretrained
loading off; the RoBERTa-base text encoder swapped for a small random one over the set's word
vocabulary: its weights cannot be downloaded here; clips of 4 frames of 32×32; fp32: AMP needs a
GPU)."""
import copy
import os

import pytest
import torch

pytest.importorskip('mmaction')
pytest.importorskip('transformers')
pytest.importorskip('h5py')
import dr2net_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from dr2net_mm.rvos.demo_data import make_demo_rvos  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'conventional': 'rvos_swin_t_a2d.py', 'cp': 'rvos_swin_t_cp_a2d.py',
           'dr2net': 'rvos_dr2net_swin_t_a2d.py', 'frozen': 'rvos_swin_t_frozen_a2d.py'}


def load(kind: str) -> Config:
    return Config.fromfile(os.path.join(ROOT, 'configs', CONFIGS[kind]))


@pytest.mark.parametrize('kind', list(CONFIGS))
def test_config_sets_the_intended_backbone_text_encoder_data_and_metric(kind):
    cfg = load(kind)
    assert cfg.default_scope == 'mmaction'
    assert cfg.custom_imports.imports == ['dr2net_mm', 'dr2net_mm.rvos']
    assert cfg.model.type == 'ReferringVideoSegmentor'
    backbone = cfg.model.backbone
    assert backbone.type == ('Dr2NetSwin3D' if kind == 'dr2net' else 'SwinTransformer3D')
    assert backbone.arch == 'tiny' and backbone.pretrained is None
    assert backbone.init_cfg.prefix == 'backbone.' and 'kinetics400' in backbone.init_cfg.checkpoint
    assert tuple(backbone.out_indices) == (0, 1, 2, 3) and tuple(backbone.patch_size) == (1, 4, 4)
    assert backbone.get('with_cp', False) is (kind == 'cp')
    assert cfg.model.get('freeze_backbone', False) is (kind == 'frozen')
    text = cfg.model.text_encoder
    assert text.frozen is True and text.config.hidden_size == 768  # MTTR: frozen RoBERTa-base
    assert cfg.model.transformer.num_queries == 50
    hooks = [h for h in cfg.get('custom_hooks', []) if h.type == 'AlphaBetaHook']
    if kind == 'dr2net':
        assert (backbone.alpha, backbone.beta, backbone.reversible) == (1.0, 0.1, True)
        (hook, ) = hooks
        assert tuple(hook.start) == (1.0, 0.1) and tuple(hook.end) == (0.3, 0.7)
    else:
        assert not hooks and 'alpha' not in backbone
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.type == 'A2DSentencesDataset'
        assert dataset.pipeline[0] == dict(type='DecodeReferringClip', clip_len=8,
                                           frame_interval=1)
        assert dataset.pipeline[-1] == dict(type='PackReferringInputs')
    assert cfg.val_evaluator.type == 'ReferringSegmentationMetric'
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    return make_demo_rvos(str(tmp_path_factory.mktemp('rvos_configs') / 'set'), num_train=2,
                          num_val=1, size=32)


def tiny_run_config(kind: str, root: str, work_dir: str) -> Config:
    """The config on the tiny set: 4-frame 32×32 clips, one epoch of 2 iterations (batch 2), one
    validation, no pretrained file, a small text encoder, fp32; (α, β) reach (0.3, 0.7) after
    half an epoch."""
    cfg = load(kind)
    cfg.work_dir = work_dir
    cfg.model.backbone.init_cfg = None  # (the Kinetics file cannot be downloaded here)
    cfg.model.text_encoder = dict(
        config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64),
        vocab_file=os.path.join(root, 'text_annotations/vocab.json'), frozen=True)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].update(batch_size=2, num_workers=0, persistent_workers=False)
        dataset = cfg[loader].dataset
        dataset.data_root = root
        pipeline = copy.deepcopy(dataset.pipeline)
        pipeline[0]['clip_len'] = 4
        dataset.pipeline = [step for step in pipeline if step['type'] != 'ResizeReferringClip']
    cfg.train_dataloader.dataset.indices = 4  # the first 4 samples: 2 iterations of 2
    cfg.val_dataloader.dataset.indices = 2
    cfg.train_cfg.update(max_epochs=1, val_begin=2)  # validated once by the test, after training
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint.update(interval=1, save_best=None)
    for hook in cfg.get('custom_hooks', []):
        hook.update(end_epoch=0.5, interval=1)
    cfg.randomness = dict(seed=0)
    return cfg


# ~10-40 s each (2 cores, busy or not): only the Dr²Net run stays in the default suite
RUNS = [pytest.param(kind, marks=[pytest.mark.slow] if kind != 'dr2net' else [])
        for kind in CONFIGS]


@pytest.mark.parametrize('kind', RUNS)
def test_config_trains_two_iterations_and_validates_through_the_runner(kind, tiny_set, tmp_path):
    from mmengine.runner import Runner
    torch.set_num_threads(1)
    cfg = tiny_run_config(kind, tiny_set, str(tmp_path / kind))
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()  # (the runner's own call is then a no-op): the start weights
    backbone = runner.model.backbone
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    runner.train()
    metrics = runner.val()
    assert runner.iter == 2
    assert set(metrics) == {'rvos/mAP', 'rvos/mAP@0.5', 'rvos/mAP@0.75', 'rvos/overall_IoU',
                            'rvos/mean_IoU'}
    assert all(0 <= v <= 1 for v in metrics.values())
    moved = [not torch.equal(p, before[n]) for n, p in backbone.named_parameters()]
    assert any(moved) is (kind != 'frozen')
    if kind == 'dr2net':
        assert backbone.coefficients == pytest.approx((0.3, 0.7))
        assert backbone.reconstruction_errors() == [0.0] * 4
    assert os.path.isfile(tmp_path / kind / 'epoch_1.pth')
