"""Spec of Dr2NetSwin3D (dr2net_mm.models.swin3d): mmaction2's Video Swin with reversible stages.

Run ``pytest tests/test_swin3d.py -s`` to see the measured saved bytes and gradient errors.
"""
import copy
import inspect
import math

import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401  (installs the mmaction2 shim, registers Dr2NetSwin3D)
from mmaction.models.backbones.swin import SwinTransformer3D  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from dr2net_mm.core import count_saved_bytes, gradient_error, set_reversible  # noqa: E402
from dr2net_mm.models import Dr2NetSwin3D, PretrainedMismatchError  # noqa: E402
from dr2net_mm.models.swin3d_checkpoint import (checkpoint_filter_fn,  # noqa: E402
                                                detect_checkpoint_format, inflate_2d_state_dict)

# Small Video Swin (fast on CPU) with every structural feature: 4 stages, shifted 3D windows,
# window padding, odd-sized patch merging (a 6×56×40 clip: 3×14×10 tokens, then 3×7×5, 3×4×3, 3×2×2).
ARCH = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
SMALL = dict(arch=ARCH, window_size=(2, 4, 4), pretrained2d=False)
ALL_OUT = (0, 1, 2, 3)


def clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mmaction_swin(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SwinTransformer3D(**kwargs)
    model.init_weights()
    return model


def dr2net_from(reference, **kwargs):
    """A Dr2NetSwin3D with ``reference``'s weights (strict load: same layout but α, β)."""
    model = Dr2NetSwin3D(**kwargs)
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


def as_list(outs):
    return [outs] if isinstance(outs, torch.Tensor) else list(outs)


def all_equal(outs_a, outs_b):
    outs_a, outs_b = as_list(outs_a), as_list(outs_b)
    return len(outs_a) == len(outs_b) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(outs_a, outs_b))


def max_abs_diff(outs_a, outs_b):
    outs_a, outs_b = as_list(outs_a), as_list(outs_b)
    assert [a.shape for a in outs_a] == [b.shape for b in outs_b]
    return max((a.detach() - b.detach()).abs().max().item() for a, b in zip(outs_a, outs_b))


def weighted_loss(outs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in as_list(outs))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def train_step(net, x, seed=1):
    torch.manual_seed(seed)  # same drop-path masks
    xg = x.clone().requires_grad_(True)
    outs = net(xg)
    weighted_loss(outs).backward()
    return outs, xg.grad, {n: p.grad for n, p in net.named_parameters()}


# 1. At (α, β) = (1, 0) it is mmaction2's Video Swin ------------------------------------------------
@pytest.mark.parametrize('out_indices', [(3, ), ALL_OUT], ids=['last', 'all'])
@pytest.mark.parametrize('after', [False, True], ids=['before_down', 'after_down'])
def test_alpha1_beta0_reference_is_bitwise_mmaction(out_indices, after):
    """Same weights and seeds: eval/no-grad outputs are bitwise mmaction2's; in training with
    gradients (drop path 0.2, float32 streams: Eq. 1 at (1, 0) is then mmaction2's very additions)
    outputs and gradients are bitwise equal too; with the default exact streams (checked once, all
    outputs) they agree to float rounding (the stream arithmetic is fixed point)."""
    kwargs = dict(SMALL, drop_path_rate=0.2, out_indices=out_indices, out_after_downsample=after)
    reference = mmaction_swin(**kwargs)
    model = dr2net_from(reference, **kwargs, alpha=1.0, beta=0.0, reversible=False,
                        stream_dtype='float32')
    x = clip(2, 3, 6, 56, 40)

    reference.eval(), model.eval()
    with torch.no_grad():
        expected = reference(x)
        assert all_equal(model(x), expected)
    sizes = [(3, 14, 10), (3, 7, 5), (3, 4, 3), (3, 2, 2)]
    channels = [16, 32, 64, 128]
    if after:
        sizes, channels = sizes[1:] + [sizes[-1]], channels[1:] + [channels[-1]]
    assert [tuple(o.shape) for o in as_list(expected)] == [
        (2, channels[i], *sizes[i]) for i in out_indices]

    reference.train(), model.train()
    ref_outs, ref_gx, ref_grads = train_step(reference, x)
    outs, gx, grads = train_step(model, x)
    assert all_equal(outs, ref_outs) and torch.equal(gx, ref_gx)
    assert set(grads) == set(ref_grads)
    assert all(torch.equal(grads[n], g) for n, g in ref_grads.items())

    if out_indices != ALL_OUT or after:
        return  # the exact streams do not depend on which outputs are returned
    model.stream_dtype = 'exact'
    model.zero_grad(set_to_none=True)
    outs, gx, grads = train_step(model, x)
    assert max_abs_diff(outs, ref_outs) <= 1e-5
    assert rel(gx, ref_gx) <= 1e-5
    for name, grad in ref_grads.items():
        assert rel(grads[name], grad) <= 1e-4, name


