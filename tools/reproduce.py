"""``make reproduce``: the paper's finetuning comparison in miniature, on real data, on a CPU.

1. Pretrain a tiny timm ViT (:data:`dr2net_mm.demo.digits.VIT`) conventionally on the digits 0-4 of
   scikit-learn's bundled handwritten digits and save its state dict (timm layout): the pretrained
   non-reversible model. Its source test accuracy is reported.
2. Finetune it on the digits 5-9 (30 training images per class) through MMEngine's Runner, from
   configs/demo/digits_dr2net_vit_demo.py, in the rows of :data:`ROWS` (the paper's Tables 2/3/5-7),
   each with the same schedule, iterations and seeds; report the test accuracy, mean ± std over the
   seeds, and the peak memory of one training step (dr2net_mm.benchmark.measure).
3. Write results/reproduce_digits.{json,md,png}.

    python tools/reproduce.py [--iters 600] [--seeds 0 1 2 3 4] [--rows dr2net ...]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's dr2net_mm
CONFIG = os.path.join(ROOT, 'configs', 'demo', 'digits_dr2net_vit_demo.py')
END = (0.3, 0.7)

# name: (backbone type, pretrained, frozen, (alpha, beta) or None, AlphaBetaHook, stream dtype, what)
# The first eight are the paper's rows; the *_float32 two run the reversible backward on float32
# streams (the paper's implementation) instead of this package's default bit-exact streams.
ROWS = {
    'frozen_random': ('PlainViT', False, True, None, False, None, 'random backbone, frozen; head only'),
    'frozen_pretrained': ('PlainViT', True, True, None, False, None, 'pretrained backbone, frozen; head only'),
    'conventional': ('PlainViT', True, False, None, False, None, 'conventional end-to-end finetuning'),
    'with_cp': ('PlainViT', True, False, None, False, None, 'conventional + activation checkpointing'),
    'reversible_scratch': ('Dr2NetViT', False, False, END, False, 'exact',
                           'reversible at (0.3, 0.7), random init'),
    'hard_finetune': ('Dr2NetViT', True, False, END, False, 'exact', 'pretrained, (0.3, 0.7) from iteration 0'),
    'vanilla': ('Dr2NetViT', True, False, (1.0, 0.1), False, 'exact', 'pretrained, (1, 0.1) throughout'),
    'dr2net': ('Dr2NetViT', True, False, (1.0, 0.1), True, 'exact',
               'pretrained, AlphaBetaHook (1, 0.1) -> (0.3, 0.7)'),
    'vanilla_float32': ('Dr2NetViT', True, False, (1.0, 0.1), False, 'float32',
                        'vanilla with float32 streams'),
    'dr2net_float32': ('Dr2NetViT', True, False, (1.0, 0.1), True, 'float32', 'dr2net with float32 streams'),
}


def row_config(row: str, seed: int, iters: int, pretrained: str, work_dir: str):
    """The MMEngine config of one row and seed, derived from :data:`CONFIG`."""
    from mmengine.config import Config
    kind, use_pretrained, frozen, coefficients, hook, stream, _ = ROWS[row]
    cfg = Config.fromfile(CONFIG)
    backbone = cfg.model.backbone
    backbone.type = kind
    for key in ('alpha', 'beta', 'reversible', 'stream_dtype'):
        backbone.pop(key)
    if coefficients is not None:
        backbone.alpha, backbone.beta = coefficients
    if stream is not None:
        backbone.stream_dtype = stream
    if row == 'with_cp':
        backbone.with_cp = True
    if use_pretrained:
        backbone.init_cfg.checkpoint = pretrained
    else:
        backbone.pop('init_cfg')
    cfg.model.frozen = frozen
    # (α, β) reach the end point halfway, in 30 steps (the config's η = 10 at 600 iterations)
    cfg.custom_hooks = [dict(cfg.custom_hooks[0], end_iter=iters // 2, interval=max(1, iters // 60))
                        ] if hook else []
    cfg.train_cfg.max_iters = iters
    cfg.default_hooks.logger.interval = min(cfg.default_hooks.logger.interval, iters)
    cfg.param_scheduler[0].end = min(20, iters // 2)
    cfg.param_scheduler[1].begin = cfg.param_scheduler[0].end
    cfg.param_scheduler[1].end = iters
    cfg.randomness = dict(seed=seed)
    cfg.work_dir = os.path.join(work_dir, f'{row}_seed{seed}')
    return cfg


def finetune(cfg) -> float:
    """Train with MMEngine's Runner, then test; the test accuracy (%)."""
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.test()['accuracy']


def step_memory(cfg, batch_size: int = 32) -> dict:
    """Peak and saved memory (MB) and time of one training step of the row's model on a training
    batch (dr2net_mm.benchmark.measure; CPU: profiler allocation events), at the row's starting
    (α, β)."""
    from mmengine.registry import MODELS

    from dr2net_mm.benchmark.measure import Variant, measure
    from dr2net_mm.demo.digits import digit_splits
    images, labels = digit_splits()['target_train']
    batch = torch.arange(batch_size) % len(labels)

    def build():
        model = MODELS.build(cfg.model)
        model.init_weights()
        return model

    result = measure(Variant('row', build, lambda m: m(images[batch], labels[batch], mode='loss')['loss']),
                     torch.device('cpu'), iters=3)
    return dict(peak_mb=result.peak_mb, saved_mb=result.saved_mb, step_ms=result.step_ms)


