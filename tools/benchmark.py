"""Memory and time of a training step: Dr²Net vs conventional vs activation checkpointing.

    python tools/benchmark.py swin --size 1024 --depths 2-2-6-2 2-2-18-2 2-2-30-2 --out results/swin
    python tools/benchmark.py vit --arch vit_small_patch16_224 --size 512 --out results/vit_s
    python tools/benchmark.py dino --size 800x1333 --batch 1 --out results/dino
    python tools/benchmark.py dino --backbone vit_l --size 1024 --iters 1 --rss --out results/dino_vit_l_1024
    python tools/benchmark.py seg --size 512 --batch 2 --out results/upernet
    python tools/benchmark.py points --points 24000 --batch 2 --out results/pix4point
    python tools/benchmark.py swin3d --frames 32 --size 224 --iters 2 --warmup 1 --rss --out results/video_swin_t_32x224
    python tools/benchmark.py videomae --frames 16 --size 224 --iters 3 --rss --out results/videomae_vit_s_16x224
    python tools/benchmark.py tad --frames 64 128 256 --size 112 --iters 2 --rss --out results/tad_swin_t_112
    python tools/benchmark.py rvos --frames 8 --size 224 --iters 1 --rss --out results/rvos_8x224

``swin3d`` is mmaction2's Video Swin (``SwinTransformer3D``, ``with_cp=True``, ``Dr2NetSwin3D``) and
``videomae`` mmaction2's VideoMAE ViT (``VisionTransformer``, ``PlainVideoViT(with_cp=True)``,
``Dr2NetVideoViT``), both on random clips of ``--frames`` frames of ``--size``² (one setting per
frame count).

Each run measures its variants one after another in one process and writes ``OUT.json`` (every
number), ``OUT.md`` (a table per setting) and ``OUT.png`` (peak memory and step time per variant).
``--rss`` adds a second, independent peak per variant: the resident high-water mark of a fresh
process that builds and trains only that variant (``dr2net_mm.benchmark.rss``).
What is measured is documented in :mod:`dr2net_mm.benchmark`. ``--device cuda`` measures on a GPU.
The functions here are importable (``main(argv)``); the measuring code is ``dr2net_mm.benchmark``.
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch
from mmengine.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# (importing dr2net_mm, as this does first, makes mmaction.models importable for the video variants)
from dr2net_mm.benchmark import (MB, compare, detector_variants, markdown_table,  # noqa: E402
                                 points_variants, segmentor_variants, swin3d_variants,
                                 swin_variants, video_vit_variants, vit_variants)
from dr2net_mm.benchmark.rss import available as rss_available  # noqa: E402
from dr2net_mm.benchmark.rss import child_env, median_resident_peak_bytes  # noqa: E402
from dr2net_mm.benchmark.variants import STREAM_OPTIONS  # noqa: E402
from dr2net_mm.mmcv_ops import check_deform_attn_on, status as mmcv_ops_status  # noqa: E402

DINO_CONFIGS = {
    'conventional': 'configs/dino_swin_t_coco.py',
    'checkpointing': 'configs/dino_swin_t_cp_coco.py',
    'dr2net': 'configs/dino_dr2net_swin_t_coco.py',
    # with_cp + every encoder and decoder layer checkpointed: the strongest checkpointing baseline
    'cp_all': 'configs/dino_swin_t_cp_all_coco.py',
    # Dr²Net backbone + reversible encoder + checkpointed decoder
    'dr2net_all': 'configs/dino_dr2net_all_swin_t_coco.py',
}
# dino --backbone: the detector's configs by variant, its label, and the variants measured when
# --variants is not given (deep backbones: the all-checkpointing baseline and Dr²Net-all)
DINO_BACKBONES = {
    'swin_t': dict(label='DINO-4scale Swin-T', configs=DINO_CONFIGS,
                   default=[*DINO_CONFIGS, 'frozen_backbone', 'frozen_backbone_cp_all']),
    'vit_l': dict(label='DINO-4scale ViT-L/16 (SimpleFeaturePyramid, global attention)',
                  configs={'conventional': 'configs/dino_vit_l_coco.py',
                           'checkpointing': ('configs/dino_vit_l_coco.py',
                                             dict(backbone=dict(with_cp=True))),
                           'cp_all': 'configs/dino_vit_l_cp_all_coco.py',
                           'dr2net_all': 'configs/dino_dr2net_all_vit_l_coco.py'},
                  default=['cp_all', 'dr2net_all']),
    # mmdet's zoo config itself checkpoints every Swin block (with_cp=True): 'checkpointing'
    'swin_l': dict(label='DINO-5scale Swin-L (mmdet zoo)',
                   configs={'checkpointing': 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
                            'conventional': ('mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
                                             dict(backbone=dict(with_cp=False))),
                            'cp_all': 'configs/dino_swin_l_cp_all_coco.py',
                            'dr2net_all': 'configs/dino_dr2net_all_swin_l_coco.py'},
                   default=['cp_all', 'dr2net_all']),
}
# frozen-backbone rows (the floor of any backbone method): the variant's config, all four Swin
# stages frozen (mmdet frozen_stages=4)
DINO_FROZEN = {'frozen_backbone': 'conventional', 'frozen_backbone_cp_all': 'cp_all'}
SEG_CONFIGS = {
    'UPerNet Swin-T': {
        'conventional': 'configs/upernet_swin_t_ade20k.py',
        'checkpointing': 'configs/upernet_swin_t_cp_ade20k.py',
        'dr2net': 'configs/upernet_dr2net_swin_t_ade20k.py',
    },
    'UPerNet ViT-S': {
        'conventional': 'configs/upernet_vit_s_ade20k.py',
        'checkpointing': 'configs/upernet_vit_s_cp_ade20k.py',
        'dr2net': 'configs/upernet_dr2net_vit_s_ade20k.py',
    },
}
POINTS_CONFIGS = {
    'conventional': 'configs/pix4point_vit_s_s3dis.py',
    'checkpointing': 'configs/pix4point_vit_s_cp_s3dis.py',
    'dr2net': 'configs/pix4point_dr2net_vit_s_s3dis.py',
}


def parse_depths(text: str) -> List[int]:
    try:
        depths = [int(d) for d in text.split('-')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'depths must look like 2-2-6-2, got {text!r}') from None
    if len(depths) != 4 or min(depths) < 1:
        raise argparse.ArgumentTypeError(f'depths must be 4 positive ints like 2-2-6-2, got {text!r}')
    return depths


def parse_size(text: str):
    """'512' -> 512 (square), '800x1333' -> (800, 1333) (height x width)."""
    try:
        parts = [int(v) for v in text.lower().split('x')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 512 or 800x1333, got {text!r}') from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f'size must look like 512 or 800x1333, got {text!r}')
    return parts[0] if len(parts) == 1 else tuple(parts)


def parse_window(text: str) -> tuple:
    """'8x7x7' -> (8, 7, 7): a Video Swin window, frames x height x width."""
    try:
        window = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'window must look like 8x7x7, got {text!r}') from None
    if len(window) != 3 or min(window) < 1:
        raise argparse.ArgumentTypeError(f'window must be 3 positive ints like 8x7x7, got {text!r}')
    return window


def size_label(size) -> str:
    return f'{size}²' if isinstance(size, int) else f'{size[0]}×{size[1]}'


def clip_label(frames: int, size: int) -> str:
    """T×H×W of a clip of ``frames`` frames of ``size``²."""
    return f'{frames}×{size}×{size}'


def swin_heads(embed_dims: int) -> tuple:
    """Attention heads per stage of a Swin of width ``embed_dims`` (32 channels a head)."""
    return (3, 6, 12, 24) if embed_dims == 96 else tuple(embed_dims // 32 * m for m in (1, 2, 4, 8))


# what an option left out means, per model (None: the option is not used by that model)
DEFAULTS = {
    'size': dict(swin3d=224, videomae=224, tad=112, rvos=224, default=512),
    'frames': dict(swin3d=[32], videomae=[16], tad=[64], rvos=[8]),
    'arch': dict(vit='vit_small_patch16_224', swin3d='tiny'),
    'embed_dims': dict(swin=96, videomae=384),
    'depths': dict(swin=[[2, 2, 6, 2]]),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', choices=['swin', 'vit', 'dino', 'seg', 'points', 'swin3d',
                                          'videomae', 'tad', 'rvos'])
    parser.add_argument('--size', type=parse_size, default=None,
                        help='input size: 512 (square) or, for dino, HxW such as 800x1333 '
                        '(default 512; swin3d, videomae: 224, the frame size)')
    parser.add_argument('--frames', type=int, nargs='+', default=None,
                        help='swin3d, videomae: frames per clip, one setting each (default: '
                        'swin3d 32, videomae 16)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=3, help='timed steps per variant')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--depths', type=parse_depths, nargs='+', default=None,
                        help='Swin depth settings to sweep, e.g. 2-2-6-2 2-2-18-2 (default '
                        '2-2-6-2); swin3d: a custom arch instead of --arch')
    parser.add_argument('--embed-dims', type=int, default=None,
                        help='Swin width (T/S: 96, B: 128; default 96); swin3d: a custom arch '
                        'instead of --arch; videomae: the ViT width (default 384, ViT-S)')
    parser.add_argument('--arch', default=None,
                        help='vit: timm ViT architecture (default vit_small_patch16_224); swin3d: '
                        'mmaction2 arch tiny, small, base or large (default tiny)')
    parser.add_argument('--window', type=parse_window, default=(8, 7, 7),
                        help='swin3d: attention window, frames x height x width (default 8x7x7)')
    parser.add_argument('--depth', type=int, default=12, help='videomae: blocks (default 12)')
    parser.add_argument('--heads', type=int, default=6,
                        help='videomae: attention heads (default 6)')
    parser.add_argument('--points', type=int, default=24000,
                        help='points: points per crop (the S3DIS config: 24000, 1536 tokens)')
    parser.add_argument('--segmentors', nargs='+', choices=sorted(SEG_CONFIGS),
                        default=sorted(SEG_CONFIGS), help='seg: which segmentors to measure')
    parser.add_argument('--backbone', choices=sorted(DINO_BACKBONES), default='swin_t',
                        help='dino: the detector (swin_t: DINO-4scale Swin-T; vit_l: DINO with '
                        'ViT-L/16 and a simple feature pyramid; swin_l: the mmdet zoo\'s '
                        'DINO-5scale Swin-L)')
    parser.add_argument('--out-indices', type=int, nargs='+', default=None,
                        help='backbone outputs (Swin default 0 1 2 3; ViT default -1)')
    parser.add_argument('--extra', nargs='*', default=None,
                        help='extra Dr²Net variants: dr2net_fp32 dr2net_f64 dr2net_f64_seg4 (swin, '
                        'vit, swin3d, videomae), dr2net_f64_seg4 (points, dino: float64 streams, '
                        'segment_size=4)')
    parser.add_argument('--variants', nargs='+', default=None, metavar='NAME',
                        help='measure only these variants (names as in the table: conventional, '
                        'checkpointing, dr2net, cp_all, ...; default all, for dino --backbone '
                        'vit_l and swin_l: cp_all dr2net_all)')
    parser.add_argument('--out', default=None, help='output path without extension')
    parser.add_argument('--rss', action='store_true',
                        help='also measure each variant\'s resident high-water mark in a fresh '
                        'process (the second, independent peak; Linux)')
    parser.add_argument('--rss-child', default=None, help=argparse.SUPPRESS)  # SETTING:VARIANT
    parser.add_argument('--rss-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    video = args.model in ('swin3d', 'videomae', 'tad', 'rvos')
    if args.model == 'swin3d' and args.arch is not None and (args.depths or args.embed_dims):
        parser.error('swin3d: either --arch or a custom arch (--depths, --embed-dims), not both')
    if args.model == 'swin3d' and args.depths and len(args.depths) > 1:
        parser.error('--depths: swin3d takes one custom arch (it sweeps --frames)')
    if args.model == 'videomae' and args.depths:
        parser.error('--depths: videomae takes one --depth (blocks), --embed-dims and --heads')
    if video and args.out_indices:
        parser.error(f'--out-indices: {args.model} measures the backbone\'s default outputs')
    if args.frames is not None and not video:
        parser.error(f'--frames: only swin3d and videomae take clips; {args.model} does not')
    custom_swin3d = args.model == 'swin3d' and bool(args.depths or args.embed_dims)
    for key, defaults in DEFAULTS.items():
        if getattr(args, key) is None and not (custom_swin3d and key == 'arch'):
            setattr(args, key, defaults.get(args.model, defaults.get('default')))
    sizes = [args.size] if isinstance(args.size, int) else list(args.size)
    if min(sizes) < 32 or args.batch < 1 or args.iters < 1:
        parser.error(f'--size {args.size}, --batch {args.batch}, --iters {args.iters}: '
                     'need size >= 32, batch >= 1, iters >= 1')
    if not isinstance(args.size, int) and args.model != 'dino':
        parser.error(f'--size {size_label(args.size)}: only dino takes HxW; {args.model} takes one '
                     'square size such as 512')
    if args.model in ('swin', 'swin3d') and args.embed_dims is not None and args.embed_dims < 32:
        parser.error(f'--embed-dims {args.embed_dims}: Swin needs at least 32 (one head of 32 '
                     'channels in the first stage)')
    if video and min(args.frames) < 1:
        parser.error(f'--frames {" ".join(map(str, args.frames))}: need frames >= 1')
    if args.model == 'videomae' and (any(f % 2 for f in args.frames) or args.size % 16):
        parser.error(f'--frames {" ".join(map(str, args.frames))} --size {args.size}: videomae '
                     'cuts clips into 2×16×16 tubelets, so frames must be even and size a '
                     'multiple of 16')
    if args.model == 'videomae' and (args.embed_dims % args.heads or args.depth < 1):
        parser.error(f'--embed-dims {args.embed_dims} --heads {args.heads} --depth {args.depth}: '
                     'need embed dims divisible by heads and depth >= 1')
    if args.model == 'points' and args.points < 2048:
        parser.error(f'--points {args.points}: the S3DIS configs tokenize crops into 1536 centres '
                     'and need at least 2048 points per crop')
    unknown = sorted(set(args.extra or ()) - {'dr2net_f64_seg4'})
    if args.model in ('points', 'dino') and unknown:
        parser.error(f'--extra {" ".join(unknown)}: {args.model} has one extra variant, '
                     'dr2net_f64_seg4')
    unknown = sorted(set(args.extra or ()) - set(STREAM_OPTIONS))
    if video and unknown:
        parser.error(f'--extra {" ".join(unknown)}: {args.model} has the extra variants '
                     f'{" ".join(sorted(STREAM_OPTIONS))}')
    if args.model in ('tad', 'rvos') and args.extra:
        parser.error(f'--extra {" ".join(args.extra)}: {args.model} measures its four configs '
                     'only')
    if args.model != 'dino' and args.backbone != 'swin_t':
        parser.error(f'--backbone: only dino takes it; {args.model} does not')
    if args.model == 'dino':
        known = [*DINO_BACKBONES[args.backbone]['configs'], *(args.extra or ())]
        if args.backbone != 'vit_l':  # frozen rows freeze Swin stages
            known += list(DINO_FROZEN)
        unknown = sorted(set(args.variants or ()) - set(known))
        if unknown:
            parser.error(f'--variants {" ".join(unknown)}: dino --backbone {args.backbone} has '
                         f'the variants {" ".join(known)}')
        if args.extra and args.backbone != 'swin_t':
            parser.error('--extra: only dino --backbone swin_t has extra variants')
    if args.model == 'seg' and args.batch < 2:
        parser.error(f'--batch {args.batch}: seg needs batch >= 2 (the UPerNet pooling module has '
                     'BatchNorm over 1x1 maps, which cannot train on one image)')
    return args


def settings(args) -> Dict[str, list]:
    """Setting label -> variants."""
    device = torch.device(args.device)
    if args.model == 'swin':
        heads = swin_heads(args.embed_dims)
        extra = ('dr2net_fp32', ) if args.extra is None else tuple(args.extra)
        out_indices = tuple(args.out_indices) if args.out_indices else (0, 1, 2, 3)
        return {
            f'Swin depths {"-".join(map(str, d))}, embed {args.embed_dims}, {size_label(args.size)}, batch '
            f'{args.batch}': swin_variants(args.size, args.batch, d, args.embed_dims, heads,
                                           out_indices=out_indices, device=device, extra=extra)
            for d in args.depths
        }
    if args.model == 'vit':
        out_indices = tuple(args.out_indices) if args.out_indices else (-1, )
        return {
            f'{args.arch}, {args.size}², batch {args.batch}, out_indices {out_indices}':
            vit_variants(args.size, args.batch, args.arch, out_indices, device,
                         tuple(args.extra or ()))
        }
    if args.model == 'swin3d':
        if args.depths or args.embed_dims:  # a custom arch (checked in parse_args)
            depths = args.depths[0] if args.depths else [2, 2, 6, 2]
            embed_dims = args.embed_dims or 96
            arch = dict(embed_dims=embed_dims, depths=depths,
                        num_heads=list(swin_heads(embed_dims)))
            name = f'depths {"-".join(map(str, depths))} embed {embed_dims}'
        else:
            arch = name = args.arch
        window = '×'.join(map(str, args.window))
        return {
            f'Video Swin {name} {clip_label(frames, args.size)}, window {window}, batch '
            f'{args.batch}': swin3d_variants(frames, args.size, args.batch, arch, args.window,
                                             device=device, extra=tuple(args.extra or ()))
            for frames in args.frames
        }
    if args.model == 'videomae':
        return {
            f'VideoMAE ViT {clip_label(frames, args.size)}, embed {args.embed_dims}, depth '
            f'{args.depth}, heads {args.heads}, tubelets 2×16×16, batch {args.batch}':
            video_vit_variants(frames, args.size, args.batch, args.embed_dims, args.depth,
                               args.heads, device=device, extra=tuple(args.extra or ()))
            for frames in args.frames
        }
    if args.model == 'tad':  # the four TAD configs, whole detectors (dr2net_mm.benchmark.tad)
        from dr2net_mm.benchmark.tad import tad_variants
        return {f'TAD Video Swin-T {clip_label(frames, args.size)}, batch {args.batch}':
                tad_variants(frames, args.size, args.batch) for frames in args.frames}
    if args.model == 'rvos':  # the four RVOS configs, whole segmentors (dr2net_mm.benchmark.rvos)
        from dr2net_mm.benchmark.rvos import rvos_variants
        return {f'RVOS Video Swin-T {clip_label(frames, args.size)}, batch {args.batch}':
                rvos_variants(frames, args.size, args.batch) for frames in args.frames}
    if args.model == 'seg':
        return {
            f'{segmentor} ADE20K (150 classes), {args.size}², batch {args.batch}':
            segmentor_variants({name: os.path.join(ROOT, path)
                                for name, path in SEG_CONFIGS[segmentor].items()},
                               args.size, args.batch)
            for segmentor in args.segmentors
        }
    if args.model == 'points':
        configs = with_float64_segments(POINTS_CONFIGS, args.extra)
        return {f'Pix4Point ViT-S S3DIS, {args.points} points / 1536 tokens, batch {args.batch}':
                points_variants(configs, args.points, args.batch)}
    detector = DINO_BACKBONES[args.backbone]
    configs = with_frozen_backbones(with_float64_segments(detector['configs'], args.extra))
    names = args.variants or [*detector['default'], *(args.extra or ())]
    return {f'{detector["label"]}, {size_label(args.size)}, batch {args.batch}':
            detector_variants({name: configs[name] for name in names}, args.size, args.batch)}


def load_dino_config(entry):
    """A config of :data:`DINO_BACKBONES`: a path in this repository (returned as a path) or in
    mmdet's installed configs (``mmdet::...``), or ``(path, model overrides)`` (returned as a
    ``Config``)."""
    path, overrides = (entry, None) if isinstance(entry, str) else entry
    if path.startswith('mmdet::'):
        import mmdet
        path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs',
                            path[len('mmdet::'):])
    else:
        path = os.path.join(ROOT, path)
    if not overrides:
        return path
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(dict(model=overrides))
    return cfg


def with_float64_segments(paths: Dict[str, object], extra) -> Dict[str, object]:
    """The configs by variant name, plus ``dr2net_f64_seg4`` (the Dr²Net config with float64
    streams in segments of 4 branches instead of the default exact streams) when ``extra`` names it
    (checked in parse_args)."""
    configs = {name: load_dino_config(entry) for name, entry in paths.items()}
    for name in extra or ():
        segmented = Config.fromfile(configs['dr2net'])
        segmented.model.backbone.update(stream_dtype='float64', segment_size=4)
        configs[name] = segmented
    return configs


def with_frozen_backbones(configs: Dict[str, object]) -> Dict[str, object]:
    """``configs`` plus the :data:`DINO_FROZEN` rows: a variant with its whole backbone frozen
    (Swin backbones; the rows are left out where their base variant is not there)."""
    configs = dict(configs)
    for name, base in DINO_FROZEN.items():
        if base not in configs:
            continue
        frozen = configs[base]
        frozen = Config.fromfile(frozen) if isinstance(frozen, str) else copy.deepcopy(frozen)
        frozen.model.backbone.frozen_stages = 4
        configs[name] = frozen
    return configs


def plot(report: dict, path: str) -> None:
    """Peak memory and step time per variant and setting, each bar labelled with its value (the
    figures of the same run's table); a resident-memory peak, when measured, is the black tick."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = list(report['settings'])
    names = []
    for results in report['settings'].values():
        names += [r['name'] for r in results if r['name'] not in names]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        rows = [next((r for r in report['settings'][s] if r['name'] == name), None) for s in labels]
        xs = [i + k * width for i in range(len(labels))]
        for ax, key in zip(axes, ('peak_mb', 'step_ms')):
            values = [r[key] if r else 0 for r in rows]
            bars = ax.bar(xs, values, width, label=name)
            ax.bar_label(bars, [f'{v:.0f}' if v else '' for v in values], fontsize=7,
                         rotation=90, padding=2)
        rss = [(x, r['rss_peak_mb']) for x, r in zip(xs, rows) if r and r.get('rss_peak_mb')]
        if rss:
            axes[0].scatter(*zip(*rss), marker='_', s=200, color='black', zorder=3,
                            label='resident peak' if k == 0 else None)
    for ax, title in zip(axes, ('peak memory of a training step (MB)', 'step time (ms)')):
        ax.set_title(title)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels([s.split(',')[0] if len(labels) > 1 else s for s in labels], fontsize=8)
        ax.margins(y=0.2)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'{report["model"]} on {report["device_name"]} ({report["date"]})', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen(variants: list, names: Optional[List[str]]) -> list:
    """``variants`` in their order, only those named in ``names`` (all when None); an unknown
    name is an error that lists the known ones."""
    if names is None:
        return variants
    known = [v.name for v in variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f'--variants {" ".join(unknown)}: not a variant here; choose from '
                         f'{" ".join(known)}')
    return [v for v in variants if v.name in names]


def rss_child(args) -> None:
    """Measure one variant's resident peak in this (fresh) process and write it as JSON."""
    setting, name = args.rss_child.split(':', 1)
    variants = list(settings(args).values())[int(setting)]
    variant = next(v for v in variants if v.name == name)
    model = variant.build()
    model.train()

    def step():
        variant.forward_loss(model).backward()

    for _ in range(max(args.warmup, 1)):  # allocates the .grad buffers, as measure() does
        step()
    peak = median_resident_peak_bytes(step, args.iters)
    with open(args.rss_out, 'w') as f:
        json.dump(dict(rss_peak_mb=peak / MB), f)


def resident_peaks(argv: List[str], setting: int, names: List[str]) -> Dict[str, float]:
    """The resident peak of each variant, each in a fresh process (see :func:`rss_child`)."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = os.path.join(tmp, 'rss.json')
            cmd = [sys.executable, os.path.abspath(__file__), *argv, '--rss-child',
                   f'{setting}:{name}', '--rss-out', out]
            subprocess.run(cmd, check=True, env=child_env(), stdout=subprocess.DEVNULL)
            with open(out) as f:
                peaks[name] = json.load(f)['rss_peak_mb']
            print(f'    {name}: resident peak {peaks[name]:8.1f} MB', flush=True)
    return peaks


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.rss_child:
        return rss_child(args)
    if args.rss and not rss_available():
        raise SystemExit('--rss needs Linux /proc/self/clear_refs (resident high-water mark); '
                         'run without --rss here')
    device = torch.device(args.device)
    if args.model == 'dino':
        check_deform_attn_on(device)
    report = dict(model=args.model, args=vars(args), date=time.strftime('%Y-%m-%d'),
                  device=args.device, torch=torch.__version__,
                  device_name=(torch.cuda.get_device_name(device) if device.type == 'cuda' else
                               f'{platform.processor() or platform.machine()}, '
                               f'{torch.get_num_threads()} threads'),
                  settings={})
    if args.model == 'dino':  # mmcv's CUDA kernels or the pure-PyTorch fallbacks
        report['mmcv_ops'] = mmcv_ops_status()
    tables = []
    for index, (label, variants) in enumerate(settings(args).items()):
        print(f'== {label}', flush=True)
        variants = chosen(variants, args.variants)
        results = compare(variants, device, iters=args.iters, warmup=args.warmup,
                          log=lambda line: print(line, flush=True))
        if args.rss and device.type == 'cpu':
            peaks = resident_peaks([a for a in argv if a != '--rss'], index,
                                   [r.name for r in results])
            for r in results:
                r.rss_peak_mb = peaks[r.name]
        report['settings'][label] = [r.as_dict() for r in results]
        tables.append(markdown_table(results, label))
    text = '\n\n'.join(tables)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + '.json', 'w') as f:
            json.dump(report, f, indent=1)
        with open(args.out + '.md', 'w') as f:
            f.write(f'`python tools/benchmark.py {" ".join(argv)}` — '
                    f'{report["device_name"]}, torch {report["torch"]}, {report["date"]}\n\n'
                    f'{text}\n')
        plot(report, args.out + '.png')
        print(f'wrote {args.out}.json, {args.out}.md, {args.out}.png')
    return report


if __name__ == '__main__':
    main()
