"""A deterministic action-recognition demo set: short clips of a moving shape, as mp4 files.

The class of a clip is how its shape moves (:data:`DEMO_ACTIONS`: standing still, moving slowly,
moving fast, blinking): no single frame tells it, only the change over time does, so a model must
use time. Each clip has a smooth two-colour background with noise, and one filled square or disk of a
contrasting colour and random size, moving in a random direction. The files
and the annotation lists are in the layout of mmaction2's ``VideoDataset`` (``path label`` per line)::

    out_dir/train/000000.mp4 ...   out_dir/train_list.txt
    out_dir/val/000000.mp4 ...     out_dir/val_list.txt

Written with OpenCV (``mp4v``), read back by decord in the demo configs. Same arguments → same
frames (the encoder may differ between OpenCV builds; the stamp file records the arguments).
``python -m dr2net_mm.demo.clips --out DIR``.
"""
import argparse
import os
import os.path as osp
from typing import Tuple

import cv2
import numpy as np

from .data import already_written, write_stamp

__all__ = ['DEMO_ACTIONS', 'make_demo_clips', 'draw_clip', 'write_video']

# class index -> name: how the shape moves (its direction is random)
DEMO_ACTIONS = ('standing still', 'moving slowly', 'moving fast', 'blinking')
# the distance travelled over the clip, as a share of the frame size, per class
_TRAVEL = {0: (0.0, 0.0), 1: (0.12, 0.2), 2: (0.45, 0.6), 3: (0.0, 0.0)}
_STAMP = 'demo_clips.json'
_GENERATOR_VERSION = 2  # bump when draw_clip changes: sets on disk are then regenerated


def draw_clip(rng: np.random.Generator, label: int, frames: int, size: int) -> np.ndarray:
    """One clip of class ``label``: ``frames`` × size × size × 3 uint8 (BGR), a shape that moves as
    :data:`DEMO_ACTIONS` names (blinking: visible for two frames, hidden for two)."""
    corners = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    background = corners[0] * (1 - ramp) + corners[1] * ramp
    background = np.broadcast_to(background, (size, size, 3))
    # a colour far from the background's mean, so the shape is always visible
    colour = np.clip(255 - corners.mean(0) + rng.integers(-40, 41, size=3), 0, 255)
    colour = tuple(int(c) for c in colour)
    side = int(rng.integers(size // 5, size // 3))
    travel = float(rng.uniform(*_TRAVEL[label])) * size
    angle = float(rng.uniform(0, 2 * np.pi))
    dx, dy = np.cos(angle) * travel, np.sin(angle) * travel
    # start where the whole path stays inside the frame
    x_start = float(rng.uniform(max(0.0, -dx), size - side - max(0.0, dx)))
    y_start = float(rng.uniform(max(0.0, -dy), size - side - max(0.0, dy)))
    disk = rng.random() < 0.5
    clip = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        share = t / max(frames - 1, 1)
        x0, y0 = int(round(x_start + dx * share)), int(round(y_start + dy * share))
        image = background + rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
        image = np.clip(image, 0, 255).astype(np.uint8)
        if label != 3 or t % 4 < 2:
            if disk:
                cv2.circle(image, (x0 + side // 2, y0 + side // 2), side // 2, colour, -1)
            else:
                cv2.rectangle(image, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
        clip[t] = image
    return clip


def write_video(path: str, clip: np.ndarray, fps: int = 8) -> None:
    """Write ``clip`` (T, H, W, 3 uint8, BGR) to ``path`` as mp4, whole or not at all (a temporary
    file renamed at the end)."""
    height, width = clip.shape[1:3]
    tmp = path + '.tmp.mp4'
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot write mp4 files here ({cv2.__version__}); the video demo '
                           'needs an opencv-python build with its bundled FFmpeg (the PyPI wheels)')
    for frame in clip:
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)


def make_demo_clips(out_dir: str, num_train: int = 96, num_val: int = 32, frames: int = 16,
                    size: int = 64, seed: int = 0) -> str:
    """Write the demo clip set to ``out_dir`` (skipped when already there with the same arguments):
    ``num_train`` / ``num_val`` clips, classes in turn (balanced when the counts are multiples of
    4). Returns ``out_dir``."""
    for name, value in (('num_train', num_train), ('num_val', num_val), ('frames', frames)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if not isinstance(size, int) or size < 16:
        raise ValueError(f'size must be an int of at least 16 pixels, got {size!r}')
    params = dict(version=_GENERATOR_VERSION, num_train=num_train, num_val=num_val, frames=frames,
                  size=size, seed=seed)
    if already_written(out_dir, _STAMP, params):
        return out_dir
    for split, count, offset in (('train', num_train, 0), ('val', num_val, 1)):
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        rng = np.random.default_rng([seed, offset])
        lines = []
        for index in range(count):
            label = index % len(DEMO_ACTIONS)
            name = f'{split}/{index:06d}.mp4'
            write_video(osp.join(out_dir, name), draw_clip(rng, label, frames, size))
            lines.append(f'{name} {label}\n')
        with open(osp.join(out_dir, f'{split}_list.txt'), 'w') as f:
            f.writelines(lines)
    write_stamp(out_dir, _STAMP, params)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.demo.clips',
                                     description='Generate the action-recognition demo clips')
    parser.add_argument('--out', default='data/demo_clips')
    parser.add_argument('--num-train', type=int, default=96)
    parser.add_argument('--num-val', type=int, default=32)
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    out = make_demo_clips(args.out, args.num_train, args.num_val, args.frames, args.size, args.seed)
    print(f'demo clips in {out}: {DEMO_ACTIONS}')


if __name__ == '__main__':
    main()
