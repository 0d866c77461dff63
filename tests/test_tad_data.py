"""Spec of the TAD data (dr2net_mm.tad.data, dr2net_mm.tad.demo_data): ActivityNet-v1.3-format
annotations, whole videos read by decord and resampled to T frames, normalised targets, and every
kind of bad input named with its file and what to do."""
import json
import re

import numpy as np
import pytest

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
import dr2net_mm.tad  # noqa: E402,F401
from mmengine.registry import init_default_scope  # noqa: E402

from dr2net_mm.tad.data import ActivityNetTADDataset, resample_indices  # noqa: E402
from dr2net_mm.tad.demo_data import (TAD_DEMO_ACTIONS, draw_video, make_demo_tad,  # noqa: E402
                                     random_segment_mAP)

T = 32


def pipeline(frames=T):
    return [dict(type='DecodeWholeVideo', num_frames=frames),
            dict(type='FormatShape', input_format='NCTHW'), dict(type='PackTADInputs')]


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('tad')
    ann_file = make_demo_tad(str(root), num_train=3, num_val=2, frames=64, size=32)
    return root, ann_file


def dataset(ann_file, root, subset='training', **kwargs):
    init_default_scope('mmaction')
    return ActivityNetTADDataset(ann_file=str(ann_file), subset=subset,
                                 data_prefix=dict(video=str(root / 'videos')),
                                 pipeline=kwargs.pop('pipeline', pipeline()), **kwargs)


def write_annotations(path, database):
    path.write_text(json.dumps(dict(database=database)))
    return path


def one_video(root, segments, labels=None, duration=4.0, vid='train_0000'):
    """An annotation file for the demo's first training video with the given segments."""
    labels = labels or ['blinking'] * len(segments)
    return write_annotations(root / f'ann_{abs(hash(str(segments)))}.json', {vid: dict(
        subset='training', duration=duration,
        annotations=[dict(segment=s, label=l) for s, l in zip(segments, labels)])})


# 1. The demo generator -----------------------------------------------------------------------------
def test_demo_videos_are_deterministic_and_actions_do_not_overlap():
    video, spans = draw_video(np.random.default_rng(5), 128, 32)
    again, spans_again = draw_video(np.random.default_rng(5), 128, 32)
    assert video.shape == (128, 32, 32, 3) and np.array_equal(video, again) and spans == spans_again
    assert 1 <= len(spans) <= 3
    for (s0, e0, _), (s1, e1, _) in zip(spans, spans[1:]):
        assert e0 < s1
    for start, end, label in spans:
        assert 0.1 * 128 - 1 <= end - start <= 0.3 * 128 + 1 and label in range(3)


def test_the_background_moves_and_only_actions_add_a_shape():
    """Outside actions the frames are the scrolling background alone (consecutive frames differ by
    more than the noise); inside, a shape covers part of the frame (blinking: half of the frames)."""
    from dr2net_mm.tad.demo_data import _background
    video, spans = draw_video(np.random.default_rng(2), 128, 32)
    background = _background(np.random.default_rng(2), 128, 32)  # the same first draws
    inside = np.zeros(128, bool)
    for start, end, _ in spans:
        inside[start:end] = True
    changed = (video != background).any(-1).sum((1, 2))  # pixels changed per frame
    assert (changed[~inside] == 0).all()
    for start, end, label in spans:
        shown = changed[start:end] >= 8  # the smallest shape: a disk of radius 2
        assert shown.mean() >= (0.5 if TAD_DEMO_ACTIONS[label] == 'blinking' else 1.0)
    quiet = [t for t in range(127) if not inside[t] and not inside[t + 1]]
    diffs = [np.abs(video[t + 1].astype(int) - video[t].astype(int)).mean() for t in quiet]
    assert min(diffs) > 3  # beyond the noise (σ 5 per frame, mean |difference| about 5.6)


def test_demo_set_is_in_activitynet_format_and_decord_reads_its_videos(demo):
    import decord
    root, ann_file = demo
    database = json.load(open(ann_file))['database']
    assert sorted(database) == ['train_0000', 'train_0001', 'train_0002', 'valid_0000',
                                'valid_0001']
    for vid, video in database.items():
        assert video['subset'] == ('training' if vid.startswith('train') else 'validation')
        assert video['duration'] == 64 / 16
        for ann in video['annotations']:
            assert ann['label'] in TAD_DEMO_ACTIONS
            assert 0 <= ann['segment'][0] < ann['segment'][1] <= video['duration']
        assert len(decord.VideoReader(str(root / 'videos' / f'{vid}.mp4'))) == 64


def test_random_segment_baseline_is_low_and_deterministic(demo):
    _, ann_file = demo
    result = random_segment_mAP(ann_file)
    assert result == random_segment_mAP(ann_file)
    assert 0 <= result['mAP'] <= result['mAP@0.50'] < 0.3


# 2. The dataset ------------------------------------------------------------------------------------
def test_dataset_gives_whole_videos_of_t_frames_and_normalised_targets(demo):
    root, ann_file = demo
    data = dataset(ann_file, root)
    assert len(data) == 3 and data.metainfo['classes'] == tuple(sorted(TAD_DEMO_ACTIONS))
    database = json.load(open(ann_file))['database']
    item = data[1]
    sample = item['data_samples']
    assert item['inputs'].shape == (1, 3, T, 32, 32)
    assert sample.metainfo['video_name'] == 'train_0001' and sample.metainfo['duration'] == 4.0
    anns = database['train_0001']['annotations']
    expected = np.array([a['segment'] for a in anns]) / 4.0
    assert np.allclose(sample.gt_instances.segments.numpy(), expected)
    classes = list(data.metainfo['classes'])
    assert sample.gt_instances.labels.tolist() == [classes.index(a['label']) for a in anns]
    assert len(dataset(ann_file, root, subset='validation')) == 2


