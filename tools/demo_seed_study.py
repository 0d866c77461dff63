"""How much of `make demo`'s bbox mAP is seed noise: the DINO demo trained with several seeds per
backbone variant, each evaluated with tools/test.py, summarised as mean ± std.

Variants (all on configs/demo/dino_dr2net_swin_t_demo.py, same data, same schedule):

* ``dr2net``: the demo config as it is (exact streams, AlphaBetaHook (1, 0.1) -> (0.3, 0.7));
* ``float64``: the same with float64 streams and ``segment_size=4`` (the documented float
  alternative);
* ``conventional``: mmdet's ``SwinTransformer`` with the same pretrained stand-in, no AlphaBetaHook;
* ``dr2net_all``: configs/demo/dino_dr2net_all_swin_t_demo.py (the demo config plus a reversible
  deformable encoder and a checkpointed decoder; the hook drives backbone and encoder).

The seed is ``randomness.seed`` (data order, flips, denoising queries, initialisation of the head).
Writes ``results/demo_seed_study.{json,md}``::

    python tools/demo_seed_study.py [--seeds 0 1 2] [--variants dr2net float64 conventional dr2net_all]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import run_logged, step  # noqa: E402

CONFIG = 'configs/demo/dino_dr2net_swin_t_demo.py'
DATA = 'data/demo_coco'
PRETRAINED = os.path.join(DATA, 'swin_tiny_official_random.pth')
CONFIG_ALL = 'configs/demo/dino_dr2net_all_swin_t_demo.py'
VARIANTS = ('dr2net', 'float64', 'conventional', 'dr2net_all')
METRIC = re.compile(r'coco/bbox_mAP: ([\d.]+)\s+coco/bbox_mAP_50: ([\d.]+)')


def variant_config(name: str, seed: int, path: str) -> str:
    """Write the demo config of variant ``name`` with ``seed`` to ``path``; return ``path``."""
    from mmengine.config import Config

    from dr2net_mm.benchmark import swap_backbone
    cfg = Config.fromfile(os.path.join(ROOT, CONFIG_ALL if name == 'dr2net_all' else CONFIG))
    if name == 'float64':
        cfg.model.backbone.update(stream_dtype='float64', segment_size=4)
    elif name == 'conventional':
        cfg = swap_backbone(cfg, 'SwinTransformer', with_cp=False)
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'AlphaBetaHook']
    elif name not in ('dr2net', 'dr2net_all'):
        raise ValueError(f'unknown variant {name!r}; choose from {VARIANTS}')
    cfg.randomness = dict(seed=seed)
    cfg.dump(path)
    return path


def run_one(name: str, seed: int, work_root: str) -> dict:
    work_dir = os.path.join(work_root, f'{name}_seed{seed}')
    os.makedirs(work_dir, exist_ok=True)
    config = variant_config(name, seed, os.path.join(work_dir, 'config.py'))
    python = sys.executable
    start = time.time()
    run_logged([python, 'tools/train.py', config, '--work-dir', work_dir],
               os.path.join(work_dir, 'train_output.log'), show=r'Epoch\(val\)|Error|error:')
    train_s = time.time() - start
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    log = run_logged([python, 'tools/test.py', config, checkpoint, '--work-dir', work_dir],
                     os.path.join(work_dir, 'test_output.log'), show=r'bbox_mAP:')
    found = METRIC.findall(log)
    if not found:
        raise SystemExit(f'no bbox_mAP in {work_dir}/test_output.log')
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or 'unknown'
    return dict(variant=name, seed=seed, bbox_mAP=float(found[-1][0]),
                bbox_mAP_50=float(found[-1][1]), train_seconds=round(train_s, 1), commit=commit)


def summarise(runs: list) -> list:
    rows = []
    for name in dict.fromkeys(r['variant'] for r in runs):
        mine = [r for r in runs if r['variant'] == name]
        row = dict(variant=name, seeds=[r['seed'] for r in mine])
        for key in ('bbox_mAP', 'bbox_mAP_50', 'train_seconds'):
            values = [r[key] for r in mine]
            row[key] = [statistics.mean(values),
                        statistics.stdev(values) if len(values) > 1 else 0.0]
        rows.append(row)
    return rows


def markdown(rows: list, runs: list) -> str:
    lines = ['| variant | seeds | bbox mAP | mAP@50 | training time (s) |', '|---|---|---|---|---|']
    for row in rows:
        cells = [f'{m:.3f} ± {s:.3f}' for m, s in (row['bbox_mAP'], row['bbox_mAP_50'])]
        lines.append(f"| {row['variant']} | {', '.join(map(str, row['seeds']))} | {cells[0]} | "
                     f"{cells[1]} | {row['train_seconds'][0]:.0f} |")
    lines += ['', '| variant | seed | bbox mAP | mAP@50 | commit |', '|---|---|---|---|---|']
    lines += [f"| {r['variant']} | {r['seed']} | {r['bbox_mAP']:.3f} | {r['bbox_mAP_50']:.3f} | "
              f"{r.get('commit', '?')} |" for r in runs]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--work-dir', default='work_dirs/demo_seed_study')
    parser.add_argument('--out', default='results/demo_seed_study')
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
    make_demo_coco(DATA)
    write_swin_official_checkpoint(PRETRAINED)
    runs_path = os.path.join(args.work_dir, 'runs.json')
    runs = json.load(open(runs_path)) if os.path.isfile(runs_path) else []
    for seed in args.seeds:
        for name in args.variants:
            if any(r['variant'] == name and r['seed'] == seed for r in runs):
                continue  # done in an earlier, interrupted call
            step(f'{name}, seed {seed}')
            runs.append(run_one(name, seed, args.work_dir))
            print(runs[-1], flush=True)
            with open(runs_path, 'w') as f:
                json.dump(runs, f, indent=1)
    runs = [r for r in runs if r['variant'] in args.variants and r['seed'] in args.seeds]
    rows = summarise(runs)
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(config=CONFIG, command='python tools/demo_seed_study.py ' +
                       ' '.join(argv if argv is not None else sys.argv[1:]),
                       summary=rows, runs=runs), f, indent=1)
    table = markdown(rows, runs)
    with open(args.out + '.md', 'w') as f:
        f.write(table)
    print(table)


if __name__ == '__main__':
    main()
