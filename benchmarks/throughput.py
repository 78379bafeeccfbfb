"""Extraction throughput against its limits and against the naive JPEG path, in one run.

    python benchmarks/throughput.py [--workdir DIR] [--scale 1.0] [--precisions fp32,bf16]
        [--workers 1,2] [--feature-sets resnet152,c3d,vggish:resnet152] [--modes eager,compiled]
        [--limit-repeats 1] [--device cpu|cuda] [--decoders pyav,torchcodec] [--no-seed]
        [--limit-after]

Corpus (made with ffmpeg, H.264 + AAC, 30 fps; durations times --scale): 6 x 60 s 640x360,
2 x 60 s 1280x720, 1 x 600 s 640x360. Prints, per precision and feature set:
- decode limit: `ffmpeg -i F -f null -` over the corpus (all cores);
- model limit: batched inference (ResNet-152 32, C3D 8, VGGish 64; channels_last, the same
  precision, all cores, malloc tuned as in vidfeat's workers) over as many inputs as vidfeat
  computes, the fastest of ``--limit-repeats`` passes;
- the seed's JPEG path (fp32): ffmpeg writes every frame as JPEG; for ResNet-152 as many frames
  as vidfeat samples (1 fps) are read back with PIL, ResNet-152 at batch 1; for C3D every
  16-frame clip is read back, C3D at batch 1; for VGGish ffmpeg writes a 16 kHz WAV, VGGish
  runs on its examples in one batch per video;
- `vidfeat extract` at each worker count (a fresh store; random weights; each model's default
  batch size, the same as the model limit's), wall time and the peak RSS of each worker
  process;
and the ratios limit / vidfeat and seed / vidfeat. Random weights: the speed is the same.

``--modes eager,compiled`` adds, per precision and feature set, the same rows with the models
compiled (``vidfeat extract --compile``): the model limit then runs the compiled packages too,
and the packages are built before anything is timed (the one-time build is printed apart: a
nightly run on a machine that built them once starts with them in its cache).

``--device cuda`` (a GPU machine): the model limit and the seed's path run their models on the
GPU (the limit's inputs already there), vidfeat runs one GPU worker process (``--gpus 1``) once
per ``--decoders`` entry (pyav: CPU decode; torchcodec: NVDEC), and each row adds images/s and
clips/s (inputs over wall time) and the GPU's busy % (``nvidia-smi``, sampled every 0.2 s:
over the whole run, and from the first busy sample to the last, i.e. without start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import psutil
import torch

from vidfeat.media import probe
from vidfeat.media.tools import executable

SOURCES = ["testsrc2", "mandelbrot", "life"]
BATCH = {"resnet152": 32, "c3d": 8, "vggish": 64}


def make_corpus(root: Path, scale: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    plan = [(f"sd{i}", 60, "640x360") for i in range(6)]
    plan += [(f"hd{i}", 60, "1280x720") for i in range(2)] + [("long", 600, "640x360")]
    paths = []
    for index, (name, seconds, size) in enumerate(plan):
        path = root / f"{name}.mp4"
        seconds = max(2.0, seconds * scale)
        if not path.exists():
            source = SOURCES[index % len(SOURCES)]
            subprocess.run([
                executable("ffmpeg"), "-v", "error", "-y",
                "-f", "lavfi", "-t", str(seconds), "-i", f"{source}=size={size}:rate=30",
                "-f", "lavfi", "-t", str(seconds), "-i", f"sine=frequency={300 + 50 * index}",
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-shortest", str(path)], check=True)
        paths.append(path)
    return paths


def decode_limit(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(path), "-f", "null", "-"],
                       check=True)
    return time.perf_counter() - started


def input_counts(paths: list[Path]) -> dict[str, int]:
    """Rows vidfeat computes per feature with its defaults (1 fps, 16-frame clips, 0.96 s)."""
    counts = {"resnet152": 0, "c3d": 0, "vggish": 0}
    for path in paths:
        info = probe(path)
        frames = info.frame_count or round(info.duration * info.fps)
        counts["resnet152"] += int(info.duration) + 1
        counts["c3d"] += frames // 16
        counts["vggish"] += max(1, int((info.duration - 0.015) / 0.96))
    return counts


def model_limit(features: list[str], counts: dict[str, int], precision: str,
                compiled: bool = False, device: str = "cpu", repeats: int = 1
                ) -> dict[str, float]:
    """Seconds of batched inference; with ``compiled``, through the packages vidfeat's
    workers will load (built there first, if the cache lacks them, untimed). In a fresh
    process whose malloc is tuned as vidfeat's workers are: with glibc's default thresholds
    every large activation is a fresh mmap, and ResNet-152 ran 1.65x slower (C3D 1.19x, VGGish
    1.14x). The limit is the best the model can do; the seed's path keeps this plain process,
    as the naive script it stands for would. Seconds per feature: the fastest of ``repeats``
    passes (a limit is the best the machine did; on a shared VM, bf16 passes of one process
    differed by up to 1.4x)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_model_limit, (features, counts, precision, compiled, device, repeats))


