"""What the task datasets share: opening the store, matching annotation names to video ids,
reading a feature or zeros plus a mask, resampling to a fixed length, padding, splits.

Datasets read only through ``vidfeat.storage`` (the reader), so they see a store directory and
a merged file alike, and they hold nothing but the store, which pickles as its path: they work
in DataLoader workers started by fork or spawn.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from vidfeat.storage.reader import FeatureStore, open_store
from vidfeat.storage.schema import Status

log = logging.getLogger(__name__)



def as_store(store: FeatureStore | str | Path) -> FeatureStore:
    """The store itself, or the store directory / merged file at a path."""
    return store if isinstance(store, FeatureStore) else open_store(store)


def video_id_of(name: str, known: set[str]) -> str | None:
    """The store id an annotation's video name refers to, or None.

    Annotations name videos by id (``video0``), by file name (``s30-d52.avi``, TACoS) or by path
    (PaddleVideo's first column): the name itself, then its last path component, then that
    without its extension.
    """
    base = PureWindowsPath(PurePosixPath(name).name).name
    for candidate in (name, base, base.rsplit(".", 1)[0] if "." in base else base):
        if candidate in known:
            return candidate
    return None


def report_unknown(names: Iterable[str], store: FeatureStore, source: str | Path,
                   feature: str) -> None:
    """One warning for the annotated videos without usable ``feature`` rows (they are
    skipped): those the store lacks, and those whose feature failed, was skipped or is absent,
    with why (a researcher then knows to rerun the extraction, not to look for files)."""
    missing = sorted(set(names))
    if not missing:
        return
    entries = store.entries()
    in_store = {e.video_id for e in entries}
    recorded = {e.video_id: e for e in entries if e.feature == feature}
    unusable = {name: video_id_of(name, in_store) for name in missing}
    absent = [name for name, video_id in unusable.items() if video_id is None]
    parts = [f"{len(absent)} annotated videos are not in {store.path} ({_examples(absent)})"
             ] if absent else []
    why = [f"{name}: {recorded[video_id].status} ({recorded[video_id].reason or 'no rows'})"
           if video_id in recorded else f"{name}: not extracted"
           for name, video_id in unusable.items() if video_id is not None]
    if why:
        parts.append(f"{len(why)} have no usable {feature} rows ({_examples(why)})")
    log.warning("%s: %s; skipped", source, "; ".join(parts))


def _examples(items: list[str]) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def videos_with(store: FeatureStore, feature: str) -> set[str]:
    """Videos whose ``feature`` extracted successfully with at least one row."""
    return {e.video_id for e in store.entries()
            if e.feature == feature and e.status == Status.OK and e.rows > 0}


def feature_dim(store: FeatureStore, feature: str) -> int:
    """The feature's width in this store (its extractor's, with default options, if no video
    has it)."""
    dims = {e.dim for e in store.entries() if e.feature == feature and e.status == Status.OK}
    if len(dims) > 1:
        raise ValueError(f"{store.path}: {feature} has several widths: {sorted(dims)}")
    if dims:
        return dims.pop()
    from vidfeat.errors import ConfigError
    from vidfeat.extractors import get_extractor

    try:
        return get_extractor(feature)().feature_dim
    except ConfigError:
        raise ValueError(f"{store.path}: no video has {feature} and its width is "
                         f"unknown") from None


def read_or_zeros(store: FeatureStore, video_id: str, feature: str,
                  dim: int) -> tuple[np.ndarray, bool]:
    """``(rows [N, D] float32, True)``, or one row of zeros and False when the video lacks it."""
    if feature in store.features(video_id):
        rows = store.get(video_id, feature)
        if len(rows):
            return rows, True
    return np.zeros((1, dim), dtype=np.float32), False


def uniform_indices(count: int, wanted: int) -> np.ndarray:
    """``round(linspace(0, count-1, wanted))``: S2VT's frame choice (repeats when short)."""
    return np.round(np.linspace(0, count - 1, wanted)).astype(np.int64)


def average_to_fixed_length(rows: np.ndarray, length: int) -> np.ndarray:
    """2D-TAN's ``average_to_fixed_length`` (microsoft/VideoX 2D-TAN/lib/datasets/__init__.py).

    Output row i is the mean of input rows ``[round(i*N/L), round((i+1)*N/L))``; where that
    range is empty (fewer inputs than outputs) it is the single row at its start.
    """
    count = len(rows)
    bounds = torch.arange(0, length + 1, 1.0) / length * count
    bounds = torch.minimum(torch.round(bounds).long(), torch.tensor(count - 1)).tolist()
    out = np.empty((length, rows.shape[1]), dtype=np.float32)
    for i in range(length):
        start, end = bounds[i], bounds[i + 1]
        out[i] = rows[start:end].mean(axis=0) if start < end else rows[start]
    return out


def pad_sequences(sequences: Sequence[torch.Tensor],
                  present: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, D]`` zero-padded and the ``[B, T]`` bool mask of real rows.

    A sequence marked absent in ``present`` (zeros standing in for a missing feature) gets an
    all-False mask.
    """
    padded = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
    lengths = torch.tensor([len(s) for s in sequences])
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    if present is not None:
        mask &= torch.tensor(list(present), dtype=torch.bool)[:, None]
    return padded, mask


def seeded_split(keys: Iterable[str], val_fraction: float,
                 seed: int) -> tuple[list[str], list[str]]:
    """Sorted keys shuffled with ``seed``; the first ``val_fraction`` (at least one) held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    keys = sorted(set(keys))
    if len(keys) < 2:
        raise ValueError(f"cannot hold out a validation split from {len(keys)} videos")
    random.Random(seed).shuffle(keys)
    held_out = max(1, round(len(keys) * val_fraction))
    return sorted(keys[held_out:]), sorted(keys[:held_out])


def seeded_split_in_store(names: Iterable[str], store: FeatureStore | str | Path, feature: str,
                          val_fraction: float, seed: int,
                          source: str | Path) -> tuple[list[str], list[str]]:
    """``seeded_split`` of the annotation names whose video has ``feature`` in the store; the
    others get one warning (``report_unknown``) and are in neither split.

    Drawn after the drop: a video drawn into the small validation split and then dropped
    could leave that split empty, and only because of where the seed fell."""
    store = as_store(store)
    have = videos_with(store, feature)
    names = set(names)
    usable = {name for name in names if video_id_of(name, have) is not None}
    report_unknown(names - usable, store, source, feature)
    return seeded_split(usable, val_fraction, seed)


def l2_normalized(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (``F.normalize(x, dim=1)``: zero rows stay zero)."""
    return torch.nn.functional.normalize(torch.from_numpy(rows), dim=1).numpy()
