"""A nightly rerun that finds nothing to do, at the size of a nightly corpus.

    python benchmarks/noop_rerun.py [--videos 100000] [--pack 50] [--dir DIR] [--keep]

Makes one 1 s video and extracts it for real (VGGish, random weights), then gives the corpus
``--videos`` files: hard links to that video (each its own path and video id, the same
content and modification time). Each link's store record is the real one's rows and
attributes with its own path and id, written with ``write_shard`` in packs of ``--pack``
videos and indexed as a run indexes them, so that the store holds every video up to date
without extracting each one. Then times ``vidfeat extract CORPUS --store STORE --features
vggish --random-weights``, the whole command, twice: it must report every video up to date,
exit 0 and start no cluster. The goal (issue 18): <= 30 s at 100k videos. Figures and
machine: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latency import make_video

from vidfeat.storage.index import StoreIndex
from vidfeat.storage.reader import open_store
from vidfeat.storage.schema import FeatureRecord, Status, VideoRecord
from vidfeat.storage.writer import write_shard

FEATURE = "vggish"
#: ext4 allows 65,000 links to one file
LINKS_PER_FILE = 60_000


def extract(corpus: Path, store: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vidfeat", "extract", str(corpus),
                             "--store", str(store), "--features", FEATURE,
                             "--random-weights", "--no-progress"],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"vidfeat extract: exit {result.returncode}\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def fill(store: Path, corpus: Path, first: Path, videos: int, pack: int) -> float:
    """The store holds ``videos`` links to ``first``, each as the real run stored ``first``."""
    with open_store(store) as opened:
        attrs = opened.attrs(first.stem)
        rows, times = opened.get(first.stem, FEATURE, dtype=None), opened.times(first.stem,
                                                                               FEATURE)
        feature_attrs = opened.attrs(first.stem, FEATURE)
    started = time.perf_counter()
    index = StoreIndex(store)
    batch: list[VideoRecord] = []
    source = first
    for number in range(1, videos):
        if number % LINKS_PER_FILE == 0:  # a file system's limit: a copy, with the same mtime
            source = shutil.copy2(first, corpus.parent / f"source{number}.mp4")
        path = corpus / f"v{number:07d}.mp4"
        os.link(source, path)
        video_attrs = dict(attrs, source_path=str(path), video_id=path.stem)
        batch.append(VideoRecord(path.stem, video_attrs, [FeatureRecord(
            FEATURE, Status.OK, data=rows, times=times, attrs=feature_attrs)]))
        if len(batch) == pack or number == videos - 1:
            index.add([write_shard(str(store), None, batch, dtype=str(rows.dtype))])
            batch = []
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--pack", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="noop-", dir=args.dir))
    try:
        corpus, store = work / "corpus", work / "store"
        corpus.mkdir()
        first = make_video(corpus / "v0000000.mp4", 1.0, "320x240")
        extract(corpus, store)
        filled = fill(store, corpus, first, args.videos, args.pack)
        print(f"{args.videos} videos: store filled in {filled:.1f} s")
        for attempt in (1, 2):
            seconds, out = extract(corpus, store)
            summary = next(line for line in out.splitlines() if " videos: " in line)
            if f"{args.videos} already up to date" not in summary:
                raise RuntimeError(f"not a no-op: {summary}")
            print(f"no-op rerun {attempt} of {args.videos} videos: {seconds:.1f} s "
                  f"({1e6 * seconds / args.videos:.0f} us per video): {summary}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
