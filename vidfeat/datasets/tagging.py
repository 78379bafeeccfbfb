"""Multi-label tagging (PaddleVideo MultimodalVideoTag): frame and audio sequences, multi-hot
labels.

Label file, as MultimodalVideoTag's ``load_video_file`` reads it
(applications/MultimodalVideoTag/scenario_lib/datareader/feature_reader.py): ``video \\t title
\\t label1,label2`` per line, the video named by file name with extension, path, or id; the
first line for a video wins; labels not in the class list are dropped, and so is a video left
without any. Class list (``load_class_file``): one class per line, its index the line number or
a second tab-separated column; without one, the sorted labels of the training file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vidfeat.datasets.common import (
    as_store,
    feature_dim,
    pad_sequences,
    read_or_zeros,
    report_unknown,
    video_id_of,
    videos_with,
)
from vidfeat.storage.labels import TaggedVideo, read_tags
from vidfeat.storage.reader import FeatureStore


def load_tags(path: str | Path) -> list[TaggedVideo]:
    """The labelled videos of a MultimodalVideoTag label file (``storage.labels``)."""
    return read_tags(path)


def load_classes(path: str | Path) -> list[str]:
    """Class names in index order: line i is class i, unless a second column gives the index."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the class list: {error}") from error
    indexed = {}
    for number, line in enumerate(lines):
        fields = line.strip().split("\t")
        try:
            indexed[int(fields[1]) if len(fields) == 2 else number] = fields[0]
        except ValueError:
            raise ValueError(f"{path}:{number + 1}: the index column is not an integer") from None
    if sorted(indexed) != list(range(len(indexed))):
        raise ValueError(f"{path}: class indices must be 0..{len(indexed) - 1} without gaps")
    return [indexed[i] for i in range(len(indexed))]


def classes_of(tagged: list[TaggedVideo]) -> list[str]:
    return sorted({label for video in tagged for label in video.labels})


class TaggingDataset(Dataset):
    """One item per labelled video with ``image`` features.

    Item: ``video_id``, ``image`` [T, D], ``audio`` [T', D'] (one zero row when the video has no
    audio feature, with ``audio_present`` False), ``labels`` [C] float32 multi-hot.
    """

    def __init__(self, store: FeatureStore | str | Path, tagged: list[TaggedVideo],
                 classes: list[str], *, image: str = "resnet152", audio: str = "vggish",
                 source: str = "labels") -> None:
        self.store = as_store(store)
        self.classes, self.image, self.audio = list(classes), image, audio
        self.image_dim = feature_dim(self.store, image)
        self.audio_dim = feature_dim(self.store, audio)
        index = {name: i for i, name in enumerate(self.classes)}
        have = videos_with(self.store, image)
        self.videos: list[tuple[str, list[int]]] = []
        unknown = []
        for video in tagged:
            video_id = video_id_of(video.video, have)
            labels = [index[label] for label in video.labels if label in index]
            if video_id is None:
                unknown.append(video.video)
            elif labels:
                self.videos.append((video_id, labels))
        report_unknown(unknown, self.store, source, image)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, labels = self.videos[index]
        image, _ = read_or_zeros(self.store, video_id, self.image, self.image_dim)
        audio, audio_present = read_or_zeros(self.store, video_id, self.audio, self.audio_dim)
        multi_hot = torch.zeros(len(self.classes))
        multi_hot[labels] = 1.0
        return {"video_id": video_id, "image": torch.from_numpy(image),
                "audio": torch.from_numpy(audio), "audio_present": audio_present,
                "labels": multi_hot}


def collate_tags(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """image [B, T, D] + ``image_mask``; audio [B, T', D'] + ``audio_mask`` (all False for a
    video without audio); labels [B, C]."""
    image, image_mask = pad_sequences([item["image"] for item in batch])
    audio, audio_mask = pad_sequences([item["audio"] for item in batch],
                                      [item["audio_present"] for item in batch])
    return {"video_ids": [item["video_id"] for item in batch],
            "image": image, "image_mask": image_mask, "audio": audio, "audio_mask": audio_mask,
            "labels": torch.stack([item["labels"] for item in batch])}
