"""The GPU path's CPU-side parts: the mmcv deformable-attention fallback, the wheel-folder check and
``tools/gpu_check.sh --dry-run``."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dr2net_mm import mmcv_ops
from tool_runs import ROOT, run_tool

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import gpu_wheels  # noqa: E402

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


# 3. the script ----------------------------------------------------------------------------------
def test_gpu_check_dry_run(tmp_path):
    """The whole dry run: wheels (when the folder exists here), the CUDA tests collected and skipped
    with their reason, the GPU benchmark commands parsed and swin/vit run tiny on CPU; summary written."""
    args = ['bash', 'tools/gpu_check.sh', '--dry-run', '--out', str(tmp_path)]
    if not os.path.isdir(WHEELS):
        args.append('--skip-wheels')
    out = run_tool(args, env={'PYTHON': sys.executable}, timeout=600)
    assert 'done, all steps passed' in out
    summary = json.loads((tmp_path / 'summary.json').read_text())
    results = {s['step']: s['result'] for s in summary['steps']}
    for step in ('environment', 'cuda-tests', 'parse_swin', 'parse_vit', 'parse_dino',
                 'bench_swin_t_1024', 'bench_vit_l_256'):
        assert results[step] == 'ok', results
    tests = (tmp_path / 'cuda-tests.log').read_text()
    if not torch.cuda.is_available():
        assert 'needs a CUDA GPU (torch.cuda.is_available() is False)' in tests
        assert ' passed' not in tests and ' skipped' in tests
    assert (tmp_path / 'bench_swin_t_1024.json').exists() and (tmp_path / 'summary.md').exists()


@pytest.mark.parametrize('args,message', [
    (['--time-limit', '5'], "--time-limit '5': need whole seconds >= 30"),
    (['--bogus'], "unknown argument '--bogus'"),
    (['--skip-wheels'], '--skip-wheels only goes with --dry-run'),
])
def test_gpu_check_refuses_bad_arguments(args, message):
    proc = subprocess.run(['bash', 'tools/gpu_check.sh'] + args, cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and message in proc.stderr
