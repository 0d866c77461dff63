"""Deterministic demo datasets, generated on the fly (nothing to download).

``make_demo_coco(out_dir)`` writes a small COCO-format detection set: images of squares, disks and
triangles on textured backgrounds, with tight boxes::

    out_dir/annotations/instances_train.json   out_dir/train/000000.png ...
    out_dir/annotations/instances_val.json     out_dir/val/000000.png ...

Same arguments → byte-identical files. ``python -m dr2net_mm.demo_data --out data/demo_coco``.

``write_swin_official_checkpoint(path)`` writes a random Swin-T in the official release layout, the
demo's stand-in for ImageNet weights (no download possible).
"""
import argparse
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

DEMO_CLASSES = ('square', 'disk', 'triangle')
_STAMP = 'demo_coco.json'


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth two-colour gradient with mild noise (uint8, H×W×3)."""
    c0, c1 = rng.integers(0, 120, 3), rng.integers(0, 120, 3)
    t = np.linspace(0, 1, width)[None, :, None]
    image = c0 * (1 - t) + c1 * t + rng.normal(0, 6, (height, width, 3))
    return np.clip(np.broadcast_to(image, (height, width, 3)), 0, 255).astype(np.uint8)


def _free_spot(rng: np.random.Generator, height: int, width: int, size: int,
               taken: List[Tuple[int, int, int]]) -> Optional[Tuple[int, int]]:
    """A top-left corner for a size×size shape that overlaps no taken (x, y, size), or None."""
    for _ in range(50):
        x0, y0 = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        if all(x0 >= x + s or x >= x0 + size or y0 >= y + s or y >= y0 + size for x, y, s in taken):
            return x0, y0
    return None


def _draw_shape(image: np.ndarray, rng: np.random.Generator, label: int, x0: int, y0: int,
                size: int) -> Tuple[float, float, float, float]:
    """Draw one filled shape of class ``label`` and return its tight box (x, y, w, h)."""
    height, width = image.shape[:2]
    colour = tuple(int(c) for c in rng.integers(140, 256, 3))
    mask = np.zeros((height, width), np.uint8)
    if label == 0:
        cv2.rectangle(mask, (x0, y0), (x0 + size - 1, y0 + size - 1), 1, thickness=-1)
    elif label == 1:
        r = size // 2
        cv2.circle(mask, (x0 + r, y0 + r), r, 1, thickness=-1)
    else:
        pts = np.array([[x0 + size // 2, y0], [x0, y0 + size - 1], [x0 + size - 1, y0 + size - 1]])
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    image[mask.astype(bool)] = colour
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(
        ys.max() - ys.min() + 1)


def _make_split(out_dir: str, split: str, num_images: int, image_size: Tuple[int, int],
                seed: int) -> str:
    rng = np.random.default_rng(seed)
    height, width = image_size
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(num_images):
        image = _background(rng, height, width)
        file_name = f'{index:06d}.png'
        taken: List[Tuple[int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(0, len(DEMO_CLASSES)))
            size = int(rng.integers(min(height, width) // 6, min(height, width) // 2))
            spot = _free_spot(rng, height, width, size, taken)
            if spot is None:
                continue
            taken.append((*spot, size))
            x, y, w, h = _draw_shape(image, rng, label, *spot, size)
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1,
                                    category_id=label + 1, bbox=[x, y, w, h], area=w * h,
                                    iscrowd=0))
        cv2.imwrite(osp.join(out_dir, split, file_name), image)
        images.append(dict(id=index + 1, file_name=file_name, height=height, width=width))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(DEMO_CLASSES)]
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return ann_file


def make_demo_coco(out_dir: str, num_train: int = 64, num_val: int = 16,
                   image_size: Tuple[int, int] = (160, 160), seed: int = 0) -> str:
    """Write the demo detection set to ``out_dir`` (skipped when already there with the same
    arguments) and return ``out_dir``."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train={num_train} and num_val={num_val} must both be >= 1')
    if min(image_size) < 32:
        raise ValueError(f'image_size={image_size} is too small for the demo shapes (min 32)')
    params = dict(num_train=num_train, num_val=num_val, image_size=list(image_size), seed=seed,
                  classes=list(DEMO_CLASSES))
    stamp = osp.join(out_dir, _STAMP)
    if osp.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                return out_dir
    _make_split(out_dir, 'train', num_train, image_size, seed)
    _make_split(out_dir, 'val', num_val, image_size, seed + 1)
    with open(stamp, 'w') as f:  # written last: a half-written set is regenerated next time
        json.dump(params, f)
    return out_dir


def write_swin_official_checkpoint(path: str, arch: str = 'swin_tiny_patch4_window7_224',
                                   seed: int = 0) -> str:
    """Save a randomly initialised timm Swin in the official release layout (``{'model': ...}``) to
    ``path``: the stand-in for the ImageNet checkpoint, loaded by ``convert_weights=True`` like the
    real file. Skipped when ``path`` exists; written atomically."""
    if os.path.isfile(path):
        return path
    import timm
    import torch

    from .models.swin import timm_to_official
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    torch.save({'model': timm_to_official(model.state_dict())}, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description='Generate the demo COCO-format detection set')
    parser.add_argument('--out', default='data/demo_coco')
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--size', type=int, default=160)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    out = make_demo_coco(args.out, args.num_train, args.num_val, (args.size, args.size), args.seed)
    print(f'demo COCO set in {out}')


if __name__ == '__main__':
    main()
