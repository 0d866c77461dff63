"""The memory report: saved bytes by model part, where the step peaks, the largest batch in a budget,
and tools/memory_report.py on a tiny UPerNet (dr2net_mm.benchmark.parts / .report)."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dr2net_mm.benchmark.measure import _cpu_peak_bytes
from dr2net_mm.benchmark.parts import PartTracker, resolve_parts, step_timeline
from dr2net_mm.benchmark.report import BudgetError, largest_batch
from dr2net_mm.core import count_saved_bytes
from tool_runs import tool_env

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'memory_report.py'
# UPerNet Swin-T shrunk to seconds on a CPU (the ADE20K config's head and loss, narrow and shallow)
TINY_UPERNET = ['--size', '64', '--batch', '2', '--cfg-options', 'model.backbone.embed_dims=32',
                'model.backbone.depths=[1,1,2,1]', 'model.backbone.num_heads=[1,2,4,8]',
                'model.decode_head.in_channels=[32,64,128,256]', 'model.decode_head.channels=32',
                'model.auxiliary_head.in_channels=128', 'model.auxiliary_head.channels=16']


class Head(nn.Module):
    """A head trained through ``loss()``, which calls ``self.forward`` directly (as mm heads do:
    no module hooks fire), with a wide hidden layer whose weight gradient is the step's largest
    transient."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 512), nn.Linear(512, 10)])
        self.loss_cls = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.layers[1](torch.relu(self.layers[0](x)))

    def loss(self, x, labels):
        return self.loss_cls(self.forward(x), labels)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64))
        self.neck = nn.LayerNorm(64)
        self.head = Head()

    def forward(self, x, labels):
        return self.head.loss(self.neck(self.backbone(x)), labels)


def toy_step(model, x, labels):
    def step(tracker):
        with tracker.forward():
            loss = model(x, labels)
        tracker.before_backward(loss)
        loss.backward()
    return step


def toy(freeze_backbone=False):
    torch.manual_seed(0)
    model = Toy()
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    x, labels = torch.randn(256, 16), torch.randint(0, 10, (256, ))
    model(x, labels).backward()  # the gradient buffers exist before the measured step
    return model, x, labels


def test_part_saved_bytes_sum_to_the_total_saved_bytes_and_name_every_part():
    model, x, labels = toy()
    with count_saved_bytes(model.parameters()) as total:
        model(x, labels).backward()
    tracker = PartTracker(model, resolve_parts(model), list(model.parameters()))
    step_timeline(toy_step(model, x, labels), tracker)
    saved = tracker.saved_by_part()
    assert list(saved) == ['backbone', 'neck', 'head', 'losses', 'other']
    assert sum(saved.values()) == total.total
    assert saved['backbone'] > 0 and saved['neck'] > 0 and saved['losses'] > 0
    # the head runs through loss() -> self.forward(): still the head's (relu output, linear inputs)
    assert saved['head'] >= 256 * 512 * 4
    assert saved['other'] == 0


def test_a_frozen_part_keeps_nothing_for_backward():
    model, x, labels = toy(freeze_backbone=True)
    tracker = PartTracker(model, resolve_parts(model), list(model.parameters()))
    step_timeline(toy_step(model, x, labels), tracker)
    saved = tracker.saved_by_part()
    assert saved['backbone'] == 0
    assert saved['head'] > 0


def test_the_peak_is_located_in_the_backward_of_the_part_that_holds_it_and_matches_the_plain_peak():
    model, x, labels = toy()
    tracker = PartTracker(model, resolve_parts(model), list(model.parameters()))
    timeline = step_timeline(toy_step(model, x, labels), tracker)
    tracker.remove()
    # the largest transient: the 512 x 64 and 10 x 512 weight gradients and the 256 x 512 input
    # gradient of the head, computed while everything the backbone saved is still alive
    assert timeline.peak_at == 'backward:head'
    assert timeline.end_of_forward > 0
    assert {'forward:backbone', 'forward:head', 'end of forward', 'backward:losses',
            'backward:head', 'backward:backbone'} <= set(timeline.max_by_label)
    assert timeline.peak == max(timeline.max_by_label.values())
    plain = _cpu_peak_bytes(lambda: model(x, labels).backward())
    assert abs(timeline.peak - plain) <= 0.02 * plain


def test_a_submodule_part_takes_its_bytes_from_its_parent_and_a_container_reports_its_members():
    model, x, labels = toy()
    tracker = PartTracker(model, resolve_parts(model, ['head.layers']), list(model.parameters()))
    step_timeline(toy_step(model, x, labels), tracker)
    saved = tracker.saved_by_part()
    assert saved['head.layers'] > 0  # a ModuleList has no forward: its Linear layers are the part
    alone = PartTracker(model, resolve_parts(model), list(model.parameters()))
    step_timeline(toy_step(model, x, labels), alone)
    assert saved['head'] + saved['head.layers'] == alone.saved_by_part()['head']


