"""The GPU path: reversible backward, random-draw replay, AMP and memory on CUDA.

Every test here needs a CUDA GPU and is skipped, with the reason, elsewhere. Sizes are small: the
whole file runs in about a minute on one GPU (``tools/gpu_check.sh`` runs it). DINO's deformable
attention needs mmcv's CUDA ops or the opt-in pure-PyTorch fallback (``dr2net_mm.mmcv_ops``); the
DINO test switches the fallbacks on itself when the installed mmcv has no CUDA ops, and says so.

Each test prints its figures as one line ``RESULT <test> key=value ...`` (run with ``-s``), which
``tools/gpu_check.sh`` copies into its summary beside the test's pass/fail.
"""
import os

import pytest
import torch

import dr2net_mm  # noqa: F401  (registers the models)
from dr2net_mm.core import gradient_error, set_reversible
from dr2net_mm.core.precision import compute_gradients
from dr2net_mm.models.swin import Dr2NetSwin
from dr2net_mm.models.vit import Dr2NetViT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU (torch.cuda.is_available() is False)')

SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
DEMO_DINO = 'configs/demo/dino_dr2net_swin_t_demo.py'


def result(**figures):
    """Print the current test's figures as ``RESULT <test> key=value ...`` (no spaces in values)."""
    test = os.environ.get('PYTEST_CURRENT_TEST', '?').split('::')[-1].split(' ')[0]
    text = ' '.join(f'{key}={value:.4g}' if isinstance(value, float) else
                    f'{key}={str(value).replace(" ", "_")}' for key, value in figures.items())
    print(f'\nRESULT {test} {text}', flush=True)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def worst_rel(grads, reference):
    return max(rel(grads[name], reference[name]) for name in reference)


def swin(alpha=1.0, beta=0.1, drop_path_rate=0.2):
    torch.manual_seed(0)
    model = Dr2NetSwin(**SWIN_T, drop_path_rate=drop_path_rate, alpha=alpha, beta=beta)
    model.init_weights()
    return model.cuda().train(), torch.randn(2, 3, 64, 64, device='cuda')


def vit(alpha=1.0, beta=0.1, drop_path_rate=0.2):
    torch.manual_seed(0)
    model = Dr2NetViT('vit_small_patch16_224', depth=6, img_size=64, out_indices=(2, 5),
                      drop_path_rate=drop_path_rate, alpha=alpha, beta=beta)
    return model.cuda().train(), torch.randn(2, 3, 64, 64, device='cuda')


BACKBONES = {'swin': swin, 'vit': vit}


# 0. what DINO's mmcv ops run on here: mmcv's CUDA kernels or the fallbacks ----------------------
def test_mmcv_ops_status_on_cuda():
    from dr2net_mm.mmcv_ops import check_deform_attn_on, fallback_requested, status
    info = status()
    result(**info)
    if fallback_requested():  # DR2NET_MMCV_PYTORCH_FALLBACK=1, as tools/gpu_check.sh sets it
        assert info['deform_attn'] == info['focal_loss'] == 'pytorch fallback', info
        check_deform_attn_on('cuda')  # what tools/benchmark.py dino --device cuda asks first


# 1. float32: reversible gradients as precise as ordinary autograd, rebuilt bit for bit -----------
@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_gradients_on_cuda(name, alpha, beta):
    model, x = BACKBONES[name](alpha, beta)
    report = gradient_error(model, x)
    errors = model.reconstruction_errors()  # read on CUDA
    result(reversible_vs_truth=report.reversible_vs_truth.worst,
           reference_vs_truth=report.reference_vs_truth.worst,
           reversible_vs_reference=report.reversible_vs_reference.worst,
           ratio_to_floor=report.ratio_to_floor, reconstruction_error=max(errors),
           device=torch.cuda.get_device_name(0))
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert set(errors) == {0.0}


# 2. autocast: the recomputation replays the half-precision forward ------------------------------
@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_reversible_gradients_under_autocast(name, dtype):
    model, x = BACKBONES[name](0.3, 0.7)
    loss = lambda outs: sum((o.float() * o.float().flip(-1)).mean() for o in outs)  # noqa: E731
    with torch.autocast('cuda', dtype=dtype):
        set_reversible(model, True)
        reversible = compute_gradients(model, x, loss, seed=0)
        errors = model.reconstruction_errors()  # the monitor of this reversible backward
        set_reversible(model, False)
        reference = compute_gradients(model, x, loss, seed=0)
    set_reversible(model, False)
    full = compute_gradients(model, x, loss, seed=0)  # float32, no autocast
    set_reversible(model, True)
    rev_ref, rev_full, ref_full = (worst_rel(reversible, reference), worst_rel(reversible, full),
                                   worst_rel(reference, full))
    result(reversible_vs_autocast_reference=rev_ref, reversible_vs_float32=rev_full,
           autocast_reference_vs_float32=ref_full, reconstruction_error=max(errors))
    # as close to float32 as ordinary autograd under the same autocast, and nearer to it than that
    # is to float32 (CPU bf16, same sizes: swin 0.022 / 0.134 / 0.134, vit 0.0029 / 0.0084 / 0.0084)
    assert rev_full <= 1.25 * ref_full
    assert rev_ref <= ref_full
    assert set(errors) == {0.0}


