"""Speed and error of each model precision per extractor, measured in one run.

    python benchmarks/precision.py [--precisions fp32,bf16,fp16] [--batches 3]
        [--extractors resnet152,c3d,vggish]

Each extractor (random weights, seeded) embeds the same batches of model inputs made from a
real decoded video (testsrc2, preprocessed by the extractor's own samplers) at each precision
on all cores, malloc tuned as in vidfeat's workers (``vidfeat.malloc``: untuned, every large
activation is a fresh mmap and ResNet-152 runs 1.65x slower); prints inputs/s and the relative
error against fp32:
max |x - x_fp32| / max |x_fp32| and the mean of |x - x_fp32| / |x_fp32| per row (L2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vidfeat.extractors.pool import ExtractorSpec
from vidfeat.malloc import tune_malloc
from vidfeat.media import iter_frames, probe
from vidfeat.media.audio import load_audio
from vidfeat.media.tools import executable

BATCH = {"resnet152": 32, "c3d": 8, "vggish": 64}


def inputs(name: str, path: Path, batches: int) -> torch.Tensor:
    extractor = ExtractorSpec(name, random_weights=True).build()
    info = probe(path)
    wanted = BATCH[name] * batches
    if extractor.modality == "audio":
        items, _ = extractor.audio_items(load_audio(info), 0.0)
    else:
        sampler = extractor.sampler(info)
        items = []
        for frame in iter_frames(info):
            items += sampler.push(frame)
            if len(items) >= wanted:
                break
    tensors = [item.tensor for item in items][:wanted]
    while len(tensors) < wanted:  # a short clip: repeat its inputs
        tensors += tensors[:wanted - len(tensors)]
    return torch.stack(tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--extractors", default=",".join(BATCH))
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "clip.mp4"
        subprocess.run([executable("ffmpeg"), "-v", "error", "-f", "lavfi", "-t", "60", "-i",
                        "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-t", "60", "-i",
                        "sine=frequency=440", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-shortest", str(video)], check=True)
        for name in args.extractors.split(","):
            batch = inputs(name, video, args.batches)
            reference = None
            for precision in args.precisions.split(","):
                extractor = ExtractorSpec(name, random_weights=True, precision=precision).load(
                    torch.device("cpu"))
                extractor.embed(batch[:2])  # warm up
                started = time.perf_counter()
                rows = np.concatenate([extractor.embed(chunk)
                                       for chunk in batch.split(BATCH[name])])
                speed = len(batch) / (time.perf_counter() - started)
                line = f"{name:10} {precision}: {speed:7.1f} inputs/s"
                if reference is None:
                    reference = rows
                else:
                    worst = np.abs(rows - reference).max() / np.abs(reference).max()
                    per_row = (np.linalg.norm(rows - reference, axis=1)
                               / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)).mean()
                    line += f"  max error {worst:.2%} of the largest value, mean row {per_row:.2%}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
