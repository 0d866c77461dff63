"""The summary of a tools/gpu_check.sh run: OUT/summary.md, OUT/summary.json and OUT/gpu_check.tgz.

    python tools/gpu_report.py LOGS OUT --mode gpu --limit 500 --elapsed 312 --state done --plan "a b"

gpu_check.sh calls it after every step, so OUT always holds the three files, up to date, whatever
stops the run later. It reads only what the steps left in LOGS (no torch import; well under a
second):

* ``steps.tsv``: step, result, seconds, cap (seconds) per finished step;
* ``SUMMARY key: value`` lines of every ``*.log`` (machine, compilers, mmcv, fallbacks);
* ``cuda_tests.xml`` (pytest's junit XML) for each test's result and time, and the
  ``RESULT <test> key=value ...`` lines that tests/test_cuda.py prints for its figures;
* ``bench_*.json`` from tools/benchmark.py: per variant the peak step memory above the start, the
  absolute CUDA ``max_memory_allocated`` / ``max_memory_reserved``, saved bytes and step time.

The archive holds LOGS whole (logs, XML, benchmark JSON/markdown/PNG). Each file is written under a
temporary name and renamed, so a run killed mid-write leaves the previous version.
"""
import argparse
import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from importlib import metadata

# (mmcv: the facts say which one, its Python layer from the sdist has no package metadata)
PACKAGES = ('torch', 'torchvision', 'timm', 'numpy', 'mmengine', 'mmdet', 'mmsegmentation',
            'pycocotools', 'setuptools', 'ninja', 'pytest')
TESTS_XML = 'cuda_tests.xml'
TESTS_LOG = 'cuda-tests.log'
ARCHIVE = 'gpu_check.tgz'


def read_steps(logs):
    path = os.path.join(logs, 'steps.tsv')
    if not os.path.exists(path):
        return []
    steps = []
    for line in read(path).splitlines():
        if line.strip():
            name, result, seconds, cap = (line.rstrip('\n').split('\t') + ['', '', ''])[:4]
            steps.append(dict(step=name, result=result, seconds=int(seconds or 0),
                              cap_s=int(cap) if cap else None))
    return steps


def read_facts(logs, order):
    """``SUMMARY key: value`` lines of the logs, the steps' logs in run order first."""
    names = [f'{step}.log' for step in order]
    names += sorted(n for n in os.listdir(logs) if n.endswith('.log') and n not in names)
    facts = {}
    for name in names:
        path = os.path.join(logs, name)
        if os.path.exists(path):
            for match in re.finditer(r'^SUMMARY ([^:\n]+): (.*)$', read(path), re.M):
                facts[match[1].strip()] = match[2].strip()
    return facts


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def parse_figures(text):
    """``RESULT <test> key=value ...`` lines -> {test: {key: value}} (numbers as floats)."""
    figures = {}
    for match in re.finditer(r'^RESULT (\S+) ?(.*)$', text, re.M):
        values = figures.setdefault(match[1], {})
        for pair in match[2].split():
            key, _, value = pair.partition('=')
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value
    return figures


def read_tests(logs):
    """Per CUDA test: result, seconds, first line of the failure message, figures."""
    log = os.path.join(logs, TESTS_LOG)
    figures = parse_figures(read(log)) if os.path.exists(log) else {}
    xml = os.path.join(logs, TESTS_XML)
    tests = []
    if os.path.exists(xml):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as error:
            root, source = None, f'{TESTS_XML} unreadable ({error})'
        if root is not None:
            source = TESTS_XML
            for case in root.iter('testcase'):
                outcome, message = 'passed', ''
                for kind in ('failure', 'error', 'skipped'):
                    node = case.find(kind)
                    if node is not None:
                        outcome = {'failure': 'failed'}.get(kind, kind)
                        message = (node.get('message') or node.text or '').strip().split('\n')[0][:300]
                tests.append(dict(test=case.get('name'), file=case.get('classname'), result=outcome,
                                  seconds=float(case.get('time') or 0), message=message,
                                  figures=figures.get(case.get('name'), {})))
    else:
        source = f'no {TESTS_XML} (the step did not finish): figures of the tests that printed them'
    seen = {t['test'] for t in tests}
    tests += [dict(test=name, file=None, result='?', seconds=None, message='', figures=values)
              for name, values in figures.items() if name not in seen]
    counts = {}
    for test in tests:
        counts[test['result']] = counts.get(test['result'], 0) + 1
    return dict(source=source, counts=counts, tests=tests)


def read_benchmarks(logs):
    benchmarks = {}
    for name in sorted(os.listdir(logs)):
        if not (name.startswith('bench_') and name.endswith('.json')):
            continue
        try:
            report = json.loads(read(os.path.join(logs, name)))
        except ValueError as error:
            benchmarks[name[:-5]] = dict(error=f'{name} unreadable ({error})')
            continue
        keep = ('name', 'peak_mb', 'cuda_max_allocated_mb', 'cuda_max_reserved_mb', 'saved_mb',
                'step_ms', 'params_m')
        benchmarks[name[:-5]] = dict(
            device_name=report.get('device_name'), device=report.get('device'),
            torch=report.get('torch'), mmcv_ops=report.get('mmcv_ops'),
            settings={label: [{k: r.get(k) for k in keep} for r in rows]
                      for label, rows in report.get('settings', {}).items()})
    return benchmarks


