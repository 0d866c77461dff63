"""Dr2NetDINO and the reversible deformable encoder (Dr2NetDeformableEncoder): mmdet's encoder bit
for bit at (1, 0), mmdet DINO state dicts in every mode, reversible gradients as precise as fp32
autograd with exact rebuilds, checkpointed encoder/decoder equal to plain, DDP, bad input, and a
short Dr²Net-all demo run through MMEngine's Runner. Small inputs: 2 levels of a few hundred
tokens, 1-2 layers."""
import copy
import os
import sys

import pytest
import torch
from mmdet.models.layers.transformer import DeformableDetrTransformerEncoder
from mmengine.config import Config
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dr2net_mm  # noqa: F401  (registers Dr2NetDINO)
from dr2net_mm.benchmark.batches import detector_batch
from dr2net_mm.benchmark.variants import build_model, swap_backbone, training_loss
from dr2net_mm.core import chunks, gradient_error, reversible_stages
from dr2net_mm.models import Dr2NetDeformableEncoder, Dr2NetDINO
from dr2net_mm.models.dino import CheckpointedLayer, lean_transformer
from tool_runs import ROOT, data_overrides, run_tool, scalars
from two_processes import on_two_processes, weighted_loss

DEMO_ALL = os.path.join(ROOT, 'configs/demo/dino_dr2net_all_swin_t_demo.py')
LAYER_CFG = dict(
    self_attn_cfg=dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2, dropout=0.0,
                       batch_first=True),
    ffn_cfg=dict(embed_dims=32, feedforward_channels=64, ffn_drop=0.0))
