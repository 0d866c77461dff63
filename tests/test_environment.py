"""The environment check, the installer's idempotence and the version pins."""
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_PY = ROOT / 'dr2net_mm' / 'env.py'


def load_env():
    # By file path, like the Makefile, so these tests do not depend on the package import.
    spec = importlib.util.spec_from_file_location('dr2net_env_under_test', ENV_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env = load_env()
PINS = env.read_pins()


def good_facts():
    versions = {dist: PINS[dist] for dist, _ in env.STACK}
    versions['torch'] += '+cu130'  # local tags must not matter
    return {'python': '3.11.7', 'versions': versions, 'errors': {}}


def test_env_script_reports_ok():
    proc = subprocess.run([sys.executable, str(ENV_PY)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith('[env] OK:')
    assert f"torch {PINS['torch']}" in proc.stdout
    assert 'Traceback' not in proc.stderr


def test_made_up_good_environment_passes():
    assert env.check_environment(good_facts(), PINS) == []


def test_wrong_torch_version():
    facts = good_facts()
    facts['versions']['torch'] = '2.13.0+cpu'
    problems = env.check_environment(facts, PINS)
    assert len(problems) == 1
    assert '2.13.0' in problems[0] and PINS['torch'] in problems[0]
    assert 'make install' in problems[0]


def test_mmcv_without_ops():
    facts = good_facts()
    facts['errors']['mmcv.ops'] = "ModuleNotFoundError: No module named 'mmcv._ext'"
    problems = env.check_environment(facts, PINS)
    assert len(problems) == 1
    assert 'without its C++ ops' in problems[0] and 'make install' in problems[0]


def test_mmcv_ops_built_for_another_torch():
    facts = good_facts()
    facts['errors']['mmcv.ops'] = 'ImportError: _ext.so: undefined symbol: _ZN3c10...'
    problems = env.check_environment(facts, PINS)
    assert len(problems) == 1
    assert 'another torch version' in problems[0]


def test_broken_torch_is_reported_once():
    facts = good_facts()
    facts['versions'] = {'numpy': PINS['numpy']}
    facts['errors'] = {dist: "ModuleNotFoundError: No module named 'torch'"
                       for dist, _ in env.STACK if dist != 'numpy'}
    problems = env.check_environment(facts, PINS)
    assert len(problems) == 1 and problems[0].startswith('torch does not import')


def test_mmcv_out_of_mmdet_range_without_pins():
    facts = good_facts()
    facts['versions']['mmcv'] = '2.2.0'
    problems = env.check_environment(facts, pins={})
    assert len(problems) == 1 and '<2.2.0' in problems[0]


def test_setuptools_without_pkg_resources():
    facts = good_facts()
    facts['errors']['pkg_resources'] = 'No module named pkg_resources'
    problems = env.check_environment(facts, PINS)
    assert len(problems) == 1 and 'mmdet::' in problems[0]


def test_old_python():
    facts = good_facts()
    facts['python'] = '3.8.18'
    assert any('too old' in p for p in env.check_environment(facts, PINS))


def test_broken_state_prints_no_traceback(tmp_path):
    # A real broken state: an interpreter (isolated, empty path) that has no torch at all.
    proc = subprocess.run([sys.executable, '-I', '-S', str(ENV_PY)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert 'torch does not import' in proc.stderr and 'make install' in proc.stderr
    assert 'Traceback' not in proc.stdout + proc.stderr


def test_release_parsing():
    assert env._release('2.0.0rc4') == (2, 0, 0)
    assert env._release('2.14.1+cu130') == (2, 14, 1)
    assert env._release('0.10.7') < env._release('1.0.0')


def test_constraints_match_installed_versions():
    assert {'torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation',
            'timm', 'numpy'} <= set(PINS)
    wrong = {}
    for dist, pinned in PINS.items():
        installed = importlib.metadata.version(dist).split('+')[0]
        if installed != pinned:
            wrong[dist] = (installed, pinned)
    assert not wrong, f'installed vs pinned: {wrong}'


def test_mmdet_config_inheritance(tmp_path):
    # What docs/configs.md tells users to write; needs pkg_resources (see constraints.txt).
    from mmengine import Config
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'\n"
                        "model = dict(backbone=dict(drop_path_rate=0.1))\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.backbone.type == 'SwinTransformer'
    assert cfg.model.backbone.drop_path_rate == 0.1


def run_install(env_vars=None):
    start = time.monotonic()
    proc = subprocess.run(['bash', str(ROOT / 'tools' / 'install.sh')], capture_output=True,
                          text=True, cwd=ROOT, timeout=1800,
                          env={**os.environ, 'DR2NET_VENV': sys.prefix, **(env_vars or {})})
    return proc, time.monotonic() - start


needs_venv = pytest.mark.skipif(sys.prefix == sys.base_prefix,
                                reason='install.sh would target a non-virtualenv python')


@needs_venv
def test_install_is_idempotent():
    first, _ = run_install()  # fast under `make test`; completes the env otherwise
    assert first.returncode == 0, first.stdout + first.stderr
    second, seconds = run_install()
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'environment up to date' in second.stdout
    assert seconds < 60


@needs_venv
@pytest.mark.slow
def test_mmcv_source_build_dry_run(tmp_path):
    # Downloads mmcv's sdist from the registry and patches it, but does not compile.
    proc, _ = run_install({'DR2NET_MMCV_FROM_SOURCE': '1', 'DR2NET_MMCV_DRY_RUN': '1',
                           'TMPDIR': str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'dry run: stopping before compiling' in proc.stdout
    # install.sh greps the patched setup.py: "[install]   162:   'cxx': ['-std=c++20'],"
    patched = [line for line in proc.stdout.splitlines()
               if re.match(r'\[install\]\s+\d+:', line)]
    assert patched and all('-std=c++20' in line for line in patched)
    assert not any(f'-std=c++1{n}' in line for line in patched for n in (4, 7))
