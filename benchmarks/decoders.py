"""Decoder backends compared in one run: speed, seeking, memory, and correctness checks.

    python benchmarks/decoders.py [--seconds 10] [--workdir DIR]

Makes its clips with ffmpeg (testsrc2 H.264 at 360p and 720p, 30 fps; small VFR, rotated,
truncated and AV1 clips), then for each backend prints: frames/s decoding every frame to RGB,
frames/s for 1 frame per second sampled by seeking to each versus decoding straight through,
peak RSS of a process that decodes the 720p clip, whether VFR times and rotation are right,
what a truncated file gives, and whether AV1 decodes. Each measurement runs in its own process
so that peak RSS is that decode's alone.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from vidfeat.media import DECODERS, frame_times, iter_frames, probe
from vidfeat.media.tools import executable


def _ffmpeg(*args: str) -> None:
    subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clips(root: Path, seconds: float) -> dict[str, Path]:
    clips = {name: root / f"{name}.{ext}" for name, ext in
             [("360p", "mp4"), ("720p", "mp4"), ("vfr", "mp4"), ("rotated", "mp4"),
              ("whole", "mkv"), ("truncated", "mkv"), ("av1", "mkv")]}
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    for name, size in (("360p", "640x360"), ("720p", "1280x720")):
        if not clips[name].exists():
            _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-t", str(seconds),
                    *h264, str(clips[name]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=20", "-t", "4", "-vf",
            "setpts='if(lt(N,20),N,20+(N-20)*2)/(20*TB)'", "-fps_mode", "vfr", *h264,
            str(clips["vfr"]))
    _ffmpeg("-i", str(clips["vfr"]), "-c", "copy", "-metadata:s:v:0", "rotate=90",
            str(clips["rotated"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24", "-t", "2.5", *h264,
            str(clips["whole"]))
    data = clips["whole"].read_bytes()
    clips["truncated"].write_bytes(data[: len(data) * 6 // 10])
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24", "-t", "1", "-c:v",
            "libaom-av1", "-cpu-used", "8", "-b:v", "200k", str(clips["av1"]))
    return clips


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(decoder: str, path: Path) -> dict:
    """In a child process: every frame to RGB, then 1 fps by seeking vs straight through."""
    info = probe(path)
    list(iter_frames(info, decoder=decoder, stop_time=0.1))  # imports, first open
    baseline = _peak_rss_mib()
    full = np.inf
    for _ in range(2):  # best of two: the machine is shared
        begin = time.perf_counter()
        count = sum(frame.rgb.shape[0] > 0 for frame in iter_frames(info, decoder=decoder))
        full = min(full, time.perf_counter() - begin)
    peak = _peak_rss_mib()
    wanted = np.arange(0.0, info.duration - 0.5, 1.0)
    sought, passed = [], []
    begin = time.perf_counter()
    for second in wanted:
        with closing(iter_frames(info, decoder=decoder, start_time=float(second))) as frames:
            sought.append(next(frames).rgb)
    seeking = time.perf_counter() - begin
    begin = time.perf_counter()
    remaining = list(wanted)
    for frame in iter_frames(info, decoder=decoder):
        if remaining and frame.time >= remaining[0] - 1e-6:
            passed.append(frame.rgb)
            remaining.pop(0)
    straight = time.perf_counter() - begin
    if not all(np.array_equal(a, b) for a, b in zip(sought, passed, strict=True)):
        raise SystemExit(f"{decoder}: frames found by seeking differ from those decoded through")
    return {"fps": count / full, "frames": count, "seek_s": seeking, "straight_s": straight,
            "rss_mib": peak, "rss_after_import_mib": baseline}


def _run_child(decoder: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--one", decoder, str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _frames(path: Path, decoder: str) -> tuple[np.ndarray, np.ndarray]:
    frames = list(iter_frames(probe(path), decoder=decoder))
    return np.array([f.time for f in frames]), np.stack([f.rgb for f in frames]).astype(int)


def checks(decoder: str, clips: dict[str, Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        times, _ = _frames(clips["vfr"], decoder)
        expected = frame_times(clips["vfr"])
        same = len(times) == len(expected) and np.abs(times - expected).max() <= 1e-6
        out["vfr"] = "yes" if same else f"no ({len(times)} of {len(expected)})"
    except Exception as error:  # noqa: BLE001 - the table reports whatever happened
        out["vfr"] = f"error: {str(error)[-60:]}"
    try:
        raw = subprocess.run([executable("ffmpeg"), "-v", "error", "-i", str(clips["rotated"]),
                              "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt",
                              "rgb24", "-"],
                             capture_output=True, check=True).stdout
        _, pixels = _frames(clips["rotated"], decoder)
        reference = np.frombuffer(raw, np.uint8).reshape(pixels.shape)
        out["rotation"] = f"yes (max diff {np.abs(pixels - reference).max()})"
    except Exception as error:  # noqa: BLE001
        out["rotation"] = f"no: {str(error)[-60:]}"
    try:
        _frames(clips["truncated"], decoder)
        out["truncated"] = "silently short"
    except Exception as error:  # noqa: BLE001
        message = str(error)
        stopped = re.search(r"after \d+ of ~?\d+ frames", message)
        out["truncated"] = f"DecodeError: {stopped.group()}" if stopped else f"error: {message}"
    try:
        times, _ = _frames(clips["av1"], decoder)
        out["av1"] = f"yes ({len(times)} frames)"
    except Exception as error:  # noqa: BLE001
        out["av1"] = "no" if "cannot find video stream" in str(error) else f"no: {error}"
    return out


def pixel_agreement(clips: dict[str, Path], decoders: list[str]) -> dict[str, str]:
    _, reference = _frames(clips["vfr"], "pyav")
    result = {}
    for decoder in decoders:
        try:
            _, pixels = _frames(clips["vfr"], decoder)
            difference = np.abs(pixels - reference)
            result[decoder] = f"max {difference.max()}, mean {difference.mean():.4f}"
        except Exception as error:  # noqa: BLE001
            result[decoder] = f"error: {str(error)[-60:]}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", nargs=2, metavar=("DECODER", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], Path(args.one[1]))))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="vidfeat-decoders-"))
    root.mkdir(parents=True, exist_ok=True)
    clips = make_clips(root, args.seconds)
    print(f"clips in {root}; {args.seconds:g} s testsrc2 H.264 at 30 fps")
    header = (f"{'decoder':<11} {'360p f/s':>9} {'720p f/s':>9} {'seek 1fps s':>11} "
              f"{'straight s':>10} {'peak RSS MiB':>12} {'decode adds':>11}  "
              f"{'VFR':<4} {'rotation':<18} {'AV1':<12} truncated")
    print(header)
    for decoder in DECODERS:
        low, high = _run_child(decoder, clips["360p"]), _run_child(decoder, clips["720p"])
        if "error" in low or "error" in high:
            print(f"{decoder:<11} error: {low.get('error') or high.get('error')}")
            continue
        check = checks(decoder, clips)
        print(f"{decoder:<11} {low['fps']:>9.0f} {high['fps']:>9.0f} {low['seek_s']:>11.2f} "
              f"{low['straight_s']:>10.2f} {high['rss_mib']:>12.0f} "
              f"{high['rss_mib'] - high['rss_after_import_mib']:>11.0f}  {check['vfr']:<4} "
              f"{check['rotation']:<18} {check['av1']:<12} {check['truncated']}")
    print("RGB difference from pyav on the VFR clip (320x240):",
          pixel_agreement(clips, [d for d in DECODERS if d != "pyav"]))


if __name__ == "__main__":
    main()