def _model_limit(features: list[str], counts: dict[str, int], precision: str,
                 compiled: bool, device: str, repeats: int) -> dict[str, float]:
    from vidfeat.extractors.pool import ExtractorSpec
    from vidfeat.malloc import tune_malloc

    tune_malloc()
    torch.set_num_threads(os.cpu_count() or 1)
    shapes = {"resnet152": (3, 224, 224), "c3d": (3, 16, 112, 112), "vggish": (1, 96, 64)}
    seconds = {}
    for name in features:
        extractor = ExtractorSpec(name, random_weights=True, precision=precision,
                                  compiled=compiled).load(torch.device(device))
        batch = torch.rand(BATCH[name], *shapes[name], device=device)
        started = time.perf_counter()
        extractor.embed(batch[:2])  # warm up oneDNN's kernels; build or load the package
        if compiled and extractor._network.built:
            print(f"    built the {name} {precision} package (once per machine) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        timings = []
        for _ in range(repeats):
            left = counts[name]
            started = time.perf_counter()
            while left > 0:
                extractor.embed(batch[:min(left, BATCH[name])])  # rows back on the host: synced
                left -= BATCH[name]
            timings.append(time.perf_counter() - started)
        seconds[name] = min(timings)
    return seconds


def seed_path(paths: list[Path], scratch: Path, features: list[str], device: str = "cpu"
              ) -> float:
    """What the captioning report did, and the same naive path for the other features: every
    frame to JPEG once per video; ResNet-152 on the frames picked at 1 fps and C3D on each
    16-frame clip of JPEGs read back with PIL, both at batch 1; VGGish on a 16 kHz WAV file
    that ffmpeg writes, one batch per video (torchvggish's way). fp32, no channels_last; on
    ``device`` (each input copied there as it is made)."""
    from PIL import Image
    from torchvision.models import resnet152
    from torchvision.transforms import v2

    from vidfeat.extractors.c3d import C3D, CROP, CROP_LEFT, CROP_TOP, RESIZE, SPORTS1M_MEAN_BGR
    from vidfeat.extractors.vggish import VGGishNet
    from vidfeat.extractors.vggish_mel import SAMPLE_RATE, waveform_to_examples

    torch.set_num_threads(os.cpu_count() or 1)
    resnet = resnet152().eval()
    resnet.fc = torch.nn.Identity()
    c3d, vggish = C3D().eval(), VGGishNet().eval()
    resnet, c3d, vggish = (model.to(device) for model in (resnet, c3d, vggish))
    transform = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    clip_mean = torch.tensor(SPORTS1M_MEAN_BGR).view(3, 1, 1, 1)

    def clip(files: list[Path]) -> torch.Tensor:
        frames = [v2.functional.resize(v2.functional.pil_to_tensor(Image.open(f).convert("RGB")),
                                       list(RESIZE), antialias=False) for f in files]
        volume = torch.stack(frames, dim=1).flip(0).float()  # [3 BGR, 16, 128, 171]
        crop = volume[:, :, CROP_TOP:CROP_TOP + CROP, CROP_LEFT:CROP_LEFT + CROP]
        return (crop - clip_mean).unsqueeze(0)

    started = time.perf_counter()
    for path in paths:
        frames = scratch / path.stem
        frames.mkdir(parents=True, exist_ok=True)
        subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(path),
                        str(frames / "%06d.jpg")], check=True)
        files = sorted(frames.iterdir())
        with torch.inference_mode():
            if "resnet152" in features:
                wanted = int(probe(path).duration) + 1
                step = len(files) / wanted
                for k in range(wanted):
                    image = Image.open(files[min(len(files) - 1, int(k * step))]).convert("RGB")
                    resnet(transform(image).unsqueeze(0).to(device))
            if "c3d" in features:
                for first in range(0, len(files) - 15, 16):
                    c3d(clip(files[first:first + 16]).to(device), layer="fc6")
            if "vggish" in features:
                wav = frames / "audio.wav"
                subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(path), "-ac",
                                "1", "-ar", str(SAMPLE_RATE), str(wav)], check=True)
                with wave.open(str(wav)) as reader:
                    pcm = reader.readframes(reader.getnframes())
                samples = np.frombuffer(pcm, dtype="<i2") / 32768.0
                vggish(torch.from_numpy(waveform_to_examples(samples)).unsqueeze(1).to(device))
        for file in frames.iterdir():
            file.unlink()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_vidfeat(corpus: Path, store: Path, features: list[str], workers: int, precision: str,
                compiled: bool = False, device: str = "cpu", decoder: str = "pyav"
                ) -> tuple[float, list[float]]:
    """Wall seconds of `vidfeat extract` and its worker processes' peak RSS. On a GPU: one GPU
    worker process and no CPU worker (``workers`` is ignored)."""
    if device != "cpu":
        workers = 1
    placement = ["--device", "cpu", "--workers", str(workers)] if device == "cpu" else [
        "--device", device, "--gpus", "1", "--workers", "0"]
    command = [sys.executable, "-m", "vidfeat", "extract", str(corpus), "--store", str(store),
               "--features", ",".join(features), *placement, "--decoder", decoder,
               "--random-weights", "--no-progress", "--precision", precision,
               "--dtype", "float32", *(["--compile"] if compiled else [])]
    peaks: dict[int, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = threading.Event()

    def watch() -> None:
        driver = psutil.Process(process.pid)
        while not done.wait(0.2):
            try:
                children = driver.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    if "python" in child.name():
                        rss = child.memory_info().rss / 2**20
                        peaks[child.pid] = max(peaks.get(child.pid, 0.0), rss)
                except psutil.NoSuchProcess:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    done.set()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"vidfeat extract failed ({process.returncode}): {stderr.decode()}")
    # the worker processes are the ones that loaded a model: the largest `workers` peaks
    return elapsed, sorted(peaks.values(), reverse=True)[:workers]


