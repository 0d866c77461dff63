"""Spec of the referring video segmentor (dr2net_mm.rvos.model, .head, .text): Video Swin over the
clip, RoBERTa over the sentence, a multimodal transformer, FPN masks, Hungarian-matched losses.
Dr²Net is the conventional model at (1, 0), its reversible gradients are as precise as float32
autograd, the matching and losses do what MTTR's do on hand-made cases."""
import pytest
import torch

pytest.importorskip('mmaction')
pytest.importorskip('transformers')
import dr2net_mm  # noqa: E402,F401
import dr2net_mm.rvos  # noqa: E402,F401  (registers the model)
from mmaction.registry import MODELS  # noqa: E402
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from dr2net_mm.core import gradient_error  # noqa: E402
from dr2net_mm.rvos.head import ReferringCriterion  # noqa: E402
from dr2net_mm.rvos.text import RobertaTextEncoder, WordTokenizer, sentence_words  # noqa: E402

ARCH = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
SENTENCES = ['the red square moving left', 'the blue circle moving up']


@pytest.fixture(scope='module')
def vocab(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('vocab') / 'vocab.json')
    return WordTokenizer.build(SENTENCES).save(path)


def segmentor(vocab, backbone_type='SwinTransformer3D', seed=0, **kwargs):
    init_default_scope('mmaction')
    torch.manual_seed(seed)
    backbone = dict(type=backbone_type, arch=ARCH, window_size=(2, 4, 4), pretrained2d=False,
                    patch_size=(1, 4, 4), out_indices=(0, 1, 2, 3),
                    drop_path_rate=kwargs.pop('drop_path_rate', 0.0), **kwargs.pop('backbone', {}))
    model = MODELS.build(dict(
        type='ReferringVideoSegmentor', backbone=backbone,
        text_encoder=dict(config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32), vocab_file=vocab),
        transformer=dict(embed_dims=16, num_heads=2, ffn_dims=32, dropout=0.0, num_queries=4,
                         num_encoder_layers=1, num_decoder_layers=1),
        mask_decoder=dict(mask_dims=8, fpn_dims=16, groups=2), **kwargs))
    model.init_weights()
    return model


def clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def samples(size=32, ori=(40, 48)):
    out = []
    for k, sentence in enumerate(SENTENCES):
        sample = ActionDataSample(metainfo=dict(sentence=sentence, clip_index=2,
                                                ori_shape=ori))
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 4:12, 4:12] = True
        masks[1, 16:28, 10:30] = True
        sample.gt_instances = InstanceData(masks=masks, referred=torch.tensor([k == 0, k == 1]))
        out.append(sample)
    return out


class Outputs(torch.nn.Module):
    """The segmentor as a function of the clip alone (fixed sentences), for gradient_error."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x, samples(), mode='tensor')
        return [out['referred_logits'], out['mask_logits']]


# 1. The text side ---------------------------------------------------------------------------------
def test_word_tokenizer_gives_roberta_ids_padding_and_unknown_words(tmp_path):
    assert sentence_words('The red-square, moving LEFT!') == ['the', 'red', 'square', 'moving',
                                                              'left']
    tokenizer = WordTokenizer.build(['a red square', 'the square'])
    assert tokenizer.tokens == ['<s>', '<pad>', '</s>', '<unk>', 'a', 'red', 'square', 'the']
    ids, mask = tokenizer(['the red square', 'a green square'], max_length=8)
    assert ids.tolist() == [[0, 7, 5, 6, 2], [0, 4, 3, 6, 2]]
    assert mask.tolist() == [[1] * 5] * 2
    ids, mask = tokenizer(['red', 'the red square'], max_length=4)  # cut, </s> kept
    assert ids.tolist() == [[0, 5, 2, 1], [0, 7, 5, 2]] and mask[0].tolist() == [1, 1, 1, 0]
    loaded = WordTokenizer.from_file(tokenizer.save(str(tmp_path / 'v.json')))
    assert loaded.tokens == tokenizer.tokens
    with pytest.raises(FileNotFoundError, match='python -m dr2net_mm.rvos.text'):
        WordTokenizer.from_file(str(tmp_path / 'missing.json'))


def test_text_encoder_pads_and_loads_weights_from_a_local_file(vocab, tmp_path):
    config = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32)
    torch.manual_seed(0)
    source = RobertaTextEncoder(config, vocab_file=vocab)
    feats, padding = source(SENTENCES + ['red'])
    assert feats.shape == (3, 7, 16) and padding[2].tolist() == [False] * 3 + [True] * 4
    path = str(tmp_path / 'roberta.pth')
    torch.save({'roberta.' + k: v for k, v in source.roberta.state_dict().items()}, path)
    torch.manual_seed(1)
    target = RobertaTextEncoder(config, vocab_file=vocab, weights=path, frozen=True)
    target.init_weights()
    target.eval(), source.eval()
    assert torch.equal(target(SENTENCES)[0], source(SENTENCES)[0])
    assert not any(p.requires_grad for p in target.parameters())
    with pytest.raises(ValueError, match='vocab_size=3 is smaller'):
        RobertaTextEncoder(dict(config, vocab_size=3), vocab_file=vocab)


# 2. Dr²Net at (1, 0) is the conventional model ---------------------------------------------------
def test_dr2net_segmentor_at_alpha1_beta0_equals_the_conventional_one(vocab):
    reference = segmentor(vocab).eval()
    model = segmentor(vocab, 'Dr2NetSwin3D',
                      backbone=dict(alpha=1.0, beta=0.0, reversible=False)).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert set(missing) <= {'backbone.alpha', 'backbone.beta'} and unexpected == []
    x = clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected, out = reference(x, samples(), mode='tensor'), model(x, samples(), mode='tensor')
        assert out['mask_logits'].shape == (2, 4, 4, 8, 8)  # (B, T', N, H/4, W/4)
        assert out['referred_logits'].shape == (2, 4, 4, 2)
        assert all(torch.equal(out[k], expected[k]) for k in out)
        expected = reference(x, samples(), mode='predict')
        predicted = model(x, samples(), mode='predict')
    for a, b in zip(predicted, expected):
        assert a.pred_instances.masks.shape == (4, 40, 48)  # at the video's size
        assert torch.equal(a.pred_instances.masks, b.pred_instances.masks)
        assert torch.equal(a.pred_instances.scores, b.pred_instances.scores)


# RoBERTa's attention key bias adds the same amount to every score of a query, which the softmax
# removes: its true gradient is 0, so its relative error is rounding over rounding (~1e9) for any
# backward. The worst error over every other parameter and the input:
def worst(summary) -> float:
    values = [v for n, v in summary.per_parameter.items()
              if not n.endswith('attention.self.key.bias')]
    return max(values + [summary.input])


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_segmentor_gradients_as_precise_as_ordinary_autograd(vocab, alpha, beta):
    """Text encoder, transformer and mask decoder included, drop path 0.2 replayed: every gradient
    within 2× float32 autograd's own error against float64; every stage rebuilt bit for bit."""
    model = segmentor(vocab, 'Dr2NetSwin3D', drop_path_rate=0.2,
                      backbone=dict(alpha=alpha, beta=beta)).train()
    report = gradient_error(Outputs(model), clip(2, 3, 4, 32, 32))
    reversible, reference = worst(report.reversible_vs_truth), worst(report.reference_vs_truth)
    print(f'\n({alpha}, {beta}): reversible {reversible:.3g}, reference {reference:.3g}')
    assert reversible <= 2 * reference < 1e-4
    assert model.backbone.reconstruction_errors() == [0.0] * 4