def test_tracking_leaves_the_model_as_it_was():
    model, x, labels = toy()
    before = model(x, labels)
    tracker = PartTracker(model, resolve_parts(model), list(model.parameters()))
    step_timeline(toy_step(model, x, labels), tracker)
    tracker.remove()
    assert 'forward' not in model.backbone.__dict__ and 'loss' not in model.head.__dict__
    assert torch.equal(model(x, labels), before)


def test_an_unknown_part_is_refused_naming_it_and_the_parts_there_are():
    with pytest.raises(ValueError, match=r"unknown part 'decoder'.*backbone, neck, head, losses"):
        resolve_parts(Toy(), ['decoder'])


def linear_memory(calls):
    def memory_at(batch):
        calls.append(batch)
        return 100.0 + 30.0 * batch
    return memory_at


@pytest.mark.parametrize('search', ['linear', 'bisect'])
def test_largest_batch_finds_the_largest_batch_in_the_budget(search):
    calls = []
    result = largest_batch(linear_memory(calls), 400.0, search)
    assert result['batch'] == 10  # 100 + 30 * 10 = 400 <= 400 < 430
    assert all(result['measured_mb'][b] <= 400 for b in result['measured_mb'] if b <= 10)
    if search == 'linear':  # batches 1 and 2, then the prediction checked
        assert calls == [1, 2, 10]
        assert result['method'] == 'linear through batches 1 and 2, checked at 10'


def test_largest_batch_steps_down_when_the_line_overpromises_and_returns_a_batch_measured_to_fit():
    def memory_at(batch):  # convex: the line through batches 1 and 2 predicts 14, which is over
        return 100.0 + 30.0 * batch + 2.0 * batch * batch
    result = largest_batch(memory_at, 600.0, 'linear')
    batch = result['batch']
    assert result['measured_mb'][14] > 600.0
    assert batch in result['measured_mb'] and memory_at(batch) <= 600.0 and 2 < batch < 14
    assert result['method'] == f'linear through batches 1 and 2, checked at {batch}'


def test_largest_batch_starts_at_two_where_one_sample_cannot_train():
    def memory_at(batch):
        if batch == 1:
            raise ValueError('Expected more than 1 value per channel when training, got input '
                             'size torch.Size([1, 512, 1, 1])')
        return 50.0 * batch
    result = largest_batch(memory_at, 1000.0)
    assert result['batch'] == 20 and min(result['measured_mb']) == 2


def test_a_budget_below_the_smallest_batch_is_refused_naming_both_figures():
    with pytest.raises(BudgetError, match=r'budget 50 MB is below the step memory of batch 1 '
                                          r'\(130 MB\): raise --budget'):
        largest_batch(linear_memory([]), 50.0)


def tool_main():
    return runpy.run_path(str(TOOL), run_name='memory_report')['main']


def test_tool_reports_a_tiny_upernet_as_table_json_and_plot_with_two_peaks_that_agree(tmp_path):
    out = tmp_path / 'tiny'
    run = subprocess.run([sys.executable, str(TOOL), 'tiny=configs/upernet_swin_t_ade20k.py',
                          *TINY_UPERNET, '--parts', 'decode_head.fpn_bottleneck', '--rss',
                          '--out', str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=tool_env())
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_suffix('.json').read_text())['variants']['tiny']
    saved = report['saved_mb']
    assert {'backbone', 'decode_head', 'auxiliary_head', 'losses',
            'decode_head.fpn_bottleneck'} <= set(saved)
    assert sum(saved.values()) == pytest.approx(report['saved_total_mb'])
    assert all(saved[p] > 0 for p in ('backbone', 'decode_head', 'losses',
                                      'decode_head.fpn_bottleneck'))
    assert report['peak_at'].startswith('backward:') and report['peak_mb'] > report['saved_total_mb']
    # the profiler's peak and the resident peak of a fresh process: within 10 %
    assert abs(report['rss_peak_mb'] / report['peak_mb'] - 1) < 0.10, report
    table = out.with_suffix('.md').read_text()
    assert '| where the step peaks | ' + report['peak_at'] in table
    assert out.with_suffix('.png').stat().st_size > 10000


@pytest.mark.parametrize('args, message', [
    (['configs/no_such_config.py'], "config 'configs/no_such_config.py' not found"),
    (['configs/upernet_swin_t_ade20k.py', '--budget', '0'], '--budget 0.0: give the memory budget'),
    (['configs/upernet_swin_t_ade20k.py', '--size', '16'], "size must look like 512 or 800x1333"),
    (['configs/upernet_swin_t_ade20k.py', 'configs/upernet_swin_t_ade20k.py'], 'repeat'),
])
def test_tool_refuses_bad_arguments_naming_the_value(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        tool_main()(args)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize('args, message', [
    (['--parts', 'decode_head.no_such'], "unknown part 'decode_head.no_such'"),
    (['--budget', '1'], 'budget 1 MB is below the step memory of batch 2'),
])
def test_tool_refuses_an_unknown_part_and_a_budget_below_the_smallest_batch(args, message):
    with pytest.raises(SystemExit, match=message):
        tool_main()(['configs/upernet_swin_t_ade20k.py', *TINY_UPERNET, *args])
