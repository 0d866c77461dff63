"""Spec of AlphaBetaHook (dr2net_mm.engine): the dynamic finetuning schedule of (α, β), with real
MMEngine Runners on CPU (tiny models, a few iterations each)."""
import functools
import glob
import json
import math
import os
import pickle
import socket
import uuid

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn

import dr2net_mm  # noqa: F401  (registers AlphaBetaHook)
from dr2net_mm.core import ReversibleSequence
from dr2net_mm.core.fixed_point import nearest_beta
from dr2net_mm.engine import AlphaBetaHook, ReversibleGuardHook
from dr2net_mm.engine.alpha_beta_hook import coefficient_setters
from dr2net_mm.runner_utils import NO_WEIGHTS_ONLY_ENV, WEIGHTS_ONLY_ENV, OwnCheckpointRunner
from toys import MLPBranch

POLICIES = ('linear', 'exp', 'log')
SCHEDULES = ('simultaneous', 'alpha_first', 'beta_first')
START, END = (1.0, 0.1), (0.3, 0.7)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is much faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# The reference formulas (written independently of the hook)
# ------------------------------------------------------------------------------------------------
def expected(t, tau, eta, policy='linear', schedule='simultaneous', start=START, end=END, k=5.0):
    p = min(1.0, (t // eta) * eta / tau)
    curves = {
        'linear': lambda u: u,
        'exp': lambda u: (math.exp(k * u) - 1) / (math.exp(k) - 1),
        'log': lambda u: math.log(1 + (math.exp(k) - 1) * u) / k,
    }
    f = curves[policy]
    first, second = f(min(1.0, 2 * p)), f(max(0.0, 2 * p - 1))
    fa, fb = {'simultaneous': (f(p), f(p)), 'alpha_first': (first, second),
              'beta_first': (second, first)}[schedule]
    return start[0] + (end[0] - start[0]) * fa, start[1] + (end[1] - start[1]) * fb


def assert_pairs(got, want):
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, abs=1e-12), f'iteration {t}: got {g}, want {w}'


# ------------------------------------------------------------------------------------------------
# A tiny classifier: Linear embed -> (recorded) ReversibleSequence of MLP branches -> head
# ------------------------------------------------------------------------------------------------
class RecordedStage(nn.Module):
    """A reversible stage behind a ``set_coefficients`` that records its calls; its training forward
    records the (α, β) the stage actually computes with, i.e. what the model received that iteration.
    The hook must set this outer module only (it propagates to the inner stage)."""

    def __init__(self, stage: ReversibleSequence):
        super().__init__()
        self.stage = stage
        self.calls, self.seen = [], []

    def set_coefficients(self, alpha, beta):
        self.calls.append((alpha, beta))
        self.stage.set_coefficients(alpha, beta)

    def forward(self, x):
        if self.training:
            self.seen.append((self.stage.alpha, self.stage.beta))
        return self.stage(x)


class ToyClassifier(BaseModel):

    def __init__(self, depth=4, channels=8, in_dim=4, classes=3, stream_dtype=torch.float64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(in_dim, channels)
        self.body = RecordedStage(ReversibleSequence([MLPBranch(channels) for _ in range(depth)],
                                                     stream_dtype=stream_dtype))
        self.head = nn.Linear(channels, classes)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        logits = self.head(self.body(self.embed(x)).mean(1))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits.float(), torch.stack(data_samples)))
        if mode == 'predict':
            return list(logits.argmax(-1))
        return logits


class SwinClassifier(BaseModel):
    """A tiny Dr2NetSwin (16 channels, depths 2-2, 32×32 input) with a linear head."""

    def __init__(self, stream_dtype=torch.float32, seed=0):
        super().__init__()
        from dr2net_mm.models import Dr2NetSwin
        torch.manual_seed(seed)
        self.backbone = Dr2NetSwin(pretrain_img_size=32, embed_dims=16, depths=(2, 2),
                                   num_heads=(1, 2), window_size=4, strides=(4, 2), out_indices=(1, ),
                                   drop_path_rate=0.0, stream_dtype=stream_dtype)
        self.backbone.init_weights()
        self.head = nn.Linear(32, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        logits = self.head(self.backbone(x)[-1].mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, torch.stack(data_samples)))
        return list(logits.argmax(-1))