SHAPES = torch.tensor([[12, 16], [6, 8]])  # 192 + 48 tokens


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 2^10 elements, so that the small encoder is recomputed by many parts."""
    monkeypatch.setattr(chunks, 'PART_ELEMENTS', 2**10)
    monkeypatch.setattr(chunks.row_parts, '__defaults__', (2**10, 1))


def encoder_inputs(batch: int = 2, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = int((SHAPES[:, 0] * SHAPES[:, 1]).sum())
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask[-1, 180:192] = True  # padding in the last image's first level
    ratios = torch.ones(batch, 2, 2)
    ratios[-1] = torch.tensor([0.75, 1.0])
    return dict(query=torch.randn(batch, n, 32, generator=gen),
                query_pos=torch.randn(batch, n, 32, generator=gen), key_padding_mask=mask,
                spatial_shapes=SHAPES, level_start_index=torch.tensor([0, 192]),
                valid_ratios=ratios)


def mmdet_encoder(num_layers: int = 2, seed: int = 0) -> DeformableDetrTransformerEncoder:
    torch.manual_seed(seed)
    encoder = DeformableDetrTransformerEncoder(num_layers, copy.deepcopy(LAYER_CFG))
    with torch.no_grad():  # mmcv's init zeroes the attention weights: a non-degenerate point
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return encoder


def dr2net_encoder(reference: nn.Module, **options) -> Dr2NetDeformableEncoder:
    encoder = Dr2NetDeformableEncoder(reference.num_layers, copy.deepcopy(LAYER_CFG), **options)
    encoder.load_state_dict(reference.state_dict(), strict=False)
    return encoder


class EncoderProbe(nn.Module):
    """The encoder as a function of its tokens alone (``gradient_error`` calls ``model(x)``); the
    positions are a parameter when ``train_pos`` (the side input with a gradient), else a buffer."""

    def __init__(self, encoder: nn.Module, inputs: dict, train_pos: bool = False):
        super().__init__()
        self.encoder = encoder
        pos = inputs['query_pos'].clone()
        if train_pos:
            self.pos = nn.Parameter(pos)
        else:
            self.register_buffer('pos', pos)
        self.register_buffer('ratios', inputs['valid_ratios'].clone())
        self.mask, self.shapes, self.starts = (inputs['key_padding_mask'], SHAPES,
                                               inputs['level_start_index'])

    def forward(self, x):
        return self.encoder(x, self.pos, self.mask, self.shapes, self.starts, self.ratios)


# 1. Equivalence --------------------------------------------------------------------------------
def test_reversible_encoder_at_1_0_in_eval_is_bitwise_mmdet_encoder():
    reference = mmdet_encoder().eval()
    encoder = dr2net_encoder(reference, alpha=1.0, beta=0.0, reversible=False).eval()
    inputs = encoder_inputs()
    with torch.no_grad():
        assert torch.equal(encoder(**inputs), reference(**inputs))
    assert set(encoder.state_dict()) == set(reference.state_dict()) | {'alpha', 'beta'}


def test_stage_branches_at_1_0_compute_mmdet_layers_part_by_part(small_parts):
    """The stage itself (not the (1, 0) shortcut), trained by parts in reference mode: its branches
    F = LN(x + G(x)) − x add up to mmdet's layers (to float32 rounding), gradients included."""
    reference = mmdet_encoder().train()
    encoder = dr2net_encoder(reference, alpha=1.0, beta=0.0, reversible=False).train()
    inputs = encoder_inputs()
    x = inputs['query'].clone().requires_grad_()
    expected = reference(**dict(inputs, query=x))
    expected.square().sum().backward()
    x_grad, x.grad = x.grad, None
    refs = encoder.get_encoder_reference_points(SHAPES, inputs['valid_ratios'], 'cpu')
    got = encoder.sequence(x, inputs['query_pos'], refs, SHAPES, inputs['level_start_index'],
                           inputs['key_padding_mask'])
    got.square().sum().backward()
    assert torch.allclose(got, expected, atol=2e-5, rtol=0)
    assert torch.allclose(x.grad, x_grad, atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(encoder.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-3, rtol=1e-4), name


def test_deformable_attention_parts_are_sized_per_image_so_a_batch_keeps_the_part_count(
        small_parts):
    """Each part samples the projected values of the whole batch, so a batch of 1, 2 or 4 images
    is split into the same query rows (NOTE [ Deformable parts per image ])."""
    encoder = dr2net_encoder(mmdet_encoder()).train()
    branch = encoder.sequence.functions[0]
    parts = {}
    for batch in (1, 2, 4):
        inputs = encoder_inputs(batch)
        refs = encoder.get_encoder_reference_points(SHAPES, inputs['valid_ratios'], 'cpu')
        plan = branch.plan(inputs['query'], inputs['query_pos'], refs, SHAPES,
                           inputs['level_start_index'], inputs['key_padding_mask'])
        parts[batch] = list(plan.parts)
    assert len(parts[1]) > 2
    assert parts[2] == parts[1] and parts[4] == parts[1]


def tiny_dino_cfg(encoder_mode='plain', decoder_mode='plain', mmdet=False):
    cfg = Config.fromfile(DEMO_ALL)
    model = cfg.model
    model.encoder.num_layers, model.decoder.num_layers = 1, 2
    model.num_queries, model.test_cfg.max_per_img = 20, 20
    model.dn_cfg.group_cfg.num_dn_queries = 6
    if mmdet:
        cfg = swap_backbone(cfg, 'SwinTransformer')
        cfg.model.type = 'DINO'
        for part in ('encoder', 'decoder'):
            for key in ('mode', 'alpha', 'beta', 'reversible', 'stream_dtype'):
                cfg.model[part].pop(key, None)
        return cfg
    cfg.model.encoder['mode'], cfg.model.decoder['mode'] = encoder_mode, decoder_mode
    if encoder_mode != 'reversible':
        for key in ('alpha', 'beta', 'reversible', 'stream_dtype'):
            cfg.model.encoder.pop(key, None)
    return cfg


@pytest.mark.parametrize('encoder_mode,decoder_mode', [('plain', 'plain'),
                                                       ('checkpoint', 'checkpoint'),
                                                       ('reversible', 'checkpoint')])
def test_mmdet_dino_state_dict_loads_into_every_mode_without_missing_or_unexpected_keys(
        encoder_mode, decoder_mode):
    mmdet_state = build_model(tiny_dino_cfg(mmdet=True), 'mmdet').state_dict()
    model = build_model(tiny_dino_cfg(encoder_mode, decoder_mode), 'mmdet')
    assert type(model) is Dr2NetDINO
    result = model.load_state_dict(mmdet_state, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    extra = {'backbone.alpha', 'backbone.beta'} | (
        {'encoder.alpha', 'encoder.beta'} if encoder_mode == 'reversible' else set())
    assert set(model.state_dict()) == set(mmdet_state) | extra
    for key, value in mmdet_state.items():
        assert torch.equal(model.state_dict()[key], value), key


# 2. Gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_encoder_gradients_as_precise_as_fp32_autograd_and_rebuilds_exactly(
        alpha, beta, small_parts):
    reference = mmdet_encoder()
    inputs = encoder_inputs()
    probe = EncoderProbe(dr2net_encoder(reference, alpha=alpha, beta=beta), inputs).train()
    report = gradient_error(probe, inputs['query'])
    print(f'\n({alpha}, {beta}): reversible vs float64 {report.reversible_vs_truth.worst:.3g}, '
          f'fp32 autograd vs float64 {report.reference_vs_truth.worst:.3g}')
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert probe.encoder.reconstruction_errors() == [0.0]


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_query_pos_side_input_gets_its_gradient_through_the_reversible_stage(alpha, beta,
                                                                             small_parts):
    """DINO's query_pos carries the learnable level embeddings: the reversible stage returns its
    gradient, as precise as fp32 autograd's (needs the engine's side inputs with gradients)."""
    reference = mmdet_encoder()
    inputs = encoder_inputs()
    probe = EncoderProbe(dr2net_encoder(reference, alpha=alpha, beta=beta), inputs,
                         train_pos=True).train()
    report = gradient_error(probe, inputs['query'])
    assert 'pos' in report.reversible_vs_truth.per_parameter
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert probe.encoder.reconstruction_errors() == [0.0]


def param_grads(model: nn.Module) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def dino_grads(model: nn.Module) -> dict:
    data = detector_batch(2, 64, model.bbox_head.num_classes)
    torch.manual_seed(1)  # the denoising queries are drawn
    training_loss(model.train(), data).backward()
    return param_grads(model)


def test_checkpointed_encoder_and_decoder_give_the_plain_gradients():
    plain = build_model(tiny_dino_cfg('plain', 'plain'), 'mmdet')
    lean = build_model(tiny_dino_cfg('checkpoint', 'checkpoint'), 'mmdet')
    lean.load_state_dict(plain.state_dict())
    assert all(isinstance(layer, CheckpointedLayer)
               for layer in [*lean.encoder.layers, *lean.decoder.layers])
    expected, got = dino_grads(plain), dino_grads(lean)
    assert set(got) == set(expected)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-7), name


