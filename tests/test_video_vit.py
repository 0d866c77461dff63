"""Spec of Dr2NetVideoViT (dr2net_mm.models.video_vit): mmaction2's VideoMAE VisionTransformer with
its blocks run as one reversible stage, its baseline PlainVideoViT, and the VideoMAE checkpoint
converter (dr2net_mm.models.videomae_checkpoint)."""
import copy
import inspect
import logging
import math

import pytest

pytest.importorskip('mmaction')

import dr2net_mm  # noqa: E402  (first: supplies mmaction2's missing module, registers the models)
import torch  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

from dr2net_mm.core import count_saved_bytes, gradient_error  # noqa: E402
from dr2net_mm.models import Dr2NetVideoViT, PlainVideoViT, PretrainedMismatchError  # noqa: E402
from dr2net_mm.models.videomae_checkpoint import (checkpoint_filter_fn,  # noqa: E402
                                                  detect_checkpoint_format)
from mmaction.models.backbones.vit_mae import VisionTransformer  # noqa: E402

# Small VideoMAE ViTs: a 1×3×4×32×32 clip is 2×2×2 = 8 tokens; 2×3×8×64×64 is 2×(4×4×4) tokens.
TINY = dict(img_size=32, patch_size=16, embed_dims=48, depth=2, num_heads=3, num_frames=4,
            tubelet_size=2)
SMALL = dict(img_size=64, patch_size=16, embed_dims=96, depth=4, num_heads=3, num_frames=8,
             tubelet_size=2)
DR2NET_ONLY = ('alpha', 'beta', 'reversible', 'stream_dtype', 'segment_size', 'with_cp')


def clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def quiet_init_weights():
    """MMEngine logs every parameter in init_weights: keep the logs readable."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def mmaction_vit(seed=0, **kwargs):
    """mmaction2's VisionTransformer with its own initialisation, plus gammas and learnable position
    embeddings of order one so that the comparisons see every part."""
    torch.manual_seed(seed)
    model = VisionTransformer(**kwargs)
    model.init_weights()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'gamma' in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name == 'pos_embed':
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(('q_bias', 'v_bias')) or 'norm' in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def dr2net_from(reference, cls=Dr2NetVideoViT, **kwargs):
    model = cls(**kwargs)
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


def weighted_loss(out, seed=0):
    return (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))).sum()


def train_step(model, x, seed=1):
    """Output, input gradient and parameter gradients of one training forward/backward (drop-path
    masks from ``seed``)."""
    model.train()
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(xg)
    weighted_loss(out).backward()
    return out.detach(), xg.grad, {n: p.grad for n, p in model.named_parameters()}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def save(tmp_path, obj, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


# 1. At (α, β) = (1, 0) it is mmaction2's VisionTransformer ----------------------------------------
VARIANTS = {
    'mean_pooling': dict(),
    'cls_norm': dict(use_mean_pooling=False, use_learnable_pos_emb=True),
    'feat_map': dict(return_feat_map=True),
    'feat_map_norm': dict(return_feat_map=True, use_mean_pooling=False),
    'layer_scale': dict(init_values=0.1),
}


@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('size', [(32, 32), (48, 64)], ids=['img_size', 'resized_pos_embed'])
def test_alpha1_beta0_equals_mmaction_bitwise(variant, size):
    """Same state dict, same seed: eval (no grad, default exact streams) gives torch.equal outputs;
    training with autograd and drop path (float32 streams: the reference mode's stream of mmaction's
    own arithmetic) gives torch.equal outputs and the same gradients. At the pretraining size and at
    another spatial size (position embedding resized bicubically as mmaction2 does)."""
    kwargs = dict(TINY, drop_path_rate=0.2, **VARIANTS[variant])
    reference = mmaction_vit(**kwargs)
    model = dr2net_from(reference, **kwargs, alpha=1.0, beta=0.0, reversible=False)
    x = clip(2, 3, 4, *size)
    with torch.no_grad():
        expected = reference.eval()(x)
        got = model.eval()(x)
    assert got.shape == expected.shape
    if kwargs.get('return_feat_map'):
        assert got.shape == (2, 48, 2, size[0] // 16, size[1] // 16)
    else:
        assert got.shape == (2, 48)
    assert torch.equal(got, expected)

    model.stream_dtype = 'float32'
    ref_out, ref_gx, ref_grads = train_step(reference, x)
    out, gx, grads = train_step(model, x)
    assert not torch.equal(ref_out, expected)  # drop path was active
    assert torch.equal(out, ref_out)
    assert set(grads) == set(ref_grads)
    assert rel(gx, ref_gx) <= 1e-6
    for name, grad in ref_grads.items():
        if grad is None:  # fc_norm with return_feat_map: unused in both
            assert grads[name] is None, name
        else:
            assert rel(grads[name], grad) <= 1e-6, name


def test_exact_stream_reference_mode_is_mmaction_to_rounding():
    """The default exact streams in reference mode at (1, 0): the same network to float rounding."""
    kwargs = dict(TINY, drop_path_rate=0.2, init_values=0.1)
    reference = mmaction_vit(**kwargs)
    model = dr2net_from(reference, **kwargs, alpha=1.0, beta=0.0, reversible=False)
    x = clip(2, 3, 4, 32, 32)
    ref_out, ref_gx, ref_grads = train_step(reference, x)
    out, gx, grads = train_step(model, x)
    assert rel(out, ref_out) <= 1e-6 and rel(gx, ref_gx) <= 1e-5
    for name, grad in ref_grads.items():
        assert rel(grads[name], grad) <= 1e-5, name


def test_no_grad_plain_loop_equals_reference_mode_at_the_start_point():
    """At (1, 0.1): the no-grad / eval plain loop equals the reference mode's training forward (bit
    for bit with float32 streams; to rounding with exact streams), and the reversible forward equals
    the reference mode's bit for bit (same exact streams)."""
    torch.manual_seed(0)
    model = Dr2NetVideoViT(**SMALL, init_values=0.1, alpha=1.0, beta=0.1)
    x = clip(2, 3, 8, 64, 64)
    with torch.no_grad():
        plain = model.eval()(x)
    model.train()
    model.reversible = False
    model.stream_dtype = 'float32'
    assert torch.equal(model(x).detach(), plain)
    model.stream_dtype = 'exact'
    reference = model(x).detach()
    assert rel(reference, plain) <= 1e-5
    model.reversible = True
    assert torch.equal(model(x).detach(), reference)