def test_loss_backward_reaches_every_parameter_and_monitor_reads_zero(vocab):
    model = segmentor(vocab, 'Dr2NetSwin3D').train()
    losses = model(clip(2, 1, 3, 4, 32, 32), samples(), mode='loss')
    assert set(losses) == {'loss_referred', 'loss_mask_focal', 'loss_mask_dice'}
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # RoBERTa's token-type embedding gets a gradient only through type 0 (always): all reached
    assert no_grad == []
    assert model.backbone.reconstruction_errors() == [0.0] * 4


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval_mode(vocab):
    model = segmentor(vocab, freeze_backbone=True).train()
    assert not model.backbone.training and model.transformer.training
    sum(model(clip(2, 3, 4, 32, 32), samples(), mode='loss').values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.mask_decoder.parameters())


def test_a_backbone_that_does_not_return_every_stage_is_refused(vocab):
    with pytest.raises(ValueError, match=r'out_indices=\(0, 1, 2, 3\), got \(3,\)'):
        init_default_scope('mmaction')
        MODELS.build(dict(type='ReferringVideoSegmentor',
                          backbone=dict(type='SwinTransformer3D', arch=ARCH, pretrained2d=False),
                          text_encoder=dict(config=dict(hidden_size=16), vocab_file=vocab)))


# 3. Matching and losses ---------------------------------------------------------------------------
def test_matching_pairs_each_target_with_the_query_that_fits_it():
    """Query 2 predicts the referred target's mask and "referred"; query 0 the other's mask and
    "not referred": those are the pairs, and the losses of a perfect answer are near their floor."""
    criterion = ReferringCriterion()
    gt = torch.zeros(2, 8, 8)
    gt[0, :4, :4] = 1
    gt[1, 4:, 4:] = 1
    masks = torch.full((3, 8, 8), -20.0)
    masks[2][gt[0] > 0] = 20.0
    masks[0][gt[1] > 0] = 20.0
    logits = torch.tensor([[-10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    queries, targets = criterion.match(logits, masks, gt, torch.tensor([0, 1]))
    assert sorted(zip(queries.tolist(), targets.tolist())) == [(0, 1), (2, 0)]
    losses = criterion(logits[None], masks[None], [gt > 0], [torch.tensor([True, False])])
    assert all(v.item() < 1e-3 for v in losses.values()), losses
    wrong = criterion(logits.flip(1)[None], masks[None], [gt > 0], [torch.tensor([True, False])])
    assert wrong['loss_referred'] > 10


def test_bad_test_cfg_is_refused_naming_the_key(vocab):
    with pytest.raises(ValueError, match=r"test_cfg has unknown keys \['score_thr'\]"):
        segmentor(vocab, test_cfg=dict(score_thr=0.5))