class ToyData(torch.utils.data.Dataset):

    def __init__(self, n=16, shape=(6, 4), classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.randint(0, classes, (n, ), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


class CoefficientMetric(BaseMetric):
    """Records the (α, β) the model evaluates with."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage
        self.at_eval = []

    def process(self, data_batch, data_samples):
        self.results.append((self.stage.alpha, self.stage.beta))

    def compute_metrics(self, results):
        self.at_eval.append(results[0])
        return dict(alpha_at_eval=results[0][0])


class Snapshots(Hook):
    """Test probe: weights before/after every training iteration (after the other hooks)."""
    priority = 'LOWEST'

    def __init__(self):
        self.before, self.after = {}, {}

    @staticmethod
    def _weights(runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.before[runner.iter] = self._weights(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.after[runner.iter] = self._weights(runner)


class ForceThreshold(Hook):
    """Test probe: at the given iterations, lower every stage's ``max_error`` to a tiny value (so the
    monitored error of that iteration is 'above max_error'); restore it at the next iteration."""
    priority = 'VERY_HIGH'

    def __init__(self, iterations, rank=None):
        self.iterations, self.rank, self.saved = set(iterations), rank, None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        from dr2net_mm.core import reversible_stages
        stages = reversible_stages(runner.model)
        if self.saved is not None:
            for stage, value in zip(stages, self.saved):
                stage.max_error = value
            self.saved = None
        if runner.iter in self.iterations and (self.rank is None or runner.rank == self.rank):
            self.saved = [stage.max_error for stage in stages]
            for stage in stages:
                stage.max_error = 1e-300


def make_runner(work_dir, model=None, hook=None, max_iters=8, max_epochs=None, ckpt_interval=None,
                load_from=None, resume=False, optim_wrapper=None, extra_hooks=(), val_metric=None,
                dataset=None, runner_class=OwnCheckpointRunner, **kwargs):
    """A real MMEngine Runner on CPU: iteration-based unless ``max_epochs`` is given. By default
    the class tools/train.py resumes with, which unpickles the checkpoints these runs wrote."""
    by_epoch = max_epochs is not None
    model = model if model is not None else ToyClassifier()
    train_cfg = dict(by_epoch=True, max_epochs=max_epochs) if by_epoch else \
        dict(by_epoch=False, max_iters=max_iters)
    sampler = dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler', shuffle=True)
    cfg = dict(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'abh_{uuid.uuid4().hex[:12]}',  # a fresh visualizer/logger per runner
        train_dataloader=dict(dataset=dataset if dataset is not None else ToyData(),
                              sampler=sampler, batch_size=4, num_workers=0,
                              collate_fn=dict(type='pseudo_collate')),
        train_cfg=train_cfg,
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', by_epoch=by_epoch, interval=ckpt_interval or -1,
                            save_last=False)),
        custom_hooks=[hook if hook is not None else dict(type='AlphaBetaHook', end_iter=4),
                      *extra_hooks],
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
        randomness=dict(seed=0),
        load_from=load_from,
        resume=resume,
        log_level='WARNING',
        default_scope='mmengine')
    if val_metric is not None:
        cfg.update(val_dataloader=dict(dataset=ToyData(n=4), sampler=dict(type='DefaultSampler',
                                                                          shuffle=False),
                                       batch_size=4, num_workers=0,
                                       collate_fn=dict(type='pseudo_collate')),
                   val_evaluator=[val_metric], val_cfg=dict())
        train_cfg['val_interval'] = kwargs.pop('val_interval', 2)
    cfg.update(kwargs)
    return runner_class(**cfg)


def the_hook(runner) -> AlphaBetaHook:
    return next(h for h in runner.hooks if isinstance(h, AlphaBetaHook))


def read_scalars(runner):
    files = glob.glob(os.path.join(runner.log_dir, 'vis_data', 'scalars.json'))
    assert files, f'no scalars.json under {runner.log_dir}'
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def weights(model):
    model = model.module if hasattr(model, 'module') else model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_weights_changed(a, b):
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# ------------------------------------------------------------------------------------------------
# 1. The applied values follow the formulas
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('policy', POLICIES)
@pytest.mark.parametrize('schedule', SCHEDULES)
def test_runner_applies_schedule(tmp_path, policy, schedule):
    model = ToyClassifier(depth=2)
    hook = dict(type='AlphaBetaHook', end_iter=7, interval=2, policy=policy, schedule=schedule)
    runner = make_runner(tmp_path, model, hook, max_iters=11)
    runner.train()
    seen = model.body.seen
    assert_pairs(seen, [nearest_beta(expected(t, 7, 2, policy, schedule)) for t in range(11)])
    # η holds the values between updates; the ends are exact; set once per iteration (+ before_train)
    assert all(seen[t] == seen[t + 1] for t in range(0, 10, 2))
    assert seen[0] == seen[1] == START and seen[8:] == [END] * 3
    # the stages use the hook's α and the nearest fraction n/d of its β (exact streams' β)
    assert [nearest_beta(pair) for pair in model.body.calls] == [seen[0]] + seen
    # α non-increasing, β non-decreasing
    assert all(a1 <= a0 and b1 >= b0 for (a0, b0), (a1, b1) in zip(seen, seen[1:]))
    hook_obj = the_hook(runner)
    assert [nearest_beta(hook_obj.coefficients_at(t)) for t in range(11)] == seen
    assert hook_obj.current == END


def test_runner_by_epoch_end_epoch(tmp_path):
    """end_epoch is converted with the loader length: 16 samples / batch 4 = 4 iterations per epoch."""
    model = ToyClassifier(depth=2)
    hook = dict(type='AlphaBetaHook', end_epoch=2, interval=3)
    runner = make_runner(tmp_path, model, hook, max_epochs=3)
    runner.train()
    assert_pairs(model.body.seen, [nearest_beta(expected(t, 8, 3)) for t in range(12)])
    hook_obj = the_hook(runner)
    assert hook_obj.resolve_tau(runner) == 8
    assert hook_obj.coefficients_at(9, runner) == END and hook_obj.coefficients_at(8, runner) != END
    # fractional epochs
    half = AlphaBetaHook(end_epoch=1.5)
    assert half.resolve_tau(runner) == 6 and half.coefficients_at(6, runner) == END


def test_validation_uses_current_values(tmp_path):
    """Evaluation during and after training uses the values of the latest training iteration; the hook
    does not touch them at val/test time."""
    model = ToyClassifier(depth=2)
    metric = CoefficientMetric(model.body.stage)
    runner = make_runner(tmp_path, model, dict(type='AlphaBetaHook', end_iter=8), max_iters=6,
                         val_metric=metric, val_interval=2)
    runner.train()
    seen = model.body.seen
    assert metric.at_eval == [seen[1], seen[3], seen[5]]
    runner.val()
    assert metric.at_eval[-1] == seen[5] == (model.body.stage.alpha, model.body.stage.beta)


# ------------------------------------------------------------------------------------------------
# 2. Resume
# ------------------------------------------------------------------------------------------------
def test_resume_matches_uninterrupted_run(tmp_path):
    hook = dict(type='AlphaBetaHook', end_iter=8, interval=3, policy='exp')
    full_model = ToyClassifier()
    full = make_runner(tmp_path / 'full', full_model, hook, max_iters=12, ckpt_interval=5)
    full.train()
    ckpt = tmp_path / 'full' / 'iter_5.pth'
    assert ckpt.exists()

    resumed_model = ToyClassifier(seed=123)  # different init: everything must come from the checkpoint
    resumed = make_runner(tmp_path / 'resumed', resumed_model, hook, max_iters=12,
                          load_from=str(ckpt), resume=True)
    resumed.train()
    assert resumed_model.body.seen == full_model.body.seen[5:]
    assert_same_weights(weights(resumed.model), weights(full.model))


def test_only_the_resume_unpickles_in_full(tmp_path, monkeypatch):
    """MMEngine's checkpoints need full unpickling (torch >= 2.6 refuses them by default): the
    resume gets it, the process keeps torch's weights-only default before and after."""
    monkeypatch.delenv(NO_WEIGHTS_ONLY_ENV, raising=False)
    monkeypatch.delenv(WEIGHTS_ONLY_ENV, raising=False)
    first = make_runner(tmp_path / 'a', ToyClassifier(), max_iters=2, ckpt_interval=2)
    first.train()
    ckpt = str(tmp_path / 'a' / 'iter_2.pth')
    resumed = make_runner(tmp_path / 'b', ToyClassifier(), max_iters=3, load_from=ckpt,
                          resume=True)
    resumed.train()
    assert resumed.iter == 3 and NO_WEIGHTS_ONLY_ENV not in os.environ
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) >= (2, 6):
        with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
            torch.load(ckpt)
        plain = make_runner(tmp_path / 'c', ToyClassifier(), max_iters=3, load_from=ckpt,
                            resume=True, runner_class=Runner)
        with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
            plain.train()


