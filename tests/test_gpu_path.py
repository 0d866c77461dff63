"""The GPU path's CPU-side parts: the mmcv deformable-attention fallback, the wheel-folder check, the
mmcv build helpers, the summary of a run and ``tools/gpu_check.sh --dry-run``."""
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from dr2net_mm import mmcv_ops
from tool_runs import ROOT, run_tool

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import gpu_report  # noqa: E402
import gpu_wheels  # noqa: E402
import mmcv_build  # noqa: E402

WHEELS = os.path.join(ROOT, '.gpu_wheels')


# 1. the fallback --------------------------------------------------------------------------------
@pytest.mark.parametrize('value,expected', [(None, False), ('', False), ('0', False), ('1', True)])
def test_fallback_env_values(value, expected):
    environ = {} if value is None else {mmcv_ops.ENV: value}
    assert mmcv_ops.fallback_requested(environ) is expected


def test_fallback_env_refuses_other_values_naming_them():
    with pytest.raises(ValueError, match=r"DR2NET_MMCV_PYTORCH_FALLBACK='yes'"):
        mmcv_ops.fallback_requested({mmcv_ops.ENV: 'yes'})


def test_fallback_switches_the_module_flag_and_logs_why(monkeypatch, caplog):
    from mmcv.ops import multi_scale_deform_attn
    monkeypatch.setattr(multi_scale_deform_attn, 'IS_CUDA_AVAILABLE', True)  # as on a GPU machine
    assert not mmcv_ops.pytorch_deform_attn_active()
    with caplog.at_level(logging.WARNING, logger='dr2net_mm.mmcv_ops'):
        mmcv_ops.use_pytorch_deform_attn('a test reason')
        mmcv_ops.use_pytorch_deform_attn('a test reason')  # once on, nothing more is logged
    assert mmcv_ops.pytorch_deform_attn_active()
    assert multi_scale_deform_attn.IS_CUDA_AVAILABLE is False
    assert [r.getMessage().count('a test reason') for r in caplog.records] == [1]
    with pytest.raises(ValueError, match='reason'):
        mmcv_ops.use_pytorch_deform_attn('')


def test_import_applies_the_env_fallback_in_a_fresh_process():
    code = ('import dr2net_mm, dr2net_mm.mmcv_ops as m; from mmcv.ops import multi_scale_deform_attn '
            'as a; print(m.pytorch_deform_attn_active(), a.IS_CUDA_AVAILABLE)')
    out = run_tool([sys.executable, '-c', code], env={mmcv_ops.ENV: '1'})
    assert 'True False' in out
    out = run_tool([sys.executable, '-c', 'import dr2net_mm'], env={mmcv_ops.ENV: 'on'}, fails=True)
    assert "DR2NET_MMCV_PYTORCH_FALLBACK='on'" in out


def test_deform_attn_check_passes_on_cpu_and_names_the_way_out_on_cuda(monkeypatch):
    mmcv_ops.check_deform_attn_on('cpu')
    from mmcv.ops import multi_scale_deform_attn
    monkeypatch.setattr(multi_scale_deform_attn, 'IS_CUDA_AVAILABLE', True)
    monkeypatch.setattr(mmcv_ops, 'mmcv_has_cuda_ops', lambda: False)  # a CPU build, as here
    with pytest.raises(RuntimeError, match="device 'cuda'.*DR2NET_MMCV_PYTORCH_FALLBACK=1"):
        mmcv_ops.check_deform_attn_on('cuda')


# 2. the wheel folder ------------------------------------------------------------------------------
def test_wheel_check_names_a_missing_folder(tmp_path):
    problems, _ = gpu_wheels.check(str(tmp_path / 'none'), 40)
    assert problems == [f"wheel folder {str(tmp_path / 'none')!r} does not exist: run "
                        '`make gpu-wheels` first']


def test_manifest_lines_are_checked(tmp_path):
    bad = tmp_path / 'manifest.txt'
    bad.write_text('mmengine==0.10.7\nmmdet>=3\n')
    with pytest.raises(ValueError, match=r"manifest.txt:2: 'mmdet>=3'"):
        gpu_wheels.read_manifest(str(bad))


