"""ActivityNet-v1.3-format temporal detection data: the dataset, whole-video decoding with decord,
and packing.

Annotation file (ActivityNet v1.3's layout; only these fields are read)::

    {"database": {"<video id>": {
        "subset": "training" | "validation" | "testing",
        "duration": <seconds>,
        "annotations": [{"segment": [<start s>, <end s>], "label": "<name>"}]}}}

The video of id ``vid`` is ``data_prefix['video'] / filename_tmpl.format(vid)`` (ActivityNet's files
are usually ``v_<id>.mp4``: ``filename_tmpl='v_{}.mp4'``). Targets are in normalised time
(``segment / duration``, in ``[0, 1]``), so they do not depend on the frame rate or on how many frames
the clip is resampled to.

Bad input, each with a message naming the file and what to do:

* a label not in ``metainfo['classes']``: stop (``ValueError``);
* a segment partly outside ``[0, duration]``: clipped to it, with a warning; wholly outside or
  empty (end ≤ start): dropped, with a warning;
* a video file missing or that decord cannot open: skipped, with a warning (``check_videos=True``,
  at loading; a file that fails later while decoding is skipped in training, with a warning);
* a video with fewer frames than T: resampled with repeated frames (the targets stay right, being in
  normalised time), with a warning (:class:`DecodeWholeVideo`).
"""
import json
import os.path as osp
import warnings
from typing import List, Optional

import numpy as np
import torch
from mmaction.registry import DATASETS, TRANSFORMS
from mmaction.structures import ActionDataSample
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import InstanceData

__all__ = ['ActivityNetTADDataset', 'DecodeWholeVideo', 'PackTADInputs', 'resample_indices']


