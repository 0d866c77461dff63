"""The point-cloud segmentor, its metric, and the whole pipeline through tools/train.py and
tools/test.py on small generated rooms (dr2net_mm.points.segmentor / metric)."""
import copy
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from mmengine.structures import BaseDataElement

import dr2net_mm  # noqa: F401  (registers the point-cloud modules)
from dr2net_mm.core import count_saved_bytes
from dr2net_mm.demo.data import write_vit_timm_checkpoint
from dr2net_mm.demo.rooms import make_demo_rooms
from dr2net_mm.points.metric import PointSegMetric
from dr2net_mm.benchmark import build_model, synthetic_point_batch, training_loss
from tool_runs import run_tool as run, scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DEMO_CONFIG = os.path.join(ROOT, 'configs/demo/pix4point_dr2net_vit_s_demo.py')
TINY_VIT = dict(arch=None, embed_dims=32, depth=4, num_heads=4, patch_size=16, img_size=32)


def segmentor(backbone, **kwargs):
    cfg = dict(type='Pix4PointSegmentor', backbone=backbone, num_classes=5, in_channels=4,
               num_tokens=16, group_size=8, tokenizer_dims=16, out_indices=(1, 3), decoder_dims=16,
               skip_dims=8, head_dims=16)
    cfg.update(kwargs)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def crops(batch=2, n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, n, 3, generator=gen) * torch.tensor([4.0, 4.0, 3.0])
    return torch.cat([xyz, torch.rand(batch, n, 4, generator=gen)], -1)


def rel(a, b):
    """Relative distance ||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomize_(model, seed=1):
    """Values of order one for the tensors timm initialises near zero (class token, ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('cls_token', 'pos_embed')):
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


