"""A deterministic referring video segmentation demo set in A2D-Sentences' layout.

Each video (default 24 frames of 64×64 at 8 fps) shows two or three shapes over a noisy background,
each of its own colour (:data:`COLOURS`), a square, a circle or a triangle, moving steadily left,
right, up or down. Every shape is an instance with one sentence, ``"the red square moving left"``;
three frames (6, 12, 18, 1-based) are annotated with the visible mask of every shape (shapes are
placed so that each shows at least 60 % of itself there). Written as A2D-Sentences is
(:mod:`dr2net_mm.rvos.data`)::

    out_dir/Release/videoset.csv    out_dir/Release/clips320H/<id>.mp4
    out_dir/a2d_annotation_with_instances/<id>/000NN.h5
    out_dir/text_annotations/a2d_annotation.txt    out_dir/text_annotations/vocab.json

(``vocab.json``: the word vocabulary of all sentences, :class:`~dr2net_mm.rvos.text.WordTokenizer`.)
Same arguments → same files. ``python -m dr2net_mm.rvos.demo_data --out DIR``;
:func:`baseline_ious` gives the overall IoU of answering every sentence with an empty mask (0) or
with the whole frame.
"""
import argparse
import csv
import os
import os.path as osp
from typing import List, Tuple

import cv2
import numpy as np

from ..demo.clips import write_video
from ..demo.data import already_written, write_stamp
from .data import read_instance_masks, read_sentences, read_videoset, write_instance_masks
from .text import WordTokenizer

__all__ = ['COLOURS', 'SHAPES', 'DIRECTIONS', 'draw_video', 'make_demo_rvos', 'baseline_ious']

COLOURS = {'red': (40, 40, 230), 'green': (40, 200, 40), 'blue': (230, 90, 30),
           'yellow': (30, 220, 230)}  # BGR
SHAPES = ('square', 'circle', 'triangle')
DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
ANNOTATED = (6, 12, 18)  # 1-based frame numbers
_STAMP = 'demo_rvos.json'
_VERSION = 1  # bump when draw_video changes: sets on disk are then regenerated