def resample_indices(total: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames spread evenly over ``total``: the centre of each of
    ``num_frames`` equal bins, ``floor((i + 0.5)·total / num_frames)``; repeats when
    ``total < num_frames``."""
    if total < 1:
        raise ValueError(f'a video needs at least one frame, got {total}')
    return np.floor((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)


def _open_video(path: str):
    import decord
    return decord.VideoReader(path, num_threads=1)


@DATASETS.register_module()
class ActivityNetTADDataset(BaseDataset):
    """Videos and action segments of one ``subset`` of an ActivityNet-v1.3-format file (module doc).

    Args:
        ann_file: the annotation JSON.
        subset: ``'training'``, ``'validation'`` or ``'testing'``.
        filename_tmpl: the video file name of an id, e.g. ``'v_{}.mp4'``.
        check_videos: open every video once at loading (decord) and skip, with a warning, those that
            are missing or cannot be opened (costs about a file open per video).
        metainfo: ``dict(classes=(...))``; None: the sorted labels of the whole file (all subsets,
            so that every subset has the same class indices).
        data_prefix: ``dict(video=folder)``.
    """

    METAINFO = dict(classes=None)

    def __init__(self, ann_file: str, subset: str = 'training', filename_tmpl: str = '{}.mp4',
                 check_videos: bool = True, metainfo: Optional[dict] = None,
                 data_prefix: dict = dict(video=''), **kwargs):
        self.subset, self.filename_tmpl, self.check_videos = subset, filename_tmpl, check_videos
        super().__init__(ann_file=ann_file, metainfo=metainfo, data_prefix=data_prefix, **kwargs)

    def _read_database(self) -> dict:
        with open(self.ann_file) as f:
            content = json.load(f)
        if not isinstance(content, dict) or not isinstance(content.get('database'), dict):
            raise ValueError(f'{self.ann_file}: not in ActivityNet-v1.3 format (no "database" '
                             'object mapping video ids to their subset, duration and annotations)')
        return content['database']

    def load_data_list(self) -> List[dict]:
        database = self._read_database()
        if self._metainfo.get('classes') is None:
            self._metainfo['classes'] = tuple(sorted({
                a['label'] for v in database.values() for a in v.get('annotations', [])}))
        classes = list(self._metainfo['classes'])
        data_list = []
        for vid, video in database.items():
            if video.get('subset') != self.subset:
                continue
            info = self._video_info(vid, video, classes)
            if info is not None:
                data_list.append(info)
        return data_list

    def _video_info(self, vid: str, video: dict, classes: List[str]) -> Optional[dict]:
        where = f'{self.ann_file}, video {vid!r}'
        duration = video.get('duration')
        if not isinstance(duration, (int, float)) or duration <= 0:
            raise ValueError(f'{where}: "duration" must be a positive number of seconds, got '
                             f'{duration!r}; fix the annotation file')
        filename = osp.join(self.data_prefix.get('video', ''), self.filename_tmpl.format(vid))
        if self.check_videos:
            try:
                frames = len(_open_video(filename))
            except Exception as error:  # decord raises its own error types
                warnings.warn(f'{filename} (video {vid!r} of {self.ann_file}): cannot be opened '
                              f'({type(error).__name__}: {str(error)[:120]}); skipped. Re-download '
                              're-encode it, or remove it from the annotation file.')
                return None
            if frames < 1:
                warnings.warn(f'{filename}: has no frames; skipped. Re-encode it.')
                return None
        segments, labels = [], []
        for ann in video.get('annotations', []):
            label = ann.get('label')
            if label not in classes:
                raise ValueError(f'{where}: label {label!r} is not one of the {len(classes)} '
                                 'classes of metainfo["classes"]; add it to the classes or fix '
                                 'the annotation')
            segment = self._checked_segment(where, ann.get('segment'), float(duration))
            if segment is not None:
                segments.append(segment)
                labels.append(classes.index(label))
        return dict(video_name=vid, filename=filename, duration=float(duration),
                    gt_segments=np.array(segments, np.float32).reshape(-1, 2) / float(duration),
                    gt_labels=np.array(labels, np.int64))

    @staticmethod
    def _checked_segment(where: str, segment, duration: float) -> Optional[List[float]]:
        """``[start, end]`` clipped to ``[0, duration]`` (with a warning), None (with a warning)
        when empty or wholly outside."""
        if not (isinstance(segment, (list, tuple)) and len(segment) == 2):
            raise ValueError(f'{where}: "segment" must be [start, end] in seconds, got {segment!r}')
        start, end = float(segment[0]), float(segment[1])
        if end <= start:
            warnings.warn(f'{where}: segment [{start}, {end}] is empty (end <= start); dropped. '
                          'Fix the annotation file.')
            return None
        if end <= 0 or start >= duration:
            warnings.warn(f'{where}: segment [{start}, {end}] lies wholly outside the video '
                          f'[0, {duration}]; dropped. Check its duration or the segment.')
            return None
        if start < 0 or end > duration:
            clipped = [max(start, 0.0), min(end, duration)]
            warnings.warn(f'{where}: segment [{start}, {end}] reaches outside the video '
                          f'[0, {duration}]; clipped to {clipped}. Check its duration or segment.')
            return clipped
        return [start, end]


@TRANSFORMS.register_module()
class DecodeWholeVideo(BaseTransform):
    """Read the whole video ``results['filename']`` with decord as ``num_frames`` frames spread
    evenly over it (:func:`resample_indices`): ``results['imgs']`` (a list of H×W×3 RGB uint8).

    A video of fewer frames than ``num_frames`` is resampled with repeated frames, with a warning
    naming it (lower ``num_frames``, or re-encode the video at a higher frame rate, to avoid it).
    A file that fails to decode gives None (MMEngine's dataset then takes another video in
    training), with a warning naming it.
    """

    def __init__(self, num_frames: int):
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f'num_frames must be a positive int, got {num_frames!r}')
        self.num_frames = num_frames

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['filename']
        try:
            reader = _open_video(filename)
            total = len(reader)
            indices = resample_indices(total, self.num_frames)
            frames = reader.get_batch(indices).asnumpy()
        except Exception as error:
            warnings.warn(f'{filename}: cannot be decoded ({type(error).__name__}: '
                          f'{str(error)[:120]}); skipped. Re-encode or remove it.')
            return None
        if total < self.num_frames:
            warnings.warn(f'{filename}: has {total} frames, fewer than num_frames='
                          f'{self.num_frames}; frames repeated to fill the clip (targets are in '
                          'normalised time and stay right). Lower num_frames or re-encode the '
                          'video at a higher frame rate to avoid it.')
        results['imgs'] = list(frames)
        results.update(total_frames=total, frame_inds=indices, clip_len=self.num_frames,
                       num_clips=1, img_shape=frames.shape[1:3], original_shape=frames.shape[1:3],
                       modality='RGB')  # (mmaction2's Flip reads it)
        return results


@TRANSFORMS.register_module()
class PackTADInputs(BaseTransform):
    """``results['imgs']`` (after ``FormatShape('NCTHW')``) as ``inputs`` and an
    ``ActionDataSample`` with ``gt_instances`` (``segments`` normalised, ``labels``) and the
    metainfo ``video_name``, ``duration``, ``filename``, ``total_frames``."""

    META_KEYS = ('video_name', 'duration', 'filename', 'total_frames')

    def transform(self, results: dict) -> dict:
        sample = ActionDataSample(metainfo={k: results[k] for k in self.META_KEYS if k in results})
        sample.gt_instances = InstanceData(segments=torch.as_tensor(results['gt_segments']),
                                           labels=torch.as_tensor(results['gt_labels']))
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(results['imgs'])),
                    data_samples=sample)
