"""The attention-LSTM tagger of PaddleVideo's MultimodalVideoTag
(applications/MultimodalVideoTag/scenario_lib/models/attention_lstm_ernie.py) without its text
branch (ERNIE and titles are outside a feature store): per modality a bidirectional LSTM
(512 units for frames, 128 for audio), dropout, attention pooling (a linear score per step,
softmax over the real steps, weighted sum: its ``lstm_pool_mode`` self-attention), the pooled
modalities concatenated, one linear layer, sigmoid multi-label loss. A video without audio
pools to zeros for that modality. Metrics: ``hit1``, ``hit2``, ``map``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidfeat.datasets.common import seeded_split_in_store
from vidfeat.datasets.tagging import (
    TaggedVideo,
    TaggingDataset,
    classes_of,
    collate_tags,
    load_classes,
    load_tags,
)
from vidfeat.datasets.trainers import metrics
from vidfeat.datasets.trainers.loop import (
    Standardize,
    TrainOptions,
    fit,
    loader,
    sample_rows,
    seed_everything,
)

LR = 7e-4  # MultimodalVideoTag conf/conf.txt
SETTINGS = {"image": "resnet152", "audio": "vggish", "image_hidden": 512, "audio_hidden": 128,
            "dropout": 0.5, "standardize": True}


class AttentionPool(nn.Module):
    """Bidirectional LSTM over the real steps, then attention pooling: [B, T, D] -> [B, 2H]."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.standardize = Standardize(dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(2 * hidden, 1)

    def forward(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()  # all-masked rows: weights zeroed below
        packed = nn.utils.rnn.pack_padded_sequence(self.standardize(rows), lengths,
                                                   batch_first=True,
                                                   enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                     total_length=rows.shape[1])
        states = self.dropout(states)
        scores = self.score(states).squeeze(2).masked_fill(~mask, -1e9)
        weights = torch.where(mask, torch.softmax(scores, dim=1), torch.zeros_like(scores))
        return (states * weights.unsqueeze(2)).sum(dim=1)


class AttentionLSTMTagger(nn.Module):
    def __init__(self, num_classes: int, image_dim: int, audio_dim: int,
                 image_hidden: int = 512, audio_hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.image = AttentionPool(image_dim, image_hidden, dropout)
        self.audio = AttentionPool(audio_dim, audio_hidden, dropout)
        self.classify = nn.Linear(2 * image_hidden + 2 * audio_hidden, num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, C]."""
        return self.classify(torch.cat([self.image(batch["image"], batch["image_mask"]),
                                        self.audio(batch["audio"], batch["audio_mask"])], dim=1))


def on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def select(tagged: list[TaggedVideo], names: list[str] | None) -> list[TaggedVideo]:
    if names is None:
        return tagged
    wanted = set(names)
    return [t for t in tagged if t.video in wanted]


def dataset(store: Any, tagged: list[TaggedVideo], classes: list[str], settings: dict[str, Any],
            source: str) -> TaggingDataset:
    return TaggingDataset(store, tagged, classes, image=settings["image"],
                          audio=settings["audio"], source=source)


@torch.no_grad()
def score(model: AttentionLSTMTagger, data: TaggingDataset, options: TrainOptions,
          device: torch.device) -> dict[str, float]:
    scores, labels = [], []
    for batch in loader(data, options, collate_tags, shuffle=False):
        scores.append(torch.sigmoid(model(on(batch, device))).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return metrics.tagging_metrics(np.concatenate(scores), np.concatenate(labels))


def chance(data: TaggingDataset, seed: int) -> dict[str, float]:
    labels = np.stack([data[i]["labels"].numpy() for i in range(len(data))])
    return metrics.chance(lambda rng: metrics.tagging_metrics(rng.random(labels.shape), labels),
                          seed)


def train(store: Any, annotations: Path, val_annotations: Path | None, settings: dict[str, Any],
          options: TrainOptions, device: torch.device,
          classes_file: Path | None = None) -> tuple[dict, list, dict]:
    generator = seed_everything(options.seed)
    tagged = load_tags(annotations)
    if val_annotations is not None:
        train_tagged, val_tagged = tagged, load_tags(val_annotations)
    else:
        train_names, val_names = seeded_split_in_store(
            (t.video for t in tagged), store, settings["image"], options.val_fraction,
            options.seed, annotations)
        train_tagged, val_tagged = select(tagged, train_names), select(tagged, val_names)
    classes = load_classes(classes_file) if classes_file else classes_of(train_tagged)
    train_data = dataset(store, train_tagged, classes, settings, str(annotations))
    val_data = dataset(store, val_tagged, classes, settings, str(val_annotations or annotations))
    if not len(train_data) or not len(val_data):
        raise ValueError(f"{annotations}: no training or no validation video is in the store")
    config = {"num_classes": len(classes), "image_dim": train_data.image_dim,
              "audio_dim": train_data.audio_dim,
              **{k: settings[k] for k in ("image_hidden", "audio_hidden", "dropout")}}
    model = AttentionLSTMTagger(**config)
    if settings["standardize"]:
        model.image.standardize.fit(sample_rows(train_data, "image", seed=options.seed))
        audio = sample_rows(train_data, "audio", seed=options.seed, present="audio_present")
        if audio:
            model.audio.standardize.fit(audio)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr or LR)
    loss_fn = nn.BCEWithLogitsLoss()

    def batch_loss(batch: dict[str, Any]) -> torch.Tensor:
        batch = on(batch, device)
        return loss_fn(model(batch), batch["labels"])

    history = fit(model, optimizer,
                  loader(train_data, options, collate_tags, shuffle=True, generator=generator),
                  batch_loss, lambda: score(model, val_data, options, device), options,
                  "tagging")
    checkpoint = {"task": "tagging", "model": config, "state_dict": model.state_dict(),
                  "settings": settings, "classes": classes,
                  "split": {"train": sorted({t.video for t in train_tagged}),
                            "val": sorted({t.video for t in val_tagged})}}
    return checkpoint, history, chance(val_data, options.seed)


def evaluate(checkpoint: dict[str, Any], store: Any, annotations: Path, names: list[str] | None,
             options: TrainOptions, device: torch.device) -> dict[str, float]:
    model = AttentionLSTMTagger(**checkpoint["model"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = dataset(store, select(load_tags(annotations), names), checkpoint["classes"],
                   checkpoint["settings"], str(annotations))
    if not len(data):
        raise ValueError(f"{annotations}: none of the videos to score is in the store")
    return score(model, data, options, device)