# 3. drop path: masks drawn from the CUDA generator are replayed, and its stream goes on untouched
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_drop_path_masks_replayed_on_the_cuda_generator(name):
    model, x = BACKBONES[name](0.3, 0.7, drop_path_rate=0.5)
    loss = lambda outs: sum(o.square().mean() for o in outs)  # noqa: E731
    states = {}
    grads = {}
    for mode in (True, False):
        set_reversible(model, mode)
        torch.cuda.manual_seed(1)
        x_ = x.clone().requires_grad_(True)
        out = loss(model(x_))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        g = torch.autograd.grad(out, [x_] + [p for _, p in named])
        grads[mode] = dict(zip(['<input>'] + [n for n, _ in named], g))
        states[mode] = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(2)
    other = model(x)[-1]
    torch.cuda.manual_seed(1)
    same = model(x)[-1]
    result(reversible_vs_reference=worst_rel(grads[True], grads[False]),
           rng_state_equal=torch.equal(states[True], states[False]))
    assert not torch.equal(other, same), 'drop path drew the same masks from two seeds: no masks?'
    assert worst_rel(grads[True], grads[False]) <= 1e-4
    assert torch.equal(states[True], states[False]), 'the recomputation consumed CUDA random draws'


# 4. mmcv's deformable attention on CUDA through the fallback = the same module on CPU -----------
def test_pytorch_deform_attn_fallback_on_cuda_matches_cpu(monkeypatch):
    from mmcv.ops import MultiScaleDeformableAttention, multi_scale_deform_attn

    from dr2net_mm.mmcv_ops import use_pytorch_deform_attn
    monkeypatch.setattr(multi_scale_deform_attn, 'IS_CUDA_AVAILABLE', True)  # restored afterwards
    use_pytorch_deform_attn('test_cuda')
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=2, num_points=2,
                                         batch_first=True)
    inputs = dict(query=torch.randn(1, 5, 32), value=torch.randn(1, 20, 32),
                  reference_points=torch.rand(1, 5, 2, 2), spatial_shapes=torch.tensor([[4, 4], [2, 2]]),
                  level_start_index=torch.tensor([0, 16]))
    cpu = attn(**inputs)
    cuda = attn.cuda()(**{k: v.cuda() for k, v in inputs.items()})
    assert cuda.is_cuda
    result(max_abs_diff_vs_cpu=(cuda.cpu() - cpu).abs().max().item())
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-5), (cuda.cpu() - cpu).abs().max()


# 5. AmpOptimWrapper on the demo DINO: fp16, dynamic loss scale, one forced overflow -------------
def test_amp_dino_demo_steps_and_an_overflow():
    from mmengine.optim import AmpOptimWrapper

    from dr2net_mm.benchmark import build_model, detector_batch, training_loss
    from dr2net_mm.mmcv_ops import mmcv_has_cuda_ops, use_pytorch_fallbacks
    if not mmcv_has_cuda_ops():
        use_pytorch_fallbacks('test_cuda: the installed mmcv has no CUDA ops')
    model = build_model(DEMO_DINO).cuda()
    model.train()
    batch = detector_batch(2, 160, model.bbox_head.num_classes)
    wrapper = AmpOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                              loss_scale='dynamic', dtype=torch.float16)

    def step():
        with wrapper.optim_context(model):
            loss = training_loss(model, batch)
        wrapper.update_params(loss)
        return loss.item()

    losses = [step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    # overflow: a loss scale of 2^40 makes the fp16 gradients infinite; the scaler skips the step
    wrapper.loss_scaler.update(2.0**40)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step()
    scale = wrapper.loss_scaler.get_scale()
    assert scale < 2.0**40, f'no overflow registered: the loss scale stayed {scale}'
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), \
        'the overflowing step changed the weights'
    assert set(model.backbone.reconstruction_errors()) == {0.0}  # the monitor is intact
    losses += [step() for _ in range(2)]
    errors = model.backbone.reconstruction_errors()
    result(losses='/'.join(f'{v:.4g}' for v in losses), scale_after_overflow=scale,
           reconstruction_error=max(errors), max_allocated_mb=torch.cuda.max_memory_allocated() / 2**20)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert set(errors) == {0.0}


# 6. peak memory from max_memory_allocated: Dr²Net below activation checkpointing -----------------
@pytest.mark.parametrize('kind', ['swin', 'vit'])
def test_peak_memory_dr2net_below_checkpointing(kind):
    from dr2net_mm.benchmark import compare, swin_variants, vit_variants
    device = torch.device('cuda')
    if kind == 'swin':
        variants = swin_variants(512, 1, (2, 2, 6, 2), 96, (3, 6, 12, 24), device=device, extra=())
    else:
        variants = vit_variants(512, 1, 'vit_small_patch16_224', (-1, ), device, ())
    results = {r.name: r for r in compare(variants, device, iters=2)}
    figures = {}
    for name, r in results.items():
        figures.update({f'{name}_peak_mb': r.peak_mb, f'{name}_max_allocated_mb': r.cuda_max_allocated_mb,
                        f'{name}_max_reserved_mb': r.cuda_max_reserved_mb})
    result(**figures)
    assert results['dr2net'].peak_mb < results['checkpointing'].peak_mb < \
        results['conventional'].peak_mb


