"""What the demo scripts (tools/demo*.py) share: step titles and running a tool in a subprocess with
a filtered live view of its output and the full output in a log file (:func:`run_logged`)."""
import os
import re
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# lines of third-party noise left out of the live view (they stay in the log)
NOISE = re.compile(r'^(USDT:|\[W\d|ERROR:.*DeviceProperties|.*Warning|\s*warnings.warn)')


def step(title: str) -> float:
    """Print a step title; return the start time."""
    print(f'\n=== {title}', flush=True)
    return time.time()


# the Dr²Net fields of a training log line, shown even when the line is cut
DR2NET_FIELDS = re.compile(r'\b(alpha|beta|reconstruction_error_log10|skipped_steps): \S+')


def brief_line(line: str, width: int = 160) -> str:
    """``line`` cut to ``width`` characters, with its α/β fields (``alpha: 0.3000 beta: 0.7000``,
    the log10 reconstruction error, skipped steps) appended when the cut dropped them."""
    line = line.rstrip()
    if len(line) <= width:
        return line
    fields = [m.group(0) for m in DR2NET_FIELDS.finditer(line, width)]
    return line[:width] + (' ... ' + '  '.join(fields) if fields else '')


def run_logged(cmd, log_path: str, show=None, brief=brief_line) -> str:
    """Run ``cmd`` in the repository root, print ``brief(line)`` for the output lines matching the
    regex ``show`` (None: all but :data:`NOISE`) as they come, keep the whole output in ``log_path``
    and return it. A failing command ends the demo with its exit code and the log's path."""
    print('$ ' + ' '.join(cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONWARNINGS='ignore')
    lines = []
    with open(log_path, 'w') as log, subprocess.Popen(cmd, cwd=ROOT, env=env,
                                                      stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if (show is None and not NOISE.match(line)) or (show and re.search(show, line)):
                print('  ' + brief(line), flush=True)
    if proc.returncode:
        raise SystemExit(f'{cmd[1]} failed (exit {proc.returncode}); full log: {log_path}')
    return ''.join(lines)
