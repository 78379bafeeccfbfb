"""Moment grounding (TALL, 2D-TAN on Charades-STA, TACoS, ActivityNet Captions).

Annotations, as 2D-TAN's ``data/`` folders ship them (microsoft/VideoX 2D-TAN/lib/datasets/):
- Charades-STA ``charades_sta_{split}.txt``: ``vid start end##sentence`` per line, seconds;
  the duration comes from the store (2D-TAN reads it from Charades_v1_{split}.csv).
- TACoS ``{split}.json``: ``{vid: {"num_frames", "fps", "timestamps": [[s, e] frames],
  "sentences"}}``; seconds = frames / fps, duration = num_frames / fps.
- ActivityNet Captions ``{split}.json``: ``{vid: {"duration", "timestamps": [[s, e] seconds],
  "sentences"}}``.
As there, a moment is kept only when start < end, and clipped to [0, duration].

Features: the clip feature's rows (c3d), optionally L2-normalised, averaged to ``num_segments``
rows (``average_to_fixed_length``); the target is 2D-TAN's temporal map: the IoU of every
candidate [i*d/n, (j+1)*d/n] with the moment, on the valid upper triangle j >= i.
TALL's inputs are ``tall_windows``: sliding windows with their left and right context.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.datasets.common import (
    as_store,
    average_to_fixed_length,
    l2_normalized,
    report_unknown,
    video_id_of,
    videos_with,
)
from vidfeat.datasets.text import Vocabulary
from vidfeat.storage.reader import FeatureStore

log = logging.getLogger(__name__)

NUM_SEGMENTS = 128


@dataclass(frozen=True)
class Moment:
    """A sentence and the span [start, end] seconds of the video it describes."""

    video: str  # as the annotation names it
    start: float
    end: float
    sentence: str
    duration: float | None = None  # None: the store's


def load_moments(path: str | Path) -> list[Moment]:
    """Charades-STA (.txt), TACoS or ActivityNet Captions (.json) annotations."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error}") from error
    if path.suffix.lower() != ".json":
        return _charades(path, text)
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{video: {{timestamps, sentences, ...}}}}")
    moments = []
    for video, anno in data.items():
        try:
            if "num_frames" in anno:  # TACoS: frames
                fps = float(anno["fps"])
                duration = anno["num_frames"] / fps
                spans = [(s / fps, e / fps) for s, e in anno["timestamps"]]
            else:  # ActivityNet Captions: seconds
                duration = float(anno["duration"])
                spans = [(float(s), float(e)) for s, e in anno["timestamps"]]
            pairs = list(zip(spans, anno["sentences"], strict=True))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: video {video}: needs timestamps, sentences and "
                             f"duration (or num_frames and fps): {error!r}") from error
        moments += [Moment(video, max(s, 0.0), min(e, duration), sentence.strip(), duration)
                    for (s, e), sentence in pairs if s < e]
    return moments


def _charades(path: Path, text: str) -> list[Moment]:
    moments = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        anno, sep, sentence = line.partition("##")
        fields = anno.split()
        try:
            if not sep or len(fields) != 3:
                raise ValueError
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'video start end##sentence', "
                             f"got {line[:80]!r}") from None
        if start < end:
            moments.append(Moment(fields[0], start, end, sentence.strip().rstrip(".")))
    return moments


def span_iou(candidates: np.ndarray, moment: tuple[float, float]) -> np.ndarray:
    """IoU of each [start, end] row with ``moment`` (2D-TAN's ``core/eval.py`` ``iou``)."""
    start, end = moment
    inter = np.maximum(0.0, np.minimum(candidates[:, 1], end) - np.maximum(candidates[:, 0], start))
    union = np.maximum(candidates[:, 1], end) - np.minimum(candidates[:, 0], start)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def map_candidates(map_size: int, duration: float) -> np.ndarray:
    """[n, n, 2]: candidate (i, j) spans [i*d/n, (j+1)*d/n] seconds (valid where j >= i)."""
    starts = np.arange(map_size) * duration / map_size
    ends = np.arange(1, map_size + 1) * duration / map_size
    return np.stack(np.broadcast_arrays(starts[:, None], ends[None, :]), axis=2)