def summarise(accuracies):
    mean = statistics.mean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return mean, std


def markdown(result: dict) -> str:
    lines = [f"Downstream: digits 5-9, {result['train_images']} training / {result['test_images']} test "
             f"images; {result['iters']} iterations, batch 32, seeds {result['seeds']}; pretrained on "
             f"digits 0-4 (source test accuracy {result['source_accuracy']:.1f}%). Wall time "
             f"{result['wall_s'] / 60:.1f} min.", '',
             '| row | what | test accuracy % (mean ± std) | per seed | step peak MB | saved MB | step ms |',
             '|---|---|---|---|---|---|---|']
    for name, row in result['rows'].items():
        seeds = ' / '.join(f'{a:.1f}' for a in row['accuracy'])
        lines.append(f"| {name} | {row['what']} | {row['mean']:.1f} ± {row['std']:.1f} | {seeds} | "
                     f"{row['peak_mb']:.2f} | {row['saved_mb']:.2f} | {row['step_ms']:.1f} |")
    return '\n'.join(lines) + '\n'


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(result['rows'])
    rows = [result['rows'][n] for n in names]
    fig, (acc, mem) = plt.subplots(1, 2, figsize=(14, 5))
    acc.bar(names, [r['mean'] for r in rows], yerr=[r['std'] for r in rows], capsize=4, color='tab:blue')
    for i, r in enumerate(rows):
        acc.plot([i] * len(r['accuracy']), r['accuracy'], 'k.', markersize=4)
        acc.text(i, r['mean'] + r['std'] + 0.5, f"{r['mean']:.1f}", ha='center', fontsize=8)
        mem.text(i, r['peak_mb'], f"{r['peak_mb']:.2f}", ha='center', va='bottom', fontsize=8)
    acc.set_ylabel('test accuracy %, digits 5-9 (mean ± std, dots: seeds)')
    mem.bar(names, [r['peak_mb'] for r in rows], color='tab:orange')
    acc.set_ylim(max(0, min(min(r['accuracy']) for r in rows) - 5), 101)
    mem.set_ylabel('training-step peak MB (CPU, batch 32)')
    for axis in (acc, mem):
        axis.tick_params(axis='x', rotation=45)
        for label in axis.get_xticklabels():
            label.set_horizontalalignment('right')
    fig.suptitle(f"Tiny ViT pretrained on digits 0-4 (source acc. {result['source_accuracy']:.1f}%), "
                 f"finetuned on 5-9: {result['iters']} iterations × {len(result['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=600, help='finetuning iterations per run')
    parser.add_argument('--pretrain-iters', type=int, default=3000)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    parser.add_argument('--work-dir', default=os.path.join(ROOT, 'work_dirs', 'reproduce'))
    parser.add_argument('--out', default=os.path.join(ROOT, 'results', 'reproduce_digits'),
                        help='results are written to OUT.json, OUT.md and OUT.png')
    args = parser.parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)  # a tiny model: one thread per step is faster than two competing ones
    import dr2net_mm  # noqa: F401  (registers the backbones and the hook)
    from dr2net_mm.demo.digits import digit_splits, pretrain
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pretrained = os.path.join(args.work_dir, 'vit_digits04_timm.pth')
    source_accuracy = pretrain(pretrained, iters=args.pretrain_iters)
    print(f'pretrained on digits 0-4: source test accuracy {source_accuracy:.1f}% -> {pretrained}',
          flush=True)
    splits = digit_splits()
    result = dict(source_accuracy=source_accuracy, iters=args.iters, seeds=args.seeds,
                  pretrain_iters=args.pretrain_iters, train_images=len(splits['target_train'][1]),
                  test_images=len(splits['target_test'][1]), end_point=END, rows={})
    for row in args.rows:
        accuracies = []
        for seed in args.seeds:
            accuracies.append(finetune(row_config(row, seed, args.iters, pretrained, args.work_dir)))
            print(f'{row} seed {seed}: {accuracies[-1]:.2f}%  ({time.time() - start:.0f} s)', flush=True)
        mean, std = summarise(accuracies)
        memory = step_memory(row_config(row, 0, args.iters, pretrained, args.work_dir))
        result['rows'][row] = dict(what=ROWS[row][6], accuracy=accuracies, mean=mean, std=std, **memory)
        print(f'{row}: {mean:.2f} ± {std:.2f}%, step peak {memory["peak_mb"]:.2f} MB', flush=True)
    result['wall_s'] = time.time() - start
    result['torch'] = torch.__version__
    result['command'] = 'python tools/reproduce.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    with open(args.out + '.json', 'w') as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(args.out + '.md', 'w') as f:
        f.write(table)
    plot(result, args.out + '.png')
    print(table, flush=True)
    print(f'wall time {result["wall_s"]:.0f} s; wrote {args.out}.json/.md/.png')
    return result


if __name__ == '__main__':
    main()
