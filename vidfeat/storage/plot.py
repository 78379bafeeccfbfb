"""Cosine self-similarity of a video's features over time, as a PNG.

Repeated scenes show up as bright off-diagonal blocks, a constant feature (a broken
extractor, random weights on a static video) as one flat square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vidfeat.storage.reader import FeatureStore, using_store

# more rows than a panel has pixels only cost memory (N^2): longer videos are averaged down
MAX_PLOTTED_ROWS = 1000
PANEL_INCHES = 4.0


def plot_video(store_or_path: FeatureStore | str | Path, video_id: str, out_png: str | Path,
               features: list[str] | None = None) -> Path:
    """One self-similarity panel per feature of ``video_id`` (all of its features by default)."""
    out_png = Path(out_png)
    with using_store(store_or_path) as store:
        names = store.features(video_id) if features is None else list(features)
        if not names:
            raise KeyError(f"video {video_id!r} has no features to plot")
        panels = [(name, store.get(video_id, name), store.times(video_id, name))
                  for name in names]
    # Figure + Agg canvas rather than pyplot: no global state, safe in threads and workers
    figure = Figure(figsize=(PANEL_INCHES * len(panels) + 1, PANEL_INCHES + 0.6))
    FigureCanvasAgg(figure)
    for position, (name, data, times) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), position)
        data, times = _downsampled(data, times)
        if len(data):
            extent = (times[0, 0], times[-1, 1], times[-1, 1], times[0, 0])
            image = axes.imshow(_cosine_similarity(data), extent=extent, vmin=-1, vmax=1,
                                cmap="viridis", interpolation="nearest")
            figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        axes.set_title(f"{name} [{len(data)} rows]")
        axes.set_xlabel("time (s)")
        axes.set_ylabel("time (s)")
    figure.suptitle(video_id)
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, format="png", dpi=100)
    return out_png


def _cosine_similarity(data: np.ndarray) -> np.ndarray:
    rows = data.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def _downsampled(data: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(data) <= MAX_PLOTTED_ROWS:
        return data, times
    bins = np.array_split(np.arange(len(data)), MAX_PLOTTED_ROWS)
    return (np.stack([data[b].mean(axis=0) for b in bins]),
            np.stack([[times[b[0], 0], times[b[-1], 1]] for b in bins]))