def _draw_shape(canvas: np.ndarray, shape: str, x: float, y: float, side: int, colour) -> None:
    x0, y0 = int(round(x)), int(round(y))
    if shape == 'square':
        cv2.rectangle(canvas, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
    elif shape == 'circle':
        cv2.circle(canvas, (x0 + side // 2, y0 + side // 2), side // 2, colour, -1)
    else:
        points = np.array([[x0 + side // 2, y0], [x0, y0 + side - 1],
                           [x0 + side - 1, y0 + side - 1]], np.int32)
        cv2.fillPoly(canvas, [points], colour)


def _objects(rng: np.random.Generator, size: int, frames: int) -> List[dict]:
    count = int(rng.integers(2, 4))
    colours = rng.choice(list(COLOURS), count, replace=False)
    objects = []
    for colour in colours:
        side = int(rng.integers(size // 6, size // 4 + 1))
        direction = list(DIRECTIONS)[int(rng.integers(0, 4))]
        dx, dy = DIRECTIONS[direction]
        speed = float(rng.uniform(0.8, 1.4)) * size / 64  # pixels a frame
        travel = speed * (frames - 1)
        lo, hi = 0.0, size - side - 1.0
        # start so that the whole path stays inside the frame
        x = rng.uniform(lo + max(-dx, 0) * travel, hi - max(dx, 0) * travel)
        y = rng.uniform(lo + max(-dy, 0) * travel, hi - max(dy, 0) * travel)
        objects.append(dict(colour=str(colour), shape=SHAPES[int(rng.integers(0, 3))],
                            direction=direction, side=side, x=float(x), y=float(y),
                            vx=dx * speed, vy=dy * speed))
    return objects


def draw_video(rng: np.random.Generator, frames: int = 24,
               size: int = 64) -> Tuple[np.ndarray, List[dict], dict]:
    """One video (``frames`` × size × size × 3 uint8, BGR), its objects (``colour``, ``shape``,
    ``direction``; instance id = position + 1) and ``{frame number: (N, H, W) visible masks}`` of
    the annotated frames."""
    for _ in range(200):
        objects = _objects(rng, size, frames)
        base = rng.integers(60, 140, 3).astype(np.float32)
        video = np.empty((frames, size, size, 3), np.uint8)
        annotated = {}
        ok = True
        for t in range(frames):
            image = base + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
            image = np.clip(image, 0, 255).astype(np.uint8)
            owner = np.zeros((size, size), np.int32)
            full = []
            for k, o in enumerate(objects):
                x, y = o['x'] + o['vx'] * t, o['y'] + o['vy'] * t
                _draw_shape(image, o['shape'], x, y, o['side'], COLOURS[o['colour']])
                alone = np.zeros((size, size), np.uint8)
                _draw_shape(alone, o['shape'], x, y, o['side'], 1)
                owner[alone > 0] = k + 1
                full.append(alone.sum())
            video[t] = image
            if t + 1 in ANNOTATED and t < frames:
                masks = np.stack([(owner == k + 1) for k in range(len(objects))]).astype(np.uint8)
                if any(m.sum() < 0.6 * f for m, f in zip(masks, full)):
                    ok = False
                    break
                annotated[t + 1] = masks
        if ok:
            return video, objects, annotated
    raise RuntimeError('could not place the shapes apart; use a larger size')


def sentence(o: dict) -> str:
    return f'the {o["colour"]} {o["shape"]} moving {o["direction"]}'


def make_demo_rvos(out_dir: str, num_train: int = 96, num_val: int = 24, frames: int = 24,
                   size: int = 64, fps: int = 8, seed: int = 0) -> str:
    """Write the demo set to ``out_dir`` (skipped when already there with the same arguments);
    returns ``out_dir``."""
    for name, value in (('num_train', num_train), ('num_val', num_val), ('fps', fps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not isinstance(frames, int) or frames < max(ANNOTATED):
        raise ValueError(f'frames must be an int of at least {max(ANNOTATED)} (the last annotated '
                         f'frame), got {frames!r}')
    if not isinstance(size, int) or size < 32:
        raise ValueError(f'size must be an int of at least 32 pixels, got {size!r}')
    params = dict(version=_VERSION, num_train=num_train, num_val=num_val, frames=frames,
                  size=size, fps=fps, seed=seed)
    if already_written(out_dir, _STAMP, params):
        return out_dir
    for folder in ('Release/clips320H', 'a2d_annotation_with_instances', 'text_annotations'):
        os.makedirs(osp.join(out_dir, folder), exist_ok=True)
    rows, videoset = [], []
    for usage, count in ((0, num_train), (1, num_val)):
        rng = np.random.default_rng([seed, usage])
        for index in range(count):
            vid = f'{"train" if usage == 0 else "test"}{index:04d}'
            video, objects, annotated = draw_video(rng, frames, size)
            write_video(osp.join(out_dir, 'Release/clips320H', vid + '.mp4'), video, fps=fps)
            for number, masks in annotated.items():
                write_instance_masks(osp.join(out_dir, 'a2d_annotation_with_instances', vid,
                                              f'{number:05d}.h5'),
                                     np.arange(1, len(objects) + 1), masks)
            rows += [(vid, k + 1, sentence(o)) for k, o in enumerate(objects)]
            videoset.append([vid, 'shapes', 0, frames / fps, size, size, frames, len(annotated),
                             usage])
    with open(osp.join(out_dir, 'Release/videoset.csv'), 'w', newline='') as f:
        csv.writer(f).writerows(videoset)
    ann_file = osp.join(out_dir, 'text_annotations/a2d_annotation.txt')
    with open(ann_file, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['video_id', 'instance_id', 'query'])
        writer.writerows(rows)
    WordTokenizer.build([r[2] for r in rows]).save(osp.join(out_dir, 'text_annotations/vocab.json'))
    write_stamp(out_dir, _STAMP, params)
    return out_dir


def baseline_ious(out_dir: str, subset: str = 'test') -> dict:
    """Overall IoU of two trivial answers on ``subset``: every referred mask answered by an empty
    mask (0) and by the whole frame (Σ referred pixels / Σ frame pixels)."""
    usage = read_videoset(osp.join(out_dir, 'Release/videoset.csv'))
    wanted = 0 if subset == 'train' else 1
    referred = frame = 0
    for row in read_sentences(osp.join(out_dir, 'text_annotations/a2d_annotation.txt')):
        if usage.get(row['video_id']) != wanted:
            continue
        folder = osp.join(out_dir, 'a2d_annotation_with_instances', row['video_id'])
        for name in sorted(os.listdir(folder)):
            ids, masks = read_instance_masks(osp.join(folder, name))
            if row['instance_id'] in ids:
                referred += int(masks[list(ids).index(row['instance_id'])].sum())
                frame += masks.shape[1] * masks.shape[2]
    return dict(empty_mask=0.0, whole_frame=referred / frame if frame else 0.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.rvos.demo_data',
                                     description='Generate the referring segmentation demo set')
    parser.add_argument('--out', default='data/demo_rvos')
    parser.add_argument('--num-train', type=int, default=96)
    parser.add_argument('--num-val', type=int, default=24)
    parser.add_argument('--frames', type=int, default=24)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    out = make_demo_rvos(args.out, args.num_train, args.num_val, args.frames, args.size,
                         seed=args.seed)
    print(f'demo referring segmentation set (A2D-Sentences layout): {out}')


if __name__ == '__main__':
    main()
