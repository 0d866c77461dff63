"""Environment check: ``python dr2net_mm/env.py`` (or ``python -m dr2net_mm.env``).

Prints one line per problem, with what to do, and exits 1; prints a short summary and
exits 0 when the stack is usable. Only the standard library is imported at module
level, so this works (and reports clearly) even when torch or mmcv is broken.
Prefer the file-path form: it does not import the ``dr2net_mm`` package itself.
"""
import importlib
import importlib.util
import os
import platform
import sys
from pathlib import Path

if __name__ == '__main__' and sys.path and sys.path[0] and \
        Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a file: Python put dr2net_mm/ on sys.path, where our subpackages
    # (models, engine, ...) would shadow same-named top-level modules.
    sys.path.pop(0)

# tools/install.sh exports DR2NET_CONSTRAINTS for the stack it installs (e.g. the compat one).
CONSTRAINTS = Path(os.environ.get('DR2NET_CONSTRAINTS') or
                   Path(__file__).resolve().parents[1] / 'requirements' / 'constraints.txt')
MIN_PYTHON = (3, 9)
FIX = 'run `make install`'

# (distribution name, import name); torch must stay first.
STACK = [('torch', 'torch'), ('torchvision', 'torchvision'), ('mmengine', 'mmengine'),
         ('mmcv', 'mmcv'), ('mmdet', 'mmdet'), ('mmsegmentation', 'mmseg'),
         ('mmaction2', 'mmaction'), ('timm', 'timm'), ('numpy', 'numpy')]
# What mmdet 3.3 and mmseg 1.2 accept (they assert it at import): [low, high)
RANGES = {'mmcv': ('2.0.0', '2.2.0'), 'mmengine': ('0.7.1', '1.0.0')}


def read_pins(path=CONSTRAINTS):
    """{distribution: version} from constraints.txt; {} when it is not there
    (e.g. a non-editable install), in which case only the ranges are checked."""
    pins = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            line = line.split('#', 1)[0].strip()
            if '==' in line:
                name, version = line.split('==', 1)
                pins[name.strip().lower()] = version.strip()
    return pins


def _release(version):
    """'2.1.0rc4+cu130' -> (2, 1, 0): enough to compare against RANGES."""
    parts = []
    for piece in version.split('+')[0].split('.'):
        digits = ''
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):  # e.g. '0rc4': stop after the number
            break
    return tuple(parts)


def _short(exc):
    text = f'{type(exc).__name__}: {exc}'.strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + '...'


def _tiny_boxes(torch):
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    return boxes, torch.tensor([0.9, 0.8, 0.7])


def probe():
    """Import the stack and run tiny ops. Returns the facts check_environment() judges:
    {'python': '3.11.7', 'versions': {dist: version}, 'errors': {dist or 'x.ops': msg}}
    """
    facts = {'python': platform.python_version(), 'versions': {}, 'errors': {}}
    if importlib.util.find_spec('pkg_resources') is None:
        facts['errors']['pkg_resources'] = 'No module named pkg_resources'
    for dist, module in STACK:
        try:
            facts['versions'][dist] = str(importlib.import_module(module).__version__)
        except Exception as exc:  # noqa: BLE001 - any failure is a finding
            facts['errors'][dist] = _short(exc)
    if 'torch' in facts['versions'] and 'torchvision' in facts['versions']:
        try:
            import torch
            import torchvision.ops
            keep = torchvision.ops.nms(*_tiny_boxes(torch), 0.5)
            assert keep.tolist() == [0, 2], keep.tolist()
        except Exception as exc:  # noqa: BLE001
            facts['errors']['torchvision.ops'] = _short(exc)
    if 'torch' in facts['versions'] and 'mmcv' in facts['versions']:
        try:
            import torch
            from mmcv.ops import nms
            _, keep = nms(*_tiny_boxes(torch), 0.5)
            assert keep.tolist() == [0, 2], keep.tolist()
        except Exception as exc:  # noqa: BLE001
            facts['errors']['mmcv.ops'] = _short(exc)
    return facts


def check_environment(facts=None, pins=None):
    """Return a list of problems (empty when OK). ``facts`` (see probe()) and ``pins``
    ({dist: version}) can be given to judge a made-up situation, e.g. in tests."""
    facts = probe() if facts is None else facts
    pins = read_pins() if pins is None else pins
    versions, errors = facts['versions'], facts['errors']
    problems = []

    if _release(facts['python']) < MIN_PYTHON:
        problems.append(f"python {facts['python']} is too old: dr2net_mm needs >= "
                        f"{'.'.join(map(str, MIN_PYTHON))}; recreate .venv with a newer "
                        f"python3, then {FIX}")
    if 'torch' in errors:
        # Everything else needs torch: report the cause once, not six echoes of it.
        problems.append(f"torch does not import ({errors['torch']}): {FIX}")
        dists = ['numpy']
    else:
        dists = [dist for dist, _ in STACK]

    for dist in dists:
        if dist in errors:
            problems.append(f'{dist} does not import ({errors[dist]}): {FIX}')
            continue
        have = versions.get(dist)
        if have is None:
            problems.append(f'{dist} was not checked: {FIX}')
            continue
        want = pins.get(dist)
        if want and have.split('+')[0] != want:
            problems.append(f'{dist} {have} is installed but {CONSTRAINTS.name} '
                            f'pins {want}: {FIX}')
        elif dist in RANGES:
            low, high = RANGES[dist]
            if not _release(low) <= _release(have) < _release(high):
                problems.append(f'{dist} {have} is outside what mmdet/mmseg accept '
                                f'(>={low}, <{high}): {FIX}')

    if 'pkg_resources' in errors:
        problems.append('pkg_resources is missing (setuptools >= 82 dropped it), so mmengine '
                        "cannot resolve `_base_ = 'mmdet::...'` configs: " + FIX +
                        ' (it installs the setuptools pinned in constraints.txt)')
    if 'torchvision.ops' in errors:
        problems.append(f"torchvision does not work with this torch "
                        f"({errors['torchvision.ops']}): torchvision must be the build "
                        f"made for torch {versions.get('torch')}; {FIX}")
    ops_error = errors.get('mmcv.ops')
    if ops_error and 'mmcv._ext' in ops_error and 'No module named' in ops_error:
        problems.append('mmcv was installed without its C++ ops (mmcv._ext is missing; '
                        'a plain `pip install mmcv` builds it that way): ' + FIX +
                        ', which installs mmcv with ops from the wheel cache or builds it')
    elif ops_error:
        problems.append(f"mmcv's C++ ops do not load/run with torch {versions.get('torch')} "
                        f"({ops_error}): the mmcv wheel was probably built for another "
                        f"torch version; {FIX} to install or build a matching one")
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    facts = probe()
    problems = check_environment(facts)
    for problem in problems:
        print(f'[env] PROBLEM: {problem}', file=sys.stderr)
    if problems:
        return 1
    if '--quiet' not in argv:
        v = facts['versions']
        print(f"[env] OK: python {facts['python']}, torch {v['torch']}, "
              f"torchvision {v['torchvision']}, mmcv {v['mmcv']} (ops ok), "
              f"mmengine {v['mmengine']}, mmdet {v['mmdet']}, "
              f"mmseg {v['mmsegmentation']}, mmaction2 {v['mmaction2']}, timm {v['timm']}, numpy {v['numpy']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
