"""What a run costs around the model: one short video, many one-second videos, a no-op rerun.

    python benchmarks/latency.py [--videos 300] [--workers 2]

Prints, measured in one run on this machine (random weights, fp32, default options):

1. one 2 s 640x360 video, ResNet-152: a minimal program doing the same work in one process
   (import torch and torchvision, build ResNet-152, decode the video with PyAV, preprocess
   and embed its 2 frames at 1 fps) against `vidfeat extract` of it (wall, the whole
   command); the goal is a ratio <= 1.3;
2. ``--videos`` one-second videos against one of them, VGGish: the extra wall time per video
   beyond the one-video run, next to the model time per video the run report records (the
   goal: <= 30 ms per video beyond its model time);
3. the no-op rerun of those videos (every one up to date; the goal: <= 2 s);
4. ResNet-152 alone on 3 x 40 s 640x360 videos: `vidfeat extract` (2 workers) against the naive
   JPEG path of benchmarks/throughput.py (ffmpeg writes every frame as JPEG, ResNet-152 at
   batch 1 on the frames picked at 1 fps; the goal: vidfeat >= 1.5x faster), with vidfeat's
   model time; the same JPEG path is also timed as a whole program (interpreter, imports and
   model build included, as vidfeat's command is), which is what a user running either sees;
   ``--bf16`` adds a run with ``--precision bf16``; ``--no-side-by-side`` leaves it out;
   ``--repeat N`` times the JPEG path and vidfeat's fp32 run N times, alternated, and prints
   each pair and the median ratio (a machine whose speed drifts moves single figures);
5. with the side by side, ResNet-152 as a worker runs it (one thread, a batch of 10) against
   this CPU's own one-thread matrix multiply (GFLOP/s of each), and what that rate leaves of
   the 1.5x goal: the model's time alone, on the run's workers, against the goal's budget.

Figures and the machine they were measured on are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vidfeat.media.tools import executable

MINIMAL = """
import av, torch, torchvision
from torchvision.models import resnet152
from torchvision.transforms._presets import ImageClassification
torch.manual_seed(0)
model = resnet152().eval()
model.fc = torch.nn.Identity()
transform = ImageClassification(crop_size=224, resize_size=256)
frames, next_time = [], 0.0
with av.open({path!r}) as container:
    for frame in container.decode(video=0):
        if frame.time >= next_time:
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
            frames.append(transform(image))
            next_time += 1.0
with torch.inference_mode():
    rows = model(torch.stack(frames)).numpy()
print(rows.shape)
"""
#: the JPEG path of benchmarks/throughput.py run as a program of its own, timed from its start
JPEG_PROGRAM = """
import sys
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
from throughput import seed_path
seed_path([Path(path) for path in {paths!r}], Path({scratch!r}), ["resnet152"])
"""


def make_video(path: Path, seconds: float, size: str, audio: bool = True) -> Path:
    inputs = ["-f", "lavfi", "-t", str(seconds), "-i", f"testsrc2=size={size}:rate=25"]
    if audio:
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i", "sine=frequency=440:sample_rate=44100"]
    subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-y", *inputs,
                    "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    *(["-c:a", "aac"] if audio else []), "-shortest", str(path)], check=True)
    return path


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}...: exit {result.returncode}\n"
                           f"{result.stderr[-2000:]}")
    return seconds


def extract(sources: list[str], store: Path, feature: str, workers: int,
            *flags: str) -> float:
    return timed([sys.executable, "-m", "vidfeat", "extract", *sources, "--store", str(store),
                  "--features", feature, "--random-weights", "--no-progress",
                  "--workers", str(workers), *flags])


def _report(store: Path) -> dict:
    return json.loads(sorted((store / "runs").glob("*.json"))[-1].read_text())


def model_seconds(store: Path) -> float:
    """The model seconds the newest run report records, summed over features."""
    return sum(entry["seconds"] for entry in _report(store)["throughput"].values())


def model_rate(batch: int = 10) -> float:
    """Seconds a frame of ResNet-152 as a worker runs it (one torch thread, ``batch`` frames,
    random weights); prints its GFLOP/s against this CPU's one-thread matrix multiply (2048 x
    2048 float32), the most a dense float32 network can expect of one core."""
    import torch
    from torch import nn

    from vidfeat.extractors.pool import ExtractorPool
    from vidfeat.extractors.spec import ExtractorSpec

    torch.set_num_threads(1)
    spec = ExtractorSpec("resnet152", {}, random_weights=True)
    extractor = ExtractorPool({"resnet152": spec}, "cpu").get("resnet152")
    multiply_adds = []

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        fan_in = (module.in_features if isinstance(module, nn.Linear) else
                  module.in_channels // module.groups * module.weight[0, 0].numel())
        multiply_adds.append(output.numel() * fan_in)

    hooks = [module.register_forward_hook(count) for module in extractor.network().modules()
             if isinstance(module, (nn.Conv2d, nn.Linear))]
    frames = torch.rand(batch, 3, 224, 224)
    extractor.embed(frames)
    for hook in hooks:
        hook.remove()
    flop = 2 * sum(multiply_adds) / batch
    per_frame = min(_seconds(lambda: extractor.embed(frames)) for _ in range(3)) / batch
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    peak = 2 * 2048 ** 3 / min(_seconds(lambda: a @ b) for _ in range(5))
    print(f"resnet152 as a worker runs it (one thread, batch {batch}): {1000 * per_frame:.0f} "
          f"ms and {flop / 1e9:.1f} GFLOP a frame, {flop / per_frame / 1e9:.0f} GFLOP/s; this "
          f"CPU's one-thread float32 matrix multiply: {peak / 1e9:.0f} GFLOP/s (the model at "
          f"{flop / per_frame / peak:.0%} of it)")
    return per_frame


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def side_by_side(work: Path, workers: int, bf16: bool, repeat: int = 1) -> None:
    """The JPEG path's clock starts with its model built (see throughput.seed_path); vidfeat's
    with the command. vidfeat's model seconds (from its run report) say what is left once the
    model's own time is paid: the 1.5x goal needs the whole run within the JPEG path / 1.5."""
    from throughput import seed_path

    corpus = work / "forty"
    corpus.mkdir()
    paths = [make_video(corpus / f"f{k}.mp4", 40.0, "640x360") for k in range(3)]
    jpeg = seed_path(paths, work / "jpeg", ["resnet152"])
    if repeat > 1:
        _alternated(paths, corpus, work, workers, repeat, jpeg)
    jpeg_program = timed([sys.executable, "-c", JPEG_PROGRAM.format(
        benchmarks=str(Path(__file__).parent), paths=[str(path) for path in paths],
        scratch=str(work / "jpeg-program"))])
    seconds = {}
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        store = work / f"forty-{precision}"
        ours = extract([str(corpus)], store, "resnet152", workers, "--precision", precision)
        seconds[precision] = ours
        print(f"resnet152 on 3 x 40 s 640x360: naive JPEG path {jpeg:.1f} s, vidfeat extract "
              f"--precision {precision} {ours:.1f} s: {jpeg / ours:.2f}x faster; vidfeat's "
              f"model time {model_seconds(store):.1f} s summed over its {workers} workers "
              f"(the 1.5x goal: a whole run within {jpeg / 1.5:.1f} s); the JPEG path as a "
              f"whole program (python, imports and model build included) {jpeg_program:.1f} s: "
              f"{jpeg_program / ours:.2f}x")
    rows = _report(work / "forty-fp32")["throughput"]["resnet152"]["rows"]
    alone = rows * model_rate() / workers
    print(f"the model alone at that rate: {rows} frames on {workers} workers, {alone:.1f} s of "
          f"the {jpeg / 1.5:.1f} s the 1.5x goal allows; {jpeg / 1.5 - alone:.1f} s left for "
          f"everything else (vidfeat's fp32 run took {seconds['fp32'] - alone:.1f} s beyond "
          f"it)")