class ShardedCheckpointRunner(OwnCheckpointRunner):
    """Saves every checkpoint as a directory of shards, as DeepSpeed/FSDP runs do."""

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        folder = os.path.join(out_dir, filename)
        os.makedirs(folder)
        for shard in ('shard_0.pt', 'shard_1.pt'):
            torch.save(weights(self.model), os.path.join(folder, shard))


def test_safe_checkpoints_keep_max_keep_ckpts_checkpoint_directories(tmp_path):
    """SafeCheckpointHook with checkpoints that are directories: each is published whole, the ones
    beyond max_keep_ckpts are removed with their files (as mmengine's CheckpointHook does), and an
    incomplete one left by an interrupted run is cleaned up."""
    stale = tmp_path / 'iter_9.pth.tmp'
    stale.mkdir()
    (stale / 'shard_0.pt').write_bytes(b'cut off')
    runner = make_runner(tmp_path, ToyClassifier(depth=2), max_iters=5,
                         runner_class=ShardedCheckpointRunner,
                         default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False,
                                                            interval=1, max_keep_ckpts=2)))
    runner.train()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('iter_'))
    assert kept == ['iter_4.pth', 'iter_5.pth']
    for name in kept:
        assert sorted(os.listdir(tmp_path / name)) == ['shard_0.pt', 'shard_1.pt']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_5.pth')


def _error_aware_hook(**kwargs):
    cfg = dict(type='AlphaBetaHook', interval=2, target_error=1e-3, patience=2, path_steps=10,
               max_error=1e-1)
    cfg.update(kwargs)
    return cfg


def test_resume_error_aware_state(tmp_path):
    """The error-aware walk (step, good-window count, open window, stopped flag) and the guard counter
    are checkpointed; a run resumed mid-window continues exactly like the uninterrupted one."""

    def model():  # float32 streams, 12 branches: huge error at (1, 0.1), small near (0.3, 0.7)
        return ToyClassifier(depth=12, stream_dtype=torch.float32)

    full_model = model()
    full = make_runner(tmp_path / 'full', full_model, _error_aware_hook(), max_iters=24,
                       ckpt_interval=9)
    full.train()
    hook_full = the_hook(full)
    assert hook_full.search.stopped and hook_full.skipped_steps > 0  # the run exercises walk and guard
    state = torch.load(tmp_path / 'full' / 'iter_9.pth', weights_only=False)['meta']['alpha_beta_hook']
    assert state['iter'] == 9 and state['window_error'] is not None and not state['stopped']

    resumed_model = model()
    resumed = make_runner(tmp_path / 'resumed', resumed_model, _error_aware_hook(), max_iters=24,
                          load_from=str(tmp_path / 'full' / 'iter_9.pth'), resume=True)
    resumed.train()
    hook_resumed = the_hook(resumed)
    assert resumed_model.body.seen == full_model.body.seen[9:]
    for name in ('step', 'stopped', 'end_point_iter', 'good_windows'):
        assert getattr(hook_resumed.search, name) == getattr(hook_full.search, name), name
    for name in ('end_point', 'skipped_steps'):
        assert getattr(hook_resumed, name) == getattr(hook_full, name), name
    assert_same_weights(weights(resumed.model), weights(full.model))


def test_resume_reads_a_checkpoint_written_before_the_guard_split(tmp_path):
    """Checkpoints written before ReversibleGuardHook existed hold the guard's counter in
    checkpoint['meta']['alpha_beta_hook'] (state version 1) and no 'reversible_guard' entry: a resume
    from one continues exactly like the uninterrupted run, counter included."""

    def model():
        return ToyClassifier(depth=12, stream_dtype=torch.float32)

    full = make_runner(tmp_path / 'full', model(), _error_aware_hook(), max_iters=10, ckpt_interval=5)
    full.train()
    checkpoint = torch.load(tmp_path / 'full' / 'iter_5.pth', weights_only=False)
    meta = checkpoint['meta']
    guard_state = meta.pop('reversible_guard')
    assert guard_state['skipped_steps'] > 0  # there is a counter to carry over
    meta['alpha_beta_hook'].update(version=1, skipped_steps=guard_state['skipped_steps'])
    old = tmp_path / 'old_layout.pth'
    torch.save(checkpoint, old)

    resumed_model = model()
    resumed = make_runner(tmp_path / 'resumed', resumed_model, _error_aware_hook(), max_iters=10,
                          load_from=str(old), resume=True)
    resumed.train()
    assert resumed_model.body.seen == full.model.body.seen[5:]
    assert the_hook(resumed).skipped_steps == the_hook(full).skipped_steps
    assert the_hook(resumed).search.state_dict() == the_hook(full).search.state_dict()
    assert_same_weights(weights(resumed.model), weights(full.model))


