"""The store at the size of a nightly corpus: write + index, open, read, verify, rebuild, merge.

    python benchmarks/store_scale.py --videos 100000 [--rows 10] [--pack 50] [--writers 2]
                                     [--dir DIR] [--keep] [--skip merge,repair]

Synthetic rows (ResNet-152 [rows, 2048] + VGGish [rows, 128] float16 per video, with the
attributes the pipeline stores) go through the code the pipeline runs: ``write_shard`` in
``--writers`` processes, one pack of ``--pack`` videos per task, each task's index rows added
by this process (the driver) in one transaction as its result arrives. Each later phase runs
in a fresh process, so that its peak resident memory (its own and its children's) is its own:

    open        open_store + videos()
    gets        1,000 random get()s of both features; RSS after them
    verify      vidfeat verify (every dataset read)
    repair      vidfeat verify --repair (the index rebuilt from the shards, then verify)
    merge       vidfeat merge into one file
    merged      open the merged file, 1,000 random gets, then videos()

Prints one table: seconds, peak RSS (MB), and the store's files and bytes per video.
The figures and the machine they were measured on are in docs/store.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = {"resnet152": 2048, "vggish": 128}
GETS = 1000


def _feature_attrs(name: str) -> dict[str, Any]:
    """What records.feature_attrs stores for a model on the CPU."""
    return {"model": name, "layer": "avgpool" if name == "resnet152" else "embedding",
            "weights_sha256": "0" * 64, "random_weights": False, "precision": "fp32",
            "compiled": False, "config": f'{{"model": "{name}", "fps": 1.0}}',
            "config_hash": "1234abcd5678ef90", "padded": False, "device": "cpu",
            "vidfeat_version": "0.1.0", "fps": 1.0, "decoder": "pyav", "decode_device": "cpu"}


def _video(number: int, rows: int, rng: np.random.Generator) -> Any:
    from vidfeat.storage.schema import FeatureRecord, VideoRecord

    video_id = f"video_{number:08d}"
    starts = np.arange(rows, dtype=np.float64)
    times = np.stack([starts, starts + 1.0], axis=1)
    records = [FeatureRecord(name, "ok", data=rng.standard_normal((rows, dim), np.float32),
                             times=times, attrs=_feature_attrs(name))
               for name, dim in FEATURES.items()]
    attrs = {"source_path": f"/data/corpus/{video_id}.mp4", "video_id": video_id,
             "fingerprint": f"{number:032x}", "duration": float(rows), "fps": 25.0,
             "width": 640, "height": 360, "rotation": 0, "frame_count": 25 * rows,
             "video_codec": "h264", "start_time": 0.0, "has_audio": True,
             "audio_sample_rate": 44100, "audio_channels": 2, "audio_start": 0.0,
             "file_size": 1_000_000 + number, "file_mtime_ns": 1_700_000_000_000_000_000}
    return VideoRecord(video_id, attrs, records)


def _write_pack(store: str, first: int, count: int, rows: int) -> Any:
    from vidfeat.storage.writer import write_shard

    rng = np.random.default_rng(first)
    return write_shard(store, None, [_video(n, rows, rng) for n in range(first, first + count)])


def write_and_index(store: Path, videos: int, rows: int, pack: int, writers: int
                    ) -> dict[str, float]:
    from vidfeat.storage.index import StoreIndex

    index = StoreIndex(store)
    indexing = 0.0
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(writers, mp_context=context) as pool:
        firsts = list(range(0, videos, pack))
        pending = []
        for first in firsts:
            pending.append(pool.submit(_write_pack, str(store), first,
                                       min(pack, videos - first), rows))
            while len(pending) > 4 * writers or (first == firsts[-1] and pending):
                contents = pending.pop(0).result()
                begin = time.perf_counter()
                index.add([contents])
                indexing += time.perf_counter() - begin
    index.close()
    return {"seconds": time.perf_counter() - started, "index_seconds": indexing}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _random_gets(store: Any, ids: list[str]) -> float:
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for position in rng.integers(0, len(ids), GETS):
        for name in FEATURES:
            store.get(ids[position], name)
    return time.perf_counter() - started


def phase_open(path: str) -> dict[str, float]:
    from vidfeat.storage.reader import open_store

    started = time.perf_counter()
    store = open_store(path)
    opened = time.perf_counter() - started
    ids = store.videos()
    listed = time.perf_counter() - started - opened
    return {"seconds": opened, "videos_seconds": listed, "videos": len(ids)}


def phase_gets(path: str, videos: int) -> dict[str, float]:
    from vidfeat.storage.reader import open_store

    store = open_store(path)
    seconds = _random_gets(store, [f"video_{n:08d}" for n in range(videos)])
    return {"seconds": seconds, "rss_after": _rss_mb()}


def phase_verify(path: str, repair: bool = False) -> dict[str, float]:
    from vidfeat.storage.verify import verify

    started = time.perf_counter()
    problems = verify(path, repair=repair)
    if problems:
        raise RuntimeError(f"verify found {len(problems)} problems: {problems[:3]}")
    return {"seconds": time.perf_counter() - started}


def phase_merge(path: str, out: str) -> dict[str, float]:
    from vidfeat.storage.merge import merge

    started = time.perf_counter()
    merge(path, out)
    return {"seconds": time.perf_counter() - started}


def phase_merged(out: str, videos: int) -> dict[str, float]:
    from vidfeat.storage.reader import open_store

    started = time.perf_counter()
    store = open_store(out)
    seconds = _random_gets(store, [f"video_{n:08d}" for n in range(videos)])
    rss = _rss_mb()
    listed = time.perf_counter()
    count = len(store.videos())
    return {"seconds": listed - started - seconds, "gets_seconds": seconds, "rss_after": rss,
            "videos_seconds": time.perf_counter() - listed, "videos": count}


def _in_fresh_process(function: Callable[..., dict[str, float]], *args: Any
                      ) -> dict[str, float]:
    """``function(*args)`` in a new process; its result with its peak RSS (and its
    children's) in MB."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measured, function, *args).result()


def _measured(function: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    result = function(*args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {**result, "peak_mb": max(own, children)}


def _disk(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.stat(os.path.join(root, name)).st_size
    return files, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10, help="rows per video and feature")
    parser.add_argument("--pack", type=int, default=50, help="videos per shard (per task)")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the store behind")
    parser.add_argument("--skip", default="", help="phases to skip: repair,merge")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="store_scale-"))
    from vidfeat.storage.store_dir import create_store

    store = create_store(work / "store")
    rows: list[tuple[str, str]] = []

    def add(phase: str, seconds: float, peak: float | None, note: str = "") -> None:
        peak_text = f"{peak:8.0f}" if peak is not None else " " * 8
        rows.append((phase, f"{seconds:10.2f} {peak_text}  {note}"))
        print(f"{phase:<26}{rows[-1][1]}", flush=True)

    try:
        print(f"{args.videos} videos, {args.rows} rows each of "
              f"{' + '.join(f'{n} [{args.rows}, {d}]' for n, d in FEATURES.items())} float16, "
              f"{args.pack} videos per pack, {args.writers} writers; in {work}")
        print(f"{'phase':<26}{'seconds':>10} {'peak MB':>8}  note")
        written = write_and_index(store, args.videos, args.rows, args.pack, args.writers)
        add("write + index", written["seconds"], None,
            f"{args.videos / written['seconds']:.0f} videos/s written; index "
            f"{written['index_seconds']:.1f} s on the driver = "
            f"{args.videos / max(written['index_seconds'], 1e-9):.0f} videos/s")
        files, size = _disk(store / "shards")
        data = args.videos * args.rows * (2 * sum(FEATURES.values()) + 2 * 2 * 8)
        index_mb = (store / "index.sqlite").stat().st_size / 2**20
        print(f"  shards: {files} files ({files / args.videos:.4f} per video), "
              f"{(size - data) / args.videos:.0f} B of metadata per video "
              f"({size / 2**20:.0f} MB, of which {data / 2**20:.0f} MB rows); index "
              f"{index_mb:.0f} MB", flush=True)
        opened = _in_fresh_process(phase_open, str(store))
        add("open_store", opened["seconds"], None)
        add("videos()", opened["videos_seconds"], opened["peak_mb"],
            f"{opened['videos']} videos; peak of open + videos()")
        gets = _in_fresh_process(phase_gets, str(store), args.videos)
        add(f"{GETS} random gets", gets["seconds"], gets["peak_mb"],
            f"RSS after open + gets: {gets['rss_after']:.0f} MB")
        checked = _in_fresh_process(phase_verify, str(store))
        add("verify", checked["seconds"], checked["peak_mb"])
        if "repair" not in skip:
            repaired = _in_fresh_process(phase_verify, str(store), True)
            add("verify --repair", repaired["seconds"], repaired["peak_mb"])
        if "merge" not in skip:
            out = work / "merged.h5"
            merged = _in_fresh_process(phase_merge, str(store), str(out))
            add("merge", merged["seconds"], merged["peak_mb"],
                f"{out.stat().st_size / 2**20:.0f} MB")
            reading = _in_fresh_process(phase_merged, str(out), args.videos)
            add("open merged", reading["seconds"], None)
            add(f"{GETS} random gets, merged", reading["gets_seconds"], None,
                f"RSS after open + gets: {reading['rss_after']:.0f} MB")
            add("videos(), merged", reading["videos_seconds"], reading["peak_mb"],
                f"{reading['videos']} videos; peak of the whole phase")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
