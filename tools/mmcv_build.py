"""mmcv from its sdist: the C++ standard torch's headers demand, and mmcv's Python layer without ops.

    python tools/mmcv_build.py cxx-std SRC        # raise SRC/setup.py's -std=c++NN to what torch needs
    python tools/mmcv_build.py python-only SRC DEST   # SRC/mmcv -> DEST/mmcv, compiled ops stubbed

``cxx-std`` is the one decision ``tools/install.sh`` and ``tools/gpu_check.sh`` share. mmcv 2.1.0's
``setup.py`` asks for ``-std=c++14``/``-std=c++17``; an explicit flag wins over torch's own default,
so when the installed torch's headers refuse that standard (torch >= 2.14: C++20, ``#error C++20 or
later compatible compiler is required``) the build fails. The standard needed is read from the
headers themselves (their ``__cplusplus < NNNNNNL`` guard), not guessed from torch's version; every
lower ``-std=c++NN`` flag in ``setup.py`` is raised to it. Prints one line saying what it did.

``python-only`` installs mmcv's pure-Python layer (what mmdet, mmseg and this package import) with a
stand-in for the compiled extension ``mmcv._ext``: importing works, and every compiled op raises,
naming itself, when called. mmcv's pure-PyTorch paths (deformable attention on CPU or with the
fallback, the transformer layers) need no op; so Dr2NetSwin, timm ViTs and DINO with
``DR2NET_MMCV_PYTORCH_FALLBACK=1`` run on CUDA without compiling anything.
"""
import argparse
import os
import re
import shutil
import sys
from importlib import metadata
from importlib.util import find_spec

# the headers whose guard says which C++ standard torch needs (ATen and the C++ frontend)
GUARDED_HEADERS = ('ATen/ATen.h', 'torch/csrc/api/include/torch/all.h')
STANDARDS = {201402: 14, 201703: 17, 202002: 20, 202302: 23}

STUB = '''"""mmcv built without its compiled ops (tools/mmcv_build.py python-only): every op raises."""
NOT_BUILT = 'none: mmcv was installed without its compiled ops (tools/mmcv_build.py python-only)'


def get_compiler_version():
    return NOT_BUILT


def get_compiling_cuda_version():
    return 'not available'


def __getattr__(name):
    if name.startswith('__'):
        raise AttributeError(name)

    def not_built(*args, **kwargs):
        raise RuntimeError(f'mmcv op {name!r}: this mmcv has no compiled ops ({NOT_BUILT})')

    return not_built
'''


def torch_include_dir() -> str:
    spec = find_spec('torch')
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('mmcv_build.py: torch is not importable by this Python '
                         f'({sys.executable}); run it with the interpreter that builds mmcv')
    return os.path.join(list(spec.submodule_search_locations)[0], 'include')


def required_cxx_std(include_dir: str):
    """(standard, header) that torch's headers in ``include_dir`` require, e.g. (20, 'ATen/ATen.h');
    None when they have no such guard."""
    found = []
    for header in GUARDED_HEADERS:
        path = os.path.join(include_dir, header)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for value in re.findall(r'__cplusplus\s*<\s*(\d{6})L', f.read()):
                if int(value) not in STANDARDS:
                    raise SystemExit(f'mmcv_build.py: {path}: unknown __cplusplus guard {value}L')
                found.append((STANDARDS[int(value)], header))
    return max(found) if found else None


def raise_cxx_std(setup_py: str, std: int) -> list:
    """Replace every ``-std=c++NN`` below ``std`` in ``setup_py``; return the flags replaced."""
    with open(setup_py) as f:
        text = f.read()
    replaced = [m[0] for m in re.finditer(r'-std=c\+\+(\d\d)\b', text) if int(m[1]) < std]
    text = re.sub(r'-std=c\+\+(\d\d)\b',
                  lambda m: f'-std=c++{std}' if int(m[1]) < std else m[0], text)
    with open(setup_py, 'w') as f:
        f.write(text)
    return replaced


def cxx_std(src: str) -> str:
    setup_py = os.path.join(src, 'setup.py')
    if not os.path.exists(setup_py):
        raise SystemExit(f'mmcv_build.py: {setup_py} does not exist: pass the unpacked mmcv sdist')
    include_dir = torch_include_dir()
    required = required_cxx_std(include_dir)
    if required is None:
        return (f'no __cplusplus guard in {", ".join(GUARDED_HEADERS)} under {include_dir}: '
                f'{setup_py} kept as it is')
    std, header = required
    replaced = raise_cxx_std(setup_py, std)
    needs = f'torch {metadata.version("torch")} headers need C++{std} ({header})'
    if not replaced:
        return f'{needs}: {setup_py} asks for nothing older, kept as it is'
    kinds = '/'.join(sorted({flag[len('-std=c++'):] for flag in replaced}))
    return f'{needs}: patched {setup_py}, {len(replaced)} flags -std=c++{kinds} -> -std=c++{std}'


def python_only(src: str, dest: str) -> str:
    package = os.path.join(src, 'mmcv')
    if not os.path.exists(os.path.join(package, '__init__.py')):
        raise SystemExit(f'mmcv_build.py: {package} is not the mmcv package (pass the unpacked sdist '
                         'or a folder holding mmcv/)')
    target = os.path.join(dest, 'mmcv')
    shutil.rmtree(target, ignore_errors=True)
    # no C++ sources, no compiled extension (a built _ext*.so would shadow the stub)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns('csrc', '_ext*', '__pycache__'))
    with open(os.path.join(target, '_ext.py'), 'w') as f:
        f.write(STUB)
    with open(os.path.join(target, 'version.py')) as f:
        version = re.search(r"__version__ = '([^']+)'", f.read())
    return (f'mmcv {version[1] if version else "(version unknown)"} Python layer in {target}, '
            'compiled ops stubbed')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='action', required=True)
    sub.add_parser('cxx-std').add_argument('src')
    only = sub.add_parser('python-only')
    only.add_argument('src')
    only.add_argument('dest')
    args = parser.parse_args(argv)
    print(cxx_std(args.src) if args.action == 'cxx-std' else python_only(args.src, args.dest))


if __name__ == '__main__':
    main()
