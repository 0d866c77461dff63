"""Running the user-facing tools (tools/*.py, tools/*.sh) in subprocesses, as a user runs them, and
reading what their runs logged; a tool's ``--help`` from its ``main`` in this process."""
import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool_env(env=None) -> dict:
    """The environment of tool runs: one OpenMP thread, warnings off, ``env`` added."""
    return dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **(env or {}))


def run_tool(cmd, env=None, timeout=900, fails=False) -> str:
    """Run ``cmd`` in the repository root (see :func:`tool_env`); assert it succeeds (with
    ``fails``: that it fails), showing the end of its output otherwise; return stdout + stderr."""
    proc = subprocess.run(cmd, cwd=ROOT, env=tool_env(env), capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert (proc.returncode != 0) == fails, output[-4000:]
    return output


def tool_help(name: str) -> str:
    """What ``python tools/NAME --help`` prints, from the tool's ``main`` run in this process (as
    the other in-process tool tests; a fresh process would only pay the imports again)."""
    tool = runpy.run_path(os.path.join(ROOT, 'tools', name), run_name=name[:-len('.py')])
    out, argv = io.StringIO(), sys.argv
    sys.argv = [os.path.join('tools', name)]  # argparse's prog
    try:
        with contextlib.redirect_stdout(out):
            tool['main'](['--help'])
    except SystemExit as exit_info:
        assert exit_info.code == 0, f'{name} --help exited with {exit_info.code}'
    else:
        raise AssertionError(f'{name} --help did not exit')
    finally:
        sys.argv = argv
    return out.getvalue()


def scalars(work_dir: str):
    """Every line of the (only) run's ``vis_data/scalars.json`` in ``work_dir``."""
    (run_dir, ) = [d for d in os.listdir(work_dir) if re.fullmatch(r'\d{8}_\d{6}', d)]
    with open(os.path.join(work_dir, run_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


def data_overrides(data_root: str) -> str:
    """Config lines pointing the DINO demo config at the COCO-layout data under ``data_root``."""
    return f'''
data_root = {data_root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
model = dict(backbone=dict(init_cfg=dict(checkpoint=data_root + 'swin_t.pth')))
'''
