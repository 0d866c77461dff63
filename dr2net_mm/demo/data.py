"""Deterministic demo datasets, generated on the fly (nothing to download).

``make_demo_coco(out_dir)`` writes a small COCO-format detection set: images of squares, disks and
triangles on textured backgrounds, with tight boxes::

    out_dir/annotations/instances_train.json   out_dir/train/000000.png ...
    out_dir/annotations/instances_val.json     out_dir/val/000000.png ...

``make_demo_ade20k(out_dir)`` writes a small semantic-segmentation set in the ADE20K layout that
mmseg's ``ADE20KDataset`` reads: outdoor scenes (sky, grass, buildings, trees, cars) as JPEG images
and label PNGs holding ADE20K class ids (1..150, 0 = "other", which ``reduce_zero_label`` ignores)::

    out_dir/images/training/000000.jpg      out_dir/annotations/training/000000.png ...
    out_dir/images/validation/000000.jpg    out_dir/annotations/validation/000000.png ...

Same arguments → byte-identical files. ``python -m dr2net_mm.demo.data --kind coco|ade20k --out DIR``.

``write_swin_official_checkpoint(path)``, ``write_vit_timm_checkpoint(path)`` and
``write_videomae_official_checkpoint(path)`` write a random Swin-T in the official release layout, a
random ViT in timm's layout and a random VideoMAE ViT-S in the official pretraining layout: the
demos' stand-ins for pretrained weights (no download possible).
"""
import argparse
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

DEMO_CLASSES = ('square', 'disk', 'triangle')
# The ADE20K classes the segmentation demo draws, in the order of the demo configs' metainfo. Their
# ADE20K ids (1-based, as in the label PNGs) come from mmseg's ADE20KDataset.METAINFO.
DEMO_SEG_CLASSES = ('sky', 'grass', 'building', 'tree', 'car')
_STAMP = 'demo_coco.json'
_SEG_STAMP = 'demo_ade20k.json'
_SEG_GENERATOR_VERSION = 2  # bump when _draw_scene changes: sets on disk are then regenerated


def already_written(out_dir: str, stamp_name: str, params: dict) -> bool:
    """Whether ``out_dir`` holds a generated set made with ``params`` (its stamp file says so)."""
    stamp = osp.join(out_dir, stamp_name)
    if not osp.isfile(stamp):
        return False
    with open(stamp) as f:
        return json.load(f) == params


def write_stamp(out_dir: str, stamp_name: str, params: dict) -> None:
    """Mark ``out_dir`` as generated with ``params``. Written last, so that a half-written set is
    regenerated next time."""
    with open(osp.join(out_dir, stamp_name), 'w') as f:
        json.dump(params, f)


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
    if already_written(out_dir, _STAMP, params):
        return out_dir
    _make_split(out_dir, 'train', num_train, image_size, seed)
    _make_split(out_dir, 'val', num_val, image_size, seed + 1)
    write_stamp(out_dir, _STAMP, params)
    return out_dir


def ade20k_ids(names=DEMO_SEG_CLASSES) -> Dict[str, int]:
    """ADE20K label-PNG ids (1-based) of class ``names``, from mmseg's class list."""
    from mmseg.datasets import ADE20KDataset
    classes = [c.strip() for c in ADE20KDataset.METAINFO['classes']]
    return {name: classes.index(name) + 1 for name in names}


def _fill(image: np.ndarray, label: np.ndarray, mask: np.ndarray, colour: np.ndarray,
          class_id: int, rng: np.random.Generator, noise: float = 8.0) -> None:
    """Paint ``mask`` with ``colour`` plus noise in ``image`` and ``class_id`` in ``label``."""
    count = int(mask.sum())
    image[mask] = np.clip(colour + rng.normal(0, noise, (count, 3)), 0, 255).astype(np.uint8)
    label[mask] = class_id


