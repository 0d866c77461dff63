"""Deterministic synthetic S3DIS-like rooms for the point-cloud demo and tests (nothing to download).

Each room is a box-shaped space (4-6 m x 4-6 m x 2.7-3.1 m) sampled on its surfaces: floor and
ceiling planes, four walls with a window, a door and a board on them, and furniture made of boxes --
a table with legs, chairs, a bookcase, sometimes a sofa, a beam under the ceiling and a column in a
corner -- plus small clutter boxes on the table and the floor. Every class of :data:`~dr2net_mm.
points.s3dis.CLASSES` has its own base colour (some close to each other, e.g. column and wall, so that
geometry matters) with per-object and per-point noise. Files are written in the S3DIS layout
(``Area_{k}_{room}.npy``, float32 ``(N, 7)`` x y z r g b label)::

    python -m dr2net_mm.demo.rooms data/demo_s3dis      # rooms + a stand-in ViT-S checkpoint

Same arguments -> byte-identical files. The CLI also writes :data:`DEMO_CHECKPOINT`, a randomly
initialised timm ViT-S as ``{'model': state_dict}`` (the MAE release layout; ``dr2net_mm.demo.data.
write_vit_timm_checkpoint``): the demo's stand-in for MAE weights.
"""
import argparse
import os
import os.path as osp
from typing import List, Sequence, Tuple

import numpy as np

from ..points.s3dis import CLASSES
from .data import already_written, write_stamp, write_vit_timm_checkpoint

__all__ = ['make_room', 'make_demo_rooms', 'DEMO_CHECKPOINT']

DEMO_CHECKPOINT = 'vit_small_patch16_224_mae_random.pth'
_STAMP = 'demo_rooms.json'
_ID = {name: i for i, name in enumerate(CLASSES)}
_COLOUR = {  # base r g b per class
    'ceiling': (215, 215, 210), 'floor': (125, 100, 75), 'wall': (185, 180, 170),
    'beam': (200, 200, 195), 'column': (180, 175, 165), 'window': (150, 185, 215),
    'door': (150, 95, 55), 'table': (165, 125, 85), 'chair': (60, 60, 75), 'sofa': (130, 45, 45),
    'bookcase': (105, 75, 45), 'board': (240, 240, 240), 'clutter': (120, 120, 120)}