def test_plain_video_vit_is_mmaction_and_with_cp_gives_the_same_gradients():
    kwargs = dict(TINY, drop_path_rate=0.2, init_values=0.1)
    reference = mmaction_vit(**kwargs)
    plain = dr2net_from(reference, PlainVideoViT, **kwargs)
    with_cp = dr2net_from(reference, PlainVideoViT, **kwargs, with_cp=True)
    assert plain.coefficients == (1.0, 0.0) and not plain.reversible
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), reference.eval()(x))
    results = {}
    for name, model in (('mmaction', reference), ('plain', plain), ('with_cp', with_cp)):
        with count_saved_bytes(model.parameters()) as saved:
            results[name] = train_step(model, x)
        results[name] += (saved.total, )
    ref_out, ref_gx, ref_grads, ref_bytes = results['mmaction']
    for name in ('plain', 'with_cp'):
        out, gx, grads, _ = results[name]
        assert torch.equal(out, ref_out), name
        assert torch.equal(gx, ref_gx), name
        assert all(torch.equal(grads[k], g) for k, g in ref_grads.items()), name
    assert results['plain'][3] == ref_bytes  # mmaction's memory exactly
    assert results['with_cp'][3] < 0.5 * ref_bytes
    with pytest.raises(TypeError, match=r'fixed at \(1, 0\)'):
        plain.set_coefficients(0.3, 0.7)
    with pytest.raises(ValueError, match='takes no'):
        PlainVideoViT(**TINY, beta=0.1)


# 2. Gradients ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('alpha,beta', [(0.3, 0.7), (1.0, 0.1)])
@pytest.mark.parametrize('variant', ['layer_scale', 'cls_norm'])
def test_reversible_gradients_match_reference_mode(alpha, beta, variant):
    """Default exact streams, one segment, drop path 0.2 (masks replayed in the rebuild): the
    reversible gradients of the input and of every parameter match the reference mode's and are as
    close to float64 truth as ordinary float32 autograd; the rebuild is bit-exact."""
    torch.manual_seed(0)
    model = Dr2NetVideoViT(**SMALL, drop_path_rate=0.2, alpha=alpha, beta=beta,
                           **VARIANTS[variant]).train()
    report = gradient_error(model, clip(2, 3, 8, 64, 64))
    assert report.reversible_vs_reference.worst <= 1e-5, report.as_dict()
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    names = {n for n, p in model.named_parameters()}
    assert set(report.reversible_vs_reference.per_parameter) == names
    assert model.reconstruction_errors() == [0.0]
    assert model.reconstruction_ok()


