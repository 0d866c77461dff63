"""Spec of Dr2NetViT (dr2net_mm.models.vit): a timm ViT whose blocks run as one reversible stage."""
import copy
import math
from contextlib import contextmanager

import pytest
from packaging.version import Version
import timm
import torch
from mmengine.registry import DefaultScope
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

import dr2net_mm  # noqa: F401  (registers Dr2NetViT)
from dr2net_mm.core import count_saved_bytes, gradient_error, set_reversible
from dr2net_mm.models.vit import Dr2NetViT
from dr2net_mm.models.vit_checkpoint import checkpoint_filter_fn, detect_checkpoint_format

# A tiny explicit architecture for the fast tests (16 patch tokens at 64×64).
TINY = dict(arch=None, embed_dims=32, depth=4, num_heads=4, patch_size=16, img_size=64)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the tensors that timm initialises near zero (layer scale 1e-5, class / register tokens
    1e-6) values of order one, so that an equivalence test sees every part of the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name in ('cls_token', 'reg_token', 'pos_embed'):
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


def timm_reference(arch, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool='',
                              dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    return randomize_(model).eval()


def timm_feature_map(model, images, patch):
    """timm's forward_features: patch tokens after the final norm, as (B, C, h, w)."""
    tokens = model.forward_features(images)[:, model.num_prefix_tokens:]
    h, w = -(-images.shape[2] // patch), -(-images.shape[3] // patch)
    return tokens.reshape(images.shape[0], h, w, -1).permute(0, 3, 1, 2)


def save(tmp_path, state_dict, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(state_dict, path)
    return str(path)


# 1. At (α, β) = (1, 0) it is the pretrained timm network ---------------------------------------
@pytest.mark.parametrize('arch,patch,depth', [('vit_small_patch16_224', 16, 4),
                                              ('vit_small_patch14_reg4_dinov2', 14, 4)])
@pytest.mark.parametrize('size', [(224, 224), (320, 480)])
def test_alpha1_beta0_equals_timm_forward_features(tmp_path, arch, patch, depth, size):
    """A timm checkpoint loads with no conversion (init_cfg Pretrained); with out_indices=(depth-1,)
    and final_norm the output is timm's forward_features patch tokens as NCHW, at the pretraining
    size and at a non-square size (position embedding resampled as timm's dynamic_img_size does;
    DINOv2-style: layer scale, 4 register tokens, position embedding not covering prefix tokens)."""
    reference = timm_reference(arch, depth=depth)
    path = save(tmp_path, reference.state_dict())
    model = Dr2NetViT(arch, depth=depth, out_indices=(depth - 1, ), final_norm=True, alpha=1.0,
                      beta=0.0, reversible=False, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert model.coefficients == (1.0, 0.0)  # a timm checkpoint carries no α/β: constructor values
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_feature_map(reference, images, patch)
    # Training forward with autograd (float64 streams) and the eval / no-grad forward (plain loop).
    (train_out, ) = model.train()(images)
    with torch.no_grad():
        (eval_out, ) = model.eval()(images)
    h, w = -(-size[0] // patch), -(-size[1] // patch)
    assert train_out.shape == eval_out.shape == (2, 384, h, w)
    assert (train_out.detach() - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (eval_out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_state_dict_is_timms_plus_alpha_beta():
    """Same parameter names and shapes as timm's VisionTransformer without its classifier, plus the
    two coefficient buffers, so checkpoints go both ways without conversion."""
    reference = timm.create_model('vit_small_patch14_reg4_dinov2', pretrained=False, depth=2,
                                  num_classes=0)
    model = Dr2NetViT('vit_small_patch14_reg4_dinov2', depth=2)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs) | {'alpha', 'beta'}
    assert all(ours[k].shape == v.shape for k, v in theirs.items())
    assert ours['alpha'].dtype == ours['beta'].dtype == torch.float64
    reference.load_state_dict({k: v for k, v in ours.items() if k not in ('alpha', 'beta')})
    model.load_state_dict(theirs)  # strict: only α/β absent, and those keep their values
    # The reversible stage wrapping the blocks owns nothing: every parameter appears once.
    assert len(list(model.parameters())) == len(list(reference.parameters()))


def test_forward_shapes_and_intermediate_outputs_match_reference_mode():
    """Outputs at out_indices (0-based blocks, negative from the end) as NCHW maps; any size (padded
    to a patch multiple); the reversible training forward equals the reference forward."""
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY, out_indices=(0, 2, -1), alpha=0.6, beta=0.4).train()
    assert model.out_indices == (0, 2, 3)
    images = torch.randn(2, 3, 50, 70)
    outs = model(images)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 4, 5)] * 3
    set_reversible(model, False)
    reference = model(images)
    for got, want in zip(outs, reference):
        assert rel(got.detach(), want.detach()) <= 1e-7


def test_eval_and_no_grad_forward_equal_reference():
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY, out_indices=(1, 3), alpha=0.5, beta=0.5)
    images = torch.randn(2, 3, 64, 64)
    model.train()
    model.reversible = False
    reference = model(images)
    model.reversible = True
    with torch.no_grad():
        no_grad = model(images)
    evaluated = model.eval()(images)
    for a, b, ref in zip(no_grad, evaluated, reference):
        assert rel(a, ref.detach()) <= 1e-5 and rel(b.detach(), ref.detach()) <= 1e-5


# 2. Gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['vit_small_patch16_224', 'vit_small_patch14_reg4_dinov2'])
@pytest.mark.parametrize('drop_path_rate', [0.0, 0.2])
def test_gradients_at_0p3_0p7_are_as_precise_as_reference_mode(arch, drop_path_rate):
    """With the default exact streams at (0.3, 0.7) the reversible backward (activations rebuilt by
    Eq. 2, bit for bit) is as close to float64 truth as ordinary float32 autograd, drop path included
    (masks replayed). ViT-S width, 4 blocks (8 branches in one segment), two outputs."""
    torch.manual_seed(0)
    model = Dr2NetViT(arch, depth=4, img_size=56, out_indices=(1, 3), drop_path_rate=drop_path_rate,
                      alpha=0.3, beta=0.7).train()
    randomize_(model)
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    report = gradient_error(model, images)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert model.reconstruction_ok()
    assert model.reconstruction_errors() == [0.0]


@pytest.mark.parametrize('depth', [12, 24], ids=['vit_s_depth', 'vit_l_depth'])
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_deep_stages_in_one_segment_are_as_precise_as_reference_mode(alpha, beta, depth):
    """ViT-S/16 width with ViT-S depth (12 blocks, 24 branches) and ViT-L depth (24 blocks, 48
    branches), the constructor defaults (exact streams, one segment): within 2x of ordinary float32
    autograd at the start point (1, 0.1) and the end point (0.3, 0.7); the rebuild is bit-exact."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = Dr2NetViT('vit_small_patch16_224', depth=depth, img_size=64, drop_path_rate=0.1,
                      alpha=alpha, beta=beta).train()
    report = gradient_error(model, images)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert model.reconstruction_errors() == [0.0]


@pytest.mark.parametrize('alpha,beta,segment_size', [(0.3, 0.7, 8), (1.0, 0.1, 4)])
def test_twelve_blocks_with_float64_segments_are_as_precise_as_reference_mode(alpha, beta,
                                                                               segment_size):
    """The float64 alternative, ViT-S/16 with all 12 blocks (24 branches): in one segment the inverse
    amplifies rounding past the float32 floor (measured ratio ~7 at (0.3, 0.7)); segments of 8
    branches at (0.3, 0.7) and of 4 at the start point (1, 0.1) stay within 2x of float32 autograd."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    model = Dr2NetViT('vit_small_patch16_224', segment_size=segment_size, drop_path_rate=0.1,
                      alpha=alpha, beta=beta, stream_dtype='float64').train()
    report = gradient_error(model, images)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()


def tiny_parts(monkeypatch, part_elements=2**9):
    """Force the plans of dr2net_mm.branches into tiny parts (query-row runs, token runs)."""
    import functools

    from dr2net_mm import branches
    from dr2net_mm.core.chunks import row_parts
    monkeypatch.setattr(branches, 'row_parts', functools.partial(row_parts,
                                                                 part_elements=part_elements))


@pytest.mark.parametrize('kind,masked', [('heads', False), ('heads', True), ('rows', False)],
                         ids=['by_heads', 'by_heads_attn_mask', 'by_rows_scale_norm'])
def test_attention_recomputed_by_head_groups_or_query_rows(monkeypatch, kind, masked):
    """With parts forced tiny, each attention branch runs by groups of heads, each group by runs of
    query rows (the group's entries of a boolean attn_mask with them); with a norm after the
    attention (timm's scale_attn_norm) qkv(norm1(x)) once and runs of query rows against the
    shared K and V. Either way F equals timm's branch to float32 rounding, and the reversible
    gradients at (0.3, 0.7), drop path and layer scale on, are as close to float64 as ordinary
    autograd, every rebuild bit-exact."""
    import inspect

    from dr2net_mm.branches import head_groups
    from dr2net_mm.core.chunks import FusedPlan, run_branch
    from dr2net_mm.models.vit_timm import attention_takes_mask
    if masked and not attention_takes_mask(timm.models.vision_transformer.Block(8, 2)):
        pytest.skip('timm < 1.0.16: attention takes no mask')
    timm_kwargs = dict(init_values=0.5)
    if kind == 'rows':
        if 'scale_attn_norm' not in inspect.signature(timm.models.VisionTransformer).parameters:
            pytest.skip(f'timm {timm.__version__} has no scale_attn_norm')
        timm_kwargs['scale_attn_norm'] = True
    tiny_parts(monkeypatch)
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY, drop_path_rate=0.2, alpha=0.3, beta=0.7,
                      timm_kwargs=timm_kwargs).train()
    tokens = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(2, 1, 17, 17, generator=torch.Generator().manual_seed(3)) > 0.3) | \
        torch.eye(17, dtype=torch.bool) if masked else None
    args = (mask, ) if masked else ()
    attention = model.sequence.functions[0]
    plan = attention.plan(tokens, *args)
    if kind == 'heads':
        groups = head_groups(2, 17, 4, 8)
        assert isinstance(plan, FusedPlan)
        assert len(groups) > 1 and max(len(runs) for _, runs in groups) > 1, groups
    else:
        assert plan is not None and plan.shared is not None and len(plan.parts) > 4
    with torch.no_grad():
        assert rel(run_branch(attention.eval(), tokens, args), attention(tokens, *args)) <= 1e-6
    attention.train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    if masked:
        class Masked(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = model

            def forward(self, x):
                return self.backbone.forward_tokens(x, out_indices=(3, ), attn_mask=mask)

        report = gradient_error(Masked(), tokens)
    else:
        report = gradient_error(model, images)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert report.reversible_vs_reference.worst <= 1e-5
    assert model.reconstruction_errors() == [0.0]


@pytest.mark.parametrize('kind', ['hidden', 'hidden_silu', 'rows'],
                         ids=['by_hidden_units', 'by_hidden_units_silu', 'by_rows_mlp_norm'])
def test_mlp_recomputed_by_hidden_groups_or_token_runs(monkeypatch, kind):
    """With parts forced tiny, each MLP branch runs by runs of tokens, each by groups of hidden
    units (its share of fc1, the activation, its share of fc2: GELU's backward by hand, SiLU's by
    autograd); with a norm inside the MLP (timm's
    scale_mlp_norm) by runs of tokens through the whole MLP. Either way F equals timm's branch to
    float32 rounding, and the reversible gradients at (0.3, 0.7), drop path and layer scale on, are
    as close to float64 as ordinary autograd, every rebuild bit-exact."""
    import inspect

    from dr2net_mm import branches
    from dr2net_mm.core.chunks import BranchPlan, FusedPlan, run_branch
    timm_kwargs = dict(init_values=0.5, act_layer=nn.SiLU if kind == 'hidden_silu' else None)
    if kind == 'rows':
        if 'scale_mlp_norm' not in inspect.signature(timm.models.VisionTransformer).parameters:
            pytest.skip(f'timm {timm.__version__} has no scale_mlp_norm')
        timm_kwargs['scale_mlp_norm'] = True
    tiny_parts(monkeypatch)
    monkeypatch.setattr(branches, 'MIN_RUN_ROWS', 8)
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY, drop_path_rate=0.2, alpha=0.3, beta=0.7,
                      timm_kwargs=timm_kwargs).train()
    tokens = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(2))
    mlp = model.sequence.functions[1]
    plan = mlp.plan(tokens)
    if kind != 'rows':
        parts = branches.mlp_parts(2 * 17, 32, 128)
        assert isinstance(plan, FusedPlan)
        assert len(parts) > 1 and min(len(units) for _, units in parts) > 1, parts
    else:
        assert isinstance(plan, BranchPlan) and len(plan.parts) > 4
    with torch.no_grad():
        assert rel(run_branch(mlp.eval(), tokens, ()), mlp(tokens)) <= 1e-6
    mlp.train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    report = gradient_error(model, images)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert report.reversible_vs_reference.worst <= 1e-5
    assert model.reconstruction_errors() == [0.0]


