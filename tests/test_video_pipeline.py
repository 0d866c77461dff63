"""Action recognition with mmaction2, as a user meets it: the demo clip generator
(dr2net_mm.demo.clips), the six Kinetics-400 / Something-Something-v2 configs (conventional,
with_cp, Dr²Net; Video Swin-T and VideoMAE ViT-S), the two demo configs trained and evaluated
through tools/train.py and tools/test.py on a tiny clip set, and tools/demo_video.py's arguments."""
import os
import re
import runpy
import sys

import numpy as np
import pytest

pytest.importorskip('mmaction')

import dr2net_mm  # noqa: E402,F401  (first: supplies mmaction2's missing module; registers models)
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from dr2net_mm.benchmark import build_model, training_loss  # noqa: E402
from dr2net_mm.demo.clips import DEMO_ACTIONS, draw_clip, make_demo_clips  # noqa: E402
from dr2net_mm.demo.data import (write_swin_official_checkpoint,  # noqa: E402
                                 write_videomae_official_checkpoint)
from tool_runs import run_tool as run, scalars, tool_help  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
STILL, SLOW, FAST, BLINKING = range(4)


# 1. The clip generator ---------------------------------------------------------------------------
def frame_changes(clip: np.ndarray):
    """(mean |frame t+1 - frame t|, share of values changed by more than 40): the frames' noise
    (σ = 6) alone almost never changes a value by 40, a shape appearing or moving does."""
    diff = np.abs(np.diff(clip.astype(np.int16), axis=0))
    return diff.mean(), (diff > 40).mean()


def clips_of(label: int, count: int = 6, frames: int = 16, size: int = 32):
    return [draw_clip(np.random.default_rng(seed), label, frames, size) for seed in range(count)]


