"""DINO with deep backbones: ViT-L/16 with ViTDet's simple feature pyramid and the mmdet zoo's
DINO-5scale Swin-L, each as conventional / all-checkpointing / Dr²Net-all configs. Tiny widths and
depths stand in for the real ones (the configs are otherwise as shipped)."""
import copy
import os

import pytest
import torch
from mmengine.config import Config

import dr2net_mm  # noqa: F401  (registers Dr2NetDINO, SimpleFeaturePyramid)
from dr2net_mm.benchmark.batches import detector_batch
from dr2net_mm.benchmark.variants import build_model, training_loss
from dr2net_mm.models import SimpleFeaturePyramid
from dr2net_mm.models.dino import CheckpointedLayer
from tool_runs import ROOT

VIT_L = {name: os.path.join(ROOT, 'configs', f'{name}.py') for name in (
    'dino_vit_l_coco', 'dino_vit_l_cp_all_coco', 'dino_dr2net_all_vit_l_coco')}
SWIN_L = {name: os.path.join(ROOT, 'configs', f'{name}.py') for name in (
    'dino_swin_l_cp_all_coco', 'dino_dr2net_all_swin_l_coco')}


def tiny(cfg: Config, vit: bool) -> Config:
    """The detector of ``cfg`` at toy widths and depths (same types and modes)."""
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    if vit:
        model.backbone.update(arch=None, embed_dims=32, depth=2, num_heads=2, out_indices=(1, ),
                              drop_path_rate=0.0)
        model.neck.in_channels = 32
    else:
        model.backbone.update(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                              window_size=4, drop_path_rate=0.0)
        model.neck.in_channels = [16, 32, 64, 128]
    for part in ('encoder', 'decoder'):
        model[part].layer_cfg.ffn_cfg.feedforward_channels = 64
    model.encoder.num_layers, model.decoder.num_layers = 1, 2
    model.num_queries, model.test_cfg.max_per_img = 20, 20
    model.dn_cfg.group_cfg.num_dn_queries = 6
    return cfg


@pytest.mark.parametrize('name', sorted(VIT_L) + sorted(SWIN_L))
def test_deep_backbone_configs_build_the_detector_they_name(name):
    path = {**VIT_L, **SWIN_L}[name]
    cfg = Config.fromfile(path)
    model = build_model(tiny(cfg, 'vit_l' in name), 'mmdet')
    expected_backbone = {'dino_vit_l_coco': 'PlainViT', 'dino_vit_l_cp_all_coco': 'PlainViT',
                         'dino_dr2net_all_vit_l_coco': 'Dr2NetViT',
                         'dino_swin_l_cp_all_coco': 'SwinTransformer',
                         'dino_dr2net_all_swin_l_coco': 'Dr2NetSwin'}[name]
    assert type(model.backbone).__name__ == expected_backbone
    if 'vit_l' in name:  # the real sizes, from the config as shipped
        assert isinstance(model.neck, SimpleFeaturePyramid) and model.neck.num_outs == 4
        assert cfg.model.backbone.arch == 'vit_large_patch16_224'
        assert cfg.model.neck.in_channels == 1024
    else:
        assert cfg.model.backbone.embed_dims == 192 and cfg.model.num_feature_levels == 5
    if 'cp_all' in name:  # mmdet's Swin keeps with_cp in its blocks
        backbone = model.backbone
        assert backbone.with_cp if 'vit' in name else backbone.stages[2].blocks[0].with_cp
        assert all(isinstance(layer, CheckpointedLayer)
                   for layer in [*model.encoder.layers, *model.decoder.layers])
    if 'dr2net_all' in name:
        assert type(model.encoder).__name__ == 'Dr2NetDeformableEncoder'
        assert all(isinstance(layer, CheckpointedLayer) for layer in model.decoder.layers)
        assert [h.type for h in cfg.custom_hooks] == ['AlphaBetaHook']
        if 'swin' in name:
            assert not model.backbone.with_cp  # the zoo's with_cp is switched off
    loss = training_loss(model.train(), detector_batch(1, 64, model.bbox_head.num_classes))
    loss.backward()
    assert torch.isfinite(loss)


