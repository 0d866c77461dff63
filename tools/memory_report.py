"""Memory report of any mmdet / mmseg / mmaction config: what each part of the model keeps for
backward, where the training step peaks, and the largest batch that fits a budget.

    python tools/memory_report.py configs/upernet_swin_t_ade20k.py --size 512 --batch 2
    python tools/memory_report.py conventional=configs/upernet_swin_t_ade20k.py \\
        cp_lean=configs/upernet_swin_t_cp_lean_ade20k.py \\
        dr2net_lean=configs/upernet_dr2net_swin_t_lean_ade20k.py --size 512 --batch 2 --rss \\
        --out results/memory_upernet_swin_t_512
    python tools/memory_report.py configs/dino_swin_t_coco.py --size 800x1333 --budget 8000

Each config (``NAME=PATH`` or just ``PATH``: the name is the file's stem) is one variant, built with
random weights and trained on one synthetic batch. ``--out PREFIX`` writes PREFIX.md, PREFIX.json
and PREFIX.png (one stacked bar per variant). ``--rss`` measures each variant's peak a second way: the
resident high-water mark of a fresh process. How to read it: docs/memory_report.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dr2net_mm  # noqa: E402,F401  (registers the Dr²Net modules; makes mmaction.models importable)
from dr2net_mm.benchmark.measure import MB  # noqa: E402
from dr2net_mm.benchmark.report import (BudgetError, build, config_kind, largest_batch,  # noqa: E402
                                        load_config, make_batch, markdown, part_report, plot,
                                        step_memory_mb)
from dr2net_mm.benchmark.rss import available as rss_available  # noqa: E402
from dr2net_mm.benchmark.rss import child_env, median_resident_peak_bytes  # noqa: E402
from dr2net_mm.benchmark.variants import training_loss  # noqa: E402


def parse_size(text: str):
    """'512' -> 512 (square), '800x1333' -> (800, 1333) (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 32:
        raise argparse.ArgumentTypeError(f'size must look like 512 or 800x1333 (each >= 32), got '
                                         f'{text!r}')
    return parts[0] if len(parts) == 1 else tuple(parts)


def variant(text: str):
    """'NAME=PATH' or 'PATH' -> (name, path)."""
    name, sep, path = text.partition('=')
    if not sep:
        name, path = os.path.splitext(os.path.basename(text))[0], text
    if not name or not path:
        raise argparse.ArgumentTypeError(f'variant {text!r}: give NAME=PATH or PATH')
    return name, path


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', type=variant, metavar='[NAME=]CONFIG',
                        help='config files, one variant each')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='overrides for every config, key=value (as tools/train.py)')
    parser.add_argument('--size', type=parse_size, default=512,
                        help='input size: 512 (square) or HxW such as 800x1333 (detectors)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--frames', type=int, default=16, help='video: frames per clip')
    parser.add_argument('--points', type=int, default=24000, help='point clouds: points per crop')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--parts', nargs='+', default=(), metavar='PART',
                        help='submodules to report as parts of their own besides the model\'s direct '
                        'children, e.g. decode_head.fpn_bottleneck')
    parser.add_argument('--budget', type=float, default=None, metavar='MB',
                        help='also find the largest batch whose step memory fits MB')
    parser.add_argument('--search', choices=['linear', 'bisect'], default=None,
                        help='budget search: linear (extrapolate from the two smallest batches, '
                        'check the prediction; default on CPU) or bisect (default on CUDA)')
    parser.add_argument('--rss', action='store_true',
                        help='second peak measurement: resident high-water mark in a fresh process')
    parser.add_argument('--iters', type=int, default=2, help='--rss: steps (median)')
    parser.add_argument('--out', default=None, help='write OUT.md, OUT.json, OUT.png')
    parser.add_argument('--rss-child', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--rss-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.frames < 1 or args.points < 1:
        parser.error(f'--batch {args.batch} --iters {args.iters} --frames {args.frames} --points '
                     f'{args.points}: each must be >= 1')
    if args.budget is not None and args.budget <= 0:
        parser.error(f'--budget {args.budget}: give the memory budget in MB, > 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here; use --device cpu')
    if args.rss and args.device == 'cuda':
        parser.error('--rss measures host memory; on CUDA the second figure is the allocator\'s '
                     'peak (always reported); drop --rss')
    names = [name for name, _ in args.configs]
    if len(set(names)) != len(names):
        parser.error(f'variant names {names} repeat: name them NAME=PATH')
    for _, path in args.configs:
        if not os.path.isfile(path):
            parser.error(f'config {path!r} not found: give the path of an mmdet / mmseg / mmaction '
                         'config file, such as configs/upernet_swin_t_ade20k.py')
    args.search = args.search or ('bisect' if args.device == 'cuda' else 'linear')
    return args


def prepare(args, path):
    """(config, kind, model) of one variant."""
    cfg = load_config(path, args.cfg_options)
    kind = config_kind(cfg)
    return cfg, kind, build(cfg, kind, args.size)


def batch_of(args, kind, model, batch):
    return make_batch(kind, model, args.size, batch, args.frames, args.points)


def rss_child(args) -> None:
    """Resident peak of one variant in this fresh process, written as JSON to --rss-out."""
    _, kind, model = prepare(args, args.configs[args.rss_child][1])
    batch = batch_of(args, kind, model, args.batch)
    model.train()

    def step():
        training_loss(model, batch).backward()

    step()  # allocates the gradient buffers, as part_report's warm-up step does
    peak = median_resident_peak_bytes(step, args.iters)
    with open(args.rss_out, 'w') as f:
        json.dump(dict(rss_peak_mb=peak / MB), f)


def resident_peak(argv, index: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'rss.json')
        cmd = [sys.executable, os.path.abspath(__file__), *argv, '--rss-child', str(index),
               '--rss-out', out]
        subprocess.run(cmd, check=True, env=child_env(), stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)['rss_peak_mb']


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.rss_child is not None:
        return rss_child(args)
    if args.rss and not rss_available():
        raise SystemExit('--rss needs Linux /proc/self/clear_refs; run without --rss here')
    device = torch.device(args.device)
    reports = {}
    for index, (name, path) in enumerate(args.configs):
        print(f'[{index + 1}/{len(args.configs)}] {name}: {path} ...', flush=True)
        try:
            _, kind, model = prepare(args, path)
            report = part_report(model, batch_of(args, kind, model, args.batch), device, args.parts)
            if args.budget is not None:
                report['budget'] = largest_batch(
                    lambda b: step_memory_mb(model, batch_of(args, kind, model, b), device),
                    args.budget, args.search)
        except (ValueError, FileNotFoundError) as error:
            raise SystemExit(f'{name} ({path}): {error}') from None
        del model
        if args.rss:
            report['rss_peak_mb'] = resident_peak([a for a in argv if a != '--rss'], index)
        report.update(config=path, kind=kind)
        reports[name] = report
        print(f'    saved {report["saved_total_mb"]:.1f} MB, peak {report["peak_mb"]:.1f} MB '
              f'({report["peak_at"]})', flush=True)
    text = markdown(reports)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        header = (f'`python tools/memory_report.py {" ".join(argv)}` — {args.device}, '
                  f'{torch.get_num_threads()} threads, torch {torch.__version__}, '
                  f'{time.strftime("%Y-%m-%d")}')
        with open(args.out + '.md', 'w') as f:
            f.write(f'{header}\n\n{text}\n')
        with open(args.out + '.json', 'w') as f:
            json.dump(dict(command=argv, device=args.device, torch=torch.__version__,
                           date=time.strftime('%Y-%m-%d'), variants=reports), f, indent=1)
        size = args.size if isinstance(args.size, int) else 'x'.join(map(str, args.size))
        plot(reports, args.out + '.png', f'{size}, batch {args.batch}, {args.device}')
        print(f'wrote {args.out}.md, {args.out}.json, {args.out}.png')
    return reports


if __name__ == '__main__':
    main()
