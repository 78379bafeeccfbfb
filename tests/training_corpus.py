"""A tiny store whose annotations are learnable from its features, extracted as a user would.

Made once per test process (the tests of datasets, trainers and exports share it) with
``vidfeat extract --random-weights``: random-weights features are still deterministic functions
of the input, so a caption or label that depends on the lavfi source or tone is learnable.

- Clips (2 s, ResNet-152 at 1 fps + VGGish): three sources x three sizes, each with a low or a
  high tone. Caption: the source's sentence; tags: the source and the tone.
- ``quiet`` (1 s): no audio stream, so no VGGish.
- Scenes (6 s, VGGish only; ResNet-152 on CPU is what makes extraction slow): a test pattern
  with a low tone and colour bars with a high tone, cut at 1..5 s, in both orders. Moments: the
  span of each part, described by its sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conftest import ffmpeg, make_video

from vidfeat.cli import main

SOURCES = {
    "testsrc2": "a test pattern with moving colours",
    "mandelbrot": "a fractal zooms in slowly",
    "smptebars": "colour bars fill the screen",
}
SIZES = ("96x72", "112x80", "80x64")
TONES = {"low": 300, "high": 2000}
SCENE_SECONDS = 6
SCENE_CUTS = (1, 2, 3, 4, 5)
SCENE_PARTS = {"pattern": ("testsrc2", TONES["low"], "a test pattern with a low hum"),
               "bars": ("smptebars", TONES["high"], "colour bars with a high beep")}
VAL_CUT = 3

_made: dict[str, TrainingCorpus] = {}


@dataclass
class TrainingCorpus:
    root: Path
    store: Path
    clips: dict[str, tuple[str, str]]  # video id -> (source, tone)
    val_clips: list[str]
    scenes: dict[str, tuple[int, tuple[str, str]]]  # video id -> (cut, part order)

    def annotation(self, name: str) -> Path:
        return self.root / "annotations" / name


def training_corpus(root: Path) -> TrainingCorpus:
    """The corpus, its store and annotation files under ``root`` (made once per process)."""
    if "corpus" not in _made:
        _made["corpus"] = _make(root)
    return _made["corpus"]


def _make(root: Path) -> TrainingCorpus:
    clips_dir, scenes_dir, notes = root / "clips", root / "scenes", root / "annotations"
    for folder in (clips_dir, scenes_dir, notes):
        folder.mkdir(parents=True)
    clips, val_clips = {}, []
    for s, source in enumerate(SOURCES):
        for z, size in enumerate(SIZES):
            tone = "low" if (s + z) % 2 == 0 else "high"
            video_id = f"video{3 * s + z}"
            _clip(clips_dir / f"{video_id}.mp4", source, size, TONES[tone])
            clips[video_id] = (source, tone)
            if z == 2:
                val_clips.append(video_id)
    make_video(clips_dir / "quiet.mp4", seconds=1, audio=False, source="testsrc2")
    scenes = {}
    for cut in SCENE_CUTS:
        for order in (("pattern", "bars"), ("bars", "pattern")):
            video_id = f"scene_{order[0]}_{cut}"
            _scene(scenes_dir / f"{video_id}.mp4", cut, order)
            scenes[video_id] = (cut, order)
    store = root / "store"
    common = ["--store", str(store), "--workers", "1", "--random-weights", "--no-progress"]
    assert main(["extract", str(clips_dir), *common, "--features", "resnet152,vggish",
                 "--set", "resnet152.fps=1", "--set", "vggish.hop=1.0"]) == 0
    assert main(["extract", str(scenes_dir), *common, "--features", "vggish",
                 "--set", "vggish.hop=1.0"]) == 0
    corpus = TrainingCorpus(root, store, clips, val_clips, scenes)
    _write_annotations(corpus)
    return corpus


def _clip(path: Path, source: str, size: str, frequency: int) -> None:
    ffmpeg("-f", "lavfi", "-t", "2", "-i", f"{source}=size={size}:rate=8",
           "-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=16000:duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path))


def _scene(path: Path, cut: int, order: tuple[str, str]) -> None:
    """Two parts joined with ffmpeg's concat filter: the scene changes at ``cut`` seconds."""
    inputs = []
    for part, seconds in zip(order, (cut, SCENE_SECONDS - cut), strict=True):
        source, frequency, _ = SCENE_PARTS[part]
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i", f"{source}=size=96x72:rate=8",
                   "-f", "lavfi", "-i",
                   f"sine=frequency={frequency}:sample_rate=16000:duration={seconds}"]
    ffmpeg(*inputs, "-filter_complex", "[0:v][1:a][2:v][3:a]concat=n=2:v=1:a=1[v][a]",
           "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(path))


def _write_annotations(corpus: TrainingCorpus) -> None:
    notes = corpus.root / "annotations"
    # MSR-VTT's videodatainfo layout: splits in "videos", one sentence per entry
    videos = [{"video_id": v, "split": "validate" if v in corpus.val_clips else "train"}
              for v in corpus.clips]
    sentences = [{"video_id": v, "caption": caption}
                 for v, (source, _) in corpus.clips.items()
                 for caption in (SOURCES[source], SOURCES[source].capitalize() + ".")]
    sentences.append({"video_id": "video404", "caption": "a video that was never extracted"})
    (notes / "msrvtt.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    # PaddleVideo's label file: file name with extension, title, comma-separated labels
    lines = {"train": [], "val": []}
    for v, (source, tone) in corpus.clips.items():
        split = "val" if v in corpus.val_clips else "train"
        lines[split].append(f"{v}.mp4\ttitle of {v}\tsource_{source},tone_{tone}")
    lines["train"].append("clips/quiet.mp4\tno sound\tsource_testsrc2")
    for split, rows in lines.items():
        (notes / f"tags_{split}.txt").write_text("\n".join(rows) + "\n")
    # Charades-STA: "vid start end##sentence"
    rows = {"train": [], "val": []}
    for v, (cut, order) in corpus.scenes.items():
        split = "val" if cut == VAL_CUT else "train"
        for part, (start, end) in zip(order, ((0, cut), (cut, SCENE_SECONDS)), strict=True):
            rows[split].append(f"{v} {start:.1f} {end:.1f}##{SCENE_PARTS[part][2]}.")
    for split, lines_ in rows.items():
        (notes / f"charades_sta_{split}.txt").write_text("\n".join(lines_) + "\n")

