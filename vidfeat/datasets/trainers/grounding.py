"""2D-TAN (Zhang et al. 2020) as microsoft/VideoX ``2D-TAN/lib/models`` builds it: a 1x1
convolution and average pooling over the segments (FrameAvgPool), the dense 2D temporal map of
max-pooled spans (PropMaxPool), a sentence LSTM whose last state multiplies the map
(BaseFusion, then ``F.normalize``), stacked masked 2D convolutions (MapConv with
``get_padded_mask_and_weight``), a 1x1 prediction; the loss is ``bce_rescale_loss`` (IoU
scaled from [min_iou, max_iou] to [0, 1] as the target). Words are embedded by a learned table
(2D-TAN uses GloVe vectors, which cannot be downloaded here). Metrics: ``r{n}_iou{m}``, ``miou``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.datasets.common import seeded_split_in_store
from vidfeat.datasets.grounding import GroundingDataset, Moment, collate_moments, load_moments
from vidfeat.datasets.text import Vocabulary
from vidfeat.datasets.trainers import metrics
from vidfeat.datasets.trainers.loop import (
    Standardize,
    TrainOptions,
    fit,
    loader,
    sample_rows,
    seed_everything,
)

LR = 1e-4  # 2D-TAN's experiments/*.yaml
SETTINGS = {"feature": "c3d", "num_segments": 128, "target_stride": 1, "normalize": True,
            "min_count": 1, "hidden": 512, "word_dim": 300, "text_layers": 3, "map_layers": 8,
            "kernel": 5, "min_iou": 0.3, "max_iou": 0.7, "standardize": True}


class TAN2D(nn.Module):
    def __init__(self, vocab_size: int, feature_dim: int, target_stride: int = 1,
                 hidden: int = 512, word_dim: int = 300, text_layers: int = 3,
                 map_layers: int = 8, kernel: int = 5) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.standardize = Standardize(feature_dim)
        self.frame_conv = nn.Conv1d(feature_dim, hidden, 1)
        self.frame_pool = nn.AvgPool1d(target_stride, target_stride)
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.text = nn.LSTM(word_dim, hidden, num_layers=text_layers, batch_first=True)
        self.text_linear = nn.Linear(hidden, hidden)
        self.map_linear = nn.Conv2d(hidden, hidden, 1)
        # the first convolution pads for all of them, so the map keeps its size
        self.convs = nn.ModuleList(
            nn.Conv2d(hidden, hidden, kernel, padding=map_layers * (kernel - 1) // 2 if i == 0
                      else 0) for i in range(map_layers))
        self.predict = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, n, n] (zero outside the valid triangle) and the mask [1, 1, n, n]."""
        features = self.standardize(features).transpose(1, 2)
        segments = self.frame_pool(torch.relu(self.frame_conv(features)))
        map_h, map_mask = dense_max_pool_map(segments)
        text, _ = self.text(self.embedding(words))
        last = text[torch.arange(len(words)), word_mask.sum(dim=1) - 1]
        fused = F.normalize(self.text_linear(last)[:, :, None, None] * self.map_linear(map_h))
        fused = fused * map_mask
        mask = map_mask
        for conv in self.convs:
            fused = torch.relu(conv(fused))
            mask, weight = padded_mask_and_weight(mask, conv)
            fused = fused * weight
        return (self.predict(fused) * map_mask).squeeze(1), map_mask


