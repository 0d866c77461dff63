"""The package's import graph: no cycle, no import that runs back up the layers, every module
importable on its own in a fresh process, and a core free of OpenMMLab."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'dr2net_mm'

# Lower layers never import higher ones (the root __init__, which imports the registering
# packages, stands above them all).
LAYERS = {'version': 0, 'checks': 0, 'core': 1, 'branches': 2, 'timm_models': 2, 'models': 2,
          'engine': 3, 'points': 3, 'benchmark': 4, 'demo': 4, 'runner_utils': 4, 'env': 4,
          'mmcv_ops': 4, 'distributed': 4, 'compiling': 4, 'tad': 4, 'rvos': 4,
          'mmaction_compat': 0}
OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'mmaction')


def module_names():
    names = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        names['.'.join(parts)] = path
    return names


MODULES = module_names()


def imports_of(name, path):
    """Every module ``name`` imports (at module level or inside functions): dr2net_mm modules and
    the dotted names of third-party ones."""
    is_package = path.name == '__init__.py'
    package = name if is_package else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in MODULES else base)
    return found


def internal_graph():
    """module -> the dr2net_mm modules it makes Python import, including the packages above an
    imported module (Python runs their __init__ first) unless they are above the importer too."""
    graph = {}
    for name, path in MODULES.items():
        ancestors = {'.'.join(name.split('.')[:i]) for i in range(1, name.count('.') + 2)}
        edges = set()
        for target in imports_of(name, path):
            if target.split('.')[0] != 'dr2net_mm':
                continue
            parts = target.split('.')
            for i in range(2, len(parts) + 1):
                step = '.'.join(parts[:i])
                if step in MODULES and step not in ancestors:
                    edges.add(step)
        graph[name] = edges
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer(name):
    parts = name.split('.')
    return LAYERS[parts[1]] if len(parts) > 1 else 5


def test_the_import_graph_has_no_cycle():
    graph = internal_graph()
    assert len(graph) > 30 and 'dr2net_mm.points.segmentor' in graph
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_every_import_of_the_package_names_a_module_of_it():
    """Also the imports inside functions, which only a call would otherwise catch."""
    unknown = [(name, target) for name, path in MODULES.items() for target in imports_of(name, path)
               if target.split('.')[0] == 'dr2net_mm' and target not in MODULES]
    assert unknown == []


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_runs_back_up_the_layers():
    upward = [(name, target) for name, targets in internal_graph().items() for target in targets
              if layer(target) > layer(name)]
    assert upward == []


def test_core_and_checks_import_no_openmmlab():
    for name, path in MODULES.items():
        if name == 'dr2net_mm.checks' or name.startswith('dr2net_mm.core'):
            mm = sorted(m for m in imports_of(name, path) if m.split('.')[0] in OPENMMLAB)
            assert mm == [], (name, mm)


def test_the_shared_branch_pieces_and_the_timm_conversion_import_no_openmmlab():
    """dr2net_mm.branches serves the timm conversion, which plain PyTorch users import alone."""
    for name in ('dr2net_mm.branches', 'dr2net_mm.timm_models'):
        mm = sorted(m for m in imports_of(name, MODULES[name]) if m.split('.')[0] in OPENMMLAB)
        assert mm == [], (name, mm)
        assert all(layer(target) <= layer(name) for target in internal_graph()[name]), name


# Each module is imported in a child forked from one interpreter that has loaded the third-party
# packages only (torch, mmdet, ...: slow to import, and not what is tested): for dr2net_mm every
# child is a fresh process. Entry points (__main__) are run, not imported, and are left out.
_CHILD_IMPORTS = r'''
import importlib, json, os, sys, traceback
third_party, modules = json.loads(sys.argv[1])
for name in third_party:
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not any(m.split('.')[0] == 'dr2net_mm' for m in sys.modules)
failures = {}
for name in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failures[name] = message or 'child failed'
print(json.dumps(failures))
'''


@pytest.mark.skipif(not hasattr(__import__('os'), 'fork'), reason='needs os.fork')
def test_every_module_imports_on_its_own_in_a_fresh_process():
    modules = sorted(n for n in MODULES if not n.endswith('__main__'))
    third_party = sorted({m for n, p in MODULES.items() for m in imports_of(n, p)
                          if m.split('.')[0] != 'dr2net_mm'})
    result = subprocess.run([sys.executable, '-c', _CHILD_IMPORTS,
                             json.dumps([third_party, modules])], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == {}, '\n'.join(f'{k}:\n{v}' for k, v in failures.items())


def _run_child(code):
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_imports_where_openmmlab_is_not_installed():
    """``import dr2net_mm.core`` runs the package __init__ first: it must not need OpenMMLab.
    (A None entry in sys.modules is how Python marks a module as not importable.)"""
    loaded = _run_child(
        'import json, sys\n'
        f'for name in {OPENMMLAB!r}:\n'
        '    sys.modules[name] = None\n'
        'import dr2net_mm.core\n'
        'from dr2net_mm.core import ReversibleSequence\n'
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dr2net_mm'))))")
    assert 'dr2net_mm.core.reversible' in loaded
    assert not [m for m in loaded if m.split('.')[1:2] in (['models'], ['engine'], ['points'])], loaded


def test_importing_the_package_registers_its_modules():
    found = _run_child(
        'import json, dr2net_mm\n'
        'from mmengine.registry import HOOKS, METRICS, MODELS\n'
        "print(json.dumps([MODELS.get('Dr2NetSwin') is not None,"
        " MODELS.get('Dr2NetViT') is not None, HOOKS.get('AlphaBetaHook') is not None,"
        " METRICS.get('PointSegMetric') is not None]))")
    assert found == [True, True, True, True]
