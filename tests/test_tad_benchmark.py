"""`tools/benchmark.py tad`: the four TAD configs as whole-detector variants on synthetic long clips
(dr2net_mm.benchmark.tad)."""
import os
import runpy

import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401

from dr2net_mm.benchmark.tad import TAD_CONFIGS, tad_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmark_tool():
    return runpy.run_path(os.path.join(ROOT, 'tools', 'benchmark.py'), run_name='benchmark')


def test_tad_batch_is_a_dataloader_batch_of_long_clips_with_segments():
    batch = tad_batch(2, frames=48, size=32, num_classes=5)
    assert [tuple(x.shape) for x in batch['inputs']] == [(1, 3, 48, 32, 32)] * 2
    assert batch['inputs'][0].dtype == torch.uint8
    for sample in batch['data_samples']:
        assert sample.gt_instances.segments.shape == (2, 2)
        assert sample.gt_instances.labels.max() < 5
    assert set(TAD_CONFIGS) == {'conventional', 'checkpointing', 'dr2net', 'frozen'}
    assert all(os.path.isfile(os.path.join(ROOT, path)) for path in TAD_CONFIGS.values())


def test_tad_arguments_default_to_a_clip_sweep_setting_and_refuse_extra_variants(capsys):
    tool = benchmark_tool()
    args = tool['parse_args'](['tad'])
    assert (args.frames, args.size) == ([64], 112)
    with pytest.raises(SystemExit):
        tool['parse_args'](['tad', '--extra', 'dr2net_f64'])
    assert '--extra dr2net_f64: tad measures its four configs only' in capsys.readouterr().err


@pytest.mark.slow
def test_tad_benchmark_measures_the_four_configs_per_clip_length(tmp_path):
    """Two short clip lengths at 32²: every variant measured, Dr²Net's step peak below the
    conventional and the checkpointing ones; the frozen backbone saves the least for backward (its
    step peak is its no-grad forward's transients, which at this size can exceed Dr²Net's)."""
    report = benchmark_tool()['main'](['tad', '--frames', '16', '32', '--size', '32', '--iters', '1',
                                       '--warmup', '1', '--device', 'cpu',
                                       '--out', str(tmp_path / 'tad')])
    assert len(report['settings']) == 2
    for results in report['settings'].values():
        peaks = {r['name']: r['peak_mb'] for r in results}
        assert set(peaks) == set(TAD_CONFIGS)
        saved = {r['name']: r['saved_mb'] for r in results}
        assert peaks['dr2net'] < peaks['checkpointing'] < peaks['conventional']
        assert peaks['frozen'] < peaks['conventional']
        assert saved['frozen'] == min(saved.values())
    assert os.path.isfile(tmp_path / 'tad.png')