def test_with_cp_checkpoints_branches_in_reference_mode_only():
    torch.manual_seed(0)
    plain = Dr2NetVideoViT(**SMALL, alpha=1.0, beta=0.0, reversible=False, drop_path_rate=0.1)
    with_cp = dr2net_from(plain, **SMALL, alpha=1.0, beta=0.0, reversible=False,
                          drop_path_rate=0.1, with_cp=True)
    x = clip(2, 3, 8, 64, 64)
    results = []
    for model in (plain, with_cp):
        with count_saved_bytes(list(model.parameters()) + [x]) as saved:
            results.append(train_step(model, x) + (saved.total, ))
    (out, gx, grads, plain_bytes), (cp_out, cp_gx, cp_grads, cp_bytes) = results
    assert cp_bytes < 0.5 * plain_bytes
    assert torch.equal(cp_out, out) and torch.equal(cp_gx, gx)
    assert all(torch.equal(cp_grads[n], g) for n, g in grads.items())
    # Reversible: nothing per block to checkpoint, the flag changes nothing.
    rev, rev_cp = Dr2NetVideoViT(**SMALL), Dr2NetVideoViT(**SMALL, with_cp=True)
    assert saved_bytes(rev) == saved_bytes(rev_cp)


def test_branches_recomputed_by_head_groups_and_hidden_groups(monkeypatch):
    """With parts forced tiny, each attention branch runs by groups of heads (mmaction2's q/v
    biases, no k bias), each group by runs of query rows through scaled_dot_product_attention with
    mmaction2's scale, each MLP branch by runs of tokens, each by groups of hidden units: F equals mmaction2's branch to float32
    rounding, and the reversible gradients at (0.3, 0.7) with drop path and gammas match float64 as
    closely as ordinary autograd, the rebuild bit-exact."""
    import functools

    from dr2net_mm import branches
    from dr2net_mm.core.chunks import FusedPlan, row_parts, run_branch
    monkeypatch.setattr(branches, 'row_parts', functools.partial(row_parts, part_elements=2**9))
    monkeypatch.setattr(branches, 'MIN_RUN_ROWS', 16)
    torch.manual_seed(0)
    model = Dr2NetVideoViT(**SMALL, drop_path_rate=0.2, init_values=0.1, alpha=0.3,
                           beta=0.7).train()
    x = clip(2, 3, 8, 64, 64)
    tokens = model.embed(x).detach()
    attention, mlp = model.sequence.functions[:2]
    assert isinstance(attention.plan(tokens), FusedPlan)
    groups = branches.head_groups(2, tokens.shape[1], SMALL['num_heads'],
                                  SMALL['embed_dims'] // SMALL['num_heads'])
    assert len(groups) > 1 and max(len(runs) for _, runs in groups) > 1, groups
    assert isinstance(mlp.plan(tokens), FusedPlan)
    parts = branches.mlp_parts(2 * tokens.shape[1], SMALL['embed_dims'],
                               mlp.layer.feedforward_channels)
    assert len(parts) > 1 and min(len(units) for _, units in parts) > 1, parts
    for function in (attention, mlp):
        with torch.no_grad():
            assert rel(run_branch(function.eval(), tokens, ()), function(tokens)) <= 1e-6
        function.train()
    report = gradient_error(model, x)
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert report.reversible_vs_reference.worst <= 1e-5
    assert model.reconstruction_errors() == [0.0]


# 3. Memory ------------------------------------------------------------------------------------------
def saved_bytes(model, x=None):
    """Bytes a training forward saves for backward, parameters and the caller's clip excluded (every
    model's tubelet convolution keeps the clip)."""
    x = clip(2, 3, 8, 64, 64) if x is None else x
    model.train()
    with count_saved_bytes(list(model.parameters()) + [x]) as saved:
        model(x)
    return saved.total


def test_saved_bytes_are_flat_in_depth_and_beat_checkpointing():
    """96 channels, 2×64 tokens (a 2×3×8×64×64 clip), (1, 0.1). Float64 streams keep the same at
    depth 4 and 12; exact streams grow only by their β buffer (log2(1/β) bits per element and extra
    branch, within 1.5x); both keep less than PlainVideoViT with checkpointing at depth 12 and a
    fraction of the conventional network."""
    elements = 2 * 64 * 96
    deep = dict(SMALL, depth=12)
    torch.manual_seed(0)
    mb = {
        'conventional 12': saved_bytes(PlainVideoViT(**deep)),
        'mmaction 12': saved_bytes(VisionTransformer(**deep)),
        'checkpointing 12': saved_bytes(PlainVideoViT(**deep, with_cp=True)),
    }
    for dtype in ('exact', 'float64'):
        for depth in (4, 12):
            mb[f'{dtype} {depth}'] = saved_bytes(
                Dr2NetVideoViT(**dict(SMALL, depth=depth), stream_dtype=dtype))
    print('\nsaved for backward: ' + ', '.join(f'{k}: {v / 1024:.0f} KiB' for k, v in mb.items()))
    assert mb['conventional 12'] == mb['mmaction 12']
    assert abs(mb['float64 12'] - mb['float64 4']) <= 0.10 * mb['float64 4']
    bound = 16 * math.log2(1 / 0.1) / 8 * elements  # 16 more branches
    assert bound <= mb['exact 12'] - mb['exact 4'] <= 1.5 * bound
    for dtype in ('exact', 'float64'):
        assert mb[f'{dtype} 12'] < mb['checkpointing 12']
        assert mb[f'{dtype} 12'] <= 0.1 * mb['conventional 12']


# 4. Drop-in: signature, state dict, registry, checkpoints ----------------------------------------
def test_same_arguments_defaults_and_state_dict_as_mmaction():
    ours = inspect.signature(Dr2NetVideoViT.__init__).parameters
    theirs = inspect.signature(VisionTransformer.__init__).parameters
    for name, param in theirs.items():
        assert name in ours and ours[name].default == param.default, name
        assert ours[name].kind == param.kind, name
    extra = {n: p.default for n, p in ours.items() if n not in theirs}
    assert extra == dict(alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact',
                         segment_size=None, with_cp=False)
    for kwargs in (dict(TINY), dict(TINY, init_values=0.1, use_mean_pooling=False,
                                    use_learnable_pos_emb=True)):
        reference, model = VisionTransformer(**kwargs), Dr2NetVideoViT(**kwargs)
        ref_sd, sd = reference.state_dict(), model.state_dict()
        assert [k for k in sd if k not in ('alpha', 'beta')] == list(ref_sd)
        assert all(sd[k].shape == v.shape for k, v in ref_sd.items())
        assert sd['alpha'].dtype == torch.float64 and sd['beta'].item() == 0.1
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in
                                                           reference.named_parameters()]
        assert [(n, type(m)) for n, m in model.named_modules() if n and n != 'sequence'] == \
            [(n, type(m)) for n, m in reference.named_modules() if n]  # the same submodules
        assert len(model.sequence.functions) == 2 * kwargs['depth']


