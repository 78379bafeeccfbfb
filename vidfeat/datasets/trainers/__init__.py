"""Reference trainers on the store: S2VT captioning, 2D-TAN grounding, attention-LSTM tagging.

``train`` writes ``OUT/checkpoint.pt``, ``OUT/metrics.json`` (the last epoch's validation
metrics and ``chance``, the same metrics for random predictions) and ``OUT/curves.png``;
``evaluate`` scores a checkpoint on the train or validation videos it recorded, or on every
video of an annotation file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from vidfeat.datasets.trainers import captioning, grounding, tagging
from vidfeat.datasets.trainers.loop import CHECKPOINT, TrainOptions, save_results
from vidfeat.host import resolve_device

TASKS: dict[str, ModuleType] = {"captioning": captioning, "grounding": grounding,
                                "tagging": tagging}
MAIN_METRIC = {"captioning": "bleu4", "grounding": "r1_iou0.5", "tagging": "hit1"}
SPLITS = ("val", "train", "all")

__all__ = ["CHECKPOINT", "SPLITS", "TASKS", "TrainOptions", "evaluate", "settings_for", "train"]


def settings_for(task: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's settings (model size, features, ...) with ``overrides`` applied."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    defaults = TASKS[task].SETTINGS
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ValueError(f"{task} has no setting {', '.join(unknown)}; its settings: "
                         f"{', '.join(f'{k}={v}' for k, v in defaults.items())}")
    return {**defaults, **(overrides or {})}


def train(task: str, store: Any, annotations: str | Path, out: str | Path, *,
          val_annotations: str | Path | None = None, classes: str | Path | None = None,
          options: TrainOptions | None = None,
          settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``task``'s reference model; returns what ``OUT/metrics.json`` holds."""
    options = options or TrainOptions()
    if options.epochs < 1 or options.batch_size < 1:
        raise ValueError(f"epochs and batch size must be at least 1, got {options.epochs} and "
                         f"{options.batch_size}")
    chosen = settings_for(task, settings)
    if classes is not None and task != "tagging":
        raise ValueError("a class list is for tagging only")
    device = resolve_device(options.device)
    val = Path(val_annotations) if val_annotations else None
    extra = {"classes_file": Path(classes) if classes else None} if task == "tagging" else {}
    checkpoint, history, chance = TASKS[task].train(store, Path(annotations), val, chosen,
                                                    options, device, **extra)
    return save_results(Path(out), checkpoint, history, chance, MAIN_METRIC[task])


def evaluate(checkpoint: str | Path, store: Any, annotations: str | Path, split: str = "val",
             options: TrainOptions | None = None) -> dict[str, float]:
    """Score a checkpoint on its ``val`` or ``train`` videos in ``annotations``, or ``all``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    options = options or TrainOptions()
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        task = saved["task"]
    except (OSError, RuntimeError, KeyError, TypeError, EOFError,
            pickle.UnpicklingError) as error:
        # torch's UnpicklingError is a paragraph about weights_only that names no file
        reason = ("empty or truncated" if isinstance(error, EOFError) else
                  "torch.load cannot read it" if isinstance(error, pickle.UnpicklingError)
                  else error)
        raise ValueError(f"{checkpoint}: not a vidfeat trainer checkpoint: {reason}") from error
    names = None if split == "all" else saved["split"][split]
    return TASKS[task].evaluate(saved, store, Path(annotations), names, options,
                                resolve_device(options.device))