def test_resampling_spreads_frames_evenly_and_repeats_when_short():
    assert resample_indices(64, 4).tolist() == [8, 24, 40, 56]
    assert resample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match='at least one frame, got 0'):
        resample_indices(0, 4)


def test_a_video_shorter_than_t_is_resampled_with_repeats_and_a_warning_naming_it(demo):
    root, ann_file = demo
    data = dataset(ann_file, root, pipeline=pipeline(frames=100))
    with pytest.warns(UserWarning, match=r'train_0000\.mp4: has 64 frames, fewer than '
                                         r'num_frames=100; frames repeated'):
        item = data[0]
    frames = item['inputs'][0].permute(1, 0, 2, 3)  # (T, C, H, W)
    assert frames.shape[0] == 100
    assert sum(bool((frames[i] == frames[i + 1]).all()) for i in range(99)) >= 36


def test_an_unknown_label_stops_naming_the_label_and_the_file(demo, tmp_path):
    root, _ = demo
    ann = one_video(tmp_path, [[0.5, 1.0]], labels=['juggling'])
    with pytest.raises(ValueError, match=re.escape(f"{ann}, video 'train_0000': label "
                                                   "'juggling' is not one of the 3 classes")):
        dataset(ann, root, metainfo=dict(classes=TAD_DEMO_ACTIONS))


def test_segments_outside_the_video_are_clipped_or_dropped_with_warnings(demo, tmp_path):
    root, _ = demo
    ann = one_video(tmp_path, [[-0.5, 1.0], [3.0, 5.0], [4.5, 6.0], [2.0, 2.0], [1.0, 2.0]])
    with pytest.warns(UserWarning) as record:
        data = dataset(ann, root, metainfo=dict(classes=TAD_DEMO_ACTIONS))
    messages = [str(w.message) for w in record]
    assert any('segment [-0.5, 1.0] reaches outside the video [0, 4.0]; clipped to [0.0, 1.0]' in m
               for m in messages)
    assert any('segment [3.0, 5.0] reaches outside the video [0, 4.0]; clipped to [3.0, 4.0]' in m
               for m in messages)
    assert any('segment [4.5, 6.0] lies wholly outside the video [0, 4.0]; dropped' in m
               for m in messages)
    assert any('segment [2.0, 2.0] is empty (end <= start); dropped' in m for m in messages)
    assert all(str(ann) in m for m in messages)
    segments = data.get_data_info(0)['gt_segments'] * 4.0
    assert np.allclose(segments, [[0.0, 1.0], [3.0, 4.0], [1.0, 2.0]])


def test_corrupt_or_missing_videos_are_skipped_with_a_warning_naming_them(demo, tmp_path):
    root, _ = demo
    videos = tmp_path / 'videos'
    videos.mkdir()
    (videos / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(200))
    (videos / 'good.mp4').write_bytes((root / 'videos' / 'train_0000.mp4').read_bytes())
    database = {vid: dict(subset='training', duration=4.0, annotations=[])
                for vid in ('broken', 'good', 'missing')}
    ann = write_annotations(tmp_path / 'ann.json', database)
    init_default_scope('mmaction')
    with pytest.warns(UserWarning) as record:
        data = ActivityNetTADDataset(ann_file=str(ann), data_prefix=dict(video=str(videos)),
                                     pipeline=pipeline(), metainfo=dict(classes=TAD_DEMO_ACTIONS))
    messages = ' | '.join(str(w.message) for w in record)
    assert f"{videos / 'broken.mp4'} (video 'broken' of {ann}): cannot be opened" in messages
    assert f"{videos / 'missing.mp4'} (video 'missing' of {ann}): cannot be opened" in messages
    assert 'skipped' in messages
    assert [data.get_data_info(i)['video_name'] for i in range(len(data))] == ['good']
    assert data[0]['data_samples'].gt_instances.segments.shape == (0, 2)  # no actions: fine


def test_a_video_that_fails_while_decoding_is_skipped_in_training(tmp_path):
    from dr2net_mm.tad.data import DecodeWholeVideo
    (tmp_path / 'bad.mp4').write_bytes(b'not a video')
    with pytest.warns(UserWarning, match=r'bad\.mp4: cannot be decoded .*; skipped'):
        assert DecodeWholeVideo(8)(dict(filename=str(tmp_path / 'bad.mp4'))) is None


@pytest.mark.parametrize('content, message', [
    ({'videos': {}}, 'not in ActivityNet-v1.3 format'),
    ({'database': {'a': dict(subset='training', duration=0, annotations=[])}},
     "video 'a': \"duration\" must be a positive number of seconds, got 0"),
    ({'database': {'a': dict(subset='training', duration=3.0,
                             annotations=[dict(segment=[1.0], label='blinking')])}},
     r'"segment" must be \[start, end\] in seconds, got \[1.0\]'),
])
def test_malformed_annotation_files_are_refused_naming_the_file(tmp_path, content, message):
    ann = tmp_path / 'bad.json'
    ann.write_text(json.dumps(content))
    init_default_scope('mmaction')
    with pytest.raises(ValueError, match=message) as error:
        ActivityNetTADDataset(ann_file=str(ann), check_videos=False, pipeline=[],
                              metainfo=dict(classes=TAD_DEMO_ACTIONS))
    assert str(ann) in str(error.value)
