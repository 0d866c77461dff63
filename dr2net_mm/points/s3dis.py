"""S3DIS (Stanford Large-Scale 3D Indoor Spaces) for semantic segmentation: files, checks, dataset.

**Layout** (the preprocessed one PointNeXt / Pix4Point read, ``data/S3DIS/s3disfull/raw/`` there): one
NumPy file per room, named ``Area_{k}_{room}.npy`` (k = 1..6, e.g. ``Area_5_office_12.npy``), holding a
float ``(N, 7)`` array, one row per point::

    x  y  z  r  g  b  label        x y z in metres (z up), r g b in 0..255, label an integer id 0..12

with the label ids of :data:`CLASSES` (ceiling 0, floor 1, wall 2, ..., clutter 12). The usual split
trains on Areas 1, 2, 3, 4, 6 and validates on Area 5. :func:`load_room` shifts ``x y z`` so that
their minimum is 0 (as PointNeXt's loader does), so files with or without that shift load alike.

**Conversion from the raw release** (``Stanford3dDataset_v1.2_Aligned_Version/Area_k/<room>/
Annotations/<class>_<n>.txt``, one text file per object with rows ``x y z r g b``):
:func:`convert_raw_release` stacks the objects of a room, labels each object by the class in its file
name (names outside :data:`CLASSES`, i.e. ``stairs``, become ``clutter``), shifts ``x y z`` to a
minimum of 0 and writes ``Area_k_<room>.npy`` as float32::

    python -m dr2net_mm.points convert Stanford3dDataset_v1.2_Aligned_Version data/s3dis
    python -m dr2net_mm.points check data/s3dis       # load and check every room

The release has one corrupt line (Area_5/hallway_6/Annotations/ceiling_1.txt, a stray non-printing
character inside a number); the converter drops characters that cannot be part of a number and says
where it did. See docs/s3dis.md.
"""
import argparse
import glob
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS

__all__ = ['CLASSES', 'PALETTE', 'S3DISDataset', 'load_room', 'convert_raw_release', 'check_rooms',
           'room_files']

CLASSES = ('ceiling', 'floor', 'wall', 'beam', 'column', 'window', 'door', 'table', 'chair', 'sofa',
           'bookcase', 'board', 'clutter')
# Display colours (the ones of the S3DIS tools); not used in training.
PALETTE = ((0, 255, 0), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 255), (100, 100, 255),
           (200, 200, 100), (170, 120, 200), (255, 0, 0), (200, 100, 100), (10, 200, 100),
           (200, 200, 200), (50, 50, 50))
COLUMNS = 'x y z r g b label'
ROOM_PATTERN = re.compile(r'^Area_(\d+)_(.+)\.npy$')
_CONVERT_HINT = ('convert the raw release with `python -m dr2net_mm.points convert RAW_DIR '
                 'OUT_DIR` (docs/s3dis.md)')


def room_files(folder: str) -> Dict[int, List[str]]:
    """``{area: [paths of its Area_{area}_*.npy files, sorted]}`` for the room files in ``folder``."""
    found: Dict[int, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        match = ROOM_PATTERN.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(osp.join(folder, name))
    return found


def _check_shape(path: str, array: np.ndarray) -> None:
    if array.ndim != 2 or array.shape[1] != 7:
        raise ValueError(f'{path}: expected an (N, 7) array with columns "{COLUMNS}" (the PointNeXt/'
                         f'Pix4Point S3DIS layout), got shape {array.shape}; {_CONVERT_HINT}')
    if array.shape[0] == 0:
        raise ValueError(f'{path}: the room has no points (shape {array.shape}); remove the file or '
                         f're-run the conversion of that room')
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f'{path}: expected a numeric array, got dtype {array.dtype}; {_CONVERT_HINT}')


