r"""ResNet-152 frame features: v-iashin/video_features against `vidfeat extract`, side by side.

    python benchmarks/video_features_side_by_side.py --video-features DIR --python PATH
        [--videos 3] [--seconds 40] [--workers 2]

Makes ``--videos`` 640x360 H.264 videos of ``--seconds`` each (as benchmarks/latency.py
does), then times two whole commands on them, each in a fresh process:

- video_features' ``main.py feature_type=resnet model_name=resnet152 device=cpu
  extraction_fps=1 on_extraction=save_numpy`` (its default batch size, 1). For each video
  it re-encodes the video at 1 fps with ffmpeg (default encoders, into ``tmp_path``), reads
  the frames back with OpenCV (``cv2.VideoCapture``) and runs
  ResNet-152 on one frame at a time, through torchvision's IMAGENET1K_V1 transforms;
- ``vidfeat extract DIR --features resnet152 --workers N`` (1 frame per second, the default).

Pretrained weights cannot be downloaded on the machine this was written on, so both run with
random weights: video_features through a runner that makes ``torchvision.models.get_model``
build with ``weights=None`` (seeded), vidfeat with ``--random-weights``. The work, and so the
time, is that of the real weights. The checkout is not edited. Each video must have one
video_features file of about ``--seconds`` rows of 2048 (it prints a video's error and goes
on with exit status 0), and the two programs' rows per video must agree (+-1).

Setup (PyPI only), the exact commands in benchmarks/video_features_setup.sh: a copy of
https://github.com/v-iashin/video_features at a2f61b7a (DIR), and an interpreter with torch,
torchvision, omegaconf, opencv-python-headless and tqdm: ``python3 -m venv /tmp/vf-env``, a
``.pth`` file in its site-packages naming vidfeat's venv site-packages (torch, torchvision,
numpy and tqdm come from there), then ``/tmp/vf-env/bin/pip install omegaconf
opencv-python-headless``. ffmpeg must be on PATH (video_features finds it with ``which``).
The full measurement::

    bash benchmarks/video_features_setup.sh
    .venv/bin/python benchmarks/video_features_side_by_side.py \
        --video-features /tmp/video_features --python /tmp/vf-env/bin/python \
        --seconds 40 --videos 3 --workers 2

Figures and machine: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from latency import make_video

from vidfeat.storage.reader import open_store

RUNNER = """
import runpy, sys, torch, torchvision.models as models
build = models.get_model
def random_weights(name, weights=None, **options):
    torch.manual_seed(0)
    return build(name, weights=None, **options)
models.get_model = random_weights
sys.argv = ["main.py", *sys.argv[1:]]
sys.path.insert(0, ".")
runpy.run_path("main.py", run_name="__main__")
"""


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall time of the whole command, and its output (stdout and stderr)."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}...: exit {result.returncode}\n"
                           f"{result.stderr[-2000:]}")
    return seconds, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-features", type=Path, required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vf-side-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        paths = [make_video(corpus / f"f{k}.mp4", args.seconds, "640x360")
                 for k in range(args.videos)]
        theirs_command = [
            args.python, "-c", RUNNER, "feature_type=resnet", "model_name=resnet152",
            "device=cpu", "extraction_fps=1", "on_extraction=save_numpy",
            f"output_path={work / 'vf-out'}", f"tmp_path={work / 'vf-tmp'}",
            f"video_paths=[{','.join(str(p) for p in paths)}]"]
        theirs, log = timed(theirs_command, cwd=args.video_features)
        store = work / "store"
        ours, _ = timed([sys.executable, "-m", "vidfeat", "extract", str(corpus), "--store",
                         str(store), "--features", "resnet152", "--random-weights",
                         "--no-progress", "--workers", str(args.workers)])
        with open_store(store) as opened:
            for path in paths:
                # video_features catches a video's error, prints it and goes on (exit 0):
                # its output file is the proof that it did the work
                saved = list((work / "vf-out").rglob(f"{path.stem}_resnet.npy"))
                if len(saved) != 1:
                    raise RuntimeError(f"{path.name}: {len(saved)} video_features files, "
                                       f"not 1; its output:\n{log[-3000:]}")
                rows = np.load(saved[0]).shape
                mine = opened.get(path.stem, "resnet152").shape
                if (rows[1:] != (2048,) or abs(rows[0] - args.seconds) > 1
                        or mine[1:] != (2048,) or abs(rows[0] - mine[0]) > 1):
                    raise RuntimeError(f"{path.name} ({args.seconds:g} s): video_features "
                                       f"{rows}, vidfeat {mine}")
        print(f"resnet152 on {args.videos} x {args.seconds:.0f} s 640x360: video_features "
              f"{theirs:.1f} s, vidfeat extract ({args.workers} workers) {ours:.1f} s: "
              f"vidfeat takes {ours / theirs:.2f} of video_features' time")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
