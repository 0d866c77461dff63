"""tools/benchmark.py and tools/grad_error_map.py, end to end at tiny sizes (figures must be sane,
outputs complete); the real figures come from running them at full size (README, Results)."""
import json
import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    return runpy.run_path(os.path.join(ROOT, 'tools', f'{name}.py'), run_name=name)


def test_swin_benchmark_writes_json_table_and_chart(tmp_path):
    out = str(tmp_path / 'swin')
    report = tool('benchmark')['main']([
        'swin', '--size', '96', '--depths', '1-1-2-1', '1-1-6-1', '--embed-dims', '32', '--iters',
        '1', '--out', out
    ])
    for ext in ('.json', '.md', '.png'):
        assert os.path.getsize(out + ext) > 0
    with open(out + '.json') as f:
        saved = json.load(f)
    assert saved['settings'] == json.loads(json.dumps(report['settings']))
    shallow, deep = (dict((r['name'], r) for r in results)
                     for results in saved['settings'].values())
    for results in (shallow, deep):
        assert set(results) == {'conventional', 'checkpointing', 'dr2net', 'dr2net_fp32'}
        for r in results.values():
            assert r['saved_mb'] > 0 and r['peak_mb'] > 0 and r['step_ms'] > 0
        assert results['dr2net']['saved_mb'] < results['conventional']['saved_mb']
        assert results['dr2net_fp32']['saved_mb'] < results['dr2net']['saved_mb']
        ratios = results['dr2net']['ratios']
        assert ratios['saved_vs_conventional'] == pytest.approx(
            results['dr2net']['saved_mb'] / results['conventional']['saved_mb'])
        assert {'peak_vs_checkpointing', 'time_vs_conventional'} <= set(ratios)
    # reversible memory is flat in depth, conventional memory is not
    assert deep['dr2net']['saved_mb'] == pytest.approx(shallow['dr2net']['saved_mb'], rel=0.1)
    assert deep['conventional']['saved_mb'] > 1.3 * shallow['conventional']['saved_mb']
    with open(out + '.md') as f:
        assert '| dr2net |' in f.read()


def test_vit_benchmark_runs(tmp_path):
    report = tool('benchmark')['main'](['vit', '--arch', 'vit_tiny_patch16_224', '--size', '64',
                                        '--iters', '1'])
    results = {r['name']: r for r in next(iter(report['settings'].values()))}
    assert results['dr2net']['saved_mb'] < results['checkpointing']['saved_mb'] \
        < results['conventional']['saved_mb']


def _video_report_checks(out, report, settings):
    for ext in ('.json', '.md', '.png'):
        assert os.path.getsize(out + ext) > 0
    with open(out + '.json') as f:
        saved = json.load(f)
    assert saved['settings'] == json.loads(json.dumps(report['settings']))
    assert list(saved['settings']) == settings
    for label, results in saved['settings'].items():
        results = {r['name']: r for r in results}
        assert set(results) == {'conventional', 'checkpointing', 'dr2net'}, label
        for r in results.values():
            assert r['saved_mb'] > 0 and r['peak_mb'] > 0 and r['step_ms'] > 0, label
        assert results['dr2net']['saved_mb'] < results['conventional']['saved_mb'], label
        assert results['dr2net']['params_m'] == results['conventional']['params_m'], label
    with open(out + '.md') as f:
        assert '| dr2net |' in f.read()
    return saved


def test_swin3d_benchmark_measures_video_swin_per_frame_count(tmp_path):
    """tools/benchmark.py swin3d: mmaction2 SwinTransformer3D, with_cp, Dr2NetSwin3D on clips,
    one setting per --frames (here a custom arch: --depths / --embed-dims instead of --arch)."""
    benchmark = tool('benchmark')
    out = str(tmp_path / 'swin3d')
    argv = ['swin3d', '--frames', '4', '--size', '32', '--window', '2x4x4', '--depths', '1-1-1-1',
            '--embed-dims', '32', '--iters', '1', '--out', out]
    report = benchmark['main'](argv)
    saved = _video_report_checks(out, report, [
        'Video Swin depths 1-1-1-1 embed 32 4×32×32, window 2×4×4, batch 1'])
    assert saved['args']['arch'] is None and saved['args']['window'] == [2, 4, 4]
    # several frame counts: one setting each (listed, not measured: the loop is swin's)
    sweep = benchmark['settings'](benchmark['parse_args'](['swin3d', '--frames', '8', '16',
                                                           '--batch', '2']))
    assert list(sweep) == [f'Video Swin tiny {t}×224×224, window 8×7×7, batch 2' for t in (8, 16)]
    assert all([v.name for v in variants] == ['conventional', 'checkpointing', 'dr2net']
               for variants in sweep.values())