def number(value, digits=1):
    if value is None:
        return '—'
    return f'{value:.{digits}f}' if isinstance(value, (int, float)) else str(value)


def figure_text(figures):
    return ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                     for k, v in figures.items())


def markdown(summary, logs):
    run = summary['run']
    lines = [f'# tools/gpu_check.sh, {run["mode"]}: {run["state"]} ({run["elapsed_s"]} s of '
             f'{run["time_limit_s"]} s)', '']
    lines += ['## Machine, compilers, mmcv', '', '| | |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in summary['facts'].items()]
    lines += [f'| package {k} | {v or "not installed"} |' for k, v in summary['packages'].items()]
    lines += ['', f'## Steps (planned: {" ".join(run["plan"])})', '',
              '| step | result | seconds | cap (s) |', '|---|---|---:|---:|']
    lines += [f'| {s["step"]} | {s["result"]} | {s["seconds"]} | {number(s["cap_s"], 0)} |'
              for s in summary['steps']]
    for step in summary['steps']:
        log = os.path.join(logs, f'{step["step"]}.log')
        if not (step['result'] == 'ok' or step['result'].startswith('skipped')) and os.path.exists(log):
            tail = read(log).rstrip().split('\n')[-8:]
            lines += ['', f'`{step["step"]}.log`, last lines:', '', '```', *tail, '```']
    tests = summary['cuda_tests']
    counts = ', '.join(f'{n} {k}' for k, n in sorted(tests['counts'].items())) or 'none run'
    lines += ['', f'## CUDA tests ({counts}; from {tests["source"]})', '',
              '| test | result | s | figures / message |', '|---|---|---:|---|']
    for t in tests['tests']:
        text = figure_text(t['figures'])
        if t['message'] and t['result'] != 'passed':
            text = f'{text}; {t["message"]}' if text else t['message']
        lines.append(f'| {t["test"]} | {t["result"]} | {number(t["seconds"])} | '
                     f'{text.replace("|", "/")} |')
    lines += ['', '## Benchmarks (MB; peak step = above what was allocated before the step; '
              'max allocated / reserved: absolute CUDA peaks)']
    for name, bench in summary['benchmarks'].items():
        if 'error' in bench:
            lines += ['', f'### {name}', '', bench['error']]
            continue
        lines += ['', f'### {name}: {bench["device_name"]}, torch {bench["torch"]}']
        if bench.get('mmcv_ops'):
            lines += ['', f'mmcv ops: {figure_text(bench["mmcv_ops"])}']
        for label, rows in bench['settings'].items():
            lines += ['', f'{label}', '', '| variant | peak step | max allocated | max reserved | '
                      'saved for backward | step ms | params M |', '|---|---:|---:|---:|---:|---:|---:|']
            lines += [f'| {r["name"]} | {number(r["peak_mb"])} | {number(r["cuda_max_allocated_mb"])} | '
                      f'{number(r["cuda_max_reserved_mb"])} | {number(r["saved_mb"])} | '
                      f'{number(r["step_ms"], 0)} | {number(r["params_m"])} |' for r in rows]
    lines += ['', f'Everything else (each step\'s log, the junit XML, the benchmarks\' JSON, markdown '
              f'and PNG): `{ARCHIVE}`, members {", ".join(summary["archive"])}.']
    return '\n'.join(lines) + '\n'


def read(path):
    with open(path, errors='replace') as f:
        return f.read()


def write_atomically(path, write):
    """``write(tmp)`` to a hidden file beside ``path``, then rename it to ``path``."""
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.tmp')
    write(tmp)
    os.replace(tmp, path)


def write_text(text):
    def write(path):
        with open(path, 'w') as f:
            f.write(text)
    return write


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('logs')
    parser.add_argument('out')
    parser.add_argument('--mode', choices=['gpu', 'dry'], required=True)
    parser.add_argument('--limit', type=int, required=True)
    parser.add_argument('--elapsed', type=int, required=True)
    parser.add_argument('--state', required=True)
    parser.add_argument('--plan', default='')
    args = parser.parse_args(argv)
    steps = read_steps(args.logs)
    archive = sorted(os.listdir(args.logs))
    summary = dict(
        run=dict(mode='GPU run' if args.mode == 'gpu' else 'dry run (CPU stand-ins)',
                 time_limit_s=args.limit, elapsed_s=args.elapsed, state=args.state,
                 plan=args.plan.split()),
        facts=read_facts(args.logs, [s['step'] for s in steps]), packages=package_versions(),
        steps=steps, cuda_tests=read_tests(args.logs), benchmarks=read_benchmarks(args.logs),
        archive=archive)

    def tar(path):
        with tarfile.open(path, 'w:gz') as bundle:
            bundle.add(args.logs, arcname='gpu_check')

    write_atomically(os.path.join(args.out, ARCHIVE), tar)
    write_atomically(os.path.join(args.out, 'summary.json'), write_text(json.dumps(summary, indent=1)))
    write_atomically(os.path.join(args.out, 'summary.md'), write_text(markdown(summary, args.logs)))


if __name__ == '__main__':
    main()
