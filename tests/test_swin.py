"""Spec of Dr2NetSwin (dr2net_mm.models.swin): a reversible, checkpoint-compatible mmdet Swin backbone.

Run ``pytest tests/test_swin.py -s`` to see the measured saved bytes and gradient errors.
"""
import copy
import inspect
import math
import logging

import pytest
import torch
from mmdet.models.backbones.swin import SwinTransformer
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_checkpoint

import dr2net_mm  # noqa: F401  (registers Dr2NetSwin)
from dr2net_mm.core import count_saved_bytes, gradient_error, set_reversible
from dr2net_mm.models.swin import Dr2NetSwin
from dr2net_mm.models.swin_checkpoint import (checkpoint_filter_fn, detect_checkpoint_format,
                                              resize_rel_pos_bias_table)

# A small Swin (fast on CPU) with every structural feature: 4 stages, shifted windows, padding.
SMALL = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def mmdet_swin(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SwinTransformer(**kwargs)
    model.init_weights()
    return model


def dr2net_from(reference, **kwargs):
    """A Dr2NetSwin with ``reference``'s weights (strict load: same layout but α, β)."""
    model = Dr2NetSwin(**kwargs)
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


def max_abs_diff(outs_a, outs_b):
    assert len(outs_a) == len(outs_b)
    for a, b in zip(outs_a, outs_b):
        assert a.shape == b.shape
    return max((a.detach() - b.detach()).abs().max().item() for a, b in zip(outs_a, outs_b))


def weighted_loss(outs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# 1. At (α, β) = (1, 0) it is mmdet's Swin ---------------------------------------------------------
@pytest.mark.parametrize('abs_pos', [False, True], ids=['plain', 'abs_pos_embed'])
def test_alpha1_beta0_reference_equals_mmdet_swin(abs_pos):
    """Same weights, 225×333 input (not a multiple of the window anywhere), drop path on: train mode
    with grad gives the same outputs and gradients, eval/no_grad the same outputs."""
    kwargs = dict(SMALL, drop_path_rate=0.2, use_abs_pos_embed=abs_pos,
                  pretrain_img_size=(228, 336))  # the padded input's patch grid (abs pos embed)
    reference = mmdet_swin(**kwargs)
    model = dr2net_from(reference, **kwargs, alpha=1.0, beta=0.0, reversible=False)
    x = torch.randn(2, 3, 225, 333)

    reference.train(), model.train()
    results = []
    for net in (reference, model):
        torch.manual_seed(1)  # same drop-path masks
        xg = x.clone().requires_grad_(True)
        outs = net(xg)
        weighted_loss(outs).backward()
        results.append((outs, xg.grad, {n: p.grad for n, p in net.named_parameters()}))
    (ref_outs, ref_gx, ref_grads), (outs, gx, grads) = results
    assert [tuple(o.shape) for o in outs] == [(2, 16, 57, 84), (2, 32, 29, 42), (2, 64, 15, 21),
                                               (2, 128, 8, 11)]
    assert max_abs_diff(outs, ref_outs) <= 1e-5
    assert rel(gx, ref_gx) <= 1e-5
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert rel(grads[name], ref_grads[name]) <= 1e-4, name

    reference.eval(), model.eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) <= 1e-5


def test_no_grad_forward_is_plain_and_bitwise_mmdet():
    """Without gradients there is no bookkeeping: nothing saved, streams in the input dtype, and at
    (1, 0) the very same float operations as mmdet."""
    reference = mmdet_swin(**SMALL)
    model = dr2net_from(reference, **SMALL, alpha=1.0, beta=0.0, reversible=False).eval()
    reference.eval()
    x = torch.randn(1, 3, 100, 120)
    with torch.no_grad(), count_saved_bytes() as saved:
        outs = model(x)
    assert saved.total == 0 and all(o.grad_fn is None for o in outs)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outs, reference(x)))


def test_reversible_forward_equals_reference_and_default_is_the_paper_start_point():
    model = Dr2NetSwin(**SMALL)
    assert model.coefficients == (1.0, 0.1) and model.reversible
    assert model.stream_dtype == 'exact'
    model.set_coefficients(0.3, 0.7)
    x = torch.randn(1, 3, 64, 96, requires_grad=True)
    torch.manual_seed(0)
    reversible_outs = model(x)
    set_reversible(model, False)
    torch.manual_seed(0)
    assert max_abs_diff(model(x), reversible_outs) <= 1e-6


