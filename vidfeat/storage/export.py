"""Exporting features into the layouts other tools read.

``export_npy`` follows v-iashin/video_features (``--on_extraction save_numpy``): a directory per
feature, and per video ``<video_id>_<feature>.npy`` [N, D] float32, ``<video_id>_timestamps_ms.npy``
[N] float64 (each row's start, in milliseconds) and ``<video_id>_fps.npy`` (a 0-d float64: the
feature's sampling rate if it has one, else the video's frame rate; left out when neither is
known), e.g. ``OUT/resnet152/v1_resnet152.npy``.

``export_paddle`` writes PaddleVideo MultimodalVideoTag's input: one pickle ``<video_id>.pkl``
per video, ``{'video': id, 'feature': {'image_pkl': (T, 2048), 'audio_pkl': (T', 128)},
'label': [ids or names]}``, float32. Its reader (scenario_lib/datareader/feature_reader.py)
indexes ``audio_pkl`` unconditionally and substitutes zeros (10, 128) itself when that array has
no rows. So a video without audio features gets an empty (0, 128) ``audio_pkl``: the file holds no
invented values, the reader applies its documented fallback, and the videos concerned are
logged and listed in ``OUT/audio_missing.tsv`` with the store's reason. A video without image
features cannot be used by that model and is not exported (logged, and listed in
``OUT/image_missing.tsv``).

``read_labels`` reads the labels for those pickles, in either of two forms, told apart by the
first line (integer ids after its first column, or not): ``VIDEO_ID<TAB or spaces>ID,ID,...``
with integer class ids (commas or blanks between them), keyed by the store's video id; or
MultimodalVideoTag's own label file, ``video<TAB>title<TAB>label1,label2``
(``load_video_file``: the video named by URL, path or file name; the labels by class name; a
line without labels is skipped and the first line with labels for a video wins), keyed as its
reader names the pickle, ``url.split('/')[-1].split('.')[0]``. The names or ids
are put in the pickle's ``label`` as given: the reader itself takes labels from its label file
and class list, not from the pickle.

``export_hdf5`` writes one HDF5 file with one [N, D] float32 dataset per video, ``f[video_id]``,
the layout 2D-TAN's Charades-STA and TACoS loaders read (microsoft/VideoX
2D-TAN/lib/datasets/charades.py, tacos.py: ``hdf5_file[vid][:]``) and its
``data/TACoS/merge_npys_to_hdf5.py`` writes; with ``dataset_name`` (e.g. ``c3d_features``),
``f[video_id][dataset_name]``, the layout of its ActivityNet loader (activitynet.py:
``f[vid]['c3d_features'][:]``).

``export_per_video`` writes ``OUT/<video_id>.npy`` [N, D] float32 per video, the file
video-caption.pytorch's dataloader reads (``np.load(os.path.join(dir, 'video%i.npy' % ix))``,
MSR-VTT ids being ``video0``, ``video1``, ...).

For both, several features are concatenated along features: the first feature's rows are kept
and each other feature is resampled onto their time spans (``FeatureStore.on_rows_of``), as S2VT
pipelines tile C3D onto frames. A video lacking one of the features is not exported (logged).

Every export first checks that each feature it is to write is in the store (for any video,
whatever its status): a name the store has never held (a typo, a feature not extracted) is a
ConfigError naming the store's features, raised before anything is written.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.storage.files import TEMP_SUFFIX
from vidfeat.storage.labels import MVT_FORM, is_tag_line, read_lines, read_tags
from vidfeat.storage.reader import FeatureStore, using_store
from vidfeat.storage.schema import FeatureEntry, Status

log = logging.getLogger(__name__)

# Python 3.4+ reads protocol 4; PaddleVideo's reader loads with encoding='iso-8859-1'
PICKLE_PROTOCOL = 4


def export_npy(store_or_path: FeatureStore | str | Path, outdir: str | Path,
               features: list[str] | None = None) -> int:
    """Write every successful (video, feature) as video_features-style .npy files.

    Returns the number of files written.
    """
    outdir = Path(outdir)
    written = 0
    with using_store(store_or_path) as store:
        if features is not None:
            check_features(store, features)
        for video_id in store.videos():
            video_fps = store.attrs(video_id).get("fps")
            for feature in store.features(video_id):
                if features is not None and feature not in features:
                    continue
                folder = outdir / feature
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{video_id}_{feature}.npy", store.get(video_id, feature))
                np.save(folder / f"{video_id}_timestamps_ms.npy",
                        store.times(video_id, feature)[:, 0] * 1000.0)
                written += 2
                fps = store.attrs(video_id, feature).get("fps")
                fps = fps if _is_number(fps) else video_fps
                if _is_number(fps):
                    np.save(folder / f"{video_id}_fps.npy", np.array(fps, dtype=np.float64))
                    written += 1
    return written


ID_FORM = "'VIDEO_ID ID,ID,...' with integer class ids"


def read_labels(path: str | Path) -> dict[str, list[int] | list[str]]:
    """The labels file for ``export_paddle``, in either form (see the module docstring).

    ConfigError, naming the file and line, for a line in neither form or in the other form
    than the first line's; ConfigError for a file that cannot be read."""
    lines = read_lines(path, "labels file")
    first = next((line for line in lines if line.strip()), "")
    # a title column and no integer ids (`v<TAB>1<TAB>3` is ids): MultimodalVideoTag's
    if is_tag_line(first) and _integers(first.strip().partition("\t")[2]) is None:
        labels: dict[str, list[int] | list[str]] = {}
        for tagged in read_tags(path):
            labels.setdefault(tagged.pickle_name, list(tagged.labels))
        return labels
    by_id: dict[str, list[int] | list[str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        video_id, _, ids = line.strip().partition("\t" if "\t" in line else " ")
        integers = _integers(ids)
        if integers is None:
            raise ConfigError(f"{path}:{number}: expected {ID_FORM} (or {MVT_FORM} on every "
                              f"line), got {line[:80]!r}")
        by_id[video_id] = integers
    return by_id


def _integers(text: str) -> list[int] | None:
    """``1,3`` or ``1 3`` as [1, 3]; None unless every item is an integer."""
    try:
        return [int(item) for item in text.replace(",", " ").split()]
    except ValueError:
        return None


def export_paddle(
    store_or_path: FeatureStore | str | Path,
    outdir: str | Path,
    labels: dict[str, list[int] | list[str]] | None = None,
    image: str = "resnet152",
    audio: str = "vggish",
) -> int:
    """Write one MultimodalVideoTag pickle per video with ``image`` features.

    Returns the number of pickles written; see the module docstring for missing audio.
    """
    outdir = Path(outdir)
    audio_missing: list[tuple[str, str]] = []
    image_missing: list[tuple[str, str]] = []
    written = 0
    with using_store(store_or_path) as store:
        check_features(store, [image, audio])
        outdir.mkdir(parents=True, exist_ok=True)
        entries = {(e.video_id, e.feature): e for e in store.entries()}
        audio_dim = _dim(entries.values(), audio)
        for video_id in sorted({video_id for video_id, _ in entries}):
            available = store.features(video_id)
            if image not in available:
                image_missing.append((video_id, _why_missing(entries.get((video_id, image)))))
                continue
            if audio in available:
                audio_rows = store.get(video_id, audio)
            else:
                audio_rows = np.zeros((0, audio_dim), dtype=np.float32)
                audio_missing.append((video_id, _why_missing(entries.get((video_id, audio)))))
            record = {
                "video": video_id,
                "feature": {"image_pkl": store.get(video_id, image), "audio_pkl": audio_rows},
                "label": list((labels or {}).get(video_id, [])),
            }
            with open(outdir / f"{video_id}.pkl", "wb") as file:
                pickle.dump(record, file, protocol=PICKLE_PROTOCOL)
            written += 1
    for name, missing, consequence in (
        ("audio_missing.tsv", audio_missing, f"empty audio_pkl (0, {audio_dim})"),
        ("image_missing.tsv", image_missing, "not exported"),
    ):
        if missing:
            (outdir / name).write_text("".join(f"{v}\t{why}\n" for v, why in missing))
            log.warning("%d videos without %s: %s; listed in %s", len(missing),
                        audio if name.startswith("audio") else image, consequence,
                        outdir / name)
    return written


def check_features(store: FeatureStore, features: list[str]) -> None:
    """ConfigError unless every feature is in the store (for at least one video, any status).

    Without it a misspelt or never extracted feature exports nothing and reports success; a
    feature that only failed or was skipped is in the store, and the export says which videos
    lack it."""
    known = sorted({entry.feature for entry in store.entries()})
    absent = [feature for feature in features if feature not in known]
    if absent:
        names = ", ".join(repr(feature) for feature in absent)
        raise ConfigError(f"{store.path}: no feature {names} in this store; its features: "
                          f"{', '.join(known) or 'none'}")


def _dim(entries: Iterable[FeatureEntry], feature: str) -> int:
    """The feature's width in this store; VGGish's 128 if no video has it."""
    dims = {e.dim for e in entries if e.feature == feature and e.status == Status.OK}
    if len(dims) > 1:
        raise ValueError(f"{feature} has several widths in this store: {sorted(dims)}")
    return dims.pop() if dims else 128


def _why_missing(entry: FeatureEntry | None) -> str:
    return "not extracted" if entry is None else f"{entry.status}: {entry.reason}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def export_hdf5(store_or_path: FeatureStore | str | Path, out_file: str | Path,
                features: list[str], dataset_name: str | None = None) -> int:
    """One dataset per video (2D-TAN's layout; see the module docstring). Returns the count."""
    out_file = Path(out_file)
    temp = out_file.with_name(f".{out_file.name}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    written = 0
    with using_store(store_or_path) as store:
        check_features(store, features)
        out_file.parent.mkdir(parents=True, exist_ok=True)  # as the other exports do
        try:
            with h5py.File(temp, "w", libver="v108") as h5:
                for video_id, rows in _concatenated(store, features):
                    group = h5.create_group(video_id) if dataset_name else h5
                    group.create_dataset(dataset_name or video_id, data=rows)
                    written += 1
            os.replace(temp, out_file)
        finally:
            temp.unlink(missing_ok=True)
    return written


def export_per_video(store_or_path: FeatureStore | str | Path, outdir: str | Path,
                     features: list[str]) -> int:
    """``OUT/<video_id>.npy`` per video (video-caption.pytorch's input). Returns the count."""
    outdir = Path(outdir)
    written = 0
    with using_store(store_or_path) as store:
        check_features(store, features)
        outdir.mkdir(parents=True, exist_ok=True)
        for video_id, rows in _concatenated(store, features):
            np.save(outdir / f"{video_id}.npy", rows)
            written += 1
    return written


def _concatenated(store: FeatureStore, features: list[str]) -> Iterable[tuple[str, np.ndarray]]:
    """(video_id, [N, sum of D] float32) for each video with rows of every feature; logs the
    others."""
    if not features:
        raise ValueError("name at least one feature to export")
    with_rows = {(e.video_id, e.feature) for e in store.entries()
                 if e.status == Status.OK and e.rows}
    lacking = []
    for video_id in store.videos():
        missing = [f for f in features if (video_id, f) not in with_rows]
        if missing:
            lacking.append(f"{video_id} ({', '.join(missing)})")
            continue
        on_rows = store.on_rows_of(video_id, features)
        yield video_id, np.concatenate([on_rows[f] for f in features], axis=1)
    if lacking:
        log.warning("%d videos lack a feature of %s and were not exported: %s", len(lacking),
                    ",".join(features), "; ".join(lacking))
