"""The installed distribution's requirements are ranges that accept both tested stacks:
requirements/constraints.txt (`make test`) and requirements/constraints-compat.txt (the stock
mmdet 3.3 stack, `make test-compat`)."""
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
STACKS = {'constraints.txt': ROOT / 'requirements' / 'constraints.txt',
          'constraints-compat.txt': ROOT / 'requirements' / 'constraints-compat.txt'}


def read_pins(path):
    """{canonical name: version} of the `name==version` lines of a constraints file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if '==' in line:
            name, version = line.split('==', 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def installed_requirements():
    """The installed dr2net_mm's unconditional requirements (extras carry a marker)."""
    requires = importlib.metadata.requires('dr2net_mm') or []
    return [req for req in map(Requirement, requires) if req.marker is None]


def refusals(requirements, pins):
    """What keeps the pinned stack ``pins`` from satisfying ``requirements``: one line each."""
    problems = []
    for req in requirements:
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f'{req}: not pinned, so no tested stack checks it')
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f'{req}: refuses the pinned {req.name} {version}')
    return problems


def test_the_installed_requirements_are_those_of_pyproject():
    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    installed = installed_requirements()
    assert sorted(map(str, installed)) == sorted(str(Requirement(r)) for r in declared), (
        'the installed dr2net_mm metadata is not that of pyproject.toml: reinstall '
        '(`make install`, or `pip install -e .`)')


def test_the_requirements_are_ranges_not_pins():
    pinned = [str(req) for req in installed_requirements()
              if any(spec.operator in ('==', '===') for spec in req.specifier)]
    assert pinned == []


@pytest.mark.parametrize('stack', sorted(STACKS))
def test_the_requirements_accept_the_tested_stack(stack):
    assert refusals(installed_requirements(), read_pins(STACKS[stack])) == []


def test_a_stack_outside_the_ranges_is_refused():
    pins = read_pins(STACKS['constraints-compat.txt'])
    pins.update({'torch': '2.0.1', 'mmdet': '3.1.0', 'setuptools': '82.0.0'})
    del pins['timm']
    problems = refusals(installed_requirements(), pins)
    assert len(problems) == 4, problems
    for name in ('torch', 'mmdet', 'setuptools', 'timm'):
        assert any(p.startswith(name) for p in problems), (name, problems)


def test_every_subpackage_ships_in_the_wheel():
    """pyproject.toml lists the packages (configs/ is mapped in as dr2net_mm.configs): a new
    subpackage must be added there too."""
    setuptools_cfg = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    on_disk = {'.'.join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / 'dr2net_mm').rglob('__init__.py')}
    on_disk |= {'.'.join(('dr2net_mm', 'configs') + d.relative_to(ROOT / 'configs').parts)
                for d in [ROOT / 'configs', *(ROOT / 'configs').rglob('*')]
                if d.is_dir() and d.name != '__pycache__'}
    assert 'dr2net_mm.configs.demo' in on_disk
    assert setuptools_cfg['package-dir'] == {'dr2net_mm.configs': 'configs'}
    assert sorted(on_disk - set(setuptools_cfg['packages'])) == []