def test_load_from_without_resume_restarts_schedule(tmp_path):
    first = make_runner(tmp_path / 'a', ToyClassifier(), dict(type='AlphaBetaHook', end_iter=4),
                        max_iters=6, ckpt_interval=6)
    first.train()
    model = ToyClassifier()
    second = make_runner(tmp_path / 'b', model, dict(type='AlphaBetaHook', end_iter=4), max_iters=2,
                         load_from=str(tmp_path / 'a' / 'iter_6.pth'))
    second.train()
    assert model.body.seen == [START, expected(1, 4, 1)]


# ------------------------------------------------------------------------------------------------
# 3. Distributed (2 processes, gloo, MMDistributedDataParallel)
# ------------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, root):
    import torch.distributed as tdist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # MMEngine's init_dist for launcher='pytorch' calls torch.cuda.set_device; on a CPU-only machine
    # the group is initialised here (the Runner then skips init_dist) and DDP gets device_ids=None.
    tdist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        model = ToyClassifier()
        snapshots = Snapshots()
        runner = make_runner(
            os.path.join(root, 'work'), model, dict(type='AlphaBetaHook', end_iter=4, interval=2),
            max_iters=6, launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo')),
            cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)),
            extra_hooks=[ForceThreshold([3], rank=0), snapshots])
        runner.train()
        hook = the_hook(runner)
        torch.save(dict(wrapper=type(runner.model).__name__, calls=model.body.calls,
                        seen=model.body.seen, skipped=hook.skipped_steps,
                        weights=weights(runner.model), before3=snapshots.before[3],
                        after3=snapshots.after[3], before2=snapshots.before[2],
                        after2=snapshots.after[2]), os.path.join(root, f'rank{rank}.pt'))
    finally:
        tdist.destroy_process_group()


def test_ddp_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    want = [expected(t, 4, 2) for t in range(6)]
    for res in results:
        assert res['wrapper'] == 'MMDistributedDataParallel'
        # set on the unwrapped model on both ranks (which run at the nearest fraction of β)
        assert_pairs(res['seen'], [nearest_beta(pair) for pair in want])
        assert_pairs(res['calls'], [want[0]] + want)
        # rank 0 alone saw a 'bad' error at iteration 3: both ranks skipped that step, no other
        assert res['skipped'] == 1
        assert_same_weights(res['before3'], res['after3'])
        assert_weights_changed(res['before2'], res['after2'])
    assert_same_weights(results[0]['weights'], results[1]['weights'])


# ------------------------------------------------------------------------------------------------
# 4. Logged scalars
# ------------------------------------------------------------------------------------------------
def test_scalars_file(tmp_path):
    model = ToyClassifier(depth=2)
    runner = make_runner(tmp_path, model, dict(type='AlphaBetaHook', end_iter=6, interval=2),
                         max_iters=8, log_level='INFO')
    runner.train()
    rows = [r for r in read_scalars(runner) if 'alpha' in r]
    assert [r['step'] for r in rows] == list(range(1, 9))
    for row, (alpha, beta) in zip(rows, model.body.seen):
        assert row['alpha'] == pytest.approx(alpha) and row['beta'] == pytest.approx(beta)
        assert 0 <= row['reconstruction_error'] < 1e-4  # float64 streams: small
        assert row['skipped_steps'] == 0
    log_files = glob.glob(os.path.join(runner.log_dir, '*.log'))
    assert log_files and 'alpha: 0.3000' in open(log_files[0]).read()


# ------------------------------------------------------------------------------------------------
# 5. Error-aware mode and the guard
# ------------------------------------------------------------------------------------------------
def test_error_aware_stops_below_target_swin(tmp_path):
    """On a tiny Dr2NetSwin (float32 streams) the walk stops at the first point whose reconstruction
    error stays below target for `patience` windows; it logs the end point and keeps it fixed."""
    data = ToyData(n=8, shape=(3, 32, 32))
    model = SwinClassifier()
    target = 8e-6
    hook = _error_aware_hook(target_error=target, patience=2, path_steps=10, interval=2,
                             max_error=None)
    runner = make_runner(tmp_path, model, hook, max_iters=24, dataset=data, log_level='INFO')
    runner.train()
    h = the_hook(runner)
    assert h.search.stopped and h.end_point is not None and 0 < h.search.step < h.num_steps
    assert h.end_point == h.point_at_step(h.search.step) == h.current
    assert model.backbone.coefficients == nearest_beta(h.end_point)
    rows = [r for r in read_scalars(runner) if 'alpha' in r]
    errors = [r['reconstruction_error'] for r in rows]
    points = [(r['alpha'], r['beta']) for r in rows]
    stop = h.search.end_point_iter  # iterations [stop - patience·η, stop) ran at the end point, below target
    assert all(p == pytest.approx(h.end_point) for p in points[stop - 4:])
    assert max(errors[stop - 4:stop]) < target
    # the previous point's window was not below target (that is why the walk moved on)
    previous = h.point_at_step(h.search.step - 1)
    assert any(e >= target for e, p in zip(errors, points) if p == pytest.approx(previous))
    log = open(glob.glob(os.path.join(runner.log_dir, '*.log'))[0]).read()
    assert 'error-aware end point' in log


