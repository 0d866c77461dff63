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


def epoch_options(epochs: int, warmup_epochs: int) -> list:
    """``--cfg-options`` for a demo schedule of ``epochs`` epochs: validation and a checkpoint at
    the end, the cosine phase (``param_scheduler.1``) after ``warmup_epochs`` of warm-up, and
    AlphaBetaHook (``custom_hooks.0``) reaching its end point at half of the epochs."""
    return ['--cfg-options', f'train_cfg.max_epochs={epochs}', f'train_cfg.val_begin={epochs}',
            f'train_cfg.val_interval={epochs}', f'param_scheduler.1.T_max={epochs - warmup_epochs}',
            f'param_scheduler.1.end={epochs}', f'default_hooks.checkpoint.interval={epochs}',
            f'custom_hooks.0.end_epoch={max(epochs // 2, 1)}']


def train_then_test(python: str, config: str, work_dir: str, options: list, show: str,
                    metric: 're.Pattern', titles: tuple) -> dict:
    """``tools/train.py config`` into ``work_dir``, then ``tools/test.py`` on its last checkpoint,
    each under the step title of ``titles``; returns the checkpoint, both wall times and
    ``values``, the groups of ``metric``'s last match in the test output (floats). A test output
    without a match ends the demo, naming the log."""
    os.makedirs(work_dir, exist_ok=True)
    start = step(titles[0])
    run_logged([python, 'tools/train.py', config, '--work-dir', work_dir, *options],
               os.path.join(work_dir, 'train_output.log'), show)
    train_seconds = time.time() - start
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    start = step(titles[1].format(checkpoint=checkpoint))
    log = os.path.join(work_dir, 'test_output.log')
    output = run_logged([python, 'tools/test.py', config, checkpoint, '--work-dir', work_dir], log,
                        show)
    found = metric.findall(output)
    if not found:
        raise SystemExit(f'tools/test.py printed no {metric.pattern!r}; see {log}')
    last = found[-1] if isinstance(found[-1], tuple) else (found[-1], )
    return dict(config=config, values=[float(v) for v in last], train_seconds=train_seconds,
                test_seconds=time.time() - start, checkpoint=checkpoint)
