"""Turning SOURCE arguments into a list of videos with unique ids, and content fingerprints."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vidfeat.errors import ConfigError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv",
    ".wmv", ".3gp", ".ogv",
})
_SAMPLE = 1 << 20


@dataclass(frozen=True)
class VideoSource:
    video_id: str
    path: str  # absolute


def _from_list(list_file: Path) -> list[Path]:
    if not list_file.is_file():
        raise ConfigError(f"@{list_file}: no such list file")
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            # relative entries are relative to the list file, not to wherever vidfeat runs
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def _expand(source: str) -> list[Path]:
    if source.startswith("@"):
        entries = _from_list(Path(source[1:]).expanduser())
        return [path for entry in entries for path in _expand_path(entry)]
    return _expand_path(Path(source).expanduser())


def _expand_path(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(f"{path}: no such file or directory")


def discover(sources: list[str], limit: int | None = None) -> list[VideoSource]:
    """Videos named by ``sources`` (files, directories searched recursively for video
    extensions, ``@list.txt`` files), in the order given, each once, with ids = file names
    without extension. Two different files with one id are a ConfigError naming both."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    videos: list[VideoSource] = []
    by_id: dict[str, str] = {}
    for source in sources:
        for path in _expand(source):
            absolute = str(path.resolve())
            video_id = path.stem
            if video_id in by_id:
                if by_id[video_id] == absolute:
                    continue
                raise ConfigError(
                    f"video id collision: {by_id[video_id]} and {absolute} are both "
                    f"{video_id!r}; rename one or extract them into different stores"
                )
            by_id[video_id] = absolute
            videos.append(VideoSource(video_id, absolute))
    if not videos:
        raise ConfigError(f"no videos found in {' '.join(sources)}")
    return videos[:limit] if limit else videos


def fingerprint(path: str | Path) -> str:
    """A content fingerprint that reads 3 MiB whatever the file size: sha256 over the size and
    1 MiB at the start, middle and end. Changes whenever a file is replaced or re-encoded."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))
    return "sha256-3x1MiB:" + digest.hexdigest()[:32]
