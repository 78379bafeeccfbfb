"""A failure found before extracting (a video id the store holds for another file) is listed
by ``inspect --failures`` like any other, without hiding the other file's rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_video

import vidfeat
from vidfeat.cli import main

pytestmark = pytest.mark.slow


def test_an_id_collision_with_the_store_is_listed_and_keeps_the_stored_rows(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    flags = ["--store", str(store), "--features", "vggish", "--random-weights", "--no-progress",
             "--workers", "1"]
    assert main(["extract", str(corpus / "talk.mp4"), *flags]) == 0
    (tmp_path / "elsewhere").mkdir()
    other = make_video(tmp_path / "elsewhere" / "talk.mp4", seconds=1.0)
    assert main(["extract", str(other), *flags]) == 1
    capsys.readouterr()
    assert main(["inspect", str(store), "--failures"]) == 0
    video_id, feature, reason, source = capsys.readouterr().out.strip().split("\t")
    assert (video_id, feature, source) == ("talk", "vggish", str(other))
    assert reason.startswith(f"video id collision: {other} is 'talk'")
    assert vidfeat.open_store(str(store)).get("talk", "vggish").shape[0] == 2  # 2.5 s kept
