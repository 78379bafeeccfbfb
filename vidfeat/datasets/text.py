"""Sentences to token ids: the tokeniser and vocabulary of the captioning and grounding datasets.

Tokenising follows video-caption.pytorch's ``prepro_vocab.py`` (``re.sub(r'[.!,;?]', ' ',
caption).split()``), lower-cased; the vocabulary is built from the training split only, keeps
words seen at least ``min_count`` times and maps the rest to ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PUNCTUATION = re.compile(r"[.!,;?]")


def tokenize(sentence: str) -> list[str]:
    return PUNCTUATION.sub(" ", sentence.lower()).split()


class Vocabulary:
    """Word <-> id; ids 0-3 are ``<pad> <bos> <eos> <unk>``."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {word: i for i, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for sentence in sentences for word in tokenize(sentence))
        kept = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.itos == self.itos

    @property
    def pad(self) -> int:
        return self.stoi[PAD]

    @property
    def bos(self) -> int:
        return self.stoi[BOS]

    @property
    def eos(self) -> int:
        return self.stoi[EOS]

    def words(self, sentence: str) -> list[int]:
        """The sentence's word ids, without ``<bos>``/``<eos>``."""
        unk = self.stoi[UNK]
        return [self.stoi.get(word, unk) for word in tokenize(sentence)]

    def encode(self, sentence: str, max_len: int | None = None) -> list[int]:
        """``<bos> words <eos>``, cut at ``max_len`` ids with the last one made ``<eos>``.

        As video-caption.pytorch's dataloader does: ``cap = cap[:max_len]; cap[-1] = '<eos>'``.
        """
        ids = [self.bos, *self.words(sentence), self.eos]
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len]
            ids[-1] = self.eos
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``<eos>``, without ``<bos>`` and ``<pad>``."""
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i not in (self.bos, self.pad):
                words.append(self.itos[i])
        return words