def test_train_mode_without_drop_path_and_no_grad_is_bitwise_mmaction():
    """drop_path_rate=0, train mode: under no_grad the plain loop, with gradients the reference
    (float32 streams) give mmaction2's outputs bit for bit; nothing is saved under no_grad."""
    kwargs = dict(SMALL, drop_path_rate=0.0, out_indices=ALL_OUT)
    reference = mmaction_swin(**kwargs)
    model = dr2net_from(reference, **kwargs, alpha=1.0, beta=0.0, reversible=False,
                        stream_dtype='float32').train()
    reference.train()  # (mmaction2's train() returns None)
    x = clip(1, 3, 8, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        with count_saved_bytes() as saved:
            outs = model(x)
    assert saved.total == 0 and all(o.grad_fn is None for o in outs)
    assert all_equal(outs, expected)
    assert all_equal(model(x), expected)


def test_no_grad_plain_loop_matches_the_reference_mode_at_the_start_point():
    """At (1, 0.1) the no-grad forward (plain loop in float32) and the eval forward agree with the
    training reference forward (exact streams) and with the reversible training forward."""
    torch.manual_seed(0)
    model = Dr2NetSwin3D(**SMALL, out_indices=ALL_OUT, drop_path_rate=0.0)
    assert model.coefficients == (1.0, 0.1) and model.reversible
    x = clip(1, 3, 8, 64, 64)
    model.train()
    model.reversible = False
    reference = model(x)
    model.reversible = True
    reversible = model(x.clone().requires_grad_(True))
    with torch.no_grad():
        no_grad = model(x)
    evaluated = model.eval()(x)
    for a, b, c, ref in zip(no_grad, evaluated, reversible, reference):
        assert rel(a, ref.detach()) <= 1e-5 and rel(b.detach(), ref.detach()) <= 1e-5
        assert max_abs_diff([c], [ref]) == 0  # the same exact streams


# 2. Gradients ---------------------------------------------------------------------------------------
def describe(report, model):
    return (f'reversible vs truth {report.reversible_vs_truth.worst:.3g}, reference vs truth '
            f'{report.reference_vs_truth.worst:.3g} (ratio {report.ratio_to_floor:.3g}); '
            f'reconstruction errors {model.reconstruction_errors()}')


@pytest.mark.parametrize('alpha,beta,out_indices,after', [(1.0, 0.1, ALL_OUT, False),
                                                           (0.3, 0.7, (1, 3), True)])
def test_reversible_gradients_as_precise_as_ordinary_autograd(alpha, beta, out_indices, after):
    """Drop path 0.2 (replayed in the rebuild), train mode, the constructor defaults (exact streams,
    one segment per stage): the reversible gradients of the input and of every parameter are as
    precise as ordinary float32 autograd, and every stage rebuilt its streams bit for bit (outputs
    before and after patch merging, which reversible training recomputes in backward)."""
    torch.manual_seed(0)
    model = Dr2NetSwin3D(**SMALL, drop_path_rate=0.2, out_indices=out_indices,
                         out_after_downsample=after, alpha=alpha, beta=beta)
    model.init_weights()
    model.train()
    report = gradient_error(model, clip(1, 3, 6, 56, 40))
    print(f'\n({alpha}, {beta}) exact: {describe(report, model)}')
    assert report.reversible_vs_truth.input is not None
    assert len(report.reversible_vs_truth.per_parameter) == len(list(model.parameters()))
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert report.reversible_vs_reference.worst <= 1e-4
    assert model.reconstruction_errors() == [0.0] * 4
    assert model.reconstruction_ok()


def test_branches_recomputed_window_run_by_window_run_give_the_same_values(monkeypatch):
    """With parts forced tiny (``row_parts`` of dr2net_mm.core.chunks), each attention branch runs as runs of 3D
    windows inside each clip (shifted masks sliced to the run) and each MLP branch as runs of
    tokens: eval outputs stay bitwise mmaction2's, and the reversible gradients at (0.3, 0.7) with
    drop path 0.2 still match ordinary autograd, every rebuild bit-exact."""
    import functools

    from dr2net_mm import branches
    from dr2net_mm.core.chunks import row_parts
    from dr2net_mm.models.swin3d import Swin3DAttentionBranch, Swin3DMLPBranch
    monkeypatch.setattr(branches, 'row_parts', functools.partial(row_parts, part_elements=2**11))
    reference = mmaction_swin(**SMALL, out_indices=ALL_OUT)
    model = dr2net_from(reference, **SMALL, out_indices=ALL_OUT, alpha=1.0, beta=0.0,
                        reversible=False)
    x = clip(2, 3, 6, 56, 40)
    stage = model.layers[0]
    tokens = model.patch_embed(x).permute(0, 2, 3, 4, 1)
    mask = torch.zeros(1)
    for function, expect in ((stage.sequence.functions[0], Swin3DAttentionBranch),
                             (stage.sequence.functions[1], Swin3DMLPBranch)):
        assert isinstance(function, expect)
        assert len(function.plan(tokens, mask).parts) > 2
    reference.eval()
    model.eval()
    with torch.no_grad():
        assert all_equal(reference(x), model(x))

    torch.manual_seed(0)
    model = Dr2NetSwin3D(**SMALL, drop_path_rate=0.2, out_indices=ALL_OUT, alpha=0.3, beta=0.7)
    model.init_weights()
    model.train()
    report = gradient_error(model, clip(1, 3, 6, 56, 40))
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert report.reversible_vs_reference.worst <= 1e-4
    assert model.reconstruction_errors() == [0.0] * 4


# 3. Memory ------------------------------------------------------------------------------------------
MEM_ARCH = dict(embed_dims=24, num_heads=(1, 2, 4, 4))
MEM_CLIP = (1, 3, 8, 64, 64)  # 4×16×16 tokens, stage 2: 4×4×4×96


def saved_bytes(model, backward=False):
    """Bytes a training forward of ``model`` saves for backward (activations only)."""
    model.train()
    with count_saved_bytes(model.parameters()) as saved:
        outs = model(clip(*MEM_CLIP))
    if backward:
        weighted_loss(outs).backward()
    return saved.total


def test_saved_bytes_do_not_grow_with_depth_and_beat_checkpointing():
    """(1, 0.1), window (2, 7, 7): float64 streams save the same at depths 2-2-2-2 and 2-2-6-2;
    exact streams add their β buffer, log2(1/β) bits per element and extra branch (within 1.5×);
    both below mmaction2 with_cp=True and far below mmaction2."""
    shallow = dict(MEM_ARCH, depths=(2, 2, 2, 2))
    deep = dict(MEM_ARCH, depths=(2, 2, 6, 2))
    common = dict(window_size=(2, 7, 7), pretrained2d=False, out_indices=ALL_OUT)
    torch.manual_seed(0)
    mb = {
        'mmaction 6': saved_bytes(SwinTransformer3D(arch=deep, **common)),
        'mmaction with_cp 6': saved_bytes(SwinTransformer3D(arch=deep, with_cp=True, **common)),
    }
    for dtype in ('exact', 'float64'):
        model = Dr2NetSwin3D(arch=deep, stream_dtype=dtype, **common)
        mb[f'dr2net {dtype} 6'] = saved_bytes(model, backward=dtype == 'exact')
        if dtype == 'exact':  # the training step completed, every rebuild bit-exact
            assert model.reconstruction_errors() == [0.0] * 4
        mb[f'dr2net {dtype} 2'] = saved_bytes(Dr2NetSwin3D(arch=shallow, stream_dtype=dtype,
                                                           **common))
    print('\nsaved for backward: ' + ', '.join(f'{k}: {v / 2**10:.0f} KiB' for k, v in mb.items()))
    for dtype in ('exact', 'float64'):
        assert mb[f'dr2net {dtype} 6'] <= 0.25 * mb['mmaction 6']
        assert mb[f'dr2net {dtype} 6'] < mb['mmaction with_cp 6']
        growth = mb[f'dr2net {dtype} 6'] - mb[f'dr2net {dtype} 2']
        if dtype == 'exact':  # 8 more branches of 4×4×4×96 elements, log2(10) bits each
            bound = 8 * math.log2(10) * 4 * 4 * 4 * 96 / 8
            assert bound <= growth <= 1.5 * bound
        else:
            assert abs(growth) <= 0.1 * mb[f'dr2net {dtype} 2']


def test_with_cp_checkpoints_branches_in_reference_mode_only():
    torch.manual_seed(0)
    plain = Dr2NetSwin3D(**SMALL, alpha=1.0, beta=0.0, reversible=False, out_indices=ALL_OUT)
    with_cp = Dr2NetSwin3D(**SMALL, alpha=1.0, beta=0.0, reversible=False, with_cp=True,
                           out_indices=ALL_OUT)
    with_cp.load_state_dict(plain.state_dict())
    x = clip(1, 3, 8, 64, 64)
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
    counts = []
    for flag in (False, True):
        model = Dr2NetSwin3D(**SMALL, with_cp=flag).train()
        with count_saved_bytes(model.parameters()) as saved:
            model(x)
        counts.append(saved.total)
    assert counts[0] == counts[1]


# 4. Drop-in: arguments, registry, state dict, checkpoints ------------------------------------------
def test_same_arguments_defaults_and_state_dict_as_mmaction():
    ours = inspect.signature(Dr2NetSwin3D.__init__).parameters
    theirs = inspect.signature(SwinTransformer3D.__init__).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for name, param in theirs.items():
        assert ours[name].default == param.default, name
    extra = {n: p.default for n, p in ours.items() if n not in theirs}
    assert extra == dict(alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact',
                         segment_size=None)
    for kwargs in (dict(arch='tiny'), dict(SMALL, out_indices=ALL_OUT, out_after_downsample=True)):
        reference, model = SwinTransformer3D(**kwargs), Dr2NetSwin3D(**kwargs)
        ref_sd, sd = reference.state_dict(), model.state_dict()
        assert [k for k in sd if k not in ('alpha', 'beta')] == list(ref_sd)
        assert all(sd[k].shape == v.shape for k, v in ref_sd.items())
    assert sd['alpha'].item() == 1.0 and sd['beta'].item() == 0.1
    Dr2NetSwin3D(arch=ARCH).init_weights()  # pretrained2d=True, no file: from scratch (mmaction2 fails)
    assert [len(s.functions) for s in model.sequences] == [2, 2, 4, 2]
    assert all(s in set(model.modules()) for s in model.sequences)


def test_built_from_mmaction_registry_in_a_recognizer():
    from mmaction.registry import MODELS as MMACTION_MODELS
    init_default_scope('mmaction')
    backbone = dict(type='Dr2NetSwin3D', **SMALL, alpha=1.0, beta=0.2, stream_dtype='float32')
    model = MMACTION_MODELS.build(copy.deepcopy(backbone))
    assert isinstance(model, Dr2NetSwin3D)
    assert model.coefficients == (1.0, 0.2) and model.stream_dtype == torch.float32
    recognizer = MMACTION_MODELS.build(dict(
        type='Recognizer3D', backbone=backbone,
        cls_head=dict(type='I3DHead', in_channels=128, num_classes=5),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW')))
    assert isinstance(recognizer.backbone, Dr2NetSwin3D)
    recognizer.init_weights()
    feats = recognizer.extract_feat(clip(2, 1, 3, 4, 32, 32))[0]  # (batch, clips, C, T, H, W)
    assert tuple(feats.shape) == (2, 128, 2, 1, 1)


def test_mmaction_checkpoint_round_trip(tmp_path):
    """A recognizer checkpoint (``backbone.`` prefix, head keys) and a bare state dict load through
    ``pretrained`` (pretrained2d=False) and ``init_cfg``; Dr2NetSwin3D's state dict loads back into
    mmaction2's model."""
    source = mmaction_swin(**SMALL, seed=3, out_indices=ALL_OUT)
    source.eval()
    recognizer = {'meta': {'epoch': 30}, 'state_dict': {
        **{'backbone.' + k: v for k, v in source.state_dict().items()},
        'cls_head.fc_cls.weight': torch.zeros(5, 128)}}
    torch.save(recognizer, tmp_path / 'recognizer.pth')
    torch.save(source.state_dict(), tmp_path / 'backbone.pth')
    assert detect_checkpoint_format(source.state_dict()) == 'mmaction'
    x = clip(1, 3, 6, 56, 40)
    with torch.no_grad():
        expected = source(x)
    for kwargs in (dict(pretrained=str(tmp_path / 'recognizer.pth')),
                   dict(pretrained=str(tmp_path / 'backbone.pth'), pretrained2d=True),  # detected
                   dict(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'backbone.pth')))):
        model = Dr2NetSwin3D(**dict(SMALL, **kwargs), out_indices=ALL_OUT, alpha=1.0, beta=0.0,
                             reversible=False)
        model.init_weights()
        with torch.no_grad():
            assert all_equal(model.eval()(x), expected)
    model.set_coefficients(0.5, 0.5)
    back = SwinTransformer3D(**SMALL, out_indices=ALL_OUT)
    back.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ('alpha', 'beta')})
    fresh = Dr2NetSwin3D(**SMALL, out_indices=ALL_OUT)
    fresh.load_state_dict(model.state_dict())
    assert fresh.coefficients == (0.5, 0.5)
    assert all((s.alpha, s.beta) == (0.5, 0.5) for s in fresh.sequences)


