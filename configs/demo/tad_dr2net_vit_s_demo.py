# The TAD demo with a VideoMAE-layout video ViT: TemporalActionDetector + Dr2NetVideoViT (feature
# maps out, 192 wide, 4 blocks, 3 heads) on the generated long videos of ./tad_dr2net_swin_t_demo.py
# (data/demo_tad), each resampled to 128 frames of 32x32. The backbone starts from a random stand-in
# for the VideoMAE encoder in the official pretraining layout, converted on loading. Same head, data,
# schedule and AlphaBetaHook as the Video Swin demo.
_base_ = './tad_dr2net_swin_t_demo.py'

data_root = 'data/demo_tad/'
# written by tools/demo_tad.py (dr2net_mm.demo.data.write_videomae_official_checkpoint)
demo_pretrained = data_root + 'videomae_vit_192x4_official_random.pth'
arch = dict(embed_dims=192, depth=4, num_heads=3)

model = dict(
    backbone=dict(_delete_=True, type='Dr2NetVideoViT', **arch, img_size=32, num_frames=128,
                  return_feat_map=True, use_mean_pooling=False, alpha=1.0, beta=0.1,
                  reversible=True, init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    head=dict(in_channels=arch['embed_dims']))