# 3. Memory ---------------------------------------------------------------------------------------
@contextmanager
def saved_storages():
    """Every storage saved for backward inside the block -> its size in bytes (what
    ``count_saved_bytes`` sums; kept per storage here so that one forward gives both the total with
    parameters excluded and the total with the input image excluded too)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        yield storages


def test_saved_storages_agrees_with_count_saved_bytes():
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY).train()
    images = torch.randn(2, 3, 64, 64)
    with count_saved_bytes(model.parameters()) as saved:
        model(images)
    with saved_storages() as storages:
        model(images)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert saved.total == sum(n for ptr, n in storages.items() if ptr not in params)
    assert images.untyped_storage().data_ptr() in storages  # the patch convolution keeps the image


@pytest.fixture(scope='module')
def saved_bytes_512():
    """Bytes saved for backward by one training forward at 512², batch 1, parameters excluded, for
    timm's ViT-S/16 (forward_features + NCHW reshape), the same with timm's gradient checkpointing,
    and Dr2NetViT at (1, 0.1) with default settings. Each entry: (all, input image excluded)."""
    images = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))

    def measure(model, run):
        with saved_storages() as storages:
            run(images)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        total = sum(n for ptr, n in storages.items() if ptr not in params)
        return total, total - storages.get(images.untyped_storage().data_ptr(), 0)

    results = {}
    torch.manual_seed(0)
    reference = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0,
                                  global_pool='', dynamic_img_size=True).train()
    results['timm'] = measure(reference, lambda x: timm_feature_map(reference, x, 16).contiguous())
    reference.set_grad_checkpointing()
    results['timm_cp'] = measure(reference,
                                 lambda x: timm_feature_map(reference, x, 16).contiguous())
    for key, depth, indices, options in (
            ('ours', 12, (11, ), {}), ('ours_4_outputs', 12, (3, 5, 7, 11), {}),
            ('ours_24_blocks', 24, (23, ), {}), ('ours_end_point', 12, (11, ), dict(beta=0.7)),
            ('ours_float64', 12, (11, ), dict(stream_dtype='float64')),
            ('ours_float64_24_blocks', 24, (23, ), dict(stream_dtype='float64'))):
        model = Dr2NetViT('vit_small_patch16_224', depth=depth, out_indices=indices,
                          **options).train()
        results[key] = measure(model, model)
    return results


def test_saved_bytes_are_a_fraction_of_timm(saved_bytes_512):
    """Target: <= 10% of timm's ViT-S, with one output or four (the intermediate outputs come out of
    the same reversible stage and are not kept)."""
    timm_total = saved_bytes_512['timm'][0]
    for key in ('ours', 'ours_4_outputs'):
        assert saved_bytes_512[key][0] <= 0.10 * timm_total


def test_saved_activations_are_under_40_percent_of_timm_checkpointing(saved_bytes_512):
    """Target: <= 40% of timm's own gradient checkpointing. Counted on activations: parameters and
    the input batch (the caller's tensor, kept by both models' patch convolutions and alive through
    the training step anyway) excluded. Met by float64 streams in one segment (imprecise at the
    start point) and by the default exact streams at the end point β = 0.7; missed by exact streams
    at the start point β = 0.1, whose buffer adds log2(10) bits per element and branch (about 50%,
    see docs/results.md)."""
    cp_activations = saved_bytes_512['timm_cp'][1]
    for key in ('ours_float64', 'ours_end_point'):
        assert saved_bytes_512[key][1] <= 0.40 * cp_activations


def test_saved_bytes_are_the_image_and_the_final_streams_only(saved_bytes_512):
    """What the backbone keeps: the caller's image once (not a padded copy), the final streams x_n
    (float32 output + 4-byte remainder) and y_n (8 bytes): 16 bytes per token and channel, plus the
    final norm's per-token statistics; with exact streams also the β buffer, within 1.5x of
    log2(1/β) bits per token, channel and branch. Nothing else per block."""
    image_bytes = 3 * 512 * 512 * 4
    elements = (1 + 32 * 32) * 384
    streams = 16 * elements
    for key, branches, beta in (('ours', 24, 0.1), ('ours_4_outputs', 24, 0.1),
                                ('ours_24_blocks', 48, 0.1), ('ours_end_point', 24, 0.7),
                                ('ours_float64', 24, 1.0), ('ours_float64_24_blocks', 48, 1.0)):
        total, activations = saved_bytes_512[key]
        assert total == activations + image_bytes
        bound = branches * math.log2(1 / beta) / 8 * elements
        assert streams + bound <= activations <= 1.01 * streams + 1.5 * bound, key
    depth12, depth24 = (saved_bytes_512[k][0] for k in ('ours_float64', 'ours_float64_24_blocks'))
    assert abs(depth24 - depth12) <= 0.10 * depth12


# 4. Inside mmseg ---------------------------------------------------------------------------------
def test_trains_one_step_inside_mmseg_encoder_decoder():
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.structures import SegDataSample
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.7, 116.3, 103.5],
                               std=[58.4, 57.1, 57.4], bgr_to_rgb=True, size=(64, 64)),
        backbone=dict(type='Dr2NetViT', arch=None, embed_dims=32, depth=4, num_heads=4, patch_size=8,
                      img_size=64, out_indices=(0, 1, 2, 3), drop_path_rate=0.1, alpha=1.0,
                      beta=0.1),
        neck=dict(type='MultiLevelNeck', in_channels=[32] * 4, out_channels=16,
                  scales=[4, 2, 1, 0.5]),
        decode_head=dict(type='UPerHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=16, dropout_ratio=0.1, num_classes=3,
                         norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                          loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):  # as a Runner with an mmseg config does
        segmentor = SEG_MODELS.build(cfg)
    segmentor.init_weights()
    assert isinstance(segmentor.backbone, Dr2NetViT)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                data_samples=samples)
    optim = OptimWrapper(torch.optim.SGD(segmentor.parameters(), lr=0.1))
    before = {k: v.detach().clone() for k, v in segmentor.backbone.named_parameters()}
    segmentor.train()
    losses = segmentor.train_step(data, optim)
    assert torch.isfinite(losses['loss'])
    changed = [k for k, v in segmentor.backbone.named_parameters() if not torch.equal(v, before[k])]
    assert 'blocks.0.attn.qkv.weight' in changed and 'blocks.3.mlp.fc2.weight' in changed
    assert 'patch_embed.proj.weight' in changed and 'pos_embed' in changed
    assert segmentor.backbone.reconstruction_errors()[0] is not None  # the reversible path ran


# 5. The token entry point ------------------------------------------------------------------------
class TokenModel(nn.Module):
    """Point-cloud style use: tokens and a learned positional embedding in, block outputs out."""

    def __init__(self, backbone: Dr2NetViT, tokens: int):
        super().__init__()
        self.backbone = backbone
        self.pos = nn.Parameter(torch.randn(1, tokens, backbone.embed_dims) * 0.5)

    def forward(self, tokens):
        return self.backbone.forward_tokens(tokens, self.pos, out_indices=(1, 3))


def test_forward_tokens_trains_and_matches_reference_mode():
    torch.manual_seed(0)
    backbone = Dr2NetViT(**TINY, drop_path_rate=0.1, alpha=0.5, beta=0.5)
    model = TokenModel(backbone, tokens=40).train()
    tokens = torch.randn(3, 40, 32)
    torch.manual_seed(1)
    outs = model(tokens)
    assert [tuple(o.shape) for o in outs] == [(3, 40, 32)] * 2
    set_reversible(model, False)
    torch.manual_seed(1)
    reference = model(tokens)
    set_reversible(model, True)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(outs, reference))
    report = gradient_error(model, tokens)
    assert backbone.reconstruction_errors()[0] is not None  # the reversible backward ran
    assert report.reversible_vs_reference.worst <= 1e-6, report.as_dict()
    assert report.reversible_vs_reference.per_parameter['pos'] <= 1e-6
    # and it trains: one SGD step changes the blocks and the positional embedding
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(o.square().mean() for o in model(tokens)).backward()
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before['pos'], after['pos'])
    assert not torch.equal(before['backbone.blocks.0.attn.qkv.weight'],
                           after['backbone.blocks.0.attn.qkv.weight'])


TIMM_TAKES_MASK = Version(timm.__version__) >= Version('1.0.16')  # timm's Attention(x, attn_mask)


@pytest.mark.skipif(not TIMM_TAKES_MASK, reason='timm < 1.0.16: its attention takes no mask')
def test_forward_tokens_prefix_tokens_and_attention_mask():
    """With prefix_tokens the class token goes in front (and out of the result); an attention mask
    that hides padded tokens leaves the real tokens' outputs as without the padding."""
    torch.manual_seed(0)
    model = Dr2NetViT(**TINY, alpha=0.6, beta=0.4).eval()
    tokens = torch.randn(2, 10, 32)
    padded = torch.cat([tokens, torch.randn(2, 3, 32)], dim=1)
    keep = torch.ones(2, 1, 1, 1 + 13, dtype=torch.bool)
    keep[..., -3:] = False
    with torch.no_grad():
        (plain, ) = model.forward_tokens(tokens, prefix_tokens=True)
        (masked, ) = model.forward_tokens(padded, attn_mask=keep, prefix_tokens=True)
        (no_prefix, ) = model.forward_tokens(tokens)
    assert plain.shape == (2, 10, 32) and masked.shape == (2, 13, 32)
    assert (masked[:, :10] - plain).abs().max() <= 1e-5
    assert not torch.allclose(plain, no_prefix)