def _draw_scene(rng: np.random.Generator, height: int, width: int,
                ids: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One outdoor scene: sky above a horizon, grass below, buildings standing on the horizon,
    trees (disks on the horizon) and cars (rectangles on the grass). BGR image (uint8, H×W×3) and
    ADE20K label ids (uint8, H×W) with a 2-pixel "other" (0) frame."""
    image = np.zeros((height, width, 3), np.uint8)
    label = np.zeros((height, width), np.uint8)
    horizon = int(height * rng.uniform(0.4, 0.6))
    rows = np.arange(height)[:, None].repeat(width, 1)
    sky_colour = np.array([200, 150, 90]) + rng.integers(-20, 20, 3)  # BGR: light blue
    _fill(image, label, rows < horizon, sky_colour, ids['sky'], rng)
    grass_colour = np.array([40, 140, 60]) + rng.integers(-20, 20, 3)
    _fill(image, label, rows >= horizon, grass_colour, ids['grass'], rng)
    for _ in range(int(rng.integers(1, 3))):  # buildings: grey-brown boxes on the horizon
        w, h = int(rng.integers(width // 8, width // 3)), int(rng.integers(height // 6, horizon))
        x = int(rng.integers(0, width - w))
        mask = np.zeros((height, width), np.uint8)
        cv2.rectangle(mask, (x, horizon - h), (x + w - 1, horizon - 1), 1, thickness=-1)
        _fill(image, label, mask.astype(bool), np.array([110, 110, 130]) + rng.integers(-25, 25, 3),
              ids['building'], rng)
    for _ in range(int(rng.integers(1, 3))):  # trees: dark green disks around the horizon
        r = int(rng.integers(height // 12, height // 6))
        mask = np.zeros((height, width), np.uint8)
        cv2.circle(mask, (int(rng.integers(r, width - r)), horizon - r // 2), r, 1, thickness=-1)
        _fill(image, label, mask.astype(bool), np.array([30, 80, 20]) + rng.integers(-10, 10, 3),
              ids['tree'], rng)
    for _ in range(int(rng.integers(1, 3))):  # cars: saturated rectangles on the grass
        w, h = int(rng.integers(width // 6, width // 3)), int(rng.integers(height // 10, height // 6))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(horizon + 2, height - h))
        mask = np.zeros((height, width), np.uint8)
        cv2.rectangle(mask, (x, y), (x + w - 1, y + h - 1), 1, thickness=-1)
        colour = np.array([0, 0, 0])
        colour[int(rng.integers(0, 3))] = 230
        _fill(image, label, mask.astype(bool), colour, ids['car'], rng, noise=4.0)
    label[:2], label[-2:], label[:, :2], label[:, -2:] = 0, 0, 0, 0
    return image, label


def make_demo_ade20k(out_dir: str, num_train: int = 48, num_val: int = 12,
                     image_size: Tuple[int, int] = (128, 128), seed: int = 0) -> str:
    """Write the demo segmentation set in the ADE20K layout to ``out_dir`` (skipped when already
    there with the same arguments) and return ``out_dir``."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train={num_train} and num_val={num_val} must both be >= 1')
    if min(image_size) < 32:
        raise ValueError(f'image_size={image_size} is too small for the demo scenes (min 32)')
    ids = ade20k_ids()
    params = dict(num_train=num_train, num_val=num_val, image_size=list(image_size), seed=seed,
                  classes=ids, generator=_SEG_GENERATOR_VERSION)
    if already_written(out_dir, _SEG_STAMP, params):
        return out_dir
    for split, count, split_seed in (('training', num_train, seed), ('validation', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        for sub in ('images', 'annotations'):
            os.makedirs(osp.join(out_dir, sub, split), exist_ok=True)
        for index in range(count):
            image, label = _draw_scene(rng, *image_size, ids)
            cv2.imwrite(osp.join(out_dir, 'images', split, f'{index:06d}.jpg'), image)
            cv2.imwrite(osp.join(out_dir, 'annotations', split, f'{index:06d}.png'), label)
    write_stamp(out_dir, _SEG_STAMP, params)
    return out_dir


def _save_atomically(obj, path: str) -> str:
    import torch
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint
    return path


def write_swin_official_checkpoint(path: str, arch: str = 'swin_tiny_patch4_window7_224',
                                   seed: int = 0, **kwargs) -> str:
    """Save a randomly initialised timm Swin in the official release layout (``{'model': ...}``) to
    ``path``: the stand-in for the ImageNet checkpoint, loaded by ``convert_weights=True`` like the
    real file. ``kwargs`` change the architecture (timm's names, e.g. ``embed_dim``, ``depths``,
    ``num_heads``). Skipped when ``path`` exists; written atomically."""
    if os.path.isfile(path):
        return path
    import timm
    import torch

    from ..models.swin_checkpoint import timm_to_official
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    return _save_atomically({'model': timm_to_official(model.state_dict())}, path)


def write_vit_timm_checkpoint(path: str, arch: str = 'vit_small_patch16_224', seed: int = 0) -> str:
    """Save a randomly initialised timm ViT as ``{'model': state_dict}`` (the layout of the MAE and
    DeiT releases) to ``path``: the stand-in for MAE weights. Skipped when ``path`` exists."""
    if os.path.isfile(path):
        return path
    import timm
    import torch
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return _save_atomically({'model': model.state_dict()}, path)


def write_videomae_official_checkpoint(path: str, seed: int = 0, embed_dims: int = 384,
                                       depth: int = 12, num_heads: int = 6) -> str:
    """Save a randomly initialised VideoMAE encoder (default ViT-S: 384 wide, 12 blocks, 6 heads;
    tubelet 2, patch 16) in the layout of the official VideoMAE *pretraining* release (``{'model': {'encoder.*': ...}}``, fc1/fc2
    MLP names, ``patch_embed.proj``, no stored sinusoid position table) to ``path``: the stand-in for
    the self-supervised weights, converted on loading like the real file. Skipped when ``path``
    exists; written atomically."""
    if os.path.isfile(path):
        return path
    import logging

    import torch
    from mmengine.logging import MMLogger

    # (``import dr2net_mm``, which ran before this module, makes ``mmaction.models`` importable)
    from mmaction.models.backbones.vit_mae import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(embed_dims=embed_dims, depth=depth, num_heads=num_heads)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    renames = (('patch_embed.projection.', 'patch_embed.proj.'), ('.mlp.layers.0.0.', '.mlp.fc1.'),
               ('.mlp.layers.1.', '.mlp.fc2.'))
    official = {}
    for key, value in model.state_dict().items():
        if key == 'pos_embed':  # the official encoder computes its sinusoid table, never stores it
            continue
        for old, new in renames:
            key = key.replace(old, new)
        official['encoder.' + key] = value
    return _save_atomically({'model': official}, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.demo.data',
                                     description='Generate a demo dataset: COCO-format detection '
                                     'or ADE20K-layout segmentation')
    parser.add_argument('--kind', choices=('coco', 'ade20k'), default='coco')
    parser.add_argument('--out', default=None, help='default: data/demo_coco or data/demo_ade20k')
    parser.add_argument('--num-train', type=int, default=None, help='default: 64 (coco), 48 (ade20k)')
    parser.add_argument('--num-val', type=int, default=None, help='default: 16 (coco), 12 (ade20k)')
    parser.add_argument('--size', type=int, default=None, help='default: 160 (coco), 128 (ade20k)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    make, defaults = {'coco': (make_demo_coco, ('data/demo_coco', 64, 16, 160)),
                      'ade20k': (make_demo_ade20k, ('data/demo_ade20k', 48, 12, 128))}[args.kind]
    out, num_train, num_val, size = (default if value is None else value for value, default in zip(
        (args.out, args.num_train, args.num_val, args.size), defaults))
    out = make(out, num_train, num_val, (size, size), args.seed)
    print(f'demo {args.kind} set in {out}')


if __name__ == '__main__':
    main()
