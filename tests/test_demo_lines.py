"""The demos' live view keeps α/β on screen: a cut training line gets its Dr²Net fields back."""
from dr2net_mm.demo.runs import brief_line

LINE = ('11/30 08:33:27 - mmengine - INFO - Epoch(train)  [1][2/2]  base_lr: 2.0000e-04  lr: '
        '2.0000e-04  eta: 0:00:10  time: 3.1000  data_time: 0.1000  memory: 0  grad_norm: 12.3000  '
        'loss: 30.1234  loss_cls: 1.2000  alpha: 0.3000  beta: 0.7000  reconstruction_error: '
        '0.0000  reconstruction_error_log10: -8.3915  skipped_steps: 0.0000\n')


def test_a_cut_line_keeps_alpha_beta_and_the_log10_error():
    shown = brief_line(LINE)
    assert shown.startswith(LINE[:160])
    assert shown.endswith('... alpha: 0.3000  beta: 0.7000  reconstruction_error_log10: -8.3915  '
                          'skipped_steps: 0.0000')


def test_short_lines_are_shown_whole():
    assert brief_line('Epoch(val) [2/2] mIoU: 12.0\n') == 'Epoch(val) [2/2] mIoU: 12.0'