@pytest.mark.skipif(TIMM_TAKES_MASK, reason='timm >= 1.0.16 takes the mask')
def test_attention_mask_on_an_older_timm_is_refused_by_version():
    model = Dr2NetViT(**TINY).eval()
    keep = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=f'attn_mask needs timm >= 1.0.16.*timm {timm.__version__}'):
        model.forward_tokens(torch.randn(1, 4, 32), attn_mask=keep)


# Checkpoints ---------------------------------------------------------------------------------
def test_alpha_beta_round_trip_through_a_checkpoint():
    torch.manual_seed(0)
    source = Dr2NetViT(**TINY)
    source.set_coefficients(0.6, 0.4)
    assert source.sequence.alpha == 0.6 and source.sequence.beta == 0.4
    target = Dr2NetViT(**TINY)  # constructed at (1, 0.1)
    target.load_state_dict(source.state_dict())
    assert target.coefficients == (0.6, 0.4)
    assert (target.sequence.alpha, target.sequence.beta) == (0.6, 0.4)
    assert target.alpha.item() == 0.6 and target.beta.item() == 0.4
    # a checkpoint without α/β (timm's, mmseg's) keeps the current values
    target.load_state_dict({k: v for k, v in source.state_dict().items()
                            if k not in ('alpha', 'beta')})
    assert target.coefficients == (0.6, 0.4)


