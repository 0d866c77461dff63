"""`tools/benchmark.py rvos`: the four RVOS configs as whole-segmentor variants on synthetic clips
(dr2net_mm.benchmark.rvos)."""
import os
import runpy

import pytest
import torch

pytest.importorskip('mmaction')
pytest.importorskip('transformers')
import dr2net_mm  # noqa: E402,F401

from dr2net_mm.benchmark.rvos import RVOS_CONFIGS, benchmark_config, rvos_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmark_tool():
    return runpy.run_path(os.path.join(ROOT, 'tools', 'benchmark.py'), run_name='benchmark')


def test_rvos_batch_is_a_dataloader_batch_of_clips_sentences_and_masks():
    batch = rvos_batch(2, frames=6, size=32)
    assert [tuple(x.shape) for x in batch['inputs']] == [(1, 3, 6, 32, 32)] * 2
    assert batch['inputs'][0].dtype == torch.uint8
    for sample in batch['data_samples']:
        assert sample.metainfo['clip_index'] == 3 and sample.metainfo['sentence']
        assert sample.gt_instances.masks.shape == (2, 32, 32)
        assert sample.gt_instances.referred.tolist() == [True, False]
    assert set(RVOS_CONFIGS) == {'conventional', 'checkpointing', 'dr2net', 'frozen'}
    assert all(os.path.isfile(os.path.join(ROOT, path)) for path in RVOS_CONFIGS.values())


def test_benchmark_keeps_the_configured_roberta_but_needs_no_tokenizer_files():
    cfg = benchmark_config(os.path.join(ROOT, RVOS_CONFIGS['dr2net']))
    text = cfg.model.text_encoder
    assert text.config.hidden_size == 768 and text.config.num_hidden_layers == 12
    assert text.frozen is True and os.path.isfile(text.vocab_file) and 'hf_tokenizer' not in text
    assert cfg.model.backbone.type == 'Dr2NetSwin3D'


def test_rvos_arguments_default_to_eight_frames_and_refuse_extra_variants(capsys):
    tool = benchmark_tool()
    args = tool['parse_args'](['rvos'])
    assert (args.frames, args.size) == ([8], 224)
    with pytest.raises(SystemExit):
        tool['parse_args'](['rvos', '--extra', 'dr2net_f64'])
    assert '--extra dr2net_f64: rvos measures its four configs only' in capsys.readouterr().err


@pytest.mark.slow
def test_rvos_benchmark_measures_the_four_configs(tmp_path):
    """One short clip at 64²: every variant measured; Dr²Net's step peak below the conventional
    one and the checkpointing one; the frozen backbone saves the least for backward."""
    report = benchmark_tool()['main'](['rvos', '--frames', '4', '--size', '64', '--iters', '1',
                                       '--warmup', '1', '--device', 'cpu',
                                       '--out', str(tmp_path / 'rvos')])
    (results, ) = report['settings'].values()
    peaks = {r['name']: r['peak_mb'] for r in results}
    saved = {r['name']: r['saved_mb'] for r in results}
    assert set(peaks) == set(RVOS_CONFIGS)
    assert peaks['dr2net'] < peaks['checkpointing'] < peaks['conventional']
    assert saved['frozen'] == min(saved.values())
    assert os.path.isfile(tmp_path / 'rvos.png')