# 2. Registries and drop-in construction ------------------------------------------------------------
def test_built_from_mmdet_and_mmseg_registries():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    cfg = dict(type='Dr2NetSwin', **SMALL, out_indices=(1, 3), alpha=1.0, beta=0.2,
               stream_dtype='float32')
    for registry in (MMDET_MODELS, MMSEG_MODELS):
        model = registry.build(copy.deepcopy(cfg))
        assert isinstance(model, Dr2NetSwin)
        assert model.coefficients == (1.0, 0.2) and model.stream_dtype == torch.float32
        outs = model(torch.randn(1, 3, 64, 64))
        assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8), (1, 128, 2, 2)]


def test_same_arguments_defaults_and_state_dict_as_mmdet():
    ours = inspect.signature(Dr2NetSwin.__init__).parameters
    theirs = inspect.signature(SwinTransformer.__init__).parameters
    for name, param in theirs.items():
        assert name in ours and ours[name].default == param.default, name
    extra = {n: p.default for n, p in ours.items() if n not in theirs}
    assert extra == dict(alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact',
                         segment_size=None)

    reference, model = SwinTransformer(**SMALL), Dr2NetSwin(**SMALL)
    ref_sd, sd = reference.state_dict(), model.state_dict()
    assert [k for k in sd if k not in ('alpha', 'beta')] == list(ref_sd)
    assert sd['alpha'].item() == 1.0 and sd['beta'].item() == 0.1
    assert all(sd[k].shape == v.shape for k, v in ref_sd.items())
    # The sequences own nothing, but they are submodules (train/eval, model.modules()).
    assert len(model.sequences) == 4 and all(e in set(model.modules()) for e in model.sequences)
    assert [len(e.functions) for e in model.sequences] == [4, 4, 4, 4]


def test_mmseg_swin_has_the_same_layout_and_outputs():
    from mmseg.models.backbones.swin import SwinTransformer as MMSegSwinTransformer
    torch.manual_seed(0)
    reference = MMSegSwinTransformer(**SMALL)
    reference.init_weights()
    model = dr2net_from(reference, **SMALL, alpha=1.0, beta=0.0, reversible=False).eval()
    reference.eval()
    x = torch.randn(1, 3, 99, 131)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), reference(x)))


def test_mmseg_segmentor_passes_pretrained_to_the_backbone(tmp_path):
    from mmseg.registry import MODELS as MMSEG_MODELS
    source = mmdet_swin(**SMALL)
    path = str(tmp_path / 'swin.pth')
    torch.save(source.state_dict(), path)
    with DefaultScope.overwrite_default_scope('mmseg'):  # as a Runner with an mmseg config does
        segmentor = MMSEG_MODELS.build(ConfigDict(  # what a config file gives
            type='EncoderDecoder', pretrained=path,
            backbone=dict(type='Dr2NetSwin', **SMALL, alpha=1.0, beta=0.0, reversible=False),
            decode_head=dict(type='FCNHead', in_channels=128, in_index=3, channels=8,
                             num_convs=1, num_classes=3)))
    segmentor.init_weights()
    x = torch.randn(1, 3, 64, 64)
    source.eval(), segmentor.backbone.eval()
    with torch.no_grad():
        assert max_abs_diff(segmentor.backbone(x), source(x)) <= 1e-5


# 3. Checkpoints ------------------------------------------------------------------------------------
# timm 1.0 layout; small, and with every stage's grid larger than (and a multiple of) the window:
# timm and the official code drop the shift when a stage fits in one window, mmdet always shifts.
TIMM_KW = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, img_size=256)
FROM_TIMM = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)