def test_guard_skips_imprecise_steps(tmp_path):
    """Float32 streams over 12 branches at (1, 0.1): the reconstruction error is huge, so those steps are
    dropped (weights unchanged) until the schedule reaches precise points; counted in the scalars."""
    model = ToyClassifier(depth=12, stream_dtype=torch.float32)
    snapshots = Snapshots()
    runner = make_runner(tmp_path, model, dict(type='AlphaBetaHook', end_iter=10, max_error=1e-2),
                         max_iters=10, extra_hooks=[snapshots])
    runner.train()
    rows = [r for r in read_scalars(runner) if 'alpha' in r]
    skipped = 0
    for t, row in enumerate(rows):
        bad = not (row['reconstruction_error'] <= 1e-2)
        skipped += bad
        assert row['skipped_steps'] == skipped
        if bad:
            assert_same_weights(snapshots.before[t], snapshots.after[t])
        else:
            assert_weights_changed(snapshots.before[t], snapshots.after[t])
    assert 0 < skipped < len(rows) and the_hook(runner).skipped_steps == skipped
    assert 'skipped an optimizer step' in open(glob.glob(os.path.join(runner.log_dir,
                                                                      '*.log'))[0]).read()


def test_guard_with_gradient_accumulation(tmp_path):
    """accumulative_counts=2: steps happen after iterations 1, 3, 5. A bad error on iteration 2 (a
    micro-batch without a step) drops the step of iteration 3; nothing is dropped at iteration 2."""
    snapshots = Snapshots()
    runner = make_runner(
        tmp_path, ToyClassifier(), dict(type='AlphaBetaHook', end_iter=4), max_iters=6,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9), accumulative_counts=2),
        extra_hooks=[ForceThreshold([2]), snapshots])
    runner.train()
    before, after = snapshots.before, snapshots.after
    assert the_hook(runner).skipped_steps == 1
    for t in (0, 2, 3):  # no step at 0 and 2; the step at 3 was dropped
        assert_same_weights(before[t], after[t])
    for t in (1, 5):
        assert_weights_changed(before[t], after[t])
    optimizer = runner.optim_wrapper.optimizer
    assert all(p.grad is None or not p.grad.any() for g in optimizer.param_groups for p in g['params'])


@pytest.mark.skipif(not hasattr(torch.amp, 'GradScaler'),
                    reason='this torch has no CPU GradScaler (torch.amp.GradScaler, torch >= 2.3)')
def test_guard_with_amp_optim_wrapper(tmp_path, monkeypatch):
    """AmpOptimWrapper: the GradScaler's step calls optimizer.step(), where the guard drops the grads.
    MMEngine only builds it with an accelerator; here it gets torch's CPU GradScaler."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp, 'GradScaler', functools.partial(torch.amp.GradScaler, 'cpu',
                                                             init_scale=2.0**8))
    snapshots = Snapshots()
    runner = make_runner(
        tmp_path, ToyClassifier(), dict(type='AlphaBetaHook', end_iter=4), max_iters=4,
        optim_wrapper=dict(type='AmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        extra_hooks=[ForceThreshold([1]), snapshots])
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'AmpOptimWrapper'
    assert runner.optim_wrapper.loss_scaler.is_enabled()
    assert the_hook(runner).skipped_steps == 1
    assert_same_weights(snapshots.before[1], snapshots.after[1])
    for t in (0, 2, 3):
        assert_weights_changed(snapshots.before[t], snapshots.after[t])


def test_guard_off(tmp_path):
    model = ToyClassifier(depth=12, stream_dtype=torch.float32)
    runner = make_runner(tmp_path, model, dict(type='AlphaBetaHook', end_iter=10, guard=False),
                         max_iters=2)
    runner.train()
    assert the_hook(runner).skipped_steps == 0 and not the_hook(runner).guard_hook._handles


class CountGuards(Hook):
    """Test probe: how many step pre-hooks the optimizer and forward hooks the data preprocessor carry
    during training (one guard installs one of each)."""
    priority = 'LOWEST'

    def __init__(self):
        self.counts = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        self.counts.append((len(runner.optim_wrapper.optimizer._optimizer_step_pre_hooks),
                            len(model.data_preprocessor._forward_hooks)))


def the_guard(runner) -> ReversibleGuardHook:
    return next(h for h in runner.hooks if isinstance(h, ReversibleGuardHook))


def test_guard_hook_alone_skips_bad_steps_and_logs_without_a_schedule(tmp_path):
    """A config may list only ReversibleGuardHook: nothing sets (α, β), the errors and skips are
    logged, the step after a bad reversible backward is dropped and the others are not."""
    model = ToyClassifier()
    snapshots = Snapshots()
    runner = make_runner(tmp_path, model, dict(type='ReversibleGuardHook'), max_iters=4,
                         extra_hooks=[ForceThreshold([1]), snapshots])
    runner.train()
    assert not any(isinstance(h, AlphaBetaHook) for h in runner.hooks)
    assert model.body.calls == [] and set(model.body.seen) == {START}  # the stage's own (1, 0.1)
    assert the_guard(runner).skipped_steps == 1
    assert_same_weights(snapshots.before[1], snapshots.after[1])
    for t in (0, 2, 3):
        assert_weights_changed(snapshots.before[t], snapshots.after[t])
    rows = [r for r in read_scalars(runner) if 'skipped_steps' in r]
    assert [r['skipped_steps'] for r in rows] == [0, 1, 1, 1]
    assert all(0 <= r['reconstruction_error'] < 1e-4 and 'alpha' not in r for r in rows)
    assert all(r['reconstruction_error_log10'] < -4 for r in rows)


def test_guard_listed_with_alpha_beta_hook_is_installed_once(tmp_path):
    """AlphaBetaHook (guard=True) plus a listed ReversibleGuardHook: one step pre-hook, one
    preprocessor hook; the listed guard does the work (its max_error applies) and AlphaBetaHook
    reports its counter. Alone, AlphaBetaHook's own guard installs the same one of each."""
    counts = {}
    for name, hooks in (('alone', []), ('both', [dict(type='ReversibleGuardHook', max_error=1e-2)])):
        probe = CountGuards()
        runner = make_runner(tmp_path / name, ToyClassifier(depth=12, stream_dtype=torch.float32),
                             dict(type='AlphaBetaHook', end_iter=10, max_error=1e-2), max_iters=4,
                             extra_hooks=[*hooks, probe])
        runner.train()
        counts[name] = (probe.counts, the_hook(runner).skipped_steps)
        if name == 'both':
            hook, guard = the_hook(runner), the_guard(runner)
            assert hook.guard_hook is guard and hook.own_guard.skipped_steps == 0
            assert hook.skipped_steps == guard.skipped_steps > 0
    assert counts['alone'][0] == counts['both'][0] == [(1, 1)] * 4
    assert counts['alone'][1] == counts['both'][1]