@pytest.mark.skipif(not os.path.isdir(WHEELS), reason='no .gpu_wheels/ here: run `make gpu-wheels`')
def test_wheel_check_passes_on_the_folder_and_fails_on_damaged_copies(tmp_path):
    problems, mib = gpu_wheels.check(WHEELS, 40)
    assert problems == [] and 5 < mib < 40
    copy = tmp_path / 'w'
    shutil.copytree(WHEELS, copy)
    (pycocotools, ) = copy.glob('pycocotools-*.whl')
    pycocotools.unlink()  # mmdet needs it
    (copy / 'shapely-9.9.9-cp311-cp311-manylinux_2_17_x86_64.whl').write_bytes(b'')
    problems, _ = gpu_wheels.check(str(copy), 40)
    text = '\n'.join(problems)
    assert "pycocotools==2.0.11: want one wheel, found none" in text
    assert "requires 'pycocotools'" in text
    assert 'shapely-9.9.9-cp311-cp311-manylinux_2_17_x86_64.whl: not for CPython 3.12' in text
    assert 'shapely-9.9.9-cp311-cp311-manylinux_2_17_x86_64.whl: cannot read its metadata' in text
    assert "shapely==2.2.0: want one wheel, found ['2.2.0', '9.9.9']" in text
    assert gpu_wheels.check(WHEELS, 1)[0] == [f'{WHEELS} holds {mib:.1f} MiB, more than --max-mib 1']


# 3. mmcv from its sdist: the C++ standard, the Python layer without ops ---------------------------
def fake_torch_headers(root, guard):
    (root / 'ATen').mkdir(parents=True)
    (root / 'ATen' / 'ATen.h').write_text(f'#pragma once\n#if !defined(_MSC_VER) && __cplusplus < {guard}L\n'
                                          '#error C++ or later compatible compiler is required\n#endif\n')
    return str(root)


def test_mmcv_cxx_std_is_read_from_the_torch_headers(tmp_path):
    assert mmcv_build.required_cxx_std(fake_torch_headers(tmp_path / 'a', 202002)) == (20, 'ATen/ATen.h')
    assert mmcv_build.required_cxx_std(fake_torch_headers(tmp_path / 'b', 201703)) == (17, 'ATen/ATen.h')
    assert mmcv_build.required_cxx_std(str(tmp_path / 'none')) is None
    with pytest.raises(SystemExit, match='unknown __cplusplus guard 199711L'):
        mmcv_build.required_cxx_std(fake_torch_headers(tmp_path / 'c', 199711))


def test_mmcv_setup_flags_below_the_torch_standard_are_raised(tmp_path):
    setup = tmp_path / 'setup.py'
    text = "a = ['-std=c++14']\nb = ['-std=c++17', '/std:c++17']\nc = ['-std=c++20']\n"
    setup.write_text(text)
    assert mmcv_build.raise_cxx_std(str(setup), 17) == ['-std=c++14']
    assert setup.read_text() == text.replace('-std=c++14', '-std=c++17')
    assert mmcv_build.raise_cxx_std(str(setup), 20) == ['-std=c++17', '-std=c++17']
    assert setup.read_text() == "a = ['-std=c++20']\nb = ['-std=c++20', '/std:c++17']\nc = ['-std=c++20']\n"


SWIN_WITHOUT_OPS = '''
import torch, mmcv, dr2net_mm
from dr2net_mm.mmcv_ops import status
from dr2net_mm.models.swin import Dr2NetSwin
torch.manual_seed(0)
model = Dr2NetSwin(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=7)
sum(o.square().mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
print("SWIN OK", mmcv.__file__, model.reconstruction_errors(), status()["compiled_cuda"])
from mmcv.ops import nms
nms(torch.rand(2, 4), torch.rand(2), 0.5)
'''


def test_mmcv_python_layer_without_ops_runs_dr2net_swin_and_names_a_missing_op(tmp_path):
    """What every GPU-check step imports: mmdet and Dr2NetSwin work, a compiled op raises by name."""
    import mmcv
    note = mmcv_build.python_only(os.path.dirname(os.path.dirname(mmcv.__file__)), str(tmp_path))
    assert note == f'mmcv {mmcv.__version__} Python layer in {tmp_path / "mmcv"}, compiled ops stubbed'
    assert not list((tmp_path / 'mmcv').glob('_ext*.so'))
    out = run_tool([sys.executable, '-c', SWIN_WITHOUT_OPS], env={'PYTHONPATH': f'{tmp_path}:{ROOT}'},
                   fails=True)
    assert f"SWIN OK {tmp_path / 'mmcv' / '__init__.py'} [0.0, 0.0, 0.0, 0.0] not available" in out
    assert "RuntimeError: mmcv op 'nms': this mmcv has no compiled ops" in out


