"""Measurements behind README.md's store section: dataset layout, merge format, read speed.

    python benchmarks/store_read.py [layout|merge|read|all] [--videos 500] [--seed 0]

layout: per-video datasets of realistic sizes written contiguous, as one chunk, gzip and lzf;
        file size and the latency of opening and reading one whole dataset.
merge:  a merged copy vs a virtual-dataset master file over the shards: build time, size,
        open time, latency of reading one video's feature.
read:   a synthetic store (packs of 50 videos, as the pipeline writes them):
        random-access videos/s from the store, the merged file and one .npy per video, all
        as float32 (and the merged file as stored, float16, for comparison).

Everything runs in a temporary directory on the page cache (files just written), so the
figures compare per-read overheads (metadata, decoding), not the disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from vidfeat.storage.export import export_npy
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.merge import merge
from vidfeat.storage.reader import open_store
from vidfeat.storage.schema import VIDEOS_GROUP, FeatureRecord, VideoRecord
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.writer import write_shard

#: videos per shard, as a task of short videos packs them
PACK = 50
SHAPES = {"resnet152": (120, 2048), "c3d": (30, 4096), "vggish": (120, 128)}
LAYOUTS: dict[str, dict] = {
    "contiguous": {},
    "one chunk": {"chunks": True},
    "gzip-4+shuffle": {"chunks": True, "compression": "gzip", "compression_opts": 4,
                       "shuffle": True},
    "lzf+shuffle": {"chunks": True, "compression": "lzf", "shuffle": True},
}


def synthetic(feature: str, rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Values with the statistics of each feature: what compression sees matters here."""
    if feature == "resnet152":  # average-pooled ReLU maps: positive, skewed, few zeros
        scale = rng.gamma(0.6, 0.7, size=dim)
        values = rng.gamma(1.2, 1.0, size=(rows, dim)) * scale
    elif feature == "c3d":  # fc6 after ReLU: about two thirds exact zeros
        values = np.maximum(rng.normal(-0.5, 1.0, size=(rows, dim)) * 2.0, 0.0)
    else:  # VGGish embedding before activation: dense, centred
        values = rng.normal(0.0, 0.35, size=(rows, dim))
    return values.astype(np.float16)


def spans(rows: int, step: float) -> np.ndarray:
    starts = np.arange(rows) * step
    return np.stack([starts, starts + step], axis=1)


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds per call."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_layout(workdir: Path, rng: np.random.Generator, count: int = 200) -> None:
    print(f"\n== layout: {count} datasets per file, float16; read = open + read one dataset")
    print(f"{'feature':<10}{'shape':>12}  {'layout':<16}{'KiB/dataset':>12}{'ratio':>7}"
          f"{'write ms':>10}{'read us':>9}")
    for feature, (rows, dim) in SHAPES.items():
        arrays = [synthetic(feature, rows, dim, rng) for _ in range(count)]
        raw = arrays[0].nbytes
        for layout, options in LAYOUTS.items():
            path = workdir / f"layout-{feature}-{layout.replace(' ', '_')}.h5"
            started = time.perf_counter()
            with h5py.File(path, "w", libver="v108") as h5:
                for i, array in enumerate(arrays):
                    h5.create_dataset(f"v{i}/data", data=array, **options)
            write_ms = (time.perf_counter() - started) * 1000 / count
            per_dataset = path.stat().st_size / count
            order = rng.permutation(count)
            with h5py.File(path, "r") as h5:
                # open each dataset afresh, as the reader does: a dataset kept open would
                # answer repeats from its chunk cache and hide the decompression
                read_s = timed(lambda h5=h5, order=order: [h5[f"v{i}/data"][()] for i in order],
                               5) / count
            print(f"{feature:<10}{f'{rows}x{dim}':>12}  {layout:<16}{per_dataset / 1024:>12.1f}"
                  f"{per_dataset / raw:>7.2f}{write_ms:>10.2f}{read_s * 1e6:>9.0f}")


def build_store(directory: Path, videos: int, rng: np.random.Generator) -> list[str]:
    """Packs of PACK videos (visual and audio features), like the pipeline's tasks; indexed."""
    store = create_store(directory)
    index = StoreIndex(store)
    video_ids = [f"video{i:05d}" for i in range(videos)]
    for first in range(0, videos, PACK):
        pack = []
        for video_id in video_ids[first:first + PACK]:
            rows = int(rng.integers(40, 81))
            attrs = {"duration": float(rows), "fps": 25.0,
                     "source_path": f"/corpus/{video_id}.mp4"}
            pack.append(VideoRecord(video_id, attrs, [
                FeatureRecord(feature, "ok", data=synthetic(feature, rows, dim, rng),
                              times=spans(rows, 1.0), attrs={"config_hash": "abc"})
                for feature, dim in (("resnet152", 2048), ("vggish", 128))]))
        index.add([write_shard(store, None, pack)])
    index.close()
    return video_ids