# 3. DDP ----------------------------------------------------------------------------------------
def _probe(train_pos: bool = False) -> EncoderProbe:
    inputs = encoder_inputs(batch=4)
    return EncoderProbe(dr2net_encoder(mmdet_encoder(), alpha=0.5, beta=0.5), inputs,
                        train_pos).train()


def _ddp_rank(rank, world_size):
    probe = _probe()
    x = encoder_inputs(batch=4)['query']
    rows = slice(rank * 2, rank * 2 + 2)
    part = EncoderProbe(probe.encoder, {k: v[rows] if k in ('query_pos', 'key_padding_mask',
                                                            'valid_ratios') else v
                                        for k, v in encoder_inputs(batch=4).items()})
    # each rank's positions are its own (buffers of the probe): not broadcast from rank 0
    model = DistributedDataParallel(part, find_unused_parameters=True, broadcast_buffers=False)
    for _ in range(2):  # a parameter marked ready twice would fail on the second iteration
        model.zero_grad(set_to_none=True)
        weighted_loss(model(x[rows])).backward()
    return param_grads(probe.encoder)


def test_ddp_two_processes_with_the_reversible_encoder_match_one_process(tmp_path):
    ranks = on_two_processes(_ddp_rank, tmp_path)
    probe = _probe()
    weighted_loss(probe(encoder_inputs(batch=4)['query'])).backward()
    expected = param_grads(probe.encoder)
    for rank, got in enumerate(ranks):
        assert set(got) == set(expected)
        for name in expected:  # float32 sums over 2 vs 4 images: rounding only
            error = (got[name] - expected[name]).norm() / expected[name].norm()
            assert error <= 1e-5, (rank, name, error)


