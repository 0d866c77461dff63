"""A2D-Sentences-layout referring video segmentation data: the dataset, clip and mask decoding
(decord, h5py), resizing and packing.

The layout (A2D with the A2D-Sentences annotations; paths relative to the data root)::

    Release/videoset.csv                      one video a row, no header: id, actor-action label,
                                              start, end, height, width, frames, annotated frames,
                                              usage (0 train, 1 test)
    Release/clips320H/<id>.mp4                the videos
    a2d_annotation_with_instances/<id>/<n>.h5 instance masks of annotated frame n (1-based, 5
                                              digits): "reMask" (N, W, H) or (W, H) for one
                                              instance (stored transposed, as MATLAB writes),
                                              "instance" (N,) the instance ids
    text_annotations/a2d_annotation.txt       CSV with header video_id,instance_id,query

One sample is a sentence and one annotated frame where its instance appears (MTTR's): a clip of
``clip_len`` frames ``frame_interval`` apart centred on that frame (indices clamped to the video),
the masks of every instance of that frame (the targets; the sentence's is the *referred* one) and
the referred mask at the video's resolution (for the metric).

Bad input, each with a message naming the file and what to do:

* a sentence naming an instance id that no annotated frame of its video has: stop (``ValueError``
  naming the annotation file, the video, the id and the mask folder); one that some annotated
  frames lack: those frames are not samples of that sentence (one warning per dataset);
* masks of another size than the video's frames: stop (``ValueError`` naming both files; checked
  at loading when ``check_videos``, and always when a clip is decoded);
* a missing or corrupt video: skipped with a warning naming it (``check_videos=True``, at loading);
  one that fails later while decoding is skipped in training, with a warning;
* a mask file without "reMask"/"instance", a video of the annotations without masks, a bad CSV: stop
  (``ValueError`` naming the file).
"""
import csv
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from mmaction.registry import DATASETS, TRANSFORMS
from mmaction.structures import ActionDataSample
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import InstanceData

__all__ = ['A2DSentencesDataset', 'DecodeReferringClip', 'ResizeReferringClip',
           'PackReferringInputs', 'read_sentences', 'read_instance_masks', 'write_instance_masks',
           'clip_indices']


def read_sentences(ann_file: str) -> List[dict]:
    """The rows of an A2D-Sentences text annotation file: ``video_id``, ``instance_id`` (int),
    ``query``."""
    with open(ann_file, newline='') as f:
        rows = list(csv.DictReader(f))
    if rows and not {'video_id', 'instance_id', 'query'} <= set(rows[0]):
        raise ValueError(f'{ann_file}: needs the CSV header video_id,instance_id,query (A2D-'
                         f'Sentences\' a2d_annotation.txt), got {sorted(rows[0])}')
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            instance = int(row['instance_id'])
        except (TypeError, ValueError):
            raise ValueError(f'{ann_file}, line {line}: instance_id {row["instance_id"]!r} is not '
                             'an integer; fix the annotation file') from None
        out.append(dict(video_id=row['video_id'], instance_id=instance, query=row['query']))
    return out


def read_videoset(path: str) -> Dict[str, int]:
    """``video id -> usage`` (0 train, 1 test) of A2D's ``videoset.csv``."""
    usage = {}
    with open(path, newline='') as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 9 or row[8].strip() not in ('0', '1'):
                raise ValueError(f'{path}, line {line}: expected 9 columns ending in the usage 0 '
                                 f'(train) or 1 (test), got {row}')
            usage[row[0].strip()] = int(row[8])
    return usage


def _import_h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError('A2D-Sentences masks are HDF5 files: `pip install "dr2net_mm[rvos]"` '
                          '(h5py)') from error
    return h5py


