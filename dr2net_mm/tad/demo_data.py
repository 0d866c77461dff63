"""A deterministic temporal-action-detection demo set: long videos with 1-3 actions at random times.

Each video has ``frames`` small frames (default 256 of 32×32 at 16 fps: 16 s) of a striped texture
scrolling in a random direction (a moving background, so that "something moves" alone does not
mark an action). During an action a shape of a contrasting colour is on screen, and how it moves is
the class (:data:`TAD_DEMO_ACTIONS`): sliding back and forth fast, blinking (shown two frames, hidden
two), pulsing (its size swinging with a period of 8 frames). Actions last 10-30 % of the video and do
not overlap. Written as mp4 (OpenCV) with an ActivityNet-v1.3-format annotation file::

    out_dir/videos/<id>.mp4     out_dir/annotations.json   ("training" and "validation" subsets)

Same arguments → same frames. ``python -m dr2net_mm.tad.demo_data --out DIR``.
:func:`random_segment_mAP` is the chance level the demo is compared with.
"""
import argparse
import json
import os
import os.path as osp
from typing import List, Tuple

import cv2
import numpy as np

from ..demo.clips import write_video
from ..demo.data import already_written, write_stamp

__all__ = ['TAD_DEMO_ACTIONS', 'draw_video', 'make_demo_tad', 'random_segment_mAP']

TAD_DEMO_ACTIONS = ('sliding', 'blinking', 'pulsing')
_STAMP = 'demo_tad.json'
_VERSION = 1  # bump when draw_video changes: sets on disk are then regenerated


def _background(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """Stripes of two random colours scrolling 0.5-1.5 pixels a frame in a random direction, noise."""
    colours = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)
    period = rng.uniform(6, 12)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (along - speed * t) / period)
        image = colours[0] * (1 - wave[..., None]) + colours[1] * wave[..., None]
        out[t] = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    return out