# 1. Model ----------------------------------------------------------------------------------------
def test_dr2net_at_alpha1_beta0_gives_the_baseline_logits_with_equal_weights():
    dr2net = segmentor(dict(type='Dr2NetViT', alpha=1.0, beta=0.0, reversible=False, **TINY_VIT))
    plain = segmentor(dict(type='PlainViT', **TINY_VIT))
    randomize_(dr2net)
    missing = plain.load_state_dict(dr2net.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    points = crops()
    with torch.no_grad():
        expected = plain.eval()(points, mode='tensor')
        assert expected.shape == (2, 200, 5)
        assert torch.equal(dr2net.eval()(points, mode='tensor'), expected)
    # training forward (float64 streams under autograd) and gradients agree too
    dr2net.train(), plain.train()
    out_d, out_p = dr2net(points, mode='tensor'), plain(points, mode='tensor')
    assert torch.allclose(out_d, out_p, atol=1e-5)
    out_d.square().sum().backward()
    out_p.square().sum().backward()
    grads = dict(plain.named_parameters())
    for name, param in dr2net.named_parameters():
        if param.grad is not None:
            assert rel(param.grad, grads[name].grad) < 1e-5, name


def test_reversible_training_step_matches_ordinary_autograd():
    """Dr²Net at (0.3, 0.7): the reversible backward gives the gradients of ordinary autograd."""
    model = segmentor(dict(type='Dr2NetViT', alpha=0.3, beta=0.7, **TINY_VIT))
    reference = copy.deepcopy(model)
    reference.backbone.reversible = False
    data = dict(inputs=list(crops()), data_samples=[])
    for b in range(2):
        sample = BaseDataElement()
        sample.gt_label = torch.randint(0, 5, (200, ), generator=torch.Generator().manual_seed(b))
        data['data_samples'].append(sample)
    losses = []
    for m in (model, reference):
        m.train()
        loss = training_loss(m, data)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert rel(param.grad, grads[name].grad) < 1e-5, name
    assert model.backbone.reconstruction_errors()[0] is not None


def test_plain_vit_refuses_dr2net_arguments_and_coefficient_changes():
    with pytest.raises(ValueError, match=r"PlainViT is the conventional ViT and takes no \['beta'\]"):
        MODELS.build(dict(type='PlainViT', beta=0.1, **TINY_VIT))
    plain = MODELS.build(dict(type='PlainViT', **TINY_VIT))
    with pytest.raises(TypeError, match='remove AlphaBetaHook'):
        plain.set_coefficients(0.3, 0.7)


def test_plain_vit_with_cp_checkpoints_blocks_with_the_same_gradients():
    """with_cp (the checkpointing baseline): same logits and gradients, fewer bytes kept."""
    from dr2net_mm.core import count_saved_bytes
    plain = segmentor(dict(type='PlainViT', **TINY_VIT))
    checkpointed = segmentor(dict(type='PlainViT', with_cp=True, **TINY_VIT))
    checkpointed.load_state_dict(plain.state_dict())
    points = crops()
    saved, grads = {}, {}
    for name, model in (('plain', plain), ('cp', checkpointed)):
        model.train()
        with count_saved_bytes(list(model.parameters())) as counter:
            out = model(points, mode='tensor')
        out.square().sum().backward()
        saved[name] = counter.total
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads['cp'].keys() == grads['plain'].keys()
    for name, grad in grads['plain'].items():
        assert rel(grads['cp'][name], grad) < 1e-6, name
    assert saved['cp'] < saved['plain']
    with pytest.raises(ValueError, match='with_cp must be True or False'):
        MODELS.build(dict(type='PlainViT', with_cp='yes', **TINY_VIT))


def test_unused_image_parts_of_the_backbone_are_frozen():
    model = segmentor(dict(type='Dr2NetViT', **TINY_VIT))
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ['backbone.patch_embed.proj.bias', 'backbone.patch_embed.proj.weight']
    model = segmentor(dict(type='Dr2NetViT', **TINY_VIT), prefix_tokens=False)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ['backbone.cls_token', 'backbone.patch_embed.proj.bias',
                      'backbone.patch_embed.proj.weight', 'backbone.pos_embed']


def test_full_room_prediction_votes_over_covering_crops():
    model = segmentor(dict(type='Dr2NetViT', **TINY_VIT), test_cfg=dict(crop_points=60, crop_batch=2))
    model.eval()
    points = crops(batch=1, n=300)[0]
    with torch.no_grad():
        probs = model.predict_points(points)  # 300 > 60: several crops, each point in at least one
        assert probs.shape == (300, 5)
        assert torch.allclose(probs.sum(-1), torch.ones(300))
        # a room of 300 points with 2 votes of 150 representatives each
        sample = BaseDataElement(metainfo=dict(room='r'))
        sample.gt_label = torch.zeros(300, dtype=torch.long)
        sample.voxel_inverse = torch.arange(300) // 2
        sample.vote_indices = torch.stack([torch.arange(0, 300, 2), torch.arange(1, 300, 2)])
        (out, ) = model.predict([points], [sample])
        first = model.predict_points(points[0::2])[sample.voxel_inverse]
        second = model.predict_points(points[1::2])[sample.voxel_inverse]
    assert out.pred_label.shape == (300, ) and out.room == 'r'
    assert torch.equal(out.pred_label, (first + second).argmax(-1))
    assert torch.equal(out.gt_label, sample.gt_label)


def test_bad_model_inputs_give_clear_errors():
    model = segmentor(dict(type='Dr2NetViT', **TINY_VIT))
    with pytest.raises(ValueError, match=r'a sample has 10 points, fewer than the tokenizer needs '
                                         r'\(num_tokens=16.*give at least 16 points'):
        model(crops(n=10), mode='tensor')
    with pytest.raises(ValueError, match=r'points must be \(B, N, 3 \+ 4\).*got \(2, 200, 6\)'):
        model(crops()[..., :6], mode='tensor')
    bad = crops()
    bad[1, 5, 0] = float('nan')
    with pytest.raises(ValueError, match='points contain NaN or inf values'):
        model(bad, mode='tensor')
    with pytest.raises(ValueError, match='training needs samples of equal size'):
        model([crops(1, 100)[0], crops(1, 120)[0]], [], mode='loss')
    with pytest.raises(ValueError, match=r'test_cfg crop_points=8 must be >= num_tokens=16'):
        segmentor(dict(type='Dr2NetViT', **TINY_VIT), test_cfg=dict(crop_points=8))


# 2. Metric ---------------------------------------------------------------------------------------
def test_metric_against_hand_computed_values():
    metric = PointSegMetric(ignore_index=255)
    metric.dataset_meta = dict(classes=('a', 'b', 'c', 'd'))
    # room 1: gt a a b b c, pred a b b b a; room 2: gt c c 255, pred c a d
    metric.process(None, [dict(gt_label=torch.tensor([0, 0, 1, 1, 2]),
                               pred_label=torch.tensor([0, 1, 1, 1, 0])),
                          dict(gt_label=np.array([2, 2, 255]), pred_label=np.array([2, 0, 3]))])
    results = metric.compute_metrics(metric.results)
    # a: TP 1, FP 2 (c->a twice), FN 1 -> 1/4; b: TP 2, FP 1, FN 0 -> 2/3; c: TP 1, FN 2 -> 1/3;
    # d: never in gt or pred (the d prediction is on an ignored point) -> NaN, not in the mean
    assert results['IoU.a'] == pytest.approx(25.0)
    assert results['IoU.b'] == pytest.approx(200 / 3)
    assert results['IoU.c'] == pytest.approx(100 / 3)
    assert np.isnan(results['IoU.d'])
    assert results['mIoU'] == pytest.approx((25 + 200 / 3 + 100 / 3) / 3)
    assert results['oAcc'] == pytest.approx(100 * 4 / 7)
    assert results['mAcc'] == pytest.approx(100 * (1 / 2 + 1 + 1 / 3) / 3)


def test_metric_refuses_labels_outside_the_classes():
    metric = PointSegMetric()
    metric.dataset_meta = dict(classes=('a', 'b'))
    with pytest.raises(ValueError, match=r'labels outside 0..1.*ground truth \[2\]'):
        metric.process(None, [dict(gt_label=torch.tensor([0, 2]), pred_label=torch.tensor([0, 1]))])


# 3. Benchmark support ----------------------------------------------------------------------------
def test_benchmark_inputs_train_both_backbones_and_dr2net_keeps_less():
    """One training step of the demo segmentor (ViT-S) with the Dr²Net backbone and with the
    baseline's PlainViT; bytes kept for backward are deterministic counts."""
    cfg = Config.fromfile(DEMO_CONFIG)
    baseline_cfg = copy.deepcopy(cfg)
    baseline_cfg.model.backbone = dict(type='PlainViT', arch='vit_small_patch16_224')
    saved = {}
    for name, config in (('dr2net', cfg), ('baseline', baseline_cfg)):
        model = build_model(config).train()
        data = synthetic_point_batch(model, num_points=512, batch=2)
        assert model.training and len(data['inputs']) == 2 and data['inputs'][0].shape == (512, 7)
        params = list(model.parameters())
        with count_saved_bytes(params) as counter:
            loss = training_loss(model, data)
        loss.backward()
        assert torch.isfinite(loss)
        assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        saved[name] = counter.total
    # the backbone's activations (65 tokens x 384 channels x 12 blocks) are what Dr²Net drops
    assert saved['dr2net'] < 0.5 * saved['baseline']  # measured: 23.4 vs 55.6 MiB


def test_full_size_configs_build_the_dr2net_and_the_baseline_segmentor():
    for name, backbone, hooks in (('pix4point_dr2net_vit_s_s3dis.py', 'Dr2NetViT', ['AlphaBetaHook']),
                                  ('pix4point_vit_s_s3dis.py', 'PlainViT', []),
                                  ('pix4point_vit_s_cp_s3dis.py', 'PlainViT', [])):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
        assert [h['type'] for h in cfg.custom_hooks] == hooks
        assert cfg.model.backbone.init_cfg.checkpoint == 'data/pretrained/mae_vit_small_patch16.pth'
        assert cfg.train_dataloader.dataset.dataset.areas == (1, 2, 3, 4, 6)
        assert cfg.val_dataloader.dataset.areas == (5, )
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        assert type(model.backbone).__name__ == backbone
        assert (model.backbone.depth, model.backbone.embed_dims) == (12, 384)
        assert model.tokenizer.num_tokens == 1536 and model.num_classes == 13


# 4. The pipeline through the tools ---------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('points')
    data_root = make_demo_rooms(str(root / 'rooms'), rooms_per_area=1, val_rooms=2, density=25.0)
    checkpoint = write_vit_timm_checkpoint(str(root / 'vit_s.pth'))
    config = root / 'tiny.py'
    config.write_text(f"""_base_ = {DEMO_CONFIG!r}
data_root = {data_root!r}
model = dict(backbone=dict(init_cfg=dict(checkpoint={checkpoint!r})), num_tokens=32,
             test_cfg=dict(crop_points=512))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=[
    dict(type='PointGridSample', voxel_size=0.1), dict(type='PointNormalize'),
    dict(type='PointRandomCrop', num_points=512), dict(type='PackPointInputs')]))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=4)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))
custom_hooks = [dict(type='AlphaBetaHook', end_iter=3, interval=1)]
""")
    return dict(root=root, config=str(config))


def test_train_then_test_on_generated_rooms_report_miou_and_per_class_iou(tiny_demo):
    work_dir = str(tiny_demo['root'] / 'train')
    out = run([PYTHON, 'tools/train.py', tiny_demo['config'], '--work-dir', work_dir])
    assert 'Dr2NetViT: loaded 150 tensors' in out  # the stand-in MAE checkpoint, timm layout
    assert 'Iter(train) [4/4]' in out and 'per-class IoU (%)' in out
    logged = scalars(work_dir)
    assert [s['alpha'] for s in logged if 'alpha' in s] == pytest.approx([1.0, 1 - 0.7 / 3,
                                                                           1 - 1.4 / 3, 0.3])
    (val, ) = [s for s in logged if 'points/mIoU' in s]
    assert 0 <= val['points/mIoU'] <= 100 and 0 <= val['points/oAcc'] <= 100
    assert {f'points/IoU.{c}' for c in ('ceiling', 'floor', 'wall', 'clutter')} <= set(val)
    checkpoint = os.path.join(work_dir, 'iter_4.pth')
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert state['backbone.alpha'].item() == pytest.approx(0.3)
    # tools/test.py on the saved model: same rooms, same votes -> the same numbers as the final val
    out = run([PYTHON, 'tools/test.py', tiny_demo['config'], checkpoint, '--work-dir',
               str(tiny_demo['root'] / 'test')])
    assert 'evaluated with (alpha, beta) = (0.3, 0.7)' in out
    tested = float(re.search(r'points/mIoU: ([0-9.]+)', out).group(1))
    assert tested == pytest.approx(val['points/mIoU'], abs=1e-4)


def test_missing_rooms_give_a_clear_error(tmp_path):
    proc = subprocess.run([PYTHON, 'tools/train.py', 'configs/pix4point_dr2net_vit_s_s3dis.py',
                           '--work-dir', str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1'),
                          timeout=300)
    assert proc.returncode != 0
    assert 'dataset not found' in proc.stderr and 'data/s3dis/s3disfull/raw/' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_demo_refuses_fewer_iterations_than_the_warmup(capsys):
    import runpy
    main = runpy.run_path(os.path.join(ROOT, 'tools', 'demo_points.py'),
                          run_name='demo_points')['main']
    with pytest.raises(SystemExit):
        main(['--iters', '15'])
    assert '--iters 15: need more than the 15 warm-up iterations' in capsys.readouterr().err