@pytest.fixture(scope='module')
def timm_swin():
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    model = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, **TIMM_KW).eval()
    with torch.no_grad():  # non-trivial norms and biases everywhere
        for name, p in model.named_parameters():
            if name.endswith('bias') or 'norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def official_state_dict(timm_model):
    """The official Swin release layout, built from timm's: downsample at the end of stage N,
    ``head.weight``, plus the buffers the release files carry (relative_position_index, attn_mask)."""
    out = {}
    for key, value in timm_model.state_dict().items():
        if key.startswith('layers.') and '.downsample.' in key:
            stage = int(key.split('.')[1])
            key = key.replace(f'layers.{stage}.', f'layers.{stage - 1}.', 1)
        out[key.replace('head.fc.', 'head.')] = value
    for name, buffer in timm_model.named_buffers():
        if buffer is not None and name.endswith(('relative_position_index', 'attn_mask')):
            out[name] = buffer
    return out


def timm_features(timm_model, model, x):
    """timm's stage outputs (NCHW) through ``model``'s output norms: what Dr2NetSwin must return."""
    with torch.no_grad():
        feats = timm_model.forward_intermediates(x, intermediates_only=True)
        return [getattr(model, f'norm{i}')(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                for i, f in enumerate(feats)]


def load_and_run(init_cfg, x, **kwargs):
    model = Dr2NetSwin(**kwargs, alpha=1.0, beta=0.0, reversible=False, init_cfg=init_cfg)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        return model, model(x)


def test_loads_timm_state_dict(tmp_path, timm_swin):
    path = str(tmp_path / 'timm_swin.pth')
    torch.save(timm_swin.state_dict(), path)
    assert detect_checkpoint_format(timm_swin.state_dict()) == 'timm'
    x = torch.randn(1, 3, 256, 256)
    model, outs = load_and_run(dict(type='Pretrained', checkpoint=path), x, **FROM_TIMM)
    assert max_abs_diff(outs, timm_features(timm_swin, model, x)) <= 1e-5


def test_loads_official_release_file_like_mmdet(tmp_path, timm_swin):
    """convert_weights=True as in mmdet configs; equal to mmdet loading the same file, and to timm."""
    path = str(tmp_path / 'swin_tiny_official.pth')
    torch.save({'model': official_state_dict(timm_swin)}, path)
    x = torch.randn(1, 3, 256, 256)
    init_cfg = ConfigDict(type='Pretrained', checkpoint=path)
    model, outs = load_and_run(init_cfg, x, **FROM_TIMM, convert_weights=True)
    reference = SwinTransformer(**FROM_TIMM, convert_weights=True, init_cfg=init_cfg)
    reference.init_weights()
    reference.eval()
    with torch.no_grad():
        assert max_abs_diff(outs, reference(x)) <= 1e-5
    assert max_abs_diff(outs, timm_features(timm_swin, model, x)) <= 1e-5


def test_loads_detector_checkpoint_and_bare_backbone(tmp_path):
    source = mmdet_swin(**SMALL, seed=3)
    source.eval()
    detector = {'meta': {'epoch': 12}, 'state_dict': {
        **{'backbone.' + k: v for k, v in source.state_dict().items()},
        'neck.lateral_convs.0.conv.weight': torch.zeros(8, 16, 1, 1)}}
    torch.save(detector, tmp_path / 'detector.pth')
    torch.save(source.state_dict(), tmp_path / 'backbone.pth')
    x = torch.randn(1, 3, 100, 80)
    with torch.no_grad():
        expected = source(x)
    for name in ('detector.pth', 'backbone.pth'):
        model, outs = load_and_run(dict(type='Pretrained', checkpoint=str(tmp_path / name)), x,
                                   **SMALL)
        assert max_abs_diff(outs, expected) <= 1e-5, name


class NotAWeight:
    """A pickled Python object, like the message-hub buffers of an MMEngine training checkpoint."""


@pytest.mark.skipif(tuple(int(v) for v in torch.__version__.split('.')[:2]) < (2, 6),
                    reason='torch < 2.6 unpickles everything by default')
def test_pretrained_file_with_python_objects_is_refused_by_name(tmp_path):
    source = mmdet_swin(**SMALL)
    path = str(tmp_path / 'training_checkpoint.pth')
    torch.save({'meta': {'hub': NotAWeight()}, 'state_dict': source.state_dict()}, path)
    with pytest.raises(ValueError, match='training_checkpoint.pth.*weights_only=True'):
        load_and_run(dict(type='Pretrained', checkpoint=path), torch.randn(1, 3, 32, 32), **SMALL)


def test_missing_pretrained_file_names_the_option_and_the_way_out(tmp_path):
    path = str(tmp_path / 'no_such_swin.pth')
    with pytest.raises(FileNotFoundError, match=r"init_cfg.checkpoint='.*no_such_swin.pth'.*"
                       r"model.backbone.init_cfg.checkpoint=PATH.*init_cfg=None"):
        load_and_run(dict(type='Pretrained', checkpoint=path), torch.randn(1, 3, 32, 32), **SMALL)


def test_load_reports_missing_and_unexpected_keys(timm_swin):
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()  # where init_weights logs (mmengine's Runner sets it)
    logger.addHandler(handler)
    try:
        report = Dr2NetSwin(**FROM_TIMM).load_pretrained(timm_swin.state_dict())
    finally:
        logger.removeHandler(handler)
    assert report.format == 'timm'
    # timm has one final norm, mmdet one per output: nothing else may be missing or left over.
    assert report.missing_keys == [f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')]
    assert report.unexpected_keys == ['norm.weight', 'norm.bias'] and report.mismatched_keys == []
    text = '\n'.join(r.getMessage() for r in records)
    assert '8 missing keys (left as initialised): norm0.weight, norm0.bias' in text
    assert '2 unused checkpoint keys: norm.weight, norm.bias' in text


def test_relative_position_tables_are_resized_for_another_window(tmp_path, timm_swin):
    official = official_state_dict(timm_swin)  # window 4
    kwargs = dict(FROM_TIMM, window_size=6)
    model = Dr2NetSwin(**kwargs)
    report = model.load_pretrained({'model': official})
    assert report.mismatched_keys == [] and report.unexpected_keys == ['norm.weight', 'norm.bias']
    key = 'layers.2.blocks.1.attn.relative_position_bias_table'
    table = model.stages[2].blocks[1].attn.w_msa.relative_position_bias_table
    assert official[key].shape == (49, 2) and table.shape == (121, 2)
    expected = torch.nn.functional.interpolate(
        official[key].t().reshape(1, 2, 7, 7), size=(11, 11), mode='bicubic').reshape(2, 121).t()
    assert torch.allclose(table.detach(), expected)
    assert resize_rel_pos_bias_table(official[key], 49).equal(official[key])
    model(torch.randn(1, 3, 96, 96))  # and the model runs


def test_absolute_position_embedding_is_resized_to_other_grids():
    """mmdet only accepts inputs on the pretraining patch grid; here other grids get the embedding
    resized (bicubic), in the forward and when loading a checkpoint made for another grid."""
    source = Dr2NetSwin(**SMALL, use_abs_pos_embed=True, pretrain_img_size=64)  # 16×16 grid
    model = Dr2NetSwin(**SMALL, use_abs_pos_embed=True, pretrain_img_size=96)  # 24×24 grid
    torch.nn.init.normal_(source.absolute_pos_embed)
    report = model.load_pretrained(source.state_dict())
    assert report.mismatched_keys == [] and report.missing_keys == []
    grid = source.absolute_pos_embed.reshape(1, 16, 16, 16).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(24, 24), mode='bicubic')
    assert torch.allclose(model.absolute_pos_embed, expected.flatten(2).transpose(1, 2))
    outs = source(torch.randn(1, 3, 80, 72))  # a 20×18 grid
    assert outs[0].shape == (1, 16, 20, 18)


def test_alpha_beta_round_trip_through_a_checkpoint(tmp_path):
    trained = Dr2NetSwin(**SMALL)
    trained.set_coefficients(0.5, 0.5)
    assert trained.alpha.item() == 0.5 and trained.beta.item() == 0.5
    path = str(tmp_path / 'dr2net.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in trained.state_dict().items()}}, path)

    def assert_coefficients(model, alpha, beta):
        assert model.coefficients == (alpha, beta)
        assert (model.alpha.item(), model.beta.item()) == (alpha, beta)
        assert all((e.alpha, e.beta) == (alpha, beta) for e in model.sequences)

    fresh = Dr2NetSwin(**SMALL, init_cfg=dict(type='Pretrained', checkpoint=path))
    assert_coefficients(fresh, 1.0, 0.1)
    fresh.init_weights()
    assert_coefficients(fresh, 0.5, 0.5)

    fresh = Dr2NetSwin(**SMALL)
    fresh.load_state_dict(trained.state_dict())  # torch's loader
    assert_coefficients(fresh, 0.5, 0.5)
    fresh = Dr2NetSwin(**SMALL)
    load_checkpoint(fresh, path, revise_keys=[(r'^backbone\.', '')])  # mmengine's loader
    assert_coefficients(fresh, 0.5, 0.5)


def test_engines_follow_buffer_writes_such_as_an_ema_copy():
    from mmengine.model import ExponentialMovingAverage
    model = Dr2NetSwin(**SMALL)
    ema = ExponentialMovingAverage(model)  # a deep copy whose buffers are copied from the model
    model.set_coefficients(0.5, 0.6)
    ema.update_parameters(model)
    ema.module.eval()
    with torch.no_grad():
        ema(torch.randn(1, 3, 32, 32))
    assert ema.module.coefficients == (0.5, 0.6)
    assert all((e.alpha, e.beta) == (0.5, 0.6) for e in ema.module.sequences)
    model.beta.fill_(0.0)  # invalid for a reversible model: refused at the next forward
    with pytest.raises(ValueError, match=r'beta=0\.0 must be > 0'):
        model(torch.randn(1, 3, 32, 32))


def test_mmdet_checkpoint_without_alpha_beta_keeps_the_constructor_values():
    source = SwinTransformer(**SMALL)
    model = Dr2NetSwin(**SMALL, alpha=0.3, beta=0.7)
    result = model.load_state_dict(source.state_dict(), strict=True)  # no missing alpha/beta
    assert not result.missing_keys and not result.unexpected_keys
    assert model.coefficients == (0.3, 0.7)
    assert all((e.alpha, e.beta) == (0.3, 0.7) for e in model.sequences)


def test_loading_coefficients_invalid_for_the_model_fails_clearly():
    reference_mode = Dr2NetSwin(**SMALL, alpha=1.0, beta=0.0, reversible=False)
    model = Dr2NetSwin(**SMALL)  # reversible: needs beta > 0
    with pytest.raises(RuntimeError, match=r'beta=0\.0 must be > 0'):
        model.load_state_dict(reference_mode.state_dict())
    assert model.coefficients == (1.0, 0.1) and model.sequences[0].beta == 0.1


def test_conversion_functions_are_pure_and_detect_the_layout(timm_swin):
    timm_sd = timm_swin.state_dict()
    before = {k: v.clone() for k, v in timm_sd.items()}
    converted = checkpoint_filter_fn(timm_sd)
    assert all(torch.equal(timm_sd[k], v) for k, v in before.items()) and len(timm_sd) == len(before)
    assert detect_checkpoint_format(converted) == 'mmdet'
    assert detect_checkpoint_format(official_state_dict(timm_swin)) == 'official'
    assert set(converted) == set(Dr2NetSwin(**FROM_TIMM).state_dict()) - {
        'alpha', 'beta', *[f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')],
        *[k for k in SwinTransformer(**FROM_TIMM).state_dict() if 'relative_position_index' in k]
    } | {'norm.weight', 'norm.bias'}
    with pytest.raises(ValueError, match='does not look like a Swin'):
        detect_checkpoint_format({'conv1.weight': torch.zeros(1)})


# 4. Gradients --------------------------------------------------------------------------------------
def swin_t_for_gradients(**kwargs):
    """Swin-T shape with drop path 0.2 (gradient_error draws the same masks in every run)."""
    torch.manual_seed(0)
    model = Dr2NetSwin(**SWIN_T, drop_path_rate=0.2, **kwargs)
    model.init_weights()
    return model.train(), torch.randn(1, 3, 64, 64)


def describe(report, model):
    return (f'reversible vs truth {report.reversible_vs_truth.worst:.3g}, reference vs truth '
            f'{report.reference_vs_truth.worst:.3g} (ratio {report.ratio_to_floor:.3g}); '
            f'reconstruction errors {[f"{e:.2g}" for e in model.reconstruction_errors()]}')


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_gradients_as_precise_as_ordinary_autograd(alpha, beta):
    """Swin-T shape, drop path 0.2, train mode, the constructor defaults (exact streams, one segment
    per stage): at the paper's start point (1, 0.1) and end point (0.3, 0.7) the reversible gradients
    are as precise as ordinary float32 autograd, and every stage rebuilt its streams bit for bit."""
    model, x = swin_t_for_gradients(alpha=alpha, beta=beta)
    report = gradient_error(model, x)
    print(f'\n({alpha}, {beta}) exact: {describe(report, model)}')
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert model.reconstruction_errors() == [0.0] * 4  # the engines' monitor, per stage: exact
    assert model.reconstruction_ok()


def test_branches_in_tiny_parts_keep_gradients_as_precise(monkeypatch):
    """With parts forced tiny, each window-attention branch runs by runs of windows and each FFN
    branch by runs of tokens, each by groups of hidden units (its backward in the same pass): F
    equals the branch to float32 rounding, and at (0.3, 0.7), drop path on, the reversible
    gradients are as precise as ordinary autograd, every rebuild bit-exact."""
    import functools

    from dr2net_mm import branches
    from dr2net_mm.core.chunks import FusedPlan, row_parts, run_branch
    monkeypatch.setattr(branches, 'row_parts', functools.partial(row_parts, part_elements=2**9))
    monkeypatch.setattr(branches, 'MIN_RUN_ROWS', 8)
    model, x = swin_t_for_gradients(alpha=0.3, beta=0.7)
    tokens = torch.randn(1, 256, 96, generator=torch.Generator().manual_seed(2))
    attention, ffn = model.stages[0].sequence.functions[:2]
    assert len(attention.plan(tokens, (16, 16)).parts) > 1
    assert isinstance(ffn.plan(tokens, (16, 16)), FusedPlan)
    parts = branches.mlp_parts(256, 96, 384)
    assert len(parts) > 1 and min(len(units) for _, units in parts) > 1, parts
    for function in (attention, ffn):
        with torch.no_grad():
            function.eval()
            assert rel(run_branch(function, tokens, ((16, 16), )), function(tokens, (16, 16))) <= 1e-6
            function.train()
    report = gradient_error(model, x)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, \
        describe(report, model)
    assert model.reconstruction_errors() == [0.0] * 4


def test_float64_streams_need_segments_at_the_start_point():
    """The float64 alternative: precise at (1, 0.1) when the third stage is cut into segments of 4."""
    model, x = swin_t_for_gradients(stream_dtype='float64', segment_size=4)
    start = gradient_error(model, x)
    print(f'\n(1, 0.1) float64, segment_size=4: {describe(start, model)}')
    assert start.reversible_vs_truth.worst <= 2 * start.reference_vs_truth.worst


@pytest.mark.slow
@pytest.mark.parametrize('stream_dtype', ['float64', 'float32'])
def test_record_gradient_errors_with_one_segment_per_stage(stream_dtype):
    """Recorded, not asserted beyond the end point: at (1, 0.1) one segment per stage is imprecise."""
    model, x = swin_t_for_gradients(stream_dtype=stream_dtype)
    for alpha, beta in ((1.0, 0.1), (0.3, 0.7)):
        model.set_coefficients(alpha, beta)
        report = gradient_error(model, x)
        print(f'\n({alpha}, {beta}) {stream_dtype}: {describe(report, model)}')
    assert report.reversible_vs_truth.worst <= 10 * report.reference_vs_truth.worst


# 5. Memory -----------------------------------------------------------------------------------------
def saved_bytes(model, size, backward=False):
    """Bytes a training forward of ``model`` saves for backward (activations only, batch 1)."""
    model.train()
    x = torch.randn(1, 3, size, size)
    with count_saved_bytes(model.parameters()) as saved:
        outs = model(x)
    if backward:
        weighted_loss(outs).backward()
    return saved.total


def test_saved_bytes_do_not_grow_with_depth_and_beat_checkpointing():
    """Swin-T at 512×512, batch 1, (1, 0.1): at most a quarter of mmdet's Swin, less than mmdet with
    activation checkpointing even at depth 6; float streams keep the same at depths 2-2-6-2 and
    2-2-18-2, exact streams add their β buffer: log2(1/β) bits per element and branch, within 1.5x."""
    size = 512
    torch.manual_seed(0)
    deep = dict(SWIN_T, depths=(2, 2, 18, 2))
    mb = {
        'mmdet 6': saved_bytes(SwinTransformer(**SWIN_T), size),
        'mmdet with_cp 6': saved_bytes(SwinTransformer(**SWIN_T, with_cp=True), size),
        'mmdet 18': saved_bytes(SwinTransformer(**deep), size),
        'mmdet with_cp 18': saved_bytes(SwinTransformer(**deep, with_cp=True), size),
    }
    for dtype in ('exact', 'float64', 'float32'):
        model = Dr2NetSwin(**SWIN_T, stream_dtype=dtype)
        mb[f'dr2net {dtype} 6'] = saved_bytes(model, size, backward=dtype == 'exact')
        if dtype == 'exact':  # the training step completed, every rebuild bit-exact
            assert model.reconstruction_errors() == [0.0] * 4
            assert all(e is not None for e in model.reconstruction_errors())
        mb[f'dr2net {dtype} 18'] = saved_bytes(Dr2NetSwin(**deep, stream_dtype=dtype), size)
    print(f'\nsaved for backward at {size}x{size}: ' + ', '.join(
        f'{k}: {v / 2**20:.1f} MiB' for k, v in mb.items()))
    for dtype in ('exact', 'float64', 'float32'):
        print(f'{dtype} streams / mmdet with_cp: depth 6 '
              f'{mb[f"dr2net {dtype} 6"] / mb["mmdet with_cp 6"]:.2f}, depth 18 '
              f'{mb[f"dr2net {dtype} 18"] / mb["mmdet with_cp 18"]:.2f}')
        assert mb[f'dr2net {dtype} 6'] <= 0.25 * mb['mmdet 6']
        assert mb[f'dr2net {dtype} 6'] < mb['mmdet with_cp 6']
        assert mb[f'dr2net {dtype} 18'] < mb['mmdet with_cp 18']
        growth = mb[f'dr2net {dtype} 18'] - mb[f'dr2net {dtype} 6']
        if dtype == 'exact':  # 24 more branches of 32x32x384 elements, log2(10) bits each
            bound = 24 * math.log2(10) * (size // 16) ** 2 * 384 / 8
            assert bound <= growth <= 1.5 * bound
        else:
            assert abs(growth) <= 0.1 * mb[f'dr2net {dtype} 6']


# 6. Frozen stages, with_cp, arguments ---------------------------------------------------------------
def test_frozen_stages_have_no_grads_stay_in_eval_and_skip_the_bookkeeping():
    reference = mmdet_swin(**SMALL, frozen_stages=1)
    model = dr2net_from(reference, **SMALL, frozen_stages=1, alpha=0.3, beta=0.7)
    reference.train()
    assert model.train() is model  # (mmdet's train() returns None)
    frozen = [model.patch_embed, model.stages[0], model.norm0]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert not model.sequences[0].training and all(e.training for e in model.sequences[1:])
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == \
        [(n, p.requires_grad) for n, p in reference.named_parameters()]
    weighted_loss(model(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in model.stages[1].parameters())
    errors = model.reconstruction_errors()
    assert errors[0] is None and all(e is not None for e in errors[1:])


def test_with_cp_checkpoints_branches_in_reference_mode_only():
    torch.manual_seed(0)
    plain = Dr2NetSwin(**SMALL, alpha=1.0, beta=0.0, reversible=False)
    with_cp = Dr2NetSwin(**SMALL, alpha=1.0, beta=0.0, reversible=False, with_cp=True)
    with_cp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    results = []
    for model in (plain, with_cp):
        with count_saved_bytes(model.parameters()) as saved:
            torch.manual_seed(1)
            outs = model(x)
        weighted_loss(outs).backward()
        results.append((saved.total, outs, {n: p.grad for n, p in model.named_parameters()}))
    (plain_bytes, plain_outs, plain_grads), (cp_bytes, cp_outs, cp_grads) = results
    assert cp_bytes < 0.5 * plain_bytes
    assert max_abs_diff(cp_outs, plain_outs) == 0
    assert all(torch.allclose(cp_grads[n], g, atol=1e-6) for n, g in plain_grads.items())
    # Reversible: nothing per block to checkpoint, the flag changes nothing.
    rev, rev_cp = Dr2NetSwin(**SMALL), Dr2NetSwin(**SMALL, with_cp=True)
    assert saved_bytes(rev, 64) == saved_bytes(rev_cp, 64)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(beta=0.0), ValueError, r'beta=0\.0 must be > 0 when reversible=True'),
    (dict(beta=-0.1, reversible=False), ValueError, r'beta=-0\.1 is outside \[0, 1\]'),
    (dict(alpha=1.5), ValueError, r'alpha=1\.5 is outside \[0, 1\]'),
    (dict(alpha='1'), TypeError, r"alpha must be a number in \[0, 1\], got '1'"),
    (dict(stream_dtype='float16'), ValueError, r"stream_dtype='float16' is not supported"),
    (dict(stream_dtype=torch.bfloat16), ValueError, r'stream_dtype=torch\.bfloat16 is not supported'),
    (dict(stream_dtype=64), TypeError, r"stream_dtype must be 'exact', torch\.float64.*got 64"),
    (dict(segment_size=0), ValueError, r'segment_size=0 must be >= 1'),
    (dict(segment_size=2.5), TypeError, r'segment_size must be None or an int >= 1, got 2\.5'),
    (dict(reversible='yes'), TypeError, r"reversible must be True or False, got 'yes'"),
    (dict(with_cp=None), TypeError, r'with_cp must be True or False, got None'),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dr2NetSwin(**SMALL, **kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12)),
     r'depths=\(2, 2, 6, 2\) has 4 entries, one per stage, but num_heads=\(3, 6, 12\) has 3'),
    (dict(depths=(2, 2), num_heads=(1, 2, 4)),
     r'depths=\(2, 2\) has 2 .* num_heads=\(1, 2, 4\) has 3'),
    (dict(depths=(2, 2, 2), num_heads=(1, 2, 4), strides=(4, 2)), r'strides=\(4, 2\) has 2'),
])
def test_per_stage_lists_of_other_lengths_are_refused_naming_both(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Dr2NetSwin(embed_dims=16, window_size=7, **kwargs)


def test_per_stage_lists_agree_or_strides_are_longer():
    """mmdet reads strides by stage and ignores the rest, so a longer strides is fine."""
    model = Dr2NetSwin(embed_dims=16, depths=(2, 2), num_heads=(1, 2), out_indices=(0, 1))
    assert [len(s.functions) for s in model.sequences] == [4, 4]
    with pytest.raises(TypeError, match='num_heads must be a list or tuple with one entry per'):
        Dr2NetSwin(embed_dims=16, depths=(2, 2), num_heads=2)


def test_coefficients_and_modes_are_validated_when_changed():
    model = Dr2NetSwin(**SMALL, stream_dtype='float32', segment_size=2)
    assert model.stream_dtype == torch.float32 and model.sequences[0].segment_size == 2
    with pytest.raises(ValueError, match=r'beta=0\.0 must be > 0'):
        model.set_coefficients(1.0, 0.0)
    with pytest.raises(ValueError, match=r'alpha=2\.0 is outside'):
        model.set_coefficients(2.0, 0.5)
    assert model.coefficients == (1.0, 0.1) and model.beta.item() == 0.1
    model.reversible = False
    model.set_coefficients(1.0, 0.0)  # fine for the reference
    assert all(e.beta == 0.0 and not e.reversible for e in model.sequences)
    with pytest.raises(ValueError, match=r'beta=0\.0 must be > 0'):
        model.reversible = True
    model.stream_dtype = 'float64'
    assert all(e.stream_dtype == torch.float64 for e in model.sequences)
    model.segment_size = None
    assert model.segment_size is None and all(e.segment_size is None for e in model.sequences)
    with pytest.raises(ValueError, match='segment_size=0 must be >= 1'):
        model.segment_size = 0
    assert model.reconstruction_errors() == [None] * 4  # no reversible backward yet