def _draw_action(rng: np.random.Generator, video: np.ndarray, label: int, start: int,
                 end: int) -> None:
    """Draw one action of class ``label`` on frames ``[start, end)`` in place."""
    size = video.shape[1]
    colour = tuple(int(c) for c in np.clip(255 - video[start].reshape(-1, 3).mean(0)
                                           + rng.integers(-30, 31, 3), 0, 255))
    side = int(rng.integers(size // 4, size // 3 + 1))
    x, y = float(rng.uniform(0, size - side)), float(rng.uniform(0, size - side))
    velocity = 3.0 * (1 if rng.random() < 0.5 else -1)
    for t in range(start, end):
        k = t - start
        if label == 0:  # sliding: back and forth, bouncing off the borders
            x += velocity
            if not 0 <= x <= size - side:
                velocity = -velocity
                x = float(np.clip(x, 0, size - side))
            cv2.rectangle(video[t], (int(x), int(y)), (int(x) + side - 1, int(y) + side - 1),
                          colour, -1)
        elif label == 1:  # blinking: shown two frames, hidden two
            if k % 4 < 2:
                cv2.rectangle(video[t], (int(x), int(y)), (int(x) + side - 1, int(y) + side - 1),
                              colour, -1)
        else:  # pulsing: a disk whose radius swings between half and all of side/2
            radius = int(round(side / 2 * (0.75 + 0.25 * np.sin(2 * np.pi * k / 8))))
            cv2.circle(video[t], (int(x) + side // 2, int(y) + side // 2), max(radius, 1), colour,
                       -1)


def _action_spans(rng: np.random.Generator, frames: int) -> List[Tuple[int, int, int]]:
    """1-3 non-overlapping ``(start, end, label)`` of 10-30 % of ``frames`` each, sorted."""
    count = int(rng.integers(1, 4))
    for _ in range(100):
        lengths = rng.integers(int(0.1 * frames), int(0.3 * frames) + 1, count)
        starts = np.sort(rng.integers(0, frames - lengths.max(), count))
        spans = [(int(s), int(s + n)) for s, n in zip(starts, lengths)]
        if all(a[1] + 2 <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= frames:
            return [(s, e, int(rng.integers(0, len(TAD_DEMO_ACTIONS)))) for s, e in spans]
    start = int(rng.integers(0, frames // 2))
    return [(start, start + frames // 4, int(rng.integers(0, len(TAD_DEMO_ACTIONS))))]


def draw_video(rng: np.random.Generator, frames: int = 256,
               size: int = 32) -> Tuple[np.ndarray, List[Tuple[int, int, int]]]:
    """One demo video (``frames`` × size × size × 3 uint8, BGR) and its actions
    ``(start frame, end frame (exclusive), label)``."""
    video = _background(rng, frames, size)
    spans = _action_spans(rng, frames)
    for start, end, label in spans:
        _draw_action(rng, video, label, start, end)
    return video, spans


def make_demo_tad(out_dir: str, num_train: int = 64, num_val: int = 16, frames: int = 256,
                  size: int = 32, fps: int = 16, seed: int = 0) -> str:
    """Write the demo set to ``out_dir`` (skipped when already there with the same arguments) and
    return the annotation file's path."""
    for name, value in (('num_train', num_train), ('num_val', num_val), ('fps', fps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not isinstance(frames, int) or frames < 32:
        raise ValueError(f'frames must be an int of at least 32, got {frames!r}')
    if not isinstance(size, int) or size < 16:
        raise ValueError(f'size must be an int of at least 16 pixels, got {size!r}')
    ann_file = osp.join(out_dir, 'annotations.json')
    params = dict(version=_VERSION, num_train=num_train, num_val=num_val, frames=frames, size=size,
                  fps=fps, seed=seed)
    if already_written(out_dir, _STAMP, params):
        return ann_file
    os.makedirs(osp.join(out_dir, 'videos'), exist_ok=True)
    database = {}
    for subset, count, offset in (('training', num_train, 0), ('validation', num_val, 1)):
        rng = np.random.default_rng([seed, offset])
        for index in range(count):
            vid = f'{subset[:5]}_{index:04d}'
            video, spans = draw_video(rng, frames, size)
            write_video(osp.join(out_dir, 'videos', vid + '.mp4'), video, fps=fps)
            database[vid] = dict(subset=subset, duration=frames / fps, annotations=[
                dict(segment=[s / fps, e / fps], label=TAD_DEMO_ACTIONS[k]) for s, e, k in spans])
    with open(ann_file, 'w') as f:
        json.dump(dict(version='demo', database=database), f, indent=1)
    write_stamp(out_dir, _STAMP, params)
    return ann_file


def random_segment_mAP(ann_file: str, subset: str = 'validation', per_video: int = 10,
                       seed: int = 0) -> dict:
    """The mAP of guessing: for every video of ``subset``, ``per_video`` segments of random class,
    start, length (5-40 % of the video) and score, scored by the same evaluation as the model."""
    from .metric import detection_map
    with open(ann_file) as f:
        database = json.load(f)['database']
    rng = np.random.default_rng(seed)
    classes = sorted({a['label'] for v in database.values() for a in v['annotations']})
    gts, preds = [], []
    for vid, video in database.items():
        if video['subset'] != subset:
            continue
        duration = video['duration']
        gts += [{'video-id': vid, 't-start': a['segment'][0], 't-end': a['segment'][1],
                 'label': classes.index(a['label'])} for a in video['annotations']]
        for _ in range(per_video):
            length = rng.uniform(0.05, 0.4) * duration
            start = rng.uniform(0, duration - length)
            preds.append({'video-id': vid, 't-start': start, 't-end': start + length,
                          'label': int(rng.integers(0, len(classes))), 'score': rng.random()})
    return detection_map(gts, preds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.tad.demo_data',
                                     description='Generate the temporal action detection demo set')
    parser.add_argument('--out', default='data/demo_tad')
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--frames', type=int, default=256)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    ann_file = make_demo_tad(args.out, args.num_train, args.num_val, args.frames, args.size,
                             seed=args.seed)
    print(f'demo TAD set: {ann_file} ({TAD_DEMO_ACTIONS})')


if __name__ == '__main__':
    main()