def build_virtual_master(store: Path, master: Path) -> None:
    """Every (video, feature) as virtual datasets pointing into the shards."""
    index = StoreIndex(store)
    entries = index.entries()
    index.close()
    with h5py.File(master, "w", libver="latest") as h5:
        for entry in entries:
            group = h5.require_group(f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}")
            for name, shape, dtype in (("data", (entry.rows, entry.dim), entry.dtype),
                                       ("times", (entry.rows, 2), "float64")):
                layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
                # relative to the master file, which lives in the store directory
                layout[...] = h5py.VirtualSource(
                    entry.shard, f"{VIDEOS_GROUP}/{entry.video_id}/{entry.feature}/{name}",
                    shape=shape)
                group.create_virtual_dataset(name, layout)


def bench_merge(workdir: Path, rng: np.random.Generator, videos: int) -> None:
    print(f"\n== merge: {videos} videos x (resnet152 + vggish), packs of {PACK} videos")
    store = workdir / "merge-store"
    build_store(store, videos, rng)
    shard_bytes = sum(p.stat().st_size for p in (store / "shards").rglob("*.h5"))
    merged, master = workdir / "merged.h5", store / "virtual.h5"
    build = {"copy (merge())": timed(lambda: merge(store, merged), 1),
             "virtual datasets": timed(lambda: build_virtual_master(store, master), 1)}
    sample = [f"video{i:05d}" for i in rng.choice(videos, size=200, replace=False)]
    print(f"shards: {shard_bytes / 1e6:.1f} MB in "
          f"{sum(1 for _ in (store / 'shards').rglob('*.h5'))} files")
    print(f"{'format':<18}{'build s':>9}{'MB':>8}{'open ms':>9}{'read us':>9}")
    for name, path in (("copy (merge())", merged), ("virtual datasets", master)):
        open_s = timed(lambda p=path: h5py.File(p, "r").close(), 20)
        with h5py.File(path, "r") as h5:
            def read_sample(h5: h5py.File = h5) -> None:
                for video_id in sample:
                    h5[f"{VIDEOS_GROUP}/{video_id}/resnet152/data"][()]
            read_s = timed(read_sample, 3) / len(sample)
        print(f"{name:<18}{build[name]:>9.2f}{path.stat().st_size / 1e6:>8.1f}"
              f"{open_s * 1000:>9.2f}{read_s * 1e6:>9.0f}")


def bench_read(workdir: Path, rng: np.random.Generator, videos: int) -> None:
    print(f"\n== read: {videos} videos, resnet152 [40-80, 2048] + vggish [40-80, 128] float16; "
          "random order, both features per video, as float32")
    store = workdir / "read-store"
    video_ids = build_store(store, videos, rng)
    merged = merge(store, workdir / "read-merged.h5")
    npy_dir = workdir / "npy"
    export_npy(store, npy_dir)
    features = ("resnet152", "vggish")

    def from_store(path: Path, dtype: type | None = np.float32) -> Callable[[list[str]], None]:
        reader = open_store(path)

        def read(order: list[str]) -> None:
            for video_id in order:
                for feature in features:
                    reader.get(video_id, feature, dtype=dtype)
        return read

    def from_npy(order: list[str]) -> None:
        for video_id in order:
            for feature in features:
                np.load(npy_dir / feature / f"{video_id}_{feature}.npy")

    readers = {"store (shards)": from_store(store), "merged file": from_store(merged),
               "merged, float16": from_store(merged, dtype=None), "npy per video": from_npy}
    rates = {}
    for name, read in readers.items():
        order = list(rng.permutation(video_ids))
        first_pass = timed(lambda r=read, o=order: r(o), 1)
        later_passes = timed(lambda r=read, o=order: r(o), 3)
        rates[name] = (len(order) / first_pass, len(order) / later_passes)
    baseline = rates["npy per video"][1]
    print(f"{'source':<17}{'videos/s 1st pass':>19}{'videos/s later':>16}{'vs npy':>8}")
    for name, (first, later) in rates.items():
        print(f"{name:<17}{first:>19.0f}{later:>16.0f}{later / baseline:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["layout", "merge", "read",
                                                                    "all"])
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="vidfeat-bench-") as temp:
        workdir = Path(temp)
        if args.what in ("layout", "all"):
            bench_layout(workdir, rng)
        if args.what in ("merge", "all"):
            bench_merge(workdir, rng, args.videos)
        if args.what in ("read", "all"):
            bench_read(workdir, rng, args.videos)


if __name__ == "__main__":
    main()
