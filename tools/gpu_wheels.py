"""The wheel folder that travels to an offline GPU machine (Python 3.12, x86_64) for tools/gpu_check.sh.

    python tools/gpu_wheels.py download .gpu_wheels   # here, with the registry (`make gpu-wheels`)
    python tools/gpu_wheels.py check .gpu_wheels      # here or there: complete, one file each, small

``requirements/gpu_wheels.txt`` names what to fetch (``name==version``, or ``... sdist`` for a source
archive). ``check`` fails, naming the file or requirement, unless every entry is there exactly once
as a file for CPython 3.12 on manylinux x86_64, nothing else is, every requirement of every file
(markers evaluated for that machine) is met by the folder or by the GPU machine's own packages
(PREINSTALLED), and the folder is at most ``--max-mib`` MiB.
"""
import argparse
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, 'requirements', 'gpu_wheels.txt')
PLATFORMS = ['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64',
             'manylinux_2_17_x86_64', 'manylinux2014_x86_64', 'manylinux1_x86_64']
# The GPU machine's Python 3.12 (/work/.library/device/KINDS.md, 2026-11-17), the names our stack
# asks for. opencv-python is met by its opencv-python-headless (same `cv2` module).
PREINSTALLED = {canonicalize_name(n) for n in '''
torch torchvision numpy scipy matplotlib pillow pyyaml rich tqdm six packaging regex pytest
opencv-python opencv-python-headless huggingface-hub safetensors setuptools wheel ninja
pygments markdown-it-py mdurl typing-extensions filelock fsspec jinja2 networkx sympy
contourpy cycler fonttools kiwisolver pyparsing python-dateutil iniconfig pluggy
'''.split()}
MACHINE = dict(python_version='3.12', python_full_version='3.12.3', sys_platform='linux',
               platform_system='Linux', platform_machine='x86_64', os_name='posix',
               implementation_name='cpython', platform_python_implementation='CPython', extra='')


def read_manifest(path=MANIFEST):
    """[(canonical name, version, is_sdist)] from the manifest's non-comment lines."""
    entries = []
    for number, line in enumerate(open(path), 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r'([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)( sdist)?', line)
        if not match:
            raise ValueError(f'{path}:{number}: {line!r} is not "name==version" or "name==version sdist"')
        entries.append((canonicalize_name(match[1]), match[2], bool(match[3])))
    return entries


def download(folder):
    os.makedirs(folder, exist_ok=True)
    pip = [sys.executable, '-m', 'pip', 'download', '--disable-pip-version-check', '--no-deps',
           '-d', folder]
    for name, version, sdist in read_manifest():
        if sdist:
            cmd = pip + ['--no-binary', ':all:', '--no-build-isolation', f'{name}=={version}']
        else:
            cmd = pip + ['--only-binary=:all:', '--python-version', '3.12', '--implementation', 'cp',
                         '--abi', 'cp312', '--abi', 'abi3', '--abi', 'none']
            for platform in PLATFORMS:
                cmd += ['--platform', platform]
            cmd.append(f'{name}=={version}')
        print('+', ' '.join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)


def wheel_fits(tags) -> bool:
    """Any of the wheel's tags runs on CPython 3.12, manylinux x86_64."""
    for tag in tags:
        python_ok = tag.interpreter in ('py3', 'cp312') or (
            tag.abi == 'abi3' and re.fullmatch(r'cp3(\d+)', tag.interpreter)
            and int(tag.interpreter[3:]) <= 12)
        platform_ok = tag.platform == 'any' or (tag.platform.startswith('manylinux')
                                                and tag.platform.endswith('_x86_64'))
        if python_ok and tag.abi in ('cp312', 'abi3', 'none') and platform_ok:
            return True
    return False


def requirements_of(path):
    """The Requires-Dist lines of a wheel's METADATA or an sdist's PKG-INFO."""
    if path.endswith('.whl'):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith('.dist-info/METADATA'))
            text = archive.read(name).decode()
    else:
        with tarfile.open(path) as archive:
            member = min((m for m in archive.getmembers() if m.name.endswith('/PKG-INFO')),
                         key=lambda m: m.name.count('/'))
            text = archive.extractfile(member).read().decode()
    return Parser().parsestr(text).get_all('Requires-Dist') or []


def check(folder, max_mib):
    """The problems with the wheel folder (an empty list when it is ready), and its size in MiB."""
    if not os.path.isdir(folder):
        return [f'wheel folder {folder!r} does not exist: run `make gpu-wheels` first'], 0.0
    problems, found = [], {}
    files = sorted(os.listdir(folder))
    for file in files:
        path = os.path.join(folder, file)
        if file.endswith('.whl'):
            name, version, _, tags = parse_wheel_filename(file)
            if not wheel_fits(tags):
                problems.append(f'{file}: not for CPython 3.12 on manylinux x86_64')
        elif file.endswith('.tar.gz'):
            name, version = parse_sdist_filename(file)
        else:
            problems.append(f'{file}: neither a wheel nor a source archive')
            continue
        found.setdefault(name, []).append((str(version), path))
    expected = {name: (version, sdist) for name, version, sdist in read_manifest()}
    for name, (version, sdist) in expected.items():
        got = found.get(name, [])
        kind = 'source archive' if sdist else 'wheel'
        if len(got) != 1 or got[0][0] != version:
            problems.append(f'{name}=={version}: want one {kind}, found {[v for v, _ in got] or "none"}')
        elif got[0][1].endswith('.whl') == sdist:
            problems.append(f'{os.path.basename(got[0][1])}: the manifest wants a {kind}')
    for name in sorted(set(found) - set(expected)):
        problems.append(f'{name}: in the folder but not in {os.path.relpath(MANIFEST, ROOT)}')
    for name, got in sorted(found.items()):
        for _, path in got:
            try:
                lines = requirements_of(path)
            except (zipfile.BadZipFile, tarfile.TarError, StopIteration, ValueError) as error:
                problems.append(f'{os.path.basename(path)}: cannot read its metadata ({error!r})')
                continue
            for line in lines:
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate(MACHINE):
                    continue
                needed = canonicalize_name(req.name)
                if needed not in found and needed not in PREINSTALLED:
                    problems.append(f'{os.path.basename(path)} requires {line!r}: neither in the '
                                    'folder nor on the GPU machine')
    mib = sum(os.path.getsize(os.path.join(folder, f)) for f in files) / 2**20
    if mib > max_mib:
        problems.append(f'{folder} holds {mib:.1f} MiB, more than --max-mib {max_mib}')
    return problems, mib


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('action', choices=['download', 'check'])
    parser.add_argument('folder')
    parser.add_argument('--max-mib', type=float, default=40.0,
                        help='largest folder allowed (the device tool carries 64 MiB in all)')
    args = parser.parse_args(argv)
    if args.action == 'download':
        download(args.folder)
    problems, mib = check(args.folder, args.max_mib)
    for problem in problems:
        print(f'[gpu-wheels] PROBLEM: {problem}')
    count = len(os.listdir(args.folder)) if os.path.isdir(args.folder) else 0
    print(f'[gpu-wheels] {args.folder}: {count} files, {mib:.1f} MiB, '
          f'{"complete for Python 3.12" if not problems else f"{len(problems)} problem(s)"}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