# A 2D Swin (timm 1.0, random) with the layout of ARCH, saved as an official release file.
TIMM_KW = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4,
               img_size=128)


def official_2d_checkpoint(path):
    timm = pytest.importorskip('timm')
    torch.manual_seed(5)
    model = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, **TIMM_KW)
    with torch.no_grad():  # non-trivial norms and biases everywhere
        for name, p in model.named_parameters():
            if name.endswith('bias') or 'norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    official = {}
    for key, value in model.state_dict().items():
        if key.startswith('layers.') and '.downsample.' in key:  # official: end of stage N
            stage = int(key.split('.')[1])
            key = key.replace(f'layers.{stage}.', f'layers.{stage - 1}.', 1)
        official[key.replace('head.fc.', 'head.')] = value
    for name, buffer in model.named_buffers():  # the release files carry these buffers
        if buffer is not None and name.endswith(('relative_position_index', 'attn_mask')):
            official[name] = buffer
    torch.save({'model': official}, path)
    return model.state_dict(), official


@pytest.mark.parametrize('window_size', [(2, 4, 4), (2, 7, 7)], ids=['same', 'resized'])
def test_2d_checkpoint_inflated_exactly_as_mmaction(tmp_path, window_size):
    """pretrained=PATH, pretrained2d=True with an official 2D release file: the same state dict as
    mmaction2's inflate_weights (patch kernel over time, relative tables resized bicubic when the
    window differs and repeated 2·wd−1 times, norm -> norm3); a timm 2D state dict too."""
    path = str(tmp_path / 'swin2d_official.pth')
    timm_sd, official = official_2d_checkpoint(path)
    kwargs = dict(arch=ARCH, window_size=window_size, pretrained=path, pretrained2d=True)
    torch.manual_seed(0)
    reference = SwinTransformer3D(**kwargs)
    reference.init_weights()
    torch.manual_seed(0)
    model = Dr2NetSwin3D(**kwargs)
    model.init_weights()
    ref_sd, sd = reference.state_dict(), model.state_dict()
    assert [k for k in sd if k not in ('alpha', 'beta')] == list(ref_sd)
    assert all(torch.equal(sd[k], v) for k, v in ref_sd.items())
    assert detect_checkpoint_format(official) == 'official2d'
    assert detect_checkpoint_format(timm_sd) == 'timm2d'
    report = Dr2NetSwin3D(**dict(kwargs, pretrained=None)).load_pretrained(timm_sd)
    assert report.format == 'timm2d' and report.missing_keys == [] and report.mismatched_keys == []
    table = 'layers.2.blocks.1.attn.relative_position_bias_table'
    assert sd[table].shape == (3 * (2 * window_size[1] - 1)**2, 2)