def test_same_arguments_give_the_same_frames_and_annotation_lists(tmp_path):
    first = draw_clip(np.random.default_rng(7), FAST, 16, 32)
    assert first.shape == (16, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(draw_clip(np.random.default_rng(7), FAST, 16, 32), first)
    assert not np.array_equal(draw_clip(np.random.default_rng(8), FAST, 16, 32), first)
    lists = []
    for name in ('a', 'b'):
        out = make_demo_clips(str(tmp_path / name), num_train=8, num_val=4, frames=16, size=32)
        lists.append([(tmp_path / name / f'{split}_list.txt').read_text()
                      for split in ('train', 'val')])
        assert out == str(tmp_path / name)
    assert lists[0] == lists[1]
    # already there with the same arguments: not written again
    clip = tmp_path / 'a' / 'train' / '000000.mp4'
    mtime = clip.stat().st_mtime_ns
    make_demo_clips(str(tmp_path / 'a'), num_train=8, num_val=4, frames=16, size=32)
    assert clip.stat().st_mtime_ns == mtime


def test_clip_files_are_in_video_dataset_layout_with_balanced_classes_and_decord_reads_them(
        tmp_path):
    import decord
    root = tmp_path / 'clips'
    make_demo_clips(str(root), num_train=8, num_val=4, frames=16, size=32)
    for split, count in (('train', 8), ('val', 4)):
        lines = (root / f'{split}_list.txt').read_text().splitlines()
        names = [line.split(' ')[0] for line in lines]
        assert names == [f'{split}/{i:06d}.mp4' for i in range(count)]
        labels = [int(line.split(' ')[1]) for line in lines]
        assert sorted(labels) == sorted(list(range(len(DEMO_ACTIONS))) * (count // 4))  # balanced
        assert sorted(os.listdir(root / split)) == [f'{i:06d}.mp4' for i in range(count)]
    assert DEMO_ACTIONS == ('standing still', 'moving slowly', 'moving fast', 'blinking')
    video = decord.VideoReader(str(root / 'val' / '000003.mp4'))
    assert len(video) == 16
    assert video[0].asnumpy().shape == (32, 32, 3)
    # mmaction2's VideoDataset reads the list as written
    from mmaction.datasets import VideoDataset
    dataset = VideoDataset(ann_file=str(root / 'train_list.txt'), data_prefix=dict(video=str(root)),
                           pipeline=[])
    assert len(dataset) == 8 and dataset[5]['label'] == 1
    assert dataset[5]['filename'] == str(root / 'train' / '000005.mp4')


def test_classes_differ_in_how_the_shape_moves():
    changes = {label: [frame_changes(clip) for clip in clips_of(label)] for label in range(4)}
    mean_change = {label: np.mean([c[0] for c in values]) for label, values in changes.items()}
    # standing still: nothing changes beyond the noise
    assert max(c[1] for c in changes[STILL]) < 1e-4
    # the faster the shape, the more consecutive frames differ
    assert mean_change[STILL] < mean_change[SLOW] < mean_change[FAST]
    assert min(c[1] for c in changes[SLOW]) > 10 * max(c[1] for c in changes[STILL])


def test_blinking_is_standing_still_with_the_shape_hidden_two_frames_of_four():
    for seed in range(4):
        still = draw_clip(np.random.default_rng(seed), STILL, 16, 32)
        blinking = draw_clip(np.random.default_rng(seed), BLINKING, 16, 32)
        for t in range(16):
            differs = (still[t] != blinking[t]).any(-1)
            if t % 4 < 2:  # shown: the very same frame
                assert not differs.any(), (seed, t)
            else:  # hidden: the shape's pixels (a square or disk of side >= 32 // 5) are background
                assert differs.sum() >= 20, (seed, t)
        _, hidden_to_hidden = frame_changes(blinking[2:4])
        assert hidden_to_hidden < 1e-3  # two hidden frames differ only by noise


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_train=0), 'num_train must be a positive int, got 0'),
    (dict(num_val=-4), 'num_val must be a positive int, got -4'),
    (dict(frames=2.5), 'frames must be a positive int, got 2.5'),
    (dict(size=8), 'size must be an int of at least 16 pixels, got 8'),
])
def test_bad_arguments_are_refused_naming_the_value(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_demo_clips(str(tmp_path / 'clips'), **kwargs)
    assert not (tmp_path / 'clips').exists()


# 2. The six full configs -------------------------------------------------------------------------
FAMILIES = {
    'swin': dict(conventional='video_swin_t_k400.py', cp='video_swin_t_cp_k400.py',
                 dr2net='video_dr2net_swin_t_k400.py'),
    'videomae': dict(conventional='videomae_vit_s_sthv2.py', cp='videomae_vit_s_cp_sthv2.py',
                     dr2net='videomae_dr2net_vit_s_sthv2.py'),
}
BACKBONES = {('swin', 'conventional'): 'SwinTransformer3D', ('swin', 'cp'): 'SwinTransformer3D',
             ('swin', 'dr2net'): 'Dr2NetSwin3D', ('videomae', 'conventional'): 'PlainVideoViT',
             ('videomae', 'cp'): 'PlainVideoViT', ('videomae', 'dr2net'): 'Dr2NetVideoViT'}
CONFIG_CASES = [(family, kind) for family in FAMILIES for kind in FAMILIES[family]]


def load(family: str, kind: str) -> Config:
    return Config.fromfile(os.path.join(ROOT, 'configs', FAMILIES[family][kind]))


@pytest.mark.parametrize('family, kind', CONFIG_CASES, ids=[f'{f}-{k}' for f, k in CONFIG_CASES])
def test_config_inherits_the_mmaction_recipe_with_the_intended_backbone(family, kind):
    cfg = load(family, kind)
    assert cfg.default_scope == 'mmaction'
    assert cfg.custom_imports == dict(imports=['dr2net_mm'], allow_failed_imports=False)
    assert cfg.model.type == 'Recognizer3D'
    assert cfg.model.data_preprocessor.type == 'ActionDataPreprocessor'
    assert cfg.model.cls_head.type == {'swin': 'I3DHead', 'videomae': 'TimeSformerHead'}[family]
    assert cfg.model.cls_head.num_classes == {'swin': 400, 'videomae': 174}[family]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.type == 'VideoDataset'
        steps = [step['type'] for step in cfg[loader].dataset.pipeline]
        assert steps[:1] == ['DecordInit'] and 'DecordDecode' in steps
        assert steps[-2:] == ['FormatShape', 'PackActionInputs']
    assert cfg.val_evaluator.type == 'AccMetric'
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    backbone = cfg.model.backbone
    assert backbone.type == BACKBONES[family, kind]
    assert backbone.get('with_cp', False) is (kind == 'cp')
    hooks = [hook for hook in cfg.get('custom_hooks', []) if hook.type == 'AlphaBetaHook']
    if kind == 'dr2net':
        assert (backbone.alpha, backbone.beta, backbone.reversible) == (1.0, 0.1, True)
        (hook, ) = hooks
        assert tuple(hook.start) == (1.0, 0.1) and tuple(hook.end) == (0.3, 0.7)
        assert hook.end_epoch == 10 and hook.interval == 2
    else:
        assert not hooks and 'alpha' not in backbone and 'beta' not in backbone
    if family == 'swin':  # mmaction2's Swin-T recipe: ImageNet Swin-T inflated to 3D
        assert backbone.arch == 'tiny' and backbone.pretrained2d is True
        assert backbone.pretrained.endswith('swin_tiny_patch4_window7_224.pth')
        assert cfg.train_cfg.max_epochs == 30
    else:  # ViT-S from the VideoMAE self-supervised checkpoint, SSv2: no flips
        assert (backbone.embed_dims, backbone.depth, backbone.num_heads) == (384, 12, 6)
        assert backbone.init_cfg.checkpoint == 'checkpoints/videomae_vit_s_sthv2_pretrain_800e.pth'
        assert 'Flip' not in [step['type'] for step in cfg.train_pipeline]
        assert cfg.train_cfg.max_epochs == 40


def tiny_clip_batch(frames: int, size: int, batch: int = 1) -> dict:
    from mmaction.structures import ActionDataSample
    gen = torch.Generator().manual_seed(0)
    return dict(inputs=[torch.randint(0, 256, (1, 3, frames, size, size), dtype=torch.uint8,
                                      generator=gen) for _ in range(batch)],
                data_samples=[ActionDataSample().set_gt_label(i) for i in range(batch)])


@pytest.fixture
def one_thread():
    """One intra-op thread (as the tool runs have, tool_runs.tool_env): these steps are small, and
    two threads on busy shared cores wait for each other far longer than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('family', list(FAMILIES))
def test_family_builds_trains_one_step_and_shares_one_state_dict_layout(family, one_thread):
    """Each of the three models builds from its config (pretrained loading off), runs a
    forward + backward on a tiny clip, and the three have the same state-dict keys apart from the
    Dr²Net coefficients: the Dr²Net config is a drop-in for the other two."""
    keys = {}
    for kind, name in FAMILIES[family].items():
        cfg = load(family, kind)
        if family == 'videomae':  # the fixed sinusoid table is sized by img_size and num_frames
            cfg.model.backbone.update(img_size=64, num_frames=8)
        model = build_model(cfg)
        assert type(model.backbone).__name__ == BACKBONES[family, kind]
        model.train()
        loss = training_loss(model, tiny_clip_batch(frames=8, size=64))
        assert torch.isfinite(loss), name
        loss.backward()
        grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
        if kind == 'dr2net':  # the reversible backward ran and rebuilt the activations exactly
            assert all(error == 0.0 for error in model.backbone.reconstruction_errors()), name
        keys[kind] = set(model.state_dict())
        del model, loss, grads
    coefficients = {'backbone.alpha', 'backbone.beta'}
    assert coefficients <= keys['dr2net']  # checkpoints carry (α, β)
    # (PlainVideoViT is Dr2NetVideoViT fixed at (1, 0): it stores them too; SwinTransformer3D not)
    assert keys['conventional'] - coefficients == keys['cp'] - coefficients \
        == keys['dr2net'] - coefficients


# 3. The demo end to end through the tools, at a tiny scale ----------------------------------------
DEMOS = {
    'vit': dict(config='configs/demo/videomae_dr2net_vit_s_demo.py', checkpoint='videomae.pth',
                option='model.backbone.init_cfg.checkpoint',
                loaded=r'Dr2NetVideoViT: loaded \d+ tensors \(100\.0% of the parameter values\) '
                       r'from \S+videomae\.pth \(videomae_pretrain layout\); missing 0'),
    'swin': dict(config='configs/demo/video_dr2net_swin_t_demo.py', checkpoint='swin2d.pth',
                 option='model.backbone.pretrained',
                 # a 2D Swin file inflated to 3D
                 loaded=r'Dr2NetSwin3D: loaded \d+ tensors \(100\.0% of the parameter values\) '
                        r'from \S+swin2d\.pth \(official2d layout\); missing 0'),
}


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    """16 training and 8 validation clips (16 frames, 64 × 64, as the demo's), and the stand-in
    checkpoints of the demo configs' architectures (as tools/demo_video.py writes them)."""
    root = str(tmp_path_factory.mktemp('video') / 'clips') + '/'
    make_demo_clips(root, num_train=16, num_val=8, frames=16, size=64)
    write_videomae_official_checkpoint(root + DEMOS['vit']['checkpoint'], embed_dims=192, depth=4,
                                       num_heads=3)
    write_swin_official_checkpoint(root + DEMOS['swin']['checkpoint'], embed_dim=48,
                                   depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16))
    return root


def tiny_run_options(data_root: str, name: str) -> list:
    """--cfg-options pointing a demo config at the tiny set and its stand-in checkpoint: one epoch
    (2 iterations of 8 clips), validation and a checkpoint at its end, (α, β) from (1, 0.1) to
    (0.3, 0.7) over the first half (1 iteration), every iteration logged."""
    demo = DEMOS[name]
    options = [f'data_root={data_root}', f"{demo['option']}={data_root}{demo['checkpoint']}"]
    for loader, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        options += [f'{loader}_dataloader.dataset.ann_file={data_root}{split}_list.txt',
                    f'{loader}_dataloader.dataset.data_prefix.video={data_root}']
    return options + ['train_cfg.max_epochs=1', 'train_cfg.val_begin=1', 'train_cfg.val_interval=1',
                      'param_scheduler.1.begin=0', 'param_scheduler.1.end=1',
                      'param_scheduler.1.T_max=1', 'default_hooks.checkpoint.interval=1',
                      'default_hooks.logger.interval=1', 'custom_hooks.0.end_epoch=0.5',
                      'custom_hooks.0.interval=1']


@pytest.mark.parametrize('name', list(DEMOS))
def test_demo_config_trains_from_the_stand_in_checkpoint_then_test_tool_reports_top1(
        clips, tmp_path, name):
    demo, options = DEMOS[name], tiny_run_options(clips, name)
    work_dir = str(tmp_path / 'train')
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir,
               '--cfg-options', *options])
    assert re.search(demo['loaded'], out), 'the stand-in checkpoint was not loaded through the ' \
        'converter'
    assert re.search(r'Epoch\(train\) \[1\]\[1/2\].*alpha: 1\.0000\s+beta: 0\.1000', out)
    assert re.search(r'Epoch\(train\) \[1\]\[2/2\].*alpha: 0\.3000\s+beta: 0\.7000', out)
    assert out.count('reconstruction_error: 0.0000') == 2
    assert re.search(r'Epoch\(val\) \[1\]\[1/1\]\s+acc/top1: [\d.]+', out)
    train = [s for s in scalars(work_dir) if 'alpha' in s]
    assert [s['alpha'] for s in train] == pytest.approx([1.0, 0.3])
    assert [s['beta'] for s in train] == pytest.approx([0.1, 0.7])
    checkpoint = os.path.join(work_dir, 'epoch_1.pth')
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert state['backbone.alpha'].item() == pytest.approx(0.3)
    assert state['backbone.beta'].item() == pytest.approx(0.7)
    out = run([PYTHON, 'tools/test.py', demo['config'], checkpoint, '--work-dir',
               str(tmp_path / 'test'), '--cfg-options', *options])
    top1 = re.findall(r'Epoch\(test\) \[1/1\]\s+acc/top1: ([\d.]+)', out)
    assert top1 and 0 <= float(top1[-1]) <= 1
    assert 'evaluated with (alpha, beta) = (0.3, 0.7)' in out


# 4. tools/demo_video.py --------------------------------------------------------------------------
def test_demo_video_help_describes_the_demo():
    out = tool_help('demo_video.py')
    assert 'usage: demo_video.py' in out
    for option in ('--backbones', '--epochs', '--work-dir'):
        assert option in out


@pytest.mark.parametrize('args, message', [
    (['--epochs', '1'], '--epochs 1: need at least 2 (the first two warm up the lr)'),
    (['--backbones', 'resnet'], "argument --backbones: invalid choice: 'resnet'"),
])
def test_demo_video_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys, args, message):
    """In this process (the tool's main, as `python tools/demo_video.py ARGS` calls it): usage
    errors, exit status 2, before anything is generated or trained."""
    tool = runpy.run_path(os.path.join(ROOT, 'tools', 'demo_video.py'), run_name='demo_video')
    main = tool['main']
    cwd = os.getcwd()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, '--work-dir', str(tmp_path / 'w')])
    finally:
        os.chdir(cwd)  # (main changes to the repository root once it starts working)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith('usage: ')
    assert not (tmp_path / 'w').exists()