def test_error_aware_mode_reads_a_listed_guard(tmp_path):
    """The walk with a listed ReversibleGuardHook is the walk with AlphaBetaHook's own guard."""
    runs = {}
    for name, hooks in (('own', []), ('listed', [dict(type='ReversibleGuardHook', max_error=1e-1)])):
        model = ToyClassifier(depth=12, stream_dtype=torch.float32)
        runner = make_runner(tmp_path / name, model, _error_aware_hook(), max_iters=12,
                             extra_hooks=hooks)
        runner.train()
        runs[name] = (model.body.seen, the_hook(runner).search.state_dict(),
                      the_hook(runner).skipped_steps)
    assert runs['own'] == runs['listed']
    assert runs['own'][1]['step'] > 0  # the walk moved


def test_guard_listed_after_an_error_aware_hook_is_refused(tmp_path):
    runner = make_runner(tmp_path, ToyClassifier(depth=2), _error_aware_hook(), max_iters=2,
                         extra_hooks=[dict(type='ReversibleGuardHook', priority='LOW')])
    with pytest.raises(ValueError, match="runs after AlphaBetaHook.*'ABOVE_NORMAL'"):
        runner.train()


def test_guard_hook_listed_twice_is_refused(tmp_path):
    runner = make_runner(tmp_path, ToyClassifier(depth=2), dict(type='ReversibleGuardHook'),
                         max_iters=2, extra_hooks=[dict(type='ReversibleGuardHook')])
    with pytest.raises(ValueError, match='lists ReversibleGuardHook 2 times'):
        runner.train()


# ------------------------------------------------------------------------------------------------
# 6. Stream overflow: a skipped batch, not a dead run
# ------------------------------------------------------------------------------------------------
class OverflowBatch(Hook):
    """Test probe: at the given iterations (on ``rank`` only, if given) scale the first sample of the
    batch by ``scale`` (an outlier), so that the exact streams leave |x| < 2^21 in the forward."""
    priority = 'VERY_HIGH'

    def __init__(self, iterations, rank=None, scale=1e8):
        self.iterations, self.rank, self.scale = set(iterations), rank, scale

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter in self.iterations and (self.rank is None or runner.rank == self.rank):
            data_batch['inputs'][0] = data_batch['inputs'][0] * self.scale


