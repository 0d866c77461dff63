"""Packaging for dr2net_mm. Versions come from requirements/constraints.txt only."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version():
    text = (HERE / 'dr2net_mm' / 'version.py').read_text()
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text).group(1)


def read_pins():
    """{name: version} from the `name==version` lines of constraints.txt."""
    pins = {}
    for line in (HERE / 'requirements' / 'constraints.txt').read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if '==' in line:
            name, version = line.split('==', 1)
            pins[name.strip().lower()] = version.strip()
    return pins


PINS = read_pins()
RUNTIME = ['torch', 'torchvision', 'timm', 'mmengine', 'mmdet', 'mmsegmentation',
           'pycocotools', 'numpy', 'ftfy', 'regex']

setup(
    name='dr2net_mm',
    version=read_version(),
    description='Dr2Net: reversible dual-residual finetuning of Swin/ViT backbones '
                'for OpenMMLab (MMEngine, mmdet, mmseg)',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'tools', 'configs')),
    python_requires='>=3.9',
    install_requires=[f'{name}=={PINS[name]}' for name in RUNTIME] + [
        # The range mmdet/mmseg accept; the tested 2.1.0 is pinned in constraints.txt.
        # pip cannot build mmcv's ops itself: tools/install.sh installs it first.
        'mmcv>=2.0.0,<2.2.0',
    ],
    extras_require={'tests': [f"pytest=={PINS['pytest']}"], 'tensorboard': ['tensorboard']},
)