def dense_max_pool_map(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PropMaxPool: map[:, :, i, j] = max of segments i..j; mask 1 where j >= i."""
    batch, hidden, size = segments.shape
    map_h = segments.new_zeros(batch, hidden, size, size)
    mask = segments.new_zeros(1, 1, size, size)
    pooled = segments
    for span in range(size):
        if span:
            pooled = F.max_pool1d(pooled, 2, stride=1)
        starts = torch.arange(size - span, device=segments.device)
        map_h[:, :, starts, starts + span] = pooled
        mask[:, :, starts, starts + span] = 1
    return map_h, mask


def padded_mask_and_weight(mask: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, ...]:
    """2D-TAN's ``get_padded_mask_and_weight``: 1 / (valid cells under the kernel), and where
    that is defined."""
    ones = torch.ones(1, 1, *conv.kernel_size, device=mask.device)
    counts = torch.round(F.conv2d(mask, ones, stride=conv.stride, padding=conv.padding,
                                  dilation=conv.dilation))
    weight = torch.where(counts > 0, 1 / counts.clamp(min=1), torch.zeros_like(counts))
    return (weight > 0).float(), weight


def bce_rescale_loss(scores: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                     min_iou: float, max_iou: float) -> torch.Tensor:
    """2D-TAN's ``bce_rescale_loss`` (bias 0)."""
    mask = mask.squeeze(1).expand_as(scores)
    probability = torch.sigmoid(scores) * mask
    target = ((targets - min_iou) / (max_iou - min_iou)).clamp(0, 1)
    losses = F.binary_cross_entropy(probability, target, reduction="none") * mask
    return losses.sum() / mask.sum()


def select(moments: list[Moment], names: list[str] | None) -> list[Moment]:
    if names is None:
        return moments
    wanted = set(names)
    return [m for m in moments if m.video in wanted]


def dataset(store: Any, moments: list[Moment], vocab: Vocabulary, settings: dict[str, Any],
            source: str) -> GroundingDataset:
    return GroundingDataset(store, moments, vocab, feature=settings["feature"],
                            num_segments=settings["num_segments"],
                            target_stride=settings["target_stride"],
                            normalize=settings["normalize"], source=source)


@torch.no_grad()
def score(model: TAN2D, data: GroundingDataset, options: TrainOptions,
          device: torch.device) -> dict[str, float]:
    ranked, moments = [], []
    for batch in loader(data, options, collate_moments, shuffle=False):
        scores, mask = model(batch["features"].to(device), batch["words"].to(device),
                             batch["word_mask"].to(device))
        probabilities = (torch.sigmoid(scores) * mask.squeeze(1)).cpu().numpy()
        for probability, span, duration in zip(probabilities, batch["spans"].numpy(),
                                               batch["durations"].tolist(), strict=True):
            ranked.append(metrics.ranked_segments(probability, duration))
            moments.append(span * duration)
    return metrics.grounding_metrics(ranked, moments)


def chance(data: GroundingDataset, seed: int) -> dict[str, float]:
    """The metrics of uniformly random scores over the valid map cells."""
    durations = [data.duration(i) for i in range(len(data))]
    moments = [(m.start, min(m.end, d)) for (_, m), d in zip(data.moments, durations,
                                                             strict=True)]

    def draw(rng: np.random.Generator) -> dict[str, float]:
        return metrics.grounding_metrics(
            [metrics.ranked_segments(rng.random((data.map_size, data.map_size)), d)
             for d in durations], moments)

    return metrics.chance(draw, seed)


def train(store: Any, annotations: Path, val_annotations: Path | None, settings: dict[str, Any],
          options: TrainOptions, device: torch.device) -> tuple[dict, list, dict]:
    generator = seed_everything(options.seed)
    moments = load_moments(annotations)
    if val_annotations is not None:
        train_moments, val_moments = moments, load_moments(val_annotations)
    else:
        train_names, val_names = seeded_split_in_store(
            (m.video for m in moments), store, settings["feature"], options.val_fraction,
            options.seed, annotations)
        train_moments, val_moments = select(moments, train_names), select(moments, val_names)
    vocab = Vocabulary.build((m.sentence for m in train_moments), settings["min_count"])
    train_data = dataset(store, train_moments, vocab, settings, str(annotations))
    val_data = dataset(store, val_moments, vocab, settings, str(val_annotations or annotations))
    if not len(train_data) or not len(val_data):
        raise ValueError(f"{annotations}: no training or no validation video is in the store")
    config = {"vocab_size": len(vocab), "feature_dim": train_data[0]["features"].shape[1],
              **{k: settings[k] for k in ("target_stride", "hidden", "word_dim", "text_layers",
                                          "map_layers", "kernel")}}
    model = TAN2D(**config)
    if settings["standardize"]:
        model.standardize.fit(sample_rows(train_data, "features", seed=options.seed))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr or LR)

    def batch_loss(batch: dict[str, Any]) -> torch.Tensor:
        scores, mask = model(batch["features"].to(device), batch["words"].to(device),
                             batch["word_mask"].to(device))
        return bce_rescale_loss(scores, mask, batch["map_targets"].to(device),
                                settings["min_iou"], settings["max_iou"])

    history = fit(model, optimizer,
                  loader(train_data, options, collate_moments, shuffle=True,
                         generator=generator),
                  batch_loss, lambda: score(model, val_data, options, device), options,
                  "grounding")
    checkpoint = {"task": "grounding", "model": config, "state_dict": model.state_dict(),
                  "settings": settings, "vocab": vocab.itos,
                  "split": {"train": sorted({m.video for m in train_moments}),
                            "val": sorted({m.video for m in val_moments})}}
    return checkpoint, history, chance(val_data, options.seed)


def evaluate(checkpoint: dict[str, Any], store: Any, annotations: Path, names: list[str] | None,
             options: TrainOptions, device: torch.device) -> dict[str, float]:
    model = TAN2D(**checkpoint["model"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = dataset(store, select(load_moments(annotations), names),
                   Vocabulary(checkpoint["vocab"]), checkpoint["settings"], str(annotations))
    if not len(data):
        raise ValueError(f"{annotations}: none of the moments to score has its video in the "
                         f"store")
    return score(model, data, options, device)
