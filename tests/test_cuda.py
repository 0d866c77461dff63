"""The GPU path: reversible backward, random-draw replay, AMP and memory on CUDA.

Every test here needs a CUDA GPU and is skipped, with the reason, elsewhere. Sizes are small: the
whole file runs in about a minute on one GPU (``tools/gpu_check.sh`` runs it). DINO's deformable
attention needs mmcv's CUDA ops or the opt-in pure-PyTorch fallback (``dr2net_mm.mmcv_ops``); the
DINO test switches the fallback on itself when the installed mmcv has no CUDA ops, and says so.
"""
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


# 1. float32: reversible gradients as precise as ordinary autograd, rebuilt bit for bit -----------
@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_gradients_on_cuda(name, alpha, beta):
    model, x = BACKBONES[name](alpha, beta)
    report = gradient_error(model, x)
    print(f'\n{name} ({alpha}, {beta}) on {torch.cuda.get_device_name(0)}: {report.as_dict()}')
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst, report.as_dict()
    assert set(model.reconstruction_errors()) == {0.0}


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
    print(f'\n{name} {dtype}: reversible vs autocast reference {rev_ref:.3g}, vs float32 '
          f'{rev_full:.3g}; autocast reference vs float32 {ref_full:.3g}')
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
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-5), (cuda.cpu() - cpu).abs().max()


# 5. AmpOptimWrapper on the demo DINO: fp16, dynamic loss scale, one forced overflow -------------
def test_amp_dino_demo_steps_and_an_overflow():
    from mmengine.optim import AmpOptimWrapper

    from dr2net_mm.benchmark import build_model, detector_batch, training_loss
    from dr2net_mm.mmcv_ops import mmcv_has_cuda_ops, use_pytorch_deform_attn
    if not mmcv_has_cuda_ops():
        use_pytorch_deform_attn('test_cuda: the installed mmcv has no CUDA ops')
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
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert set(model.backbone.reconstruction_errors()) == {0.0}


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
    print({name: round(r.peak_mb, 1) for name, r in results.items()})
    assert results['dr2net'].peak_mb < results['checkpointing'].peak_mb < \
        results['conventional'].peak_mb