def test_default_init_is_mmactions():
    """The default init_cfg (TruncNormal Linear, Constant LayerNorm) draws the same weights."""
    torch.manual_seed(0)
    reference = VisionTransformer(**TINY)
    reference.init_weights()
    torch.manual_seed(0)
    model = Dr2NetVideoViT(**TINY)
    model.init_weights()
    ref_sd = reference.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref_sd.items())


def test_built_by_config_in_the_mmaction_scope():
    init_default_scope('mmaction')
    from mmaction.registry import MODELS as MMACTION_MODELS
    cfg = dict(type='Dr2NetVideoViT', **TINY, alpha=0.8, beta=0.2, stream_dtype='float64',
               segment_size=2)
    for registry in (MMACTION_MODELS, MODELS):
        model = registry.build(copy.deepcopy(cfg))
        assert isinstance(model, Dr2NetVideoViT)
        assert model.coefficients == (0.8, 0.2) and model.stream_dtype == torch.float64
        assert model.segment_size == 2
    plain = MMACTION_MODELS.build(dict(type='PlainVideoViT', **TINY, with_cp=True))
    assert isinstance(plain, PlainVideoViT) and plain.with_cp
    assert model.eval()(clip(1, 3, 4, 32, 32)).shape == (1, 48)


def test_trains_one_step_inside_an_mmaction_recognizer():
    from mmaction.registry import MODELS as MMACTION_MODELS
    from mmaction.structures import ActionDataSample
    from mmengine.optim import OptimWrapper
    init_default_scope('mmaction')
    recognizer = MMACTION_MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='Dr2NetVideoViT', **TINY, drop_path_rate=0.1),
        cls_head=dict(type='TimeSformerHead', num_classes=5, in_channels=48,
                      average_clips='prob'),
        data_preprocessor=dict(type='ActionDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], format_shape='NCTHW')))
    recognizer.init_weights()
    samples = [ActionDataSample().set_gt_label(i) for i in range(2)]
    data = dict(inputs=[torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
                        for _ in range(2)], data_samples=samples)
    before = {k: v.detach().clone() for k, v in recognizer.backbone.named_parameters()}
    recognizer.train()
    losses = recognizer.train_step(data, OptimWrapper(torch.optim.SGD(recognizer.parameters(),
                                                                      lr=0.1)))
    assert torch.isfinite(losses['loss'])
    changed = [k for k, v in recognizer.backbone.named_parameters()
               if not torch.equal(v, before[k])]
    assert 'blocks.0.attn.qkv.weight' in changed and 'patch_embed.projection.weight' in changed
    assert recognizer.backbone.reconstruction_errors() == [0.0]  # the reversible path ran


OFFICIAL_RENAMES = (('patch_embed.projection.', 'patch_embed.proj.'), ('.mlp.layers.0.0.', '.mlp.fc1.'),
                    ('.mlp.layers.1.', '.mlp.fc2.'))


def official_state_dict(reference, pretrain=False):
    """A synthetic state dict in the official VideoMAE release layout (MCG-NJU/VideoMAE
    ``modeling_finetune.py``; with ``pretrain``, ``modeling_pretrain.py``: the encoder under
    ``encoder.`` with a final norm, a decoder, ``encoder_to_decoder``, ``mask_token``; the sinusoid
    position embedding is not registered there, so it is absent)."""
    out = {}
    for key, value in reference.state_dict().items():
        for old, new in OFFICIAL_RENAMES:
            key = key.replace(old, new)
        out[key] = value.clone()
    dims = reference.embed_dims
    if not pretrain:
        out['head.weight'], out['head.bias'] = torch.randn(7, dims), torch.randn(7)
        return out
    encoder = {f'encoder.{k}': v for k, v in out.items() if k != 'pos_embed'
               and not k.startswith('fc_norm.')}
    encoder['encoder.norm.weight'] = torch.rand(dims) + 0.5
    encoder['encoder.norm.bias'] = torch.randn(dims)
    encoder.update({'decoder.blocks.0.norm1.weight': torch.ones(32),
                    'decoder.norm.weight': torch.ones(32), 'decoder.head.weight': torch.zeros(1536, 32),
                    'encoder_to_decoder.weight': torch.zeros(32, dims),
                    'mask_token': torch.zeros(1, 1, 32)})
    return encoder


def test_official_videomae_release_converts_and_loads_like_mmaction(tmp_path):
    """An official finetuned file (under ``model``) converts to mmaction2's names; loaded through the
    same converter into Dr2NetVideoViT (init_cfg Pretrained) and mmaction2's VisionTransformer, both
    compute the same features (and those of the model the file was made from)."""
    kwargs = dict(TINY, init_values=0.1)
    source = mmaction_vit(**kwargs)
    official = official_state_dict(source)
    assert detect_checkpoint_format(official) == 'videomae'
    before = {k: v.clone() for k, v in official.items()}
    converted = checkpoint_filter_fn(official)
    assert all(torch.equal(official[k], v) for k, v in before.items()) and len(official) == len(before)
    assert set(converted) == set(source.state_dict())  # head dropped, names mapped
    assert converted['blocks.1.mlp.layers.0.0.weight'] is official['blocks.1.mlp.fc1.weight']
    assert converted['patch_embed.projection.bias'] is official['patch_embed.proj.bias']

    path = save(tmp_path, {'model': official})
    model = Dr2NetVideoViT(**kwargs, alpha=1.0, beta=0.0, reversible=False,
                           init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    torch.manual_seed(5)
    mmaction = VisionTransformer(**kwargs)
    mmaction.load_state_dict(checkpoint_filter_fn({'model': official}, mmaction), strict=True)
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = source.eval()(x)
        assert torch.equal(mmaction.eval()(x), expected)
        assert torch.equal(model.eval()(x), expected)
    report = model.load_pretrained(path)
    assert report.format == 'videomae'
    assert report.missing_keys == [] and report.unexpected_keys == [] == report.mismatched_keys


@pytest.mark.parametrize('wrapper', ['model', 'module'])
@pytest.mark.parametrize('use_mean_pooling', [True, False])
def test_official_pretraining_file_loads_its_encoder(tmp_path, wrapper, use_mean_pooling):
    """A pretraining file (encoder under ``encoder.``, decoder, no pos_embed: sinusoid) loads the
    encoder: the decoder is dropped, the fixed sinusoid table is the model's own, the encoder's final
    norm goes to ``norm`` (no mean pooling) or is dropped (mean pooling: ``fc_norm`` keeps its
    initialisation, as VideoMAE's finetuning does). mmaction2's model, given the same converted
    state dict (strict), computes the same."""
    kwargs = dict(TINY, use_mean_pooling=use_mean_pooling)
    source = mmaction_vit(**kwargs)
    pretrain = official_state_dict(source, pretrain=True)
    assert detect_checkpoint_format(pretrain) == 'videomae_pretrain'
    path = save(tmp_path, {wrapper: pretrain, 'epoch': 800})
    torch.manual_seed(3)
    model = Dr2NetVideoViT(**kwargs, alpha=1.0, beta=0.0, reversible=False)
    fc_norm = None if model.fc_norm is None else model.fc_norm.weight.detach().clone()
    report = model.load_pretrained(path)
    assert report.format == 'videomae_pretrain'
    assert report.unexpected_keys == [] and report.mismatched_keys == []
    expected_missing = ['fc_norm.weight', 'fc_norm.bias'] if use_mean_pooling else []
    assert sorted(report.missing_keys) == sorted(expected_missing)
    assert torch.equal(model.pos_embed, source.pos_embed)
    if use_mean_pooling:
        assert torch.equal(model.fc_norm.weight, fc_norm)
    else:
        assert torch.equal(model.norm.weight, pretrain['encoder.norm.weight'])
    torch.manual_seed(3)
    mmaction = VisionTransformer(**kwargs)
    state_dict = checkpoint_filter_fn({wrapper: pretrain}, mmaction)
    assert not any(k.startswith(('decoder', 'encoder', 'mask_token')) for k in state_dict)
    mmaction.load_state_dict(state_dict, strict=not use_mean_pooling)
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), mmaction.eval()(x))
    # strict load_state_dict of a converted file without pos_embed works too (fixed table)
    Dr2NetVideoViT(**kwargs, reversible=False).load_state_dict(
        {k: v for k, v in model.state_dict().items() if k != 'pos_embed'}, strict=True)