def vit_pair():
    """(conventional DINO-ViT, Dr²Net-all DINO-ViT at (1, 0) with the same weights), tiny."""
    plain = build_model(tiny(Config.fromfile(VIT_L['dino_vit_l_coco']), vit=True), 'mmdet')
    cfg = tiny(Config.fromfile(VIT_L['dino_dr2net_all_vit_l_coco']), vit=True)
    for part in (cfg.model.backbone, cfg.model.encoder):
        part.update(alpha=1.0, beta=0.0, reversible=False)
    dr2net = build_model(cfg, 'mmdet')
    result = dr2net.load_state_dict(plain.state_dict(), strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert dr2net.backbone.coefficients == dr2net.encoder.coefficients == (1.0, 0.0)
    return plain, dr2net


def test_vit_dino_dr2net_all_at_1_0_in_eval_equals_the_conventional_detector():
    plain, dr2net = vit_pair()
    data = detector_batch(2, 64, plain.bbox_head.num_classes)
    with torch.no_grad():
        expected = plain.eval()(**plain.data_preprocessor(data, False), mode='tensor')
        got = dr2net.eval()(**dr2net.data_preprocessor(data, False), mode='tensor')
    assert len(got) == len(expected) == 2  # classification scores and boxes per decoder layer
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def dino_grads(model) -> dict:
    torch.manual_seed(1)  # the denoising queries are drawn
    training_loss(model.train(), detector_batch(2, 64, model.bbox_head.num_classes)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_vit_dino_dr2net_all_gradients_match_the_conventional_detector():
    """At (1, 0) the Dr²Net-all detector computes the conventional one: the same gradients to
    float32 rounding; reversible at (1, 0.1) its gradients reach the same parameters, finite."""
    plain, dr2net = vit_pair()
    expected, got = dino_grads(plain), dino_grads(dr2net)
    assert set(got) == set(expected)
    for name in expected:
        error = (got[name] - expected[name]).norm() / expected[name].norm().clamp_min(1e-12)
        assert error <= 1e-4, (name, error)
    dr2net.zero_grad(set_to_none=True)
    for part in (dr2net.backbone, dr2net.encoder):
        part.set_coefficients(1.0, 0.1)
        part.reversible = True
    reversible = dino_grads(dr2net)
    assert set(reversible) == set(expected)
    assert all(torch.isfinite(g).all() for g in reversible.values())
    assert dr2net.backbone.reconstruction_errors() == [0.0]
    assert dr2net.encoder.reconstruction_errors() == [0.0]


def test_simple_feature_pyramid_levels_and_bad_arguments():
    neck = SimpleFeaturePyramid(in_channels=[16], out_channels=8,
                                scale_factors=(4.0, 2.0, 1.0, 0.5), top_pool=True)
    outs = neck((torch.randn(2, 16, 8, 12), ))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 32, 48), (2, 8, 16, 24), (2, 8, 8, 12),
                                              (2, 8, 4, 6), (2, 8, 2, 3)]
    with pytest.raises(ValueError, match=r'scale_factors=\(1.0, 2.0\): give decreasing'):
        SimpleFeaturePyramid(16, scale_factors=(1.0, 2.0))
    with pytest.raises(ValueError, match=r'scale_factors=\(3.0,\)'):
        SimpleFeaturePyramid(16, scale_factors=(3.0, ))
    with pytest.raises(ValueError, match=r'in_channels=\[16, 32\]: SimpleFeaturePyramid takes'):
        SimpleFeaturePyramid([16, 32])
    with pytest.raises(ValueError, match='in_channels=18 must be divisible by 4'):
        SimpleFeaturePyramid(18, scale_factors=(4.0, 1.0))


def test_benchmark_dino_backbones_choose_their_configs_and_refuse_unknown_variants(capsys):
    import runpy
    benchmark = runpy.run_path(os.path.join(ROOT, 'tools', 'benchmark.py'), run_name='benchmark')
    args = benchmark['parse_args'](['dino', '--backbone', 'vit_l', '--size', '1024'])
    ((label, variants), ) = benchmark['settings'](args).items()
    assert label.startswith('DINO-4scale ViT-L/16') and label.endswith('1024², batch 1')
    assert [v.name for v in variants] == ['cp_all', 'dr2net_all']
    args = benchmark['parse_args'](['dino', '--backbone', 'swin_l', '--variants', 'checkpointing',
                                    'dr2net_all', 'frozen_backbone_cp_all'])
    assert [v.name for v in next(iter(benchmark['settings'](args).values()))] == [
        'checkpointing', 'dr2net_all', 'frozen_backbone_cp_all']
    for argv in (['dino', '--backbone', 'vit_l', '--variants', 'frozen_backbone'],
                 ['dino', '--backbone', 'swin_l', '--extra', 'dr2net_f64_seg4'],
                 ['vit', '--backbone', 'vit_l']):
        with pytest.raises(SystemExit):
            benchmark['parse_args'](argv)
    assert 'dino --backbone vit_l has the variants conventional checkpointing cp_all' in (
        capsys.readouterr().err)
