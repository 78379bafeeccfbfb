"""Peak memory of one worker process running the engine on a 2 s 4K clip with r2plus1d_18,
c3d and resnet152 (the models loaded, then the clip extracted), per decoder thread count.

    python benchmarks/memory.py [--workdir DIR] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vidfeat.media.tools import executable

RUN = """
import json, resource, sys
from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.media import probe
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit
from vidfeat.storage.store_dir import create_store

path, store, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = ("r2plus1d_18", "c3d", "resnet152")
pool = ExtractorPool({n: ExtractorSpec(n, {}, random_weights=True) for n in names}, "cpu")
for name in names:
    pool.get(name)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
engine = Engine(pool, batch_size=16, decoder_threads=threads)
engine.run([WorkUnit(VideoSource("4k", path), "visual", names, "xx/4k", probe(path))],
           str(create_store(store)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"loaded_mib": loaded, "peak_mib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vidfeat-memory-"))
    clip = workdir / "4k.mp4"
    if not clip.exists():
        subprocess.run([executable("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-t", "2", "-i",
                        "testsrc2=size=3840x2160:rate=30", "-c:v", "libx264", "-preset",
                        "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True)
    for threads in args.threads.split(","):
        result = subprocess.run([sys.executable, "-c", RUN, str(clip),
                                 str(workdir / f"store{threads}"), threads],
                                capture_output=True, text=True, check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"decoder threads {threads}: models loaded {figures['loaded_mib']:.0f} MiB, "
              f"peak {figures['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
