"""`make demo-points`: Pix4Point-style point-cloud segmentation with a Dr²Net ViT-S, on a CPU.

1. generates synthetic S3DIS-layout rooms (data/demo_s3dis: Areas 1-4 and 6 for training, Area 5 for
   validation) and a randomly initialised ViT-S in the MAE release layout, the stand-in for the
   pretrained weights (python -m dr2net_mm.demo.rooms);
2. trains configs/demo/pix4point_dr2net_vit_s_demo.py with tools/train.py (AlphaBetaHook moves
   (α, β) from (1, 0.1) to (0.3, 0.7)); it validates on the whole Area-5 rooms at the end (voting
   over crops, every point labelled);
3. prints the mIoU, overall accuracy and per-class IoU of that validation.

    python tools/demo_points.py [--iters N] [--work-dir DIR]
"""
import argparse
import glob
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import run_logged  # noqa: E402

CONFIG = 'configs/demo/pix4point_dr2net_vit_s_demo.py'
DATA = 'data/demo_s3dis'
SHOW = re.compile(r'Iter\(train\) \[\s*\d*0/|Error\b|^error:|Traceback')
FIELDS = ('loss_seg', 'acc_seg', 'alpha', 'beta', 'time')


def brief(line: str) -> str:
    """A training log line reduced to the iteration and :data:`FIELDS`."""
    step = re.search(r'Iter\(train\) \[\s*\d+/\d+\]', line)
    if not step:
        return line.rstrip()[:150]
    values = [f'{k} {m.group(1)}' for k in FIELDS
              for m in [re.search(rf'\b{k}: ([-0-9.e]+)', line)] if m]
    return step.group(0) + '  ' + '  '.join(values)


def last_validation(work_dir: str) -> dict:
    """The validation scalars of the latest run in ``work_dir`` (vis_data/scalars.json)."""
    runs = sorted(glob.glob(os.path.join(work_dir, '[0-9]*_[0-9]*', 'vis_data', 'scalars.json')))
    with open(runs[-1]) as f:
        logged = [json.loads(line) for line in f]
    return [s for s in logged if 'points/mIoU' in s][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=None, help='override max_iters (default: the '
                        "config's)")
    parser.add_argument('--work-dir', default='work_dirs/demo_points')
    args = parser.parse_args(argv)
    from mmengine.config import Config
    warmup = Config.fromfile(os.path.join(ROOT, CONFIG)).param_scheduler[0]['end']  # then cosine
    if args.iters is not None and args.iters <= warmup:
        parser.error(f'--iters {args.iters}: need more than the {warmup} warm-up iterations of the '
                     f'demo config (e.g. --iters {4 * warmup})')
    start = time.time()
    os.chdir(ROOT)

    print('=== 1/3 demo rooms and the stand-in pretrained ViT-S', flush=True)
    from dr2net_mm.demo.data import write_vit_timm_checkpoint
    from dr2net_mm.demo.rooms import DEMO_CHECKPOINT, make_demo_rooms
    make_demo_rooms(DATA)
    write_vit_timm_checkpoint(os.path.join(DATA, DEMO_CHECKPOINT))
    rooms = sorted(n for n in os.listdir(DATA) if n.endswith('.npy'))
    print(f'{DATA}: {len(rooms)} rooms ({sum(n.startswith("Area_5_") for n in rooms)} in Area 5 for '
          f'validation) and {DEMO_CHECKPOINT}', flush=True)

    print(f'\n=== 2/3 train and validate {CONFIG} (tools/train.py)', flush=True)
    os.makedirs(args.work_dir, exist_ok=True)
    cmd = [sys.executable, 'tools/train.py', CONFIG, '--work-dir', args.work_dir]
    if args.iters:
        cmd += ['--cfg-options', f'train_cfg.max_iters={args.iters}',
                f'train_cfg.val_interval={args.iters}', f'custom_hooks.0.end_iter={args.iters // 2}',
                f'param_scheduler.1.end={args.iters}',
                f'param_scheduler.1.T_max={args.iters - warmup}',
                f'default_hooks.checkpoint.interval={args.iters}']
    t = time.time()
    run_logged(cmd, os.path.join(args.work_dir, 'train_output.log'), SHOW, brief)
    train_time = time.time() - t

    print('\n=== 3/3 whole-room validation on Area 5 (every point labelled)', flush=True)
    val = last_validation(args.work_dir)
    for key, value in val.items():
        if key.startswith('points/IoU.'):
            shown = 'not present' if value != value else f'{value:6.2f}'
            print(f'  {key[len("points/IoU."):]:>10s}  {shown}')
    print(f'\nmIoU {val["points/mIoU"]:.2f}   overall accuracy {val["points/oAcc"]:.2f}   mean '
          f'accuracy {val["points/mAcc"]:.2f}   (13 classes; chance-level mIoU is a few percent)')
    print(f'training + validation {train_time / 60:.1f} min, demo {(time.time() - start) / 60:.1f} '
          f'min; log: {os.path.join(args.work_dir, "train_output.log")}')


if __name__ == '__main__':
    main()