def test_recognizer_checkpoint_and_bare_backbone_load(tmp_path):
    kwargs = dict(TINY, use_learnable_pos_emb=True)
    source = mmaction_vit(**kwargs)
    recognizer = {'meta': {}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in source.state_dict().items()},
        'cls_head.fc_cls.weight': torch.zeros(5, 48), 'cls_head.fc_cls.bias': torch.zeros(5)}}
    x = clip(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = source.eval()(x)
    for checkpoint in (recognizer, source.state_dict()):
        model = Dr2NetVideoViT(**kwargs, alpha=1.0, beta=0.0, reversible=False,
                               pretrained=save(tmp_path, checkpoint))
        model.init_weights()
        with torch.no_grad():
            assert torch.equal(model.eval()(x), expected)
        report = model.load_pretrained(checkpoint)
        assert report.format == 'mmaction'
        assert report.missing_keys == report.unexpected_keys == report.mismatched_keys == []


def test_learnable_pos_embed_of_another_grid_is_resized():
    """A learnable pos_embed stored for a 2×2 grid (img_size 32) loads into a 4×4 model (img_size 64):
    resized bicubically per frame group, as VideoMAE's finetuning script does."""
    source = mmaction_vit(**dict(TINY, use_learnable_pos_emb=True))
    model = Dr2NetVideoViT(**dict(TINY, img_size=64, use_learnable_pos_emb=True))
    state_dict = checkpoint_filter_fn(official_state_dict(source), model)
    assert state_dict['pos_embed'].shape == model.pos_embed.shape == (1, 2 * 16, 48)
    report = model.load_pretrained(official_state_dict(source))
    assert report.mismatched_keys == [] and report.missing_keys == []


def test_wrong_size_checkpoint_is_refused(tmp_path):
    big = VisionTransformer(**dict(TINY, embed_dims=96))
    path = save(tmp_path, {'state_dict': {f'backbone.{k}': v for k, v in big.state_dict().items()}})
    model = Dr2NetVideoViT(**TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(PretrainedMismatchError, match='embed_dims=96.*embed_dims=48'):
        model.init_weights()
    with pytest.raises(ValueError, match='does not look like a VideoMAE'):
        model.load_pretrained({'layers.0.weight': torch.zeros(1)})


# 5. Coefficients and arguments ------------------------------------------------------------------------
def test_set_coefficients_and_alpha_beta_round_trip():
    source = Dr2NetVideoViT(**TINY)
    assert source.coefficients == (1.0, 0.1) and source.reversible
    source.set_coefficients(0.3, 0.7)
    assert (source.sequence.alpha, source.sequence.beta) == (0.3, 0.7)
    assert source.alpha.item() == 0.3 and source.beta.item() == 0.7
    target = Dr2NetVideoViT(**TINY)
    target.load_state_dict(source.state_dict())
    assert target.coefficients == (0.3, 0.7) and target.sequence.beta == 0.7
    target.load_state_dict({k: v for k, v in source.state_dict().items()
                            if k not in ('alpha', 'beta')})  # an mmaction2 state dict
    assert target.coefficients == (0.3, 0.7)
    with torch.no_grad():
        target.beta.fill_(0.5)  # an EMA copy writing the buffers
    target.eval()(clip(1, 3, 4, 32, 32))
    assert target.sequence.beta == 0.5
    with pytest.raises(ValueError, match='beta=0.0 must be > 0'):
        target.set_coefficients(1.0, 0.0)
    target.reversible = False
    target.set_coefficients(1.0, 0.0)
    with pytest.raises(ValueError, match='beta=0.0'):
        target.reversible = True


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(beta=0.0), ValueError, r'beta=0\.0 must be > 0 when reversible=True'),
    (dict(alpha=1.5), ValueError, r'alpha=1\.5 is outside \[0, 1\]'),
    (dict(stream_dtype='float16'), ValueError, r"stream_dtype='float16' is not supported"),
    (dict(segment_size=0), ValueError, r'segment_size=0 must be >= 1'),
    (dict(reversible='yes'), TypeError, r"reversible must be True or False, got 'yes'"),
    (dict(with_cp=None), TypeError, r'with_cp must be True or False, got None'),
    (dict(pretrained=3), TypeError, r'pretrained must be a checkpoint path'),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dr2NetVideoViT(**TINY, **kwargs)


# 6. Benchmark variants (built and run once, tiny; not measured) ----------------------------------
def test_video_vit_benchmark_variants():
    from dr2net_mm.benchmark import video_vit_variants
    variants = video_vit_variants(frames=4, size=32, batch=1, embed_dims=48, depth=2, num_heads=3,
                                  extra=('dr2net_f64', ))
    assert [v.name for v in variants] == ['conventional', 'checkpointing', 'dr2net', 'dr2net_f64']
    models = {v.name: v.build().train() for v in variants}
    assert type(models['conventional']) is VisionTransformer
    assert isinstance(models['checkpointing'], PlainVideoViT) and models['checkpointing'].with_cp
    assert models['dr2net'].coefficients == (1.0, 0.1) and models['dr2net'].stream_dtype == 'exact'
    assert models['dr2net_f64'].stream_dtype == torch.float64
    assert all(k in models['dr2net'].state_dict() for k in models['conventional'].state_dict())
    losses = {}
    for variant in variants:
        torch.manual_seed(0)
        losses[variant.name] = variant.forward_loss(models[variant.name])
        losses[variant.name].backward()
    assert torch.equal(losses['conventional'], losses['checkpointing'])  # same weights, same masks
    with pytest.raises(ValueError, match='unknown extra VideoViT variant'):
        video_vit_variants(extra=('nope', ))