def map_mask(map_size: int) -> np.ndarray:
    """The valid upper triangle (end index >= start index) of the temporal map."""
    return np.triu(np.ones((map_size, map_size), dtype=bool))


def temporal_map_target(start: float, end: float, duration: float, map_size: int) -> np.ndarray:
    """2D-TAN's ``map_gt``: IoU of each candidate with [start, end]; zero below the diagonal."""
    candidates = map_candidates(map_size, duration).reshape(-1, 2)
    ious = span_iou(candidates, (start, end)).reshape(map_size, map_size)
    return (ious * map_mask(map_size)).astype(np.float32)


class GroundingDataset(Dataset):
    """One item per moment whose video has ``feature``.

    Item: ``video_id``, ``features`` [num_segments, D] float32, ``words`` [L] int64,
    ``span`` [2] (start, end) / duration, ``duration`` seconds, ``map_target`` [n, n] float32
    with n = num_segments // target_stride (2D-TAN's NUM_SAMPLE_CLIPS // TARGET_STRIDE).
    """

    def __init__(self, store: FeatureStore | str | Path, moments: list[Moment],
                 vocab: Vocabulary, *, feature: str = "c3d", num_segments: int = NUM_SEGMENTS,
                 target_stride: int = 1, normalize: bool = True,
                 source: str = "moments") -> None:
        if num_segments < 1 or target_stride < 1 or num_segments % target_stride:
            raise ValueError(f"num_segments ({num_segments}) must be a positive multiple of "
                             f"target_stride ({target_stride})")
        self.store = as_store(store)
        self.vocab, self.feature = vocab, feature
        self.num_segments, self.normalize = num_segments, normalize
        self.map_size = num_segments // target_stride
        have = videos_with(self.store, feature)
        self.moments: list[tuple[str, Moment]] = []
        unknown, past_end = [], []
        for moment in moments:
            video_id = video_id_of(moment.video, have)
            if video_id is None:
                unknown.append(moment.video)
                continue
            # 2D-TAN's charades.py clips the end to the duration, then keeps start < end: a
            # moment starting at or after the video's end (Charades-STA's durations come from
            # the store, unknown when the file was read) has no span to learn or score
            duration = (moment.duration if moment.duration is not None
                        else self._store_duration(video_id))
            if max(moment.start, 0.0) < min(moment.end, duration):
                self.moments.append((video_id, moment))
            else:
                past_end.append(f"{moment.video} {moment.start:g}-{moment.end:g}s "
                                f"(duration {duration:g}s)")
        report_unknown(unknown, self.store, source, feature)
        if past_end:
            log.warning("%s: %d moments start at or after their video's end; skipped (%s)",
                        source, len(past_end),
                        "; ".join(past_end[:3]) + ("; ..." if len(past_end) > 3 else ""))

    def __len__(self) -> int:
        return len(self.moments)

    def duration(self, index: int) -> float:
        video_id, moment = self.moments[index]
        if moment.duration is not None:
            return moment.duration
        return self._store_duration(video_id)

    def _store_duration(self, video_id: str) -> float:
        """The video's duration attribute, else the end of its last feature row."""
        duration = self.store.attrs(video_id).get("duration")
        if isinstance(duration, (int, float)) and duration > 0:
            return float(duration)
        return float(self.store.times(video_id, self.feature)[:, 1].max())

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, moment = self.moments[index]
        duration = self.duration(index)
        start, end = max(moment.start, 0.0), min(moment.end, duration)
        rows = self.store.get(video_id, self.feature)
        if self.normalize:
            rows = l2_normalized(rows)
        return {
            "video_id": video_id,
            "features": torch.from_numpy(average_to_fixed_length(rows, self.num_segments)),
            "words": torch.tensor(self.vocab.words(moment.sentence) or [self.vocab.stoi["<unk>"]]),
            "span": torch.tensor([start / duration, end / duration], dtype=torch.float32),
            "duration": duration,
            "map_target": torch.from_numpy(
                temporal_map_target(start, end, duration, self.map_size)),
        }


