"""Peak memory of a worker does not grow with the video's length: rows are streamed, frames
and audio are never accumulated. A 20-minute video against a 1-minute one, each in a fresh
process running the worker engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ffmpeg

ENGINE_RUN = """
import json, resource, sys
from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.media import probe
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit
from vidfeat.storage.store_dir import create_store

path, store = sys.argv[1], sys.argv[2]
specs = {"resnet152": ExtractorSpec("resnet152", {"fps": 0.05}, random_weights=True),
         "r3d_18": ExtractorSpec("r3d_18", {"stride": 192}, random_weights=True),
         "vggish": ExtractorSpec("vggish", {}, random_weights=True)}
# batches of 2: the 1-minute video fills whole batches of every model too
engine = Engine(ExtractorPool(specs, "cpu"), batch_size=2)
info = probe(path)
video = VideoSource("v", path)
report = engine.run([WorkUnit(video, "visual", ("resnet152", "r3d_18"), "xx/v.visual", info),
                     WorkUnit(video, "audio", ("vggish",), "xx/v.audio", info)],
                    str(create_store(store)))
rows = report.rows
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": rows, "statuses": [o.status for o in report.outcomes]}))
"""


def _peak(tmp_path: Path, minutes: float) -> dict:
    path = tmp_path / f"{minutes}.mp4"
    seconds = str(minutes * 60)
    ffmpeg("-f", "lavfi", "-t", seconds, "-i", "testsrc2=size=96x72:rate=8",
           "-f", "lavfi", "-t", seconds, "-i", "sine=frequency=440:sample_rate=16000",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(path))
    result = subprocess.run([sys.executable, "-c", ENGINE_RUN, str(path),
                             str(tmp_path / f"store{minutes}")],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_20_minute_video_needs_no_more_memory_than_a_1_minute_one(tmp_path: Path) -> None:
    short = _peak(tmp_path, 1)
    long = _peak(tmp_path, 20)
    assert set(short["statuses"]) == set(long["statuses"]) == {"ok"}
    assert long["rows"]["vggish"] == 1249 and long["rows"]["resnet152"] == 60
    assert long["rows"]["r3d_18"] == 50 and short["rows"]["r3d_18"] == 3  # a clip every 192 frames
    # the same models and batches; only the rows (a few MB) grow with the length
    assert long["peak_mib"] <= short["peak_mib"] * 1.05 + 30, (short, long)
