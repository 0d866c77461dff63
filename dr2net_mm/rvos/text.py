"""The text side of the referring segmentor: a word-level tokenizer built from a dataset's sentences
and a RoBERTa encoder (``transformers``' architecture) built from a local config.

MTTR encodes the referring sentence with a pretrained RoBERTa-base and its byte-level BPE tokenizer.
Nothing can be downloaded here, so the demo uses a small, randomly initialised RoBERTa and a
:class:`WordTokenizer` whose vocabulary is the set of words of the dataset's sentences
(``python -m dr2net_mm.rvos.text ANN_FILE OUT.json`` writes one). With a real checkpoint, pass the
folder of its tokenizer files as ``hf_tokenizer`` (read with ``AutoTokenizer``, local files only)
and its weights as ``weights``.

Token ids follow RoBERTa's: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then the words; a
sentence is ``<s> w_1 ... w_n </s>`` padded with ``<pad>`` to the longest of the batch.
"""
import argparse
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from torch import Tensor

__all__ = ['WordTokenizer', 'RobertaTextEncoder', 'sentence_words', 'SPECIAL_TOKENS']

SPECIAL_TOKENS = ('<s>', '<pad>', '</s>', '<unk>')
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def sentence_words(sentence: str) -> List[str]:
    """The words of a sentence: lower case, letters and digits (``"The red-square!"`` ->
    ``['the', 'red', 'square']``)."""
    return _WORD.findall(sentence.lower())


class WordTokenizer:
    """A word-level tokenizer: one id per word of a fixed vocabulary, RoBERTa's special ids first
    (module doc); words outside the vocabulary become ``<unk>``."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        clash = sorted(set(words) & set(SPECIAL_TOKENS))
        if clash or len(set(words)) != len(words):
            raise ValueError(f'the vocabulary must hold distinct words and no special token, got '
                             f'duplicates or {clash}')
        self.tokens = list(SPECIAL_TOKENS) + words
        self.ids: Dict[str, int] = {w: i for i, w in enumerate(self.tokens)}
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, sentences: Sequence[str]) -> 'WordTokenizer':
        """The vocabulary of ``sentences``: every word, sorted."""
        return cls(sorted({w for s in sentences for w in sentence_words(s)}))

    @classmethod
    def from_file(cls, path: str) -> 'WordTokenizer':
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'vocabulary file {path} does not exist; write it from the annotation file with '
                '`python -m dr2net_mm.rvos.text ANN_FILE VOCAB.json` (docs/rvos.md)')
        with open(path) as f:
            content = json.load(f)
        if not isinstance(content, dict) or content.get('type') != 'word' or not isinstance(
                content.get('words'), list):
            raise ValueError(f'{path}: not a word vocabulary (a JSON object with "type": "word" '
                             'and a "words" list); write it with `python -m dr2net_mm.rvos.text`')
        return cls(content['words'])

    def save(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(dict(type='word', words=self.tokens[len(SPECIAL_TOKENS):]), f, indent=0)
        return path

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, sentence: str, max_length: int) -> List[int]:
        """``<s> w_1 ... w_n </s>``, cut to ``max_length`` ids (``</s>`` kept last)."""
        ids = [self.ids.get(w, self.unk_id) for w in sentence_words(sentence)]
        return [self.bos_id] + ids[:max(max_length - 2, 0)] + [self.eos_id]

    def __call__(self, sentences: Sequence[str], max_length: int = 32) -> Tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``, both ``(B, L)`` long, padded to the longest."""
        encoded = [self.encode(s, max_length) for s in sentences]
        length = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        return ids, mask


class _HFTokenizer:
    """A ``transformers`` tokenizer from a local folder, called like :class:`WordTokenizer`."""

    def __init__(self, folder: str):
        from transformers import AutoTokenizer
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'hf_tokenizer={folder!r} is not a folder; give the local '
                                    'folder of the checkpoint\'s tokenizer files')
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.pad_id = self.tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, sentences: Sequence[str], max_length: int = 32) -> Tuple[Tensor, Tensor]:
        out = self.tokenizer(list(sentences), padding='longest', truncation=True,
                             max_length=max_length, return_tensors='pt')
        return out['input_ids'], out['attention_mask']


def _import_roberta():
    try:
        from transformers import RobertaConfig, RobertaModel
    except ImportError as error:
        raise ImportError(
            'the referring segmentor\'s text encoder needs transformers: `pip install '
            '"dr2net_mm[rvos]"` (tested: the version in requirements/constraints.txt)') from error
    return RobertaConfig, RobertaModel