class OptimizerProbe(Hook):
    """Test probe: the optimizer's state and whether any parameter holds a gradient, after every
    training iteration (after the other hooks)."""
    priority = 'LOWEST'

    def __init__(self):
        self.state, self.has_grad = {}, {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        optimizer = runner.optim_wrapper.optimizer
        self.state[runner.iter] = {k: v['momentum_buffer'].clone()
                                   for k, v in optimizer.state_dict()['state'].items()}
        self.has_grad[runner.iter] = any(p.grad is not None for g in optimizer.param_groups
                                         for p in g['params'])


def exact_classifier():
    return ToyClassifier(stream_dtype='exact')


def test_guard_skips_a_batch_whose_streams_overflow(tmp_path):
    """One outlier sample at iteration 1 overflows the exact streams: the batch is dropped before any
    backward (weights, optimizer state and gradients as before), counted and named in the log, its
    log row says skipped and adds no loss; training goes on, the schedule follows the iterations."""
    model = exact_classifier()
    snapshots, probe = Snapshots(), OptimizerProbe()
    runner = make_runner(tmp_path, model, dict(type='AlphaBetaHook', end_iter=4), max_iters=4,
                         extra_hooks=[OverflowBatch([1]), snapshots, probe])
    runner.train()
    hook = the_hook(runner)
    assert hook.skipped_steps == 1 and hook.guard_hook.consecutive_skips == 0
    assert_same_weights(snapshots.before[1], snapshots.after[1])
    for t in (0, 2, 3):
        assert_weights_changed(snapshots.before[t], snapshots.after[t])
    assert all(torch.equal(probe.state[0][k], probe.state[1][k]) for k in probe.state[0])
    assert not probe.has_grad[1]
    assert_pairs(model.body.seen, [nearest_beta(expected(t, 4, 1)) for t in range(4)])
    rows = [r for r in read_scalars(runner) if 'skipped' in r]
    assert [r['skipped'] for r in rows] == [0, 1, 0, 0]
    assert [r['skipped_steps'] for r in rows] == [0, 1, 1, 1]
    losses, _ = runner.message_hub.get_scalar('train/loss').data
    assert len(losses) == 3  # the skipped iteration logged no loss of its own
    log = open(glob.glob(os.path.join(runner.log_dir, '*.log'))[0]).read()
    assert ("AlphaBetaHook: skipped a batch at iteration 2: a reversible stage's exact streams "
            'overflowed on this rank (reversible stage: a stream or branch output reached |x| = ')\
        in log
    assert "this rank's samples: unnamed; no backward, weights unchanged (skipped steps: 1)" in log
    stage = model.body.stage  # after training the stage raises again, as used alone
    assert stage.record_overflow is False and stage.overflow is None


def test_guard_on_overflow_raise_stops_the_run_with_the_stage_message(tmp_path):
    model = exact_classifier()
    runner = make_runner(tmp_path, model, dict(type='ReversibleGuardHook', on_overflow='raise'),
                         max_iters=4, extra_hooks=[OverflowBatch([1])])
    with pytest.raises(OverflowError, match=r"ReversibleGuardHook: stopped at iteration 2: a "
                       r"reversible stage's exact streams overflowed on this rank \(reversible "
                       r"stage: a stream or branch output reached \|x\| = .*stream_dtype='float64'"
                       r".*on_overflow='raise'; 'skip' skips such batches"):
        runner.train()
    assert model.body.stage.record_overflow is False and model.body.stage.overflow is None


@pytest.mark.parametrize('overflows, stops', [([1, 2], True), ([1, 3], False)])
def test_guard_stops_after_max_consecutive_skips_in_a_row(tmp_path, overflows, stops):
    runner = make_runner(tmp_path, exact_classifier(),
                         dict(type='ReversibleGuardHook', max_consecutive_skips=2), max_iters=5,
                         extra_hooks=[OverflowBatch(overflows)])
    if stops:
        with pytest.raises(RuntimeError, match=r'ReversibleGuardHook: 2 batches in a row were '
                           r"skipped \(the last at iteration 3: a reversible stage's exact streams "
                           r'overflowed .*training is not progressing.*max_consecutive_skips'):
            runner.train()
        return
    runner.train()
    assert the_guard(runner).skipped_steps == 2 and the_guard(runner).consecutive_skips == 0


def test_error_aware_walk_gets_no_error_from_a_skipped_batch(tmp_path):
    """A skipped batch ran no backward: the walk gets no error from it (as from an iteration without
    a reversible backward), so with exact streams (error 0) it stops where a clean run stops."""
    states = {}
    for name, extra in (('clean', []), ('outlier', [OverflowBatch([1])])):
        runner = make_runner(tmp_path / name, exact_classifier(), _error_aware_hook(), max_iters=6,
                             extra_hooks=extra)
        runner.train()
        states[name] = (the_hook(runner).search.state_dict(), the_hook(runner).skipped_steps)
    assert states['clean'][0]['stopped'] and states['clean'][1] == 0
    assert states['outlier'] == (states['clean'][0], 1)


def _ddp_overflow_worker(rank, world_size, port, root):
    import datetime
    import torch.distributed as tdist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # a rank waiting for the other in a collective fails after 60 s instead of hanging the test
    tdist.init_process_group('gloo', rank=rank, world_size=world_size,
                             timeout=datetime.timedelta(seconds=60))
    try:
        snapshots = Snapshots()
        runner = make_runner(
            os.path.join(root, 'work'), exact_classifier(),
            dict(type='AlphaBetaHook', end_iter=4), max_iters=4, launcher='pytorch',
            env_cfg=dict(dist_cfg=dict(backend='gloo')),
            cfg=dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)),
            extra_hooks=[OverflowBatch([2], rank=0), snapshots])
        runner.train()
        torch.save(dict(skipped=the_hook(runner).skipped_steps, weights=weights(runner.model),
                        before=snapshots.before, after=snapshots.after),
                   os.path.join(root, f'rank{rank}.pt'))
    finally:
        tdist.destroy_process_group()