def test_inflation_is_pure():
    model = Dr2NetSwin3D(arch=ARCH, window_size=(2, 7, 7))
    state_dict = {'patch_embed.proj.weight': torch.randn(16, 3, 4, 4),
                  'layers.0.blocks.0.attn.relative_position_bias_table': torch.randn(49, 1),
                  'layers.0.blocks.0.attn.relative_position_index': torch.zeros(16, 16),
                  'norm.weight': torch.ones(128), 'norm.bias': torch.zeros(128),
                  'head.weight': torch.zeros(5, 128)}
    before = {k: v.clone() for k, v in state_dict.items()}
    out = inflate_2d_state_dict(state_dict, model.state_dict(), model.patch_size, model.window_size)
    assert set(state_dict) == set(before)
    assert all(torch.equal(state_dict[k], v) for k, v in before.items())
    assert set(out) == {'patch_embed.proj.weight', 'norm3.weight', 'norm3.bias',
                        'layers.0.blocks.0.attn.relative_position_bias_table'}
    assert out['patch_embed.proj.weight'].shape == (16, 3, 2, 4, 4)
    assert torch.equal(out['patch_embed.proj.weight'].sum(2), state_dict['patch_embed.proj.weight'])
    assert out['layers.0.blocks.0.attn.relative_position_bias_table'].shape == (3 * 169, 1)
    with pytest.raises(ValueError, match='does not look like a Swin'):
        checkpoint_filter_fn({'conv1.weight': torch.zeros(1)})


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    wide = SwinTransformer3D(arch=dict(ARCH, embed_dims=32), window_size=(2, 4, 4))
    path = str(tmp_path / 'wide.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in wide.state_dict().items()}}, path)
    model = Dr2NetSwin3D(**SMALL, pretrained=path)
    with pytest.raises(PretrainedMismatchError, match=r'wide\.pth.*the checkpoint is '
                       r'embed_dims=32, blocks per stage \(1, 1, 2, 1\), the model is '
                       r'embed_dims=16, blocks per stage \(1, 1, 2, 1\)'):
        model.init_weights()


# 5. Coefficients, frozen stages, arguments ----------------------------------------------------------
def test_set_coefficients_and_modes_are_validated():
    model = Dr2NetSwin3D(**SMALL, alpha=0.3, beta=0.7)
    assert model.coefficients == (0.3, 0.7)
    model.set_coefficients(0.5, 0.6)
    assert (model.alpha.item(), model.beta.item()) == (0.5, 0.6)
    assert all((s.alpha, s.beta) == (0.5, 0.6) for s in model.sequences)
    with pytest.raises(ValueError, match=r'beta=0\.0 must be > 0'):
        model.set_coefficients(1.0, 0.0)
    assert model.coefficients == (0.5, 0.6)
    set_reversible(model, False)
    model.set_coefficients(1.0, 0.0)
    assert not model.reversible and model.reconstruction_errors() == [None] * 4


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(beta=0.0), ValueError, r'beta=0\.0 must be > 0 when reversible=True'),
    (dict(alpha=1.5), ValueError, r'alpha=1\.5 is outside \[0, 1\]'),
    (dict(stream_dtype='float16'), ValueError, r"stream_dtype='float16' is not supported"),
    (dict(segment_size=0), ValueError, r'segment_size=0 must be >= 1'),
    (dict(reversible='yes'), TypeError, r"reversible must be True or False, got 'yes'"),
    (dict(with_cp=None), TypeError, r'with_cp must be True or False, got None'),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dr2NetSwin3D(**SMALL, **kwargs)