def read_instance_masks(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids (N,) int64, masks (N, H, W) uint8)`` of an A2D-Sentences instance mask file."""
    h5py = _import_h5py()
    try:
        with h5py.File(path, 'r') as f:
            if 'reMask' not in f or 'instance' not in f:
                raise KeyError(f'has {sorted(f)}')
            masks = np.asarray(f['reMask'])
            ids = np.asarray(f['instance']).reshape(-1).astype(np.int64)
    except (OSError, KeyError) as error:
        raise ValueError(f'{path}: not an A2D-Sentences instance mask file (HDF5 with "reMask" '
                         f'and "instance"): {error}') from None
    if masks.ndim == 2:
        masks = masks[None]
    masks = np.ascontiguousarray(masks.transpose(0, 2, 1)).astype(np.uint8)
    if len(ids) != len(masks):
        raise ValueError(f'{path}: {len(ids)} instance ids for {len(masks)} masks')
    return ids, masks


def write_instance_masks(path: str, ids, masks: np.ndarray) -> None:
    """Write ``masks`` ``(N, H, W)`` of instances ``ids`` as A2D-Sentences does (transposed)."""
    h5py = _import_h5py()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with h5py.File(path, 'w') as f:
        f.create_dataset('reMask', data=np.asarray(masks, np.uint8).transpose(0, 2, 1))
        f.create_dataset('instance', data=np.asarray(ids, np.int64))


def _open_video(path: str):
    import decord
    return decord.VideoReader(path, num_threads=1)


def clip_indices(frame: int, total: int, clip_len: int, interval: int) -> np.ndarray:
    """``clip_len`` frame indices ``interval`` apart with ``frame`` (0-based) at position
    ``clip_len // 2``, clamped to ``[0, total - 1]``."""
    offsets = (np.arange(clip_len) - clip_len // 2) * interval
    return np.clip(frame + offsets, 0, total - 1).astype(np.int64)


@DATASETS.register_module()
class A2DSentencesDataset(BaseDataset):
    """Sentences and annotated frames of one split of an A2D-Sentences-layout set (module doc).

    Args:
        ann_file: the text annotations (``text_annotations/a2d_annotation.txt``).
        videoset_file: A2D's ``Release/videoset.csv`` (the split).
        subset: ``'train'`` or ``'test'``.
        data_prefix: ``dict(video=..., masks=...)``: the folders of the videos and of the mask
            folders (relative to ``data_root`` when given).
        filename_tmpl: the video file of an id.
        check_videos: open every video once at loading: skip (with a warning) those that cannot
            be opened, refuse masks of another size than the frames.
    """

    METAINFO = dict(classes=('referred', ))

    def __init__(self, ann_file: str, videoset_file: str, subset: str = 'train',
                 data_prefix: dict = dict(video='Release/clips320H',
                                          masks='a2d_annotation_with_instances'),
                 filename_tmpl: str = '{}.mp4', check_videos: bool = True, **kwargs):
        if subset not in ('train', 'test'):
            raise ValueError(f'subset must be "train" or "test", got {subset!r}')
        self.videoset_file, self.subset = videoset_file, subset
        self.filename_tmpl, self.check_videos = filename_tmpl, check_videos
        super().__init__(ann_file=ann_file, data_prefix=data_prefix, **kwargs)

    def _join_prefix(self):
        super()._join_prefix()
        if self.data_root and not osp.isabs(self.videoset_file):
            self.videoset_file = osp.join(self.data_root, self.videoset_file)

    def load_data_list(self) -> List[dict]:
        usage = read_videoset(self.videoset_file)
        wanted = 0 if self.subset == 'train' else 1
        by_video: Dict[str, List[dict]] = {}
        for row in read_sentences(self.ann_file):
            if usage.get(row['video_id']) == wanted:
                by_video.setdefault(row['video_id'], []).append(row)
        data_list, skipped = [], 0
        for vid in sorted(by_video):
            samples, missing = self._video_samples(vid, by_video[vid])
            data_list += samples
            skipped += missing
        if skipped:
            warnings.warn(f'{self.ann_file}: {skipped} (sentence, annotated frame) pairs skipped: '
                          'the sentence\'s instance is not in that frame\'s masks (A2D-Sentences '
                          'has such frames; the others of the video are used)')
        return data_list

    def _video_samples(self, vid: str, sentences: List[dict]) -> Tuple[List[dict], int]:
        filename = osp.join(self.data_prefix.get('video', ''), self.filename_tmpl.format(vid))
        mask_dir = osp.join(self.data_prefix.get('masks', ''), vid)
        names = sorted(n for n in os.listdir(mask_dir) if n.endswith('.h5')) if osp.isdir(
            mask_dir) else []
        if not names:
            raise ValueError(f'{self.ann_file}: video {vid!r} has sentences but {mask_dir} holds '
                             'no .h5 mask files; add its masks or remove its sentences')
        frames = {}
        for name in names:
            path = osp.join(mask_dir, name)
            ids, masks = read_instance_masks(path)
            frames[int(name[:-3])] = (path, set(ids.tolist()), masks.shape[1:])
        if self.check_videos:
            try:
                reader = _open_video(filename)
                total, size = len(reader), tuple(reader[0].shape[:2])
            except Exception as error:  # decord raises its own error types
                warnings.warn(f'{filename} (video {vid!r} of {self.ann_file}): cannot be opened '
                              f'({type(error).__name__}: {str(error)[:120]}); skipped. Re-encode '
                              'it, or remove it from the annotation file.')
                return [], 0
            for number, (path, _, shape) in frames.items():
                if tuple(shape) != size:
                    raise ValueError(f'{path}: masks of {shape[0]}x{shape[1]} (HxW) for the '
                                     f'{size[0]}x{size[1]} frames of {filename}; masks must have '
                                     'the video\'s size')
                if number > total:
                    raise ValueError(f'{path}: annotates frame {number} (1-based) of {filename}, '
                                     f'which has {total} frames')
        samples, missing = [], 0
        for row in sentences:
            present = [n for n in sorted(frames) if row['instance_id'] in frames[n][1]]
            if not present:
                raise ValueError(
                    f'{self.ann_file}: sentence {row["query"]!r} of video {vid!r} names instance '
                    f'{row["instance_id"]}, which none of the masks in {mask_dir} has (ids '
                    f'{sorted(set().union(*(f[1] for f in frames.values())))}); fix the '
                    'instance_id or the masks')
            missing += len(frames) - len(present)
            for number in present:
                samples.append(dict(filename=filename, video_id=vid, frame_index=number - 1,
                                    mask_file=frames[number][0], instance_id=row['instance_id'],
                                    sentence=row['query']))
        return samples, missing


@TRANSFORMS.register_module()
class DecodeReferringClip(BaseTransform):
    """Read a sample's clip (decord; :func:`clip_indices`) and its frame's masks.

    Adds ``imgs`` (list of H×W×3 RGB uint8), ``gt_masks`` ``(N, H, W)`` uint8 (every instance of
    the annotated frame), ``gt_referred`` ``(N,)`` bool, ``clip_index`` (the annotated frame's
    position, ``clip_len // 2``), ``ori_referred_mask`` ``(H, W)`` uint8, ``ori_shape``.
    Masks of another size than the frames: ``ValueError`` naming both files. A video that fails to
    decode gives None (another sample is taken in training), with a warning naming it.
    """

    def __init__(self, clip_len: int = 8, frame_interval: int = 1):
        for name, value in (('clip_len', clip_len), ('frame_interval', frame_interval)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        self.clip_len, self.frame_interval = clip_len, frame_interval

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['filename']
        try:
            reader = _open_video(filename)
            total = len(reader)
            if results['frame_index'] >= total:
                raise IndexError(f'annotated frame {results["frame_index"] + 1} of {total}')
            indices = clip_indices(results['frame_index'], total, self.clip_len,
                                   self.frame_interval)
            frames = reader.get_batch(indices).asnumpy()
        except Exception as error:
            warnings.warn(f'{filename}: cannot be decoded ({type(error).__name__}: '
                          f'{str(error)[:120]}); skipped. Re-encode or remove it.')
            return None
        ids, masks = read_instance_masks(results['mask_file'])
        if masks.shape[1:] != frames.shape[1:3]:
            raise ValueError(f'{results["mask_file"]}: masks of {masks.shape[1]}x{masks.shape[2]} '
                             f'(HxW) for the {frames.shape[1]}x{frames.shape[2]} frames of '
                             f'{filename}; masks must have the video\'s size')
        referred = ids == results['instance_id']
        if not referred.any():
            raise ValueError(f'{results["mask_file"]}: has no instance {results["instance_id"]} '
                             f'(ids {ids.tolist()}), which the sample refers to')
        results.update(imgs=list(frames), gt_masks=masks, gt_referred=referred,
                       clip_index=self.clip_len // 2, ori_referred_mask=masks[referred][0],
                       ori_shape=frames.shape[1:3], img_shape=frames.shape[1:3],
                       frame_inds=indices, clip_len=self.clip_len, num_clips=1, modality='RGB')
        return results


@TRANSFORMS.register_module()
class ResizeReferringClip(BaseTransform):
    """Resize the frames (bilinear) and ``gt_masks`` (nearest) to ``scale = (width, height)``;
    ``ori_referred_mask`` stays at the video's size."""

    def __init__(self, scale: Tuple[int, int]):
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f'scale must be (width, height), got {scale!r}')
        self.scale = tuple(int(s) for s in scale)

    def transform(self, results: dict) -> dict:
        w, h = self.scale
        results['imgs'] = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
                           for img in results['imgs']]
        results['gt_masks'] = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
                                        for m in results['gt_masks']])
        results['img_shape'] = (h, w)
        return results


@TRANSFORMS.register_module()
class PackReferringInputs(BaseTransform):
    """``imgs`` (after ``FormatShape('NCTHW')``) as ``inputs``; an ``ActionDataSample`` with
    ``gt_instances`` (``masks`` ``(N, h, w)`` bool at the input size, ``referred`` ``(N,)`` bool),
    the field ``gt_referred_mask`` (the referred mask at the video's size) and the metainfo
    ``video_id``, ``frame_index``, ``instance_id``, ``sentence``, ``clip_index``, ``ori_shape``,
    ``img_shape``."""

    META_KEYS = ('video_id', 'frame_index', 'instance_id', 'sentence', 'clip_index', 'ori_shape',
                 'img_shape', 'filename')

    def transform(self, results: dict) -> dict:
        sample = ActionDataSample(metainfo={k: results[k] for k in self.META_KEYS if k in results})
        sample.gt_instances = InstanceData(
            masks=torch.from_numpy(np.asarray(results['gt_masks']) > 0),
            referred=torch.from_numpy(np.asarray(results['gt_referred'], bool)))
        sample.set_data(dict(gt_referred_mask=torch.from_numpy(
            np.asarray(results['ori_referred_mask']) > 0)))
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(results['imgs'])),
                    data_samples=sample)