def test_ddp_overflow_on_one_rank_is_skipped_by_both(tmp_path):
    """2 gloo processes, only rank 0's batch of iteration 2 overflows: no hang, both ranks drop
    that batch (weights unchanged) and train on, and end with equal weights."""
    mp.spawn(_ddp_overflow_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    for res in results:
        assert res['skipped'] == 1
        assert_same_weights(res['before'][2], res['after'][2])
        for t in (0, 1, 3):
            assert_weights_changed(res['before'][t], res['after'][t])
    assert_same_weights(results[0]['weights'], results[1]['weights'])


# ------------------------------------------------------------------------------------------------
# Unit tests (no Runner)
# ------------------------------------------------------------------------------------------------
def test_registered_with_defaults():
    hook = HOOKS.build(dict(type='AlphaBetaHook', end_iter=10))
    assert isinstance(hook, AlphaBetaHook)
    assert (hook.start, hook.end, hook.interval, hook.policy, hook.schedule) == \
        (START, END, 1, 'linear', 'simultaneous')


@pytest.mark.parametrize('policy', POLICIES)
@pytest.mark.parametrize('schedule', SCHEDULES)
def test_coefficients_at_formula_and_monotone(policy, schedule):
    hook = AlphaBetaHook(end_iter=50, interval=5, policy=policy, schedule=schedule)
    values = [hook.coefficients_at(t) for t in range(80)]
    assert_pairs(values, [expected(t, 50, 5, policy, schedule) for t in range(80)])
    assert values[0] == START and values[4] == START and values[50] == END and values[79] == END
    assert all(a1 <= a0 and b1 >= b0 for (a0, b0), (a1, b1) in zip(values, values[1:]))
    assert all(values[t] == values[(t // 5) * 5] for t in range(80))  # changes only every η
    assert hook.coefficients_at(10**9) == END


def test_coefficients_at_edges():
    # τ not a multiple of η: the end point is reached at the first update step >= τ
    hook = AlphaBetaHook(end_iter=10, interval=4)
    assert hook.coefficients_at(11) != END and hook.coefficients_at(12) == END
    # τ < η: start until the first update step, then the end point
    hook = AlphaBetaHook(end_iter=3, interval=5)
    assert hook.coefficients_at(4) == START and hook.coefficients_at(5) == END
    # τ = 1: end from iteration 1
    assert AlphaBetaHook(end_iter=1).coefficients_at(1) == END
    # start == end: constant
    hook = AlphaBetaHook(start=(0.5, 0.5), end=(0.5, 0.5), end_iter=3)
    assert {hook.coefficients_at(t) for t in range(6)} == {(0.5, 0.5)}
    # only one coefficient moves
    hook = AlphaBetaHook(start=(1.0, 0.1), end=(1.0, 0.9), end_iter=4)
    assert [hook.coefficients_at(t)[0] for t in range(6)] == [1.0] * 6
    # exp is convex, log concave, log ∘ exp-inverse relation: f_log(f_exp(p)) on the linear diagonal
    exp, log = AlphaBetaHook(end_iter=4, policy='exp'), AlphaBetaHook(end_iter=4, policy='log')
    lin = AlphaBetaHook(end_iter=4)
    for t in (1, 2, 3):
        assert exp.coefficients_at(t)[0] > lin.coefficients_at(t)[0] > log.coefficients_at(t)[0]
        p = t / 4
        assert log.path.curve(exp.path.curve(p)) == pytest.approx(p, abs=1e-12)
    # alpha_first: α done at half the way, β untouched until then
    hook = AlphaBetaHook(end_iter=10, schedule='alpha_first')
    assert hook.coefficients_at(5) == (0.3, 0.1) and hook.coefficients_at(7)[0] == 0.3
    hook = AlphaBetaHook(end_iter=10, schedule='beta_first')
    assert hook.coefficients_at(5) == (1.0, 0.7)


def test_coefficients_at_needs_runner_for_end_epoch():
    hook = AlphaBetaHook(end_epoch=2)
    with pytest.raises(ValueError, match='end_epoch'):
        hook.coefficients_at(3)
    with pytest.raises(ValueError, match='iteration'):
        AlphaBetaHook(end_iter=3).coefficients_at(-1)
    with pytest.raises(ValueError, match='iteration'):
        AlphaBetaHook(end_iter=3).coefficients_at(1.5)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(end_iter=5, start=(0.3, 0.1), end=(0.5, 0.7)), ValueError, 'before start'),
    (dict(end_iter=5, start=(1.0, 0.5), end=(0.3, 0.2)), ValueError, 'before start'),
    (dict(end_iter=5, end=(0.3, 1.5)), ValueError, 'outside'),
    (dict(end_iter=5, start=(-0.1, 0.1)), ValueError, 'outside'),
    (dict(end_iter=5, start=(1.0, float('nan'))), ValueError, 'outside'),
    (dict(end_iter=5, end=(0.3, )), TypeError, 'pair'),
    (dict(end_iter=5, policy='cosine'), ValueError, 'unknown policy'),
    (dict(end_iter=5, schedule='random'), ValueError, 'unknown schedule'),
    (dict(), ValueError, 'end_iter'),
    (dict(end_iter=5, end_epoch=1), ValueError, 'not both'),
    (dict(end_iter=5, target_error=1e-4, end_epoch=1), ValueError, 'not both'),
    (dict(end_iter=5, interval=0), ValueError, 'interval'),
    (dict(end_iter=5, interval=1.5), ValueError, 'interval'),
    (dict(end_iter=0), ValueError, 'end_iter'),
    (dict(end_epoch=0), ValueError, 'end_epoch'),
    (dict(target_error=0.0), ValueError, 'target_error'),
    (dict(target_error=1e-4, patience=0), ValueError, 'patience'),
    (dict(end_iter=5, max_error=-1), ValueError, 'max_error'),
    (dict(end_iter=5, guard='yes'), TypeError, 'guard'),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        AlphaBetaHook(**kwargs)


def test_error_aware_needs_no_tau():
    hook = AlphaBetaHook(target_error=1e-4, interval=3, path_steps=4)
    assert hook.num_steps == 4 and hook.point_at_step(0) == START and hook.point_at_step(4) == END
    assert hook.point_at_step(2) == pytest.approx(expected(6, 12, 3))
    hook = AlphaBetaHook(target_error=1e-4, interval=2, end_iter=7)  # τ given: ceil(7/2) steps
    assert hook.num_steps == 4 and hook.point_at_step(3) == hook.coefficients_at(6)


def test_zero_beta_with_reversible_model_rejected(tmp_path):
    runner = make_runner(tmp_path, ToyClassifier(depth=2),
                         dict(type='AlphaBetaHook', start=(1.0, 0.0), end=(0.3, 0.0), end_iter=4),
                         max_iters=2)
    with pytest.raises(ValueError, match='beta must stay > 0'):
        runner.train()


def test_coefficient_setters_outermost_and_unwrapped():
    model = ToyClassifier(depth=2)
    extra = ReversibleSequence([MLPBranch(8)])
    model.neck = extra
    found = coefficient_setters(nn.DataParallel(model))  # a registered model wrapper, CPU-usable
    assert found == [model.body, extra]  # not model.body.stage (set through model.body)


def test_stage_records_an_overflow_instead_of_raising_when_told():
    """What the guard relies on: with record_overflow the stage returns zeros (no graph) and keeps
    the error; by default (used alone) it raises it."""
    torch.manual_seed(0)
    stage = ReversibleSequence([MLPBranch(8) for _ in range(3)], beta=0.5)
    outlier = torch.randn(2, 5, 8) * 3e6
    with pytest.raises(OverflowError, match=r'reached \|x\| = .*outside the exact fixed-point'):
        stage(outlier.requires_grad_(True))
    assert stage.overflow is None
    stage.record_overflow = True
    out = stage(outlier)
    assert torch.equal(out, torch.zeros_like(outlier)) and out.grad_fn is None
    assert isinstance(stage.overflow, OverflowError) and 'reached |x| = ' in str(stage.overflow)
    stage.overflow = None
    stage(torch.randn(2, 5, 8).requires_grad_(True)).sum().backward()  # in range: nothing recorded
    assert stage.overflow is None and stage.reconstruction_error() == 0.0


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(on_overflow='ignore'), ValueError, "on_overflow must be 'skip' or 'raise'"),
    (dict(max_consecutive_skips=0), ValueError, 'max_consecutive_skips'),
    (dict(max_consecutive_skips=2.5), TypeError, 'max_consecutive_skips'),
])
def test_guard_bad_overflow_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReversibleGuardHook(**kwargs)
