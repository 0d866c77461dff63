"""Training-step time of Dr²Net against checkpointing, variants alternating in one process.

    python tools/step_time.py swin --size 1024 --depths 2-2-18-2 --rounds 3 --warmup 1
    python tools/step_time.py vit --arch vit_large_patch16_224 --size 256 --rounds 3
    python tools/step_time.py dino --size 800x1333 --variants cp_all dr2net_all --rounds 3

Each round runs one step (forward + backward) of every variant in turn, so load from other jobs
falls on all of them alike; the reported time of a variant is the median over the rounds after
``--warmup`` untimed rounds, and its ratio is to ``--base`` (``checkpointing``; for ``dino``,
whole detectors from tools/benchmark.py's configs, ``cp_all``: every layer checkpointed); the same
for the process's CPU time (``time.process_time``), which other jobs on a shared machine disturb
less. Only time is measured (no profiler, no peak memory: ``tools/benchmark.py`` does those).
``--variants`` picks variants by name (the base is always run); ``--out`` writes ``OUT.json``.
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
from dr2net_mm.benchmark import detector_variants, swin_variants, vit_variants  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', choices=['swin', 'vit', 'dino'])
    parser.add_argument('--size', required=True, help='pixels, or HxW for dino (e.g. 800x1333)')
    parser.add_argument('--batch', type=int, default=1, help='dino: images per step')
    parser.add_argument('--backbone', default='swin_t', help='dino: swin_t, vit_l or swin_l')
    parser.add_argument('--depths', default='2-2-6-2', help='swin: depths per stage, e.g. 2-2-18-2')
    parser.add_argument('--arch', default='vit_large_patch16_224', help='vit: a timm ViT name')
    parser.add_argument('--variants', nargs='+', default=['dr2net'],
                        help='besides checkpointing: dr2net, conventional, dr2net_f64_seg4, ...')
    parser.add_argument('--base', default=None,
                        help='the variant ratios are to (default checkpointing; dino: cp_all)')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (>= 3 for a median)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--out', default=None, help='output path without extension')
    args = parser.parse_args(argv)
    if args.model != 'dino' and not args.size.isdigit():
        parser.error(f'--size for {args.model} is one number of pixels, e.g. 512; '
                     f'got {args.size!r}')
    if args.model == 'dino':
        from benchmark import parse_size  # tools/benchmark.py
        try:
            args.hw = parse_size(args.size)
        except argparse.ArgumentTypeError as error:
            parser.error(f'--size: {error}')
    return args


def build_variants(args, wanted):
    """The variants named in ``wanted`` (in that order) and the setting's label."""
    extra = [v for v in wanted if v.startswith('dr2net_') and args.model != 'dino']
    if args.model == 'swin':
        depths = [int(d) for d in args.depths.split('-')]
        variants = swin_variants(int(args.size), 1, depths, extra=extra)
        label = f'swin {args.depths} {args.size}'
    elif args.model == 'vit':
        variants = vit_variants(int(args.size), 1, args.arch, (-1, ), torch.device('cpu'),
                                tuple(extra))
        label = f'{args.arch} {args.size}'
    else:
        from benchmark import DINO_BACKBONES, load_dino_config  # tools/benchmark.py
        configs = DINO_BACKBONES[args.backbone]['configs']
        unknown = [name for name in wanted if name not in configs]
        if unknown:
            raise SystemExit(f'step_time.py dino --backbone {args.backbone}: no variant '
                             f'{", ".join(unknown)}; choose from {", ".join(configs)}')
        variants = detector_variants({name: load_dino_config(configs[name]) for name in wanted},
                                     args.hw, args.batch)
        label = f'dino {args.backbone} {args.size} batch {args.batch}'
    by_name = {v.name: v for v in variants}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise SystemExit(f'step_time.py {args.model}: no variant {", ".join(missing)}; choose '
                         f'from {", ".join(by_name)}')
    return [by_name[name] for name in wanted], label


def main(argv=None) -> dict:
    args = parse_args(argv)
    base_name = args.base or ('cp_all' if args.model == 'dino' else 'checkpointing')
    wanted = [base_name] + [v for v in args.variants if v != base_name]
    variants, label = build_variants(args, wanted)
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
    base = statistics.median(times[base_name])
    cpu_base = statistics.median(cpu_times[base_name])
    report = dict(setting=label, base=base_name, threads=torch.get_num_threads(),
                  rounds=args.rounds, warmup=args.warmup, variants={})
    for name, values in times.items():
        median, cpu = statistics.median(values), statistics.median(cpu_times[name])
        report['variants'][name] = dict(
            step_s=round(median, 3), ratio=round(median / base, 3),
            steps_s=[round(t, 3) for t in values], cpu_s=round(cpu, 3),
            cpu_ratio=round(cpu / cpu_base, 3))
        print(f'{label}: {name:16s} {median:8.3f} s   {median / base:6.3f}x {base_name}   '
              f'({", ".join(f"{t:.2f}" for t in values)});  process CPU time {cpu:.3f} s, '
              f'{cpu / cpu_base:.3f}x')
    if args.out:
        with open(args.out + '.json', 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
