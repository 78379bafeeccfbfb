"""Captioning (S2VT on MSVD / MSR-VTT): frame feature sequences and tokenised captions.

Annotations: MSR-VTT's ``{"videos": [{"video_id", "split"}, ...], "sentences": [{"video_id",
"caption"}, ...]}`` (``videos`` optional: it gives the splits) or a plain ``{video_id:
[sentence, ...]}``. Features per video: the frame feature's rows (``resnet152``), optionally with
other features (``c3d``, ``vggish``) resampled onto those rows and concatenated, then either
exactly ``frames`` rows chosen uniformly (S2VT: 40, ``round(linspace(0, N-1, 40))``) or all rows,
padded in the batch with a mask. Captions: ``<bos> words <eos>``, cut at 28 ids as
video-caption.pytorch does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.datasets.common import (
    as_store,
    feature_dim,
    pad_sequences,
    report_unknown,
    uniform_indices,
    video_id_of,
    videos_with,
)
from vidfeat.datasets.text import Vocabulary
from vidfeat.storage.reader import FeatureStore

S2VT_FRAMES = 40
S2VT_MAX_LEN = 28  # ids per caption, <bos> and <eos> included (video-caption.pytorch opts.py)


@dataclass
class CaptionAnnotations:
    """Captions per video id as the annotation names it, and the split each video is in."""

    captions: dict[str, list[str]]
    splits: dict[str, str] = field(default_factory=dict)


def load_captions(path: str | Path) -> CaptionAnnotations:
    """Read an MSR-VTT-style or a plain ``{video_id: [sentences]}`` caption JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {error}") from error
    if isinstance(data, dict) and "sentences" in data:
        captions: dict[str, list[str]] = {}
        try:
            for sentence in data["sentences"]:
                captions.setdefault(str(sentence["video_id"]), []).append(sentence["caption"])
            splits = {str(v["video_id"]): v["split"] for v in data.get("videos", [])}
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: MSR-VTT sentences need video_id and caption, videos "
                             f"video_id and split (missing {error})") from error
        return CaptionAnnotations(captions, splits)
    if isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                      for v in data.values()):
        return CaptionAnnotations({str(k): list(v) for k, v in data.items()})
    raise ValueError(f'{path}: expected {{"sentences": [...]}} (MSR-VTT) or '
                     f"{{video_id: [sentences]}}")


class CaptioningDataset(Dataset):
    """One item per (video, caption), or per video with ``one_per_video`` (for evaluation).

    Item: ``video_id``, ``features`` [T, D] float32 (T = ``frames`` when set), ``present``
    [1 + len(fuse)] bool (False where the video lacks a fused feature: its columns are zeros),
    ``caption`` [L] int64 (the first caption with ``one_per_video``).
    """

    def __init__(self, store: FeatureStore | str | Path, captions: dict[str, list[str]],
                 vocab: Vocabulary, *, feature: str = "resnet152",
                 fuse: tuple[str, ...] = (), frames: int | None = S2VT_FRAMES,
                 max_len: int = S2VT_MAX_LEN, one_per_video: bool = False,
                 source: str = "captions") -> None:
        self.store = as_store(store)
        self.vocab, self.feature, self.fuse = vocab, feature, tuple(fuse)
        self.frames, self.max_len = frames, max_len
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        self.fuse_dims = {name: feature_dim(self.store, name) for name in self.fuse}
        self.fusable = {name: videos_with(self.store, name) for name in self.fuse}
        have = videos_with(self.store, feature)
        self.references: dict[str, list[str]] = {}
        unknown = []
        for name, sentences in sorted(captions.items()):
            video_id = video_id_of(name, have)
            if video_id is None:
                unknown.append(name)
            elif sentences:
                self.references.setdefault(video_id, []).extend(sentences)
        report_unknown(unknown, self.store, source, feature)
        self.items = [(v, i) for v, refs in self.references.items()
                      for i in (range(1) if one_per_video else range(len(refs)))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, caption = self.items[index]
        features, present = self.video_features(video_id)
        ids = self.vocab.encode(self.references[video_id][caption], self.max_len)
        return {"video_id": video_id, "features": torch.from_numpy(features),
                "present": torch.tensor(present), "caption": torch.tensor(ids)}

    def video_features(self, video_id: str) -> tuple[np.ndarray, list[bool]]:
        """The video's rows (fused, sampled to ``frames``) and which features were present."""
        fused = [name for name in self.fuse if video_id in self.fusable[name]]
        on_rows = self.store.on_rows_of(video_id, [self.feature, *fused])
        columns = [on_rows[self.feature]]
        for name in self.fuse:
            columns.append(on_rows[name] if name in on_rows else
                           np.zeros((len(columns[0]), self.fuse_dims[name]), np.float32))
        rows = np.concatenate(columns, axis=1)
        if self.frames is not None:
            rows = rows[uniform_indices(len(rows), self.frames)]
        return np.ascontiguousarray(rows), [True] + [name in fused for name in self.fuse]


def collate_captions(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Features [B, T, D] with ``feature_mask`` [B, T]; captions [B, L] padded with ``pad_id``
    and ``caption_mask`` [B, L]."""
    features, feature_mask = pad_sequences([item["features"] for item in batch])
    captions = torch.nn.utils.rnn.pad_sequence([item["caption"] for item in batch],
                                               batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(item["caption"]) for item in batch])
    return {
        "video_ids": [item["video_id"] for item in batch],
        "features": features, "feature_mask": feature_mask,
        "present": torch.stack([item["present"] for item in batch]),
        "captions": captions,
        "caption_mask": torch.arange(captions.shape[1])[None, :] < lengths[:, None],
    }