def test_per_stage_lists_of_other_lengths_are_refused_naming_both():
    arch = dict(ARCH, num_heads=(1, 2, 2))
    with pytest.raises(ValueError, match=r"arch\['depths'\]=\(1, 1, 2, 1\) has 4 entries, one per "
                       r"stage, but arch\['num_heads'\]=\(1, 2, 2\) has 3"):
        Dr2NetSwin3D(**dict(SMALL, arch=arch))
    with pytest.raises(ValueError, match=r"arch\['num_heads'\]=\(1, 2, 2, 4, 8\) has 5"):
        Dr2NetSwin3D(**dict(SMALL, arch=dict(ARCH, num_heads=(1, 2, 2, 4, 8))))


def test_frozen_stages_have_no_grads_and_stay_in_eval():
    reference = mmaction_swin(**SMALL, frozen_stages=1, out_indices=ALL_OUT)
    model = dr2net_from(reference, **SMALL, frozen_stages=1, out_indices=ALL_OUT, alpha=0.3,
                        beta=0.7)
    assert model.train() is model
    reference.train()
    frozen = [model.patch_embed, model.layers[0]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert not model.sequences[0].training and all(s.training for s in model.sequences[1:])
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == \
        [(n, p.requires_grad) for n, p in reference.named_parameters()]
    weighted_loss(model(clip(1, 3, 4, 32, 32))).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    errors = model.reconstruction_errors()
    assert errors[0] is None and errors[1:] == [0.0] * 3


def test_benchmark_variants_build_and_train():
    from dr2net_mm.benchmark import swin3d_variants
    variants = swin3d_variants(4, 32, arch=ARCH, window_size=(2, 4, 4), extra=('dr2net_f64', ))
    assert [v.name for v in variants] == ['conventional', 'checkpointing', 'dr2net', 'dr2net_f64']
    for variant in variants:
        model = variant.build()
        model.train()
        assert isinstance(model, Dr2NetSwin3D) == variant.name.startswith('dr2net')
        variant.forward_loss(model).backward()
        assert all(p.grad is not None for p in model.parameters())
