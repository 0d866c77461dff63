"""The A2D-Sentences-layout data (dr2net_mm.rvos.data) and the demo generator
(dr2net_mm.rvos.demo_data): samples, clips, masks, and every bad input named with its file."""
import os
import shutil

import numpy as np
import pytest

pytest.importorskip('mmaction')
pytest.importorskip('h5py')
import dr2net_mm  # noqa: E402,F401
import dr2net_mm.rvos  # noqa: E402,F401
from mmengine.registry import init_default_scope  # noqa: E402

from dr2net_mm.rvos.data import (A2DSentencesDataset, DecodeReferringClip,  # noqa: E402
                                 clip_indices, read_instance_masks, read_sentences,
                                 write_instance_masks)
from dr2net_mm.rvos.demo_data import ANNOTATED, baseline_ious, make_demo_rvos  # noqa: E402

PIPELINE = [dict(type='DecodeReferringClip', clip_len=4, frame_interval=2),
            dict(type='ResizeReferringClip', scale=(48, 40)),
            dict(type='FormatShape', input_format='NCTHW'), dict(type='PackReferringInputs')]


@pytest.fixture(scope='module')
def demo_set(tmp_path_factory):
    return make_demo_rvos(str(tmp_path_factory.mktemp('rvos') / 'set'), num_train=3, num_val=1,
                          size=32)


@pytest.fixture
def copy_of(demo_set, tmp_path):
    root = str(tmp_path / 'set')
    shutil.copytree(demo_set, root)
    return root


def dataset(root, **kwargs):
    init_default_scope('mmaction')
    kwargs.setdefault('pipeline', PIPELINE)
    return A2DSentencesDataset(data_root=root, ann_file='text_annotations/a2d_annotation.txt',
                               videoset_file='Release/videoset.csv', **kwargs)


def test_clip_indices_centre_the_annotated_frame_and_clamp_to_the_video():
    assert clip_indices(10, 24, 4, 2).tolist() == [6, 8, 10, 12]
    assert clip_indices(1, 24, 4, 2).tolist() == [0, 0, 1, 3]
    assert clip_indices(23, 24, 3, 1).tolist() == [22, 23, 23]


def test_demo_set_is_in_a2d_layout_and_deterministic(demo_set, tmp_path):
    rows = read_sentences(os.path.join(demo_set, 'text_annotations/a2d_annotation.txt'))
    assert rows[0]['query'].startswith('the ') and ' moving ' in rows[0]['query']
    video = rows[0]['video_id']
    ids, masks = read_instance_masks(os.path.join(
        demo_set, 'a2d_annotation_with_instances', video, f'{ANNOTATED[0]:05d}.h5'))
    assert masks.shape[1:] == (32, 32) and masks.dtype == np.uint8
    assert ids.tolist() == list(range(1, len(ids) + 1)) and (masks.sum((1, 2)) > 0).all()
    again = make_demo_rvos(str(tmp_path / 'again'), num_train=3, num_val=1, size=32)
    assert read_sentences(os.path.join(again, 'text_annotations/a2d_annotation.txt')) == rows
    baselines = baseline_ious(demo_set)
    assert baselines['empty_mask'] == 0 and 0 < baselines['whole_frame'] < 0.2


def test_dataset_makes_one_sample_per_sentence_and_annotated_frame(demo_set):
    train, test = dataset(demo_set), dataset(demo_set, subset='test', test_mode=True)
    rows = read_sentences(os.path.join(demo_set, 'text_annotations/a2d_annotation.txt'))
    assert len(train) == 3 * sum(r['video_id'].startswith('train') for r in rows)
    assert len(test) == 3 * sum(r['video_id'].startswith('test') for r in rows)
    out = train[0]
    assert tuple(out['inputs'].shape) == (1, 3, 4, 40, 48)
    sample = out['data_samples']
    info = train.get_data_info(0)
    assert sample.metainfo['sentence'] == info['sentence'] and sample.metainfo['clip_index'] == 2
    assert sample.gt_instances.masks.shape[1:] == (40, 48)  # resized with the frames
    assert sample.gt_referred_mask.shape == (32, 32)  # the video's size, for the metric
    assert sample.gt_instances.referred.sum() == 1
    ids, masks = read_instance_masks(info['mask_file'])
    assert np.array_equal(sample.gt_referred_mask.numpy(), masks[ids == info['instance_id']][0] > 0)


