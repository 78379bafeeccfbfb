"""S2VT (Venugopalan et al. 2015) as video-caption.pytorch's ``models/S2VTModel.py`` builds it:
two stacked LSTMs; the first reads the frame features, then zeros; the second reads the first's
output beside zero words while encoding, then the previous word while decoding; greedy decoding.
Frames past a video's length (``frames=None``) are packed away, so the state is the last real
frame's. Validation metric: ``bleu4``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidfeat.datasets.captioning import (
    S2VT_FRAMES,
    S2VT_MAX_LEN,
    CaptionAnnotations,
    CaptioningDataset,
    collate_captions,
    load_captions,
)
from vidfeat.datasets.common import seeded_split_in_store
from vidfeat.datasets.text import Vocabulary, tokenize
from vidfeat.datasets.trainers import metrics
from vidfeat.datasets.trainers.loop import (
    Standardize,
    TrainOptions,
    fit,
    loader,
    sample_rows,
    seed_everything,
)

LR = 4e-4  # video-caption.pytorch opts.py
SETTINGS = {"feature": "resnet152", "fuse": [], "frames": S2VT_FRAMES, "max_len": S2VT_MAX_LEN,
            "min_count": 1, "hidden": 512, "word_dim": 512, "dropout": 0.2,
            "standardize": True}
VAL_SPLITS = ("val", "validate")  # MSR-VTT's videodatainfo says "validate"


class S2VT(nn.Module):
    def __init__(self, vocab_size: int, feature_dim: int, hidden: int = 512,
                 word_dim: int = 512, dropout: float = 0.2, bos: int = 1, eos: int = 2) -> None:
        super().__init__()
        self.feature_dim, self.word_dim, self.bos, self.eos = feature_dim, word_dim, bos, eos
        self.standardize = Standardize(feature_dim)
        self.rnn1 = nn.LSTM(feature_dim, hidden, batch_first=True)
        self.rnn2 = nn.LSTM(hidden + word_dim, hidden, batch_first=True)
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def encode(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[tuple, tuple]:
        lengths = mask.sum(dim=1).cpu()
        inputs = self.dropout(self.standardize(features))
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True,
                                                   enforce_sorted=False)
        output1, state1 = self.rnn1(packed)
        output1, _ = nn.utils.rnn.pad_packed_sequence(output1, batch_first=True)
        no_words = output1.new_zeros(*output1.shape[:2], self.word_dim)
        packed2 = nn.utils.rnn.pack_padded_sequence(torch.cat([output1, no_words], dim=2),
                                                    lengths, batch_first=True,
                                                    enforce_sorted=False)
        _, state2 = self.rnn2(packed2)
        return state1, state2

    def step(self, words: torch.Tensor, state1: tuple, state2: tuple) -> tuple:
        """Decoding steps: [B, S] previous words -> [B, S, V] logits and the new states."""
        no_frames = words.new_zeros(*words.shape, self.feature_dim, dtype=torch.float32)
        output1, state1 = self.rnn1(no_frames, state1)
        output2, state2 = self.rnn2(torch.cat([output1, self.embedding(words)], dim=2), state2)
        return self.out(self.dropout(output2)), state1, state2

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits [B, L-1, V] for ``captions[:, 1:]``."""
        state1, state2 = self.encode(features, mask)
        logits, _, _ = self.step(captions[:, :-1], state1, state2)
        return logits

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
        """[B, max_len - 1] word ids, each step's most likely word fed back."""
        state1, state2 = self.encode(features, mask)
        words = torch.full((len(features), 1), self.bos, dtype=torch.long,
                           device=features.device)
        produced = []
        for _ in range(max_len - 1):
            logits, state1, state2 = self.step(words, state1, state2)
            words = logits.argmax(dim=2)
            produced.append(words)
        return torch.cat(produced, dim=1)


def select(annotations: CaptionAnnotations, names: list[str] | None) -> dict[str, list[str]]:
    if names is None:
        return annotations.captions
    wanted = set(names)
    return {k: v for k, v in annotations.captions.items() if k in wanted}


