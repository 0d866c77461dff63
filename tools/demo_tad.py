"""`make demo-tad`: temporal action detection end to end with a Dr²Net video backbone, on generated
long videos, on a CPU.

1. generates the demo set (data/demo_tad: 64 training and 16 validation videos of 256 frames of
   32x32 with 1-3 actions of 3 motion classes over a scrolling background, ActivityNet-v1.3-format
   annotations; ``python -m dr2net_mm.tad.demo_data``) and random stand-ins for the pretrained
   backbones (a VideoMAE encoder in the official pretraining layout, a 2D Swin in the official
   release layout, inflated to 3D on loading);
2. trains configs/demo/tad_dr2net_swin_t_demo.py with tools/train.py (TemporalActionDetector with a
   Dr²Net Video Swin over the whole video resampled to 128 frames; AlphaBetaHook moves (α, β) from
   (1, 0.1) to (0.3, 0.7));
3. evaluates its checkpoint with tools/test.py (ActivityNet detection mAP at tIoU 0.5:0.05:0.95);
4. with ``--backbones swin vit``, the same for configs/demo/tad_dr2net_vit_s_demo.py (a Dr²Net
   VideoMAE-layout ViT);
5. prints mAP@0.5 and the average mAP beside a random-segment baseline, with the wall times, and
   writes them to WORK_DIR/demo_tad.json.

    python tools/demo_tad.py [--backbones swin vit] [--epochs N] [--work-dir DIR]
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

DATA = 'data/demo_tad'
CONFIGS = {'swin': 'configs/demo/tad_dr2net_swin_t_demo.py',
           'vit': 'configs/demo/tad_dr2net_vit_s_demo.py'}
NAMES = {'swin': 'Dr²Net Video Swin (48 wide)', 'vit': 'Dr²Net VideoMAE-layout ViT (192 wide)'}
SHOW = r'Epoch\(train\)\s+\[\d+\]\[\s*16/|Epoch\(val\)|Epoch\(test\)|Error|error:'
MAP = re.compile(r'tad/mAP@0\.5: ([\d.]+)\s+tad/mAP@0\.75: ([\d.]+)\s+tad/mAP@0\.95: ([\d.]+)\s+'
                 r'tad/mAP: ([\d.]+)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    # Video Swin, the paper's backbone, by default; the ViT (faster, and better here) when asked for
    parser.add_argument('--backbones', nargs='+', choices=sorted(CONFIGS), default=['swin'])
    parser.add_argument('--epochs', type=int, default=None,
                        help="override max_epochs (default: the configs'; 16 iterations each)")
    parser.add_argument('--work-dir', default='work_dirs/demo_tad')
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        parser.error(f'--epochs {args.epochs}: need at least 2 (the first one warms up the lr)')
    start = time.time()
    os.chdir(ROOT)

    total = 2 + 2 * len(args.backbones)
    t = step(f'1/{total} demo videos and stand-in pretrained backbones')
    from dr2net_mm.demo.data import write_swin_official_checkpoint, write_videomae_official_checkpoint
    from dr2net_mm.tad.demo_data import TAD_DEMO_ACTIONS, make_demo_tad, random_segment_mAP
    ann_file = make_demo_tad(DATA, num_train=64, num_val=16)
    write_swin_official_checkpoint(os.path.join(DATA, 'swin_48x2222_official_random.pth'),
                                   embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16))
    write_videomae_official_checkpoint(os.path.join(DATA, 'videomae_vit_192x4_official_random.pth'),
                                       embed_dims=192, depth=4, num_heads=3)
    baseline = random_segment_mAP(ann_file)
    print(f'{DATA}: 64 training and 16 validation videos of {len(TAD_DEMO_ACTIONS)} action classes '
          f'{TAD_DEMO_ACTIONS} and two checkpoints ({time.time() - t:.0f} s)')

    results = {}
    for number, name in enumerate(args.backbones):
        options = epoch_options(args.epochs, warmup_epochs=1) if args.epochs else []
        titles = (f'{2 * number + 2}/{total} train {CONFIGS[name]} (tools/train.py)',
                  f'{2 * number + 3}/{total} evaluate {{checkpoint}} (tools/test.py)')
        run = train_then_test(sys.executable, CONFIGS[name], os.path.join(args.work_dir, name),
                              options, SHOW, MAP, titles)
        values = run.pop('values')
        results[name] = dict(run, **dict(zip(('mAP@0.5', 'mAP@0.75', 'mAP@0.95', 'mAP'), values)))

    step(f'{total}/{total} summary')
    print(f'random segments (10 per video): mAP@0.5 {baseline["mAP@0.50"]:.3f}, '
          f'average mAP {baseline["mAP"]:.3f}')
    for name, result in results.items():
        print(f'{NAMES[name]}: mAP@0.5 {result["mAP@0.5"]:.3f}, average mAP {result["mAP"]:.3f} '
              f'on the 16 validation videos; training {result["train_seconds"]:.0f} s, '
              f'evaluation {result["test_seconds"]:.0f} s')
    total = time.time() - start
    with open(os.path.join(args.work_dir, 'demo_tad.json'), 'w') as f:
        json.dump(dict(results=results, random_baseline=baseline, total_seconds=total,
                       classes=list(TAD_DEMO_ACTIONS)), f, indent=2)
    print(f'demo-tad finished in {total / 60:.1f} min ({args.work_dir}/demo_tad.json)')


if __name__ == '__main__':
    main()
