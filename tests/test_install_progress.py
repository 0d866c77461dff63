"""tools/install.sh's with_progress (used for the torch install and the mmcv build): it reports the
elapsed time and the log path while a long command runs, and fails with the log's tail."""
import re
import subprocess

from tool_runs import ROOT

LOAD = ("set -euo pipefail; LOG=\"$1\"; eval \"$(sed -n '/^say()/p;/^die()/p;"
        "/^PROGRESS_EVERY=/p;/^with_progress()/,/^}/p' tools/install.sh)\"; ")


def run_helper(command, log, every='1'):
    return subprocess.run(['bash', '-c', LOAD + command, 'bash', str(log)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env={'PATH': '/usr/bin:/bin',
                                                                'DR2NET_PROGRESS_SECONDS': every})


def test_progress_lines_name_the_elapsed_time_and_the_log(tmp_path):
    log = tmp_path / 'install.log'
    proc = run_helper('with_progress "mmcv build" bash -c "echo compiling; sleep 3"', log)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) >= 2, proc.stdout
    assert re.fullmatch(rf'\[install\] mmcv build: still running, \d+s elapsed \(log: {log}\)',
                        lines[0]), lines[0]
    assert 'compiling' in log.read_text()


def test_a_failing_step_shows_the_log_tail(tmp_path):
    log = tmp_path / 'install.log'
    proc = run_helper('with_progress "torch install" bash -c "echo no such version; exit 3"', log)
    assert proc.returncode == 1
    assert 'no such version' in proc.stderr and f'see {log}' in proc.stderr