# 4. Bad input ----------------------------------------------------------------------------------
def test_bad_mode_is_refused_by_name_before_anything_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(Dr2NetDINO.__mro__[1], '_init_layers', lambda self: built.append(self))
    cfg = tiny_dino_cfg('plain', 'plain').model
    with pytest.raises(ValueError, match=r"encoder=dict\(mode='reversable'\): choose one of "
                                         r"'plain', 'checkpoint', 'reversible'"):
        Dr2NetDINO(**dict(cfg, encoder=dict(cfg.encoder, mode='reversable')))
    with pytest.raises(ValueError, match=r"decoder=dict\(mode='reversible'\): choose one of "
                                         r"'plain', 'checkpoint'"):
        Dr2NetDINO(**dict(cfg, decoder=dict(cfg.decoder, mode='reversible')))
    with pytest.raises(ValueError, match=r"\['beta'\] \(they need encoder=dict\(mode='reversible'"):
        Dr2NetDINO(**dict(cfg, encoder=dict(cfg.encoder, mode='checkpoint', beta=0.5)))
    assert built == []


def detr_detector():
    from mmengine.registry import init_default_scope
    from mmengine.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(os.path.join(os.path.dirname(__import__('mmdet').__file__), '.mim',
                                       'configs', 'detr', 'detr_r18_8xb2-500e_coco.py'))
    cfg.model.backbone.init_cfg = None
    cfg.model.encoder.num_layers = cfg.model.decoder.num_layers = 1
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('mode', ['reversible', 'checkpoint'])
def test_lean_encoder_for_a_non_deformable_detector_is_refused_and_nothing_changes(mode):
    detector = detr_detector()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    classes = [type(m) for m in detector.modules()]
    with pytest.raises(ValueError) as error:
        lean_transformer(detector, encoder=mode, decoder='checkpoint')
    message = str(error.value)
    assert 'DetrTransformerEncoder' in message and 'MultiheadAttention' in message
    assert "encoder=dict(mode='plain')" in message
    assert [type(m) for m in detector.modules()] == classes  # the decoder was not touched either
    assert all(torch.equal(v, before[k]) for k, v in detector.state_dict().items())
    assert not reversible_stages(detector)


# 5. A short run through MMEngine's Runner ------------------------------------------------------
@pytest.mark.slow
def test_dr2net_all_demo_trains_through_the_runner_with_both_stages_driven(tmp_path):
    from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
    data_root = str(tmp_path / 'coco') + '/'
    make_demo_coco(data_root, num_train=2, num_val=1, image_size=(64, 64))
    write_swin_official_checkpoint(data_root + 'swin_t.pth')
    config = tmp_path / 'demo_all.py'
    config.write_text(f'_base_ = {DEMO_ALL!r}\n' + data_overrides(data_root) +
                      "model = dict(num_queries=20, encoder=dict(num_layers=2), "
                      "backbone=dict(init_cfg=dict(checkpoint=data_root + 'swin_t.pth')), "
                      "decoder=dict(num_layers=2), dn_cfg=dict(group_cfg=dict(num_dn_queries=6)),"
                      " test_cfg=dict(max_per_img=20))\n"
                      "train_cfg = dict(max_epochs=2, val_interval=2)\n"
                      "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))\n"
                      "custom_hooks = [dict(type='AlphaBetaHook', end_iter=1, interval=1)]\n")
    work_dir = str(tmp_path / 'work')
    out = run_tool([sys.executable, 'tools/train.py', str(config), '--work-dir', work_dir])
    assert 'coco/bbox_mAP' in out
    train = [s for s in scalars(work_dir) if 'alpha' in s]
    assert [s['alpha'] for s in train] == pytest.approx([1.0, 0.3])
    assert all(s['reconstruction_error'] == 0.0 for s in train)
    checkpoint = torch.load(os.path.join(work_dir, 'epoch_2.pth'), map_location='cpu',
                            weights_only=False)
    for part in ('backbone', 'encoder'):  # AlphaBetaHook drove both reversible parts
        assert checkpoint['state_dict'][f'{part}.alpha'].item() == pytest.approx(0.3)
        assert checkpoint['state_dict'][f'{part}.beta'].item() == pytest.approx(0.7)
