"""Non-regular files among the videos: each rejected with its real reason, the others kept."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.conftest import make_video
from vidfeat.errors import ConfigError
from vidfeat.pipeline.corpus import Rejected, VideoSource, discover, scan


def test_a_fifo_in_a_directory_is_rejected_with_its_reason(tmp_path: Path, caplog):
    make_video(tmp_path / "good.mp4", seconds=0.5, audio=False)
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "gone.mkv").symlink_to(tmp_path / "nowhere.mkv")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "sock.webm"))
        corpus = scan([str(tmp_path)])
    assert corpus.videos == [VideoSource("good", str(tmp_path / "good.mp4"))]
    assert corpus.rejected == [
        Rejected("gone", str(tmp_path / "gone.mkv"),
                 f"a broken symbolic link (to {tmp_path / 'nowhere.mkv'})"),
        Rejected("pipe", str(tmp_path / "pipe.mp4"), "not a regular file: a FIFO (named pipe)"),
        Rejected("sock", str(tmp_path / "sock.webm"), "not a regular file: a socket"),
    ]
    assert discover([str(tmp_path / "good.mp4"), str(tmp_path / "pipe.mp4")]) == corpus.videos
    assert "pipe.mp4: not a regular file: a FIFO (named pipe); not extracted" in caplog.text


def test_a_fifo_named_directly_is_rejected_not_missing(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe.mp4")
    corpus = scan([str(tmp_path / "pipe.mp4")])  # never opened: opening a FIFO would block
    assert corpus.videos == [] and corpus.rejected[0].reason.endswith("a FIFO (named pipe)")
    listed = tmp_path / "list.txt"
    listed.write_text("pipe.mp4\n")
    assert scan([f"@{listed}"]).rejected == corpus.rejected
    with pytest.raises(ConfigError, match="no such file or directory"):
        scan([str(tmp_path / "missing.mp4")])
    with pytest.raises(ConfigError, match="no videos found"):
        discover([str(tmp_path / "pipe.mp4")])


def test_limit_counts_rejected_paths_in_order(tmp_path: Path):
    for name in ("a", "c"):
        make_video(tmp_path / f"{name}.mp4", seconds=0.5, audio=False)
    os.mkfifo(tmp_path / "b.mp4")
    corpus = scan([str(tmp_path)], limit=2)
    assert [v.video_id for v in corpus.videos] == ["a"]
    assert [r.video_id for r in corpus.rejected] == ["b"]


def test_a_list_entry_deleted_since_is_that_videos_failure(tmp_path: Path):
    make_video(tmp_path / "kept.mp4", seconds=0.5, audio=False)
    listed = tmp_path / "tonight.txt"
    listed.write_text("kept.mp4\ngone.mp4\n")
    corpus = scan([f"@{listed}"])
    assert corpus.videos == [VideoSource("kept", str(tmp_path / "kept.mp4"))]
    assert corpus.rejected == [Rejected("gone", str(tmp_path / "gone.mp4"), "not found")]
    with pytest.raises(ConfigError, match="gone.mp4: no such file or directory"):
        scan([str(tmp_path / "gone.mp4")])  # named on the command line: a usage error


def test_directory_scans_find_archive_formats_and_extensions_choose_them(tmp_path: Path):
    for name in ("tape.dv", "broadcast.mxf", "disc.m2ts", "dvd.VOB", "clip.mp4"):
        (tmp_path / name).write_bytes(b"not decoded here")
    (tmp_path / "notes.txt").write_text("not a video")
    assert sorted(v.video_id for v in scan([str(tmp_path)]).videos) == [
        "broadcast", "clip", "disc", "dvd", "tape"]
    chosen = scan([str(tmp_path)], extensions=["DV", ".m2ts"]).videos
    assert sorted(v.video_id for v in chosen) == ["disc", "tape"]
    named = scan([str(tmp_path / "notes.txt")], extensions=[".dv"]).videos  # named: tried
    assert [v.video_id for v in named] == ["notes"]
    with pytest.raises(ConfigError, match="--extensions names no extension"):
        scan([str(tmp_path)], extensions=[" ", "."])
