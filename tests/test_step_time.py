"""tools/step_time.py: variants alternate in one process and their ratios are to the base."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import step_time  # noqa: E402


def test_step_time_reports_every_variant_against_checkpointing(tmp_path):
    report = step_time.main(['swin', '--size', '64', '--depths', '1-1-1-1', '--rounds', '1',
                             '--warmup', '0', '--variants', 'dr2net', '--out',
                             str(tmp_path / 'time')])
    assert report['base'] == 'checkpointing'
    assert set(report['variants']) == {'checkpointing', 'dr2net'}
    assert report['variants']['checkpointing']['ratio'] == 1.0
    assert (tmp_path / 'time.json').is_file()


def test_step_time_names_the_dino_variants_when_one_is_unknown():
    pytest.importorskip('mmdet')
    with pytest.raises(SystemExit, match='no variant dr2net_al; choose from .*dr2net_all'):
        step_time.main(['dino', '--size', '256x320', '--variants', 'dr2net_al'])


def test_step_time_refuses_a_size_that_is_not_one_number_for_a_backbone(capsys):
    with pytest.raises(SystemExit):
        step_time.parse_args(['swin', '--size', '512x512'])
    error = capsys.readouterr().err
    assert "--size for swin is one number of pixels, e.g. 512; got '512x512'" in error


def test_step_time_refuses_a_dino_size_that_is_not_height_by_width(capsys):
    with pytest.raises(SystemExit):
        step_time.parse_args(['dino', '--size', '800by1333'])
    assert "--size: " in capsys.readouterr().err
    assert step_time.parse_args(['dino', '--size', '800x1333']).hw == (800, 1333)
