"""Extraction from a local S3 server against the same files on disk, in one run.

    python benchmarks/object_storage.py [--videos 8] [--seconds 20] [--features resnet152,vggish]
                                        [--fps 1] [--workers 1] [--workdir DIR]

Makes the videos with ffmpeg (H.264 640x360 30 fps + AAC), starts moto's S3 server on
127.0.0.1 behind a counting TCP proxy (tests/object_servers.py), uploads them, and with one
local Dask cluster (models loaded by a first, untimed run) extracts the directory and then the
bucket (``AWS_ENDPOINT_URL`` pointing at the proxy), each into a fresh store, twice, keeping
each one's best time. Prints the seconds of each, the ratio (local time / S3 time; the goal is
>= 0.9) and the bytes the proxy carried per video against the video's size (the goal: each
byte read once, 1.00).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.object_servers import MotoServer, Proxy  # noqa: E402
from vidfeat.media.tools import executable  # noqa: E402


def make_videos(root: Path, count: int, seconds: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = root / f"video{index:03d}.mp4"
        if not path.exists():
            video = f"testsrc2=size=640x360:rate=30:duration={seconds}"
            tone = f"sine=frequency={300 + 20 * index}:duration={seconds}"
            subprocess.run([executable("ffmpeg"), "-nostdin", "-v", "error", "-y",
                            "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", tone,
                            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                            "-c:a", "aac", "-shortest", str(path)], check=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--features", default="resnet152,vggish")
    parser.add_argument("--fps", type=float, default=1.0, help="resnet152's frames per second")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vidfeat-s3bench-"))
    videos = make_videos(workdir / "videos", args.videos, args.seconds)
    total = sum(path.stat().st_size for path in videos)

    server = MotoServer()
    proxy = Proxy(server.port)
    s3 = server.client()
    s3.create_bucket(Bucket="bench")
    for path in videos:
        s3.upload_file(str(path), "bench", f"corpus/{path.name}")
    os.environ.update(AWS_ENDPOINT_URL=proxy.endpoint, AWS_ACCESS_KEY_ID=server.key_id,
                      AWS_SECRET_ACCESS_KEY=server.secret, AWS_DEFAULT_REGION="us-east-1",
                      VIDFEAT_HOME=str(workdir / "home"))

    from distributed import Client, LocalCluster

    import vidfeat
    from vidfeat.media.remote import drop_cache

    features = {name: ({"fps": args.fps} if name == "resnet152" else None)
                for name in args.features.split(",")}
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
    client = Client(cluster)

    def run(sources: list[str], store: Path) -> float:
        shutil.rmtree(store, ignore_errors=True)
        started = time.perf_counter()
        report = vidfeat.extract(sources, store, features=features, cluster=client,
                                 random_weights=True, progress=False)
        seconds = time.perf_counter() - started
        if report.exit_code != 0:
            raise SystemExit(report.summary())
        return seconds

    try:
        run([str(videos[0])], workdir / "warmup")  # models loaded, pages cached: untimed
        local_times, s3_times, carried = [], [], []
        for _ in range(args.repeats):
            local_times.append(run([str(workdir / "videos")], workdir / "local"))
            client.run(drop_cache)  # the workers' block caches hold the last run's videos
            proxy.reset()
            s3_times.append(run(["s3://bench/corpus/"], workdir / "s3"))
            carried.append(proxy.bytes_down)
    finally:
        client.close()
        cluster.close()
        server.stop()
    local, remote = min(local_times), min(s3_times)
    print(f"{args.videos} videos x {args.seconds:g} s (640x360 30 fps H.264 + AAC), "
          f"{total / args.videos / 1e6:.2f} MB each; features {args.features} "
          f"(resnet152 at {args.fps:g} fps), {args.workers} worker(s)")
    print(f"local disk:  {local:.2f} s (runs: {', '.join(f'{t:.2f}' for t in local_times)})")
    print(f"S3 (moto):   {remote:.2f} s (runs: {', '.join(f'{t:.2f}' for t in s3_times)})")
    print(f"ratio local/S3: {local / remote:.3f} (goal >= 0.9)")
    per_video = min(carried) / args.videos
    print(f"bytes carried per video: {per_video / 1e6:.3f} MB = {min(carried) / total:.3f} x "
          f"its size (listing and headers included; goal 1.00)")


if __name__ == "__main__":
    main()