def split(annotations: CaptionAnnotations, val_annotations: Path | None,
          options: TrainOptions, store: Any, feature: str,
          source: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Train and validation captions: a validation file, MSR-VTT's own splits, or a seeded
    split of the videos that have ``feature`` in the store."""
    if val_annotations is not None:
        return annotations.captions, load_captions(val_annotations).captions
    if annotations.splits:
        train = [v for v, s in annotations.splits.items() if s == "train"]
        val = [v for v, s in annotations.splits.items() if s in VAL_SPLITS]
        if train and val:
            return select(annotations, train), select(annotations, val)
    train, val = seeded_split_in_store(annotations.captions, store, feature,
                                       options.val_fraction, options.seed, source)
    return select(annotations, train), select(annotations, val)


def dataset(store: Any, captions: dict[str, list[str]], vocab: Vocabulary,
            settings: dict[str, Any], source: str, **kwargs: Any) -> CaptioningDataset:
    return CaptioningDataset(store, captions, vocab, feature=settings["feature"],
                             fuse=tuple(settings["fuse"]), frames=settings["frames"],
                             max_len=settings["max_len"], source=source, **kwargs)


def build(checkpoint: dict[str, Any]) -> S2VT:
    return S2VT(**checkpoint["model"])


@torch.no_grad()
def score(model: S2VT, data: CaptioningDataset, options: TrainOptions,
          device: torch.device) -> dict[str, float]:
    hypotheses, references = [], []
    for batch in loader(data, options, collate_captions, shuffle=False):
        ids = model.greedy(batch["features"].to(device), batch["feature_mask"].to(device),
                           data.max_len)
        for video_id, row in zip(batch["video_ids"], ids.tolist(), strict=True):
            hypotheses.append(data.vocab.decode(row))
            references.append([tokenize(s) for s in data.references[video_id]])
    return {"bleu4": metrics.bleu4(hypotheses, references)}


def chance(train: CaptioningDataset, val: CaptioningDataset, seed: int) -> dict[str, float]:
    """BLEU-4 of a training caption drawn at random for each validation video."""
    pool = [tokenize(s) for refs in train.references.values() for s in refs]
    references = [[tokenize(s) for s in refs] for refs in val.references.values()]

    def draw(rng: np.random.Generator) -> dict[str, float]:
        picks = rng.integers(len(pool), size=len(references))
        return {"bleu4": metrics.bleu4([pool[i] for i in picks], references)}

    return metrics.chance(draw, seed)


def train(store: Any, annotations: Path, val_annotations: Path | None, settings: dict[str, Any],
          options: TrainOptions, device: torch.device) -> tuple[dict, list, dict]:
    """Returns the checkpoint, the per-epoch history and the chance levels."""
    generator = seed_everything(options.seed)
    train_captions, val_captions = split(load_captions(annotations), val_annotations, options,
                                         store, settings["feature"], annotations)
    vocab = Vocabulary.build((s for refs in train_captions.values() for s in refs),
                             settings["min_count"])
    train_data = dataset(store, train_captions, vocab, settings, str(annotations))
    val_data = dataset(store, val_captions, vocab, settings, str(val_annotations or annotations),
                       one_per_video=True)
    if not len(train_data) or not len(val_data):
        raise ValueError(f"{annotations}: no training or no validation video is in the store")
    feature_dim = train_data[0]["features"].shape[1]
    config = {"vocab_size": len(vocab), "feature_dim": feature_dim, "hidden": settings["hidden"],
              "word_dim": settings["word_dim"], "dropout": settings["dropout"],
              "bos": vocab.bos, "eos": vocab.eos}
    model = S2VT(**config)
    if settings["standardize"]:
        model.standardize.fit(sample_rows(train_data, "features", seed=options.seed))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr or LR)
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def batch_loss(batch: dict[str, Any]) -> torch.Tensor:
        captions = batch["captions"].to(device)
        logits = model(batch["features"].to(device), batch["feature_mask"].to(device), captions)
        mask = batch["caption_mask"][:, 1:].to(device).float()
        losses = loss_fn(logits.transpose(1, 2), captions[:, 1:])
        return (losses * mask).sum() / mask.sum()

    history = fit(model, optimizer,
                  loader(train_data, options, collate_captions, shuffle=True,
                         generator=generator),
                  batch_loss, lambda: score(model, val_data, options, device), options,
                  "captioning")
    checkpoint = {"task": "captioning", "model": config, "state_dict": model.state_dict(),
                  "settings": settings, "vocab": vocab.itos,
                  "split": {"train": sorted(train_captions), "val": sorted(val_captions)}}
    return checkpoint, history, chance(train_data, val_data, options.seed)


def evaluate(checkpoint: dict[str, Any], store: Any, annotations: Path, names: list[str] | None,
             options: TrainOptions, device: torch.device) -> dict[str, float]:
    model = build(checkpoint).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    vocab = Vocabulary(checkpoint["vocab"])
    data = dataset(store, select(load_captions(annotations), names), vocab,
                   checkpoint["settings"], str(annotations), one_per_video=True)
    if not len(data):
        raise ValueError(f"{annotations}: none of the videos to score is in the store")
    return score(model, data, options, device)
