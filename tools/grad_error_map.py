"""Gradient error of the reversible backward over an α×β grid (the paper's Fig. 3), measured.

    python tools/grad_error_map.py --size 224 --out results/grad_error_map

For a Swin-T-shaped ``Dr2NetSwin`` (train mode, drop path 0.2) on one image-sized input, at every
(α, β) of the grid, five gradient computations with the same random draws:

* ``autograd``: ordinary fp32 autograd (``reversible=False``, float32 streams): conventional
  training;
* ``truth``: a float64 copy of the model, ordinary autograd;
* ``rev_fp32`` / ``rev_fp64`` / ``rev_exact``: the reversible backward, one segment per stage, with
  float32 / float64 / exact streams (the default: fixed point with an exact β buffer).

Errors are relative (‖g − g_ref‖/‖g_ref‖), worst over all parameters and the input. The map shows
the float reversible backwards against ``autograd`` (as the paper's figure), and every reversible
backward against ``truth``; the *floor* is ``autograd`` against ``truth`` — how far conventional
fp32 training itself is from exact arithmetic. A point *reaches the floor* when its error against
``truth`` is ≤ 2× the floor there.
Writes ``OUT.json`` (every value) and ``OUT.png`` (heat maps, floor reached marked with dots).
"""
import argparse
import copy
import json
import os
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dr2net_mm.core import (ErrorSummary, compute_gradients, set_reversible,  # noqa: E402
                            set_stream_dtype, weighted_sum_loss)

FLOOR_FACTOR = 2.0
MODES = {'fp32': torch.float32, 'fp64': torch.float64, 'exact': 'exact'}  # reversible stream modes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=224, help='square input size')
    parser.add_argument('--alphas', type=float, nargs='+',
                        default=[round(0.1 * k, 1) for k in range(11)])
    parser.add_argument('--betas', type=float, nargs='+',
                        default=[round(0.1 * k, 1) for k in range(1, 11)])
    parser.add_argument('--embed-dims', type=int, default=96)
    parser.add_argument('--depths', type=int, nargs=4, default=[2, 2, 6, 2])
    parser.add_argument('--num-heads', type=int, nargs=4, default=[3, 6, 12, 24])
    parser.add_argument('--window-size', type=int, default=7)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='output path without extension')
    args = parser.parse_args(argv)
    bad = [a for a in args.alphas if not 0 <= a <= 1] + [b for b in args.betas if not 0 < b <= 1]
    if bad:
        parser.error(f'coefficients out of range: {bad} (alpha in [0, 1], beta in (0, 1])')
    return args


def build_swin(args):
    from dr2net_mm.models import Dr2NetSwin
    torch.manual_seed(args.seed)
    model = Dr2NetSwin(embed_dims=args.embed_dims, depths=tuple(args.depths),
                       num_heads=tuple(args.num_heads), window_size=args.window_size,
                       drop_path_rate=0.2)
    model.train()
    return model