# 8. global attention by head groups and query rows (scaled_dot_product_attention per run), MLP by
# runs of tokens and groups of hidden units (GELU's backward by hand), CUDA -------------------------
@pytest.mark.parametrize('kind', ['vit', 'videomae'])
def test_attention_by_head_groups_and_mlp_by_hidden_groups_on_cuda(monkeypatch, kind):
    import functools

    from dr2net_mm import branches
    from dr2net_mm.branches import head_groups
    from dr2net_mm.core.chunks import FusedPlan, row_parts, run_branch
    from dr2net_mm.models.video_vit import Dr2NetVideoViT
    monkeypatch.setattr(branches, 'row_parts', functools.partial(row_parts, part_elements=2**10))
    monkeypatch.setattr(branches, 'MIN_RUN_ROWS', 16)
    torch.manual_seed(0)
    if kind == 'vit':
        model = Dr2NetViT('vit_small_patch16_224', depth=4, img_size=64, drop_path_rate=0.2,
                          alpha=0.3, beta=0.7, timm_kwargs=dict(init_values=0.5))
        x = torch.randn(2, 3, 64, 64, device='cuda')
    else:
        model = Dr2NetVideoViT(img_size=64, patch_size=16, embed_dims=96, depth=4, num_heads=3,
                               num_frames=8, tubelet_size=2, drop_path_rate=0.2, init_values=0.1,
                               alpha=0.3, beta=0.7)
        x = torch.randn(2, 3, 8, 64, 64, device='cuda')
    model = model.cuda().train()
    attention = model.sequence.functions[0]
    attention_heads = (attention.attn if kind == 'vit' else attention.layer).num_heads
    tokens = torch.randn(2, 64 if kind == 'videomae' else 17, model.embed_dims, device='cuda')
    plan = attention.plan(tokens)
    groups = head_groups(2, tokens.shape[1], attention_heads, model.embed_dims // attention_heads)
    assert isinstance(plan, FusedPlan)
    assert len(groups) > 1, groups
    assert kind == 'vit' or max(len(runs) for _, runs in groups) > 1, groups
    with torch.no_grad():
        by_rows = run_branch(attention.eval(), tokens, ())
        whole = attention(tokens)
    attention.train()
    mlp = model.sequence.functions[1]
    mlp_parts = branches.mlp_parts(2 * tokens.shape[1], model.embed_dims, 4 * model.embed_dims)
    assert isinstance(mlp.plan(tokens), FusedPlan)
    assert len(mlp_parts) > 1 and min(len(units) for _, units in mlp_parts) > 1, mlp_parts
    with torch.no_grad():
        mlp_by_parts = run_branch(mlp.eval(), tokens, ())
        mlp_whole = mlp(tokens)
    mlp.train()
    report = gradient_error(model, x)
    errors = model.reconstruction_errors()
    result(mlp_by_hidden_groups_vs_whole=rel(mlp_by_parts, mlp_whole), mlp_runs=len(mlp_parts),
           branch_by_heads_vs_whole=rel(by_rows, whole), groups=len(groups),
           reversible_vs_truth=report.reversible_vs_truth.worst,
           reference_vs_truth=report.reference_vs_truth.worst, reconstruction_error=max(errors))
    assert rel(by_rows, whole) <= 1e-5
    assert rel(mlp_by_parts, mlp_whole) <= 1e-5
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert set(errors) == {0.0}


# 7. mmdet's sigmoid focal loss on CUDA through the fallback = mmdet's CPU path ----------------------
def test_focal_loss_fallback_on_cuda_matches_cpu(monkeypatch):
    from mmdet.models.losses import FocalLoss, focal_loss

    from dr2net_mm.mmcv_ops import use_pytorch_focal_loss
    monkeypatch.setattr(focal_loss, 'sigmoid_focal_loss', focal_loss.sigmoid_focal_loss)  # restored
    use_pytorch_focal_loss('test_cuda')
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(300, 80, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, 81, (300, ), generator=generator)  # 80: background
    weight = torch.rand(300, generator=generator, dtype=torch.float64)
    losses, grads = [], []
    for device in ('cuda', 'cpu'):
        leaf = pred.to(device).requires_grad_(True)
        loss = FocalLoss()(leaf, target.to(device), weight.to(device), avg_factor=37.0)
        (grad, ) = torch.autograd.grad(loss, leaf)
        losses.append(loss.item())
        grads.append(grad.cpu())
    result(loss=losses[0], loss_diff=abs(losses[0] - losses[1]),
           grad_max_abs_diff=(grads[0] - grads[1]).abs().max().item())
    assert abs(losses[0] - losses[1]) <= 1e-6
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-6)

