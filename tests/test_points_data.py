"""S3DIS files, dataset, transforms and conversion (dr2net_mm.points.s3dis / transforms) and the
generated demo rooms (dr2net_mm.demo.rooms)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.registry import DATASETS, TRANSFORMS

import dr2net_mm  # noqa: F401  (registers the point-cloud modules)
from dr2net_mm.points import s3dis
from dr2net_mm.demo.rooms import make_demo_rooms, make_room
from dr2net_mm.points.s3dis import CLASSES, S3DISDataset, convert_raw_release, load_room
from dr2net_mm.points.transforms import voxel_inverse

TRAIN_PIPELINE = [
    dict(type='PointGridSample', voxel_size=0.1),
    dict(type='PointNormalize'),
    dict(type='PointRandomRotateZ'),
    dict(type='PointRandomScale'),
    dict(type='PointJitter'),
    dict(type='PointColorDrop'),
    dict(type='PointRandomCrop', num_points=1000),
    dict(type='PackPointInputs'),
]


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return make_demo_rooms(str(tmp_path_factory.mktemp('rooms')), rooms_per_area=1, val_rooms=2,
                           density=30.0)


def write(path, array):
    np.save(path, np.asarray(array))
    return str(path)


def good_room(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random((n, 3)) * 3 + 10, rng.integers(0, 256, (n, 3)),
                           rng.integers(0, 13, (n, 1))], 1).astype(np.float32)


def rooms_of(dataset):
    return [dataset.get_data_info(i)['room'] for i in range(len(dataset))]


# 1. Files and dataset ---------------------------------------------------------------------------
def test_generated_rooms_are_deterministic_and_in_the_s3dis_layout(tmp_path):
    a = make_room(np.random.default_rng(3))
    b = make_room(np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape[1] == 7
    assert set(np.unique(a[:, 6]).astype(int)) <= set(range(13))
    assert {0, 1, 2, 5, 6, 7, 8, 10, 11, 12} <= set(np.unique(a[:, 6]).astype(int))
    make_demo_rooms(str(tmp_path), rooms_per_area=1, val_rooms=1, density=20.0)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith('.npy'))
    assert names == ['Area_1_office_1.npy', 'Area_2_office_1.npy', 'Area_3_office_1.npy',
                     'Area_4_office_1.npy', 'Area_5_office_1.npy', 'Area_6_office_1.npy']


def test_load_room_shifts_coordinates_and_types_columns(tmp_path):
    array = good_room()
    room = load_room(write(tmp_path / 'Area_1_x.npy', array))
    assert room['coord'].dtype == np.float32 and room['coord'].shape == (50, 3)
    assert np.allclose(room['coord'], array[:, :3] - array[:, :3].min(0), atol=1e-6)
    assert np.array_equal(room['color'], array[:, 3:6])
    assert room['label'].dtype == np.int64 and np.array_equal(room['label'], array[:, 6])


def test_dataset_lists_the_requested_areas_and_runs_the_pipeline(rooms):
    train = S3DISDataset(areas=(1, 2, 3, 4, 6), data_root=rooms, pipeline=TRAIN_PIPELINE)
    val = DATASETS.build(dict(type='S3DISDataset', areas=(5, ), data_root=rooms, test_mode=True))
    assert rooms_of(train) == [f'Area_{a}_office_1' for a in (1, 2, 3, 4, 6)]
    assert rooms_of(val) == ['Area_5_conferenceRoom_2', 'Area_5_office_1']
    assert val.metainfo['classes'] == CLASSES
    np.random.seed(0)
    sample = train[0]
    assert sample['inputs'].shape == (1000, 7) and sample['inputs'].dtype == torch.float32
    assert sample['data_samples'].gt_label.shape == (1000, )
    assert sample['data_samples'].room == 'Area_1_office_1'
    # colours are /255 (or dropped) and the height column is >= 0
    assert 0 <= sample['inputs'][:, 3:6].min() and sample['inputs'][:, 3:6].max() <= 1
    assert sample['inputs'][:, 6].min() >= 0
    np.random.seed(0)
    again = train[0]
    assert torch.equal(sample['inputs'], again['inputs'])
    assert torch.equal(sample['data_samples'].gt_label, again['data_samples'].gt_label)
    np.random.seed(1)
    assert not torch.equal(sample['inputs'], train[0]['inputs'])


# 2. Bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize('array,message', [
    (good_room()[:, :6], r'expected an \(N, 7\) array with columns "x y z r g b label".*got shape '
                         r'\(50, 6\).*dr2net_mm.points convert'),
    (np.zeros((0, 7), np.float32), r'the room has no points.*remove the file or re-run'),
])
def test_wrong_columns_and_empty_rooms_are_refused_when_the_dataset_is_built(tmp_path, array,
                                                                             message):
    path = write(tmp_path / 'Area_1_office_1.npy', array)
    with pytest.raises(ValueError, match=message) as error:
        S3DISDataset(areas=(1, ), data_root=str(tmp_path))
    assert path in str(error.value)


def test_nan_coordinates_are_refused_with_the_rows(tmp_path):
    array = good_room()
    array[7, 1] = np.nan
    array[9, 0] = np.inf
    path = write(tmp_path / 'Area_1_office_1.npy', array)
    dataset = S3DISDataset(areas=(1, ), data_root=str(tmp_path))  # header is fine
    with pytest.raises(ValueError, match=r'2 of 50 points have non-finite \(NaN/inf\) coordinates '
                                         r'\(x y z\), first at rows \[7, 9\]') as error:
        dataset[0]
    assert path in str(error.value)


@pytest.mark.parametrize('bad_label,shown', [(13, '13.0'), (-1, '-1.0'), (2.5, '2.5')])
def test_labels_outside_the_classes_are_refused(tmp_path, bad_label, shown):
    array = good_room()
    array[3, 6] = bad_label
    path = write(tmp_path / 'Area_2_office_1.npy', array)
    with pytest.raises(ValueError, match=rf'labels must be integers 0..12 .*found \[{shown}\] at 1 '
                                         'points'):
        load_room(path)


def test_colours_outside_0_255_are_refused(tmp_path):
    array = good_room()
    array[0, 4] = 300
    with pytest.raises(ValueError, match=r'colours must be in 0..255, found .*300'):
        load_room(write(tmp_path / 'Area_1_a.npy', array))


def test_missing_folder_area_or_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='S3DIS room folder not found.*tools/demo_points.py'):
        S3DISDataset(areas=(1, ), data_root=str(tmp_path / 'nowhere'))
    write(tmp_path / 'Area_1_office_1.npy', good_room())
    with pytest.raises(FileNotFoundError, match=r'no room files of area\(s\) \[5\] .*found areas '
                                                r'\[1\]'):
        S3DISDataset(areas=(5, ), data_root=str(tmp_path))
    with pytest.raises(ValueError, match='areas must be a non-empty sequence of S3DIS area numbers'):
        S3DISDataset(areas=(7, ), data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='room file not found'):
        load_room(str(tmp_path / 'Area_1_missing.npy'))


# 3. Transforms ----------------------------------------------------------------------------------
def build(cfg):
    return TRANSFORMS.build(cfg)


def room_results(seed=0, n=3000):
    room = load_room_array(make_room(np.random.default_rng(seed), density=20.0))
    return dict(room='r', area=1, **room)


def load_room_array(array):
    return dict(coord=array[:, :3].copy(), color=array[:, 3:6].copy(),
                label=array[:, 6].astype(np.int64))


def test_grid_sample_keeps_exactly_one_point_per_occupied_voxel():
    results = room_results()
    voxels = voxel_inverse(results['coord'], 0.2)
    np.random.seed(0)
    out = build(dict(type='PointGridSample', voxel_size=0.2))(dict(results))
    assert len(out['coord']) == voxels.max() + 1
    # every kept point is an input point (with its colour and label), and they are in distinct voxels
    rows = [int(np.flatnonzero((results['coord'] == p).all(1))[0]) for p in out['coord']]
    assert np.array_equal(out['label'], results['label'][rows])
    assert np.array_equal(out['color'], results['color'][rows])
    assert np.array_equal(np.sort(voxels[rows]), np.arange(voxels.max() + 1))


def test_vote_subsets_pick_one_representative_per_voxel_deterministically():
    results = room_results()
    vote = build(dict(type='PointVoteSubsets', voxel_size=0.2, num_votes=3, seed=5))
    out = vote(dict(results))
    inverse, votes = out['voxel_inverse'], out['vote_indices']
    assert votes.shape == (3, inverse.max() + 1) and len(out['coord']) == len(results['coord'])
    for row in votes:
        assert np.array_equal(inverse[row], np.arange(inverse.max() + 1))
    assert not np.array_equal(votes[0], votes[1])
    assert np.array_equal(vote(dict(results))['vote_indices'], votes)  # fixed seed, any call


def test_normalize_rotate_scale_jitter_colour_drop():
    results = build(dict(type='PointNormalize'))(room_results())
    assert results['color'].max() <= 1.0 and results['height'].min() == 0.0
    assert np.allclose(results['height'][:, 0], results['coord'][:, 2] - results['coord'][:, 2].min())
    np.random.seed(0)
    rotated = build(dict(type='PointRandomRotateZ'))(dict(results))['coord']
    assert np.array_equal(rotated[:, 2], results['coord'][:, 2])
    d0 = np.linalg.norm(results['coord'][:100, None] - results['coord'][None, :100], axis=-1)
    d1 = np.linalg.norm(rotated[:100, None] - rotated[None, :100], axis=-1)
    assert np.allclose(d0, d1, atol=1e-4) and not np.allclose(rotated, results['coord'])
    scaled = build(dict(type='PointRandomScale', scale=(0.9, 1.1)))(dict(results))['coord']
    ratio = scaled.max(0) / results['coord'].max(0)
    assert ((0.9 <= ratio) & (ratio <= 1.1)).all() and len(set(ratio.round(6))) == 3  # per axis
    jittered = build(dict(type='PointJitter', sigma=0.01, clip=0.02))(dict(results))['coord']
    assert 0 < np.abs(jittered - results['coord']).max() <= 0.02 + 1e-6
    dropped = build(dict(type='PointColorDrop', prob=1.0))(dict(results))
    assert not dropped['color'].any()
    kept = build(dict(type='PointColorDrop', prob=0.0))(dict(results))
    assert np.array_equal(kept['color'], results['color'])


def test_random_crop_keeps_the_nearest_points_of_a_room_point_or_pads():
    results = room_results()
    n = len(results['coord'])
    np.random.seed(0)
    centre = results['coord'][np.random.randint(n)]  # the crop's first random draw
    np.random.seed(0)
    out = build(dict(type='PointRandomCrop', num_points=500))(dict(results))
    assert len(out['coord']) == 500
    dist = np.linalg.norm(results['coord'] - centre, axis=1)
    assert np.isclose(np.linalg.norm(out['coord'] - centre, axis=1).max(), np.sort(dist)[499])
    small = dict(coord=results['coord'][:10], color=results['color'][:10], label=results['label'][:10])
    padded = build(dict(type='PointRandomCrop', num_points=25))(dict(small))
    assert len(padded['coord']) == 25 and np.array_equal(padded['coord'][:10], small['coord'])


def test_pack_builds_xyz_features_and_labels():
    results = build(dict(type='PointNormalize'))(room_results())
    packed = build(dict(type='PackPointInputs'))(dict(results))
    inputs = packed['inputs']
    assert inputs.shape == (len(results['coord']), 7)
    assert torch.equal(inputs[:, :3], torch.from_numpy(results['coord']))
    assert torch.equal(inputs[:, 3:6], torch.from_numpy(results['color']))
    assert torch.equal(inputs[:, 6], torch.from_numpy(results['height'][:, 0]))
    assert torch.equal(packed['data_samples'].gt_label, torch.from_numpy(results['label']))
    with pytest.raises(KeyError, match=r"no \['height'\].*put PointNormalize before it"):
        build(dict(type='PackPointInputs'))(dict(room_results(), color=results['color']))


# 4. Conversion of the raw release -----------------------------------------------------------------
def fake_release(root):
    """Two rooms of Area_1 with a stray \\x10 byte inside a number (as in the real release)."""
    room = root / 'Area_1' / 'office_1' / 'Annotations'
    room.mkdir(parents=True)
    (room / 'wall_1.txt').write_text('1.0 2.0 3.0 10 20 30\n1.5 2.5 3.5 11 21 31\n')
    (room / 'chair_2.txt').write_text('2.0 2.0 0.5 1 2 3\n')
    (room / 'stairs_1.txt').write_text('3.0 1.0 0.0 4 5 \x106\n')  # not a class -> clutter
    other = root / 'Area_1' / 'hallway_1' / 'Annotations'
    other.mkdir(parents=True)
    (other / 'floor_1.txt').write_text('0.5 0.5 0.0 100 100 100\n')
    (root / 'Area_1' / 'office_1' / 'office_1.txt').write_text('ignored whole-room file\n')
    return str(root)


def test_conversion_of_a_fake_raw_release(tmp_path, capsys):
    raw = fake_release(tmp_path / 'Stanford3dDataset_v1.2_Aligned_Version')
    out = tmp_path / 'rooms'
    s3dis.main(['convert', raw, str(out), '--areas', '1'])
    assert sorted(os.listdir(out)) == ['Area_1_hallway_1.npy', 'Area_1_office_1.npy']
    office = np.load(out / 'Area_1_office_1.npy')
    assert office.dtype == np.float32
    # objects in file-name order (chair_2, stairs_1, wall_1), xyz shifted to a minimum of 0
    expected = np.array([[1.0, 1.0, 0.5, 1, 2, 3, CLASSES.index('chair')],
                         [2.0, 0.0, 0.0, 4, 5, 6, CLASSES.index('clutter')],
                         [0.0, 1.0, 3.0, 10, 20, 30, CLASSES.index('wall')],
                         [0.5, 1.5, 3.5, 11, 21, 31, CLASSES.index('wall')]], np.float32)
    assert np.array_equal(office, expected)
    printed = capsys.readouterr().out
    assert 'stairs_1.txt: removed 1 character(s)' in printed and '2 rooms in' in printed
    check = subprocess.run([sys.executable, '-m', 'dr2net_mm.points', 'check', str(out),
                            '--areas', '1'], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    assert check.returncode == 0, check.stderr
    assert 'rooms per area: Area_1: 2' in check.stdout
    assert S3DISDataset(areas=(1, ), data_root=str(out)).get_data_info(1)['num_points'] == 4


def test_conversion_errors_name_the_file(tmp_path, capsys):
    raw = tmp_path / 'raw'
    room = raw / 'Area_2' / 'office_1' / 'Annotations'
    room.mkdir(parents=True)
    (room / 'table_1.txt').write_text('1 2 3 4 5 6\n1 2 3 4 5\n')
    with pytest.raises(ValueError, match=r'table_1.txt: expected 6 numbers per line .*lines \[2\]'):
        convert_raw_release(str(raw), str(tmp_path / 'out'), areas=(2, ))
    with pytest.raises(SystemExit):
        s3dis.main(['convert', str(raw), str(tmp_path / 'out'), '--areas', '3'])
    assert 'error: no rooms in' in capsys.readouterr().err