# 4. the summary of a run --------------------------------------------------------------------------
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_cuda" name="test_reversible_gradients_on_cuda[1.0-0.1-swin]" time="2.5"/>
<testcase classname="tests.test_cuda" name="test_amp_dino_demo_steps_and_an_overflow" time="9.0">
<failure message="AssertionError: the overflowing step changed the weights&#10;assert False">trace</failure>
</testcase>
<testcase classname="tests.test_cuda" name="test_peak_memory_dr2net_below_checkpointing[swin]" time="4.0">
<skipped message="needs a CUDA GPU"/></testcase></testsuite></testsuites>"""
RESULTS = """collected 3 items
RESULT test_reversible_gradients_on_cuda[1.0-0.1-swin] reversible_vs_truth=3.1e-07 reconstruction_error=0 \
device=NVIDIA_H200
RESULT test_amp_dino_demo_steps_and_an_overflow losses=1.2/1.1 scale_after_overflow=1.1e+12
"""


def measured(name, peak, allocated):
    return dict(name=name, saved_mb=1.0, peak_mb=peak, step_ms=12.0, params_m=28.3, ratios={},
                rss_peak_mb=None, cuda_max_allocated_mb=allocated, cuda_max_reserved_mb=allocated + 64)


def write_logs(logs, xml=True):
    logs.mkdir()
    (logs / 'steps.tsv').write_text('environment\tok\t4\t20\ncuda-tests\tfailed: rc 1\t61\t150\n'
                                    'bench_swin_t_1024\tok\t30\t70\n')
    (logs / 'environment.log').write_text('SUMMARY torch: 2.11.0+cu130 CUDA 13.0\nnoise\n'
                                          'SUMMARY GPU: NVIDIA H200, sm_90\n')
    (logs / 'cuda-tests.log').write_text(RESULTS + 'FAILED tests/test_cuda.py::test_amp\n')
    if xml:
        (logs / 'cuda_tests.xml').write_text(JUNIT)
    rows = [measured('conventional', 900.0, 1200.5), measured('dr2net', 300.0, 610.25)]
    report = dict(device_name='NVIDIA H200', device='cuda', torch='2.11.0+cu130',
                  settings={'Swin depths 2-2-6-2': rows})
    (logs / 'bench_swin_t_1024.json').write_text(json.dumps(report))
    (logs / 'bench_swin_t_1024.png').write_bytes(b'png')


def run_report(tmp_path, state):
    (tmp_path / 'out').mkdir()
    gpu_report.main([str(tmp_path / 'logs'), str(tmp_path / 'out'), '--mode', 'gpu', '--limit', '500',
                     '--elapsed', '95', '--state', state, '--plan', 'environment cuda-tests'])
    return json.loads((tmp_path / 'out' / 'summary.json').read_text())


def test_gpu_report_writes_the_summary_pair_and_one_archive(tmp_path):
    write_logs(tmp_path / 'logs')
    summary = run_report(tmp_path, 'done, with failures')
    assert sorted(os.listdir(tmp_path / 'out')) == ['gpu_check.tgz', 'summary.json', 'summary.md']
    assert summary['facts'] == {'torch': '2.11.0+cu130 CUDA 13.0', 'GPU': 'NVIDIA H200, sm_90'}
    assert summary['steps'][1] == dict(step='cuda-tests', result='failed: rc 1', seconds=61, cap_s=150)
    tests = {t['test']: t for t in summary['cuda_tests']['tests']}
    assert summary['cuda_tests']['counts'] == {'passed': 1, 'failed': 1, 'skipped': 1}
    grads = tests['test_reversible_gradients_on_cuda[1.0-0.1-swin]']
    assert grads['result'] == 'passed' and grads['seconds'] == 2.5
    assert grads['figures'] == dict(reversible_vs_truth=3.1e-07, reconstruction_error=0.0,
                                    device='NVIDIA_H200')
    amp = tests['test_amp_dino_demo_steps_and_an_overflow']
    assert amp['result'] == 'failed'
    assert amp['message'] == 'AssertionError: the overflowing step changed the weights'
    rows = summary['benchmarks']['bench_swin_t_1024']['settings']['Swin depths 2-2-6-2']
    assert [(r['name'], r['cuda_max_allocated_mb'], r['cuda_max_reserved_mb']) for r in rows] == [
        ('conventional', 1200.5, 1264.5), ('dr2net', 610.25, 674.25)]
    text = (tmp_path / 'out' / 'summary.md').read_text()
    assert 'GPU run: done, with failures (95 s of 500 s)' in text
    assert ('| test_amp_dino_demo_steps_and_an_overflow | failed | 9.0 | losses=1.2/1.1, scale_after_overflow='
            '1.1e+12; AssertionError: the overflowing step changed the weights |') in text
    assert '| dr2net | 300.0 | 610.2 | 674.2 | 1.0 | 12 | 28.3 |' in text
    assert '`cuda-tests.log`, last lines:' in text  # the failed step's tail
    with tarfile.open(tmp_path / 'out' / 'gpu_check.tgz') as archive:
        assert sorted(archive.getnames()) == sorted(
            ['gpu_check'] + [f'gpu_check/{n}' for n in os.listdir(tmp_path / 'logs')])


def test_gpu_report_of_a_stopped_test_step_keeps_the_printed_figures(tmp_path):
    write_logs(tmp_path / 'logs', xml=False)
    tests = run_report(tmp_path, 'running (after cuda-tests)')['cuda_tests']
    assert tests['source'].startswith('no cuda_tests.xml')
    assert [(t['test'], t['result'], t['figures'].get('scale_after_overflow')) for t in tests['tests']] == [
        ('test_reversible_gradients_on_cuda[1.0-0.1-swin]', '?', None),
        ('test_amp_dino_demo_steps_and_an_overflow', '?', 1.1e12)]


# 5. the script ----------------------------------------------------------------------------------
STEPS = ('environment', 'wheels', 'install', 'mmcv', 'cuda-tests', 'bench_swin_t_1024', 'fsdp', 'bench_vit_l_256',
         'bench_dino_800x1333')


@pytest.mark.slow  # ~75 s: every stand-in of the GPU check on CPU (make test-all)
def test_gpu_check_dry_run_leaves_three_files_and_runs_every_stand_in_within_its_cap(tmp_path):
    """The whole dry run: wheels (when the folder exists here), mmcv's sdist patched, the CUDA tests
    collected and skipped with their reason, the focal-loss fallback tests passed, the GPU benchmark
    commands parsed and swin/vit run tiny on CPU, DINO's fallbacks checked; at most 8 files come back."""
    args = ['bash', 'tools/gpu_check.sh', '--dry-run', '--out', str(tmp_path / 'out')]
    wheels = os.path.isdir(WHEELS)
    if not wheels:
        args.append('--skip-wheels')
    out = run_tool(args, env={'PYTHON': sys.executable}, timeout=600)
    assert 'done, all steps passed' in out
    assert sorted(os.listdir(tmp_path / 'out')) == ['gpu_check.tgz', 'summary.json', 'summary.md']
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    steps = {s['step']: s for s in summary['steps']}
    assert sorted(steps) == sorted(STEPS)
    ran = [name for name in STEPS if wheels or name not in ('wheels', 'install', 'mmcv')]
    for name in ran:
        assert steps[name]['result'] == 'ok' and steps[name]['seconds'] <= steps[name]['cap_s'], steps
    # the critical path (the mmcv build runs beside the CUDA tests, within the same cap)
    assert sum(steps[name]['cap_s'] for name in ran if name != 'mmcv') < summary['run']['time_limit_s']
    tests = {t['test']: t['result'] for t in summary['cuda_tests']['tests']}
    assert tests['test_focal_loss_fallback_matches_mmdet_cpu_path_through_the_cuda_dispatch[avg]'] == 'passed'
    assert tests['test_env_switches_both_fallbacks_on_at_import_and_the_check_passes'] == 'passed'
    if wheels:
        assert summary['facts']['mmcv'].endswith('compiled ops stubbed')
        assert 'headers need C++' in summary['facts']['mmcv C++ standard']
    with tarfile.open(tmp_path / 'out' / 'gpu_check.tgz') as archive:
        names = archive.getnames()
        log = archive.extractfile('gpu_check/cuda-tests.log').read().decode()
        dino = archive.extractfile('gpu_check/bench_dino_800x1333.log').read().decode()
    for name in ('cuda_tests.xml', 'bench_swin_t_1024.json', 'bench_swin_t_1024.png', 'bench_vit_l_256.md'):
        assert f'gpu_check/{name}' in names
    if not torch.cuda.is_available():
        assert 'needs a CUDA GPU (torch.cuda.is_available() is False)' in log
        assert {result for test, result in tests.items() if 'focal' not in test
                and 'fallback' not in test} == {'skipped'}
    assert "GPU command parses: Namespace(model='dino'" in dino
    assert 'deform_attn pytorch fallback, focal_loss pytorch fallback' in dino


@pytest.mark.parametrize('args,message', [
    (['--time-limit', '5'], "--time-limit '5': need whole seconds >= 30"),
    (['--bogus'], "unknown argument '--bogus'"),
    (['--skip-wheels'], '--skip-wheels only goes with --dry-run'),
    (['--mmcv-cuda'], '--mmcv-cuda was dropped'),
])
def test_gpu_check_refuses_bad_arguments(args, message):
    proc = subprocess.run(['bash', 'tools/gpu_check.sh'] + args, cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and message in proc.stderr


def test_gpu_check_refuses_an_out_folder_holding_other_files(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    proc = subprocess.run(['bash', 'tools/gpu_check.sh', '--dry-run', '--out', str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "holds 'notes.txt': give an empty folder" in proc.stderr
    assert (tmp_path / 'notes.txt').read_text() == 'mine'
