"""FSDP1 (MMEngine's MMFullyShardedDataParallel) and DeepSpeed ZeRO with reversible stages, on one
GPU (world size 1, NCCL): gradients against the plain model. Run from the repository root:

    python tools/fsdp_gpu_check.py --out gpu_check_out/fsdp.json

Each case wraps a fresh tiny Dr2NetSwin classifier (tests/test_fsdp.py: SwinNet, exact streams), runs
one forward/backward on the same batch as the reference, and compares every parameter's gradient
(FSDP1: summon_full_params(with_grads=True); DeepSpeed: the update of one SGD step with lr=1, i.e.
-grad). PASS: max |g - g_ref| <= 1e-5 * max |g_ref| for every parameter (TF32 off). Exit code 0 when
every case ran (pass or fail is in the JSON), 2 on bad arguments.
"""
import argparse
import json
import os
import sys
import tempfile
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]  # this checkout's dr2net_mm; SwinNet
from test_fsdp import SwinNet, loss_of  # noqa: E402

TOLERANCE = 1e-5


def reference(device):
    model = SwinNet().to(device).train()
    loss_of(model, SwinNet.inputs().to(device)).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def worst(grads, ref):
    missing = sorted(set(ref) - set(grads))
    if missing:
        return float('inf'), f'no gradient for {missing[:3]}'
    rel = max(((grads[n].float().cpu() - g.cpu()).abs().max() / g.abs().max().clamp_min(1e-30)).item()
              for n, g in ref.items())
    return rel, None


def fsdp1(policy, device):
    from mmdet.models.backbones.swin import SwinBlock
    from mmengine.model import MMFullyShardedDataParallel
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from dr2net_mm.models.swin import Dr2NetSwinStage
    classes = {'whole': None, 'stage': {Dr2NetSwinStage}, 'block': {SwinBlock}}[policy]
    model = MMFullyShardedDataParallel(
        module=SwinNet().train(), device_id=device.index,
        auto_wrap_policy=ModuleWrapPolicy(classes) if classes else None)
    loss_of(model, SwinNet.inputs().to(device)).backward()
    with FSDP.summon_full_params(model, with_grads=True):
        return {n.replace('_fsdp_wrapped_module.', ''): p.grad.detach().clone()
                for n, p in model.named_parameters() if p.grad is not None}


def deepspeed_zero(stage, device):
    import deepspeed
    model = SwinNet().to(device).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        config=dict(train_micro_batch_size_per_gpu=4, zero_allow_untested_optimizer=True,
                    zero_optimization=dict(stage=stage)))
    loss = loss_of(engine, SwinNet.inputs().to(device))
    engine.backward(loss)
    engine.step()
    params = list(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=stage == 3):
        return {n: before[n] - p.detach() for n, p in params}  # lr 1: the step is -grad


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='JSON file for the results')
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
    init = tempfile.mktemp(prefix='fsdp_gpu_check_')
    torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                         init_method=f'file://{init}', rank=0, world_size=1)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    os.environ.setdefault('LOCAL_RANK', '0')
    import dr2net_mm  # noqa: F401  (registers the backbones; the wrap-time warnings)
    ref = reference(device)
    cases = {f'fsdp1-{p}': (fsdp1, p) for p in ('whole', 'stage', 'block')}
    cases.update({f'deepspeed-zero{s}': (deepspeed_zero, s) for s in (1, 2, 3)})
    results = dict(torch=torch.__version__, device=str(torch.cuda.get_device_name(device)
                                                       if device.type == 'cuda' else device),
                   world_size=1, tolerance=TOLERANCE, cases={})
    for name, (run, arg) in cases.items():
        try:
            rel, problem = worst(run(arg, device), ref)
            status = 'PASS' if problem is None and rel <= TOLERANCE else 'FAIL'
            results['cases'][name] = dict(status=status, max_rel_diff=rel, problem=problem)
        except ImportError as error:
            results['cases'][name] = dict(status='SKIP', problem=f'{error}')
        except Exception as error:  # a wrapper that cannot run: record it, go on
            results['cases'][name] = dict(status='FAIL', problem=f'{type(error).__name__}: {error}',
                                          where=traceback.format_exc(limit=-3))
        case = results['cases'][name]
        detail = case.get('problem') or f"max relative difference {case['max_rel_diff']:.3g}"
        print(f'SUMMARY {name}: {case["status"]} ({detail})', flush=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