def test_a_sentence_naming_an_absent_instance_stops_naming_the_files(copy_of):
    ann = os.path.join(copy_of, 'text_annotations/a2d_annotation.txt')
    with open(ann, 'a') as f:
        f.write('train0001,7,the purple star moving left\n')
    with pytest.raises(ValueError, match=r"a2d_annotation.txt: sentence 'the purple star moving "
                       r"left' of video 'train0001' names instance 7, which none of the masks in "
                       r".*a2d_annotation_with_instances/train0001 has"):
        dataset(copy_of)


def test_an_instance_missing_from_some_frames_skips_only_those_with_a_warning(copy_of):
    before = len(dataset(copy_of, pipeline=[]))
    path = os.path.join(copy_of, 'a2d_annotation_with_instances/train0000', '00006.h5')
    ids, masks = read_instance_masks(path)
    write_instance_masks(path, ids[1:], masks[1:])  # instance 1 leaves frame 6
    with pytest.warns(UserWarning, match='1 \\(sentence, annotated frame\\) pairs skipped'):
        assert len(dataset(copy_of, pipeline=[])) == before - 1


def test_masks_of_another_size_than_the_video_stop_naming_both_files(copy_of):
    path = os.path.join(copy_of, 'a2d_annotation_with_instances/train0002', '00012.h5')
    ids, masks = read_instance_masks(path)
    write_instance_masks(path, ids, masks[:, :16, :])
    with pytest.raises(ValueError, match=r'00012.h5: masks of 16x32 \(HxW\) for the 32x32 frames '
                       r'of .*train0002.mp4'):
        dataset(copy_of)
    unchecked = dataset(copy_of, check_videos=False)  # the clip decoder checks it too
    index = next(i for i in range(len(unchecked))
                 if unchecked.get_data_info(i)['mask_file'] == path)
    with pytest.raises(ValueError, match=r'00012.h5: masks of 16x32 .*train0002.mp4'):
        unchecked[index]


def test_a_corrupt_video_is_skipped_with_a_warning_naming_it(copy_of):
    video = os.path.join(copy_of, 'Release/clips320H/train0001.mp4')
    with open(video, 'wb') as f:
        f.write(b'not a video' * 10)
    with pytest.warns(UserWarning, match=r'train0001.mp4 \(video .train0001. of .*\): cannot be '
                      'opened'):
        data = dataset(copy_of)
    assert all(data.get_data_info(i)['video_id'] != 'train0001' for i in range(len(data)))
    decode = DecodeReferringClip(clip_len=2)
    with pytest.warns(UserWarning, match='train0001.mp4: cannot be decoded'):
        assert decode(dict(filename=video, frame_index=3, mask_file='unused',
                           instance_id=1)) is None


def test_bad_annotation_files_stop_naming_them(copy_of):
    ann = os.path.join(copy_of, 'text_annotations/a2d_annotation.txt')
    with open(ann, 'a') as f:
        f.write('train0001,one,the red square\n')
    with pytest.raises(ValueError, match=r'a2d_annotation.txt, line \d+: instance_id .one. is not'):
        dataset(copy_of)
    with open(os.path.join(copy_of, 'Release/videoset.csv'), 'w') as f:
        f.write('train0000,shapes,0\n')
    with pytest.raises(ValueError, match=r'videoset.csv, line 1: expected 9 columns'):
        dataset(copy_of)
