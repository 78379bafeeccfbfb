"""End-to-end extraction throughput per device, and the largest difference between devices.

    python benchmarks/extract_throughput.py VIDEO_DIR [--devices cpu,cuda]
        [--features resnet152,c3d] [--workers 1] [--batch-size 16]

Runs `vidfeat extract` (random weights, float32 store) once per device on the same videos,
prints seconds, videos/s and decoded frames/s per device, the speed ratio against the first
device, and max |a - b| / max |a| per feature between the first device and each other one.
The first run on each device includes starting the workers and loading the models.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import vidfeat
from vidfeat.jobs import ClusterSpec
from vidfeat.jobs.submit import run_extract
from vidfeat.options import RunOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos")
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--features", default="resnet152,c3d")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    devices = args.devices.split(",")
    features = args.features.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        results = {}
        for device in devices:
            options = RunOptions(features=features, device=device, random_weights=True,
                                 dtype="float32", progress=False, batch_size=args.batch_size)
            report = run_extract([args.videos], Path(scratch) / device, options,
                                 ClusterSpec("local", workers=args.workers))
            results[device] = report
            print(f"{device:8} {report.seconds:8.1f} s  {report.videos / report.seconds:7.2f} "
                  f"videos/s  {report.frames / report.seconds:8.1f} frames/s  "
                  f"failed={len(report.failed)}")
        base = devices[0]
        reference = vidfeat.open_store(str(Path(scratch) / base))
        for device in devices[1:]:
            ratio = results[base].seconds / results[device].seconds
            print(f"{device} vs {base}: {ratio:.2f}x")
            other = vidfeat.open_store(str(Path(scratch) / device))
            for name in features:
                worst = 0.0
                for video_id in reference.videos():
                    a, b = reference.get(video_id, name), other.get(video_id, name)
                    worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)))
                print(f"  {name}: max relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
