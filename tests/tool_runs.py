"""Running the user-facing tools (tools/*.py, tools/*.sh) in subprocesses, as a user runs them, and
reading what their runs logged."""
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(cmd, env=None, timeout=900) -> str:
    """Run ``cmd`` in the repository root (one OpenMP thread, warnings off, ``env`` added); assert it
    succeeds (showing the end of its output otherwise) and return stdout + stderr."""
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def scalars(work_dir: str):
    """Every line of the (only) run's ``vis_data/scalars.json`` in ``work_dir``."""
    (run_dir, ) = [d for d in os.listdir(work_dir) if re.fullmatch(r'\d{8}_\d{6}', d)]
    with open(os.path.join(work_dir, run_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]
