"""mmaction2 1.2.0 from PyPI works once dr2net_mm is imported (dr2net_mm/mmaction_compat.py).

Each check runs in a fresh interpreter: whether ``mmaction.models`` imports depends on what was
imported before it in the process."""
import subprocess
import sys

import pytest

pytest.importorskip('mmaction')


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


def test_the_pinned_wheel_has_the_defect_the_shim_exists_for():
    # Without dr2net_mm, mmaction2 1.2.0's wheel cannot import its models (missing localizers/drn).
    # When a fixed mmaction2 is pinned, this test says so: then mmaction_compat can go.
    result = run('import mmaction.models')
    assert result.returncode != 0
    assert "No module named 'mmaction.models.localizers.drn'" in result.stderr


def test_after_import_dr2net_mm_mmaction_models_import_and_build():
    result = run(
        'import dr2net_mm, torch\n'
        'from mmaction.registry import MODELS\n'
        "model = MODELS.build(dict(type='SwinTransformer3D', arch='tiny', pretrained2d=False))\n"
        'print(type(model).__name__)\n'
        "print(MODELS.get('Recognizer3D').__name__, MODELS.get('VisionTransformer').__name__)\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['SwinTransformer3D', 'Recognizer3D', 'VisionTransformer']


def test_the_placeholder_drn_says_what_is_missing_and_how_to_get_it():
    result = run('import dr2net_mm\n'
                 'from mmaction.models.localizers import DRN\n'
                 'DRN()\n')
    assert result.returncode != 0
    assert 'ImportError' in result.stderr
    assert 'lacks mmaction/models/localizers/drn' in result.stderr
    assert 'install mmaction2 from its source repository' in result.stderr


def test_the_finder_comes_last_so_a_fixed_mmaction2_is_imported_as_it_is():
    result = run('import sys, importlib.machinery, dr2net_mm\n'
                 'from dr2net_mm import mmaction_compat\n'
                 'mmaction_compat.install()\n'  # a second call adds nothing
                 'ours = [i for i, f in enumerate(sys.meta_path) '
                 'if type(f).__name__ == "_MissingDRN"]\n'
                 'path = sys.meta_path.index(importlib.machinery.PathFinder)\n'
                 'print(len(ours), ours[0] > path)\n'
                 "print(mmaction_compat._MissingDRN().find_spec('mmaction.models.localizers.bmn'))\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['1', 'True', 'None']


def test_importlib_metadata_is_installed_for_mmaction2():
    # mmaction.utils.dependency imports it without declaring it; the `video` extra declares it.
    result = run('import dr2net_mm\nimport mmaction.utils.dependency\n')
    assert result.returncode == 0, result.stderr[-2000:]