def worst(grads: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> float:
    return ErrorSummary.of(grads, reference).worst


def error_map(args, log=print) -> dict:
    model = build_swin(args)
    truth_model = copy.deepcopy(model).double()
    set_reversible(truth_model, False)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    loss_fn = weighted_sum_loss(args.seed)
    keys = tuple(f'rev_{mode}_vs_{ref}' for ref in ('autograd', 'truth') for mode in MODES) + ('floor', )
    grid = {k: [[None] * len(args.alphas) for _ in args.betas] for k in keys}
    total, done, start = len(args.alphas) * len(args.betas), 0, time.time()
    for bi, beta in enumerate(args.betas):
        for ai, alpha in enumerate(args.alphas):
            model.set_coefficients(alpha, beta)
            truth_model.set_coefficients(alpha, beta)
            truth = compute_gradients(truth_model, x.double(), loss_fn, args.seed)
            set_reversible(model, False)
            set_stream_dtype(model, torch.float32)
            autograd = compute_gradients(model, x, loss_fn, args.seed)
            set_reversible(model, True)
            values = dict(floor=worst(autograd, truth))
            for mode, stream_dtype in MODES.items():
                set_stream_dtype(model, stream_dtype)
                grads = compute_gradients(model, x, loss_fn, args.seed)
                values[f'rev_{mode}_vs_autograd'] = worst(grads, autograd)
                values[f'rev_{mode}_vs_truth'] = worst(grads, truth)
            for k, v in values.items():
                grid[k][bi][ai] = v
            done += 1
            log(f'[{done}/{total}] alpha={alpha:.1f} beta={beta:.1f}  ' + '  '.join(
                f'{mode} {values[f"rev_{mode}_vs_truth"]:.1e}' for mode in MODES)
                + f'  floor {values["floor"]:.1e}  ({time.time() - start:.0f} s)')
    return dict(alphas=args.alphas, betas=args.betas, size=args.size, grid=grid,
                model=dict(embed_dims=args.embed_dims, depths=args.depths, num_heads=args.num_heads,
                           window_size=args.window_size, drop_path_rate=0.2),
                date=time.strftime('%Y-%m-%d'), torch=torch.__version__,
                elapsed_s=round(time.time() - start, 1))


def lookup(report: dict, key: str, alpha: float, beta: float):
    try:
        return report['grid'][key][report['betas'].index(beta)][report['alphas'].index(alpha)]
    except ValueError:
        return None


def floor_reached(report: dict, dtype: str) -> List[List[bool]]:
    grid = report['grid']
    return [[rev <= FLOOR_FACTOR * floor for rev, floor in zip(rev_row, floor_row)]
            for rev_row, floor_row in zip(grid[f'rev_{dtype}_vs_truth'], grid['floor'])]


def summary(report: dict) -> List[str]:
    lines = []
    for alpha, beta in ((1.0, 0.1), (0.3, 0.7)):
        values = {k: lookup(report, k, alpha, beta) for k in report['grid']}
        if values['floor'] is None:
            continue
        lines.append(f'(alpha, beta) = ({alpha}, {beta}): reversible vs float64 truth: ' + ', '.join(
            f'{mode} streams {values[f"rev_{mode}_vs_truth"]:.2e}' for mode in MODES)
            + f'; floor (fp32 autograd vs truth) {values["floor"]:.2e}')
    for dtype in MODES:
        reached = floor_reached(report, dtype)
        per_alpha = []
        for ai, alpha in enumerate(report['alphas']):
            betas = [b for bi, b in enumerate(report['betas']) if reached[bi][ai]]
            per_alpha.append(f'a={alpha:g}: b>={min(betas):g}' if betas else f'a={alpha:g}: never')
        count = sum(map(sum, reached))
        lines.append(f'{dtype} streams reach the floor (<= {FLOOR_FACTOR:g}x) at {count}/'
                     f'{len(report["alphas"]) * len(report["betas"])} points; smallest beta per '
                     f'alpha: ' + ', '.join(per_alpha))
    return lines


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    panels = [('rev_fp32_vs_autograd', 'float32 streams vs fp32 autograd', 'fp32'),
              ('rev_fp64_vs_autograd', 'float64 streams vs fp32 autograd', 'fp64'),
              ('rev_fp32_vs_truth', 'float32 streams vs float64 truth', 'fp32'),
              ('rev_fp64_vs_truth', 'float64 streams vs float64 truth', 'fp64'),
              ('rev_exact_vs_truth', 'exact streams (default) vs float64 truth', 'exact')]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    values = np.array([report['grid'][k] for k, _, _ in panels], dtype=float)
    logs = np.log10(np.clip(values, 1e-16, None))
    vmin, vmax = np.floor(logs.min()), np.ceil(min(logs.max(), 2))
    for ax, (key, title, dtype), data in zip(axes, panels, logs):
        image = ax.imshow(data, origin='lower', cmap='viridis', vmin=vmin, vmax=vmax, aspect='auto')
        if key.endswith('truth'):
            reached = np.array(floor_reached(report, dtype))
            ys, xs = np.nonzero(reached)
            ax.scatter(xs, ys, s=8, c='white', marker='o', label='≤ 2× fp32 floor')
            ax.legend(loc='upper left', fontsize=7)
        ax.set_xticks(range(len(report['alphas'])))
        ax.set_xticklabels([f'{a:g}' for a in report['alphas']], fontsize=7)
        ax.set_yticks(range(len(report['betas'])))
        ax.set_yticklabels([f'{b:g}' for b in report['betas']], fontsize=7)
        ax.set_xlabel('alpha')
        ax.set_ylabel('beta')
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, label='log10 relative gradient error', shrink=0.8)
    floor = np.median(np.array(report['grid']['floor'], dtype=float))
    fig.suptitle(f'Dr2NetSwin {report["model"]["embed_dims"]}/{report["model"]["depths"]} at '
                 f'{report["size"]}², median fp32-autograd floor {floor:.1e} ({report["date"]})',
                 fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = error_map(args, log=lambda line: print(line, flush=True))
    for line in summary(report):
        print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + '.json', 'w') as f:
            json.dump(report, f, indent=1)
        plot(report, args.out + '.png')
        print(f'wrote {args.out}.json, {args.out}.png')
    return report


if __name__ == '__main__':
    main()