class RobertaTextEncoder(BaseModule):
    """RoBERTa (``transformers.RobertaModel``, no pooler) over the referring sentences.

    Args:
        config: ``RobertaConfig`` arguments (e.g. ``hidden_size``, ``num_hidden_layers``,
            ``num_attention_heads``, ``intermediate_size``); ``vocab_size`` defaults to the
            tokenizer's and must equal it when given; the special ids are RoBERTa's.
        vocab_file: a :class:`WordTokenizer` vocabulary (JSON).
        hf_tokenizer: instead, the local folder of a ``transformers`` tokenizer.
        weights: a local file of RoBERTa weights (``torch.save`` state dict or ``.safetensors``;
            ``roberta.`` prefixes and the pooler are dropped), loaded by :meth:`init_weights`.
        frozen: MTTR's setting: no gradients, eval mode, run under ``no_grad``.
        max_length: tokens per sentence at most, ``<s>`` and ``</s>`` included.

    ``forward(sentences)`` -> ``(features (B, L, hidden_size), padding (B, L) bool, True = pad)``.
    """

    def __init__(self, config: dict, vocab_file: Optional[str] = None,
                 hf_tokenizer: Optional[str] = None, weights: Optional[str] = None,
                 frozen: bool = False, max_length: int = 32, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if (vocab_file is None) == (hf_tokenizer is None):
            raise ValueError('RobertaTextEncoder needs exactly one of vocab_file (a word '
                             'vocabulary) and hf_tokenizer (a local tokenizer folder), got '
                             f'vocab_file={vocab_file!r}, hf_tokenizer={hf_tokenizer!r}')
        self.tokenizer = (WordTokenizer.from_file(vocab_file) if vocab_file is not None else
                          _HFTokenizer(hf_tokenizer))
        RobertaConfig, RobertaModel = _import_roberta()
        config = dict(config)
        vocab_size = config.setdefault('vocab_size', len(self.tokenizer))
        if vocab_size < len(self.tokenizer):
            raise ValueError(f'config vocab_size={vocab_size} is smaller than the tokenizer\'s '
                             f'{len(self.tokenizer)} tokens ({vocab_file or hf_tokenizer})')
        config.setdefault('max_position_embeddings', max_length + 2)
        if config['max_position_embeddings'] < max_length + 2:
            raise ValueError(f'max_position_embeddings={config["max_position_embeddings"]} must '
                             f'be at least max_length + 2 = {max_length + 2} (RoBERTa offsets '
                             'positions by the padding id + 1)')
        if vocab_file is not None:
            config.update(bos_token_id=0, pad_token_id=1, eos_token_id=2)
        self.roberta = RobertaModel(RobertaConfig(**config), add_pooling_layer=False)
        self.hidden_size = self.roberta.config.hidden_size
        self.weights, self.frozen, self.max_length = weights, frozen, max_length
        if frozen:
            self.roberta.requires_grad_(False)

    def init_weights(self) -> None:
        """Load ``weights`` when given (transformers initialised the rest at construction; the
        default ``BaseModule`` recursion would re-initialise RoBERTa, so it is not run)."""
        if self.weights is None:
            return
        if not os.path.isfile(self.weights):
            raise FileNotFoundError(f'text encoder weights {self.weights} do not exist')
        if self.weights.endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(self.weights)
        else:
            state = torch.load(self.weights, map_location='cpu', weights_only=True)
            state = state.get('state_dict', state.get('model', state))
        state = {k[len('roberta.'):] if k.startswith('roberta.') else k: v
                 for k, v in state.items() if not k.startswith(('pooler.', 'roberta.pooler.',
                                                                'lm_head.'))}
        missing, unexpected = self.roberta.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith('position_ids')]
        if missing or unexpected:
            raise ValueError(f'{self.weights}: not weights of this RoBERTa config (missing '
                             f'{missing[:5]}, unexpected {unexpected[:5]}); match the config to '
                             'the checkpoint\'s')

    def train(self, mode: bool = True) -> 'RobertaTextEncoder':
        super().train(mode)
        if self.frozen:
            self.roberta.eval()
        return self

    def forward(self, sentences: Sequence[str]) -> Tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer(sentences, self.max_length)
        device = self.roberta.embeddings.word_embeddings.weight.device
        ids, mask = ids.to(device), mask.to(device)
        if self.frozen:
            with torch.no_grad():
                feats = self.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            feats = self.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        return feats, mask == 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m dr2net_mm.rvos.text',
        description='Write the word vocabulary of an A2D-Sentences-layout annotation file')
    parser.add_argument('ann_file', help='text annotations (CSV: video_id,instance_id,query)')
    parser.add_argument('out', help='vocabulary file to write (JSON)')
    args = parser.parse_args(argv)
    from .data import read_sentences
    sentences = [row['query'] for row in read_sentences(args.ann_file)]
    tokenizer = WordTokenizer.build(sentences)
    tokenizer.save(args.out)
    print(f'{args.out}: {len(tokenizer) - len(SPECIAL_TOKENS)} words of {len(sentences)} '
          'sentences')


if __name__ == '__main__':
    main()