def _alternated(paths: list[Path], corpus: Path, work: Path, workers: int, repeat: int,
                jpeg: float) -> None:
    """``repeat`` pairs of (JPEG path, vidfeat fp32), the first JPEG time already taken."""
    from throughput import seed_path

    ratios = []
    for attempt in range(repeat):
        if attempt:
            shutil.rmtree(work / "jpeg", ignore_errors=True)
            jpeg = seed_path(paths, work / "jpeg", ["resnet152"])
        store = work / f"forty-repeat-{attempt}"
        ours = extract([str(corpus)], store, "resnet152", workers)
        ratios.append(jpeg / ours)
        print(f"pair {attempt + 1}: JPEG path {jpeg:.1f} s, vidfeat {ours:.1f} s: "
              f"{jpeg / ours:.2f}x")
        shutil.rmtree(store, ignore_errors=True)
    print(f"3 x 40 s, {repeat} alternated pairs: median {statistics.median(ratios):.2f}x "
          f"(from {min(ratios):.2f}x to {max(ratios):.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-side-by-side", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternated pairs of the 3 x 40 s side by side (default 1)")
    parser.add_argument("--bf16", action="store_true",
                        help="the side by side also with --precision bf16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    try:
        one = make_video(work / "one.mp4", 2.0, "640x360", audio=False)
        minimal = timed([sys.executable, "-c", MINIMAL.format(path=str(one))])
        vidfeat_one = extract([str(one)], work / "one-store", "resnet152", 1)
        print(f"one 2 s 640x360 video, resnet152: minimal program {minimal:.1f} s, "
              f"vidfeat extract {vidfeat_one:.1f} s: {vidfeat_one / minimal:.2f}x")

        corpus = work / "corpus"
        corpus.mkdir()
        first = make_video(corpus / "v00000.mp4", 1.0, "320x240")
        for number in range(1, args.videos):
            shutil.copy(first, corpus / f"v{number:05d}.mp4")  # same content, own ids
        single = extract([str(first)], work / "single-store", "vggish", args.workers)
        single_model = model_seconds(work / "single-store")
        many = extract([str(corpus)], work / "many-store", "vggish", args.workers)
        many_model = model_seconds(work / "many-store")
        extra = (many - single) / (args.videos - 1)
        print(f"vggish, {args.videos} one-second videos: {many:.1f} s; one of them: "
              f"{single:.1f} s; {1000 * extra:.0f} ms per extra video, of which model "
              f"{1000 * many_model / args.videos:.0f} ms (one video's: "
              f"{1000 * single_model:.0f} ms); beyond the model: "
              f"{1000 * (extra - many_model / args.videos):.0f} ms per video")
        rerun = extract([str(corpus)], work / "many-store", "vggish", args.workers)
        print(f"no-op rerun of {args.videos} videos: {rerun:.2f} s")
        if not args.no_side_by_side:
            side_by_side(work, args.workers, args.bf16, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