@pytest.mark.slow  # 31 s; the rss test below covers --rss
def test_videomae_benchmark_with_resident_peaks(tmp_path):
    """tools/benchmark.py videomae: mmaction2's VideoMAE VisionTransformer, PlainVideoViT with_cp,
    Dr2NetVideoViT; with --rss each variant's resident peak from a fresh process."""
    from dr2net_mm.benchmark import rss
    out = str(tmp_path / 'videomae')
    argv = ['videomae', '--frames', '4', '--size', '32', '--embed-dims', '48', '--depth', '2',
            '--heads', '3', '--iters', '1', '--out', out]
    report = tool('benchmark')['main'](argv + (['--rss'] if rss.available() else []))
    _video_report_checks(out, report, [
        'VideoMAE ViT 4×32×32, embed 48, depth 2, heads 3, tubelets 2×16×16, batch 1'])
    if rss.available():
        assert all(r['rss_peak_mb'] > 0 for r in next(iter(report['settings'].values())))


def test_video_benchmark_defaults_and_bad_arguments(capsys):
    parse_args = tool('benchmark')['parse_args']
    args = parse_args(['swin3d'])
    assert (args.frames, args.size, args.arch, args.window, args.batch) == ([32], 224, 'tiny',
                                                                            (8, 7, 7), 1)
    args = parse_args(['videomae'])
    assert (args.frames, args.size, args.embed_dims, args.depth, args.heads) == ([16], 224, 384,
                                                                                 12, 6)
    args = parse_args(['swin3d', '--arch', 'small', '--frames', '16', '32', '--extra',
                       'dr2net_f64_seg4'])
    assert (args.arch, args.frames, args.extra) == ('small', [16, 32], ['dr2net_f64_seg4'])
    # the image models keep their defaults
    args = parse_args(['swin'])
    assert (args.size, args.depths, args.embed_dims, args.frames) == (512, [[2, 2, 6, 2]], 96, None)
    assert parse_args(['vit']).arch == 'vit_small_patch16_224'
    for argv, message in [
        (['swin3d', '--window', '8x7'], 'window must be 3 positive ints'),
        (['swin3d', '--arch', 'tiny', '--depths', '2-2-6-2'], 'either --arch or a custom arch'),
        (['swin3d', '--embed-dims', '16'], 'Swin needs at least 32'),
        (['swin3d', '--extra', 'dr2net_f32'], '--extra dr2net_f32: swin3d has the extra'),
        (['videomae', '--frames', '5'], 'frames must be even'),
        (['videomae', '--embed-dims', '50'], 'need embed dims divisible by heads'),
        (['videomae', '--depths', '2-2-6-2'], 'videomae takes one --depth'),
        (['swin', '--frames', '8'], 'only swin3d and videomae take clips'),
    ]:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err, argv


def test_segmentor_benchmark_reports_both_backbones_against_both_peers(tmp_path):
    """tools/benchmark.py seg: whole UPerNet training steps built from the repository's ADE20K
    configs (150-class heads), Swin-T and ViT-S, conventional / checkpointing / Dr²Net."""
    report = tool('benchmark')['main'](['seg', '--size', '64', '--batch', '2', '--iters', '1',
                                        '--out', str(tmp_path / 'seg')])
    assert len(report['settings']) == 2
    for label, results in report['settings'].items():
        results = {r['name']: r for r in results}
        assert set(results) == {'conventional', 'checkpointing', 'dr2net'}, label
        for r in results.values():
            assert r['saved_mb'] > 0 and r['peak_mb'] > 0 and r['step_ms'] > 0
        assert results['dr2net']['saved_mb'] < results['conventional']['saved_mb'], label
        # the same model (timm's ViT has a patch-embedding bias that mmseg's lacks: 384 weights)
        assert results['dr2net']['params_m'] == pytest.approx(results['conventional']['params_m'],
                                                              abs=384e-6)
        assert {'peak_vs_conventional', 'peak_vs_checkpointing'} <= set(results['dr2net']['ratios'])
    assert os.path.getsize(str(tmp_path / 'seg.png')) > 0


@pytest.mark.slow  # 71 s on 2 cores (four Pix4Point variants)
def test_points_benchmark_reports_dr2net_against_both_peers():
    """tools/benchmark.py points: Pix4Point training steps from the S3DIS configs (ViT-S, 1536
    tokens) with PlainViT, PlainViT with_cp and Dr2NetViT."""
    report = tool('benchmark')['main'](['points', '--points', '2048', '--batch', '1', '--iters',
                                        '1', '--extra', 'dr2net_f64_seg4'])
    results = {r['name']: r for r in next(iter(report['settings'].values()))}
    assert set(results) == {'conventional', 'checkpointing', 'dr2net', 'dr2net_f64_seg4'}
    # exact streams in one segment keep one stream pair and a β buffer (3.3 bits per element and
    # branch at β = 0.1) instead of a float64 stream pair per 4 branches
    assert results['dr2net']['saved_mb'] < results['dr2net_f64_seg4']['saved_mb']
    assert results['dr2net']['saved_mb'] < 0.6 * results['conventional']['saved_mb']
    assert results['checkpointing']['saved_mb'] < results['conventional']['saved_mb']


