"""Running the user-facing tools (tools/*.py, tools/*.sh) in subprocesses, as a user runs them, and
reading what their runs logged."""
import json
import os
import re
import subprocess

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