def mmseg_vit(**kwargs):
    from mmseg.models.backbones import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=16, embed_dims=32, num_layers=3, num_heads=4,
                              out_indices=(0, 2), final_norm=True, patch_bias=False, **kwargs)
    model.init_weights()
    with torch.no_grad():
        model.pos_embed.normal_()
        model.cls_token.normal_()
    model.eval()  # mmseg's train() returns None, so no chaining
    return model


@pytest.mark.parametrize('size', [(64, 64), (96, 80)])
def test_mmseg_vision_transformer_checkpoint_converts(tmp_path, size):
    """An mmseg segmentor checkpoint (keys under backbone., layers.N.ln1, attn.attn.in_proj_weight,
    ffn.layers.0.0, patch_embed.projection without bias, final norm ln1) gives the same features as
    mmseg's VisionTransformer: LayerNorm eps 1e-5 as mmseg's, and mmseg's position-embedding
    resizing (bicubic, no antialias) at other sizes."""
    reference = mmseg_vit()
    checkpoint = {'state_dict': {**{f'backbone.{k}': v for k, v in reference.state_dict().items()},
                                 'decode_head.conv_seg.weight': torch.zeros(3, 8, 1, 1)}}
    path = save(tmp_path, checkpoint)
    model = Dr2NetViT(arch=None, embed_dims=32, depth=3, num_heads=4, patch_size=16, img_size=64,
                      out_indices=(0, 2), norm_eps=1e-5, pos_embed_antialias=False, alpha=1.0,
                      beta=0.0, reversible=False, init_cfg=dict(type='Pretrained', checkpoint=path))
    report = model.load_pretrained(path)
    assert report.format == 'mmseg'
    assert report.missing_keys == [] and report.unexpected_keys == [] and not report.mismatched_keys
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference(images)
        got = model.eval()(images)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_mmpretrain_layout_converts():
    """mmpretrain's VisionTransformer names (layers.N.attn.qkv / proj, layer scale attn.gamma1.weight
    and ffn.gamma2.weight, ffn.layers.0.0 / 1, ln1 / ln2, final ln1, patch_embed.projection) map
    onto timm's; the converted model computes the same features."""
    reference = timm_reference('vit_small_patch14_dinov2', depth=2, img_size=56)
    renames = [('blocks.', 'layers.'), ('.norm1.', '.ln1.'), ('.norm2.', '.ln2.'),
               ('.ls1.gamma', '.attn.gamma1.weight'), ('.ls2.gamma', '.ffn.gamma2.weight'),
               ('.mlp.fc1.', '.ffn.layers.0.0.'), ('.mlp.fc2.', '.ffn.layers.1.'),
               ('patch_embed.proj.', 'patch_embed.projection.')]
    mmpretrain = {}
    for key, value in reference.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        mmpretrain['ln1.' + key[5:] if key.startswith('norm.') else key] = value
    assert detect_checkpoint_format(mmpretrain) == 'mmpretrain'
    model = Dr2NetViT('vit_small_patch14_dinov2', depth=2, img_size=56, alpha=1.0, beta=0.0,
                      reversible=False).eval()
    report = model.load_pretrained({'state_dict': {f'backbone.{k}': v for k, v in mmpretrain.items()}})
    assert report.missing_keys == [] and report.unexpected_keys == []
    images = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = timm_feature_map(reference, images, 14)
        assert (model(images)[0] - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_checkpoint_filter_drops_heads_and_fits_the_model():
    """timm classifier checkpoints lose their head; the position embedding is resampled to the
    model's pretraining grid; final_norm=False drops the final norm."""
    reference = timm.create_model('vit_small_patch16_224', pretrained=False, depth=1, num_classes=5)
    state_dict = reference.state_dict()
    assert 'head.weight' in state_dict
    model = Dr2NetViT('vit_small_patch16_224', depth=1, img_size=128, final_norm=False)
    filtered = checkpoint_filter_fn({'model': state_dict}, model)
    assert not any(k.startswith(('head.', 'norm.')) for k in filtered)
    assert filtered['pos_embed'].shape == model.pos_embed.shape == (1, 1 + 8 * 8, 384)
    assert set(filtered) == set(model.state_dict()) - {'alpha', 'beta'}


# Arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='vit_smal_patch16_224'), ValueError, r"vit_smal_patch16_224.*did you mean"),
    (dict(arch='resnet18'), ValueError, 'resnet18.*VisionTransformer'),
    (dict(arch='vit_base_patch16_rpn_224', depth=1), ValueError, 'ResPostBlock'),
    (dict(TINY, out_indices=(1, 4)), ValueError, r'\[4\].*depth=4'),
    (dict(TINY, out_indices=(2, 1)), ValueError, 'increasing'),
    (dict(TINY, out_indices=2.0), TypeError, 'out_indices'),
    (dict(TINY, beta=0.0), ValueError, 'beta=0.0 must be > 0 when reversible=True'),
    (dict(TINY, alpha=1.5), ValueError, 'alpha=1.5'),
    (dict(TINY, segment_size=0), ValueError, 'segment_size=0'),
    (dict(TINY, stream_dtype='float16'), ValueError, "stream_dtype='float16'"),
    (dict(TINY, reversible='yes'), TypeError, 'reversible'),
    (dict(arch=None, embed_dims=32, depth=2), ValueError, r"\['num_heads'\] missing"),
    (dict(TINY, num_heads=5), ValueError, 'embed_dims=32 is not divisible by num_heads=5'),
    (dict(TINY, timm_kwargs=dict(num_classes=10)), ValueError, 'num_classes'),
    (dict(TINY, timm_kwargs=dict(embed_dim=64)), ValueError, "embed_dims"),
    (dict(TINY, drop_path_rate=1.0), ValueError, 'drop_path_rate=1.0'),
    (dict(TINY, img_size=(64, )), ValueError, 'img_size'),
    (dict(TINY, pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')),
     ValueError, 'init_cfg and pretrained'),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dr2NetViT(**kwargs)


def test_bad_inputs_and_coefficients_raise_clear_errors():
    model = Dr2NetViT(**TINY, dynamic_img_pad=False)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match='not a multiple of the patch size'):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r'tokens must have shape \(B, N, 32\)'):
        model.forward_tokens(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match='pos_embed must have shape'):
        model.forward_tokens(torch.randn(2, 5, 32), torch.randn(2, 6, 32))
    with pytest.raises(ValueError, match='beta=0.0 must be > 0'):
        model.set_coefficients(1.0, 0.0)
    model.reversible = False
    model.set_coefficients(1.0, 0.0)  # fine in reference mode
    with pytest.raises(ValueError, match='beta=0.0'):
        model.reversible = True


def test_layer_depth_for_layerwise_lr_decay():
    """mmpretrain's get_layer_depth protocol: embeddings 0, block b at b + 1, the rest at depth + 1."""
    model = Dr2NetViT(**TINY)
    assert model.get_layer_depth('backbone.pos_embed', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.patch_embed.proj.weight', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.blocks.2.mlp.fc1.weight', 'backbone.') == (3, 6)
    assert model.get_layer_depth('backbone.norm.weight', 'backbone.') == (5, 6)
    assert model.get_layer_depth('decode_head.conv_seg.weight', 'backbone.') == (5, 6)


def test_builds_from_a_config_dict_in_the_root_registry():
    from mmengine.registry import MODELS
    model = MODELS.build(dict(type='Dr2NetViT', arch=None, embed_dims=32, depth=2, num_heads=4,
                              patch_size=16, img_size=64, out_indices=[0, 1], stream_dtype='float32',
                              segment_size=2, alpha=0.8, beta=0.2))
    assert isinstance(model, Dr2NetViT)
    assert model.stream_dtype == torch.float32 and model.sequence.segment_size == 2
    assert model.coefficients == (0.8, 0.2) and model.out_indices == (0, 1)