def test_benchmark_rejects_bad_arguments(capsys):
    main = tool('benchmark')['main']
    with pytest.raises(SystemExit):
        main(['swin', '--depths', '2-2-6'])
    assert 'depths must be 4 positive ints' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['swin', '--size', '8'])
    assert 'need size >= 32' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['seg', '--batch', '1'])
    assert 'seg needs batch >= 2' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['points', '--points', '100'])
    assert 'need at least 2048 points' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['points', '--extra', 'dr2net_fp32'])
    assert '--extra dr2net_fp32: points has one extra variant' in capsys.readouterr().err


def test_grad_error_map_writes_maps_and_reports_the_floor(tmp_path):
    out = str(tmp_path / 'map')
    report = tool('grad_error_map')['main']([
        '--size', '56', '--embed-dims', '16', '--depths', '1', '1', '2', '1', '--num-heads', '1',
        '2', '4', '8', '--alphas', '0.3', '1.0', '--betas', '0.1', '0.7', '--out', out
    ])
    assert os.path.getsize(out + '.png') > 0
    with open(out + '.json') as f:
        saved = json.load(f)
    grid = saved['grid']
    assert set(grid) == {f'rev_{mode}_vs_{ref}' for mode in ('fp32', 'fp64', 'exact')
                         for ref in ('autograd', 'truth')} | {'floor'}
    for values in grid.values():
        assert len(values) == 2 and all(len(row) == 2 for row in values)
        assert all(0 <= v < float('inf') for row in values for v in row)
    floor = report['grid']['floor'][1][0]  # (0.3, 0.7)
    assert 0 < floor < 1e-4
    assert report['grid']['rev_fp64_vs_truth'][1][0] <= 2 * floor
    # at (1, 0.1) float32 streams are much worse than float64 streams; exact streams are at the floor
    assert report['grid']['rev_fp32_vs_truth'][0][1] > 10 * report['grid']['rev_fp64_vs_truth'][0][1]
    for bi in range(2):
        for ai in range(2):
            assert report['grid']['rev_exact_vs_truth'][bi][ai] <= 2 * report['grid']['floor'][bi][ai]


def test_resident_peak_counts_what_a_step_allocates_written_or_not():
    """The second peak measurement (dr2net_mm.benchmark.rss), taken as tools/benchmark.py takes it:
    in a fresh process with the child environment, the resident high-water mark above the resident
    size before the step; a block allocated and never written counts too (as on a GPU)."""
    import subprocess
    import sys

    from dr2net_mm.benchmark import rss
    if not rss.available():
        pytest.skip('no /proc/self/clear_refs (not Linux)')
    script = ('import torch; from dr2net_mm.benchmark import rss; '
              'print(rss.resident_peak_bytes(lambda: torch.ones(2**24).sum()), '
              'rss.resident_peak_bytes(lambda: torch.empty(2**24).shape), '
              'rss.resident_peak_bytes(lambda: None))')
    out = subprocess.run([sys.executable, '-c', script], env=rss.child_env(), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    touched, untouched, nothing = int(out[-3]), int(out[-2]), int(out[-1])
    mib = 2**20
    assert 60 * mib <= touched < 68 * mib  # 64 MiB, give or take pages released meanwhile
    assert 60 * mib <= untouched < 68 * mib
    assert nothing < 4 * mib
    assert rss.child_env()['MALLOC_MMAP_THRESHOLD_'] == '65536'


def test_benchmark_rss_runs_each_chosen_variant_in_a_fresh_process(tmp_path, capsys):
    out = str(tmp_path / 'vit')
    main = tool('benchmark')['main']
    report = main(['vit', '--arch', 'vit_tiny_patch16_224', '--size', '64', '--iters', '1',
                   '--rss', '--variants', 'dr2net', 'checkpointing', '--out', out])
    results = next(iter(report['settings'].values()))
    assert [r['name'] for r in results] == ['checkpointing', 'dr2net']  # the table's order
    assert all(r['rss_peak_mb'] > 0 for r in results)
    with pytest.raises(SystemExit, match='--variants cp: not a variant here; choose from '
                       'conventional checkpointing dr2net'):
        main(['vit', '--arch', 'vit_tiny_patch16_224', '--size', '64', '--variants', 'cp'])
    with open(out + '.md') as f:
        assert 'peak, resident (MB)' in f.read()


def test_benchmark_dino_takes_height_by_width():
    args = tool('benchmark')['parse_args'](['dino', '--size', '800x1333', '--batch', '1'])
    assert args.size == (800, 1333)
    assert tool('benchmark')['parse_args'](['dino', '--extra', 'dr2net_f64_seg4']).extra == [
        'dr2net_f64_seg4']
    with pytest.raises(SystemExit):
        tool('benchmark')['parse_args'](['dino', '--extra', 'dr2net_fp32'])
    with pytest.raises(SystemExit):
        tool('benchmark')['parse_args'](['swin', '--size', '800x1333'])