def load_room(path: str, num_classes: int = len(CLASSES)) -> Dict[str, np.ndarray]:
    """Load and check one room file -> ``coord`` float32 ``(N, 3)`` (shifted to a minimum of 0),
    ``color`` float32 ``(N, 3)`` (0..255), ``label`` int64 ``(N,)`` (0..num_classes-1).

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the fix, for a
    wrong number of columns, an empty room, non-finite values, colours outside 0..255 or labels that
    are not integers in ``0..num_classes-1``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'room file not found: {path}')
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f'{path}: not a readable .npy array ({error}); {_CONVERT_HINT}') from None
    _check_shape(path, array)
    array = array.astype(np.float64, copy=False)
    for name, columns in (('coordinates (x y z)', slice(0, 3)), ('colours (r g b)', slice(3, 6)),
                          ('labels', slice(6, 7))):
        bad = ~np.isfinite(array[:, columns]).all(1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f'{path}: {bad.sum()} of {len(array)} points have non-finite (NaN/inf) '
                             f'{name}, first at rows {rows[:5].tolist()}; drop those points or '
                             f're-run the conversion')
    color = array[:, 3:6]
    if color.min() < 0 or color.max() > 255:
        raise ValueError(f'{path}: colours must be in 0..255, found {color.min():g}..{color.max():g}; '
                         f'store raw r g b values (the loader divides by 255)')
    label = array[:, 6]
    bad = (label != np.round(label)) | (label < 0) | (label >= num_classes)
    if bad.any():
        values = np.unique(label[bad])
        raise ValueError(f'{path}: labels must be integers 0..{num_classes - 1} ({", ".join(CLASSES)} '
                         f'for S3DIS), found {values[:8].tolist()} at {bad.sum()} points; fix the '
                         f'labels or {_CONVERT_HINT}')
    coord = array[:, :3] - array[:, :3].min(0)
    return dict(coord=coord.astype(np.float32), color=color.astype(np.float32),
                label=label.astype(np.int64))


@DATASETS.register_module()
class S3DISDataset(BaseDataset):
    """Rooms of the given S3DIS ``areas``, one sample per room, in the layout of the module docstring.

    Every sample starts as ``dict(room=name, area=k, room_path=path, coord, color, label)`` (see
    :func:`load_room`) and goes through ``pipeline`` (``dr2net_mm.points.transforms``: grid
    subsampling, cropping, augmentation, packing). Files are found at construction: each requested
    area must have at least one ``Area_{k}_*.npy`` file under ``data_root`` (+ ``data_prefix['rooms']``)
    and every file must hold an ``(N >= 1, 7)`` array (read from the header only); the values are
    checked when a room is loaded.

    Args:
        areas: area numbers in 1..6, e.g. ``(1, 2, 3, 4, 6)`` for training, ``(5,)`` for validation.
        data_root, data_prefix: the folder of the room files is ``data_root/data_prefix['rooms']``.
        pipeline, test_mode, indices, lazy_init, serialize_data, max_refetch: as MMEngine's
            ``BaseDataset``; ``metainfo`` may override ``classes`` (default :data:`CLASSES`).
    """

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, areas: Sequence[int] = (1, 2, 3, 4, 6), data_root: str = '',
                 data_prefix: Optional[dict] = None, **kwargs):
        if isinstance(areas, int) and not isinstance(areas, bool):
            areas = (areas, )
        if not isinstance(areas, (list, tuple)) or not areas or not all(
                isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 6 for a in areas):
            raise ValueError(f'areas must be a non-empty sequence of S3DIS area numbers 1..6, got '
                             f'{areas!r} (e.g. (1, 2, 3, 4, 6) to train, (5,) to validate)')
        self.areas = tuple(sorted(set(areas)))
        super().__init__(data_root=data_root, data_prefix=data_prefix or dict(rooms=''), **kwargs)

    @property
    def room_dir(self) -> str:
        return self.data_prefix.get('rooms') or self.data_root

    def load_data_list(self) -> List[dict]:
        folder = self.room_dir
        if not osp.isdir(folder):
            raise FileNotFoundError(f'S3DIS room folder not found: {folder!r}. Expected '
                                    f'Area_{{k}}_{{room}}.npy files there; {_CONVERT_HINT}, or run '
                                    '`python tools/demo_points.py` for generated demo rooms')
        files = room_files(folder)
        missing = [a for a in self.areas if a not in files]
        if missing:
            raise FileNotFoundError(f'no room files of area(s) {missing} (Area_{missing[0]}_*.npy) in '
                                    f'{folder}; found areas {sorted(files)}. Check data_root/areas, '
                                    f'or {_CONVERT_HINT}')
        data_list = []
        for area in self.areas:
            for path in files[area]:
                try:
                    header = np.load(path, mmap_mode='r', allow_pickle=False)
                except (ValueError, OSError) as error:
                    raise ValueError(f'{path}: not a readable .npy array ({error}); '
                                     f'{_CONVERT_HINT}') from None
                _check_shape(path, header)
                data_list.append(dict(room=osp.basename(path)[:-4], area=area, room_path=path,
                                      num_points=int(header.shape[0])))
        return data_list

    def prepare_data(self, idx: int):
        info = self.get_data_info(idx)
        info.update(load_room(info['room_path'], len(self.metainfo['classes'])))
        return self.pipeline(info)


# ------------------------------------------------------------------------------------------------
# Conversion of the raw release
# ------------------------------------------------------------------------------------------------
_NOT_NUMERIC = re.compile(r'[^0-9eE.+\-\s]')


def _read_object(path: str) -> np.ndarray:
    """One ``Annotations/*.txt`` file -> float64 ``(M, 6)`` (x y z r g b)."""
    with open(path, 'r', errors='replace') as f:
        text = f.read()
    cleaned, removed = _NOT_NUMERIC.subn('', text)
    if removed:
        lines = [i + 1 for i, line in enumerate(text.splitlines()) if _NOT_NUMERIC.search(line)]
        print(f'{path}: removed {removed} character(s) that cannot be part of a number, at line(s) '
              f'{lines[:5]}')
    rows = [line.split() for line in cleaned.splitlines() if line.strip()]
    bad = [i + 1 for i, row in enumerate(rows) if len(row) != 6]
    if bad:
        raise ValueError(f'{path}: expected 6 numbers per line (x y z r g b), lines {bad[:5]} differ; '
                         'fix those lines in the raw file and convert again')
    try:
        return np.array(rows, dtype=np.float64).reshape(-1, 6)
    except ValueError as error:
        raise ValueError(f'{path}: {error}; fix that line in the raw file and convert again') from None


def convert_room(annotation_dir: str) -> np.ndarray:
    """``.../Area_k/<room>/Annotations`` -> float32 ``(N, 7)`` x y z r g b label, xyz minimum 0."""
    parts = sorted(glob.glob(osp.join(annotation_dir, '*.txt')))
    if not parts:
        raise ValueError(f'{annotation_dir}: no object files (*.txt); is this the Annotations folder of '
                         'a room of Stanford3dDataset_v1.2_Aligned_Version?')
    blocks = []
    for part in parts:
        name = osp.basename(part).split('_')[0]
        label = CLASSES.index(name) if name in CLASSES else CLASSES.index('clutter')
        points = _read_object(part)
        blocks.append(np.concatenate([points, np.full((len(points), 1), label)], 1))
    room = np.concatenate(blocks, 0)
    if len(room) == 0:
        raise ValueError(f'{annotation_dir}: the object files hold no points')
    room[:, :3] -= room[:, :3].min(0)
    return room.astype(np.float32)


def convert_raw_release(raw_dir: str, out_dir: str, areas: Sequence[int] = (1, 2, 3, 4, 5, 6),
                        overwrite: bool = False) -> List[str]:
    """Write ``out_dir/Area_k_<room>.npy`` for every room of ``raw_dir/Area_k/<room>/Annotations``
    (``raw_dir``: the ``Stanford3dDataset_v1.2_Aligned_Version`` folder). Existing outputs are kept
    unless ``overwrite``. Returns the paths written or kept."""
    if not osp.isdir(raw_dir):
        raise FileNotFoundError(f'raw S3DIS folder not found: {raw_dir}')
    os.makedirs(out_dir, exist_ok=True)
    outputs = []
    for area in areas:
        rooms = sorted(glob.glob(osp.join(raw_dir, f'Area_{area}', '*', 'Annotations')))
        if not rooms:
            raise FileNotFoundError(f'no rooms in {osp.join(raw_dir, f"Area_{area}")} (expected '
                                    f'Area_{area}/<room>/Annotations/*.txt)')
        for annotation_dir in rooms:
            room = osp.basename(osp.dirname(annotation_dir))
            out = osp.join(out_dir, f'Area_{area}_{room}.npy')
            if overwrite or not osp.isfile(out):
                array = convert_room(annotation_dir)
                np.save(out + '.part.npy', array)  # renamed when complete
                os.replace(out + '.part.npy', out)
                print(f'{out}: {len(array)} points')
            outputs.append(out)
    return outputs


def check_rooms(folder: str, areas: Sequence[int] = (1, 2, 3, 4, 5, 6)) -> Dict[int, int]:
    """Load and check every room of ``areas`` in ``folder``; returns ``{area: number of rooms}``."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'S3DIS room folder not found: {folder!r}')
    files = room_files(folder)
    counts = {}
    for area in areas:
        for path in files.get(area, []):
            load_room(path)
        counts[area] = len(files.get(area, []))
    return counts


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m dr2net_mm.points convert RAW_DIR OUT_DIR`` / ``check FOLDER`` (see the module
    docstring); exits 1 with the message on bad input."""
    parser = argparse.ArgumentParser(prog='python -m dr2net_mm.points',
                                     description='S3DIS conversion and checks')
    sub = parser.add_subparsers(dest='command', required=True)
    convert = sub.add_parser('convert', help='raw release -> Area_k_room.npy files')
    convert.add_argument('raw_dir', help='the Stanford3dDataset_v1.2_Aligned_Version folder')
    convert.add_argument('out_dir')
    convert.add_argument('--areas', type=int, nargs='+', default=[1, 2, 3, 4, 5, 6])
    convert.add_argument('--overwrite', action='store_true')
    check = sub.add_parser('check', help='load and check every room file of a folder')
    check.add_argument('folder')
    check.add_argument('--areas', type=int, nargs='+', default=[1, 2, 3, 4, 5, 6])
    args = parser.parse_args(argv)
    try:
        if args.command == 'convert':
            paths = convert_raw_release(args.raw_dir, args.out_dir, args.areas, args.overwrite)
            print(f'{len(paths)} rooms in {args.out_dir}')
        else:
            counts = check_rooms(args.folder, args.areas)
            print('rooms per area: ' + ', '.join(f'Area_{a}: {n}' for a, n in counts.items()))
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)