def collate_moments(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Features [B, N, D]; words [B, L] padded with 0 and ``word_mask`` [B, L]; spans [B, 2];
    map targets [B, n, n]; durations [B]."""
    words = torch.nn.utils.rnn.pad_sequence([item["words"] for item in batch], batch_first=True)
    lengths = torch.tensor([len(item["words"]) for item in batch])
    return {
        "video_ids": [item["video_id"] for item in batch],
        "features": torch.stack([item["features"] for item in batch]),
        "words": words,
        "word_mask": torch.arange(words.shape[1])[None, :] < lengths[:, None],
        "spans": torch.stack([item["span"] for item in batch]),
        "durations": torch.tensor([item["duration"] for item in batch], dtype=torch.float64),
        "map_targets": torch.stack([item["map_target"] for item in batch]),
    }


def sliding_windows(duration: float, sizes: tuple[float, ...],
                    overlap: float = 0.8) -> np.ndarray:
    """TALL's candidates: windows of each size (seconds), each ``size * (1 - overlap)`` after
    the previous, from 0 while they fit in the video (one window of the video's length for a
    size longer than it). [K, 2] seconds."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    windows = []
    for size in sizes:
        if size >= duration:
            windows.append((0.0, duration))
            continue
        step = size * (1 - overlap)
        count = int(np.floor((duration - size) / step + 1e-9)) + 1
        windows += [(k * step, k * step + size) for k in range(count)]
    return np.unique(np.array(windows, dtype=np.float64), axis=0)


def tall_windows(rows: np.ndarray, times: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """TALL's visual input per window: ``[mean(left context), mean(window), mean(right
    context)]``, the contexts being one window length before and after it. A region no row
    overlaps (the context past the video's ends) is zeros. [K, 3D] float32."""
    centres = times.mean(axis=1)
    out = np.zeros((len(windows), 3 * rows.shape[1]), dtype=np.float32)
    for k, (start, end) in enumerate(windows):
        length = end - start
        for part, (lo, hi) in enumerate(((start - length, start), (start, end),
                                         (end, end + length))):
            inside = (centres >= lo) & (centres < hi)
            if inside.any():
                out[k, part * rows.shape[1]:(part + 1) * rows.shape[1]] = rows[inside].mean(0)
    return out


class TallDataset(Dataset):
    """TALL/CTRL's view of the moments: per moment, every sliding window with its context.

    Item: ``video_id``, ``windows`` [K, 2] seconds, ``features`` [K, 3D] (``tall_windows``),
    ``words`` [L], ``iou`` [K] of each window with the moment, ``offsets`` [K, 2] (moment start
    minus window start, moment end minus window end: CTRL's regression targets).
    """

    def __init__(self, grounding: GroundingDataset, sizes: tuple[float, ...] = (2.0, 4.0, 8.0),
                 overlap: float = 0.8) -> None:
        self.grounding, self.sizes, self.overlap = grounding, sizes, overlap

    def __len__(self) -> int:
        return len(self.grounding)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.grounding
        video_id, moment = source.moments[index]
        duration = source.duration(index)
        rows = source.store.get(video_id, source.feature)
        if source.normalize:
            rows = l2_normalized(rows)
        windows = sliding_windows(duration, self.sizes, self.overlap)
        start, end = max(moment.start, 0.0), min(moment.end, duration)
        return {
            "video_id": video_id,
            "windows": torch.from_numpy(windows),
            "features": torch.from_numpy(
                tall_windows(rows, source.store.times(video_id, source.feature), windows)),
            "words": torch.tensor(source.vocab.words(moment.sentence)),
            "iou": torch.from_numpy(span_iou(windows, (start, end))),
            "offsets": torch.from_numpy(np.array([start, end]) - windows),
        }
