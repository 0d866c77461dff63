"""`make demo-rvos`: referring video object segmentation (MTTR-style) with a Dr²Net Video Swin, on
generated clips, on a CPU.

1. generates the demo set (data/demo_rvos: 96 training and 24 test videos of 24 frames of 64x64
   with 2-3 moving shapes and sentences such as "the red square moving left", A2D-Sentences layout
   with a word vocabulary; ``python -m dr2net_mm.rvos.demo_data``);
2. trains configs/demo/rvos_dr2net_swin_t_demo.py with tools/train.py (ReferringVideoSegmentor with
   a Dr²Net Video Swin, random weights, over 8-frame clips; a small random RoBERTa; AlphaBetaHook
   moves (α, β) from (1, 0.1) to (0.3, 0.7));
3. evaluates its checkpoint with tools/test.py (mask mAP@0.5:0.95 with pycocotools, overall and
   mean IoU);
4. prints them beside the overall IoU of answering with an empty mask and with the whole frame,
   with the wall times, and writes them to WORK_DIR/demo_rvos.json.

    python tools/demo_rvos.py [--epochs N] [--work-dir DIR]
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import epoch_options, step, train_then_test  # noqa: E402

DATA = 'data/demo_rvos'
CONFIG = 'configs/demo/rvos_dr2net_swin_t_demo.py'
SHOW = r'Epoch\(train\)\s+\[\d+\]\[\s*(100|176)/|Epoch\(val\)|Epoch\(test\)|Error|error:'
NAMES = ('mAP', 'mAP@0.5', 'mAP@0.75', 'overall_IoU', 'mean_IoU')
METRICS = re.compile(r'rvos/mAP: ([\d.]+)\s+rvos/mAP@0\.5: ([\d.]+)\s+rvos/mAP@0\.75: ([\d.]+)\s+'
                     r'rvos/overall_IoU: ([\d.]+)\s+rvos/mean_IoU: ([\d.]+)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=None,
                        help="override max_epochs (default: the config's)")
    parser.add_argument('--work-dir', default='work_dirs/demo_rvos')
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f'--epochs {args.epochs}: need at least 1')
    start = time.time()
    os.chdir(ROOT)

    t = step('1/4 demo videos, masks and sentences')
    from dr2net_mm.rvos.demo_data import baseline_ious, make_demo_rvos
    make_demo_rvos(DATA, num_train=96, num_val=24)
    baselines = baseline_ious(DATA)
    print(f'{DATA}: 96 training and 24 test videos in A2D-Sentences layout '
          f'({time.time() - t:.0f} s)')

    options = epoch_options(args.epochs, warmup_epochs=0) if args.epochs else []
    run = train_then_test(sys.executable, CONFIG, args.work_dir, options, SHOW, METRICS,
                          (f'2/4 train {CONFIG} (tools/train.py)',
                           '3/4 evaluate {checkpoint} (tools/test.py)'))
    result = dict(zip(NAMES, run['values']))
    checkpoint, train_s, test_s = run['checkpoint'], run['train_seconds'], run['test_seconds']

    step('4/4 summary')
    print(f'baselines (overall IoU): empty mask {baselines["empty_mask"]:.3f}, whole frame '
          f'{baselines["whole_frame"]:.3f}')
    print(f'Dr²Net Video Swin (32 wide): overall IoU {result["overall_IoU"]:.3f}, mean IoU '
          f'{result["mean_IoU"]:.3f}, mAP {result["mAP"]:.3f} (mAP@0.5 {result["mAP@0.5"]:.3f}) '
          f'on the test sentences; training {train_s:.0f} s, evaluation {test_s:.0f} s')
    total = time.time() - start
    with open(os.path.join(args.work_dir, 'demo_rvos.json'), 'w') as f:
        json.dump(dict(config=CONFIG, checkpoint=checkpoint, **result, baselines=baselines,
                       train_seconds=train_s, test_seconds=test_s, total_seconds=total), f,
                  indent=2)
    print(f'demo-rvos finished in {total / 60:.1f} min ({args.work_dir}/demo_rvos.json)')


if __name__ == '__main__':
    main()