class _Room:
    """Collects labelled, coloured surface samples."""

    def __init__(self, rng: np.random.Generator, density: float):
        self.rng, self.density = rng, density
        self.parts: List[np.ndarray] = []

    def rect(self, origin, u, v, name: str, colour=None) -> np.ndarray:
        """Points uniform on the parallelogram ``origin + a·u + b·v`` (a, b in [0, 1])."""
        origin, u, v = (np.asarray(x, dtype=np.float64) for x in (origin, u, v))
        area = np.linalg.norm(np.cross(u, v))
        count = max(4, int(round(self.density * area)))
        ab = self.rng.random((count, 2))
        xyz = origin + ab[:, :1] * u + ab[:, 1:] * v
        return self.add(xyz, name, colour)

    def box(self, lo, hi, name: str, bottom: bool = False) -> None:
        """The faces of the axis-aligned box ``lo..hi`` (without its bottom unless ``bottom``)."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        dx, dy, dz = np.diag(hi - lo)
        colour = self.colour(name)
        faces = [(hi * [0, 0, 1] + lo * [1, 1, 0], dx, dy), (lo, dx, dz), (lo + dy, dx, dz),
                 (lo, dy, dz), (lo + dx, dy, dz)]
        if bottom:
            faces.append((lo, dx, dy))
        for origin, u, v in faces:
            self.rect(origin, u, v, name, colour)

    def colour(self, name: str) -> np.ndarray:
        base = np.array(_COLOUR[name], dtype=np.float64)
        if name == 'clutter':
            base = self.rng.uniform(40, 230, 3)
        return base + self.rng.normal(0, 10, 3)

    def add(self, xyz: np.ndarray, name: str, colour=None) -> np.ndarray:
        colour = self.colour(name) if colour is None else colour
        rgb = np.clip(colour + self.rng.normal(0, 12, xyz.shape), 0, 255)
        label = np.full((len(xyz), 1), _ID[name], dtype=np.float64)
        part = np.concatenate([xyz, rgb, label], 1)
        self.parts.append(part)
        return part

    def array(self) -> np.ndarray:
        room = np.concatenate(self.parts, 0)
        room[:, :3] += self.rng.normal(0, 0.005, (len(room), 3))
        room[:, :3] -= room[:, :3].min(0)
        room[:, 3:6] = np.round(room[:, 3:6])
        return room.astype(np.float32)


def _wall_opening(room: _Room, wall: np.ndarray, along: int, normal: int, inward: float,
                  x0: float, w: float, z0: float, z1: float, name: str, inset: float) -> None:
    """Turn the points of ``wall`` at ``x0..x0+w`` along axis ``along`` and height ``z0..z1`` into
    ``name`` (relabelled, recoloured, moved ``inset`` metres into the room along axis ``normal``,
    ``inward`` = +1 or -1)."""
    inside = (wall[:, along] >= x0) & (wall[:, along] <= x0 + w) & (wall[:, 2] >= z0) & \
        (wall[:, 2] <= z1)
    wall[inside, 3:6] = np.clip(room.colour(name) + room.rng.normal(0, 12, (inside.sum(), 3)), 0, 255)
    wall[inside, 6] = _ID[name]
    wall[inside, normal] += inward * inset


def make_room(rng: np.random.Generator, density: float = 80.0) -> np.ndarray:
    """One synthetic room: float32 ``(N, 7)`` x y z r g b label, ``density`` points per m²."""
    width, length, height = rng.uniform(4, 6), rng.uniform(4, 6), rng.uniform(2.7, 3.1)
    room = _Room(rng, density)
    room.rect((0, 0, 0), (width, 0, 0), (0, length, 0), 'floor')
    room.rect((0, 0, height), (width, 0, 0), (0, length, 0), 'ceiling')
    walls = [(room.rect((0, 0, 0), (width, 0, 0), (0, 0, height), 'wall'), 0, 1, 1.0),  # y = 0
             (room.rect((0, length, 0), (width, 0, 0), (0, 0, height), 'wall'), 0, 1, -1.0),
             (room.rect((0, 0, 0), (0, length, 0), (0, 0, height), 'wall'), 1, 0, 1.0),  # x = 0
             (room.rect((width, 0, 0), (0, length, 0), (0, 0, height), 'wall'), 1, 0, -1.0)]
    window_wall, door_wall, board_wall = rng.permutation(4)[:3]
    for index, name, w, z0, z1, inset in (
            (window_wall, 'window', rng.uniform(1.0, 1.8), 0.9, 2.1, 0.04),
            (door_wall, 'door', 0.9, 0.0, 2.05, 0.02),
            (board_wall, 'board', rng.uniform(1.4, 2.4), 0.9, 2.0, 0.02)):
        wall, along, normal, inward = walls[index]
        span = width if along == 0 else length
        _wall_opening(room, wall, along, normal, inward, rng.uniform(0.3, span - w - 0.3), w, z0, z1,
                      name, inset)
    # table with legs in the middle part, chairs around it, clutter on top
    tx, ty = rng.uniform(1.2, width - 2.6), rng.uniform(1.2, length - 2.0)
    room.box((tx, ty, 0.71), (tx + 1.4, ty + 0.8, 0.75), 'table', bottom=True)
    for lx, ly in ((tx, ty), (tx + 1.35, ty), (tx, ty + 0.75), (tx + 1.35, ty + 0.75)):
        room.box((lx, ly, 0), (lx + 0.05, ly + 0.05, 0.71), 'table')
    for side in range(int(rng.integers(2, 5))):
        cx = tx + 0.2 + 0.6 * (side % 2)
        cy = ty - 0.55 if side < 2 else ty + 0.9
        back = cy if side < 2 else cy + 0.4
        room.box((cx, cy, 0.42), (cx + 0.45, cy + 0.45, 0.46), 'chair', bottom=True)
        room.box((cx, back, 0.46), (cx + 0.45, back + 0.05, 0.9), 'chair', bottom=True)
    for _ in range(int(rng.integers(1, 4))):
        px, py = tx + rng.uniform(0, 1.2), ty + rng.uniform(0, 0.6)
        s = rng.uniform(0.1, 0.25)
        room.box((px, py, 0.75), (px + s, py + s * rng.uniform(0.5, 1), 0.75 + s), 'clutter')
    # bookcase against the wall y = 0, sofa against y = length (sometimes)
    bx = rng.uniform(0.2, width - 1.2)
    room.box((bx, 0.02, 0), (bx + 1.0, 0.37, rng.uniform(1.7, 2.1)), 'bookcase')
    if rng.random() < 0.6:
        sx = rng.uniform(0.2, width - 2.0)
        room.box((sx, length - 0.85, 0), (sx + 1.8, length - 0.05, 0.45), 'sofa')
        room.box((sx, length - 0.25, 0.45), (sx + 1.8, length - 0.05, 0.85), 'sofa')
    if rng.random() < 0.6:
        ex = rng.uniform(0.5, width - 0.8)
        room.box((ex, 0, height - 0.4), (ex + 0.3, length, height - 0.01), 'beam', bottom=True)
    if rng.random() < 0.6:
        room.box((width - 0.45, length - 0.45, 0), (width - 0.01, length - 0.01, height), 'column')
    for _ in range(int(rng.integers(1, 4))):
        px, py = rng.uniform(0.3, width - 0.6), rng.uniform(0.3, length - 0.6)
        s = rng.uniform(0.15, 0.4)
        room.box((px, py, 0), (px + s, py + s, s), 'clutter')
    return room.array()


_ROOM_TYPES = ('office', 'conferenceRoom', 'lounge', 'pantry')


def make_demo_rooms(out_dir: str, rooms_per_area: int = 2, val_rooms: int = 3,
                    train_areas: Sequence[int] = (1, 2, 3, 4, 6), density: float = 80.0,
                    seed: int = 0) -> str:
    """Write ``rooms_per_area`` rooms for each of ``train_areas`` and ``val_rooms`` rooms of Area 5
    to ``out_dir`` (skipped when already there with the same arguments); returns ``out_dir``."""
    if rooms_per_area < 1 or val_rooms < 1:
        raise ValueError(f'rooms_per_area={rooms_per_area} and val_rooms={val_rooms} must be >= 1')
    params = dict(rooms_per_area=rooms_per_area, val_rooms=val_rooms, train_areas=list(train_areas),
                  density=density, seed=seed)
    if already_written(out_dir, _STAMP, params):
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    plan: List[Tuple[int, int]] = [(a, rooms_per_area) for a in train_areas] + [(5, val_rooms)]
    for area, count in plan:
        rng = np.random.default_rng([seed, area])
        for index in range(count):
            name = f'Area_{area}_{_ROOM_TYPES[index % len(_ROOM_TYPES)]}_{index + 1}.npy'
            np.save(osp.join(out_dir, name), make_room(rng, density))
    write_stamp(out_dir, _STAMP, params)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.demo.rooms',
                                     description='write synthetic S3DIS-layout rooms')
    parser.add_argument('out_dir', nargs='?', default='data/demo_s3dis')
    parser.add_argument('--rooms-per-area', type=int, default=2)
    parser.add_argument('--val-rooms', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-checkpoint', action='store_true', help='rooms only')
    args = parser.parse_args(argv)
    make_demo_rooms(args.out_dir, args.rooms_per_area, args.val_rooms, seed=args.seed)
    if not args.no_checkpoint:
        write_vit_timm_checkpoint(osp.join(args.out_dir, DEMO_CHECKPOINT))
    print(f'{args.out_dir}: {len([n for n in os.listdir(args.out_dir) if n.endswith(".npy")])} rooms')


if __name__ == '__main__':
    main()
