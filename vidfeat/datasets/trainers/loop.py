"""The loop every reference trainer shares: epochs with progress bars, validation after each,
the checkpoint, ``metrics.json`` and a PNG of the loss and metric curves."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVES = "curves.png"
STATISTICS_ITEMS = 2000  # items read to standardise features


@dataclass
class TrainOptions:
    """What every trainer takes; ``lr`` None: the published trainer's learning rate."""

    epochs: int = 10
    batch_size: int = 16
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.2
    workers: int = 0
    progress: bool = True


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader(dataset: Dataset, options: TrainOptions, collate: Callable, *,
           shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=options.batch_size, shuffle=shuffle,
                      collate_fn=collate, num_workers=options.workers, generator=generator,
                      persistent_workers=options.workers > 0)


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train: DataLoader,
        batch_loss: Callable[[dict[str, Any]], torch.Tensor],
        validate: Callable[[], dict[str, float]], options: TrainOptions,
        label: str) -> list[dict[str, float]]:
    """Train ``options.epochs`` epochs, validating after each; returns one row per epoch."""
    from tqdm import tqdm

    history = []
    for epoch in range(1, options.epochs + 1):
        model.train()
        losses = []
        bar = tqdm(train, desc=f"{label} epoch {epoch}/{options.epochs}", unit="batch",
                   disable=not options.progress, leave=False)
        for batch in bar:
            optimizer.zero_grad()
            loss = batch_loss(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        with torch.no_grad():
            metrics = validate()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **metrics})
        if options.progress:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            tqdm.write(f"{label} epoch {epoch}/{options.epochs}: loss {np.mean(losses):.4f}, "
                       f"{shown}")
    return history


def save_results(out: Path, checkpoint: dict[str, Any], history: list[dict[str, float]],
                 chance: dict[str, float], main_metric: str) -> dict[str, Any]:
    """Write the checkpoint, ``metrics.json`` (last epoch's metrics + ``chance``) and the
    curves; returns what ``metrics.json`` holds."""
    out.mkdir(parents=True, exist_ok=True)
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "loss")}
    torch.save({**checkpoint, "metrics": final, "history": history}, out / CHECKPOINT)
    metrics = {**final, "chance": chance, "epochs": len(history)}
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(history, chance, main_metric, out / CURVES)
    return metrics


def plot_curves(history: list[dict[str, float]], chance: dict[str, float], main_metric: str,
                path: Path) -> None:
    """Training loss and the validation metrics per epoch, chance dashed (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["loss"] for row in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="loss")
    for name in [k for k in history[0] if k not in ("epoch", "loss")]:
        line, = metric_axes.plot(epochs, [row[name] for row in history], marker="o", label=name,
                                 linewidth=2.5 if name == main_metric else 1.0)
        if name in chance:
            metric_axes.axhline(chance[name], color=line.get_color(), linestyle="--",
                                linewidth=0.8)
    metric_axes.set(xlabel="epoch", ylabel="validation", title="metrics (dashed: chance)")
    metric_axes.legend(fontsize=7)
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path)


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature dimension, with the training split's statistics.

    Random-weights ResNet-152 rows have norms near 1e9 and cosine similarities of 0.9999 whatever
    the input; pretrained features differ in scale per dimension too. The statistics are buffers,
    so they travel in the checkpoint.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, rows: list[torch.Tensor]) -> Standardize:
        """Statistics of the rows of every tensor in ``rows`` (each [N, D])."""
        stacked = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).double()
        std = stacked.std(dim=0, correction=0)
        self.mean.copy_(stacked.mean(dim=0))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def sample_rows(dataset: Dataset, key: str, limit: int = STATISTICS_ITEMS,
                seed: int = 0, present: str | None = None) -> list[torch.Tensor]:
    """``item[key]`` of up to ``limit`` items drawn with ``seed`` (only those where
    ``item[present]`` is true, when given): the rows ``Standardize.fit`` learns from."""
    indices = list(range(len(dataset)))
    random.Random(seed).shuffle(indices)
    rows = []
    for i in indices[:limit]:
        item = dataset[i]
        if present is None or item[present]:
            rows.append(item[key])
    return rows
