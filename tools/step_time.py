"""Training-step time of Dr²Net against checkpointing, variants alternating in one process.

    python tools/step_time.py swin --size 1024 --depths 2-2-18-2 --rounds 3 --warmup 1
    python tools/step_time.py vit --arch vit_large_patch16_224 --size 256 --rounds 3

Each round runs one step (forward + backward) of every variant in turn, so load from other jobs
falls on all of them alike; the reported time of a variant is the median over the rounds after
``--warmup`` untimed rounds, and its ratio is to ``checkpointing``; the same for the process's
CPU time (``time.process_time``), which other jobs on a shared machine disturb less. Only time is
measured (no profiler, no peak memory: ``tools/benchmark.py`` does those). ``--variants`` picks
variants by name (``checkpointing`` is always run); ``--out`` writes ``OUT.json``.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import dr2net_mm  # noqa: E402,F401
from dr2net_mm.benchmark import swin_variants, vit_variants  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', choices=['swin', 'vit'])
    parser.add_argument('--size', type=int, required=True)
    parser.add_argument('--depths', default='2-2-6-2', help='swin: depths per stage, e.g. 2-2-18-2')
    parser.add_argument('--arch', default='vit_large_patch16_224', help='vit: a timm ViT name')
    parser.add_argument('--variants', nargs='+', default=['dr2net'],
                        help='besides checkpointing: dr2net, conventional, dr2net_f64_seg4, ...')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (>= 3 for a median)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--out', default=None, help='output path without extension')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    extra = [v for v in args.variants if v.startswith('dr2net_')]
    if args.model == 'swin':
        depths = [int(d) for d in args.depths.split('-')]
        variants = swin_variants(args.size, 1, depths, extra=extra)
        label = f'swin {args.depths} {args.size}'
    else:
        variants = vit_variants(args.size, 1, args.arch, (-1, ), torch.device('cpu'), tuple(extra))
        label = f'{args.arch} {args.size}'
    wanted = ['checkpointing'] + [v for v in args.variants if v != 'checkpointing']
    variants = [v for v in variants if v.name in wanted]
    models = {v.name: v.build() for v in variants}
    for model in models.values():
        model.train()  # not chained: some mm backbones' train() returns None
    times = {v.name: [] for v in variants}
    cpu_times = {v.name: [] for v in variants}
    for round_ in range(args.warmup + args.rounds):
        for variant in variants:
            model = models[variant.name]
            start, cpu_start = time.perf_counter(), time.process_time()
            variant.forward_loss(model).backward()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            model.zero_grad(set_to_none=False)
            if round_ >= args.warmup:
                times[variant.name].append(elapsed)
                cpu_times[variant.name].append(cpu)
    base = statistics.median(times['checkpointing'])
    cpu_base = statistics.median(cpu_times['checkpointing'])
    report = dict(setting=label, threads=torch.get_num_threads(), rounds=args.rounds,
                  warmup=args.warmup, variants={})
    for name, values in times.items():
        median, cpu = statistics.median(values), statistics.median(cpu_times[name])
        report['variants'][name] = dict(
            step_s=round(median, 3), ratio=round(median / base, 3),
            steps_s=[round(t, 3) for t in values], cpu_s=round(cpu, 3),
            cpu_ratio=round(cpu / cpu_base, 3))
        print(f'{label}: {name:16s} {median:8.3f} s   {median / base:6.3f}x checkpointing   '
              f'({", ".join(f"{t:.2f}" for t in values)});  process CPU time {cpu:.3f} s, '
              f'{cpu / cpu_base:.3f}x')
    if args.out:
        with open(args.out + '.json', 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