class GpuBusy:
    """The GPU's busy % (``nvidia-smi`` utilization.gpu: the share of time a kernel ran),
    sampled every 0.2 s while inside."""

    def __enter__(self) -> GpuBusy:
        self._sampler = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-i", "0", "-lms", "200"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._sampler.terminate()
        output, _ = self._sampler.communicate()
        self.samples = [float(line) for line in output.split() if line.strip().isdigit()]

    def summary(self) -> str:
        busy = [i for i, sample in enumerate(self.samples) if sample > 0]
        if not busy:
            return "GPU busy: no busy sample"
        active = self.samples[busy[0]:busy[-1] + 1]
        return (f"GPU busy {np.mean(self.samples):.0f} % of the run, {np.mean(active):.0f} % "
                f"from its first busy sample to its last")


def rates(counts: dict[str, int], seconds: dict[str, float]) -> str:
    units = {"resnet152": "images", "c3d": "clips", "vggish": "examples"}
    return ", ".join(f"{counts[name] / seconds[name]:.0f} {units[name]}/s ({name})"
                     for name in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--feature-sets", default="resnet152,c3d,vggish:resnet152")
    parser.add_argument("--modes", default="eager", help="eager, compiled or both")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--limit-repeats", type=int, default=1,
                        help="passes of the model limit; the fastest counts")
    parser.add_argument("--limit-after", action="store_true",
                        help="measure the model limit again after vidfeat's runs and give each "
                             "run's ratio against the mean of both (a shared VM's speed drifts "
                             "over minutes: one measurement before a run can be 1.3x off)")
    parser.add_argument("--no-seed", action="store_true",
                        help="skip the seed's JPEG path (the longest part at full scale): "
                             "limit against vidfeat only")
    parser.add_argument("--decoders", default="pyav",
                        help="with --device cuda: vidfeat's decoders to run (pyav decodes on "
                             "the CPU, torchcodec on the GPU)")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vidfeat-bench-"))
    # the compiled packages this benchmark builds, where vidfeat's workers look for them
    os.environ["VIDFEAT_HOME"] = str(workdir / "home")
    corpus = workdir / "corpus"
    paths = make_corpus(corpus, args.scale)
    minutes = sum(probe(p).duration for p in paths) / 60
    print(f"corpus: {len(paths)} videos, {minutes:.1f} min; cores: {os.cpu_count()}; "
          f"torch {torch.__version__}"
          + (f"; {torch.cuda.get_device_name()}" if gpu else ""))
    decode = decode_limit(paths)
    counts = input_counts(paths)
    print(f"decode limit: {decode:.1f} s; inputs: {counts}")
    seeds: dict[str, float] = {}
    for precision in args.precisions.split(","):
        for feature_set in args.feature_sets.split(":"):
            features = feature_set.split(",")
            for mode in args.modes.split(","):
                compiled = mode == "compiled"
                model = model_limit(features, counts, precision, compiled, args.device,
                                    args.limit_repeats)
                limit = decode + sum(model.values())
                line = f"[{precision} {mode} {feature_set}] decode+model limit {limit:.1f} s"
                if gpu:
                    line += f" (model alone: {rates(counts, model)})"
                if feature_set not in seeds and not args.no_seed:
                    seeds[feature_set] = seed_path(paths, workdir / "jpeg", features,
                                                   args.device)
                seed = seeds.get(feature_set)
                if seed is not None:
                    line += f"; seed JPEG path (fp32) {seed:.1f} s"
                print(line, flush=True)
                runs = [(f"1 GPU worker, {decoder} decode", 1, decoder)
                        for decoder in args.decoders.split(",")] if gpu else [
                    (f"{workers} worker(s)", workers, "pyav")
                    for workers in [int(w) for w in args.workers.split(",")]]
                timed: list[tuple[str, float]] = []
                for label, workers, decoder in runs:
                    store = workdir / f"store-{precision}-{mode}-{len(features)}-{workers}"
                    subprocess.run(["rm", "-rf", str(store)], check=True)
                    with GpuBusy() if gpu else contextlib.nullcontext() as busy:
                        seconds, rss = run_vidfeat(corpus, store, features, workers, precision,
                                                   compiled, args.device, decoder)
                    ratios = f"limit/vidfeat {limit / seconds:.2f}" + (
                        f", seed/vidfeat {seed / seconds:.2f}" if seed is not None else "")
                    extra = (f"; {rates(counts, dict.fromkeys(features, seconds))}; "
                             f"{busy.summary()}") if gpu else ""
                    print(f"    vidfeat {label}: {seconds:.1f} s ({ratios}); peak RSS per "
                          f"worker {', '.join(f'{r:.0f}' for r in rss)} MiB{extra}", flush=True)
                    timed.append((label, seconds))
                if args.limit_after:
                    after = decode + sum(model_limit(features, counts, precision, compiled,
                                                     args.device, args.limit_repeats).values())
                    mean = (limit + after) / 2
                    print(f"    decode+model limit after the runs {after:.1f} s (before: "
                          f"{limit:.1f} s); against their mean {mean:.1f} s: " + ", ".join(
                              f"vidfeat {label} {mean / seconds:.2f}" for label, seconds in timed),
                          flush=True)

if __name__ == "__main__":
    main()
